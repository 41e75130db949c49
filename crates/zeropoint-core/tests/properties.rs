//! Properties that must hold for every scheme and every input, checked on generated data.

use proptest::prelude::*;
use zeropoint_core::{
    dequantize, fake_quant, metrics, quantize, Granularity, Layout, QParam, QParams, QTensor,
    Scheme, Storage,
};

fn schemes() -> impl Strategy<Value = Scheme> {
    (
        2u32..=16,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_filter_map(
            "valid schemes",
            |(bits, signed, symmetric, narrow, pow2)| {
                let s = Scheme::new(bits)
                    .signed(signed)
                    .symmetric(symmetric)
                    .narrow(narrow)
                    .pow2_scale(pow2);
                s.validate().ok().map(|_| s)
            },
        )
}

fn data() -> impl Strategy<Value = Vec<f32>> {
    (
        prop::collection::vec(-1.0f32..1.0, 1..300),
        -20i32..20,
        -3.0f32..3.0,
    )
        .prop_map(|(v, exp, shift)| {
            let scale = 2f32.powi(exp);
            v.into_iter().map(|x| (x + shift) * scale).collect()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Inside the grid's real range the error is at most half a step (plus the f32 rounding of
    /// x / s and of (q - z)·s: an ulp or two of the value).
    #[test]
    fn rounding_error_is_at_most_half_a_step(scheme in schemes(), x in data()) {
        let params = QParams::from_data(&scheme, &x, &[x.len()]).unwrap();
        let p = params.get(0);
        let (lo, hi) = p.real_range(scheme.grid());
        let y = fake_quant(&x, &[x.len()], &params).unwrap();
        for (&a, &b) in x.iter().zip(&y) {
            if a >= lo && a <= hi {
                let bound = p.scale / 2.0 + 2.0 * a.abs().max(b.abs()) * f32::EPSILON;
                prop_assert!((a - b).abs() <= bound, "x={a} x^={b} s={}", p.scale);
            }
        }
    }

    /// Real zero is always exactly representable.
    #[test]
    fn zero_is_exact(scheme in schemes(), x in data()) {
        let params = QParams::from_data(&scheme, &x, &[x.len()]).unwrap();
        prop_assert_eq!(fake_quant(&[0.0], &[1], &params).unwrap()[0], 0.0);
    }

    /// Dequantizing a code and quantizing it again gives the code back.
    #[test]
    fn quantize_inverts_dequantize(
        scheme in schemes(),
        scale_exp in -60i32..60,
        mantissa in 1.0f32..2.0,
        zfrac in 0.0f64..1.0,
    ) {
        let grid = scheme.grid();
        let z = if scheme.symmetric {
            0
        } else {
            grid.qmin + (zfrac * f64::from(grid.qmax - grid.qmin)) as i32
        };
        let scale = mantissa * 2f32.powi(scale_exp);
        let params = QParams::new(Granularity::PerTensor, grid, vec![scale], vec![z]).unwrap();
        let codes: Vec<i32> = (grid.qmin..=grid.qmax).step_by(7).collect();
        let n = [codes.len()];
        let mut real = vec![0.0; codes.len()];
        if scheme.signed {
            let codes: Vec<i16> = codes.iter().map(|&c| c as i16).collect();
            dequantize(&codes, &n, &params, &mut real).unwrap();
            let mut back = vec![0i16; codes.len()];
            quantize(&real, &n, &params, &mut back).unwrap();
            prop_assert_eq!(back, codes);
        } else {
            let codes: Vec<u16> = codes.iter().map(|&c| c as u16).collect();
            dequantize(&codes, &n, &params, &mut real).unwrap();
            let mut back = vec![0u16; codes.len()];
            quantize(&real, &n, &params, &mut back).unwrap();
            prop_assert_eq!(back, codes);
        }
    }

    /// Per-channel parameters are the per-tensor parameters of each channel.
    #[test]
    fn per_channel_is_per_tensor_of_each_channel(
        scheme in schemes(),
        rows in 1usize..6,
        x in prop::collection::vec(-5.0f32..5.0, 6..60),
    ) {
        let cols = x.len() / rows;
        let x = &x[..rows * cols];
        let params = QParams::from_data(&scheme.per_axis(0), x, &[rows, cols]).unwrap();
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            let lo = row.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            prop_assert_eq!(params.get(r), QParam::from_range(&scheme, lo, hi).unwrap());
        }
    }

    /// Packed storage holds exactly the codes of unpacked storage, in the minimum of bytes.
    #[test]
    fn packed_equals_unpacked(x in data(), signed in any::<bool>(), bits in 2u32..=4) {
        let scheme = Scheme::new(bits).signed(signed).symmetric(!signed);
        let n = [x.len()];
        let packed = QTensor::quantize(&x, &n, &scheme).unwrap();
        let plain = QTensor::quantize_with(
            &x,
            &n,
            packed.params.clone(),
            if signed { Storage::I8 } else { Storage::U8 },
        )
        .unwrap();
        prop_assert_eq!(packed.codes_i32(), plain.codes_i32());
        prop_assert_eq!(packed.dequantize().unwrap(), plain.dequantize().unwrap());
        let per_byte = if bits == 2 { 4 } else { 2 };
        prop_assert_eq!(packed.code_bytes(), x.len().div_ceil(per_byte));
    }
}

/// Large enough to span many parallel chunks, with per-axis and per-block layouts.
fn big() -> (Vec<f32>, Vec<usize>) {
    let shape = vec![37, 5, 1931];
    let n: usize = shape.iter().product();
    let mut s = 1u32;
    let x = (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1 << 24) as f32 * 8.0 - 3.0
        })
        .collect();
    (x, shape)
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let (x, shape) = big();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut out = Vec::new();
            for g in [
                Granularity::PerTensor,
                Granularity::PerAxis { axis: 1 },
                Granularity::PerAxis { axis: 2 },
                Granularity::PerBlock { axis: 2, block: 32 },
                Granularity::PerBlock { axis: 0, block: 4 },
            ] {
                let scheme = Scheme::new(4).symmetric(false).granularity(g);
                let q = QTensor::quantize(&x, &shape, &scheme).unwrap();
                let (stats, split) = metrics::quantization_error(&x, &shape, &q.params).unwrap();
                let summary = zeropoint_core::stats::summarize(&x);
                out.push(format!(
                    "{:?} {:?} {stats:?} {split:?} {summary:?}",
                    q.codes, q.params
                ));
            }
            out
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(5));
}

#[test]
fn block_layout_of_the_big_tensor() {
    let (x, shape) = big();
    let l = Layout::new(&shape, Granularity::PerBlock { axis: 2, block: 32 }).unwrap();
    assert_eq!(l.param_shape(), &[37, 5, 61]);
    assert_eq!(l.len(), x.len());
}
