//! AWQ (Lin et al. 2023, arXiv 2306.00978), the parts shared by the ONNX weight-only path and
//! the GGUF one: the per-input-channel scales (§3.2) and the weight clipping search (`auto_clip`
//! in the reference code).
//!
//! **Scales.**
//!
//! ```text
//! s = s_x^α / √(max s_x^α · min s_x^α)
//! ```
//!
//! with s_x the mean |x_k| of input channel k on calibration data and α searched on a grid. A
//! layer's weights are scaled up by s along their input channels and its input down by s, which
//! leaves the float layer unchanged and rounds the weights of busy channels more finely.
//!
//! **Clipping.** A group's scale follows its largest weight, so one outlier coarsens the grid for
//! the rest of the group. Clipping the group's weights to ±r·max|w| before rounding trades a
//! clipping error on the outlier for a finer grid on the others; which r wins depends on the
//! layer's inputs. For every group of consecutive weights of a row and every r in [`SHRINK`],
//! the search rounds the clipped rows as they will be stored and measures each group's output
//! error on the calibration inputs,
//!
//! ```text
//! e_g(r) = δ_gᵀ H_gg δ_g        δ = w − Q(clamp(w, ±r·max|w_g|))
//! ```
//!
//! (H = Σ x xᵀ, H_gg its diagonal block for the group's inputs: the reference measures each
//! group's output on its own), and keeps each group's best r. A format may share scales between
//! groups (ggml's K-quants quantize their sub-block scales against one super-block scale), so the
//! groups are not quite independent: a row whose clipped error Σ_g e_g ends above its unclipped
//! one is left unclipped. r = 1 (no clipping) is a candidate, so a row never gets worse on its
//! data. Rows are searched in fixed chunks in parallel: the result does not depend on the thread
//! count.

use rayon::prelude::*;

/// s = s_x^α normalized so that max·min = 1 (the reference implementation's normalization).
pub fn scales(abs_mean: &[f64], alpha: f64) -> Vec<f32> {
    let s: Vec<f64> = abs_mean.iter().map(|m| m.max(1e-8).powf(alpha)).collect();
    let (lo, hi) = s
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let norm = (lo * hi).sqrt();
    s.iter().map(|v| (v / norm) as f32).collect()
}

/// The clipping ratios searched: 1, 0.95, ..., 0.55 (the reference's grid of 20 with a largest
/// shrink of 0.5, its last step excluded).
pub const SHRINK: [f32; 10] = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55];

/// Rows per parallel task.
const ROWS: usize = 16;

/// The clipped weights and what the search found.
#[derive(Debug, Clone, PartialEq)]
pub struct Clipped {
    pub w: Vec<f32>,
    /// Groups whose weights were clipped (r < 1), of all groups.
    pub clipped: usize,
    pub groups: usize,
    /// Σ e_g over the matrix without clipping and with the chosen ratios.
    pub error_before: f64,
    pub error_after: f64,
}

/// Rounds whole rows to the grid they will be stored on and back (quantize, then dequantize).
pub type Round<'a> = dyn Fn(&[f32]) -> Result<Vec<f32>, String> + Sync + 'a;

/// Searches the clipping ratio of every group of `group` consecutive weights of `w` (rows of
/// `cols`, one per output; `round` rounds them as the caller will) against the Hessian `h`
/// (`cols × cols`) of the rows' inputs.
pub fn clip_rows(
    w: &[f32],
    cols: usize,
    group: usize,
    h: &[f64],
    round: &Round,
) -> Result<Clipped, String> {
    if h.len() != cols * cols || group == 0 || !cols.is_multiple_of(group) {
        return Err(format!(
            "clipping search: {} Hessian entries for rows of {cols} in groups of {group}",
            h.len()
        ));
    }
    let blocks = diagonal_blocks(h, cols, group);
    let search = Search {
        cols,
        group,
        blocks: &blocks,
        round,
    };
    let chunks: Vec<Result<Chunk, String>> = w
        .par_chunks(ROWS * cols)
        .map(|rows| search.chunk(rows))
        .collect();
    let mut out = Clipped {
        w: Vec::with_capacity(w.len()),
        clipped: 0,
        groups: w.len() / group,
        error_before: 0.0,
        error_after: 0.0,
    };
    for c in chunks {
        let c = c?;
        out.w.extend(c.w);
        out.clipped += c.clipped;
        out.error_before += c.error_before;
        out.error_after += c.error_after;
    }
    Ok(out)
}

/// H's diagonal blocks of group × group, one per group of inputs, as f32.
fn diagonal_blocks(h: &[f64], cols: usize, group: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(cols * group);
    for g in 0..cols / group {
        for i in 0..group {
            let row = (g * group + i) * cols + g * group;
            out.extend(h[row..row + group].iter().map(|&v| v as f32));
        }
    }
    out
}

struct Search<'a> {
    cols: usize,
    group: usize,
    blocks: &'a [f32],
    round: &'a Round<'a>,
}

/// One chunk of rows, searched.
struct Chunk {
    w: Vec<f32>,
    clipped: usize,
    error_before: f64,
    error_after: f64,
}

impl Search<'_> {
    fn chunk(&self, rows: &[f32]) -> Result<Chunk, String> {
        let groups = rows.len() / self.group;
        // Each group's best ratio (an index into SHRINK) and its error.
        let mut best = vec![(0usize, f64::INFINITY); groups];
        let mut unclipped = vec![0f64; groups];
        for (k, &r) in SHRINK.iter().enumerate() {
            let errors = self.group_errors(rows, |_| r)?;
            if k == 0 {
                unclipped.clone_from(&errors);
            }
            for (b, e) in best.iter_mut().zip(errors) {
                if e < b.1 {
                    *b = (k, e);
                }
            }
        }
        let ratio = |g: usize| SHRINK[best[g].0];
        let clipped_w = clamp_groups(rows, self.group, ratio);
        let errors = self.group_errors(rows, ratio)?;
        let per_row = self.cols / self.group;
        let mut out = Chunk {
            w: Vec::with_capacity(rows.len()),
            clipped: 0,
            error_before: 0.0,
            error_after: 0.0,
        };
        for (r, row) in rows.chunks_exact(self.cols).enumerate() {
            let span = r * per_row..(r + 1) * per_row;
            let before: f64 = unclipped[span.clone()].iter().sum();
            let after: f64 = errors[span.clone()].iter().sum();
            out.error_before += before;
            if after < before {
                out.w
                    .extend_from_slice(&clipped_w[r * self.cols..(r + 1) * self.cols]);
                out.clipped += span.filter(|&g| best[g].0 > 0).count();
                out.error_after += after;
            } else {
                out.w.extend_from_slice(row);
                out.error_after += before;
            }
        }
        Ok(out)
    }

    /// e_g of every group of `rows` clipped at `ratio(g)` and rounded to the type.
    fn group_errors(&self, rows: &[f32], ratio: impl Fn(usize) -> f32) -> Result<Vec<f64>, String> {
        let n = self.group;
        let back = (self.round)(&clamp_groups(rows, n, ratio))?;
        let per_row = self.cols / n;
        let mut d = vec![0f32; n];
        Ok((rows.chunks_exact(n).zip(back.chunks_exact(n)))
            .enumerate()
            .map(|(g, (w, q))| {
                for ((d, &a), &b) in d.iter_mut().zip(w).zip(q) {
                    *d = a - b;
                }
                quadratic(&d, &self.blocks[(g % per_row) * n * n..][..n * n])
            })
            .collect())
    }
}

/// The rows with each group's weights clamped to ±ratio(g)·max|w_g|.
fn clamp_groups(rows: &[f32], group: usize, ratio: impl Fn(usize) -> f32) -> Vec<f32> {
    let mut out = rows.to_vec();
    for (g, group) in out.chunks_exact_mut(group).enumerate() {
        let r = ratio(g);
        if r < 1.0 {
            let max = group.iter().fold(0f32, |m, v| m.max(v.abs())) * r;
            for v in group {
                *v = v.clamp(-max, max);
            }
        }
    }
    out
}

/// dᵀ B d for a square block B of d's size.
fn quadratic(d: &[f32], b: &[f32]) -> f64 {
    let mut total = 0f64;
    for (i, row) in b.chunks_exact(d.len()).enumerate() {
        let dot: f32 = row.iter().zip(d).map(|(&h, &x)| h * x).sum();
        total += f64::from(d[i] * dot);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::{dequantize_rows, quantize_rows_weighted, GgmlType};

    const GROUP: usize = 32;

    #[test]
    fn scales_are_normalized_to_unit_geometric_range() {
        let s = scales(&[0.5, 2.0, 8.0], 0.5);
        let (lo, hi) = (s[0], s[2]);
        assert!((lo * hi - 1.0).abs() < 1e-6, "{s:?}");
        assert!((s[1] / s[0] - 2.0).abs() < 1e-6);
        assert_eq!(scales(&[0.5, 2.0, 8.0], 0.0), vec![1.0; 3]);
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// Weights with an outlier in most groups, inputs of mixed scale, and their Hessian.
    fn layer(rows: usize, cols: usize, tokens: usize) -> (Vec<f32>, Vec<f64>, Vec<f64>) {
        let mut seed = 3;
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| lcg(&mut seed) * if i % 29 == 0 { 12.0 } else { 1.0 })
            .collect();
        let x: Vec<f64> = (0..tokens * cols)
            .map(|i| {
                f64::from(lcg(&mut seed))
                    * if (i % cols).is_multiple_of(7) {
                        5.0
                    } else {
                        1.0
                    }
            })
            .collect();
        let mut h = vec![0f64; cols * cols];
        for t in x.chunks_exact(cols) {
            for (a, &xa) in t.iter().enumerate() {
                for (b, &xb) in t.iter().enumerate() {
                    h[a * cols + b] += xa * xb;
                }
            }
        }
        (w, x, h)
    }

    /// Σ over groups and tokens of (x_g · δ_g)², computed on the activations themselves.
    fn group_output_error(x: &[f64], w: &[f32], q: &[f32], cols: usize) -> f64 {
        let mut total = 0.0;
        for (wr, qr) in w.chunks_exact(cols).zip(q.chunks_exact(cols)) {
            for t in x.chunks_exact(cols) {
                for g in 0..cols / GROUP {
                    let y: f64 = (g * GROUP..(g + 1) * GROUP)
                        .map(|j| t[j] * f64::from(wr[j] - qr[j]))
                        .sum();
                    total += y * y;
                }
            }
        }
        total
    }

    fn rounded(ty: GgmlType, w: &[f32], cols: usize, importance: &[f32]) -> Vec<f32> {
        let q = quantize_rows_weighted(ty, w, cols, importance).unwrap();
        dequantize_rows(ty, &q, cols).unwrap()
    }

    fn clip_ggml(ty: GgmlType, w: &[f32], cols: usize, h: &[f64], importance: &[f32]) -> Clipped {
        clip_rows(w, cols, GROUP, h, &|rows| {
            Ok(rounded(ty, rows, cols, importance))
        })
        .unwrap()
    }

    #[test]
    fn clipping_lowers_the_output_error_and_never_raises_a_rows_error() {
        let (rows, cols) = (24, 256);
        let (w, x, h) = layer(rows, cols, 64);
        let importance: Vec<f32> = (0..cols).map(|j| h[j * cols + j] as f32).collect();
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_K,
            GgmlType::Q3_K,
            GgmlType::Q2_K,
        ] {
            let c = clip_ggml(ty, &w, cols, &h, &importance);
            assert!(
                c.clipped > 0 && c.clipped < c.groups,
                "{ty}: {} of {}",
                c.clipped,
                c.groups
            );
            // Against the original weights, measured independently of the search's own sums.
            let before = group_output_error(&x, &w, &rounded(ty, &w, cols, &importance), cols);
            let after = group_output_error(&x, &w, &rounded(ty, &c.w, cols, &importance), cols);
            assert!(after < 0.95 * before, "{ty}: {after} vs {before}");
            let rel = |a: f64, b: f64| (a - b).abs() / b;
            assert!(
                rel(c.error_before, before) < 1e-3,
                "{ty}: {} vs {before}",
                c.error_before
            );
            assert!(
                rel(c.error_after, after) < 1e-3,
                "{ty}: {} vs {after}",
                c.error_after
            );
            // Row by row, clipping was kept only where it helped.
            for r in 0..rows {
                let span = r * cols..(r + 1) * cols;
                let (wr, cr) = (&w[span.clone()], &c.w[span]);
                let e = |v: &[f32]| {
                    group_output_error(&x, wr, &rounded(ty, v, cols, &importance), cols)
                };
                assert!(e(cr) <= e(wr) * (1.0 + 1e-6), "{ty}: row {r}");
                // A clipped weight never leaves the original's range.
                assert!(wr.iter().zip(cr).all(|(a, b)| b.abs() <= a.abs()));
            }
        }
    }

    #[test]
    fn the_result_does_not_depend_on_the_thread_count() {
        let (w, _, h) = layer(40, 64, 16);
        let importance: Vec<f32> = (0..64).map(|j| h[j * 64 + j] as f32).collect();
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| clip_ggml(GgmlType::Q4_0, &w, 64, &h, &importance))
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn a_wrong_hessian_or_group_is_refused_and_rounding_errors_pass_through() {
        let w = vec![0.5f32; 64];
        let round = |rows: &[f32]| Ok(rows.to_vec());
        let e = clip_rows(&w, 64, 32, &[1.0; 10], &round).unwrap_err();
        assert_eq!(
            e,
            "clipping search: 10 Hessian entries for rows of 64 in groups of 32"
        );
        assert!(clip_rows(&w, 64, 24, &[1.0; 64 * 64], &round).is_err());
        let failing = |_: &[f32]| Err("cannot round".to_string());
        assert_eq!(
            clip_rows(&w, 64, 32, &[1.0; 64 * 64], &failing).unwrap_err(),
            "cannot round"
        );
    }
}
