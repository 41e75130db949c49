//! GPTQ (Frantar et al. 2022, arXiv 2210.17323) inside ggml's block formats: the same bytes
//! layout any llama.cpp build reads, with the codes chosen to cancel each other's error on the
//! layer's inputs instead of each rounded to nearest.
//!
//! A ggml tensor row is one output unit; its elements are the layer's inputs, in blocks of 32
//! (legacy formats) or 256 (K-quants). For every row, input by input:
//!
//! ```text
//! when an input starts a block:  the block's scales from ggml's own quantizer, run on the
//!                                row's values as updated so far (importance: diag H)
//! q_i   = a_i·c_i + b_i          c_i = clamp(round((w_i − b_i)/a_i), 0, 2^bits − 1)
//! err_i = (w_i − q_i) / U_ii     w_j −= U_ij · err_i  for every later input j
//! ```
//!
//! where every ggml format dequantizes a code affinely, q = a·c + b, with a and b per element
//! from the block's scales (a sub-block's scale and min for K-quants), and U is the upper
//! Cholesky factor of H⁻¹ (H = Σ x xᵀ over the calibration inputs, dampened). Updates to the
//! inputs after a lazy block of 128 are batched. Rows are independent given U, so they are
//! processed in parallel in fixed chunks: the bytes do not depend on the thread count.
//!
//! With act-order (GPTQ's reference code, `--act-order`; AutoGPTQ's `desc_act` with
//! `static_groups`) the inputs go by decreasing diag H, so that the inputs with the most energy
//! are rounded while the most inputs are left to absorb their error; H and U are permuted to
//! that order. Blocks stay contiguous in the row, as ggml's layout needs, so a block's inputs
//! are no longer visited together: a block's scales are fixed when the first of its inputs is
//! reached, from the whole block as updated so far (on SmolLM2-135M this beat scales fixed from
//! the weights before any update, AutoGPTQ's `static_groups`: mean KL divergence from float
//! 0.0148 against 0.0157 at Q4_K_M, 0.0352 against 0.0361 at Q3_K_M).

use rayon::prelude::*;

use super::kquant::{pack_2bit, pack_k4, pack_q3, pack_q6};
use super::legacy::pack_q5;
use super::{dequantize_rows, quantize_rows, quantize_rows_weighted, GgmlError, GgmlType};
use crate::linalg::inverse_cholesky_upper;

const QK: usize = 32;

/// Inputs per lazy batch of updates (the paper's B).
const LAZY: usize = 128;
/// Rows per parallel task.
const ROWS: usize = 8;

/// Bits per code of the formats GPTQ can write, `None` for the others.
pub fn code_bits(ty: GgmlType) -> Option<u32> {
    use GgmlType::*;
    Some(match ty {
        Q8_0 => 8,
        Q4_0 | Q4_1 | Q4_K => 4,
        Q5_0 | Q5_1 | Q5_K => 5,
        Q2_K => 2,
        Q3_K => 3,
        Q6_K => 6,
        _ => return None,
    })
}

/// Overwrites the codes of one block (`codes[i]` in 0..2^bits, element i) and keeps its scales.
pub fn set_codes(ty: GgmlType, block: &mut [u8], codes: &[u8]) {
    use GgmlType::*;
    match ty {
        Q8_0 => {
            for (b, &c) in block[2..34].iter_mut().zip(codes) {
                *b = c ^ 0x80;
            }
        }
        Q4_0 | Q4_1 => {
            let at = if ty == Q4_0 { 2 } else { 4 };
            for j in 0..QK / 2 {
                block[at + j] = codes[j] | (codes[j + QK / 2] << 4);
            }
        }
        Q5_0 | Q5_1 => {
            let at = if ty == Q5_0 { 2 } else { 4 };
            pack_q5(codes.try_into().expect("a block of codes"), block, at);
        }
        Q2_K => pack_2bit(
            codes.try_into().expect("a block of codes"),
            &mut block[16..80],
        ),
        Q3_K => pack_q3(codes.try_into().expect("a block of codes"), block),
        Q4_K => pack_k4(codes.try_into().expect("a block of codes"), 4, block),
        Q5_K => pack_k4(codes.try_into().expect("a block of codes"), 5, block),
        Q6_K => pack_q6(codes.try_into().expect("a block of codes"), block),
        _ => unreachable!("code_bits lists the formats"),
    }
}

/// GPTQ's knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Added to H's diagonal, as a fraction of its mean (the paper's 1%).
    pub damp: f64,
    /// Inputs by decreasing Hessian diagonal.
    pub act_order: bool,
}

/// GPTQ of `w` (`rows` × `cols`, ggml's layout: a row per output unit) on `h` (`cols` × `cols`,
/// Σ x xᵀ over the layer's calibration inputs) into `ty`'s blocks. Errors: a format GPTQ cannot
/// write, rows that are not whole blocks, non-finite weights, a Hessian that stays singular.
pub fn gptq_rows(
    ty: GgmlType,
    (w, rows, cols): (&[f32], usize, usize),
    h: &[f64],
    opts: Options,
) -> Result<Vec<u8>, String> {
    let bits = code_bits(ty).ok_or_else(|| format!("GPTQ cannot write {ty} blocks"))?;
    let block = ty.block_size();
    if !cols.is_multiple_of(block) || w.len() != rows * cols || h.len() != cols * cols {
        return Err(format!(
            "a {rows}x{cols} weight does not split into {ty} blocks of {block}"
        ));
    }
    let mut h = h.to_vec();
    let mut dead = vec![false; cols];
    for i in 0..cols {
        // An input that is always zero carries no information: its weights do not matter.
        if h[i * cols + i] == 0.0 {
            h[i * cols + i] = 1.0;
            dead[i] = true;
        }
    }
    let importance: Vec<f32> = (0..cols).map(|i| h[i * cols + i] as f32).collect();
    let mut order: Vec<usize> = (0..cols).collect();
    if opts.act_order {
        // Stable: equal diagonals keep their column order.
        order.sort_by(|&a, &b| h[b * cols + b].total_cmp(&h[a * cols + a]));
    }
    let mut hp: Vec<f64> = (0..cols * cols)
        .map(|i| h[order[i / cols] * cols + order[i % cols]])
        .collect();
    let mean = importance.iter().map(|&v| f64::from(v)).sum::<f64>() / cols as f64;
    for i in 0..cols {
        hp[i * cols + i] += opts.damp * mean;
    }
    let u = inverse_cholesky_upper(hp, cols)?;
    let mut position = vec![0; cols];
    for (p, &c) in order.iter().enumerate() {
        position[c] = p;
    }
    let job = Job {
        ty,
        max_code: ((1u32 << bits) - 1) as f32,
        block,
        cols,
        u: &u,
        importance: &importance,
        dead: &dead,
        order: &order,
        position: &position,
    };
    let row_bytes = cols / block * ty.type_size();
    let chunks: Vec<Result<Vec<u8>, String>> = w
        .par_chunks(ROWS * cols)
        .map(|rows| {
            let mut out = Vec::with_capacity(rows.len() / cols * row_bytes);
            for row in rows.chunks_exact(cols) {
                out.extend(job.row(row)?);
            }
            Ok(out)
        })
        .collect();
    chunks
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map(|c| c.concat())
}

/// What every row shares.
struct Job<'a> {
    ty: GgmlType,
    max_code: f32,
    block: usize,
    cols: usize,
    u: &'a [f32],
    importance: &'a [f32],
    dead: &'a [bool],
    /// The inputs in the order they are quantized, and each input's place in it.
    order: &'a [usize],
    position: &'a [usize],
}

impl Job<'_> {
    /// One row's blocks.
    fn row(&self, w: &[f32]) -> Result<Vec<u8>, String> {
        let (n, bs) = (self.cols, self.block);
        // The row in quantization order: U's rows update it contiguously.
        let mut w: Vec<f32> = (self.order.iter())
            .map(|&c| if self.dead[c] { 0.0 } else { w[c] })
            .collect();
        // Lazy batches are whole blocks.
        let lazy = LAZY.max(bs).div_ceil(bs) * bs;
        let mut err = vec![0f32; lazy];
        let mut codes = vec![0u8; n];
        let mut blocks: Vec<Option<(Vec<u8>, Grid)>> = vec![None; n / bs];
        for b0 in (0..n).step_by(lazy) {
            let b1 = (b0 + lazy).min(n);
            for i in b0..b1 {
                let col = self.order[i];
                let (blk, e) = (col / bs, col % bs);
                if blocks[blk].is_none() {
                    // The block as updated so far (in column order, its first input comes first).
                    let span = blk * bs..(blk + 1) * bs;
                    let values: Vec<f32> = span.clone().map(|c| w[self.position[c]]).collect();
                    let bytes = self.block_bytes(&values, &self.importance[span])?;
                    let grid = self.grid(&bytes);
                    blocks[blk] = Some((bytes, grid));
                }
                let grid = &blocks[blk].as_ref().expect("set above").1;
                let (a, b) = (grid.a[e], grid.b[e]);
                let c = if a == 0.0 {
                    0.0
                } else {
                    ((w[i] - b) / a).round().clamp(0.0, self.max_code)
                };
                codes[col] = c as u8;
                err[i - b0] = (w[i] - (a * c + b)) / self.u[i * n + i];
                let ui = &self.u[i * n..(i + 1) * n];
                for j in i + 1..b1 {
                    w[j] -= ui[j] * err[i - b0];
                }
            }
            for i in b0..b1 {
                let ui = &self.u[i * n..(i + 1) * n];
                for j in b1..n {
                    w[j] -= ui[j] * err[i - b0];
                }
            }
        }
        let mut out = Vec::with_capacity(n / bs * self.ty.type_size());
        for (blk, visited) in blocks.into_iter().enumerate() {
            let (mut bytes, _) = visited.expect("every input is visited");
            set_codes(self.ty, &mut bytes, &codes[blk * bs..(blk + 1) * bs]);
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    }

    /// ggml's own quantization of one block (importance-weighted where the format's quantizer
    /// takes weights), which fixes the block's scales.
    fn block_bytes(&self, x: &[f32], importance: &[f32]) -> Result<Vec<u8>, String> {
        let located = |e: GgmlError| e.to_string();
        match self.ty {
            GgmlType::Q8_0 => quantize_rows(self.ty, x, x.len()),
            _ => quantize_rows_weighted(self.ty, x, x.len(), importance),
        }
        .map_err(located)
    }

    /// Every element's dequantization a·c + b under the block's scales: the values of codes 0
    /// and 1.
    fn grid(&self, bytes: &[u8]) -> Grid {
        let bs = self.block;
        let value_of = |c: u8| {
            let mut probe = bytes.to_vec();
            set_codes(self.ty, &mut probe, &vec![c; bs]);
            dequantize_rows(self.ty, &probe, bs).expect("a whole block")
        };
        let (zero, one) = (value_of(0), value_of(1));
        Grid {
            a: zero.iter().zip(&one).map(|(z, o)| o - z).collect(),
            b: zero,
        }
    }
}

#[derive(Clone)]
struct Grid {
    a: Vec<f32>,
    b: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// Σ_rows (w − q)ᵀ H (w − q): the layer's squared output error on the inputs H came from.
    fn output_error(h: &[f64], w: &[f32], q: &[f32], cols: usize) -> f64 {
        w.chunks(cols)
            .zip(q.chunks(cols))
            .map(|(w, q)| {
                let d: Vec<f64> = w.iter().zip(q).map(|(a, b)| f64::from(a - b)).collect();
                (0..cols)
                    .map(|a| {
                        (0..cols)
                            .map(|b| d[a] * h[a * cols + b] * d[b])
                            .sum::<f64>()
                    })
                    .sum::<f64>()
            })
            .sum()
    }

    #[test]
    fn codes_written_are_the_codes_read() {
        let mut seed = 7;
        let x: Vec<f32> = (0..256).map(|_| lcg(&mut seed)).collect();
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            // Rewriting a block with the codes ggml chose gives the same bytes back.
            let bs = ty.block_size();
            let bytes = quantize_rows(ty, &x[..bs], bs).unwrap();
            let job = Job {
                ty,
                max_code: ((1u32 << code_bits(ty).unwrap()) - 1) as f32,
                block: bs,
                cols: bs,
                u: &[],
                importance: &[],
                dead: &[],
                order: &[],
                position: &[],
            };
            let grid = job.grid(&bytes);
            let y = dequantize_rows(ty, &bytes, bs).unwrap();
            let codes: Vec<u8> = (0..bs)
                .map(|e| {
                    if grid.a[e] == 0.0 {
                        0
                    } else {
                        ((y[e] - grid.b[e]) / grid.a[e]).round() as u8
                    }
                })
                .collect();
            let mut again = bytes.clone();
            set_codes(ty, &mut again, &codes);
            assert_eq!(again, bytes, "{ty}");
        }
    }

    #[test]
    fn gptq_lowers_the_output_error_of_ggml_rounding() {
        let (rows, cols, samples) = (16, 256, 512);
        let mut seed = 1;
        let h = hessian(cols, samples, |_| 1.0, &mut seed);
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
            GgmlType::Q3_K,
        ] {
            let rtn = dequantize_rows(ty, &quantize_rows(ty, &w, cols).unwrap(), cols).unwrap();
            let gptq = gptq_values(ty, (&w, rows, cols), &h, false);
            let (e_rtn, e_gptq) = (
                output_error(&h, &w, &rtn, cols),
                output_error(&h, &w, &gptq, cols),
            );
            println!("{ty}: output error GPTQ {e_gptq:.4}, ggml rounding {e_rtn:.4}");
            assert!(
                e_gptq < 0.7 * e_rtn,
                "{ty}: GPTQ {e_gptq:.4} vs RTN {e_rtn:.4}"
            );
        }
    }

    /// The values GPTQ's `ty` blocks of `w` stand for (1% dampening).
    fn gptq_values(
        ty: GgmlType,
        (w, rows, cols): (&[f32], usize, usize),
        h: &[f64],
        act_order: bool,
    ) -> Vec<f32> {
        let opts = Options {
            damp: 0.01,
            act_order,
        };
        let q = gptq_rows(ty, (w, rows, cols), h, opts).unwrap();
        dequantize_rows(ty, &q, cols).unwrap()
    }

    /// H = Σ x xᵀ of `samples` inputs of `cols` channels, channel c scaled by `scale(c)`, all
    /// sharing a common component (correlated, as a layer's activations are).
    fn hessian(
        cols: usize,
        samples: usize,
        scale: impl Fn(usize) -> f32,
        seed: &mut u64,
    ) -> Vec<f64> {
        let mut h = vec![0f64; cols * cols];
        for _ in 0..samples {
            let common = lcg(seed);
            let s: Vec<f32> = (0..cols)
                .map(|c| scale(c) * (common + 0.3 * lcg(seed)))
                .collect();
            for a in 0..cols {
                for b in 0..cols {
                    h[a * cols + b] += f64::from(s[a] * s[b]);
                }
            }
        }
        h
    }

    /// Act-order's point: where a few inputs carry most of the energy (as in a transformer's
    /// activations), rounding them first, while every other input can still absorb their
    /// error, lowers the layer's output error in every format.
    #[test]
    fn act_order_lowers_the_error_where_a_few_inputs_dominate() {
        let (rows, cols) = (16, 512);
        let mut seed = 3;
        let scale = |c: usize| match c % 37 {
            5 => 10.0,
            r => 1.0 + (r % 7) as f32 * 0.2,
        };
        let h = hessian(cols, 768, scale, &mut seed);
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_K,
            GgmlType::Q3_K,
            GgmlType::Q6_K,
            GgmlType::Q2_K,
        ] {
            let quantized = |act_order| gptq_values(ty, (&w, rows, cols), &h, act_order);
            let (plain, act) = (quantized(false), quantized(true));
            let (e_plain, e_act) = (
                output_error(&h, &w, &plain, cols),
                output_error(&h, &w, &act, cols),
            );
            println!("{ty}: output error column order {e_plain:.4}, act-order {e_act:.4}");
            assert!(e_act < 0.97 * e_plain, "{ty}: {e_act:.4} vs {e_plain:.4}");
        }
    }
}
