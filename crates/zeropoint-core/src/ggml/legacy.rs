//! ggml's first block formats: 32 weights, one f16 scale (and an f16 minimum for the `_1` kinds).
//!
//! Q4_0 / Q5_0 are symmetric with the scale's sign chosen so that the largest-magnitude weight
//! lands exactly on code 0 (`d = max / -8`); Q4_1 / Q5_1 are asymmetric (`x = d·q + m`); Q8_0 is
//! symmetric with `d = amax / 127`. The casts and `+ 8.5` offsets are ggml's: they truncate
//! toward zero, so they must stay as they are for the bytes to match.

use super::{read_fp16, write_fp16};

const QK: usize = 32;

/// The value of largest magnitude, the first one on ties (ggml's `amax`/`max` loop, whose strict
/// `<` keeps the first). Written as a max then a search so that the max vectorizes.
#[inline(always)]
fn signed_absmax(x: &[f32]) -> f32 {
    let amax = abs_max(x);
    x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
}

/// max |x| (0 for an empty slice), branch-free so that it vectorizes.
#[inline(always)]
fn abs_max(x: &[f32]) -> f32 {
    x.iter()
        .fold(0f32, |a, v| if v.abs() > a { v.abs() } else { a })
}

/// `roundf`: to nearest, ties away from zero, for |x| < 2^23. Adding the float just below 0.5
/// and truncating is exact there (x + 0.49999997 can reach the next integer only from x ≥ k + ½)
/// and compiles to two vector instructions, where `f32::round` is a library call.
#[inline(always)]
fn round_away(x: f32) -> i32 {
    (x + 0.49999997f32.copysign(x)) as i32
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline(always)]
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Layout: d (f16), qs[16]: element j in the low nibble of byte j, element j + 16 in the high.
#[inline(always)]
pub(super) fn quantize_q4_0(x: &[f32], y: &mut [u8]) {
    let (x, y): (&[f32; 32], &mut [u8; 18]) = (x.try_into().unwrap(), y.try_into().unwrap());
    let d = signed_absmax(x) / -8.0;
    let id = inverse(d);
    write_fp16(y, 0, d);
    // ggml truncates toward zero after + 8.5; the sum is never negative (|x·id| ≤ 8), so an i32
    // cast truncates the same and vectorizes.
    let code = |v: f32| ((v * id + 8.5) as i32).min(15) as u8;
    for j in 0..QK / 2 {
        y[2 + j] = code(x[j]) | (code(x[j + QK / 2]) << 4);
    }
}

pub(super) fn dequantize_q4_0(b: &[u8], y: &mut [f32]) {
    let d = read_fp16(b, 0);
    for j in 0..QK / 2 {
        y[j] = ((b[2 + j] & 0xF) as i32 - 8) as f32 * d;
        y[j + QK / 2] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// Layout: d (f16), m (f16), qs[16] as in Q4_0.
pub(super) fn quantize_q4_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    write_fp16(y, 0, d);
    write_fp16(y, 2, min);
    for j in 0..QK / 2 {
        let x0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let x1 = (((x[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
        y[4 + j] = x0 | (x1 << 4);
    }
}

pub(super) fn dequantize_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (read_fp16(b, 0), read_fp16(b, 2));
    for j in 0..QK / 2 {
        y[j] = (b[4 + j] & 0xF) as f32 * d + m;
        y[j + QK / 2] = (b[4 + j] >> 4) as f32 * d + m;
    }
}

/// Stores 5-bit codes as Q5 blocks do: the low nibbles as in Q4_0 at `qs`, bit 4 of element j in
/// bit j of the little-endian u32 at `qh`.
pub(super) fn pack_q5(codes: &[u8; QK], y: &mut [u8], qh_at: usize) {
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let (x0, x1) = (codes[j], codes[j + QK / 2]);
        y[qh_at + 4 + j] = (x0 & 0x0F) | ((x1 & 0x0F) << 4);
        qh |= ((x0 as u32 & 0x10) >> 4) << j;
        qh |= ((x1 as u32 & 0x10) >> 4) << (j + QK / 2);
    }
    y[qh_at..qh_at + 4].copy_from_slice(&qh.to_le_bytes());
}

fn unpack_q5(b: &[u8], qh_at: usize) -> [u8; QK] {
    let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
    let mut codes = [0u8; QK];
    for j in 0..QK / 2 {
        let q = b[qh_at + 4 + j];
        codes[j] = (q & 0xF) | ((((qh >> j) & 1) as u8) << 4);
        codes[j + QK / 2] = (q >> 4) | ((((qh >> (j + QK / 2)) & 1) as u8) << 4);
    }
    codes
}

/// Layout: d (f16), qh[4], qs[16].
pub(super) fn quantize_q5_0(x: &[f32], y: &mut [u8]) {
    let d = signed_absmax(x) / -16.0;
    let id = inverse(d);
    write_fp16(y, 0, d);
    let mut codes = [0u8; QK];
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = ((v * id + 16.5) as i8).min(31) as u8;
    }
    pack_q5(&codes, y, 2);
}

pub(super) fn dequantize_q5_0(b: &[u8], y: &mut [f32]) {
    let d = read_fp16(b, 0);
    for (v, c) in y.iter_mut().zip(unpack_q5(b, 2)) {
        *v = (c as i32 - 16) as f32 * d;
    }
}

/// Layout: d (f16), m (f16), qh[4], qs[16].
pub(super) fn quantize_q5_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    write_fp16(y, 0, d);
    write_fp16(y, 2, min);
    let mut codes = [0u8; QK];
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = ((v - min) * id + 0.5) as u8;
    }
    pack_q5(&codes, y, 4);
}

pub(super) fn dequantize_q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (read_fp16(b, 0), read_fp16(b, 2));
    for (v, c) in y.iter_mut().zip(unpack_q5(b, 4)) {
        *v = c as f32 * d + m;
    }
}

/// Layout: d (f16), qs[32] (i8).
#[inline(always)]
pub(super) fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
    let (x, y): (&[f32; 32], &mut [u8; 34]) = (x.try_into().unwrap(), y.try_into().unwrap());
    let d = abs_max(x) / 127.0;
    let id = inverse(d);
    write_fp16(y, 0, d);
    for (q, &v) in y[2..].iter_mut().zip(x) {
        *q = round_away(v * id) as i8 as u8;
    }
}

pub(super) fn dequantize_q8_0(b: &[u8], y: &mut [f32]) {
    let d = read_fp16(b, 0);
    for (v, &q) in y.iter_mut().zip(&b[2..]) {
        *v = q as i8 as f32 * d;
    }
}

/// A row of Q8_0 blocks, or false (and `dst` unspecified) if the row holds NaN or infinity. With
/// AVX2 and F16C where the CPU has them, else block by block: the same operations in the same
/// order as [`quantize_q8_0`] (max |x|, d = amax / 127, x·(1/d) rounded half away from zero by
/// adding 0.49999997 with x's sign and truncating), eight lanes at a time: the bytes are the same.
pub(super) fn quantize_row_q8_0(src: &[f32], dst: &mut [u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU supports AVX2 and F16C, checked just above.
        return unsafe { simd::q8_0_row(src, dst) };
    }
    scalar_blocks(src, dst, 0, (34, quantize_q8_0))
}

/// A row of Q4_0 blocks, or false if the row holds NaN or infinity. With AVX2 and F16C where the
/// CPU has them, else block by block: the same operations in the same order as
/// [`quantize_q4_0`] (the first value of largest magnitude, d = max / −8, codes truncated from
/// x·(1/d) + 8.5 and capped at 15), so the same bytes.
pub(super) fn quantize_row_q4_0(src: &[f32], dst: &mut [u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU supports AVX2 and F16C, checked just above.
        return unsafe { simd::q4_0_row(src, dst) };
    }
    scalar_blocks(src, dst, 0, (18, quantize_q4_0))
}

/// A block quantizer: 32 floats to one block's bytes.
type BlockFn = fn(&[f32], &mut [u8]);

/// `block` (blocks of `size` bytes) on each block of `src` from block `from` on, or false if those
/// hold NaN or infinity.
fn scalar_blocks(
    src: &[f32],
    dst: &mut [u8],
    from: usize,
    (size, block): (usize, BlockFn),
) -> bool {
    let rest = src
        .chunks_exact(QK)
        .zip(dst.chunks_exact_mut(size))
        .skip(from);
    super::all_finite(&src[from * QK..]) && {
        rest.for_each(|(x, y)| block(x, y));
        true
    }
}

/// The AVX2 + F16C row loops. They work on groups of eight blocks so that the eight scales are
/// found with one vector division instead of eight dependent scalar ones (which bound the
/// block-at-a-time loop): a first pass over the group takes each block's largest magnitude, a
/// second quantizes. Blocks after the last whole group take the scalar path, with the same bytes.
///
/// The largest magnitudes are taken as integers: the bits of |x| order as |x| does, and a NaN
/// or an infinity has bits above those of any finite float, so the same instructions that find
/// the maxima find a non-finite value, with no separate pass over the row.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{quantize_q4_0, quantize_q8_0, scalar_blocks, QK};

    /// Blocks whose scales are computed together: one per f32 lane.
    const GROUP: usize = 8;

    /// How far ahead (in floats) to prefetch.
    const AHEAD: usize = 8 * GROUP * QK;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")
    }

    /// packs_epi32 / packs_epi16 interleave the 128-bit lanes; this puts the dwords back in order.
    const ORDER: [i32; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

    /// Lanes b (and b of the second vector): the largest of `f` over block b of a group (`x`
    /// holds eight blocks), `f` taking the bits of eight floats to two sets of eight i32.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn block_max(x: &[f32], f: impl Fn(__m256i) -> [__m256i; 2]) -> [__m256i; 2] {
        // SAFETY (the loads): callers pass groups of eight whole blocks.
        let at = |i: usize| f(_mm256_loadu_si256(x.as_ptr().add(i) as *const __m256i));
        let max = |a: [__m256i; 2], b: [__m256i; 2]| {
            [_mm256_max_epi32(a[0], b[0]), _mm256_max_epi32(a[1], b[1])]
        };
        let blocks: [[__m256i; 2]; GROUP] = std::array::from_fn(|b| {
            let i = b * QK;
            let ahead = x.as_ptr().wrapping_add(i + AHEAD) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
            max(max(at(i), at(i + 8)), max(at(i + 16), at(i + 24)))
        });
        [0, 1].map(|j| lane_maxima(blocks.map(|b| b[j])))
    }

    /// Lane b: the largest lane of `m[b]`, by a transposing reduction: pairs, then quads within
    /// each 128-bit half, then the halves.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn lane_maxima(m: [__m256i; GROUP]) -> __m256i {
        let pair =
            |a, b| _mm256_max_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
        let quad = |a, b| {
            let even = _mm256_unpacklo_epi64(a, b);
            _mm256_max_epi32(even, _mm256_unpackhi_epi64(a, b))
        };
        let low = quad(pair(m[0], m[1]), pair(m[2], m[3]));
        let high = quad(pair(m[4], m[5]), pair(m[6], m[7]));
        _mm256_max_epi32(
            _mm256_permute2x128_si256::<0x20>(low, high),
            _mm256_permute2x128_si256::<0x31>(low, high),
        )
    }

    /// Whether no lane of the bits of magnitudes `amax` is NaN or infinity.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn all_finite(amax: __m256i) -> bool {
        let infinite = _mm256_cmpgt_epi32(amax, _mm256_set1_epi32(f32::MAX.to_bits() as i32));
        _mm256_testz_si256(infinite, infinite) == 1
    }

    /// Lane b: the largest magnitude in block b of a group, or None if the group holds NaN or
    /// infinity.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn block_maxima(x: &[f32]) -> Option<__m256> {
        let abs = |v| _mm256_and_si256(v, _mm256_set1_epi32(i32::MAX));
        let [amax, _] = block_max(x, |v| [abs(v), abs(v)]);
        all_finite(amax).then(|| _mm256_castsi256_ps(amax))
    }

    /// Lane b: the first value of block b whose magnitude is the block's largest, with its sign;
    /// None if the group holds NaN or infinity. As integers, a float's bits order the positive
    /// values, and with the sign bit flipped the negative ones by magnitude: the larger of the
    /// two maxima gives the value, and only where they tie (+a and −a both present) does the
    /// first one have to be looked for.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn signed_maxima(x: &[f32]) -> Option<__m256> {
        let sign = _mm256_set1_epi32(i32::MIN);
        let [positive, negative] = block_max(x, |v| [v, _mm256_xor_si256(v, sign)]);
        if !all_finite(_mm256_max_epi32(positive, negative)) {
            return None;
        }
        let flip = _mm256_cmpgt_epi32(negative, positive);
        let max = _mm256_blendv_epi8(positive, _mm256_xor_si256(negative, sign), flip);
        let mut max: [f32; GROUP] = std::mem::transmute(max);
        let ties = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(positive, negative)));
        for (b, max) in max.iter_mut().enumerate() {
            if ties & (1 << b) != 0 {
                *max = super::signed_absmax(&x[b * QK..(b + 1) * QK]);
            }
        }
        // SAFETY: max holds eight lanes.
        Some(_mm256_loadu_ps(max.as_ptr()))
    }

    /// The eight scales as f16 (F16C rounds to nearest even, as `fp16` does) and their inverses
    /// (0 for a zero scale, as `inverse` gives).
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn scales(d: __m256) -> ([u16; GROUP], [f32; GROUP]) {
        let zero = _mm256_cmp_ps::<_CMP_EQ_OQ>(d, _mm256_setzero_ps());
        let id = _mm256_andnot_ps(zero, _mm256_div_ps(_mm256_set1_ps(1.0), d));
        let (mut h, mut inv) = ([0u16; GROUP], [0f32; GROUP]);
        let half = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d);
        // SAFETY: both arrays hold eight lanes.
        _mm_storeu_si128(h.as_mut_ptr() as *mut __m128i, half);
        _mm256_storeu_ps(inv.as_mut_ptr(), id);
        (h, inv)
    }

    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn q8_0_row(src: &[f32], dst: &mut [u8]) -> bool {
        let sign = _mm256_set1_ps(-0.0);
        let half = _mm256_set1_ps(0.49999997);
        let order = _mm256_loadu_si256(ORDER.as_ptr() as *const __m256i);
        let groups = src
            .chunks_exact(GROUP * QK)
            .zip(dst.chunks_exact_mut(GROUP * 34));
        for (x, y) in groups {
            // The group two ahead, asked for now: one core's hardware prefetcher alone left this
            // loop waiting for its input (73-79% of a copy's speed on an Intel Xeon VM; 86-99%
            // with this). A prefetch never faults, so addresses past the row's end are harmless;
            // written out here, not in a helper, because the helper version measured no faster.
            let ahead = x.as_ptr().wrapping_add(2 * GROUP * QK) as *const i8;
            for line in 0..GROUP * QK * 4 / 64 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64));
            }
            let Some(amax) = block_maxima(x) else {
                return false;
            };
            let d = _mm256_div_ps(amax, _mm256_set1_ps(127.0));
            let (h, id) = scales(d);
            for (b, y) in y.chunks_exact_mut(34).enumerate() {
                let id = _mm256_set1_ps(id[b]);
                y[..2].copy_from_slice(&h[b].to_le_bytes());
                let q = [0, 8, 16, 24].map(|i| {
                    // SAFETY: the block's 32 floats lie within the group.
                    let t = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(b * QK + i)), id);
                    let r = _mm256_add_ps(t, _mm256_or_ps(_mm256_and_ps(t, sign), half));
                    _mm256_cvttps_epi32(r)
                });
                let lo = _mm256_packs_epi32(q[0], q[1]);
                let hi = _mm256_packs_epi32(q[2], q[3]);
                let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(lo, hi), order);
                // SAFETY: y[2..] holds 32 bytes.
                _mm256_storeu_si256(y.as_mut_ptr().add(2) as *mut __m256i, bytes);
            }
        }
        let done = src.len() / (GROUP * QK) * GROUP;
        scalar_blocks(src, dst, done, (34, quantize_q8_0))
    }

    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn q4_0_row(src: &[f32], dst: &mut [u8]) -> bool {
        let offset = _mm256_set1_ps(8.5);
        let fifteen = _mm256_set1_epi32(15);
        let order = _mm256_loadu_si256(ORDER.as_ptr() as *const __m256i);
        let groups = src
            .chunks_exact(GROUP * QK)
            .zip(dst.chunks_exact_mut(GROUP * 18));
        for (x, y) in groups {
            // As in q8_0_row.
            let ahead = x.as_ptr().wrapping_add(2 * GROUP * QK) as *const i8;
            for line in 0..GROUP * QK * 4 / 64 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64));
            }
            let Some(max) = signed_maxima(x) else {
                return false;
            };
            let d = _mm256_div_ps(max, _mm256_set1_ps(-8.0));
            let (h, id) = scales(d);
            for (b, y) in y.chunks_exact_mut(18).enumerate() {
                let id = _mm256_set1_ps(id[b]);
                y[..2].copy_from_slice(&h[b].to_le_bytes());
                let c = [0, 8, 16, 24].map(|i| {
                    // SAFETY: the block's 32 floats lie within the group.
                    let v = _mm256_loadu_ps(x.as_ptr().add(b * QK + i));
                    let t = _mm256_add_ps(_mm256_mul_ps(v, id), offset);
                    _mm256_min_epi32(_mm256_cvttps_epi32(t), fifteen)
                });
                // Byte j holds element j in its low nibble and element j + 16 in its high one.
                let lo = _mm256_or_si256(c[0], _mm256_slli_epi32::<4>(c[2]));
                let hi = _mm256_or_si256(c[1], _mm256_slli_epi32::<4>(c[3]));
                let words = _mm256_packs_epi32(lo, hi);
                let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(words, words), order);
                // SAFETY: y[2..] holds 16 bytes.
                _mm_storeu_si128(
                    y.as_mut_ptr().add(2) as *mut __m128i,
                    _mm256_castsi256_si128(bytes),
                );
            }
        }
        let done = src.len() / (GROUP * QK) * GROUP;
        scalar_blocks(src, dst, done, (18, quantize_q4_0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_rows_are_the_scalar_ones() {
        let mut next = super::super::uniform(3);
        let mut x: Vec<f32> = (0..32 * 512).map(|i| next() * (1 + i % 7) as f32).collect();
        // Exact halves after scaling (amax 127: id = 1), negative zeros, an all-zero block.
        for (j, v) in x[..32].iter_mut().enumerate() {
            *v = (j as f32 - 16.0) + 0.5;
        }
        x[31] = 127.0;
        x[32..64].fill(0.0);
        x[64] = -0.0;
        // Scales that are f16 subnormals, or overflow f16, in blocks 3 to 5.
        for (j, v) in x[96..192].iter_mut().enumerate() {
            *v *= [3e-7, 1e-9, 1e10][j / 32];
        }
        // Q4_0: ties of magnitude between opposite signs pick the first, in a whole group of
        // eight blocks (the vector path) and in the blocks after the last group (the scalar one).
        x[192..224].fill(0.25);
        x[200] = -3.0;
        x[210] = 3.0;
        x[224..256].fill(0.0);
        x[230] = -0.0;
        x[32 * 509..32 * 510].fill(-1.5);
        x[32 * 509 + 3] = 1.5;
        // Rows of 512 blocks (whole groups) and of 509 (five blocks after the last group).
        for blocks in [512, 509] {
            let x = &x[..32 * blocks];
            fast_and_slow("Q8_0", x, 34, quantize_row_q8_0, quantize_q8_0);
            fast_and_slow("Q4_0", x, 18, quantize_row_q4_0, quantize_q4_0);
        }
    }

    type Row = fn(&[f32], &mut [u8]) -> bool;

    /// Asserts that the row loop writes the bytes of the block loop.
    fn fast_and_slow(name: &str, x: &[f32], size: usize, row: Row, block: fn(&[f32], &mut [u8])) {
        let mut fast = vec![0u8; size * x.len() / QK];
        assert!(row(x, &mut fast));
        let mut slow = vec![0u8; fast.len()];
        for (x, y) in x.chunks_exact(QK).zip(slow.chunks_exact_mut(size)) {
            block(x, y);
        }
        assert!(fast == slow, "{name}, {} blocks", x.len() / QK);
    }

    #[test]
    fn the_row_loops_refuse_nan_and_infinity_anywhere() {
        let clean: Vec<f32> = (0..32 * 9).map(|i| (i as f32 * 0.37).sin()).collect();
        let rows: [Row; 2] = [quantize_row_q8_0, quantize_row_q4_0];
        for row in rows {
            let mut y = vec![0u8; 34 * 9];
            assert!(row(&clean, &mut y));
            // In a group of eight blocks (first and last value) and in the ninth block after it.
            for at in [0, 255, 256, 287] {
                for bad in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut x = clean.clone();
                    x[at] = bad;
                    assert!(!row(&x, &mut y), "{bad} at {at}");
                }
            }
        }
    }
}
