//! SmoothQuant (Xiao et al. 2022, arXiv 2211.10438): a transformer's activations have a few
//! outlier channels, tens of times larger than the rest, so one per-tensor 8-bit scale wastes
//! most of its grid on them; its weights are smooth. Dividing input channel j by
//!
//! ```text
//! s_j = max|X_j|^α / max|W_j|^(1−α)
//! ```
//!
//! and multiplying weight row j by s_j leaves the float layer unchanged and moves part of the
//! difficulty from activations to weights: α = 0 changes nothing, α = 1 makes every channel's
//! activation range equal. max|W_j| runs over every layer reading X (query, key and value share
//! one s) and max|X_j| over all calibration rows.
//!
//! α is searched per input on a grid of 21 values over [0, 1] (the paper fixes one α per model;
//! this chooses per layer) for the least output error of the quantized layers,
//! Σ_rows ‖y − Q_a(x/s)·Q_w(diag(s)W)‖² / ‖y‖² with y = xW, on 512 to 1024 calibration rows
//! evenly spread over the data (all of them if fewer) and at most 128 output columns of each layer, with the run's
//! schemes and range estimators (the activation's range estimated on those rows). The error is
//! relative per row so that every token weighs the same: with the plain squared error the few
//! tokens with huge activations ([CLS], [SEP]) chose α, and MiniLM-L3's held-out cosine was
//! 0.9943 instead of 0.9958. α = 0 is a candidate, so a layer is never made worse on that
//! measure. 1/s goes where the float model stays the same (crate::channel_scaling): a
//! LayerNormalization that only these layers read, the value projection behind attention's
//! context (the paper's fusion into the previous linear layer), else a Mul inserted before
//! them, which leaves other readers (a post-LN residual) float.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use zeropoint_core::observer::{estimate_values, Config, Observer};
use zeropoint_core::{fake_quant, QParams, Scheme};
use zeropoint_graph::graph::Names;
use zeropoint_graph::Graph;

use crate::channel_scaling::{apply, columns, groups_by_input, scale_rows, shared_weights};
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::layer_inputs::{check_rows, summarize};
use crate::linear_layers::{sites, weight_kn, Site};
use crate::params::weight_scheme;
use crate::settings::Settings;
pub use crate::settings::{SmoothAlpha as Alpha, SmoothQuant as Options};

/// The α grid: 0, 0.05, ..., 1.
const GRID: usize = 20;
/// Calibration rows the error is measured on: at least this many (if the data has them), at
/// most twice as many.
const SEARCH_ROWS: usize = 512;
/// Output columns of a layer the error is measured on, at most: each column's weight
/// parameters and error are its own, so evenly spaced columns rank the candidates as all do.
const SEARCH_COLUMNS: usize = 128;

/// What SmoothQuant did for the layers reading one input.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Smoothed {
    pub input: String,
    pub layers: Vec<String>,
    pub alpha: f64,
    /// The relative output error of the quantized layers on the search rows (summed over rows),
    /// at α = 0 and at the chosen α.
    pub error_before: f64,
    pub error_after: f64,
    /// Where 1/s went ([`crate::channel_scaling::apply`]'s words), "" when α = 0.
    pub folded_into: String,
}

/// Smooths the inputs of the MatMul and Gemm layers of `graph` (not excluded, weights not
/// shared) with statistics from `data`, for the schemes of `settings`.
pub fn smooth(
    graph: &mut Graph,
    (data, batch): (&mut Dataset, usize),
    settings: &Settings,
    exclude: &[String],
    opts: &Options,
) -> Result<Vec<Smoothed>> {
    let sites = sites(graph, exclude);
    let shared = shared_weights(graph, &sites);
    let groups: Vec<(String, Vec<&Site>)> = groups_by_input(&sites)
        .into_iter()
        .filter(|(_, g)| g.iter().all(|s| !shared.contains(&s.weight)))
        .collect();
    let inputs: Vec<(String, usize)> = groups.iter().map(|(i, g)| (i.clone(), g[0].k)).collect();
    let stats = collect(graph, &inputs, data, batch)?;
    let mut names = Names::new(graph);
    let mut report = Vec::new();
    for (input, group) in &groups {
        let st = &stats[input];
        let weights: Vec<Vec<f32>> = group
            .iter()
            .map(|s| weight_kn(graph, s).map(|w| w.into_owned()))
            .collect::<Result<_>>()?;
        let at = |e| Error::at(&graph.source, format!("SmoothQuant of '{input}'"), e);
        let search = Search::new(st, group, &weights, settings);
        let (alpha, s, before, after) = search.best(opts.alpha).map_err(at)?;
        let mut smoothed = Smoothed {
            input: input.clone(),
            layers: group.iter().map(|s| s.name.clone()).collect(),
            alpha,
            error_before: before,
            error_after: after,
            folded_into: String::new(),
        };
        if alpha > 0.0 {
            let layers = (input.as_str(), group.as_slice(), weights.as_slice());
            let (_, into) = apply(graph, layers, &s, (&mut names, "smooth"))?;
            smoothed.folded_into = into;
        }
        report.push(smoothed);
    }
    graph.sort()?;
    Ok(report)
}

/// What the calibration data says about one layer input: each channel's max |x| over all rows,
/// and a sample of rows.
#[derive(Debug, Clone, PartialEq)]
struct Channels {
    abs_max: Vec<f32>,
    /// Rows of K values.
    rows: Vec<f32>,
}

/// The statistics of each input value (`name`, K) over `data`: every batch offers the same
/// number of evenly spaced rows, thinned evenly as they arrive ([`keep_every`]), so the sample
/// spreads over the whole data set and does not depend on the thread count. The float values
/// stay valid while the groups are smoothed one by one: smoothing changes only a group's own
/// input, never a value another group reads.
fn collect(
    graph: &mut Graph,
    inputs: &[(String, usize)],
    data: &mut Dataset,
    batch: usize,
) -> Result<HashMap<String, Channels>> {
    let wanted: HashMap<&str, usize> = inputs.iter().map(|(v, k)| (v.as_str(), *k)).collect();
    let mut total: HashMap<String, Channels> = wanted
        .iter()
        .map(|(v, &k)| {
            let empty = Channels {
                abs_max: vec![0.0; k],
                rows: Vec::new(),
            };
            (v.to_string(), empty)
        })
        .collect();
    let per_batch = SEARCH_ROWS.div_ceil(data.len.div_ceil(batch.max(1)).max(1));
    let mut kept: HashMap<String, (usize, usize)> = HashMap::new();
    let mut merge = |name: String, c: Channels| {
        let t = total.get_mut(&name).expect("only wanted values are kept");
        for (a, b) in t.abs_max.iter_mut().zip(&c.abs_max) {
            *a = a.max(*b);
        }
        let k = t.abs_max.len();
        let kept = kept.entry(name).or_insert((0, 1));
        keep_every(&mut t.rows, &c.rows, k, kept);
    };
    let summary = |x: &[f32], k: usize| channels(x, k, per_batch);
    summarize(
        graph,
        &wanted,
        (data, batch),
        &summary,
        &mut merge,
        &mut |_, _| {},
    )?;
    for (name, c) in &total {
        if c.rows.is_empty() {
            return Err(Error::new(
                &graph.source,
                format!("value '{name}' was never computed on the calibration data"),
            ));
        }
    }
    Ok(total)
}

/// Appends every `stride`-th row of `new` (rows of `k` values; `seen` counts the rows offered
/// so far) to `rows`; when `rows` reaches twice [`SEARCH_ROWS`], every other row goes and the
/// stride doubles. The rows kept depend only on the order they came in.
fn keep_every(rows: &mut Vec<f32>, new: &[f32], k: usize, (seen, stride): &mut (usize, usize)) {
    for row in new.chunks_exact(k) {
        if (*seen).is_multiple_of(*stride) {
            rows.extend_from_slice(row);
        }
        *seen += 1;
        if rows.len() / k >= 2 * SEARCH_ROWS {
            let halved: Vec<f32> = (rows.chunks_exact(k).step_by(2))
                .flatten()
                .copied()
                .collect();
            *rows = halved;
            *stride *= 2;
        }
    }
}

/// One batch's statistics of `x` seen as rows of `k` values, with `sample` evenly spaced rows.
fn channels(x: &[f32], k: usize, sample: usize) -> Result<Channels, String> {
    check_rows(x, k)?;
    let mut abs_max = vec![0f32; k];
    for row in x.chunks_exact(k) {
        for (a, v) in abs_max.iter_mut().zip(row) {
            *a = a.max(v.abs());
        }
    }
    let n = x.len() / k;
    let m = sample.min(n);
    // Centred in m equal strides: not always the first row (a [CLS] token, whose outliers
    // would then weigh in every sample).
    let row = |i: usize| (2 * i + 1) * n / (2 * m);
    let rows = (0..m)
        .flat_map(|i| x[row(i) * k..(row(i) + 1) * k].iter().copied())
        .collect();
    Ok(Channels { abs_max, rows })
}

/// The search of one input's α: the sampled rows, the layers' sampled columns and their float
/// outputs on the rows.
struct Search<'a> {
    st: &'a Channels,
    k: usize,
    /// max |W_j| over the layers' rows.
    w_abs_max: Vec<f32>,
    /// Per layer: `[K, n]` weight columns, n, and the float output `[rows, n]`.
    layers: Vec<(Vec<f32>, usize, Vec<f32>)>,
    settings: &'a Settings,
}

type Found = (f64, Vec<f32>, f64, f64);

impl<'a> Search<'a> {
    fn new(
        st: &'a Channels,
        group: &[&Site],
        weights: &[Vec<f32>],
        settings: &'a Settings,
    ) -> Search<'a> {
        let k = group[0].k;
        let mut w_abs_max = vec![0f32; k];
        for (site, w) in group.iter().zip(weights) {
            for (j, row) in w.chunks_exact(site.n).enumerate() {
                let m = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                w_abs_max[j] = w_abs_max[j].max(m);
            }
        }
        let layers = group
            .iter()
            .zip(weights)
            .map(|(site, w)| {
                let (cols, n) = columns(w, k, site.n, SEARCH_COLUMNS);
                let y = matmul(&st.rows, &cols, k, n);
                (cols, n, y)
            })
            .collect();
        Search {
            st,
            k,
            w_abs_max,
            layers,
            settings,
        }
    }

    /// The chosen α, its scales, and the error at α = 0 and at the chosen α.
    fn best(&self, alpha: Alpha) -> zeropoint_core::Result<Found> {
        let ones = vec![1f32; self.k];
        let plain = self.error(&ones)?;
        let candidates: Vec<f64> = match alpha {
            Alpha::Fixed(a) => vec![a],
            Alpha::Search => (1..=GRID).map(|i| i as f64 / GRID as f64).collect(),
        };
        let tried: Vec<(f64, Vec<f32>, f64)> = candidates
            .into_par_iter()
            .map(|a| {
                let s = scales(&self.st.abs_max, &self.w_abs_max, a);
                let e = self.error(&s)?;
                Ok((a, s, e))
            })
            .collect::<zeropoint_core::Result<_>>()?;
        let mut best = (0.0, ones, plain, plain);
        for (a, s, e) in tried {
            if e < best.3 || matches!(alpha, Alpha::Fixed(_)) {
                best = (a, s, plain, e);
            }
        }
        Ok(best)
    }

    /// Σ over the layers of the relative output error of Q_a(X/s)·Q_w(diag(s)W) against XW on
    /// the search rows and columns.
    fn error(&self, s: &[f32]) -> zeropoint_core::Result<f64> {
        let (k, x) = (self.k, &self.st.rows);
        let xs: Vec<f32> = x.iter().enumerate().map(|(i, v)| v / s[i % k]).collect();
        let a = &self.settings.activations;
        // The observer calibration uses (a histogram for MSE and entropy), not the exact search
        // of estimate_values, which costs a pass over the rows per candidate range.
        let mut obs = Observer::new(Config::new(self.settings.activation_method))?;
        obs.update(&xs, &[xs.len()])?;
        let ranges = obs.ranges(a)?;
        let xq = fake_quant(&xs, &[xs.len()], &QParams::from_ranges(a, &ranges)?)?;
        let mut total = 0f64;
        for (w, n, y) in &self.layers {
            let ws = scale_rows(w, s, *n);
            let scheme: Scheme = weight_scheme(&self.settings.weights, 1, 2);
            let shape = [k, *n];
            let wr = estimate_values(
                &ws,
                &shape,
                &scheme,
                Config::new(self.settings.weight_method),
            )?;
            let wq = fake_quant(&ws, &shape, &QParams::from_ranges(&scheme, &wr)?)?;
            let yq = matmul(&xq, &wq, k, *n);
            total += relative_error(y, &yq, *n);
        }
        Ok(total)
    }
}

/// Σ over rows of ‖y_r − ŷ_r‖² / ‖y_r‖²: every token weighs the same, not in proportion to its
/// output's energy.
fn relative_error(y: &[f32], yq: &[f32], n: usize) -> f64 {
    y.chunks_exact(n)
        .zip(yq.chunks_exact(n))
        .map(|(a, b)| {
            let e: f64 = a.iter().zip(b).map(|(a, b)| f64::from(a - b).powi(2)).sum();
            let s: f64 = a.iter().map(|a| f64::from(*a).powi(2)).sum();
            if s > 0.0 {
                e / s
            } else {
                e
            }
        })
        .sum()
}

/// s_j = max|X_j|^α / max|W_j|^(1−α); 1 where a channel is all zeros on either side (nothing
/// to balance).
fn scales(x_abs_max: &[f32], w_abs_max: &[f32], alpha: f64) -> Vec<f32> {
    x_abs_max
        .iter()
        .zip(w_abs_max)
        .map(|(&x, &w)| {
            if x <= 0.0 || w <= 0.0 {
                return 1.0;
            }
            let s = f64::from(x).powf(alpha) / f64::from(w).powf(1.0 - alpha);
            s.clamp(1e-5, 1e5) as f32
        })
        .collect()
}

/// `x` (`[rows, k]`) · `w` (`[k, n]`).
fn matmul(x: &[f32], w: &[f32], k: usize, n: usize) -> Vec<f32> {
    let product = || -> candle_core::Result<Vec<f32>> {
        let xt = Tensor::from_slice(x, (x.len() / k, k), &Device::Cpu)?;
        let wt = Tensor::from_slice(w, (k, n), &Device::Cpu)?;
        xt.matmul(&wt)?.flatten_all()?.to_vec1()
    };
    product().expect("the shapes agree by construction")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_follow_the_paper_and_skip_empty_channels() {
        let s = scales(&[4.0, 0.0, 9.0], &[1.0, 2.0, 4.0], 0.5);
        assert!((s[0] - 2.0).abs() < 1e-6, "{s:?}");
        assert_eq!(s[1], 1.0);
        assert!((s[2] - 1.5).abs() < 1e-6);
        let s = scales(&[4.0], &[0.25], 1.0);
        assert!((s[0] - 4.0).abs() < 1e-6);
    }

    #[test]
    fn sampled_rows_are_evenly_spaced() {
        let x: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let c = channels(&x, 2, 3).unwrap();
        assert_eq!(c.rows, vec![2.0, 3.0, 10.0, 11.0, 16.0, 17.0]);
        assert_eq!(c.abs_max, vec![18.0, 19.0]);
        assert!(channels(&x, 3, 1).is_err());
    }

    #[test]
    fn kept_rows_thin_out_evenly_and_stay_bounded() {
        let (mut rows, mut state) = (Vec::new(), (0, 1));
        let all: Vec<f32> = (0..5 * SEARCH_ROWS).map(|i| i as f32).collect();
        for part in all.chunks(7) {
            keep_every(&mut rows, part, 1, &mut state);
        }
        assert!(
            rows.len() >= SEARCH_ROWS && rows.len() < 2 * SEARCH_ROWS,
            "{}",
            rows.len()
        );
        let stride = state.1 as f32;
        assert!(rows
            .iter()
            .enumerate()
            .all(|(i, &r)| r == i as f32 * stride));
    }
}
