//! QuantizeLinear and DequantizeLinear, computed by zeropoint-core's kernels (bit-exact with
//! ONNX's definition, see that crate's tests), so that QDQ models run as runtimes run them.

use candle_core::{Device, Tensor};
use zeropoint_core::{Code, Granularity, Grid, QParams, QTensor, Storage};

use super::{axis, c, dtype_code, one, Cx, Error, R};
use crate::value::Value;
use zeropoint_onnx::DType;

/// The scale/zero-point layout: per tensor, per axis (1-D scale), or blocked (block_size > 0).
fn params(cx: &Cx, x_shape: &[usize], code_type: DType) -> R<QParams> {
    let scale = cx.input(1)?;
    let scales = scale.to_f32s()?;
    let zero_points: Vec<i32> = match cx.opt(2) {
        Some(z) => z.to_i64s()?.into_iter().map(|v| v as i32).collect(),
        None => vec![0; scales.len()],
    };
    let block = cx.int("block_size", 0)?;
    let granularity = if scale.shape().iter().product::<usize>() == 1 && scale.shape().len() <= 1 {
        Granularity::PerTensor
    } else {
        let a = axis(cx.int("axis", 1)?, x_shape.len())?;
        if block > 0 {
            Granularity::PerBlock {
                axis: a,
                block: block as usize,
            }
        } else {
            Granularity::PerAxis { axis: a }
        }
    };
    let grid = code_grid(code_type)
        .ok_or_else(|| Error::Op(format!("quantized type {code_type} is not supported")))?;
    Ok(QParams::new(granularity, grid, scales, zero_points)?)
}

/// The grid of a code type: its storage's whole grid (int32 too: biases are dequantized from it).
fn code_grid(dtype: DType) -> Option<Grid> {
    if dtype == DType::I32 {
        return Some(Grid {
            qmin: i32::MIN,
            qmax: i32::MAX,
        });
    }
    dtype.storage().map(Storage::grid)
}

pub fn quantize_linear(cx: &Cx) -> R<Vec<Value>> {
    let x = cx.input(0)?;
    let to = match cx.opt(2) {
        Some(z) => z.dtype,
        None => match cx.int("output_dtype", 0)? {
            0 => DType::U8,
            code => dtype_code(code)?,
        },
    };
    let shape = x.shape().to_vec();
    let p = params(cx, &shape, to)?;
    let codes = x.with_f32s(|x| codes(x, &shape, &p, to))??;
    one(Value::from_ints(codes, &shape, to)?)
}

/// The codes of `x` (shape `shape`) under `p`, in the storage of `ty` (uint4, int4, uint8, int8,
/// uint16, int16), widened to i64.
fn codes(x: &[f32], shape: &[usize], p: &QParams, ty: DType) -> R<Vec<i64>> {
    let storage = ty
        .storage()
        .ok_or_else(|| Error::Op(format!("quantized type {ty} is not supported")))?;
    let q = QTensor::quantize_with(x, shape, p.clone(), storage)?;
    Ok(q.codes_i32().into_iter().map(i64::from).collect())
}

pub fn dequantize_linear(cx: &Cx) -> R<Vec<Value>> {
    let x = cx.input(0)?;
    let shape = x.shape().to_vec();
    let p = params(cx, &shape, x.dtype)?;
    let codes = x.to_i64s()?;
    fn dq<T: Code>(codes: &[i64], shape: &[usize], p: &QParams) -> R<Vec<f32>> {
        let q: Vec<T> = codes.iter().map(|&v| T::from_code(v as i32)).collect();
        let mut out = vec![0f32; q.len()];
        zeropoint_core::dequantize(&q, shape, p, &mut out)?;
        Ok(out)
    }
    let out = match x.dtype {
        DType::U8 | DType::U4 => dq::<u8>(&codes, &shape, &p)?,
        DType::I8 | DType::I4 => dq::<i8>(&codes, &shape, &p)?,
        DType::U16 => dq::<u16>(&codes, &shape, &p)?,
        DType::I16 => dq::<i16>(&codes, &shape, &p)?,
        // int32 (biases of quantized layers): (q − z)·s in float, as the runtimes compute it.
        DType::I32 => {
            let layout = p.layout_for(codes.len(), &shape)?;
            let at = |i: usize| layout.param_index(i);
            codes
                .iter()
                .enumerate()
                .map(|(i, &q)| (q - p.zero_point[at(i)] as i64) as f32 * p.scale[at(i)])
                .collect()
        }
        d => return Err(Error::Op(format!("quantized type {d} is not supported"))),
    };
    one(Value::f32(c(Tensor::from_vec(
        out,
        shape.as_slice(),
        &Device::Cpu,
    ))?))
}
