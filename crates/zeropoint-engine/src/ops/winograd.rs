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
/// product sum C terms instead of 9·C, and below 16 their fixed costs outweigh the saving.
const MIN_CHANNELS: usize = 16;

/// Whether [`conv`] computes this convolution of `m` output channels.
pub(super) fn applies(g: Geometry, m: usize) -> bool {
    g.kernel == (3, 3)
        && g.strides == (1, 1)
        && g.dilation == 1
        && g.input.0 >= MIN_CHANNELS
        && m >= MIN_CHANNELS
        && g.output.0 >= 2
        && g.output.1 >= 2
}

/// `w` [M, C·3·3] convolved with each of `images` ([C, H, W] each, back to back), plus the
/// `bias` [M] if there is one: [images, M, OH·OW], as [`super::conv_gemm::conv`] computes it.
pub(super) fn conv(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, g: Geometry) -> Vec<f32> {
    let (ch, h, wd) = g.input;
    let plane = ch * h * wd;
    let images = x.len().checked_div(plane).unwrap_or(0);
    let (oh, ow) = g.output;
    let len = images * m * oh * ow;
    let u = kernel_transform(w, m, ch);
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
            run_chunk(x, (&u, bias), m, g, chunk, s, (&out, i * m * oh * ow));
        });
    });
    // SAFETY: the chunks of each image cover all its tiles, and every tile writes each of its
    // output elements inside the image (`write_tiles`) for every output channel.
    unsafe { y.set_len(len) };
    y
}

/// U_ξ = (G g Gᵀ)_ξ of every kernel, as 16 matrices [M, C] back to back.
fn kernel_transform(w: &[f32], m: usize, ch: usize) -> Vec<f32> {
    let mut u: Vec<f32> = Vec::with_capacity(16 * m * ch);
    let spare = &mut u.spare_capacity_mut()[..16 * m * ch];
    for (mc, g) in w.chunks_exact(9).enumerate().take(m * ch) {
        // G g: rows 1 and 2 of G are (½, ±½, ½).
        let mut t = [[0f32; 3]; 4];
        for j in 0..3 {
            let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
            t[0][j] = g0;
            t[1][j] = 0.5 * (g0 + g1 + g2);
            t[2][j] = 0.5 * (g0 - g1 + g2);
            t[3][j] = g2;
        }
        for (a, t) in t.iter().enumerate() {
            let row = [
                t[0],
                0.5 * (t[0] + t[1] + t[2]),
                0.5 * (t[0] - t[1] + t[2]),
                t[2],
            ];
            for (b, v) in row.into_iter().enumerate() {
                spare[(4 * a + b) * m * ch + mc].write(v);
            }
        }
    }
    // SAFETY: the loops wrote all 16 values of each of the m·ch kernels.
    unsafe { u.set_len(16 * m * ch) };
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
    x: &[f32],
    (u, bias): (&[f32], Option<&[f32]>),
    m: usize,
    g: Geometry,
    chunk: Chunk,
    s: &mut Scratch,
    out: (&Output, usize),
) {
    let (ch, t) = (g.input.0, chunk.tiles());
    s.v.resize(16 * ch * t, 0.0);
    s.p.resize(16 * m * t, 0.0);
    zeropoint_core::kernel::dispatch(
        #[inline(always)]
        || transform_inputs(x, g, chunk, s),
    );
    for xi in 0..16 {
        let p = s.p[xi * m * t..].as_mut_ptr();
        let (u, v) = (&u[xi * m * ch..(xi + 1) * m * ch], &s.v[xi * ch * t..]);
        matmul(m, t, ch, u, (v, t), (p, t));
    }
    zeropoint_core::kernel::dispatch(
        #[inline(always)]
        || write_tiles(&s.p, bias, m, g, chunk, out),
    );
}

/// Tiles transformed at once: one 512-bit register of float32 per value of the 4×4 patch.
const LANES: usize = 16;

/// V_ξ[c, tile] = (Bᵀ d B)_ξ for each channel c and tile of the chunk, d the tile's 4×4 input
/// patch (zeros where it lies on the padding).
#[inline(always)]
fn transform_inputs(x: &[f32], g: Geometry, chunk: Chunk, s: &mut Scratch) {
    let (ch, h, wd) = g.input;
    let (t, nt) = (chunk.tiles(), chunk.cols.1 - chunk.cols.0);
    // The chunk's input columns: 2·tx0 − pad on, two past the last tile's first column, and
    // zeros up to a whole number of lane blocks.
    let first = 2 * chunk.cols.0 as isize - g.pad as isize;
    let len = 2 * nt.div_ceil(LANES) * LANES + 2;
    for r in s.rows.iter_mut() {
        r.resize(len, 0.0);
    }
    for c in 0..ch {
        let plane = &x[c * h * wd..(c + 1) * h * wd];
        for ty in chunk.rows.0..chunk.rows.1 {
            let top = 2 * ty as isize - g.pad as isize;
            for (k, row) in s.rows.iter_mut().enumerate() {
                read_row(plane, (h, wd), top + k as isize, first, &mut row[..2 * nt + 2]);
            }
            let at = (ty - chunk.rows.0) * nt;
            for j in (0..nt).step_by(LANES) {
                let n = LANES.min(nt - j);
                let v = transform_block(&s.rows, 2 * j);
                for (xi, v) in v.iter().enumerate() {
                    s.v[(xi * ch + c) * t + at + j..][..n].copy_from_slice(&v[..n]);
                }
            }
        }
    }
}

/// (Bᵀ d B) of the 16 tiles whose patches start at column `x0` of the four `rows`.
#[inline(always)]
fn transform_block(rows: &[Vec<f32>; 4], x0: usize) -> [[f32; LANES]; 16] {
    let block = |k: usize| -> &[f32; 2 * LANES + 2] { rows[k][x0..x0 + 2 * LANES + 2].try_into().unwrap() };
    let d = [block(0), block(1), block(2), block(3)];
    let mut v = [[0f32; LANES]; 16];
    // Row a of Bᵀ d combines two input rows: d0 − d2, d1 + d2, d2 − d1, d1 − d3.
    for (a, (p, q, sign)) in [(0, 2, -1.0), (1, 2, 1.0), (2, 1, -1.0), (1, 3, -1.0)].into_iter().enumerate() {
        let mut r = [0f32; 2 * LANES + 2];
        for (r, (&p, &q)) in r.iter_mut().zip(d[p].iter().zip(d[q])) {
            *r = if sign > 0.0 { p + q } else { p - q };
        }
        // Then (·) B along the row: tile i reads columns 2i..2i+4.
        let (mut e, mut o) = ([0f32; LANES + 1], [0f32; LANES + 1]);
        for (i, pair) in r.chunks_exact(2).enumerate() {
            e[i] = pair[0];
            o[i] = pair[1];
        }
        for i in 0..LANES {
            v[4 * a][i] = e[i] - e[i + 1];
            v[4 * a + 1][i] = o[i] + e[i + 1];
            v[4 * a + 2][i] = e[i + 1] - o[i];
            v[4 * a + 3][i] = o[i] - o[i + 1];
        }
    }
    v
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
    let (a, b) = ((lo as isize - first) as usize, (hi as isize - first) as usize);
    row[..a].fill(0.0);
    row[b..].fill(0.0);
    if a < b {
        row[a..b].copy_from_slice(&plane[y as usize * w + lo..y as usize * w + hi]);
    }
}

/// Y = Aᵀ P A (+ bias) of every tile of the chunk and output channel, written where the tile's
/// outputs fall inside the image.
#[inline(always)]
fn write_tiles(
    p: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    g: Geometry,
    chunk: Chunk,
    (out, offset): (&Output, usize),
) {
    let ((oh, ow), t, nt) = (g.output, chunk.tiles(), chunk.cols.1 - chunk.cols.0);
    assert!(offset + m * oh * ow <= out.len);
    for o in 0..m {
        let b = bias.map_or(0.0, |b| b[o]);
        for ty in chunk.rows.0..chunk.rows.1 {
            let at = (ty - chunk.rows.0) * nt;
            for j in (0..nt).step_by(LANES) {
                let n = LANES.min(nt - j);
                let mut q = [[0f32; LANES]; 16];
                for (xi, q) in q.iter_mut().enumerate() {
                    q[..n].copy_from_slice(&p[(xi * m + o) * t + at + j..][..n]);
                }
                let y = inverse_block(&q, b);
                let x0 = 2 * (chunk.cols.0 + j);
                let x1 = (x0 + 2 * n).min(ow);
                for (r, y) in y.iter().enumerate() {
                    let row = 2 * ty + r;
                    if row >= oh {
                        break;
                    }
                    // SAFETY: in bounds by the assert (row < oh, x1 ≤ ow); this chunk alone
                    // writes its tiles' outputs (the chunks of an image do not overlap).
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(out.at.add(offset + (o * oh + row) * ow + x0), x1 - x0)
                    };
                    dst.copy_from_slice(&y[..x1 - x0]);
                }
            }
        }
    }
}

/// The two output rows (Aᵀ P A + b) of 16 tiles, each row's columns in order.
#[inline(always)]
fn inverse_block(q: &[[f32; LANES]; 16], b: f32) -> [[f32; 2 * LANES]; 2] {
    // P A along each row a of P: (p0 + p1 + p2, p1 − p2 − p3).
    let mut s = [[[0f32; LANES]; 2]; 4];
    for (a, s) in s.iter_mut().enumerate() {
        for i in 0..LANES {
            let (p0, p1, p2, p3) = (q[4 * a][i], q[4 * a + 1][i], q[4 * a + 2][i], q[4 * a + 3][i]);
            s[0][i] = p0 + p1 + p2;
            s[1][i] = p1 - p2 - p3;
        }
    }
    let mut y = [[0f32; 2 * LANES]; 2];
    for c in 0..2 {
        for i in 0..LANES {
            y[0][2 * i + c] = s[0][c][i] + s[1][c][i] + s[2][c][i] + b;
            y[1][2 * i + c] = s[1][c][i] - s[2][c][i] - s[3][c][i] + b;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution by its definition, in f64.
    fn direct(x: &[f32], w: &[f32], bias: &[f32], m: usize, g: Geometry) -> Vec<f64> {
        let (ch, h, wd) = g.input;
        let (oh, ow) = g.output;
        let images = x.len() / (ch * h * wd);
        let mut y = Vec::new();
        for n in 0..images {
            for o in 0..m {
                for r in 0..oh {
                    for col in 0..ow {
                        let mut acc = f64::from(bias[o]);
                        for c in 0..ch {
                            for i in 0..3 {
                                for j in 0..3 {
                                    let yy = (r + i) as i64 - g.pad as i64;
                                    let xx = (col + j) as i64 - g.pad as i64;
                                    if yy < 0 || xx < 0 || yy >= h as i64 || xx >= wd as i64 {
                                        continue;
                                    }
                                    let v = x[((n * ch + c) * h + yy as usize) * wd + xx as usize];
                                    acc += f64::from(v) * f64::from(w[((o * ch + c) * 3 + i) * 3 + j]);
                                }
                            }
                        }
                        y.push(acc);
                    }
                }
            }
        }
        y
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

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
        ] {
            let g = Geometry::of(input, pad, (3, 3), (1, 1), 1);
            assert!(applies(g, m));
            let (ch, h, wd) = input;
            let x = values(2 * ch * h * wd, 1);
            let w = values(m * ch * 9, 2);
            let bias = values(m, 3);
            let want = direct(&x, &w, &bias, m, g);
            let got = conv(&x, &w, Some(&bias), m, g);
            assert_eq!(got.len(), want.len());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                let tol = 2e-6 * (ch * 9) as f64;
                assert!((f64::from(*a) - b).abs() <= tol, "{input:?} pad {pad}: element {i}: {a} vs {b}");
            }
            let unbiased = conv(&x, &w, None, m, g);
            let plane = g.output.0 * g.output.1;
            for (i, (a, b)) in unbiased.iter().zip(&got).enumerate() {
                assert!((a + bias[i / plane % m] - b).abs() <= 1e-5);
            }
        }
    }

    /// A row too wide for one chunk is cut into pieces; narrow images get four chunks.
    #[test]
    fn chunks_cover_every_tile_once() {
        for (input, m) in [((16, 2, 600), 16), ((256, 64, 300), 256), ((16, 13, 13), 16), ((64, 52, 52), 64)] {
            let g = Geometry::of(input, 1, (3, 3), (1, 1), 1);
            let (th, tw) = (g.output.0.div_ceil(2), g.output.1.div_ceil(2));
            let mut seen = vec![0; th * tw];
            let cs = chunks(g, m);
            for c in &cs {
                assert!(16 * (input.0 + m) * c.tiles() <= CHUNK_FLOATS.max(16 * 16 * (input.0 + m)));
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
        let on = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| conv(&x, &w, None, 24, g))
        };
        let one = on(1);
        assert_eq!(one, on(3));
        let second = conv(&x[32 * 20 * 21..], &w, None, 24, g);
        assert_eq!(&one[24 * 20 * 21..], &second[..]);
    }
}
