//! The Fourier operators of audio front ends (mel spectrograms, resamplers): DFT (opsets 17 and
//! 20) and STFT (17), as the ONNX specification defines them.
//!
//! Complex values are pairs along a last axis of 2 (a real signal has a last axis of 1). Each
//! transform is a mixed-radix fast Fourier transform in f64 ([`fft`]) over a table of the n
//! twiddle factors, so every angle is exact rather than accumulated; the lines run in parallel.
//! The results are the exact transform rounded once to the output type (a 400-point STFT frame
//! within 5e-7 of numpy's f64 one, where ONNX Runtime's float32 transform is 3e-4 away).

use candle_core::{DType as CDType, Device, Tensor};
use rayon::prelude::*;

use super::{axis, c, check_output, like, one, Cx, R};
use crate::error::Error;
use crate::value::Value;

type Complex = (f64, f64);

/// DFT: forward or inverse, full or one-sided (real to complex, or complex to real), along one
/// axis, the signal cut or zero-padded to `dft_length`.
pub fn dft(cx: &Cx) -> R<Vec<Value>> {
    let x = cx.input(0)?;
    untracked(x, "input")?;
    let dims = complex_dims(x, "input")?;
    let rank = dims.len();
    // Opset 20 moved the axis from an attribute (default 1) to an input (default -2).
    let a = if cx.opset >= 20 {
        match cx.ints_input(2)? {
            Some(v) if v.len() == 1 => v[0],
            Some(v) => return Err(Error::Op(format!("axis must be a scalar, got {v:?}"))),
            None => -2,
        }
    } else {
        cx.int("axis", 1)?
    };
    let a = axis(a, rank)?;
    if a == rank - 1 {
        return Err(Error::Op(format!(
            "axis {a} is the last axis, which holds the real and imaginary parts"
        )));
    }
    let inverse = cx.int("inverse", 0)? != 0;
    let onesided = cx.int("onesided", 0)? != 0;
    let len = dims[a];
    let n = match cx.ints_input(1)? {
        Some(v) if v.len() == 1 && v[0] >= 1 => v[0] as usize,
        Some(v) => {
            return Err(Error::Op(format!(
                "dft_length must be a positive scalar, got {v:?}"
            )))
        }
        None if inverse && onesided => 2 * len.saturating_sub(1),
        None => len,
    };
    if n == 0 && inverse && onesided {
        return Err(Error::Op(format!(
            "a one-sided inverse of {len} bins has no default length (2·({len} - 1) = 0)"
        )));
    }
    if n == 0 {
        return Err(Error::Op(format!(
            "axis {a} is empty and no dft_length is given"
        )));
    }
    // The output is checked against the memory limit before anything of length n is made.
    let bins = output_len(n, inverse, onesided);
    let parts = if inverse && onesided { 1 } else { 2 };
    let mut out_dims = dims.to_vec();
    (out_dims[a], out_dims[rank - 1]) = (bins, parts);
    check_output(&out_dims, x.tensor.dtype())?;
    let transform = Transform::new(n, inverse, onesided);
    let lanes = Lanes::of(dims, a);
    let data = x.to_f64s()?;
    let out = transform_rows(&data, dims[rank - 1], &lanes, bins, parts, |signal, out| {
        transform.run(signal, out)
    });
    one(like(tensor(out, &out_dims, x.tensor.dtype())?, x))
}

/// STFT: the DFT of each windowed frame of a [batch, length, 1 or 2] signal. A real signal may
/// also come as [batch, length], as ONNX Runtime accepts it (audio front ends exported from
/// torch.stft do this).
pub fn stft(cx: &Cx) -> R<Vec<Value>> {
    let x = cx.input(0)?;
    untracked(x, "signal")?;
    if let Some(w) = cx.opt(2) {
        untracked(w, "window")?;
    }
    float(x, "signal")?;
    let (batch, length, parts_in) = match *x.shape() {
        [batch, length] => (batch, length, 1),
        [batch, length, parts @ (1 | 2)] => (batch, length, parts),
        ref dims => {
            return Err(Error::Op(format!(
                "the signal must be [batch, length, 1 or 2] (or [batch, length] if real), got shape {dims:?}"
            )))
        }
    };
    let step = scalar_input(cx, 1, "frame_step")?
        .ok_or_else(|| Error::Op("missing required input 1 (frame_step)".into()))?;
    let window = match cx.opt(2) {
        Some(w) if w.shape().len() == 1 => Some(w.to_f64s()?),
        Some(w) => {
            return Err(Error::Op(format!(
                "the window must be 1-D, got shape {:?}",
                w.shape()
            )))
        }
        None => None,
    };
    let frame = match (scalar_input(cx, 3, "frame_length")?, &window) {
        (Some(f), Some(w)) if f != w.len() => {
            return Err(Error::Op(format!(
                "frame_length {f} differs from the window's length {}",
                w.len()
            )))
        }
        (Some(f), _) => f,
        (None, Some(w)) => w.len(),
        (None, None) => length,
    };
    if frame == 0 || frame > length {
        return Err(Error::Op(format!(
            "frame_length {frame} must be between 1 and the signal's length {length}"
        )));
    }
    let onesided = cx.int("onesided", 1)? != 0;
    if onesided && parts_in == 2 {
        return Err(Error::Op(
            "a one-sided STFT needs a real signal (last axis 1), got a complex one".into(),
        ));
    }
    let frames = (length - frame) / step + 1;
    let bins = output_len(frame, false, onesided);
    let out_dims = [batch, frames, bins, 2];
    check_output(&out_dims, x.tensor.dtype())?;
    let transform = Transform::new(frame, false, onesided);
    let data = x.to_f64s()?;
    let window = window.unwrap_or_else(|| vec![1.0; frame]);
    // Each frame is a row: [batch · frames] rows of `frame` values, windowed.
    let mut rows = Vec::with_capacity(batch * frames * frame * parts_in);
    for b in 0..batch {
        for t in 0..frames {
            let start = (b * length + t * step) * parts_in;
            let samples = data[start..start + frame * parts_in].chunks(parts_in);
            for (s, w) in samples.zip(&window) {
                rows.extend(s.iter().map(|v| v * w));
            }
        }
    }
    let lanes = Lanes {
        outer: batch * frames,
        len: frame,
        inner: 1,
    };
    let out = transform_rows(&rows, parts_in, &lanes, bins, 2, |signal, out| {
        transform.run(signal, out)
    });
    one(like(tensor(out, &out_dims, x.tensor.dtype())?, x))
}

/// Refuses an operand that carries a gradient: these transforms compute outside candle's
/// autodiff, and a training run through them would silently stop its gradients here.
fn untracked(x: &Value, what: &str) -> R<()> {
    if x.tensor.track_op() {
        return Err(Error::Op(format!(
            "the {what} depends on trained values, and zeropoint's Fourier transforms have no gradient"
        )));
    }
    Ok(())
}

/// Refuses a tensor that is not float.
fn float(x: &Value, what: &str) -> R<()> {
    if !x.dtype.is_float() {
        return Err(Error::Op(format!(
            "the {what} is {}, expected float",
            x.dtype
        )));
    }
    Ok(())
}

/// The shape of a float tensor whose last axis holds 1 (real) or 2 (complex) parts.
fn complex_dims<'a>(x: &'a Value, what: &str) -> R<&'a [usize]> {
    float(x, what)?;
    let dims = x.shape();
    match dims.last() {
        Some(1 | 2) if dims.len() >= 2 => Ok(dims),
        _ => Err(Error::Op(format!(
            "the {what} must have a last axis of 1 (real) or 2 (complex) and another axis, got shape {dims:?}"
        ))),
    }
}

/// Optional input `i`, a positive integer scalar.
fn scalar_input(cx: &Cx, i: usize, what: &str) -> R<Option<usize>> {
    match cx.ints_input(i)? {
        None => Ok(None),
        Some(v) if v.len() == 1 && v[0] >= 1 => Ok(Some(v[0] as usize)),
        Some(v) => Err(Error::Op(format!(
            "{what} must be a positive scalar, got {v:?}"
        ))),
    }
}

/// A tensor of `dims` in candle type `dtype` from f64 values.
fn tensor(values: Vec<f64>, dims: &[usize], dtype: CDType) -> R<Tensor> {
    c(Tensor::from_vec(values, dims, &Device::Cpu).and_then(|t| t.to_dtype(dtype)))
}

/// The transformed axis within the others: `outer` blocks before it, `len` values along it,
/// `inner` after it (the last, complex axis excluded).
struct Lanes {
    outer: usize,
    len: usize,
    inner: usize,
}

impl Lanes {
    fn of(dims: &[usize], a: usize) -> Lanes {
        let rank = dims.len();
        Lanes {
            outer: dims[..a].iter().product(),
            len: dims[a],
            inner: dims[a + 1..rank - 1].iter().product(),
        }
    }
}

/// Runs `f` on every line along the axis of `lanes` in `data` (`parts_in` values an element),
/// each gathered as complex values; `f` fills `bins` complex outputs, which are written back
/// in the same layout with `parts_out` values an element (2, or 1: the real parts).
fn transform_rows(
    data: &[f64],
    parts_in: usize,
    lanes: &Lanes,
    bins: usize,
    parts_out: usize,
    f: impl Fn(&[Complex], &mut [Complex]) + Sync,
) -> Vec<f64> {
    let Lanes { outer, len, inner } = *lanes;
    let lines: Vec<Vec<Complex>> = (0..outer * inner)
        .into_par_iter()
        .map(|line| {
            let (o, i) = (line / inner, line % inner);
            let signal: Vec<Complex> = (0..len)
                .map(|m| {
                    let at = ((o * len + m) * inner + i) * parts_in;
                    (data[at], if parts_in == 2 { data[at + 1] } else { 0.0 })
                })
                .collect();
            let mut out = vec![(0.0, 0.0); bins];
            f(&signal, &mut out);
            out
        })
        .collect();
    let mut values = vec![0.0; outer * bins * inner * parts_out];
    for (line, out) in lines.iter().enumerate() {
        let (o, i) = (line / inner, line % inner);
        for (k, &(re, im)) in out.iter().enumerate() {
            let at = ((o * bins + k) * inner + i) * parts_out;
            values[at] = re;
            if parts_out == 2 {
                values[at + 1] = im;
            }
        }
    }
    values
}

/// One kind of transform of length `n`, with its twiddle factors.
struct Transform {
    n: usize,
    inverse: bool,
    onesided: bool,
    twiddles: Vec<Complex>,
}

impl Transform {
    fn new(n: usize, inverse: bool, onesided: bool) -> Transform {
        let sign = if inverse { 1.0 } else { -1.0 };
        Transform {
            n,
            inverse,
            onesided,
            twiddles: twiddles(n, sign),
        }
    }

    /// `out` (of [`output_len`]) from `signal`, cut or zero-padded to n (a
    /// one-sided inverse reads the n/2 + 1 bins of a Hermitian spectrum and returns the real
    /// signal, in the real parts).
    fn run(&self, signal: &[Complex], out: &mut [Complex]) {
        let n = self.n;
        let x: Vec<Complex> = if self.inverse && self.onesided {
            hermitian(signal, n)
        } else {
            (0..n)
                .map(|m| signal.get(m).copied().unwrap_or((0.0, 0.0)))
                .collect()
        };
        let (mut all, mut scratch) = (vec![(0.0, 0.0); n], vec![(0.0, 0.0); n]);
        fft(&x, 0, 1, &self.twiddles, &mut all, &mut scratch);
        let scale = if self.inverse { 1.0 / n as f64 } else { 1.0 };
        for (o, &(re, im)) in out.iter_mut().zip(&all) {
            *o = (re * scale, im * scale);
        }
    }
}

/// Outputs along the axis of an n-point transform: n, except a forward one-sided transform's
/// n/2 + 1 bins.
fn output_len(n: usize, inverse: bool, onesided: bool) -> usize {
    if onesided && !inverse {
        n / 2 + 1
    } else {
        n
    }
}

/// The n-point spectrum whose first n/2 + 1 bins are `half` (zero where it is shorter) and
/// whose others are their conjugates, `Y[n - k] = conj(Y[k])`; the imaginary parts of the DC
/// bin (and of the Nyquist bin of an even n) are dropped, as a real signal's spectrum has none.
fn hermitian(half: &[Complex], n: usize) -> Vec<Complex> {
    let bin = |k: usize| half.get(k).copied().unwrap_or((0.0, 0.0));
    (0..n)
        .map(|k| {
            if k == 0 || 2 * k == n {
                (bin(k).0, 0.0)
            } else if 2 * k < n {
                bin(k)
            } else {
                let (re, im) = bin(n - k);
                (re, -im)
            }
        })
        .collect()
}

/// e^{sign·2πi·j/n} for j < n.
fn twiddles(n: usize, sign: f64) -> Vec<Complex> {
    (0..n)
        .map(|j| {
            let angle = 2.0 * std::f64::consts::PI * j as f64 / n as f64;
            (angle.cos(), sign * angle.sin())
        })
        .collect()
}

/// The DFT `out[k] = Σ_j x[at + j·stride]·W^{jk}` of the `out.len()` = n values from `at`,
/// where W = e^{±2πi/n} is `w[N/n]` of the table `w` of an N-point transform (n divides N):
/// mixed-radix Cooley-Tukey. n splits at its smallest prime factor p into p transforms of n/p
/// (the values at `at + r·stride`, r < p, every p-th), combined as
/// `out[k + q·n/p] = Σ_r F_r[k]·W^{r·(k + q·n/p)}`; a prime n is summed directly. A 400-point
/// frame (2⁴·5²) takes 400·(4·2 + 2·5) products instead of 400². `scratch` is n long.
fn fft(
    x: &[Complex],
    at: usize,
    stride: usize,
    w: &[Complex],
    out: &mut [Complex],
    scratch: &mut [Complex],
) {
    let n = out.len();
    let step = w.len() / n;
    let mul = |(a, b): Complex, (c, d): Complex| (a * c - b * d, a * d + b * c);
    if n == 1 {
        out[0] = x[at];
        return;
    }
    let p = (2..n)
        .find(|&p| n.is_multiple_of(p) && p * p <= n)
        .unwrap_or(n);
    if p == n {
        for (k, o) in out.iter_mut().enumerate() {
            *o = (0..n).fold((0.0, 0.0), |(re, im), j| {
                let (a, b) = mul(x[at + j * stride], w[(j * k % n) * step]);
                (re + a, im + b)
            });
        }
        return;
    }
    let m = n / p;
    // The sub-transforms into `out`; each uses its stretch of `scratch`, free until the sums.
    for (r, (sub, tmp)) in out.chunks_mut(m).zip(scratch.chunks_mut(m)).enumerate() {
        fft(x, at + r * stride, stride * p, w, sub, tmp);
    }
    for k in 0..m {
        for q in 0..p {
            scratch[k + q * m] = (0..p).fold((0.0, 0.0), |(re, im), r| {
                let (a, b) = mul(out[r * m + k], w[(r * (k + q * m) % n) * step]);
                (re + a, im + b)
            });
        }
    }
    out.copy_from_slice(scratch);
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeropoint_graph::{Node, Op};
    use zeropoint_onnx::proto::attribute_proto::AttributeType;
    use zeropoint_onnx::proto::AttributeProto;

    /// The textbook sum with angles computed for each product.
    fn naive(x: &[Complex], n: usize, sign: f64) -> Vec<Complex> {
        (0..n)
            .map(|k| {
                x.iter()
                    .enumerate()
                    .fold((0.0, 0.0), |(re, im), (m, &(xr, xi))| {
                        let a = sign * 2.0 * std::f64::consts::PI * (k * m) as f64 / n as f64;
                        (
                            re + xr * a.cos() - xi * a.sin(),
                            im + xr * a.sin() + xi * a.cos(),
                        )
                    })
            })
            .collect()
    }

    fn signal(n: usize) -> Vec<Complex> {
        (0..n)
            .map(|m| ((m as f64 * 0.7).sin(), (m as f64 * 1.3).cos() * 0.5))
            .collect()
    }

    /// A float operand of `shape`.
    fn f(shape: &[usize]) -> Option<Value> {
        Some(Value::from_f32_vec(vec![0.5; shape.iter().product()], shape).unwrap())
    }

    /// An int64 scalar operand.
    fn i(v: i64) -> Option<Value> {
        Some(Value::from_ints(vec![v], &[], zeropoint_onnx::DType::I64).unwrap())
    }

    /// The error of `op` at `opset` on `inputs` with int attributes `attrs`, as text.
    fn refused(op: Op, opset: i64, inputs: Vec<Option<Value>>, attrs: &[(&str, i64)]) -> String {
        let names: Vec<String> = (0..inputs.len()).map(|i| format!("in{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut node = Node::new("f", op, &names, &["y"]);
        node.attributes = attrs
            .iter()
            .map(|&(name, v)| AttributeProto {
                name: Some(name.into()),
                r#type: Some(AttributeType::Int as i32),
                i: Some(v),
                ..Default::default()
            })
            .collect();
        let cx = Cx {
            node: &node,
            inputs: &inputs,
            opset,
        };
        super::super::run(&cx).unwrap_err().to_string()
    }

    #[test]
    fn bad_operands_are_refused_with_what_is_wrong() {
        let cases = [
            (
                Op::DFT,
                vec![f(&[2, 8, 3])],
                vec![],
                "last axis of 1 (real) or 2 (complex)",
            ),
            (
                Op::DFT,
                vec![f(&[2, 8, 1])],
                vec![("axis", 2)],
                "holds the real and imaginary parts",
            ),
            (
                Op::DFT,
                vec![f(&[2, 8, 1]), i(0)],
                vec![],
                "dft_length must be a positive scalar",
            ),
            (
                Op::DFT,
                vec![f(&[2, 0, 1])],
                vec![],
                "axis 1 is empty and no dft_length is given",
            ),
            (
                Op::DFT,
                vec![f(&[2, 1, 2])],
                vec![("inverse", 1), ("onesided", 1)],
                "no default length",
            ),
            (
                Op::STFT,
                vec![f(&[1, 10, 1]), i(4), None, i(20)],
                vec![],
                "frame_length 20 must be between 1 and the signal's length 10",
            ),
            (
                Op::STFT,
                vec![f(&[1, 10, 1]), i(4), f(&[4]), i(5)],
                vec![],
                "frame_length 5 differs from the window's length 4",
            ),
            (
                Op::STFT,
                vec![f(&[1, 10, 2]), i(2), None, i(4)],
                vec![],
                "needs a real signal",
            ),
            (
                Op::STFT,
                vec![f(&[10]), i(2)],
                vec![],
                "[batch, length, 1 or 2]",
            ),
            (
                Op::STFT,
                vec![f(&[1, 10, 3]), i(2)],
                vec![],
                "[batch, length, 1 or 2]",
            ),
            (
                Op::STFT,
                vec![f(&[1, 10, 1]), i(0)],
                vec![],
                "frame_step must be a positive",
            ),
        ];
        let var = candle_core::Var::new(&[[0.5f32], [0.25]], &Device::Cpu).unwrap();
        let tracked = Some(Value::f32(var.as_tensor().clone()));
        let cases = cases.into_iter().chain([
            (Op::DFT, vec![tracked.clone()], vec![], "have no gradient"),
            (Op::STFT, vec![tracked, i(1)], vec![], "have no gradient"),
            // Refused by the memory limit before a table of 2^50 twiddles is made.
            (
                Op::DFT,
                vec![f(&[1, 4, 1]), i(1 << 50)],
                vec![],
                "an output of shape [1, 1125899906842624, 2]",
            ),
        ]);
        for (op, inputs, attrs, want) in cases {
            let e = refused(op.clone(), 17, inputs, &attrs);
            assert!(e.contains(want), "{op}: {e}");
        }
    }

    #[test]
    fn mixed_radix_transforms_are_the_textbook_sums() {
        // Primes, prime powers, mixed factors, the 400 and 512 of audio front ends.
        for n in [1, 2, 3, 5, 12, 16, 27, 30, 49, 97, 400, 512] {
            let x = signal(n);
            for sign in [-1.0, 1.0] {
                let (mut out, mut scratch) = (vec![(0.0, 0.0); n], vec![(0.0, 0.0); n]);
                fft(&x, 0, 1, &twiddles(n, sign), &mut out, &mut scratch);
                let want = naive(&x, n, sign);
                let tol = 1e-12 * n as f64;
                for (k, (a, b)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (a.0 - b.0).abs() < tol && (a.1 - b.1).abs() < tol,
                        "n {n} bin {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn inverse_undoes_forward_and_the_one_sided_inverse_a_real_spectrum() {
        for n in [6, 7, 16] {
            let x = signal(n);
            let (forward, inverse) = (
                Transform::new(n, false, false),
                Transform::new(n, true, false),
            );
            let (mut y, mut back) = (vec![(0.0, 0.0); n], vec![(0.0, 0.0); n]);
            forward.run(&x, &mut y);
            inverse.run(&y, &mut back);
            for (a, b) in back.iter().zip(&x) {
                assert!((a.0 - b.0).abs() < 1e-12 && (a.1 - b.1).abs() < 1e-12);
            }
            // A real signal through the one-sided pair.
            let real: Vec<Complex> = x.iter().map(|&(re, _)| (re, 0.0)).collect();
            let (rfft, irfft) = (
                Transform::new(n, false, true),
                Transform::new(n, true, true),
            );
            let mut half = vec![(0.0, 0.0); output_len(n, false, true)];
            rfft.run(&real, &mut half);
            let mut back = vec![(0.0, 0.0); output_len(n, true, true)];
            irfft.run(&half, &mut back);
            for (a, b) in back.iter().zip(&real) {
                assert!((a.0 - b.0).abs() < 1e-12 && a.1.abs() < 1e-12, "{n}");
            }
        }
    }
}
