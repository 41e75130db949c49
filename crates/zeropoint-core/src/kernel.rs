//! The quantize, dequantize and fake-quant kernels, bit-exact with ONNX QuantizeLinear /
//! DequantizeLinear:
//!
//! ```text
//! q  = clamp(round_half_to_even(x / s) + z, qmin, qmax)
//! x^ = (q - z) · s
//! ```
//!
//! `x / s` is a true f32 division, as in ONNX's reference evaluator and ONNX Runtime (multiplying
//! by 1/s differs in the last bit often enough to change codes at ties).
//!
//! Special values, following what ONNX Runtime's kernels and the onnx reference evaluator do (the
//! ONNX specification only says "saturate"):
//! - +Inf saturates to qmax and -Inf to qmin;
//! - NaN becomes qmin, as in ONNX Runtime (whose MAXPS-based clamp maps NaN to the lower bound);
//!   fake-quant of NaN is therefore (qmin - z)·s. Callers that estimate ranges refuse NaN first.
//!
//! The hot loops are written as plain scalar Rust that LLVM vectorizes; on x86-64 they are
//! compiled a second time with AVX2 enabled and chosen at run time. Work is split into fixed
//! chunks of elements processed in parallel with rayon; every element's result depends only on
//! that element, so the output is the same for any thread count.

use rayon::prelude::*;

use crate::error::{Error, Result};
use std::mem::MaybeUninit;
use std::ops::Range;

use crate::layout::{Layout, Segment};
use crate::params::{QParam, QParams};
use crate::scheme::Grid;
use crate::CHUNK;

/// An integer storage type for codes: i8, u8, i16 or u16.
pub trait Code: Copy + Send + Sync + Default + 'static {
    const NAME: &'static str;
    const MIN: i32;
    const MAX: i32;
    /// `q` is already within [MIN, MAX].
    fn from_code(q: i32) -> Self;
    fn code(self) -> i32;
}

macro_rules! impl_code {
    ($($t:ty => $name:literal),*) => {$(
        impl Code for $t {
            const NAME: &'static str = $name;
            const MIN: i32 = <$t>::MIN as i32;
            const MAX: i32 = <$t>::MAX as i32;
            #[inline(always)]
            fn from_code(q: i32) -> Self {
                q as $t
            }
            #[inline(always)]
            fn code(self) -> i32 {
                self as i32
            }
        }
    )*};
}
impl_code!(i8 => "int8", u8 => "uint8", i16 => "int16", u16 => "uint16");

/// 1.5 · 2^23: adding it to |v| < 2^22 leaves round_half_to_even(v) in the low mantissa bits,
/// in the default rounding mode, without a float-to-int conversion (the trick ggml uses).
const MAGIC: f32 = 12_582_912.0;
const MAGIC_BITS: i32 = 0x4B40_0000;

/// round_half_to_even(clamp(v, lo, hi)) for integral lo, hi with |lo|, |hi| < 2^22.
/// The comparisons are MAXPS / MINPS: a NaN `v` becomes `lo`.
#[inline(always)]
fn round_clamped(v: f32, lo: f32, hi: f32) -> i32 {
    let v = if v > lo { v } else { lo };
    let v = if v < hi { v } else { hi };
    (v + MAGIC).to_bits() as i32 - MAGIC_BITS
}

/// The clamp bounds in the x/s domain: clamp(round(v) + z, qmin, qmax) equals
/// round(clamp(v, qmin - z, qmax - z)) + z because the bounds are integers.
#[inline(always)]
fn bounds(grid: Grid, z: i32) -> (f32, f32) {
    ((grid.qmin - z) as f32, (grid.qmax - z) as f32)
}

#[inline(always)]
fn quantize_uniform<T: Code>(x: &[f32], out: &mut [T], p: QParam, grid: Grid) {
    let (s, z) = (p.scale, p.zero_point);
    let (lo, hi) = bounds(grid, z);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = T::from_code(round_clamped(v / s, lo, hi) + z);
    }
}

#[inline(always)]
fn quantize_each<T: Code>(x: &[f32], out: &mut [T], s: &[f32], z: &[i32], grid: Grid) {
    for (((o, &v), &s), &z) in out.iter_mut().zip(x).zip(s).zip(z) {
        let (lo, hi) = bounds(grid, z);
        *o = T::from_code(round_clamped(v / s, lo, hi) + z);
    }
}

#[inline(always)]
fn dequantize_uniform<T: Code>(q: &[T], out: &mut [f32], p: QParam) {
    let (s, z) = (p.scale, p.zero_point);
    for (o, &c) in out.iter_mut().zip(q) {
        *o = (c.code() - z) as f32 * s;
    }
}

#[inline(always)]
fn dequantize_each<T: Code>(q: &[T], out: &mut [f32], s: &[f32], z: &[i32]) {
    for (((o, &c), &s), &z) in out.iter_mut().zip(q).zip(s).zip(z) {
        *o = (c.code() - z) as f32 * s;
    }
}

/// One step of fake-quant: (q - z)·s computed without materializing q.
#[inline(always)]
fn fake(v: f32, s: f32, lo: f32, hi: f32) -> f32 {
    round_clamped(v / s, lo, hi) as f32 * s
}

/// Fake-quant of one value: the kernels' exact semantics, for scalar code paths (and loops that
/// vectorize it in place).
#[inline(always)]
pub fn fake_quant_value(x: f32, p: QParam, grid: Grid) -> f32 {
    let (lo, hi) = bounds(grid, p.zero_point);
    fake(x, p.scale, lo, hi)
}

#[inline(always)]
fn fake_uniform(x: &mut [f32], p: QParam, grid: Grid) {
    let (lo, hi) = bounds(grid, p.zero_point);
    for v in x.iter_mut() {
        *v = fake(*v, p.scale, lo, hi);
    }
}

#[inline(always)]
fn fake_each(x: &mut [f32], s: &[f32], z: &[i32], grid: Grid) {
    for ((v, &s), &z) in x.iter_mut().zip(s).zip(z) {
        let (lo, hi) = bounds(grid, z);
        *v = fake(*v, s, lo, hi);
    }
}

/// [`fake_uniform`] into fresh memory: [`fake_quant`] reads its input once and writes its
/// output once, where a copy and an in-place pass moved every value twice.
#[inline(always)]
fn fake_uniform_into(x: &[f32], out: &mut [MaybeUninit<f32>], p: QParam, grid: Grid) {
    let (lo, hi) = bounds(grid, p.zero_point);
    for (o, &v) in out.iter_mut().zip(x) {
        o.write(fake(v, p.scale, lo, hi));
    }
}

#[inline(always)]
fn fake_each_into(x: &[f32], out: &mut [MaybeUninit<f32>], s: &[f32], z: &[i32], grid: Grid) {
    for (((o, &v), &s), &z) in out.iter_mut().zip(x).zip(s).zip(z) {
        let (lo, hi) = bounds(grid, z);
        o.write(fake(v, s, lo, hi));
    }
}

/// Runs `f` compiled with AVX-512 (F, BW, DQ, VL) or else AVX2 and FMA enabled when the CPU has
/// them, so the loops inlined into it vectorize 16 or 8 lanes wide; otherwise runs it as compiled
/// for the baseline target.
///
/// Only code inlined into `avx512` or `avx2` gets their instructions: every closure between here
/// and the loops is marked `#[inline(always)]`, or LLVM may outline it and compile it for the
/// baseline (2-4x slower). The result is the same bits either way: Rust never fuses a multiply
/// and an add into an FMA by itself, an explicit `mul_add` is one correctly rounded operation on
/// every path (an instruction here, libm's `fmaf` on the baseline), and reductions keep the order
/// their code gives them, so the wider registers change how many lanes run at once, not the
/// arithmetic.
#[inline(always)]
pub fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if has_avx512() {
            // SAFETY: the CPU supports these AVX-512 subsets, checked just above.
            return unsafe { avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Whether the CPU has the AVX-512 subsets [`dispatch`] compiles for.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// A new vector of `len` zeros, cut into pieces of `chunk` elements, each piece zero-filled and
/// handed to `f(state, k, piece)` in a parallel task of its own; `tasks` tasks run, those past
/// the last piece with an empty one (`len` = 0 runs them all without an output). Returns the
/// vector and the tasks' results in order. `init` makes each worker's scratch state.
///
/// Why: a zero-filled allocation (`vec![0.0; n]`) is one serial pass over all of it in the
/// thread that allocates, before the parallel work starts; here each task zeroes its own piece,
/// which then stays in its cache for the work. In a training step those passes were a fifth of
/// the main thread's time.
pub fn par_zeroed<S, T: Send>(
    (len, chunk, tasks): (usize, usize, usize),
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [f32]) -> T + Sync + Send,
) -> (Vec<f32>, Vec<T>) {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let mut pieces: Vec<&mut [MaybeUninit<f32>]> = out.spare_capacity_mut()[..len]
        .chunks_mut(chunk.max(1))
        .collect();
    assert!(pieces.len() <= tasks, "par_zeroed: more pieces than tasks");
    pieces.resize_with(tasks, || &mut []);
    let results = pieces
        .into_par_iter()
        .enumerate()
        .map_init(init, |state, (k, piece)| {
            for e in piece.iter_mut() {
                e.write(0.0);
            }
            // SAFETY: every element of the piece was written just above.
            let piece = unsafe { &mut *(piece as *mut [MaybeUninit<f32>] as *mut [f32]) };
            f(state, k, piece)
        })
        .collect();
    // SAFETY: the pieces cover the first `len` elements and every task zeroed its own piece
    // before `f` ran (a panic in a task propagates before this point).
    unsafe { out.set_len(len) };
    (out, results)
}

/// The first NaN or ±Inf of `x`, if any. Chunks are checked in vectorized passes without an
/// early exit (a `find` runs one element at a time: 5 % of calibrating a detector).
pub fn first_non_finite(x: &[f32]) -> Option<f32> {
    dispatch(
        #[inline(always)]
        || {
            x.chunks(1024)
                .find(|c| c.iter().fold(false, |bad, v| bad | !v.is_finite()))
                .and_then(|c| c.iter().copied().find(|v| !v.is_finite()))
        },
    )
}

/// The parameters of one run of elements: shared by the whole run, or one pair per element.
#[derive(Clone, Copy)]
pub(crate) enum RunParams<'a> {
    One(QParam),
    Each(&'a [f32], &'a [i32]),
}

/// Calls `f` for each run of elements `start..start + len` of the tensor `layout` describes, with
/// the run's range relative to `start`. The one place that turns segments into parameters.
#[inline(always)]
pub(crate) fn for_each_run<'a>(
    layout: &Layout,
    params: &'a QParams,
    start: usize,
    len: usize,
    mut f: impl FnMut(Range<usize>, RunParams<'a>),
) {
    layout.for_each_segment(
        start..start + len,
        #[inline(always)]
        |r, seg| {
            let (a, b) = (r.start - start, r.end - start);
            let p = match seg {
                Segment::Uniform(p) => RunParams::One(params.get(p)),
                Segment::PerElement(p) => RunParams::Each(
                    &params.scale[p..p + b - a],
                    &params.zero_point[p..p + b - a],
                ),
            };
            f(a..b, p)
        },
    )
}

/// Quantizes elements `start..start + x.len()` of the tensor that `layout` describes. Inlined
/// into a caller that runs under [`dispatch`]; [`quantize_chunk`] is the self-contained version.
#[inline(always)]
pub(crate) fn quantize_segments<T: Code>(
    layout: &Layout,
    params: &QParams,
    start: usize,
    x: &[f32],
    out: &mut [T],
) {
    let grid = params.grid;
    for_each_run(
        layout,
        params,
        start,
        x.len(),
        #[inline(always)]
        |r, p| match p {
            RunParams::One(p) => quantize_uniform(&x[r.clone()], &mut out[r], p, grid),
            RunParams::Each(s, z) => quantize_each(&x[r.clone()], &mut out[r], s, z, grid),
        },
    )
}

/// [`quantize_segments`] compiled for the best instruction set the CPU has.
pub(crate) fn quantize_chunk<T: Code>(
    layout: &Layout,
    params: &QParams,
    start: usize,
    x: &[f32],
    out: &mut [T],
) {
    dispatch(
        #[inline(always)]
        || quantize_segments(layout, params, start, x, out),
    )
}

/// Dequantizes elements `start..start + q.len()` of the tensor that `layout` describes. Inlined
/// into a caller that runs under [`dispatch`]; [`dequantize_chunk`] is the self-contained version.
#[inline(always)]
pub(crate) fn dequantize_segments<T: Code>(
    layout: &Layout,
    params: &QParams,
    start: usize,
    q: &[T],
    out: &mut [f32],
) {
    for_each_run(
        layout,
        params,
        start,
        q.len(),
        #[inline(always)]
        |r, p| match p {
            RunParams::One(p) => dequantize_uniform(&q[r.clone()], &mut out[r], p),
            RunParams::Each(s, z) => dequantize_each(&q[r.clone()], &mut out[r], s, z),
        },
    )
}

/// [`dequantize_segments`] compiled for the best instruction set the CPU has.
pub(crate) fn dequantize_chunk<T: Code>(
    layout: &Layout,
    params: &QParams,
    start: usize,
    q: &[T],
    out: &mut [f32],
) {
    dispatch(
        #[inline(always)]
        || dequantize_segments(layout, params, start, q, out),
    )
}

fn fake_quant_chunk(layout: &Layout, params: &QParams, start: usize, x: &mut [f32]) {
    let grid = params.grid;
    dispatch(
        #[inline(always)]
        || {
            for_each_run(
                layout,
                params,
                start,
                x.len(),
                #[inline(always)]
                |r, p| match p {
                    RunParams::One(p) => fake_uniform(&mut x[r], p, grid),
                    RunParams::Each(s, z) => fake_each(&mut x[r], s, z, grid),
                },
            )
        },
    )
}

/// Every element of `out` (as long as `x`) written with fake-quant of `x`: the runs of
/// [`for_each_run`] cover `start..start + x.len()` whole.
fn fake_quant_chunk_into(
    layout: &Layout,
    params: &QParams,
    start: usize,
    x: &[f32],
    out: &mut [MaybeUninit<f32>],
) {
    let grid = params.grid;
    dispatch(
        #[inline(always)]
        || {
            for_each_run(
                layout,
                params,
                start,
                x.len(),
                #[inline(always)]
                |r, p| match p {
                    RunParams::One(p) => fake_uniform_into(&x[r.clone()], &mut out[r], p, grid),
                    RunParams::Each(s, z) => fake_each_into(&x[r.clone()], &mut out[r], s, z, grid),
                },
            )
        },
    )
}

fn check_len(what: &'static str, shape: &[usize], expected: usize, got: usize) -> Result<()> {
    if expected != got {
        return Err(Error::Length {
            what,
            shape: shape.to_vec(),
            expected,
            got,
        });
    }
    Ok(())
}

pub(crate) fn check_grid_fits(grid: Grid, min: i32, max: i32, storage: &'static str) -> Result<()> {
    if grid.qmin < min || grid.qmax > max {
        return Err(Error::Storage {
            qmin: grid.qmin,
            qmax: grid.qmax,
            storage,
        });
    }
    Ok(())
}

/// Quantizes the tensor `x` of shape `shape` into `out` (same length).
pub fn quantize<T: Code>(
    x: &[f32],
    shape: &[usize],
    params: &QParams,
    out: &mut [T],
) -> Result<()> {
    let layout = params.layout_for(x.len(), shape)?;
    check_len("the output", shape, x.len(), out.len())?;
    check_grid_fits(params.grid, T::MIN, T::MAX, T::NAME)?;
    x.par_chunks(CHUNK)
        .zip(out.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(k, (xc, oc))| quantize_chunk(&layout, params, k * CHUNK, xc, oc));
    Ok(())
}

/// Dequantizes the codes `q` of shape `shape` into `out` (same length).
pub fn dequantize<T: Code>(
    q: &[T],
    shape: &[usize],
    params: &QParams,
    out: &mut [f32],
) -> Result<()> {
    let layout = params.layout_for(q.len(), shape)?;
    check_len("the output", shape, q.len(), out.len())?;
    q.par_chunks(CHUNK)
        .zip(out.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(k, (qc, oc))| dequantize_chunk(&layout, params, k * CHUNK, qc, oc));
    Ok(())
}

/// Replaces every value of `x` by dequantize(quantize(x)), in one pass and without the codes.
pub fn fake_quant_in_place(x: &mut [f32], shape: &[usize], params: &QParams) -> Result<()> {
    let layout = params.layout_for(x.len(), shape)?;
    x.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(k, xc)| fake_quant_chunk(&layout, params, k * CHUNK, xc));
    Ok(())
}

/// dequantize(quantize(x)) into a new vector.
pub fn fake_quant(x: &[f32], shape: &[usize], params: &QParams) -> Result<Vec<f32>> {
    let layout = params.layout_for(x.len(), shape)?;
    let mut out = Vec::with_capacity(x.len());
    out.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(k, (o, xc))| fake_quant_chunk_into(&layout, params, k * CHUNK, xc, o));
    // SAFETY: the chunks cover the first x.len() elements, and each chunk writes all of its own
    // (fake_quant_chunk_into).
    unsafe { out.set_len(x.len()) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every piece comes zeroed whatever was in the memory before (a freed buffer of ones is
    /// the allocator's likeliest next one), the results come in piece order, and tasks past the
    /// last piece get empty ones.
    #[test]
    fn par_zeroed_pieces_are_zero_and_in_order() {
        drop(vec![1f32; 10_000]);
        let (v, r) = par_zeroed(
            (10_000, 3_000, 6),
            || 0usize,
            |calls, k, piece| {
                *calls += 1;
                let zero = piece.iter().all(|&v| v == 0.0);
                if k == 1 {
                    piece[0] = 7.0;
                }
                (k, piece.len(), zero)
            },
        );
        assert_eq!(v.len(), 10_000);
        assert_eq!(v[3_000], 7.0);
        assert_eq!(v.iter().filter(|&&v| v != 0.0).count(), 1);
        let lens: Vec<usize> = r.iter().map(|&(_, n, _)| n).collect();
        assert_eq!(lens, [3_000, 3_000, 3_000, 1_000, 0, 0]);
        assert!(r
            .iter()
            .enumerate()
            .all(|(i, &(k, _, zero))| k == i && zero));
        let (v, r) = par_zeroed((0, 5, 3), || (), |_, k, piece| (k, piece.len()));
        assert!(v.is_empty());
        assert_eq!(r, [(0, 0), (1, 0), (2, 0)]);
    }
    use crate::scheme::{Granularity, Scheme};

    fn per_tensor(scale: f32, z: i32, grid: Grid) -> QParams {
        QParams::new(Granularity::PerTensor, grid, vec![scale], vec![z]).unwrap()
    }

    /// The first bad value is found wherever it lies, in a chunk or after the last full one.
    #[test]
    fn the_first_non_finite_value_is_found() {
        let mut x = vec![1.5f32; 3000];
        assert_eq!(first_non_finite(&x), None);
        assert_eq!(first_non_finite(&[]), None);
        x[2999] = f32::NEG_INFINITY;
        assert_eq!(first_non_finite(&x), Some(f32::NEG_INFINITY));
        x[1500] = f32::INFINITY;
        assert_eq!(first_non_finite(&x), Some(f32::INFINITY));
        x[7] = f32::NAN;
        assert!(first_non_finite(&x).unwrap().is_nan());
    }

    /// The out-of-place fake-quant writes what the in-place one does, for every granularity,
    /// across chunk boundaries and with a ragged last block.
    #[test]
    fn fake_quant_matches_the_in_place_pass() {
        let shape = [3, 5, 4_400, 2];
        let n: usize = shape.iter().product();
        assert!(n > 2 * CHUNK);
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
            .collect();
        let grid = Scheme::asymmetric_unsigned(8).grid();
        let params = [
            per_tensor(0.11, 3, grid),
            QParams::new(
                Granularity::PerAxis { axis: 1 },
                grid,
                vec![0.05, 0.1, 0.2, 0.4, 0.8],
                vec![0, 1, 2, 3, 250],
            )
            .unwrap(),
            {
                let blocks = 3 * 5 * 4_400_usize.div_ceil(128) * 2;
                let scale = (0..blocks).map(|b| 0.01 + (b % 17) as f32 * 0.01).collect();
                let zero = (0..blocks).map(|b| (b % 200) as i32).collect();
                let g = Granularity::PerBlock {
                    axis: 2,
                    block: 128,
                };
                QParams::new(g, grid, scale, zero).unwrap()
            },
        ];
        for p in &params {
            let mut want = x.clone();
            fake_quant_in_place(&mut want, &shape, p).unwrap();
            let got = fake_quant(&x, &shape, p).unwrap();
            assert_eq!(got.len(), n);
            assert!(got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            assert!(
                got.iter().zip(&x).any(|(a, b)| a != b),
                "nothing was quantized"
            );
        }
    }

    #[test]
    fn ties_round_to_even_and_saturate() {
        let p = per_tensor(1.0, 0, Scheme::new(8).grid());
        let x = [
            0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, 1000.0, -128.5, -1e30,
        ];
        let mut q = [0i8; 11];
        quantize(&x, &[11], &p, &mut q).unwrap();
        assert_eq!(q, [0, 2, 2, 0, -2, -2, 126, 127, 127, -128, -128]);
    }

    #[test]
    fn special_values_follow_onnx_runtime() {
        let p = per_tensor(0.1, 10, Scheme::asymmetric_unsigned(8).grid());
        let x = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
        let mut q = [0u8; 3];
        quantize(&x, &[3], &p, &mut q).unwrap();
        assert_eq!(q, [255, 0, 0]);
        let f = fake_quant(&x, &[3], &p).unwrap();
        assert_eq!(f, [245.0 * 0.1, -10.0 * 0.1f32, -10.0 * 0.1f32]);
    }

    #[test]
    fn division_not_reciprocal_multiplication() {
        // 0.3 / 0.1 = 2.9999998 in f32 but 0.3 * (1/0.1) = 3.0000002; at a tie the two differ.
        let s = 0.1f32;
        let x = 2.5f32 * s; // x / s = 2.5 exactly? not necessarily: that is the point
        let p = per_tensor(s, 0, Scheme::new(8).grid());
        let mut q = [0i8; 1];
        quantize(&[x], &[1], &p, &mut q).unwrap();
        assert_eq!(q[0] as f32, (x / s).round_ties_even());
    }

    #[test]
    fn storage_must_hold_the_grid() {
        let p = per_tensor(1.0, 0, Scheme::new(16).grid());
        let mut q = [0i8; 1];
        assert!(matches!(
            quantize(&[1.0], &[1], &p, &mut q),
            Err(Error::Storage { .. })
        ));
    }

    #[test]
    fn lengths_are_checked() {
        let p = per_tensor(1.0, 0, Scheme::new(8).grid());
        let mut q = [0i8; 2];
        assert!(quantize(&[1.0, 2.0, 3.0], &[3], &p, &mut q).is_err());
        assert!(quantize(&[1.0, 2.0], &[3], &p, &mut q).is_err());
    }
}
