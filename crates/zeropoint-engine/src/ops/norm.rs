//! Normalizations: BatchNormalization (inference), InstanceNormalization, LayerNormalization,
//! LRN, Softmax and LogSoftmax.

use candle_core::{Tensor, D};

use super::blockwise::{self, arith, Arith};
use super::{axis, c, like, one, Cx, Error, R};
use crate::value::Value;
use zeropoint_graph::Op;

/// Inference-mode batch norm: (x − mean) / sqrt(var + ε) · scale + bias, per channel (axis 1).
pub fn batch_norm(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let x = cx.float(0)?;
    if cx.int("training_mode", 0)? != 0 {
        return Err("training_mode=1 is not supported (inference only)".into());
    }
    let eps = cx.float_attr("epsilon", 1e-5)? as f64;
    let mut shape = vec![1usize; x.rank().max(2)];
    shape[1] = x
        .dims()
        .get(1)
        .copied()
        .ok_or("input has no channel axis")?;
    let p = |i: usize| -> R<Tensor> { c(cx.float(i)?.reshape(shape.as_slice())) };
    let (scale, bias, mean, var) = (p(1)?, p(2)?, p(3)?, p(4)?);
    // Per channel y = x·a + b with a = γ/√(σ²+ε), b = β − μ·a: one parallel pass over x in
    // float32 inference (candle's two broadcasts walked one element at a time: a fifth of
    // ppocr-v3-det's float run went to its BatchNormalizations), else two.
    let a = c(scale.broadcast_div(&var.affine(1.0, eps)?.sqrt()?))?;
    let b = c(bias.sub(&mean.mul(&a)?))?;
    let y = match blockwise::affine(x, &a, &b) {
        Some(y) => c(y)?,
        None => c(arith(&c(arith(x, &a, Arith::Mul))?, &b, Arith::Add))?,
    };
    one(like(y, v))
}

/// InstanceNormalization: each sample's channel normalized over its spatial axes (2 and after),
/// then scaled and shifted per channel: (x − mean) / √(var + ε) · scale + B.
pub fn instance_norm(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let x = cx.float(0)?;
    let channels = channels(x, "InstanceNormalization")?;
    let eps = cx.float_attr("epsilon", 1e-5)? as f64;
    let mut shape = vec![1usize; x.rank()];
    shape[1] = channels;
    let p = |i: usize, what: &str| -> R<Tensor> {
        let t = cx.float(i)?;
        if t.elem_count() != channels {
            return Err(Error::Op(format!(
                "{what} has {} values for {channels} channels",
                t.elem_count()
            )));
        }
        c(t.reshape(shape.as_slice()))
    };
    let (scale, bias) = (p(1, "scale")?, p(2, "B")?);
    let spatial: Vec<usize> = (2..x.rank()).collect();
    let mean = c(x.mean_keepdim(spatial.as_slice()))?;
    let centered = c(x.broadcast_sub(&mean))?;
    let var = c(centered.sqr()?.mean_keepdim(spatial.as_slice()))?;
    let a = c(var.affine(1.0, eps)?.sqrt()?.recip()?.broadcast_mul(&scale))?;
    let y = c(centered.broadcast_mul(&a)?.broadcast_add(&bias))?;
    one(like(y, v))
}

/// LRN, AlexNet's and GoogLeNet's local response normalization: x / (bias + α/size · Σ x²)^β, the
/// sum over the `size` channels around each one (⌊(size−1)/2⌋ before it, the rest after).
pub fn lrn(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let x = cx.float(0)?;
    let channels = channels(x, "LRN")?;
    let size = cx.int("size", 0)?;
    if size < 1 {
        return Err("attribute 'size' must be a positive integer".into());
    }
    let (alpha, beta, bias) = (
        cx.float_attr("alpha", 1e-4)? as f64,
        cx.float_attr("beta", 0.75)? as f64,
        cx.float_attr("bias", 1.0)? as f64,
    );
    // Channels past either end add zeros: the window is clipped to the channels there are.
    let before = (((size - 1) / 2) as usize).min(channels.saturating_sub(1));
    let after = ((size - 1 - (size - 1) / 2) as usize).min(channels.saturating_sub(1));
    let squares = c(x.sqr()?.pad_with_zeros(1, before, after))?;
    let mut sum = c(squares.narrow(1, 0, channels))?;
    for offset in 1..=before + after {
        sum = c(sum.add(&squares.narrow(1, offset, channels)?))?;
    }
    let scale = c(sum.affine(alpha / size as f64, bias)?.powf(beta))?;
    one(like(c(x.div(&scale))?, v))
}

/// The channels of `op`'s input, which must be [N, C, D1, ...].
fn channels(x: &Tensor, op: &str) -> R<usize> {
    match x.dims() {
        [_, c, _, ..] => Ok(*c),
        dims => Err(Error::Op(format!(
            "input has shape {dims:?}: {op} needs [N, C, D1, ...]"
        ))),
    }
}

/// LayerNormalization over the axes from `axis` to the last; optional Mean and InvStdDev outputs.
pub fn layer_norm(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let x = cx.float(0)?;
    let first = axis(cx.int("axis", -1)?, x.rank())?;
    let eps = cx.float_attr("epsilon", 1e-5)? as f64;
    let dims: Vec<usize> = (first..x.rank()).collect();
    let mean = c(x.mean_keepdim(dims.as_slice()))?;
    let centered = c(x.broadcast_sub(&mean))?;
    let var = c(centered.sqr()?.mean_keepdim(dims.as_slice()))?;
    let inv_std = c(var.affine(1.0, eps)?.sqrt()?.recip())?;
    let mut y = c(centered
        .broadcast_mul(&inv_std)?
        .broadcast_mul(cx.float(1)?))?;
    if let Some(b) = cx.opt(2) {
        y = c(y.broadcast_add(&b.tensor))?;
    }
    Ok(vec![like(y, v), like(mean, v), like(inv_std, v)])
}

/// Softmax / LogSoftmax. Before opset 13 the input is coerced to 2-D at `axis` (default 1) and
/// normalized over everything after it; from 13 over the one axis (default −1).
pub fn softmax(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let x = cx.float(0)?;
    let log = cx.node.op == Op::LogSoftmax;
    let y = if cx.opset < 13 {
        let a = axis(cx.int("axis", 1)?, x.rank())?;
        let rows: usize = x.dims()[..a].iter().product();
        let flat = c(x.reshape((rows, ())))?;
        c(softmax_last(&flat, log)?.reshape(x.dims()))?
    } else {
        let a = axis(cx.int("axis", -1)?, x.rank())?;
        let moved = c(x.transpose(a, x.rank() - 1))?;
        c(softmax_last(&moved, log)?.transpose(a, x.rank() - 1))?
    };
    one(like(y, v))
}

fn softmax_last(x: &Tensor, log: bool) -> R<Tensor> {
    let n = x.dims().last().copied().unwrap_or(0);
    if x.dtype() == candle_core::DType::F32 && !x.track_op() && n > 0 {
        let y = crate::value::with_f32_slice(x, |v| softmax_rows(v, n, log))?;
        return c(Tensor::from_vec(y, x.dims(), x.device()));
    }
    let shifted = c(x.broadcast_sub(&x.max_keepdim(D::Minus1)?))?;
    let e = c(shifted.exp())?;
    let sum = c(e.sum_keepdim(D::Minus1))?;
    if log {
        c(shifted.broadcast_sub(&sum.log()?))
    } else {
        c(e.broadcast_div(&sum))
    }
}

/// Softmax (or its log) of each row of `n` values of float32 `x`: rows in parallel, each in
/// three passes with the vectorized exponential. candle's five single-threaded passes, libm's
/// `expf` among them, took isbnx-yolo26n's two attention Softmaxes 2.4 ms a run at one
/// thread; these take 0.73 (ONNX Runtime: 0.25).
fn softmax_rows(x: &[f32], n: usize, log: bool) -> Vec<f32> {
    use rayon::prelude::*;
    let rows = (1 << 14) / n + 1;
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(rows * n)
        .zip(x.par_chunks(rows * n))
        .for_each(|(y, x)| {
            zeropoint_core::kernel::dispatch(
                #[inline(always)]
                || {
                    for (y, x) in y.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                        softmax_row(x, y, log);
                    }
                },
            )
        });
    y
}

/// One row: e_i = exp(x_i − max) summed in 16 lanes (a fixed order: the same bits whatever
/// the threads), then e_i / Σe, or (x_i − max) − ln Σe for the log. A NaN anywhere, or an
/// infinite maximum, makes the row NaN, as in ONNX Runtime.
#[inline(always)]
fn softmax_row(x: &[f32], y: &mut [f32], log: bool) {
    use super::elementwise::exp_f32;
    // In 16 lanes too: one running maximum is a chain of compares that does not vectorize
    // (3x slower). NaN is never greater, so never the maximum; it reaches every output
    // through the sum.
    let mut highs = [f32::NEG_INFINITY; 16];
    let mut blocks = x.chunks_exact(16);
    for x in &mut blocks {
        for k in 0..16 {
            highs[k] = if x[k] > highs[k] { x[k] } else { highs[k] };
        }
    }
    let max =
        (highs.iter().chain(blocks.remainder()))
            .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut lanes = [0f32; 16];
    let (mut ys, mut xs) = (y.chunks_exact_mut(16), x.chunks_exact(16));
    for (y, x) in (&mut ys).zip(&mut xs) {
        for k in 0..16 {
            y[k] = exp_f32(x[k] - max);
            lanes[k] += y[k];
        }
    }
    let mut tail = 0f32;
    for (y, &x) in ys.into_remainder().iter_mut().zip(xs.remainder()) {
        *y = exp_f32(x - max);
        tail += *y;
    }
    let sum = lanes.iter().sum::<f32>() + tail;
    if log {
        let ln = sum.ln();
        for (y, &x) in y.iter_mut().zip(x) {
            *y = (x - max) - ln;
        }
    } else {
        for y in y.iter_mut() {
            *y /= sum;
        }
    }
}
