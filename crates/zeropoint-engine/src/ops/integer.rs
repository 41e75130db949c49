//! The integer operators of dynamically quantized models: DynamicQuantizeLinear, MatMulInteger
//! and ConvInteger, as ONNX defines them, and ONNX Runtime's MatMulIntegerToFloat. Products of
//! codes are computed in f32 where the operands' bounds keep every partial sum exact there, else
//! in f64, exact for every int32 result, then stored as int32.

use candle_core::{DType as CDType, Tensor};
use zeropoint_onnx::DType;

use super::{c, conv, matmul, Cx, Error, R};
use crate::value::Value;

/// uint8 codes of x with a scale and zero-point from its own range widened to contain 0:
/// s = (max − min)/255, z = saturate(round(−min/s)), q = saturate(round(x/s) + z), rounding half
/// to even. An all-zero input gets scale 0 and codes 0.
pub fn dynamic_quantize_linear(cx: &Cx) -> R<Vec<Value>> {
    let x = cx.input(0)?;
    let shape = x.shape().to_vec();
    let values = x.to_f32s()?;
    let lo = values.iter().fold(0f32, |m, &v| m.min(v));
    let hi = values.iter().fold(0f32, |m, &v| m.max(v));
    if let Some(bad) = zeropoint_core::kernel::first_non_finite(&values) {
        return Err(Error::Op(format!("input has a non-finite value ({bad})")));
    }
    let scale = (hi - lo) / 255.0;
    let (codes, zero) = if scale > 0.0 {
        let zero = (-lo / scale).round_ties_even().clamp(0.0, 255.0);
        let codes = values
            .iter()
            .map(|&v| ((v / scale).round_ties_even() + zero).clamp(0.0, 255.0) as i64)
            .collect();
        (codes, zero as i64)
    } else {
        (vec![0; values.len()], 0)
    };
    Ok(vec![
        Value::from_ints(codes, &shape, DType::U8)?,
        Value::from_f32_vec(vec![scale], &[])?,
        Value::from_ints(vec![zero], &[], DType::U8)?,
    ])
}

/// Input `i` minus zero-point input `zi` (absent: 0), as f64. The zero-point is a scalar or one
/// value per index of axis `axis(rank)` (a row of MatMul's A, a column of B, an output channel
/// of a convolution's weight).
fn shifted(cx: &Cx, i: usize, zi: usize, axis: fn(usize) -> usize) -> R<Tensor> {
    let v = cx.input(i)?;
    if v.dtype.is_float() {
        return Err(Error::Op(format!(
            "input {i} is {}, expected integer codes",
            v.dtype
        )));
    }
    let t = c(v.tensor.to_dtype(CDType::F64))?;
    let Some(z) = cx.opt(zi) else {
        return Ok(t);
    };
    let z = c(z.tensor.to_dtype(CDType::F64))?;
    let rank = t.rank();
    let a = axis(rank);
    let z = match z.elem_count() {
        1 => c(z.reshape(()))?,
        n if rank >= 2 && t.dims().get(a) == Some(&n) => {
            let mut shape = vec![1; rank];
            shape[a] = n;
            c(z.reshape(shape))?
        }
        n => {
            return Err(Error::Op(format!(
                "zero-point {zi} has {n} values for an input of shape {:?}",
                t.dims()
            )))
        }
    };
    c(t.broadcast_sub(&z))
}

/// An f64 result of exact integer products as int32.
fn int32(t: Tensor) -> R<Value> {
    let shape = t.dims().to_vec();
    let values: Vec<i64> = c(t.flatten_all().and_then(|t| t.to_vec1::<f64>()))?
        .into_iter()
        .map(|v| v as i64)
        .collect();
    if let Some(v) = values.iter().find(|v| i32::try_from(**v).is_err()) {
        return Err(Error::Op(format!("a product ({v}) overflows int32")));
    }
    Value::from_ints(values, &shape, DType::I32)
}

/// (A − a_zero)·(B − b_zero) in int32, numpy's batch broadcasting.
pub fn matmul_integer(cx: &Cx) -> R<Vec<Value>> {
    Ok(vec![int32(integer_product(cx, [0, 1, 2, 3])?)?])
}

/// ONNX Runtime's MatMulIntegerToFloat (com.microsoft): (A − a_zero)·(B − b_zero) · a_scale ·
/// b_scale + bias, in float32. a_scale broadcasts against the output: one value, or one per row
/// of A (`[..., M, 1]`, as zeropoint's per-token form writes it); b_scale one value or one per
/// column of B.
pub fn matmul_integer_to_float(cx: &Cx) -> R<Vec<Value>> {
    let product = c(integer_product(cx, [0, 1, 4, 5])?.to_dtype(CDType::F32))?;
    let (a_scale, b_scale) = (cx.float(2)?, cx.float(3)?);
    let mut y = c(product
        .broadcast_mul(a_scale)
        .and_then(|y| y.broadcast_mul(b_scale)))?;
    if let Some(bias) = cx.opt(6) {
        y = c(y.broadcast_add(&bias.tensor))?;
    }
    Ok(vec![Value::new(y, DType::F32)])
}

/// (A − a_zero)·(B − b_zero), exact, in f64: A, B and their zero-points at `inputs`.
fn integer_product(cx: &Cx, [ai, bi, azi, bzi]: [usize; 4]) -> R<Tensor> {
    let a = shifted(cx, ai, azi, |r| r.saturating_sub(2))?;
    let b = shifted(cx, bi, bzi, |r| r.saturating_sub(1))?;
    // Every partial sum of an output is at most max|a| times its column's Σ|b| (over K).
    let rank = b.rank();
    let column_l1 = c(b.abs().and_then(|a| a.sum(rank.saturating_sub(2))))?;
    let carrier = exact_carrier(max_abs(&a)? * max_abs(&column_l1)?);
    let as_carrier = |t: Tensor| c(t.to_dtype(crate::value::carrier(carrier)));
    let out = matmul::matmul_nd(&as_carrier(a)?, &as_carrier(b)?)?;
    c(out.to_dtype(CDType::F64))
}

/// The largest |value| of `t` (f64).
fn max_abs(t: &Tensor) -> R<f64> {
    c(t.abs()
        .and_then(|a| a.max_all())
        .and_then(|m| m.to_scalar::<f64>()))
}

/// The type integer products are summed in, given a bound on every partial sum: float32 where
/// the bound is below 2^24 (every such integer is exact in float32, in any order of summation,
/// and float32 is the fast GEMM and convolution), else f64 (exact up to 2^53).
fn exact_carrier(bound: f64) -> DType {
    if bound < f64::from(1u32 << 24) {
        DType::F32
    } else {
        DType::F64
    }
}

/// The convolution of (x − x_zero) by (w − w_zero) in int32, with Conv's attributes.
pub fn conv_integer(cx: &Cx) -> R<Vec<Value>> {
    // x's zero-point is a scalar; w's one per output channel (axis 0) or a scalar.
    let x = shifted(cx, 0, 2, |_| usize::MAX)?;
    let w = shifted(cx, 1, 3, |_| 0)?;
    // Every partial sum of an output is at most max|x| times its filter's sum of |w| (in f64 a
    // 1024² ConvInteger model took 22 s, ORT 2.5 s).
    let filter_l1 = c(w
        .abs()
        .and_then(|a| a.flatten_from(1))
        .and_then(|a| a.sum(1)))?;
    let carrier = exact_carrier(max_abs(&x)? * max_abs(&filter_l1)?);
    let as_carrier = |t: Tensor| c(t.to_dtype(crate::value::carrier(carrier)));
    let inputs = [
        Some(Value::new(as_carrier(x)?, carrier)),
        Some(Value::new(as_carrier(w)?, carrier)),
    ];
    let shifted_cx = Cx {
        node: cx.node,
        inputs: &inputs,
        opset: cx.opset,
    };
    let out = conv::conv_summing(&shifted_cx, super::conv_gemm::Sums::Products)?;
    Ok(vec![int32(c(out[0].tensor.to_dtype(CDType::F64))?)?])
}
