//! Packed 4-bit and 2-bit storage, in ONNX's packing order: element 0 in the lowest bits of byte
//! 0. A tensor whose length is not a multiple of the codes per byte is padded with zero bits.

use rayon::prelude::*;

use crate::error::Result;
use crate::kernel::{check_grid_fits, dequantize_segments, dispatch, quantize_segments};
use crate::params::QParams;
use crate::CHUNK;

/// A packed sub-byte format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    Int4,
    UInt4,
    Int2,
    UInt2,
}

impl Packing {
    pub fn bits(self) -> u32 {
        match self {
            Packing::Int4 | Packing::UInt4 => 4,
            Packing::Int2 | Packing::UInt2 => 2,
        }
    }

    pub fn signed(self) -> bool {
        matches!(self, Packing::Int4 | Packing::Int2)
    }

    pub fn name(self) -> &'static str {
        match self {
            Packing::Int4 => "int4",
            Packing::UInt4 => "uint4",
            Packing::Int2 => "int2",
            Packing::UInt2 => "uint2",
        }
    }

    fn per_byte(self) -> usize {
        8 / self.bits() as usize
    }

    /// Bytes needed for `n` codes.
    pub fn bytes_for(self, n: usize) -> usize {
        n.div_ceil(self.per_byte())
    }

    pub(crate) fn code_range(self) -> (i32, i32) {
        let b = self.bits();
        if self.signed() {
            (-(1 << (b - 1)), (1 << (b - 1)) - 1)
        } else {
            (0, (1 << b) - 1)
        }
    }
}

/// Codes staged per step: a multiple of every codes-per-byte count.
const STAGE: usize = 1024;

/// Packs codes (each within the format's range) into `out`.
#[inline(always)]
pub fn pack(codes: &[i8], packing: Packing, out: &mut [u8]) {
    let mask = (1u8 << packing.bits()) - 1;
    let field = |c: i8, k: usize| (c as u8 & mask) << (k as u32 * packing.bits());
    let per_byte = packing.per_byte();
    let whole = codes.len() / per_byte;
    // Fixed-width groups, written out so the loops vectorize; the ragged tail is padded with 0.
    if per_byte == 2 {
        for (b, g) in out.iter_mut().zip(codes.chunks_exact(2)) {
            *b = field(g[0], 0) | field(g[1], 1);
        }
    } else {
        for (b, g) in out.iter_mut().zip(codes.chunks_exact(4)) {
            *b = field(g[0], 0) | field(g[1], 1) | field(g[2], 2) | field(g[3], 3);
        }
    }
    let tail = &codes[whole * per_byte..];
    if !tail.is_empty() {
        out[whole] = tail
            .iter()
            .enumerate()
            .fold(0, |acc, (k, &c)| acc | field(c, k));
    }
}

/// Unpacks `codes.len()` codes from `packed`, sign-extending signed formats.
#[inline(always)]
pub fn unpack(packed: &[u8], packing: Packing, codes: &mut [i8]) {
    let bits = packing.bits();
    let shift_back = 8 - bits;
    let signed = packing.signed();
    // Move field k to the top of the byte, then shift back: arithmetically when signed.
    let field = |byte: u8, k: usize| {
        let top = byte << (shift_back - k as u32 * bits);
        if signed {
            (top as i8) >> shift_back
        } else {
            (top >> shift_back) as i8
        }
    };
    let per_byte = packing.per_byte();
    let whole = codes.len() / per_byte;
    // Fixed-width groups, written out so the loops vectorize.
    if per_byte == 2 {
        for (g, &b) in codes.chunks_exact_mut(2).zip(packed) {
            g[0] = field(b, 0);
            g[1] = field(b, 1);
        }
    } else {
        for (g, &b) in codes.chunks_exact_mut(4).zip(packed) {
            g[0] = field(b, 0);
            g[1] = field(b, 1);
            g[2] = field(b, 2);
            g[3] = field(b, 3);
        }
    }
    for (k, c) in codes[whole * per_byte..].iter_mut().enumerate() {
        *c = field(packed[whole], k);
    }
}

/// Quantizes `x` of shape `shape` straight into packed storage (`packing.bytes_for(len)` bytes).
pub fn quantize_packed(
    x: &[f32],
    shape: &[usize],
    params: &QParams,
    packing: Packing,
    out: &mut [u8],
) -> Result<()> {
    let layout = params.layout_for(x.len(), shape)?;
    let (min, max) = packing.code_range();
    check_grid_fits(params.grid, min, max, packing.name())?;
    check_bytes(packing, x.len(), out.len(), shape)?;
    let bytes_per_chunk = CHUNK / packing.per_byte();
    x.par_chunks(CHUNK)
        .zip(out.par_chunks_mut(bytes_per_chunk))
        .enumerate()
        .for_each(|(k, (xc, oc))| {
            // Stage codes in L1, then pack; one dispatch per chunk so both loops get AVX2.
            dispatch(
                #[inline(always)]
                || {
                    let mut codes = [0i8; STAGE];
                    let per_stage = STAGE / packing.per_byte();
                    for (j, (xs, os)) in xc.chunks(STAGE).zip(oc.chunks_mut(per_stage)).enumerate()
                    {
                        let start = k * CHUNK + j * STAGE;
                        quantize_segments(&layout, params, start, xs, &mut codes[..xs.len()]);
                        pack(&codes[..xs.len()], packing, os);
                    }
                },
            )
        });
    Ok(())
}

/// Dequantizes packed codes of a tensor of shape `shape` into `out`.
pub fn dequantize_packed(
    packed: &[u8],
    shape: &[usize],
    params: &QParams,
    packing: Packing,
    out: &mut [f32],
) -> Result<()> {
    let layout = params.layout_for(out.len(), shape)?;
    check_bytes(packing, out.len(), packed.len(), shape)?;
    let bytes_per_chunk = CHUNK / packing.per_byte();
    out.par_chunks_mut(CHUNK)
        .zip(packed.par_chunks(bytes_per_chunk))
        .enumerate()
        .for_each(|(k, (oc, pc))| {
            dispatch(
                #[inline(always)]
                || {
                    let mut codes = [0i8; STAGE];
                    let per_stage = STAGE / packing.per_byte();
                    for (j, (os, ps)) in oc.chunks_mut(STAGE).zip(pc.chunks(per_stage)).enumerate()
                    {
                        let start = k * CHUNK + j * STAGE;
                        unpack(ps, packing, &mut codes[..os.len()]);
                        dequantize_segments(&layout, params, start, &codes[..os.len()], os);
                    }
                },
            )
        });
    Ok(())
}

fn check_bytes(packing: Packing, n: usize, bytes: usize, shape: &[usize]) -> Result<()> {
    if packing.bytes_for(n) != bytes {
        return Err(crate::Error::Length {
            what: "the packed buffer",
            shape: shape.to_vec(),
            expected: packing.bytes_for(n),
            got: bytes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int4_packs_low_nibble_first() {
        let mut out = [0u8; 2];
        pack(&[1, -1, 7], Packing::Int4, &mut out);
        assert_eq!(out, [0xF1, 0x07]);
        let mut back = [0i8; 3];
        unpack(&out, Packing::Int4, &mut back);
        assert_eq!(back, [1, -1, 7]);
    }

    #[test]
    fn two_bit_round_trip_all_codes() {
        for packing in [Packing::Int2, Packing::UInt2, Packing::Int4, Packing::UInt4] {
            let (lo, hi) = packing.code_range();
            let codes: Vec<i8> = (0..37).map(|i| (lo + i % (hi - lo + 1)) as i8).collect();
            let mut packed = vec![0u8; packing.bytes_for(codes.len())];
            pack(&codes, packing, &mut packed);
            let mut back = vec![0i8; codes.len()];
            unpack(&packed, packing, &mut back);
            assert_eq!(back, codes, "{packing:?}");
        }
        let mut out = [0u8; 1];
        pack(&[1, 2, 3, 0], Packing::UInt2, &mut out);
        assert_eq!(out, [0b00_11_10_01]);
    }
}
