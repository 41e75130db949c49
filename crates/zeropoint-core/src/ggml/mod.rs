//! ggml's block formats: the tensor types of llama.cpp's GGUF files, each a small block of codes
//! with its own scales, and the loops that fill and read them.
//!
//! The quantizers reproduce ggml's reference functions (`quantize_row_*_ref` in
//! `ggml-quants.c`) operation for operation, in the same f32 arithmetic and the same order, so that
//! a row quantized here is byte-identical to what `llama-quantize` writes without an importance
//! matrix. That is why they read like C: a cleverer loop would round differently somewhere.
//!
//! - legacy formats, blocks of 32: [`GgmlType::Q4_0`], `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`
//!   (`legacy`);
//! - K-quants, super-blocks of 256 with quantized sub-block scales: `Q2_K` .. `Q6_K`
//!   (`kquant`).
//!
//! Every other ggml type is known by its block geometry only, so that a GGUF file holding it can
//! be read and written losslessly.

pub mod gptq;
mod kquant;
mod lanes;
mod legacy;
mod weighted;

use rayon::prelude::*;

/// The tensor types of ggml (`enum ggml_type`), with the ids GGUF files store.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
    Q2_0,
}

/// id, name, elements per block, bytes per block: ggml's `type_traits` table.
const TYPES: [(GgmlType, u32, &str, usize, usize); 35] = {
    use GgmlType::*;
    [
        (F32, 0, "F32", 1, 4),
        (F16, 1, "F16", 1, 2),
        (Q4_0, 2, "Q4_0", 32, 18),
        (Q4_1, 3, "Q4_1", 32, 20),
        (Q5_0, 6, "Q5_0", 32, 22),
        (Q5_1, 7, "Q5_1", 32, 24),
        (Q8_0, 8, "Q8_0", 32, 34),
        (Q8_1, 9, "Q8_1", 32, 36),
        (Q2_K, 10, "Q2_K", 256, 84),
        (Q3_K, 11, "Q3_K", 256, 110),
        (Q4_K, 12, "Q4_K", 256, 144),
        (Q5_K, 13, "Q5_K", 256, 176),
        (Q6_K, 14, "Q6_K", 256, 210),
        (Q8_K, 15, "Q8_K", 256, 292),
        (IQ2_XXS, 16, "IQ2_XXS", 256, 66),
        (IQ2_XS, 17, "IQ2_XS", 256, 74),
        (IQ3_XXS, 18, "IQ3_XXS", 256, 98),
        (IQ1_S, 19, "IQ1_S", 256, 50),
        (IQ4_NL, 20, "IQ4_NL", 32, 18),
        (IQ3_S, 21, "IQ3_S", 256, 110),
        (IQ2_S, 22, "IQ2_S", 256, 82),
        (IQ4_XS, 23, "IQ4_XS", 256, 136),
        (I8, 24, "I8", 1, 1),
        (I16, 25, "I16", 1, 2),
        (I32, 26, "I32", 1, 4),
        (I64, 27, "I64", 1, 8),
        (F64, 28, "F64", 1, 8),
        (IQ1_M, 29, "IQ1_M", 256, 56),
        (BF16, 30, "BF16", 1, 2),
        (TQ1_0, 34, "TQ1_0", 256, 54),
        (TQ2_0, 35, "TQ2_0", 256, 66),
        (MXFP4, 39, "MXFP4", 32, 17),
        (NVFP4, 40, "NVFP4", 64, 36),
        (Q1_0, 41, "Q1_0", 128, 18),
        (Q2_0, 42, "Q2_0", 64, 18),
    ]
};

impl GgmlType {
    fn row(self) -> &'static (GgmlType, u32, &'static str, usize, usize) {
        TYPES
            .iter()
            .find(|t| t.0 == self)
            .expect("every variant is in TYPES")
    }

    /// The type with this GGUF id, if ggml has one.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPES.iter().find(|t| t.1 == id).map(|t| t.0)
    }

    /// The type named `name` (case-insensitive: "q4_k" and "Q4_K" both work).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        TYPES
            .iter()
            .find(|t| t.2.eq_ignore_ascii_case(name))
            .map(|t| t.0)
    }

    pub fn id(self) -> u32 {
        self.row().1
    }

    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        self.row().3
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.row().4
    }

    /// Bytes of a row of `n` elements, or `None` when `n` is not a whole number of blocks.
    pub fn row_size(self, n: usize) -> Option<usize> {
        n.is_multiple_of(self.block_size())
            .then(|| n / self.block_size() * self.type_size())
    }

    /// Whether zeropoint can write this type from floats.
    pub fn can_quantize(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K
        )
    }

    /// Whether zeropoint can read this type back to floats.
    pub fn can_dequantize(self) -> bool {
        self.can_quantize()
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a row could not be converted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgmlError {
    #[error("zeropoint cannot {0} ggml type {1}")]
    Unsupported(&'static str, GgmlType),
    #[error("a row of {n} elements is not a whole number of {ty} blocks of {block}")]
    RowLength {
        n: usize,
        ty: GgmlType,
        block: usize,
    },
    #[error("{0} bytes do not hold a whole number of rows of this type and length")]
    ByteLength(usize),
    #[error("element {index} is {value}: ggml's quantizers need finite values")]
    NonFinite { index: usize, value: f32 },
    #[error("the importance vector has {got} values but a row has {n}")]
    Importance { got: usize, n: usize },
    #[error("importance {index} is {value}: importances are finite and non-negative")]
    BadImportance { index: usize, value: f32 },
}

/// Converts `rows` of `n_per_row` floats to `ty`, rows in parallel. Each row is encoded on its
/// own, so the bytes do not depend on the thread count.
pub fn quantize_rows(ty: GgmlType, x: &[f32], n_per_row: usize) -> Result<Vec<u8>, GgmlError> {
    let mut out = output_buffer(ty, x, n_per_row)?;
    quantize_rows_into(ty, x, n_per_row, &mut out)?;
    Ok(out)
}

/// [`quantize_rows`] into a buffer of exactly the output's size, so that a caller converting a
/// large tensor slab by slab reuses one buffer.
pub fn quantize_rows_into(
    ty: GgmlType,
    x: &[f32],
    n_per_row: usize,
    out: &mut [u8],
) -> Result<(), GgmlError> {
    encode_rows(ty, x, n_per_row, out, |src, dst| quantize_row(ty, src, dst))
}

/// A zeroed buffer for `x` in `ty`, rows of `n_per_row`.
fn output_buffer(ty: GgmlType, x: &[f32], n_per_row: usize) -> Result<Vec<u8>, GgmlError> {
    let row_bytes = checked_row_bytes(ty, n_per_row)?;
    Ok(vec![
        0u8;
        x.len().checked_div(n_per_row).unwrap_or(0) * row_bytes
    ])
}

/// Runs `encode` on every row of `x` and its slice of `out`, rows in parallel, after checking the
/// sizes. `encode` returns false for a row that holds NaN or infinity, and the first bad element
/// is then reported.
fn encode_rows(
    ty: GgmlType,
    x: &[f32],
    n_per_row: usize,
    out: &mut [u8],
    encode: impl Fn(&[f32], &mut [u8]) -> bool + Sync,
) -> Result<(), GgmlError> {
    let row_bytes = checked_row_bytes(ty, n_per_row)?;
    let rows = x.len().checked_div(n_per_row).unwrap_or(0);
    if out.len() != rows * row_bytes || rows * n_per_row != x.len() {
        return Err(GgmlError::ByteLength(out.len()));
    }
    if row_bytes == 0 {
        return Ok(());
    }
    let clean = out
        .par_chunks_mut(row_bytes)
        .zip(x.par_chunks(n_per_row))
        .map(|(dst, src)| encode(src, dst))
        .reduce(|| true, |a, b| a && b);
    if clean {
        return Ok(());
    }
    let index = x.iter().position(|v| !v.is_finite()).expect("a row failed");
    Err(GgmlError::NonFinite {
        index,
        value: x[index],
    })
}

/// No NaN or infinity, in a loop the compiler vectorizes: run on a row just before it is encoded,
/// while it is in cache.
fn all_finite(x: &[f32]) -> bool {
    crate::kernel::dispatch(
        #[inline(always)]
        || x.iter().fold(true, |ok, v| ok & v.is_finite()),
    )
}

/// Bytes per row, once `ty` is known to be writable in rows of `n_per_row`.
fn checked_row_bytes(ty: GgmlType, n_per_row: usize) -> Result<usize, GgmlError> {
    if !ty.can_quantize() {
        return Err(GgmlError::Unsupported("write", ty));
    }
    ty.row_size(n_per_row).ok_or(GgmlError::RowLength {
        n: n_per_row,
        ty,
        block: ty.block_size(),
    })
}

/// Like [`quantize_rows`], with each column's importance (llama.cpp's importance matrix: the
/// mean square of the activation that column meets), `importance.len() == n_per_row`. Q8_0 and
/// the float types ignore it, as ggml does.
pub fn quantize_rows_weighted(
    ty: GgmlType,
    x: &[f32],
    n_per_row: usize,
    importance: &[f32],
) -> Result<Vec<u8>, GgmlError> {
    if importance.len() != n_per_row {
        return Err(GgmlError::Importance {
            got: importance.len(),
            n: n_per_row,
        });
    }
    if let Some(index) = importance.iter().position(|v| !v.is_finite() || *v < 0.0) {
        return Err(GgmlError::BadImportance {
            index,
            value: importance[index],
        });
    }
    if !weighs(ty) {
        return quantize_rows(ty, x, n_per_row);
    }
    let mut out = output_buffer(ty, x, n_per_row)?;
    encode_rows(ty, x, n_per_row, &mut out, |src, dst| {
        all_finite(src) && {
            quantize_row_weighted(ty, src, importance, dst);
            true
        }
    })?;
    Ok(out)
}

/// Whether ggml's quantizer for `ty` uses an importance matrix.
fn weighs(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K
    )
}

/// One super-block's weighted quantizer: values, importances, output bytes.
type WeightedBlock = dyn Fn(&[f32], &[f32], &mut [u8]);

fn quantize_row_weighted(ty: GgmlType, x: &[f32], qw: &[f32], y: &mut [u8]) {
    use GgmlType::*;
    let size = ty.type_size();
    let k_blocks = |y: &mut [u8], f: &WeightedBlock| {
        let blocks = x.chunks_exact(256).zip(qw.chunks_exact(256));
        blocks
            .zip(y.chunks_exact_mut(size))
            .for_each(|((x, q), y)| f(x, q, y));
    };
    match ty {
        Q4_0 => weighted::legacy_symmetric(x, qw, 4, y),
        Q5_0 => weighted::legacy_symmetric(x, qw, 5, y),
        Q4_1 => weighted::legacy_asymmetric(x, qw, 4, y),
        Q5_1 => weighted::legacy_asymmetric(x, qw, 5, y),
        Q2_K => k_blocks(y, &weighted::q2_k),
        Q3_K => k_blocks(y, &weighted::q3_k),
        Q4_K => k_blocks(y, &|x, q, y| weighted::q45_k(x, q, 4, y)),
        Q5_K => k_blocks(y, &|x, q, y| weighted::q45_k(x, q, 5, y)),
        Q6_K => k_blocks(y, &|x, q, y| kquant::quantize_q6_k_weighted(x, Some(q), y)),
        _ => unreachable!("checked by weighs"),
    }
}

/// Converts rows of `ty` holding `n_per_row` elements each back to floats.
pub fn dequantize_rows(
    ty: GgmlType,
    bytes: &[u8],
    n_per_row: usize,
) -> Result<Vec<f32>, GgmlError> {
    if !ty.can_dequantize() {
        return Err(GgmlError::Unsupported("read", ty));
    }
    let row_bytes = ty.row_size(n_per_row).ok_or(GgmlError::RowLength {
        n: n_per_row,
        ty,
        block: ty.block_size(),
    })?;
    if row_bytes == 0 || !bytes.len().is_multiple_of(row_bytes) {
        return if bytes.is_empty() {
            Ok(Vec::new())
        } else {
            Err(GgmlError::ByteLength(bytes.len()))
        };
    }
    let mut out = vec![0f32; bytes.len() / row_bytes * n_per_row];
    out.par_chunks_mut(n_per_row)
        .zip(bytes.par_chunks(row_bytes))
        .for_each(|(dst, src)| dequantize_row(ty, src, dst));
    Ok(out)
}

/// One row, or false if it holds NaN or infinity (F32 copies those): `dst` has exactly
/// `ty.row_size(src.len())` bytes. Q8_0 and Q4_0, the formats that can run near memory speed,
/// have row loops in AVX2 where the CPU has it (the same bytes) that find non-finite values as
/// they go; the others are checked first.
fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> bool {
    use GgmlType::*;
    match ty {
        Q4_0 => return legacy::quantize_row_q4_0(src, dst),
        Q8_0 => return legacy::quantize_row_q8_0(src, dst),
        F32 => {}
        _ if !all_finite(src) => return false,
        _ => {}
    }
    let (qk, bytes) = (ty.block_size(), ty.type_size());
    let blocks = src.chunks_exact(qk).zip(dst.chunks_exact_mut(bytes));
    match ty {
        F32 => blocks.for_each(|(x, y)| y.copy_from_slice(&x[0].to_le_bytes())),
        F16 => blocks.for_each(|(x, y)| y.copy_from_slice(&fp16(x[0]).to_le_bytes())),
        BF16 => blocks.for_each(|(x, y)| y.copy_from_slice(&bf16(x[0]).to_le_bytes())),
        Q4_1 => blocks.for_each(|(x, y)| legacy::quantize_q4_1(x, y)),
        Q5_0 => blocks.for_each(|(x, y)| legacy::quantize_q5_0(x, y)),
        Q5_1 => blocks.for_each(|(x, y)| legacy::quantize_q5_1(x, y)),
        Q2_K => blocks.for_each(|(x, y)| kquant::quantize_q2_k(x, y)),
        Q3_K => blocks.for_each(|(x, y)| kquant::quantize_q3_k(x, y)),
        Q4_K => blocks.for_each(|(x, y)| kquant::quantize_k4(x, 4, y)),
        Q5_K => blocks.for_each(|(x, y)| kquant::quantize_k4(x, 5, y)),
        Q6_K => blocks.for_each(|(x, y)| kquant::quantize_q6_k(x, y)),
        _ => unreachable!("checked by can_quantize"),
    }
    true
}

fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    use GgmlType::*;
    if ty == F32 {
        // Element by element over `dst`, which the compiler turns into a vector copy (a block
        // loop of one-element blocks it does not).
        for (y, x) in dst.iter_mut().zip(src.chunks_exact(4)) {
            *y = f32::from_le_bytes(x.try_into().expect("chunks of 4"));
        }
        return;
    }
    let (qk, bytes) = (ty.block_size(), ty.type_size());
    let blocks = src.chunks_exact(bytes).zip(dst.chunks_exact_mut(qk));
    match ty {
        F16 => blocks.for_each(|(x, y)| y[0] = fp16_to_f32(u16::from_le_bytes([x[0], x[1]]))),
        BF16 => blocks.for_each(|(x, y)| y[0] = bf16_to_f32(u16::from_le_bytes([x[0], x[1]]))),
        Q4_0 => blocks.for_each(|(x, y)| legacy::dequantize_q4_0(x, y)),
        Q4_1 => blocks.for_each(|(x, y)| legacy::dequantize_q4_1(x, y)),
        Q5_0 => blocks.for_each(|(x, y)| legacy::dequantize_q5_0(x, y)),
        Q5_1 => blocks.for_each(|(x, y)| legacy::dequantize_q5_1(x, y)),
        Q8_0 => blocks.for_each(|(x, y)| legacy::dequantize_q8_0(x, y)),
        Q2_K => blocks.for_each(|(x, y)| kquant::dequantize_q2_k(x, y)),
        Q3_K => blocks.for_each(|(x, y)| kquant::dequantize_q3_k(x, y)),
        Q4_K => blocks.for_each(|(x, y)| kquant::dequantize_k4(x, 4, y)),
        Q5_K => blocks.for_each(|(x, y)| kquant::dequantize_k4(x, 5, y)),
        Q6_K => blocks.for_each(|(x, y)| kquant::dequantize_q6_k(x, y)),
        F32 => unreachable!("copied above"),
        _ => unreachable!("checked by can_dequantize"),
    }
}

/// f32 to IEEE half, round to nearest even: ggml's `GGML_FP32_TO_FP16`.
#[inline(always)]
pub fn fp16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

pub fn fp16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// f32 to bfloat16 as ggml rounds it (`ggml_compute_fp32_to_bf16`): to nearest even, NaN kept
/// quiet.
pub fn bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Reads the f16 at `b[at..at + 2]`.
fn read_fp16(b: &[u8], at: usize) -> f32 {
    fp16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

#[inline(always)]
fn write_fp16(b: &mut [u8], at: usize, x: f32) {
    b[at..at + 2].copy_from_slice(&fp16(x).to_le_bytes());
}

/// Uniform values in [−0.5, 0.5) from a seed: the tests' one generator.
#[cfg(test)]
fn uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut seed = seed;
    move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
}

#[cfg(test)]
mod tests;
