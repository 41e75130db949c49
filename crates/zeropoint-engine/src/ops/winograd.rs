//! The float32 3×3 convolution at stride 1 by Winograd's minimal filtering F(2×2, 3×3) (Lavin
//! and Gray 2016, "Fast Algorithms for Convolutional Neural Networks", arXiv 1509.09308).
//!
//! Each 2×2 block of outputs ("tile") of output channel m is
//!
//! ```text
//! Y = Aᵀ [ Σ_c (G g_mc Gᵀ) ⊙ (Bᵀ d_c B) ] A
//! ```
//!
//! where d_c is the 4×4 input patch of channel c under the tile and g_mc the 3×3 kernel: 16
//! products per channel and tile instead of the definition's 36. For each of the 16 positions
//! ξ of the 4×4 products, the sum over channels is a matrix product U_ξ [M, C] × V_ξ [C, tiles],
//! which the GEMM runs at full speed; the transforms are additions of neighbouring values.
//!
//! Why: 3×3 stride-1 convolutions are most of a CNN's float run (ddddocr-det: 33 of its 56 ms
//! of convolutions at one thread), and every quantization stage runs the float model or its
//! simulation on each sample. ONNX Runtime's CPU kernels compute them directly.
//!
//! The results differ from the definition's in rounding only: the transforms multiply by 0, ±1
//! and ±½ (exact in binary), so the error is that of summing a few more terms. Integer
//! convolutions carried in float32 need exact sums and do not come here. Each image's tiles are
//! cut into chunks fixed by the shapes alone, each summed in a fixed order: the same bits for any
//! thread count and any batch.

use rayon::prelude::*;

use super::conv_gemm::{matmul, Geometry, Output};

/// Floats of one chunk's transformed inputs and products (16 · (C + M) · tiles): 1 MB, half of
/// this Xeon's 2 MB L2, leaving the other half to the GEMM's packed panels.
const CHUNK_FLOATS: usize = 1 << 18;

/// Fewer input or output channels than this go to the direct GEMM: the GEMMs of a Winograd
/// product sum C terms instead of 9·C, and with 8 channels in and out the two tie (one thread,
/// 208×208: 0.78 against 0.81 ms), with 12 in and 24 out Winograd is 1.25x faster.
const MIN_CHANNELS: usize = 12;

/// Fewer tiles than this per image go to the direct GEMM: each chunk's 16 products are then
/// narrow, and the kernels' transform is paid for few outputs (13×13 outputs, 49 tiles, 192
/// channels: 1.00 against 0.87 ms; 16×16, 64 tiles, 128 channels: 0.39 against 0.55).
const MIN_TILES: usize = 64;

/// Whether [`conv`] computes this convolution of `m` output channels: its transforms are
/// written for AVX-512 and AVX2 (other CPUs take the direct GEMM).
pub(super) fn applies(g: Geometry, m: usize) -> bool {
    Isa::detect().is_some()
        && g.kernel == (3, 3)
        && g.strides == (1, 1)
        && g.dilation == 1
        && g.input.0 >= MIN_CHANNELS
        && m >= MIN_CHANNELS
        && g.output.0.div_ceil(2) * g.output.1.div_ceil(2) >= MIN_TILES
}

/// `w` [M, C·3·3] convolved with each of `images` ([C, H, W] each, back to back), plus the
/// `bias` [M] if there is one: [images, M, OH·OW], as [`super::conv_gemm::conv`] computes it.
pub(super) fn conv(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, g: Geometry) -> Vec<f32> {
    let isa = Isa::detect().expect("winograd::conv without applies()");
    conv_on(isa, x, w, bias, (m, g))
}

/// [`conv`] with the transforms of `isa`.
fn conv_on(
    isa: Isa,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    (m, g): (usize, Geometry),
) -> Vec<f32> {
    let (ch, h, wd) = g.input;
    let plane = ch * h * wd;
    let images = x.len().checked_div(plane).unwrap_or(0);
    let (oh, ow) = g.output;
    let len = images * m * oh * ow;
    let u = kernel_transform(isa, w, m, ch);
    let chunks: Vec<(usize, Chunk)> = (0..images)
        .flat_map(|i| chunks(g, m).into_iter().map(move |c| (i, c)))
        .collect();
    // Not zeroed first: the chunks' tiles cover every output element (see `Output`).
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let out = Output {
        at: y.as_mut_ptr(),
        len,
    };
    chunks.into_par_iter().for_each(|(i, chunk)| {
        let x = &x[i * plane..(i + 1) * plane];
        SCRATCH.with(|s| {
            let s = &mut s.borrow_mut();
            run_chunk(
                isa,
                x,
                (&u, bias),
                (m, g),
                chunk,
                s,
                (&out, i * m * oh * ow),
            );
        });
    });
    // SAFETY: the chunks of each image cover all its tiles, and every tile writes each of its
    // output elements inside the image (`write_tiles`) for every output channel.
    unsafe { y.set_len(len) };
    y
}

/// U_ξ = (G g Gᵀ)_ξ of every kernel, as 16 matrices [M, C] back to back.
fn kernel_transform(isa: Isa, w: &[f32], m: usize, ch: usize) -> Vec<f32> {
    let n = m * ch;
    let mut u: Vec<f32> = Vec::with_capacity(16 * n);
    // SAFETY: `isa` was detected on this CPU; the kernel writes all 16·n values.
    unsafe {
        isa.kernels(&w[..9 * n], u.spare_capacity_mut().as_mut_ptr().cast(), n);
        u.set_len(16 * n);
    }
    u
}

/// Tiles [ty0, ty1) × [tx0, tx1) of one image (tile (ty, tx) covers outputs 2ty..2ty+2 ×
/// 2tx..2tx+2).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Chunk {
    rows: (usize, usize),
    cols: (usize, usize),
}

impl Chunk {
    fn tiles(&self) -> usize {
        (self.rows.1 - self.rows.0) * (self.cols.1 - self.cols.0)
    }
}

/// An image's tiles cut into chunks of at most [`CHUNK_FLOATS`]' worth, whole tile rows where a
/// row fits, else a row in pieces.
fn chunks(g: Geometry, m: usize) -> Vec<Chunk> {
    let (th, tw) = (g.output.0.div_ceil(2), g.output.1.div_ceil(2));
    let most = (CHUNK_FLOATS / (16 * (g.input.0 + m))).max(16);
    if tw > most {
        let pieces = tw.div_ceil(most);
        let width = tw.div_ceil(pieces);
        return (0..th)
            .flat_map(|r| {
                (0..tw).step_by(width).map(move |c| Chunk {
                    rows: (r, r + 1),
                    cols: (c, (c + width).min(tw)),
                })
            })
            .collect();
    }
    let rows = (most / tw).max(1);
    (0..th)
        .step_by(rows)
        .map(|r| Chunk {
            rows: (r, (r + rows).min(th)),
            cols: (0, tw),
        })
        .collect()
}

/// Each thread's buffers, reused from chunk to chunk.
#[derive(Default)]
struct Scratch {
    /// V: 16 matrices [C, tiles].
    v: Vec<f32>,
    /// The products: 16 matrices [M, tiles].
    p: Vec<f32>,
    /// Four input rows over the chunk's columns.
    rows: [Vec<f32>; 4],
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// One chunk of one image: its inputs transformed, the 16 products, its outputs written.
fn run_chunk(
    isa: Isa,
    x: &[f32],
    (u, bias): (&[f32], Option<&[f32]>),
    (m, g): (usize, Geometry),
    chunk: Chunk,
    s: &mut Scratch,
    out: (&Output, usize),
) {
    let (ch, t) = (g.input.0, chunk.tiles());
    // Grown, never shrunk: every element of the chunk's V and P is written before it is read,
    // and a resize back up after a smaller layer's chunk zeroed the difference every time
    // (1 % of a detector's calibration in memset).
    for (buf, len) in [(&mut s.v, 16 * ch * t), (&mut s.p, 16 * m * t)] {
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
    }
    transform_inputs(isa, x, g, chunk, s);
    for xi in 0..16 {
        let p = s.p[xi * m * t..].as_mut_ptr();
        let (u, v) = (&u[xi * m * ch..(xi + 1) * m * ch], &s.v[xi * ch * t..]);
        matmul(m, t, ch, u, (v, t), (p, t));
    }
    write_tiles(isa, &s.p, bias, (m, g), chunk, out);
}

/// V_ξ[c, tile] = (Bᵀ d B)_ξ for each channel c and tile of the chunk, d the tile's 4×4 input
/// patch (zeros where it lies on the padding).
fn transform_inputs(isa: Isa, x: &[f32], g: Geometry, chunk: Chunk, s: &mut Scratch) {
    let (ch, h, wd) = g.input;
    let lanes = isa.lanes();
    let (t, nt) = (chunk.tiles(), chunk.cols.1 - chunk.cols.0);
    // The chunk's input columns from 2·tx0 − pad on: two past the last tile's first column,
    // then zeros up to whole lane blocks (which the block loads read).
    let first = 2 * chunk.cols.0 as isize - g.pad as isize;
    let len = 2 * nt.div_ceil(lanes) * lanes + 2;
    for r in s.rows.iter_mut() {
        // Rows are read into [..2·nt + 2] only: the rest stays zero for the whole chunk.
        r.resize(len, 0.0);
        r[2 * nt + 2..].fill(0.0);
    }
    for c in 0..ch {
        let plane = &x[c * h * wd..(c + 1) * h * wd];
        for ty in chunk.rows.0..chunk.rows.1 {
            let top = 2 * ty as isize - g.pad as isize;
            // A tile row's last two input rows are the next one's first two.
            let fresh = if ty == chunk.rows.0 {
                0
            } else {
                // Two swaps of the rows' headers: `rotate_left` called memmove each time
                // (1.3 % of a detector's calibration).
                s.rows.swap(0, 2);
                s.rows.swap(1, 3);
                2
            };
            for (k, row) in s.rows.iter_mut().enumerate().skip(fresh) {
                read_row(
                    plane,
                    (h, wd),
                    top + k as isize,
                    first,
                    &mut row[..2 * nt + 2],
                );
            }
            let at = (ty - chunk.rows.0) * nt;
            for j in (0..nt).step_by(lanes) {
                let rows = s
                    .rows
                    .each_ref()
                    .map(|r| r[2 * j..2 * j + 2 * lanes + 2].as_ptr());
                let v = s.v[c * t + at + j..].as_mut_ptr();
                // SAFETY: `isa` was detected on this CPU; each row holds 2·lanes + 2 values
                // from 2j on (len above); the 16 stores of min(lanes, nt − j) values at ch·t
                // apart stay inside V (ξ < 16, c·t + at + j + n ≤ (c + 1)·t).
                unsafe { isa.inputs(rows, v, ch * t, lanes.min(nt - j)) };
            }
        }
    }
}

/// Input row `y` of a plane [h, w] from column `first` on, zeros outside the plane.
#[inline(always)]
fn read_row(plane: &[f32], (h, w): (usize, usize), y: isize, first: isize, row: &mut [f32]) {
    if y < 0 || y >= h as isize {
        row.fill(0.0);
        return;
    }
    let lo = first.clamp(0, w as isize) as usize;
    let hi = (first + row.len() as isize).clamp(0, w as isize) as usize;
    let (a, b) = (
        (lo as isize - first) as usize,
        (hi as isize - first) as usize,
    );
    row[..a].fill(0.0);
    row[b..].fill(0.0);
    if a < b {
        row[a..b].copy_from_slice(&plane[y as usize * w + lo..y as usize * w + hi]);
    }
}

/// Y = Aᵀ P A (+ bias) of every tile of the chunk and output channel, written where the tile's
/// outputs fall inside the image.
fn write_tiles(
    isa: Isa,
    p: &[f32],
    bias: Option<&[f32]>,
    (m, g): (usize, Geometry),
    chunk: Chunk,
    (out, offset): (&Output, usize),
) {
    let ((oh, ow), t, nt) = (g.output, chunk.tiles(), chunk.cols.1 - chunk.cols.0);
    let lanes = isa.lanes();
    assert!(offset + m * oh * ow <= out.len && p.len() >= 16 * m * t);
    for o in 0..m {
        let b = bias.map_or(0.0, |b| b[o]);
        for ty in chunk.rows.0..chunk.rows.1 {
            let at = (ty - chunk.rows.0) * nt;
            let rows = (oh - 2 * ty).min(2);
            for j in (0..nt).step_by(lanes) {
                let x0 = 2 * (chunk.cols.0 + j);
                // The tiles' columns only: the next chunk may start right after them.
                let width = (2 * lanes.min(nt - j)).min(ow - x0);
                // SAFETY: `isa` was detected on this CPU; the 16 loads of min(lanes, nt − j) values
                // at m·t apart stay inside P (by the assert); the stores write `rows` output
                // rows of `width` values inside the image (row < oh, x0 + width ≤ ow), which
                // this chunk alone writes (the chunks of an image do not overlap).
                unsafe {
                    let dst = out.at.add(offset + (o * oh + 2 * ty) * ow + x0);
                    let src = p[o * t + at + j..].as_ptr();
                    isa.outputs(src, m * t, lanes.min(nt - j), b, (dst, ow, rows, width));
                }
            }
        }
    }
}

/// The instruction set the transforms run on: 16 tiles at a time in AVX-512 registers, else 8
/// in AVX2 ones. Both compute the same operations in the same order: on one CPU (one GEMM) the
/// same bits.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Isa {
    Avx512,
    Avx2,
}

impl Isa {
    /// The widest this CPU has, if any (asked on every convolution: no allocation).
    fn detect() -> Option<Isa> {
        [Isa::Avx512, Isa::Avx2].into_iter().find(|i| i.runs_here())
    }

    /// Every one this CPU runs, widest first (the tests run each).
    #[cfg(test)]
    fn available() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .filter(|i| i.runs_here())
            .collect()
    }

    fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return match self {
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
        };
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
        }
    }

    /// (Bᵀ d B) of `n` ≤ lanes tiles ([`avx512::inputs`]). The CPU must have `self`.
    unsafe fn inputs(self, rows: [*const f32; 4], v: *mut f32, stride: usize, n: usize) {
        #[cfg(target_arch = "x86_64")]
        match self {
            Isa::Avx512 => avx512::inputs(rows, v, stride, n),
            Isa::Avx2 => avx2::inputs(rows, v, stride, n),
        }
    }

    /// Aᵀ P A + bias of `n` ≤ lanes tiles ([`avx512::outputs`]). The CPU must have `self`.
    unsafe fn outputs(
        self,
        p: *const f32,
        stride: usize,
        n: usize,
        bias: f32,
        dst: (*mut f32, usize, usize, usize),
    ) {
        #[cfg(target_arch = "x86_64")]
        match self {
            Isa::Avx512 => avx512::outputs(p, stride, n, bias, dst),
            Isa::Avx2 => avx2::outputs(p, stride, n, bias, dst),
        }
    }

    /// G g Gᵀ of `n` kernels ([`avx512::kernels`]). The CPU must have `self`.
    unsafe fn kernels(self, w: &[f32], u: *mut f32, n: usize) {
        #[cfg(target_arch = "x86_64")]
        match self {
            Isa::Avx512 => avx512::kernels(w, u, n),
            Isa::Avx2 => avx2::kernels(w, u, n),
        }
    }
}

/// The transforms, 16 tiles or kernels at a time in 512-bit registers.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Lanes 0..n.
    #[inline(always)]
    fn mask(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// Even elements of a ‖ b (a's 0, 2, .., 14, then b's), and odd ones.
    #[inline(always)]
    unsafe fn deinterleave(a: __m512, b: __m512) -> (__m512, __m512) {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        (
            _mm512_permutex2var_ps(a, even, b),
            _mm512_permutex2var_ps(a, odd, b),
        )
    }

    /// (Bᵀ d B) of `n` ≤ 16 tiles: `rows` are the four input rows from the first tile's first
    /// column (34 values each); value ξ of tile i goes to `v[ξ·stride + i]`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn inputs(rows: [*const f32; 4], v: *mut f32, stride: usize, n: usize) {
        // Columns 2i, 2i+1, 2i+2, 2i+3 of tile i, for each row.
        let cols = rows.map(|r| {
            let (e0, o0) = deinterleave(_mm512_loadu_ps(r), _mm512_loadu_ps(r.add(16)));
            let (e1, o1) = deinterleave(_mm512_loadu_ps(r.add(2)), _mm512_loadu_ps(r.add(18)));
            [e0, o0, e1, o1]
        });
        let k = mask(n);
        // Row a of Bᵀ d: d0 − d2, d1 + d2, d2 − d1, d1 − d3; then (·) B along it.
        for a in 0..4 {
            let d: [__m512; 4] = std::array::from_fn(|j| {
                let (p, q) = (cols[[0, 1, 2, 1][a]][j], cols[[2, 2, 1, 3][a]][j]);
                if a == 1 {
                    _mm512_add_ps(p, q)
                } else {
                    _mm512_sub_ps(p, q)
                }
            });
            let out = [
                _mm512_sub_ps(d[0], d[2]),
                _mm512_add_ps(d[1], d[2]),
                _mm512_sub_ps(d[2], d[1]),
                _mm512_sub_ps(d[1], d[3]),
            ];
            for (b, value) in out.into_iter().enumerate() {
                _mm512_mask_storeu_ps(v.add((4 * a + b) * stride), k, value);
            }
        }
    }

    /// Aᵀ P A + bias of `n` ≤ 16 tiles: value ξ of tile i is `p[ξ·stride + i]`; the two output
    /// rows (`rows` of them inside the image) go to `dst` and `dst + row_stride`, `width` values
    /// each (the tiles' columns interleaved).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn outputs(
        p: *const f32,
        stride: usize,
        n: usize,
        bias: f32,
        (dst, row_stride, rows, width): (*mut f32, usize, usize, usize),
    ) {
        let k = mask(n);
        let q: [__m512; 16] =
            std::array::from_fn(|xi| _mm512_maskz_loadu_ps(k, p.add(xi * stride)));
        // P A along each row a: (p0 + p1 + p2, p1 − p2 − p3).
        let s: [[__m512; 2]; 4] = std::array::from_fn(|a| {
            let (p0, p1, p2, p3) = (q[4 * a], q[4 * a + 1], q[4 * a + 2], q[4 * a + 3]);
            [
                _mm512_add_ps(_mm512_add_ps(p0, p1), p2),
                _mm512_sub_ps(_mm512_sub_ps(p1, p2), p3),
            ]
        });
        let b = _mm512_set1_ps(bias);
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let (k0, k1) = (mask(width.min(16)), mask(width.saturating_sub(16)));
        for r in 0..rows {
            // Aᵀ (P A): row 0 is s0 + s1 + s2, row 1 is s1 − s2 − s3.
            let y: [__m512; 2] = std::array::from_fn(|c| {
                let v = if r == 0 {
                    _mm512_add_ps(_mm512_add_ps(s[0][c], s[1][c]), s[2][c])
                } else {
                    _mm512_sub_ps(_mm512_sub_ps(s[1][c], s[2][c]), s[3][c])
                };
                _mm512_add_ps(v, b)
            });
            let row = dst.add(r * row_stride);
            _mm512_mask_storeu_ps(row, k0, _mm512_permutex2var_ps(y[0], lo, y[1]));
            _mm512_mask_storeu_ps(row.add(16), k1, _mm512_permutex2var_ps(y[0], hi, y[1]));
        }
    }

    /// U = G g Gᵀ of `n` 3×3 kernels `w` (9 values each): value ξ of kernel i to `u[ξ·n + i]`,
    /// 16 kernels at a time.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernels(w: &[f32], u: *mut f32, n: usize) {
        let nine = _mm512_setr_epi32(
            0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 99, 108, 117, 126, 135,
        );
        let half = _mm512_set1_ps(0.5);
        for i in (0..n).step_by(16) {
            let k = mask(16.min(n - i));
            let base = w.as_ptr().add(9 * i);
            let g: [__m512; 9] = std::array::from_fn(|e| {
                _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), k, nine, base.add(e))
            });
            // G g, column by column: (g0, ½(g0 + g1 + g2), ½(g0 − g1 + g2), g2).
            let gt = |g0: __m512, g1: __m512, g2: __m512| {
                [
                    g0,
                    _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(g0, g1), g2)),
                    _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(g0, g1), g2)),
                    g2,
                ]
            };
            let cols: [[__m512; 4]; 3] = std::array::from_fn(|j| gt(g[j], g[3 + j], g[6 + j]));
            // (G g) Gᵀ, row by row.
            let rows: [[__m512; 4]; 4] =
                std::array::from_fn(|a| gt(cols[0][a], cols[1][a], cols[2][a]));
            for (a, row) in rows.into_iter().enumerate() {
                for (b, value) in row.into_iter().enumerate() {
                    _mm512_mask_storeu_ps(u.add((4 * a + b) * n + i), k, value);
                }
            }
        }
    }
}

/// The transforms of [`avx512`], 8 tiles or kernels at a time in 256-bit registers: the same
/// operations in the same order (a generic version over both register types was 1.5-3x slower:
/// its intrinsics, called from functions without the target feature, were not inlined).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Lanes 0..n, as AVX2's masked loads and stores read them (the top bit of each).
    #[inline(always)]
    unsafe fn mask(n: usize) -> __m256i {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lane)
    }

    /// Even elements of a ‖ b (a's 0, 2, 4, 6, then b's), and odd ones.
    #[inline(always)]
    unsafe fn deinterleave(a: __m256, b: __m256) -> (__m256, __m256) {
        // Per 128-bit half: a0 a2 b0 b2 | a4 a6 b4 b6; then the 64-bit pairs in order.
        let order = |t: __m256| {
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(t)))
        };
        (
            order(_mm256_shuffle_ps::<0b10_00_10_00>(a, b)),
            order(_mm256_shuffle_ps::<0b11_01_11_01>(a, b)),
        )
    }

    /// [`super::avx512::inputs`] for `n` ≤ 8 tiles (18 values a row).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn inputs(rows: [*const f32; 4], v: *mut f32, stride: usize, n: usize) {
        let cols = rows.map(|r| {
            let (e0, o0) = deinterleave(_mm256_loadu_ps(r), _mm256_loadu_ps(r.add(8)));
            let (e1, o1) = deinterleave(_mm256_loadu_ps(r.add(2)), _mm256_loadu_ps(r.add(10)));
            [e0, o0, e1, o1]
        });
        let k = mask(n);
        for a in 0..4 {
            let d: [__m256; 4] = std::array::from_fn(|j| {
                let (p, q) = (cols[[0, 1, 2, 1][a]][j], cols[[2, 2, 1, 3][a]][j]);
                if a == 1 {
                    _mm256_add_ps(p, q)
                } else {
                    _mm256_sub_ps(p, q)
                }
            });
            let out = [
                _mm256_sub_ps(d[0], d[2]),
                _mm256_add_ps(d[1], d[2]),
                _mm256_sub_ps(d[2], d[1]),
                _mm256_sub_ps(d[1], d[3]),
            ];
            for (b, value) in out.into_iter().enumerate() {
                _mm256_maskstore_ps(v.add((4 * a + b) * stride), k, value);
            }
        }
    }

    /// [`super::avx512::outputs`] for `n` ≤ 8 tiles (`width` ≤ 16 values a row).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn outputs(
        p: *const f32,
        stride: usize,
        n: usize,
        bias: f32,
        (dst, row_stride, rows, width): (*mut f32, usize, usize, usize),
    ) {
        let k = mask(n);
        let q: [__m256; 16] = std::array::from_fn(|xi| _mm256_maskload_ps(p.add(xi * stride), k));
        let s: [[__m256; 2]; 4] = std::array::from_fn(|a| {
            let (p0, p1, p2, p3) = (q[4 * a], q[4 * a + 1], q[4 * a + 2], q[4 * a + 3]);
            [
                _mm256_add_ps(_mm256_add_ps(p0, p1), p2),
                _mm256_sub_ps(_mm256_sub_ps(p1, p2), p3),
            ]
        });
        let b = _mm256_set1_ps(bias);
        let (k0, k1) = (mask(width.min(8)), mask(width.saturating_sub(8)));
        for r in 0..rows {
            let y: [__m256; 2] = std::array::from_fn(|c| {
                let v = if r == 0 {
                    _mm256_add_ps(_mm256_add_ps(s[0][c], s[1][c]), s[2][c])
                } else {
                    _mm256_sub_ps(_mm256_sub_ps(s[1][c], s[2][c]), s[3][c])
                };
                _mm256_add_ps(v, b)
            });
            // Columns interleaved: pairs within each half, then the halves in order.
            let (lo, hi) = (
                _mm256_unpacklo_ps(y[0], y[1]),
                _mm256_unpackhi_ps(y[0], y[1]),
            );
            let row = dst.add(r * row_stride);
            _mm256_maskstore_ps(row, k0, _mm256_permute2f128_ps::<0x20>(lo, hi));
            _mm256_maskstore_ps(row.add(8), k1, _mm256_permute2f128_ps::<0x31>(lo, hi));
        }
    }

    /// [`super::avx512::kernels`], 8 kernels at a time.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn kernels(w: &[f32], u: *mut f32, n: usize) {
        let nine = _mm256_setr_epi32(0, 9, 18, 27, 36, 45, 54, 63);
        let half = _mm256_set1_ps(0.5);
        for i in (0..n).step_by(8) {
            let k = mask(8.min(n - i));
            let base = w.as_ptr().add(9 * i);
            let g: [__m256; 9] = std::array::from_fn(|e| {
                _mm256_mask_i32gather_ps::<4>(
                    _mm256_setzero_ps(),
                    base.add(e),
                    nine,
                    _mm256_castsi256_ps(k),
                )
            });
            let gt = |g0: __m256, g1: __m256, g2: __m256| {
                [
                    g0,
                    _mm256_mul_ps(half, _mm256_add_ps(_mm256_add_ps(g0, g1), g2)),
                    _mm256_mul_ps(half, _mm256_add_ps(_mm256_sub_ps(g0, g1), g2)),
                    g2,
                ]
            };
            let cols: [[__m256; 4]; 3] = std::array::from_fn(|j| gt(g[j], g[3 + j], g[6 + j]));
            let rows: [[__m256; 4]; 4] =
                std::array::from_fn(|a| gt(cols[0][a], cols[1][a], cols[2][a]));
            for (a, row) in rows.into_iter().enumerate() {
                for (b, value) in row.into_iter().enumerate() {
                    _mm256_maskstore_ps(u.add((4 * a + b) * n + i), k, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::values;

    /// Odd and even sizes, pads 0-2, chunks in pieces of a row and of several rows: the
    /// definition's outputs within float32 rounding of sums of C·9 terms.
    #[test]
    fn gives_the_convolution() {
        // (input C, H, W), pad, output channels
        for (input, pad, m) in [
            ((16, 9, 11), 1, 16),
            ((17, 8, 8), 0, 20),
            ((16, 5, 30), 2, 16),
            ((32, 3, 3), 1, 24),
            ((16, 2, 600), 1, 16),
            // Rows of 100 tiles in pieces of 50 (96 channels in and out).
            ((96, 2, 200), 1, 96),
        ] {
            let g = Geometry::of(input, pad, (3, 3), (1, 1), 1);
            let (ch, h, wd) = input;
            let x = values(2 * ch * h * wd, 1);
            let w = values(m * ch * 9, 2);
            let bias = values(m, 3);
            let plane = g.output.0 * g.output.1;
            // The definition's sums (in f64, rounded once), plus the bias.
            let want = super::super::conv_gemm::tests::direct(&x, &w, m, g);
            let mut results = Vec::new();
            for isa in Isa::available() {
                let got = conv_on(isa, &x, &w, Some(&bias), (m, g));
                assert_eq!(got.len(), want.len());
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    let b = b + bias[i / plane % m];
                    let tol = 2e-6 * (ch * 9) as f32;
                    assert!(
                        (a - b).abs() <= tol,
                        "{isa:?} {input:?} pad {pad}: element {i}: {a} vs {b}"
                    );
                }
                let unbiased = conv_on(isa, &x, &w, None, (m, g));
                for (i, (a, b)) in unbiased.iter().zip(&got).enumerate() {
                    assert!((a + bias[i / plane % m] - b).abs() <= 1e-5);
                }
                results.push((isa, got));
            }
            // The transforms' arithmetic is the same at either width.
            if let [(_, a), (_, b)] = &results[..] {
                assert_eq!(a, b, "{input:?}: AVX-512 and AVX2");
            }
        }
    }

    /// A row too wide for one chunk is cut into pieces.
    #[test]
    fn chunks_cover_every_tile_once() {
        for (input, m) in [
            ((16, 2, 600), 16),
            ((256, 64, 300), 256),
            ((16, 13, 13), 16),
            ((64, 52, 52), 64),
        ] {
            let g = Geometry::of(input, 1, (3, 3), (1, 1), 1);
            let (th, tw) = (g.output.0.div_ceil(2), g.output.1.div_ceil(2));
            let mut seen = vec![0; th * tw];
            let cs = chunks(g, m);
            for c in &cs {
                assert!(
                    16 * (input.0 + m) * c.tiles() <= CHUNK_FLOATS.max(16 * 16 * (input.0 + m))
                );
                for r in c.rows.0..c.rows.1 {
                    for col in c.cols.0..c.cols.1 {
                        seen[r * tw + col] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "{input:?}");
        }
    }

    /// The chunks are cut by the shapes alone: one thread or three give the same bits, and an
    /// image alone the same as in a batch.
    #[test]
    fn threads_and_batches_do_not_change_the_bits() {
        let g = Geometry::of((32, 20, 21), 1, (3, 3), (1, 1), 1);
        let x = values(2 * 32 * 20 * 21, 4);
        let w = values(24 * 32 * 9, 5);
        for isa in Isa::available() {
            let on =
                |threads| crate::ops::on_threads(threads, || conv_on(isa, &x, &w, None, (24, g)));
            let one = on(1);
            assert_eq!(one, on(3), "{isa:?}");
            let second = conv_on(isa, &x[32 * 20 * 21..], &w, None, (24, g));
            assert_eq!(&one[24 * 20 * 21..], &second[..], "{isa:?}");
        }
    }
}
