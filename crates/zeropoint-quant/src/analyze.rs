//! The white paper's debugging flow for a model that quantizes badly (Nagel et al. 2021, §4.8,
//! its Fig. 10), measured rather than prescribed:
//!
//! 1. the simulation checked against float with 16-bit weights and activations (the widest
//!    grids ONNX has): anything far below ~60 dB there is a bug, not quantization error;
//! 2. weights alone quantized, and activations alone, to see which of the two hurts;
//! 3. every quantizer alone enabled, and all but that one, ranked ([`crate::sensitivity`]);
//! 4. the distributions of the worst quantizers: a histogram of the values with the clipping
//!    range, to tell outliers (a range problem) from a coarse grid (a bit-width problem);
//! 5. the fixes that apply to this model and these settings (per-channel weights, MSE ranges,
//!    weight ranges fitted to the layers' outputs, cross-layer equalization, bias correction, the
//!    worst weight's layer kept float, the worst activation at 16 bits, mixed precision to 3 dB
//!    more), each measured.
//!
//! Every score is the simulated model against the float one on the same calibration samples,
//! but for the fixes fitted on the first calibration samples (output ranges, bias correction):
//! where the data has samples after those, such a fix and the quantized model it is compared with
//! are scored on them, which the fit did not see.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use zeropoint_core::observer::{Method, Observer};
use zeropoint_core::stats::histogram;
use zeropoint_core::{Granularity, QParams};
use zeropoint_engine::Executor;

use crate::calibrate::{observe, ranges};
use crate::calibrated::{calibrated, first_samples, open_data, samples_from, Calibrated};
use crate::compare::Batch;
use crate::error::Result;
use crate::mixed_precision::{score_with, to_target, Change};
use crate::params::{params, Params};
use crate::sensitivity::{sensitivities, subset, Probe, Quantizer, Score, Sensitivity};
use crate::settings::{
    BiasCorrection, Settings, Target, BIAS_CORRECTION_SAMPLES, OUTPUT_RANGE_SAMPLES,
};

/// What `analyze` needs besides the model.
#[derive(Debug, Clone)]
pub struct Options {
    /// The quantization to analyze (its report samples are not used).
    pub ptq: crate::calibrated::Options,
    /// Calibration samples every score is measured on.
    pub samples: usize,
    /// The first of them each quantizer's sensitivity is measured on (two simulations per
    /// quantizer and sample: the analysis's cost).
    pub sensitivity_samples: usize,
    /// How many of the worst quantizers get a distribution.
    pub plots: usize,
    /// Measure the suggested fixes (each may calibrate again).
    pub suggestions: bool,
}

/// Everything the debugging flow measured.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub calibration_samples: usize,
    /// Samples each score is measured on.
    pub samples: usize,
    /// The first of them the sensitivities are measured on.
    pub sensitivity_samples: usize,
    /// The simulation with 16-bit weights and activations.
    pub check_16_bits: Score,
    /// The model quantized with the settings.
    pub quantized: Score,
    pub weights_only: Score,
    pub activations_only: Score,
    /// Every quantizer, most harmful alone first.
    pub sensitivities: Vec<Sensitivity>,
    /// The worst quantizers' values.
    pub distributions: Vec<Distribution>,
    pub suggestions: Vec<Suggestion>,
}

/// The values of one quantizer (a weight, or an activation on the samples) against its grid.
#[derive(Debug, Clone, Serialize)]
pub struct Distribution {
    pub quantizer: Quantizer,
    pub bits: u32,
    /// The data's range.
    pub min: f32,
    pub max: f32,
    /// The clipping range of each channel (one for a per-tensor quantizer).
    pub clip: Vec<(f32, f32)>,
    /// The step of each channel.
    pub scale: Vec<f32>,
    /// Values outside their channel's clipping range, 0..=1.
    pub clipped: f64,
    /// Counts of `bins` equal bins between `lo` and `hi` (which cover the data and the
    /// clipping ranges).
    pub lo: f32,
    pub hi: f32,
    pub counts: Vec<u64>,
}

/// A fix, measured.
#[derive(Debug, Clone, Serialize)]
pub struct Suggestion {
    /// What to change, as `quantize` options.
    pub options: String,
    pub why: String,
    pub score: Score,
    /// Output SQNR gained over the quantized model, dB (on the held-out samples for a fix
    /// scored there).
    pub gain_db: f64,
    /// The fix fits the model to calibration samples that include the scored ones (output
    /// ranges or bias correction where the data has no samples after the fitted ones): held
    /// out, it may gain less (on the MNIST CNN at W4A8, output ranges gained 5.2 dB here and
    /// 4.0 on held-out images).
    pub fitted_on_scored_samples: bool,
    /// For a fix fitted on the first calibration samples where the data has more: the samples
    /// after those, which `score` and `gain_db` are measured on instead of the analysis's.
    pub held_out: Option<HeldOut>,
}

/// Where a fitted fix was scored on samples its fit did not see.
#[derive(Debug, Clone, Serialize)]
pub struct HeldOut {
    /// The calibration samples after the fitted ones (at most as many as the analysis's).
    pub samples: usize,
    /// The quantized model's score on them, which the fix's gain is measured against.
    pub quantized: Score,
}

/// Bins of a distribution.
const BINS: usize = 120;

/// Runs the debugging flow on the model at `path`. `progress(stage, done, total)` reports.
pub fn analyze(
    path: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Analysis> {
    let c = calibrated(path, &opts.ptq, progress)?;
    let opts = &Options {
        ptq: c.options.clone(),
        ..opts.clone()
    };
    let batches = samples(&c, opts)?;
    let probe = Probe::new(c.reference(), &c.graph, batches.clone())?;
    let (plan, p) = (&c.plan, &c.params);
    let quantized = probe.score(p)?;
    progress("measuring", 0, 1);
    let check_16_bits = probe.score(&widest(&c, &opts.ptq.settings)?)?;
    let weights_only = probe.score(&subset(p, plan, |q| matches!(q, Quantizer::Weight(_))))?;
    let activations_only =
        probe.score(&subset(p, plan, |q| matches!(q, Quantizer::Activation(_))))?;
    let few = probe.first(opts.sensitivity_samples.max(1));
    progress("measuring", 1, 1);
    let sensitivities = sensitivities(&few, plan, p, &mut |d, t| progress("sensitivity", d, t))?;
    let worst: Vec<&Quantizer> = sensitivities
        .iter()
        .take(opts.plots)
        .map(|s| &s.quantizer)
        .collect();
    let distributions = distributions(&c, &opts.ptq.settings, &worst, &batches)?;
    let suggestions = if opts.suggestions {
        suggest(
            path,
            opts,
            (&c, &probe),
            &sensitivities,
            quantized,
            progress,
        )?
    } else {
        Vec::new()
    };
    Ok(Analysis {
        calibration_samples: c.calibration_samples,
        samples: probe.samples(),
        sensitivity_samples: few.samples(),
        check_16_bits,
        quantized,
        weights_only,
        activations_only,
        sensitivities,
        distributions,
        suggestions,
    })
}

/// The analysis samples, one per batch.
fn samples(c: &Calibrated, opts: &Options) -> Result<Vec<Batch>> {
    first_samples(&c.graph, &opts.ptq, opts.samples.max(1))
}

/// The parameters of `c` with 16-bit grids everywhere (same granularities and estimators).
fn widest(c: &Calibrated, settings: &Settings) -> Result<Params> {
    let wide = Settings {
        weights: zeropoint_core::Scheme {
            bits: 16,
            ..settings.weights
        },
        activations: zeropoint_core::Scheme {
            bits: 16,
            ..settings.activations
        },
        activation_bits: Vec::new(),
        ..settings.clone()
    };
    let method = Some(&c.activation_method);
    let r = crate::calibrate::ranges_as(&c.graph, &c.plan, &c.observers, &wide, method)?;
    params(&c.graph, &c.plan, &r, &wide)
}

/// The values of each quantizer in `worst`: weights from the graph, activations from float runs
/// on the samples. Two passes for all of them together: the ranges, then the counts.
fn distributions(
    c: &Calibrated,
    settings: &Settings,
    worst: &[&Quantizer],
    batches: &[Batch],
) -> Result<Vec<Distribution>> {
    let mut tallies: Vec<Tally> = worst
        .iter()
        .filter_map(|q| Tally::new(c, settings, q))
        .collect();
    let names: Vec<String> = tallies
        .iter()
        .map(|t| t.quantizer.name().to_string())
        .collect();
    let exec = Executor::new(&c.graph)?;
    let visit = |f: &mut Visitor| -> Result<()> {
        for (i, name) in names.iter().enumerate() {
            if let Some(t) = c.graph.find_initializer(name) {
                f(i, &t.to_f32s(), &t.shape);
            }
        }
        if names.iter().all(|n| c.graph.find_initializer(n).is_some()) {
            return Ok(());
        }
        for b in batches {
            exec.run_with(b.clone(), &mut |n, v| {
                if let Some(i) = names.iter().position(|name| name == n) {
                    v.with_f32s(|x| f(i, x, v.shape()))?;
                }
                Ok(v)
            })?;
        }
        Ok(())
    };
    visit(&mut |i, x, _| tallies[i].extend_range(x))?;
    for t in &mut tallies {
        t.fix_bins();
    }
    visit(&mut |i, x, shape| tallies[i].count(x, shape))?;
    Ok(tallies.into_iter().map(Tally::finish).collect())
}

/// What sees the values of the `i`-th plotted quantizer: `i`, a slice and its shape.
type Visitor<'a> = dyn FnMut(usize, &[f32], &[usize]) + 'a;

/// One quantizer's distribution as it is gathered.
struct Tally<'c> {
    quantizer: Quantizer,
    bits: u32,
    qp: &'c QParams,
    /// The clipping range of each channel.
    clip: Vec<(f32, f32)>,
    min: f32,
    max: f32,
    lo: f32,
    hi: f32,
    counts: Vec<u64>,
    outside: usize,
    total: usize,
}

impl<'c> Tally<'c> {
    /// None for a quantizer without parameters.
    fn new(c: &'c Calibrated, settings: &Settings, q: &Quantizer) -> Option<Tally<'c>> {
        let (qp, bits) = match q {
            Quantizer::Weight(w) => c.params.weight(w).map(|p| (&p.qparams, p.scheme.bits))?,
            Quantizer::Activation(a) => c
                .params
                .activation(a)
                .map(|p| (&p.qparams, settings.activation_scheme(a).bits))?,
        };
        let clip = (0..qp.scale.len())
            .map(|i| qp.get(i).real_range(qp.grid))
            .collect();
        Some(Tally {
            quantizer: q.clone(),
            bits,
            qp,
            clip,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            lo: 0.0,
            hi: 0.0,
            counts: vec![0; BINS],
            outside: 0,
            total: 0,
        })
    }

    fn extend_range(&mut self, x: &[f32]) {
        for &v in x {
            (self.min, self.max) = (self.min.min(v), self.max.max(v));
        }
    }

    /// The bins cover the data and every channel's clipping range.
    fn fix_bins(&mut self) {
        self.lo = self.clip.iter().fold(self.min, |m, r| m.min(r.0));
        self.hi = self.clip.iter().fold(self.max, |m, r| m.max(r.1));
    }

    fn count(&mut self, x: &[f32], shape: &[usize]) {
        for (c, n) in self
            .counts
            .iter_mut()
            .zip(histogram(x, BINS, self.lo, self.hi))
        {
            *c += n;
        }
        let layout = zeropoint_core::Layout::new(shape, self.qp.granularity).ok();
        for (e, &v) in x.iter().enumerate() {
            let k = match (&layout, self.qp.granularity) {
                (Some(l), g) if g != Granularity::PerTensor => l.param_index(e),
                _ => 0,
            };
            let (a, b) = self.clip[k.min(self.clip.len() - 1)];
            self.outside += usize::from(v < a || v > b);
        }
        self.total += x.len();
    }

    fn finish(self) -> Distribution {
        Distribution {
            quantizer: self.quantizer,
            bits: self.bits,
            min: self.min,
            max: self.max,
            scale: self.qp.scale.clone(),
            clip: self.clip,
            clipped: self.outside as f64 / self.total.max(1) as f64,
            lo: self.lo,
            hi: self.hi,
            counts: self.counts,
        }
    }
}

/// The fixes that apply, each measured on the same samples.
fn suggest(
    path: &Path,
    opts: &Options,
    (c, probe): (&Calibrated, &Probe),
    sensitivities: &[Sensitivity],
    quantized: Score,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Vec<Suggestion>> {
    let mut fixes = Fixes {
        opts,
        c,
        probe,
        quantized,
        out: Vec::new(),
    };
    fixes.ranges(progress)?;
    if opts.ptq.settings.equalize.is_none() {
        if let Some(score) = with_cle(path, opts, progress)? {
            fixes.add(
                "--cle".into(),
                "cross-layer equalization evens out the channel ranges of consecutive layers",
                score,
            );
        }
    }
    let s = &opts.ptq.settings;
    let per_block = matches!(s.weights.granularity, Granularity::PerBlock { .. });
    if s.output_weight_ranges.is_none() && !per_block && !s.limit_pairs {
        let fitted = recalibrated(path, opts, progress, |fitted| {
            fitted.weight_method = Method::MinMax;
            fitted.output_weight_ranges = Some(OUTPUT_RANGE_SAMPLES);
        })?;
        fixes.add_fitted(
            "--weight-range output".into(),
            "each layer's weight range fitted to what the layer outputs rather than to the weights' own error",
            (&fitted, OUTPUT_RANGE_SAMPLES),
        )?;
    }
    if s.bias_correction.is_none() && s.adaround.is_none() {
        let corrected = recalibrated(path, opts, progress, |corrected| {
            corrected.bias_correction = Some(BiasCorrection::Empirical {
                samples: BIAS_CORRECTION_SAMPLES,
            })
        })?;
        fixes.add_fitted(
            "--bias-correction".into(),
            "each layer's bias takes back the mean shift that its quantized weights and inputs cause",
            (&corrected, BIAS_CORRECTION_SAMPLES),
        )?;
    }
    fixes.precision(sensitivities)?;
    Ok(fixes.out)
}

/// The fixes measured so far, and what they are measured on.
struct Fixes<'a> {
    opts: &'a Options,
    c: &'a Calibrated,
    probe: &'a Probe<'a>,
    quantized: Score,
    out: Vec<Suggestion>,
}

impl Fixes<'_> {
    fn add(&mut self, options: String, why: &str, score: Score) {
        self.push(options, why, score, false, None)
    }

    /// A fix, `fixed`, fitted on the first `fit` calibration samples: scored with the quantized
    /// model on the samples after them where the data has any, else on the analysis samples,
    /// which it was fitted on (and flagged so).
    fn add_fitted(
        &mut self,
        options: String,
        why: &str,
        (fixed, fit): (&Calibrated, usize),
    ) -> Result<()> {
        let later = samples_from(&fixed.graph, &self.opts.ptq, fit, self.opts.samples.max(1))?;
        if later.is_empty() {
            self.push(options, why, rescored(fixed, self.opts)?, true, None);
            return Ok(());
        }
        let on_later =
            |c: &Calibrated| Probe::new(c.reference(), &c.graph, later.clone())?.score(&c.params);
        let (quantized, score) = (on_later(self.c)?, on_later(fixed)?);
        let held_out = HeldOut {
            samples: later.len(),
            quantized,
        };
        self.push(options, why, score, false, Some(held_out));
        Ok(())
    }

    /// The fix with its gain over the quantized model, on the held-out samples where it was
    /// scored there.
    fn push(
        &mut self,
        options: String,
        why: &str,
        score: Score,
        fitted_on_scored_samples: bool,
        held_out: Option<HeldOut>,
    ) {
        let quantized = held_out.as_ref().map_or(self.quantized, |h| h.quantized);
        self.out.push(Suggestion {
            options,
            why: why.to_string(),
            gain_db: score.sqnr_db - quantized.sqnr_db,
            score,
            fitted_on_scored_samples,
            held_out,
        })
    }

    /// The score with other settings for the weights (same activation ranges).
    fn with_weights(&self, settings: &Settings) -> Result<Score> {
        let c = self.c;
        self.probe
            .score(&params(&c.graph, &c.plan, &c.ranges, settings)?)
    }

    /// Per-channel weights and MSE ranges, where the settings do not have them.
    fn ranges(&mut self, progress: &mut dyn FnMut(&str, usize, usize)) -> Result<()> {
        let s = self.opts.ptq.settings.clone();
        if s.weights.granularity == Granularity::PerTensor {
            let score = self.with_weights(&Settings {
                weights: s.weights.per_axis(0),
                ..s.clone()
            })?;
            self.add(
                format!("--weights int{},per-channel", s.weights.bits),
                "one grid per output channel fits channels of different ranges",
                score,
            );
        }
        if !matches!(s.weight_method, Method::Mse { .. }) {
            let score = self.with_weights(&Settings {
                weight_method: Method::Mse { norm: 2.0 },
                ..s.clone()
            })?;
            self.add(
                "--weight-range mse".into(),
                "clipping weight outliers trades a little clipping error for finer steps",
                score,
            );
        }
        if !matches!(s.activation_method, Method::Mse { .. }) {
            let score = self.with_mse_activations(progress)?;
            self.add(
                "--activation-range mse".into(),
                "activation ranges that minimize the quantization error instead of covering outliers",
                score,
            );
        }
        // No estimator wins on every model (docs/zoo.md: min-max 18 dB above MSE on magika,
        // percentiles 13 dB above it on oww-melspec); the others come from the same histograms.
        let others = [
            ("minmax", "ranges that cover every activation value: a few large values a later layer needs are not clipped"),
            ("percentile", "ranges between the 0.01th and 99.99th percentiles of each activation"),
        ];
        for (name, why) in others {
            let method = Method::parse(name).expect("a method zeropoint-core knows");
            if std::mem::discriminant(&method) == std::mem::discriminant(&s.activation_method) {
                continue;
            }
            if let Some(ranges) = self.histogram_ranges(&method)? {
                let score = self
                    .probe
                    .score(&params(&self.c.graph, &self.c.plan, &ranges, &s)?)?;
                self.add(format!("--activation-range {name}"), why, score);
            }
        }
        Ok(())
    }

    /// Each activation's range by `method` from calibration's own histograms, without another
    /// pass; None when no observer keeps histograms (min-max or moving-average settings).
    fn histogram_ranges(&self, method: &Method) -> Result<Option<crate::calibrate::Ranges>> {
        let c = self.c;
        if !c.observers.values().any(Observer::has_histograms) {
            return Ok(None);
        }
        let s = &self.opts.ptq.settings;
        crate::calibrate::ranges_as(&c.graph, &c.plan, &c.observers, s, Some(method)).map(Some)
    }

    /// The score with MSE activation ranges (a calibration pass with their observers).
    fn with_mse_activations(&self, progress: &mut dyn FnMut(&str, usize, usize)) -> Result<Score> {
        let (c, s) = (self.c, &self.opts.ptq.settings);
        let a = Settings {
            activation_method: Method::Mse { norm: 2.0 },
            ..s.clone()
        };
        let mut data = open_data(&c.graph, &self.opts.ptq)?;
        let total = data.len;
        let observers = observe(&c.graph, &c.plan, &mut data, &a, &mut |d| {
            progress("calibrating (MSE ranges)", d, total)
        })?;
        let r = ranges(&c.graph, &c.plan, &observers, &a)?;
        self.probe.score(&params(&c.graph, &c.plan, &r, &a)?)
    }

    /// The worst weight's layer float, the worst activation at 16 bits, and mixed precision to
    /// 3 dB more.
    fn precision(&mut self, sensitivities: &[Sensitivity]) -> Result<()> {
        let (c, probe, s) = (self.c, self.probe, &self.opts.ptq.settings);
        let exclude = &self.opts.ptq.exclude;
        let worst = |weight: bool| {
            sensitivities
                .iter()
                .find(|w| matches!(w.quantizer, Quantizer::Weight(_)) == weight)
        };
        if let Some(w) = worst(true) {
            let more = [exclude.clone(), vec![w.node.clone()]].concat();
            if let Some(score) = score_with(c, probe, s, &more)? {
                let why = "keeps the layer of the most harmful weight float";
                self.add(format!("--exclude {}", w.node), why, score);
            }
        }
        if let Some(a) = worst(false).filter(|_| s.activations.bits < 16) {
            let name = a.quantizer.name();
            let mut wide = s.clone();
            wide.activation_bits.push((name.to_string(), 16));
            if let Some(score) = score_with(c, probe, &wide, exclude)? {
                let why = "quantizes the most harmful activation with 16 bits";
                self.add(format!("--activation-bits {name}=16"), why, score);
            }
        }
        let target = (self.quantized.sqnr_db + 3.0).round();
        if target.is_finite() {
            let known = sensitivities
                .iter()
                .map(|s| (s.quantizer.clone(), s.alone))
                .collect();
            self.mixed_precision(target, &known)?;
        }
        Ok(())
    }

    /// Mixed precision to `target` dB, what it raises and what it reaches.
    /// `known`: the score of each quantizer alone, from the sensitivity pass.
    fn mixed_precision(&mut self, target: f64, known: &HashMap<Quantizer, Score>) -> Result<()> {
        let t = Target {
            sqnr_db: Some(target),
            agreement: None,
            samples: self.probe.samples(),
        };
        let s = &self.opts.ptq.settings;
        let rules = (s, self.opts.ptq.exclude.as_slice());
        let (report, _) = to_target(self.c, self.probe, rules, t, known)?;
        let bytes: usize = report.steps.iter().map(|s| s.bytes).sum();
        let count = |c: Change| report.steps.iter().filter(|s| s.change == c).count();
        let why = format!(
            "mixed precision: {} raises ({} activations to 16 bits, {} layers float), {bytes} bytes more{}",
            report.steps.len(),
            count(Change::Bits16),
            count(Change::Float),
            if report.met { "" } else { "; target not met" }
        );
        self.add(format!("--target-sqnr {target}"), &why, report.after);
        Ok(())
    }
}

/// The score of the model quantized with cross-layer equalization, on the same samples; None
/// when no layer pair could be equalized.
fn with_cle(
    path: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Option<Score>> {
    let c = recalibrated(path, opts, progress, |s| {
        s.equalize = Some(crate::equalize::Options::default())
    })?;
    if c.equalization.as_ref().is_none_or(|e| e.pairs.is_empty()) {
        return Ok(None);
    }
    rescored(&c, opts).map(Some)
}

/// The model prepared and calibrated again with `edit` applied to the settings.
fn recalibrated(
    path: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(&str, usize, usize),
    edit: impl FnOnce(&mut Settings),
) -> Result<Calibrated> {
    let mut ptq = opts.ptq.clone();
    edit(&mut ptq.settings);
    calibrated(path, &ptq, progress)
}

/// `c`'s score on the analysis samples, against its own float reference.
fn rescored(c: &Calibrated, opts: &Options) -> Result<Score> {
    Probe::new(c.reference(), &c.graph, samples(c, opts)?)?.score(&c.params)
}
