//! Normalizations: BatchNormalization (inference), InstanceNormalization, LayerNormalization,
//! Softmax and LogSoftmax.

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
    if x.rank() < 3 {
        return Err(Error::Op(format!(
            "input has shape {:?}: InstanceNormalization needs [N, C, D1, ...]",
            x.dims()
        )));
    }
    let eps = cx.float_attr("epsilon", 1e-5)? as f64;
    let channels = x.dims()[1];
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
    let shifted = c(x.broadcast_sub(&x.max_keepdim(D::Minus1)?))?;
    let e = c(shifted.exp())?;
    let sum = c(e.sum_keepdim(D::Minus1))?;
    if log {
        c(shifted.broadcast_sub(&sum.log()?))
    } else {
        c(e.broadcast_div(&sum))
    }
}
