//! The float32 convolution (no gradient) as tiled matrix products.
//!
//! The output positions of each image are cut into tiles of a fixed width. A task gathers one
//! tile's image patches (im2col) into a buffer that fits in the core's cache and multiplies the
//! kernel matrix by it; the tiles run in parallel. Unfolding the whole image first, as candle
//! does, writes and re-reads a column matrix of kh·kw times the input, larger than any cache,
//! and leaves the one matrix product to parallelise along the kernel's few output channels.
//!
//! The tiles are fixed by the shapes alone, so every output element is the same dot product,
//! summed in the same order, whatever the thread count.

use rayon::prelude::*;

/// Bytes of one tile's column matrix: half of a 512 KB L2 cache, leaving room for the GEMM's
/// packed panels. Tiles narrower than 128 positions make the GEMM re-pack the kernel too
/// often: two cores each lose a quarter of their speed at 64.
const TILE_BYTES: usize = 256 << 10;

/// Output positions per tile for `k` rows of patch values: a multiple of 16 (the GEMM's
/// register tile), at least 128 and at most 1024.
pub(super) fn tile_width(k: usize) -> usize {
    (TILE_BYTES / 4 / k.max(1)).clamp(128, 1024) / 16 * 16
}

/// The geometry of one convolution.
#[derive(Clone, Copy)]
pub(super) struct Geometry {
    /// Input channels of the group, height, width.
    pub input: (usize, usize, usize),
    /// Zeros around the input, on every side.
    pub pad: usize,
    pub kernel: (usize, usize),
    pub strides: (usize, usize),
    pub dilation: usize,
    pub output: (usize, usize),
}

impl Geometry {
    /// Rows of the kernel matrix: channels · kh · kw.
    pub(super) fn k(&self) -> usize {
        self.input.0 * self.kernel.0 * self.kernel.1
    }

    pub(super) fn pointwise(&self) -> bool {
        self.kernel == (1, 1) && self.strides == (1, 1) && self.pad == 0
    }

    /// A convolution over `input` (C, H, W), its output size following from the rest.
    #[cfg(test)]
    pub(super) fn of(
        input: (usize, usize, usize),
        pad: usize,
        kernel: (usize, usize),
        strides: (usize, usize),
        dilation: usize,
    ) -> Geometry {
        let len = |n: usize, k: usize, s: usize| (n + 2 * pad - (k - 1) * dilation - 1) / s + 1;
        Geometry {
            input,
            pad,
            kernel,
            strides,
            dilation,
            output: (
                len(input.1, kernel.0, strides.0),
                len(input.2, kernel.1, strides.1),
            ),
        }
    }
}

/// How a float32 convolution may form its sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sums {
    /// Any rewriting that is exact in real arithmetic (Winograd's transforms): the rounding
    /// differs from the definition's.
    Fast,
    /// The definition's products, added up: exact wherever every partial sum is (integers
    /// below 2^24), which ConvInteger's float32 carrier relies on.
    Products,
}

/// `w` [M, C·kh·kw] convolved with each of `images` ([C, H, W] each, back to back), plus the
/// `bias` [M] of each output channel if there is one: [images, M, OH·OW].
pub(super) fn conv(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    (g, sums): (Geometry, Sums),
) -> Vec<f32> {
    if sums == Sums::Fast && super::winograd::applies(g, m) {
        return super::winograd::conv(x, w, bias, m, g);
    }
    tiled(x, w, bias, m, g, tile_width(g.k()))
}

/// [`conv`] in tiles of `t` output positions.
fn tiled(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, g: Geometry, t: usize) -> Vec<f32> {
    let (ch, h, wd) = g.input;
    let plane = ch * h * wd;
    let images = x.len().checked_div(plane).unwrap_or(0);
    let positions = g.output.0 * g.output.1;
    let len = images * m * positions;
    if len == 0 || g.k() == 0 {
        // No output channels (a kernel of shape [0, C, kh, kw]), or no input to sum: zeros.
        return vec![0f32; len];
    }
    // Not zeroed first: the tiles write every element (the GEMM does not read them), and a
    // memset of the output was 2 % of a CNN's calibration.
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let out = Output {
        at: y.as_mut_ptr(),
        len,
    };
    (0..images)
        .flat_map(|i| (0..positions).step_by(t).map(move |p| (i, p)))
        .collect::<Vec<_>>()
        .into_par_iter()
        .for_each(|(i, p)| {
            let at = p..(p + t).min(positions);
            let x = &x[i * plane..(i + 1) * plane];
            tile(x, (w, bias), m, g, at, (&out, i * m * positions));
        });
    // SAFETY: the tiles cover every position of every image, each writing all m output rows
    // of its positions (matmul with read_dst off writes without reading).
    unsafe { y.set_len(len) };
    y
}

/// The output of [`conv`], written by all tiles at once: each writes only its own positions
/// of its own image, so no element is written twice or read.
pub(super) struct Output {
    pub(super) at: *mut f32,
    pub(super) len: usize,
}

// SAFETY: the tiles write disjoint elements (see `Output`), and `conv` keeps the buffer alive
// and untouched until every tile is done.
unsafe impl Sync for Output {}

/// One image's outputs [M, n] at the flat output positions `at`, written to `out` from the
/// image's offset on, at rows OH·OW apart.
fn tile(
    x: &[f32],
    (w, bias): (&[f32], Option<&[f32]>),
    m: usize,
    g: Geometry,
    at: std::ops::Range<usize>,
    (out, offset): (&Output, usize),
) {
    let (k, n) = (g.k(), at.len());
    let positions = g.output.0 * g.output.1;
    assert!(offset + (m - 1) * positions + at.end <= out.len);
    // SAFETY: in bounds by the assert; no other tile writes these elements (see `Output`).
    let dst = unsafe { out.at.add(offset + at.start) };
    if g.pointwise() {
        // A 1×1 kernel at stride 1: the image is its own column matrix [C, H·W].
        let hw = g.input.1 * g.input.2;
        matmul(m, n, k, w, (&x[at.start..], hw), (dst, positions));
    } else {
        COLS.with(|cols| {
            let mut cols = cols.borrow_mut();
            // Grown, never shrunk (the gather writes all k·n): a resize back up after a
            // smaller layer zeroed the difference each time.
            if cols.len() < k * n {
                cols.resize(k * n, 0.0);
            }
            zeropoint_core::kernel::dispatch(
                #[inline(always)]
                || gather(x, g, at, &mut cols[..k * n]),
            );
            matmul(m, n, k, w, (&cols[..k * n], n), (dst, positions));
        });
    }
    // The bias while the tile is in cache: a pass of its own over the whole output was 3 % of
    // a detector's run.
    for (row, &b) in bias.into_iter().flatten().take(m).enumerate() {
        // SAFETY: row < m, inside the tile's rows checked above, written by `matmul`.
        let y = unsafe { std::slice::from_raw_parts_mut(dst.add(row * positions), n) };
        zeropoint_core::kernel::dispatch(
            #[inline(always)]
            || y.iter_mut().for_each(|v| *v += b),
        );
    }
}

thread_local! {
    /// Each thread's column matrix, reused from tile to tile.
    static COLS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The image patches of the output positions `at`: row (c, i, j) of `cols` holds input
/// channel c shifted by kernel tap (i, j), one value per position, zero where the tap falls
/// on the padding.
#[inline(always)]
pub(super) fn gather(x: &[f32], g: Geometry, at: std::ops::Range<usize>, cols: &mut [f32]) {
    let sw = g.strides.1;
    let walk = Walk::new(g, at.clone());
    for (row, dst) in cols.chunks_mut(at.len()).enumerate() {
        walk.runs(
            row,
            #[inline(always)]
            |run, inside, first| {
                let out = &mut dst[run];
                out[..inside.start].fill(0.0);
                out[inside.end..].fill(0.0);
                let out = &mut out[inside.clone()];
                if sw == 1 {
                    out.copy_from_slice(&x[first..first + inside.len()]);
                } else if let Some((last, head)) = out.split_last_mut().filter(|_| sw == 2) {
                    // Every other value: pairs vectorize as shuffles, a `step_by` does not.
                    let src = &x[first..=first + 2 * head.len()];
                    for (o, pair) in head.iter_mut().zip(src.chunks_exact(2)) {
                        *o = pair[0];
                    }
                    *last = src[2 * head.len()];
                } else {
                    for (o, v) in out.iter_mut().zip(x[first..].iter().step_by(sw)) {
                        *o = *v;
                    }
                }
            },
        );
    }
}

/// The reverse of [`gather`]: adds each patch value of `cols` onto the input element it was
/// read from (col2im), so that `dx` receives the gradient of the patches.
#[inline(always)]
pub(super) fn scatter(cols: &[f32], g: Geometry, at: std::ops::Range<usize>, dx: &mut [f32]) {
    let sw = g.strides.1;
    let walk = Walk::new(g, at.clone());
    for (row, src) in cols.chunks(at.len()).enumerate() {
        walk.runs(
            row,
            #[inline(always)]
            |run, inside, first| {
                let src = &src[run][inside.clone()];
                if sw == 1 {
                    for (o, v) in dx[first..first + src.len()].iter_mut().zip(src) {
                        *o += v;
                    }
                } else {
                    for (o, v) in dx[first..].iter_mut().step_by(sw).zip(src) {
                        *o += v;
                    }
                }
            },
        );
    }
}

/// The output positions `at` of a tile cut at the ends of output rows, and for each column tap
/// j the output columns that read inside the image: what [`Walk::runs`] needs for every row of
/// patches, worked out once a tile: worked out again for every row, with its divisions, it
/// took nearly as long as the copying it steered (4.0 % against 5.3 % of quantizing
/// ddddocr-det).
struct Walk {
    g: Geometry,
    /// (output row, first column, positions, offset of the first relative to `at`).
    segments: Vec<(usize, usize, usize, usize)>,
    /// Per column tap j: output columns [lo, hi) read inside the image, pad ≤ col·sw + j·d < pad + wd.
    inside: Vec<(usize, usize)>,
}

impl Walk {
    fn new(g: Geometry, at: std::ops::Range<usize>) -> Walk {
        let ow = g.output.1;
        let mut segments = Vec::new();
        let mut p = at.start;
        while p < at.end {
            let (r, col) = (p / ow, p % ow);
            let n = (ow - col).min(at.end - p);
            segments.push((r, col, n, p - at.start));
            p += n;
        }
        let (sw, d, pad, wd) = (g.strides.1, g.dilation, g.pad, g.input.2);
        let inside = (0..g.kernel.1)
            .map(|j| {
                let lo = (pad.saturating_sub(j * d)).div_ceil(sw).min(ow);
                let hi = (pad + wd).saturating_sub(j * d).div_ceil(sw).clamp(lo, ow);
                (lo, hi)
            })
            .collect();
        Walk {
            g,
            segments,
            inside,
        }
    }

    /// Walks row `row` = (c, i, j) of the tile's patches, one output row at a time: calls
    /// `f(run, inside, first)` with the run's positions relative to the tile, the part of them
    /// whose tap falls inside the image (relative to the run; empty where the whole run reads
    /// padding) and the input element that part's first position reads (later ones `sw` apart).
    #[inline(always)]
    fn runs(
        &self,
        row: usize,
        mut f: impl FnMut(std::ops::Range<usize>, std::ops::Range<usize>, usize),
    ) {
        let g = self.g;
        let (_, h, wd) = g.input;
        let (kh, kw) = g.kernel;
        let (sh, sw) = g.strides;
        let (d, pad) = (g.dilation, g.pad);
        let (c, tap) = (row / (kh * kw), row % (kh * kw));
        let (i, j) = (tap / kw, tap % kw);
        let (lo, hi) = self.inside[j];
        for &(r, col, n, offset) in &self.segments {
            let run = offset..offset + n;
            let y = (r * sh + i * d).wrapping_sub(pad);
            if y >= h {
                f(run, 0..0, 0);
                continue;
            }
            // This run's columns inside the image, [a, b) relative to `col`.
            let (a, b) = (lo.clamp(col, col + n) - col, hi.clamp(col, col + n) - col);
            let first = if a < b {
                c * h * wd + y * wd + (col + a) * sw + j * d - pad
            } else {
                0
            };
            f(run, a..b.max(a), first);
        }
    }
}

/// out [m, n] = a [m, k] (rows `k` apart) × b [k, n] (rows `b.1` apart), on this thread;
/// `out` rows are `out.1` apart.
///
/// The caller guarantees that `out` reaches m rows of n elements that nothing else accesses.
pub(super) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    (b, b_stride): (&[f32], usize),
    (out, out_stride): (*mut f32, usize),
) {
    assert!(a.len() >= m * k && b_stride >= n && out_stride >= n);
    assert!(k == 0 || b.len() >= (k - 1) * b_stride + n);
    // SAFETY: the asserts keep every element of `a` and `b` that the strides reach inside its
    // slice; the caller vouches for `out`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            out_stride as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            b_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The convolution by its definition, one output at a time, in f64.
    pub(in crate::ops) fn direct(x: &[f32], w: &[f32], m: usize, g: Geometry) -> Vec<f32> {
        let (ch, h, wd) = g.input;
        let ((kh, kw), (sh, sw), d, (oh, ow)) = (g.kernel, g.strides, g.dilation, g.output);
        let images = x.len() / (ch * h * wd);
        let mut y = Vec::new();
        for n in 0..images {
            for o in 0..m {
                for r in 0..oh {
                    for col in 0..ow {
                        let mut acc = 0f64;
                        for c in 0..ch {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let yy = (r * sh + i * d) as i64 - g.pad as i64;
                                    let xx = (col * sw + j * d) as i64 - g.pad as i64;
                                    if yy < 0 || xx < 0 || yy >= h as i64 || xx >= wd as i64 {
                                        continue;
                                    }
                                    let v = x[((n * ch + c) * h + yy as usize) * wd + xx as usize];
                                    let k = w[((o * ch + c) * kh + i) * kw + j];
                                    acc += f64::from(v) * f64::from(k);
                                }
                            }
                        }
                        y.push(acc as f32);
                    }
                }
            }
        }
        y
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 + seed) % 101) as f32 / 50.0 - 1.0)
            .collect()
    }

    /// Any tile width gives the definition's outputs, padding, strides and dilation included,
    /// with tiles that end inside an output row.
    #[test]
    fn tiles_of_any_width_give_the_convolution() {
        // (input C, H, W), pad, kernel, strides, dilation
        for (input, pad, kernel, strides, dilation) in [
            ((3, 9, 11), 1, (3, 3), (1, 1), 1),
            ((2, 9, 11), 3, (3, 2), (2, 1), 2),
            ((4, 7, 7), 0, (1, 1), (1, 1), 1),
            ((2, 6, 8), 1, (1, 1), (2, 3), 1),
            ((1, 1, 200), 0, (1, 16), (1, 5), 1),
            ((2, 5, 5), 4, (3, 3), (3, 3), 1),
            // Column stride 2 has a loop of its own (odd and even widths, padding, dilation).
            ((3, 9, 11), 1, (3, 3), (2, 2), 1),
            ((2, 8, 10), 2, (3, 3), (1, 2), 2),
            ((2, 7, 6), 0, (2, 2), (2, 2), 1),
        ] {
            let (ch, h, wd) = input;
            let g = Geometry::of(input, pad, kernel, strides, dilation);
            let (oh, ow) = g.output;
            let (images, m) = (2, 5);
            let x = values(images * ch * h * wd, 1);
            let w = values(m * g.k(), 7);
            let want = direct(&x, &w, m, g);
            // With a bias, each output is the definition's plus its channel's.
            let bias = values(m, 11);
            let biased: Vec<f32> = (want.iter().enumerate())
                .map(|(i, &v)| v + bias[i / (oh * ow) % m])
                .collect();
            for t in [1, 5, ow + 1, oh * ow] {
                let got = tiled(&x, &w, None, m, g, t);
                let got_biased = tiled(&x, &w, Some(&bias), m, g, t);
                assert_eq!(got.len(), want.len());
                let pairs = got.iter().zip(&want).chain(got_biased.iter().zip(&biased));
                for (i, (a, b)) in pairs.enumerate() {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{input:?} pad {pad} {kernel:?} {strides:?} tile {t}: element {i}: {a} vs {b}");
                }
            }
        }
    }

    /// A kernel without output channels gives an empty output (found by fuzzing: the tiles ran
    /// and computed the last channel's offset as 0 − 1).
    #[test]
    fn a_kernel_without_output_channels_gives_an_empty_output() {
        let g = Geometry::of((2, 5, 5), 1, (3, 3), (1, 1), 1);
        let x = values(2 * 2 * 5 * 5, 1);
        assert!(conv(&x, &[], None, 0, (g, Sums::Fast)).is_empty());
    }

    /// The tiles are cut by the shapes alone: one thread or three give the same bits.
    #[test]
    fn the_thread_count_does_not_change_the_bits() {
        let g = Geometry {
            input: (64, 20, 21),
            pad: 1,
            kernel: (3, 3),
            strides: (1, 1),
            dilation: 1,
            output: (20, 21),
        };
        let x = values(2 * 64 * 20 * 21, 3);
        let w = values(8 * g.k(), 5);
        let on = |threads| {
            crate::ops::on_threads(threads, || conv(&x, &w, None, 8, (g, Sums::Products)))
        };
        let one = on(1);
        assert!(one.iter().any(|&v| v != 0.0));
        assert_eq!(one, on(3));
    }
}
