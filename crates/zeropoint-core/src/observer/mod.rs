//! Range estimation ("observers"): which [min, max] a quantizer should cover.
//!
//! An [`Observer`] takes batches one at a time and keeps a state whose size does not grow with
//! the number of samples: two numbers for min-max, a fixed number of histogram bins for
//! percentile, MSE and entropy, a bounded reservoir of rows for cross-entropy. States of parallel
//! workers [`merge`](Observer::merge). Except for the moving average, which is defined per batch,
//! the ranges found are identical however the data was batched, split or threaded:
//!
//! - min-max is exact;
//! - the histogram has power-of-two bins anchored at zero (see [`histogram`]), so it equals the
//!   histogram of all the data binned at once;
//! - the reservoir keeps the rows with the smallest content hashes, a set that does not depend on
//!   arrival order.
//!
//! Methods (Nagel et al. 2021, §3.1; TensorRT's entropy calibration):
//!
//! | method | range |
//! |---|---|
//! | min-max | [min, max] |
//! | moving average | exponential moving averages of each batch's min and max |
//! | percentile | the `lower` and `upper` percentiles, from the histogram |
//! | MSE | the range minimizing the expected Lp quantization error (clipping + rounding) of the histogram for the scheme |
//! | entropy | the symmetric threshold minimizing KL(float histogram ‖ quantized histogram) |
//! | cross-entropy | the range minimizing the cross-entropy between softmax(x) and softmax(fake_quant(x)) over rows of logits |
//!
//! For weights, whose values are all at hand, [`estimate_values`] computes percentiles exactly
//! (inverted-CDF definition) and searches the MSE range on the values themselves. [`bn_ranges`] is the data-free range of a
//! BatchNorm output.

pub mod histogram;
mod reservoir;
pub mod search;
mod state;

use std::fmt;

use crate::error::{Error, Result};
use crate::layout::{Layout, Segment};
use crate::scheme::{Granularity, Scheme};
use histogram::Histogram;
use reservoir::Reservoir;

/// How a range is estimated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    MinMax,
    /// running = momentum · running + (1 - momentum) · batch, for min and max separately.
    MovingAverage {
        momentum: f32,
    },
    /// Two-sided: e.g. lower 0.01, upper 99.99.
    Percentile {
        lower: f64,
        upper: f64,
    },
    /// Symmetric: [-t, t] with t the `p`-th percentile of |x|, clamped to [min, max] (ONNX
    /// Runtime's default percentile calibration).
    AbsPercentile {
        p: f64,
    },
    /// Minimize Σ|x - x^|^norm; norm 2 is the MSE.
    Mse {
        norm: f64,
    },
    /// `bins`: the histogram the KL criterion is evaluated on (2048 in TensorRT), over
    /// ±max|x|; `quantized_bins`: the levels it is quantized to (128 in TensorRT).
    Entropy {
        bins: usize,
        quantized_bins: usize,
    },
    CrossEntropy,
}

impl Method {
    /// The methods by their command-line names, with default settings.
    pub fn parse(name: &str) -> Result<Method> {
        Ok(match name {
            "minmax" | "min-max" => Method::MinMax,
            "ema" | "moving-average" => Method::MovingAverage { momentum: 0.9 },
            "percentile" => Method::Percentile {
                lower: 0.01,
                upper: 99.99,
            },
            "abs-percentile" => Method::AbsPercentile { p: 99.99 },
            "mse" => Method::Mse { norm: 2.0 },
            "entropy" | "kl" => Method::Entropy {
                bins: 2048,
                quantized_bins: 128,
            },
            "cross-entropy" | "ce" => Method::CrossEntropy,
            other => {
                return Err(Error::Scheme(format!(
                    "unknown range method '{other}' (expected minmax, ema, percentile, abs-percentile, mse, entropy or cross-entropy)"
                )))
            }
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Method::MinMax => "minmax",
            Method::MovingAverage { .. } => "ema",
            Method::Percentile { .. } => "percentile",
            Method::AbsPercentile { .. } => "abs-percentile",
            Method::Mse { .. } => "mse",
            Method::Entropy { .. } => "entropy",
            Method::CrossEntropy => "cross-entropy",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::MovingAverage { momentum } => write!(f, "ema (momentum {momentum})"),
            Method::Percentile { lower, upper } => {
                // 100 - 99.99 is 0.010000000000005116 in binary: print what the user meant.
                let round = |v: f64| (v * 1e6).round() / 1e6;
                write!(f, "percentile {}..{}", round(*lower), round(*upper))
            }
            Method::AbsPercentile { p } => write!(f, "abs-percentile {p}"),
            Method::Mse { norm } if *norm == 2.0 => write!(f, "mse"),
            Method::Mse { norm } => write!(f, "mse (L{norm})"),
            Method::Entropy {
                bins,
                quantized_bins,
            } => write!(f, "entropy ({bins}/{quantized_bins} bins)"),
            other => f.write_str(other.name()),
        }
    }
}

/// What an observer estimates and at which granularity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub method: Method,
    /// Per-tensor (None) or per-channel along this axis.
    pub axis: Option<usize>,
    /// Histogram bins (percentile, MSE, entropy).
    pub bins: usize,
    /// Rows kept for cross-entropy.
    pub rows: usize,
}

impl Config {
    pub fn new(method: Method) -> Config {
        Config {
            method,
            axis: None,
            bins: histogram::DEFAULT_BINS,
            rows: 1024,
        }
    }

    pub fn per_axis(mut self, axis: usize) -> Config {
        self.axis = Some(axis);
        self
    }

    pub fn bins(mut self, bins: usize) -> Config {
        self.bins = bins;
        self
    }
}

/// The state of one channel (or of the whole tensor).
#[derive(Debug, Clone, PartialEq)]
enum State {
    MinMax { min: f32, max: f32 },
    Average { min: f32, max: f32, batches: u64 },
    Histogram(Histogram),
    Rows(Reservoir),
}

/// A streaming range estimator for one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Observer {
    config: Config,
    /// One per channel; empty until the first batch tells how many channels there are.
    states: Vec<State>,
}

impl Observer {
    pub fn new(config: Config) -> Result<Observer> {
        if let Method::AbsPercentile { p } = config.method {
            if !(0.0..=100.0).contains(&p) {
                return Err(Error::Scheme(format!(
                    "percentiles must satisfy 0 <= p <= 100 (got {p})"
                )));
            }
        }
        if let Method::Percentile { lower, upper } = config.method {
            if !(0.0..=100.0).contains(&lower) || !(0.0..=100.0).contains(&upper) || lower > upper {
                return Err(Error::Scheme(format!(
                    "percentiles must satisfy 0 <= lower <= upper <= 100 (got {lower}, {upper})"
                )));
            }
        }
        if let Method::MovingAverage { momentum } = config.method {
            if !(0.0..1.0).contains(&momentum) {
                return Err(Error::Scheme(format!(
                    "momentum must be in [0, 1) (got {momentum})"
                )));
            }
        }
        if let Method::Entropy {
            bins,
            quantized_bins,
        } = config.method
        {
            if quantized_bins < 2 || quantized_bins > bins || bins > config.bins {
                return Err(Error::Scheme(format!(
                    "entropy needs 2 <= quantized bins ({quantized_bins}) <= bins ({bins}) <= histogram bins ({})",
                    config.bins
                )));
            }
        }
        if config.method == Method::CrossEntropy && config.axis.is_some() {
            return Err(Error::Scheme(
                "cross-entropy ranges are per-tensor: it compares whole rows of logits".into(),
            ));
        }
        Histogram::new(config.bins)?;
        Ok(Observer {
            config,
            states: Vec::new(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn fresh_state(&self) -> State {
        match self.config.method {
            Method::MinMax => State::MinMax {
                min: f32::INFINITY,
                max: f32::NEG_INFINITY,
            },
            Method::MovingAverage { .. } => State::Average {
                min: 0.0,
                max: 0.0,
                batches: 0,
            },
            Method::CrossEntropy => State::Rows(Reservoir::new(self.config.rows)),
            _ => State::Histogram(Histogram::new(self.config.bins).expect("checked in new")),
        }
    }

    /// Observes one batch: the tensor `x` of shape `shape`. For per-channel observers the
    /// channel count (shape[axis]) must stay the same from batch to batch.
    pub fn update(&mut self, x: &[f32], shape: &[usize]) -> Result<()> {
        let layout = Layout::new(
            shape,
            self.config
                .axis
                .map_or(Granularity::PerTensor, |axis| Granularity::PerAxis { axis }),
        )?;
        if layout.len() != x.len() {
            return Err(Error::Length {
                what: "the batch",
                shape: shape.to_vec(),
                expected: layout.len(),
                got: x.len(),
            });
        }
        let channels = layout.num_params();
        if self.states.is_empty() {
            self.states = (0..channels).map(|_| self.fresh_state()).collect();
        } else if self.states.len() != channels {
            return Err(Error::Mismatch {
                a: "this batch's channels",
                b: "earlier batches' channels",
                expected: self.states.len(),
                got: channels,
            });
        }
        if x.is_empty() {
            return Ok(());
        }
        let momentum = match self.config.method {
            Method::MovingAverage { momentum } => momentum,
            _ => 0.0,
        };
        let row = shape.last().copied().unwrap_or(1).max(1);
        if channels == 1 {
            return self.states[0].update(x, momentum, row);
        }
        // A bad value refuses the whole batch before any channel has taken its part.
        crate::params::finite_min_max(x)?;
        for (state, values) in self
            .states
            .iter_mut()
            .zip(split_channels(x, &layout, channels))
        {
            state.update(&values, momentum, row)?;
        }
        Ok(())
    }

    /// Adds the observations of another observer of the same configuration (parallel workers).
    /// Moving averages cannot be merged: they depend on the order of the batches.
    pub fn merge(&mut self, other: &Observer) -> Result<()> {
        if other.config != self.config {
            return Err(Error::Scheme(
                "observers of different configurations cannot be merged".into(),
            ));
        }
        if other.states.is_empty() {
            return Ok(());
        }
        if self.states.is_empty() {
            self.states = other.states.clone();
            return Ok(());
        }
        if self.states.len() != other.states.len() {
            return Err(Error::Mismatch {
                a: "the merged observer's channels",
                b: "this observer's channels",
                expected: self.states.len(),
                got: other.states.len(),
            });
        }
        for (a, b) in self.states.iter_mut().zip(&other.states) {
            a.merge(b)?;
        }
        Ok(())
    }

    /// The estimated [min, max] of each channel, for quantizing with `scheme` (the MSE and
    /// cross-entropy criteria depend on the bit-width and symmetry; the others ignore it).
    pub fn ranges(&self, scheme: &Scheme) -> Result<Vec<(f32, f32)>> {
        if self.states.is_empty() {
            return Err(Error::Empty);
        }
        self.states
            .iter()
            .map(|s| s.range(&self.config.method, scheme))
            .collect()
    }

    /// The ranges another method gives from this observer's histograms (an MSE observer's
    /// answer min-max and percentiles too, without a second pass over the data); None where the
    /// state is not histograms.
    pub fn ranges_with(&self, method: &Method, scheme: &Scheme) -> Option<Result<Vec<(f32, f32)>>> {
        self.has_histograms().then(|| {
            self.states
                .iter()
                .map(|s| s.range(method, scheme))
                .collect()
        })
    }

    /// The ranges by `method` where this observer's histograms answer it
    /// ([`Observer::ranges_with`]), else by its own method.
    pub fn ranges_by(&self, method: &Method, scheme: &Scheme) -> Result<Vec<(f32, f32)>> {
        self.ranges_with(method, scheme)
            .unwrap_or_else(|| self.ranges(scheme))
    }

    /// Whether this observer has seen data and keeps histograms of it (the histogram methods';
    /// not min-max, moving average or cross-entropy).
    pub fn has_histograms(&self) -> bool {
        let histograms = self.states.iter().all(|s| matches!(s, State::Histogram(_)));
        histograms && !self.states.is_empty()
    }

    /// Bytes of state held: constant in the number of samples observed.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .states
                .iter()
                .map(|s| {
                    std::mem::size_of::<State>()
                        + match s {
                            State::Histogram(h) => h.bins() * 8,
                            State::Rows(r) => r.capacity_bytes(),
                            _ => 0,
                        }
                })
                .sum::<usize>()
    }
}

/// The values of each channel, gathered (a transient copy of one batch).
fn split_channels(x: &[f32], layout: &Layout, channels: usize) -> Vec<Vec<f32>> {
    let mut out = vec![Vec::with_capacity(x.len() / channels); channels];
    layout.for_each_segment(0..x.len(), |r, seg| match seg {
        Segment::Uniform(c) => out[c].extend_from_slice(&x[r]),
        Segment::PerElement(c0) => {
            for (k, &v) in x[r].iter().enumerate() {
                out[c0 + k].push(v);
            }
        }
    });
    out
}

impl State {
    fn update(&mut self, x: &[f32], momentum: f32, row: usize) -> Result<()> {
        match self {
            State::Histogram(h) => h.update(x),
            State::Rows(r) => {
                crate::params::finite_min_max(x)?;
                r.update(x, row);
                Ok(())
            }
            State::MinMax { min, max } => {
                let (lo, hi) = crate::params::finite_min_max(x)?;
                *min = min.min(lo);
                *max = max.max(hi);
                Ok(())
            }
            State::Average { min, max, batches } => {
                let (lo, hi) = crate::params::finite_min_max(x)?;
                if *batches == 0 {
                    (*min, *max) = (lo, hi);
                } else {
                    *min = momentum * *min + (1.0 - momentum) * lo;
                    *max = momentum * *max + (1.0 - momentum) * hi;
                }
                *batches += 1;
                Ok(())
            }
        }
    }

    fn merge(&mut self, other: &State) -> Result<()> {
        match (self, other) {
            (State::MinMax { min, max }, State::MinMax { min: a, max: b }) => {
                *min = min.min(*a);
                *max = max.max(*b);
                Ok(())
            }
            (State::Histogram(h), State::Histogram(g)) => h.merge(g),
            (State::Rows(r), State::Rows(s)) => {
                r.merge(s);
                Ok(())
            }
            _ => Err(Error::Scheme(
                "moving-average observers cannot be merged: their result depends on the order of the batches"
                    .into(),
            )),
        }
    }

    fn range(&self, method: &Method, scheme: &Scheme) -> Result<(f32, f32)> {
        let empty = || Error::Empty;
        Ok(match (self, method) {
            (State::MinMax { min, max }, _) if min <= max => (*min, *max),
            (State::Average { min, max, batches }, _) if *batches > 0 => (*min, *max),
            (State::Histogram(h), Method::MinMax) => h.min_max().ok_or_else(empty)?,
            (State::Histogram(h), Method::AbsPercentile { p }) => {
                let (min, max) = h.min_max().ok_or_else(empty)?;
                symmetric_clamped(h.abs_percentile(*p).ok_or_else(empty)?, min, max)
            }
            (State::Histogram(h), Method::Percentile { lower, upper }) => (
                h.percentile(*lower).ok_or_else(empty)?,
                h.percentile(*upper).ok_or_else(empty)?,
            ),
            (State::Histogram(h), Method::Mse { norm }) => {
                let (lo, hi) = h.min_max().ok_or_else(empty)?;
                search::minimize_bounded(scheme, lo, hi, search::histogram_cost(scheme, h, *norm))
            }
            (
                State::Histogram(h),
                Method::Entropy {
                    bins,
                    quantized_bins,
                },
            ) => search::entropy_range(h, *bins, *quantized_bins).ok_or_else(empty)?,
            (State::Rows(r), _) => {
                let rows = r.rows();
                let (lo, hi) = r.min_max().ok_or_else(empty)?;
                search::minimize(scheme, lo, hi, search::cross_entropy_cost(scheme, &rows))
            }
            _ => return Err(empty()),
        })
    }
}

/// Ranges for a tensor whose values are all at hand (weights), at the scheme's granularity
/// (per-tensor, per-axis or per-block): percentiles are exact, MSE is searched on the values
/// themselves, min-max is exact; the other methods (per-tensor or per-axis only) observe the
/// tensor as one batch with `config`'s histogram bins and rows. `config.axis` is ignored: the
/// scheme's granularity decides.
pub fn estimate_values(
    x: &[f32],
    shape: &[usize],
    scheme: &Scheme,
    config: Config,
) -> Result<Vec<(f32, f32)>> {
    scheme.validate()?;
    let axis = match scheme.granularity {
        Granularity::PerTensor => None,
        Granularity::PerAxis { axis } => Some(axis),
        Granularity::PerBlock { .. } => None,
    };
    let blocks = matches!(scheme.granularity, Granularity::PerBlock { .. });
    let layout = crate::params::checked_layout(x.len(), shape, scheme.granularity)?;
    if x.is_empty() {
        return Err(Error::Empty);
    }
    let channels = layout.num_params();
    let per_channel = || {
        if channels == 1 {
            vec![x.to_vec()]
        } else {
            split_channels(x, &layout, channels)
        }
    };
    match config.method {
        Method::Percentile { lower, upper } => per_channel()
            .into_iter()
            .map(|mut v| {
                crate::params::finite_min_max(&v)?;
                Ok((inverted_cdf(&mut v, lower), inverted_cdf(&mut v, upper)))
            })
            .collect(),
        Method::AbsPercentile { p } => per_channel()
            .into_iter()
            .map(|v| {
                let (min, max) = crate::params::finite_min_max(&v)?;
                let mut abs: Vec<f32> = v.iter().map(|x| x.abs()).collect();
                Ok(symmetric_clamped(inverted_cdf(&mut abs, p), min, max))
            })
            .collect(),
        Method::Mse { norm } => per_channel()
            .iter()
            .map(|v| {
                let (lo, hi) = crate::params::finite_min_max(v)?;
                Ok(search::minimize(
                    scheme,
                    lo,
                    hi,
                    search::values_cost(scheme, v, norm),
                ))
            })
            .collect(),
        Method::MinMax if blocks => crate::params::ranges(x, &layout),
        _ if blocks => Err(Error::Scheme(format!(
            "per-block ranges are estimated by minmax, percentile, abs-percentile or mse, not {}",
            config.method
        ))),
        _ => {
            let mut obs = Observer::new(Config { axis, ..config })?;
            obs.update(x, shape)?;
            obs.ranges(scheme)
        }
    }
}

/// [-t, t] clamped to the data's [min, max].
fn symmetric_clamped(t: f32, min: f32, max: f32) -> (f32, f32) {
    let lo = (-t).max(min).min(max);
    (lo, t.min(max).max(lo))
}

/// The exact `p`-th percentile of non-empty `v` by the inverted-CDF definition: the smallest
/// value with at least p% of the data at or below it. It is what histogram calibrators (ONNX
/// Runtime, TensorRT) approximate, and it is always one of the values, never an interpolation.
fn inverted_cdf(v: &mut [f32], p: f64) -> f32 {
    let k = ((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len());
    *v.select_nth_unstable_by(k - 1, f32::total_cmp).1
}

/// The data-free range of a BatchNorm output per channel: [β - a·|γ|, β + a·|γ|] (a = 6 is the
/// usual choice: six standard deviations of the normalized pre-activation).
pub fn bn_ranges(gamma: &[f32], beta: &[f32], a: f32) -> Result<Vec<(f32, f32)>> {
    if gamma.len() != beta.len() {
        return Err(Error::Mismatch {
            a: "beta",
            b: "gamma",
            expected: gamma.len(),
            got: beta.len(),
        });
    }
    Ok(gamma
        .iter()
        .zip(beta)
        .map(|(&g, &b)| (b - a * g.abs(), b + a * g.abs()))
        .collect())
}

/// The per-tensor data-free range of a BatchNorm output: the union of its channels' ranges.
pub fn bn_range(gamma: &[f32], beta: &[f32], a: f32) -> Result<(f32, f32)> {
    let r = bn_ranges(gamma, beta, a)?;
    if r.is_empty() {
        return Err(Error::Empty);
    }
    Ok(r.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &(a, b)| {
            (lo.min(a), hi.max(b))
        }))
}
