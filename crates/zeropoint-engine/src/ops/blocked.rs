//! ONNX Runtime's block-quantized weight operators (domain com.microsoft), as its contrib
//! operator documentation defines them:
//!
//! - MatMulNBits: Y = A·dequantize(B)ᵀ (+ bias), B uint8 `[N, blocks, block·bits/8]`, each
//!   column's codes along K packed low bits first; scales `[N·blocks]`; zero-points packed the
//!   same way per column, or float `[N·blocks]`, or absent (2^(bits−1));
//! - GatherBlockQuantized (gather_axis 0, quantize_axis 1): rows of a uint8 table
//!   `[rows, ⌈cols·bits/8⌉]` looked up, then dequantized with their `[rows, blocks]` scales and
//!   zero-points (packed per row; absent: 2^(bits−1)).
//!
//! Both dequantize (code − zero)·scale in f32.

use candle_core::Tensor;
use zeropoint_onnx::DType;

use super::{c, matmul, Cx, Error, R};
use crate::value::Value;

/// Code `t` of a row packed low bits first.
fn unpack(row: &[i64], t: usize, bits: usize) -> f32 {
    let byte = row[t * bits / 8];
    ((byte >> ((t * bits) % 8)) & ((1 << bits) - 1)) as f32
}

/// The zero-points of `rows` rows of `blocks` blocks: packed uint8 per row, float, or absent.
fn zeros(cx: &Cx, i: usize, rows: usize, blocks: usize, bits: usize) -> R<Vec<f32>> {
    let Some(z) = cx.opt(i) else {
        return Ok(vec![(1u32 << (bits - 1)) as f32; rows * blocks]);
    };
    if z.dtype.is_float() {
        let v = z.to_f32s()?;
        if v.len() != rows * blocks {
            return Err(Error::Op(format!(
                "{} float zero-points for {rows}x{blocks} blocks",
                v.len()
            )));
        }
        return Ok(v);
    }
    let packed = z.to_i64s()?;
    let per = (blocks * bits).div_ceil(8);
    if packed.len() != rows * per {
        return Err(Error::Op(format!(
            "{} packed zero-points for {rows}x{blocks} blocks",
            packed.len()
        )));
    }
    Ok((0..rows * blocks)
        .map(|i| {
            unpack(
                &packed[(i / blocks) * per..(i / blocks + 1) * per],
                i % blocks,
                bits,
            )
        })
        .collect())
}

fn bits_of(cx: &Cx) -> R<usize> {
    match cx.int("bits", 4)? {
        b @ (2 | 4 | 8) => Ok(b as usize),
        b => Err(Error::Op(format!("bits {b} is not 2, 4 or 8"))),
    }
}

fn block_of(cx: &Cx) -> R<usize> {
    match cx.int("block_size", 0)? {
        b if b >= 16 && (b as u64).is_power_of_two() => Ok(b as usize),
        b => Err(Error::Op(format!(
            "block_size {b} is not a power of two from 16"
        ))),
    }
}

pub fn matmul_nbits(cx: &Cx) -> R<Vec<Value>> {
    let a = cx.input(0)?;
    let (k, n) = (
        cx.int("K", 0)?.max(0) as usize,
        cx.int("N", 0)?.max(0) as usize,
    );
    let (bits, block) = (bits_of(cx)?, block_of(cx)?);
    let blocks = k.div_ceil(block);
    let blob = block * bits / 8;
    let b = cx.input(1)?.to_i64s()?;
    let scales = cx.input(2)?.to_f32s()?;
    if b.len() != n * blocks * blob || scales.len() != n * blocks {
        return Err(Error::Op(format!(
            "B has {} bytes and scales {} values, not {n}x{blocks}x{blob} and {n}x{blocks} for K {k}, N {n}",
            b.len(),
            scales.len()
        )));
    }
    let z = zeros(cx, 3, n, blocks, bits)?;
    // Dequantized as [K, N], the layout MatMul multiplies by.
    let mut w = vec![0f32; k * n];
    for j in 0..n {
        let column = &b[j * blocks * blob..(j + 1) * blocks * blob];
        for r in 0..k {
            let (bl, t) = (r / block, r % block);
            let p = j * blocks + bl;
            w[r * n + j] =
                (unpack(&column[bl * blob..(bl + 1) * blob], t, bits) - z[p]) * scales[p];
        }
    }
    let w = c(Tensor::from_vec(w, (k, n), a.tensor.device()))?;
    let mut y = matmul::matmul_nd(cx.float(0)?, &c(w.to_dtype(a.tensor.dtype()))?)?;
    if let Some(bias) = cx.opt(5) {
        y = c(y.broadcast_add(&bias.tensor))?;
    }
    Ok(vec![Value::new(y, a.dtype)])
}

pub fn gather_block_quantized(cx: &Cx) -> R<Vec<Value>> {
    if cx.int("gather_axis", 0)? != 0 || cx.int("quantize_axis", 1)? != 1 {
        return Err(Error::Op(
            "only gather_axis 0 and quantize_axis 1 are supported".into(),
        ));
    }
    let data = cx.input(0)?;
    if data.dtype != DType::U8 || data.shape().len() != 2 {
        return Err(Error::Op("data must be a 2-D uint8 table".into()));
    }
    let (bits, block) = (bits_of(cx)?, block_of(cx)?);
    let scales = cx.input(2)?;
    let (rows, width) = (data.shape()[0], data.shape()[1]);
    let blocks = *scales.shape().get(1).unwrap_or(&0);
    let cols = (width * 8 / bits).min(blocks * block);
    let s = scales.to_f32s()?;
    if scales.shape() != [rows, blocks] || cols.div_ceil(block) != blocks {
        return Err(Error::Op(format!(
            "scales {:?} do not fit a {rows}x{width} table",
            scales.shape()
        )));
    }
    let z = zeros(cx, 3, rows, blocks, bits)?;
    let table = data.to_i64s()?;
    let idx_v = cx.input(1)?;
    let indices = super::indices_in(&idx_v.to_i64s()?, 0, rows)?;
    let mut out = Vec::with_capacity(indices.len() * cols);
    for &r in &indices {
        let (r, row) = (
            r as usize,
            &table[r as usize * width..(r as usize + 1) * width],
        );
        for t in 0..cols {
            let p = r * blocks + t / block;
            out.push((unpack(row, t, bits) - z[p]) * s[p]);
        }
    }
    let mut shape = idx_v.shape().to_vec();
    shape.push(cols);
    Ok(vec![Value::from_f32_vec(out, &shape)?])
}
