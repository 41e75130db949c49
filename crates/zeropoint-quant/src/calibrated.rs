//! The front of post-training quantization, up to the quantizers' parameters: the model
//! prepared, its quantizers placed and calibrated, their parameters set, the weights AdaRounded
//! or the biases corrected when asked. `quantize` exports what it returns; `analyze` and mixed
//! precision take it apart.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use zeropoint_core::observer::{Method, Observer};
use zeropoint_graph::canonicalize::Report;
use zeropoint_graph::{Dim, Graph, ValueInfo};
use zeropoint_onnx::{DType, ModelProto};

use crate::bias_correction::{
    correct_biases, correct_biases_analytic, data_means, float_means, unknown_means,
};
use crate::calibrate::{merges_exactly, observe, observe_from, ranges_as, FirstRound, Ranges};
use crate::compare::{next_batches, Batch};
use crate::dataset::{Arrays, Dataset, Preprocess};
use crate::error::{Error, Result};
use crate::output_ranges::FittedRange;
use crate::params::{params, params_reusing_weights, Params};
use crate::placement::{Choices, Plan};
use crate::prepare::{prepare_measuring, Prepared};
use crate::range_choice::RangeChoice;
use crate::recipe::StepScore;
use crate::sensitivity::{Probe, Score};
use crate::settings::{BiasCorrection, Settings};
use zeropoint_engine::infer::{dtypes_of, probe_on, Run};
use zeropoint_graph::graph::dims_fit;

/// What `quantize` needs besides the model.
#[derive(Debug, Clone)]
pub struct Options {
    pub settings: Settings,
    /// Node names or operator types kept float.
    pub exclude: Vec<String>,
    /// Calibration data specs (see [`Dataset::open`]).
    pub data: Vec<String>,
    /// Calibration data in memory instead, one batch-first array per model input, by input name
    /// (see [`Dataset::from_arrays`]; the Python bindings' arrays).
    pub arrays: Arrays,
    pub preprocess: Preprocess,
    /// Use at most this many calibration samples.
    pub samples: Option<usize>,
    /// Samples the per-layer error is measured on (0: no report); by default a quarter of the
    /// calibration samples, at least 4 and at most 8 ([`Options::report_count`]).
    pub report_samples: Option<usize>,
}

/// The per-layer report's sample count by default: at least (or all there are) and at most.
const REPORT_SAMPLES: (usize, usize) = (4, 8);

impl Options {
    /// The placement these options ask for.
    pub fn choices(&self) -> Choices<'_> {
        Choices::of(&self.settings, &self.exclude)
    }

    /// Samples the per-layer report runs on, of `available` calibration samples: as many as
    /// asked, or by default a quarter of them, at least 4 (or all there are) and at most 8.
    /// Each sample costs the report two model runs (float and simulated), so by default it
    /// costs at most half of what calibration did: on the zoo's 640² detectors, whose model
    /// runs are as fast as ONNX Runtime's, half of the calibration samples made the report
    /// 40 % of a 16-sample quantize and kept it above half of ONNX Runtime's time; at most 16
    /// made it a quarter of a 64-sample one (docs/zoo.md). Per-layer SQNR on 4 samples is
    /// within 0.03-0.11 dB (median) of that on 16 on the zoo's detectors and ResNet-18, 0.46 dB
    /// on magika's 9 small values; on 8 of 64, within 0.02-0.23 dB of 16, the same ten worst
    /// layers. `--report-samples` raises it, and `zeropoint eval` measures the output on
    /// held-out data.
    pub fn report_count(&self, available: usize) -> usize {
        let (least, most) = REPORT_SAMPLES;
        match self.report_samples {
            Some(n) => n.min(available),
            None => available.div_ceil(4).max(least).min(most).min(available),
        }
    }
}

/// Wall time of each stage of a run, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StageSeconds {
    pub prepare: f64,
    pub calibrate: f64,
    pub export: f64,
    pub measure: f64,
}

/// The model calibrated and its quantizers' parameters set (rounding learned or biases
/// corrected, when asked), before anything is measured or exported: what `quantize` exports
/// and `analyze` takes apart.
pub struct Calibrated {
    /// The model as read, without its initializers ([`Prepared::base`]).
    pub base: ModelProto,
    /// The model's size on disk, side files included ([`Prepared::stored_bytes`]).
    pub stored_bytes: u64,
    pub canonical: Report,
    pub equalization: Option<crate::equalize::Report>,
    /// What SmoothQuant did, per layer input, in graph order (`--smoothquant`).
    pub smoothing: Vec<crate::smooth_quant::Smoothed>,
    /// The canonical graph (smoothed, if asked), with AdaRound's weights or corrected biases.
    pub graph: Graph,
    /// The canonical float graph before AdaRound or bias correction changed it, when they did:
    /// the reference the quantized model is measured against.
    pub float: Option<Graph>,
    /// Every value's element type, from a run on the first sample.
    pub types: HashMap<String, DType>,
    /// Every computed value's element count on the first sample.
    pub sizes: HashMap<String, usize>,
    pub plan: Plan,
    /// The observer of every planned activation: ranges for other schemes come from them
    /// without another pass over the data.
    pub observers: HashMap<String, Observer>,
    pub ranges: Ranges,
    pub params: Params,
    pub bias_corrections: Vec<crate::bias_correction::Correction>,
    pub adaround: Vec<crate::adaround::Rounded>,
    /// What `--weight-range output` fitted, layer by layer.
    pub output_ranges: Vec<FittedRange>,
    /// The weights whose paired codes were lowered (`Settings::limit_pairs`).
    pub limited_pairs: Vec<crate::pair_limit::Limited>,
    /// The output SQNR after each step of the pipeline, when a step beyond range setting ran.
    pub steps: Vec<StepScore>,
    pub calibration_samples: usize,
    /// Samples per calibration batch: at most `Settings::batch`, fewer where a batch's
    /// activations would pass `calibrate::BATCH_BYTES`.
    pub batch: usize,
    /// Why calibration went one sample at a time where batches were planned: the error of the
    /// first batch of several samples (None when batches ran).
    pub one_sample_at_a_time: Option<String>,
    /// Why the data was read as one whole sample, where it was: its arrays' first axes
    /// disagreed as samples ([`Dataset::open`]), or the model ran on the whole arrays only
    /// ([`probe`]).
    pub whole_sample: Option<String>,
    /// The options calibration ran with: the caller's, with the data read whole into memory
    /// where the model ran on it so only ([`probe`]). Whatever reads the data again after
    /// calibration reads it from these.
    pub options: Options,
    /// The activation range estimator chosen on held-out samples (`--activation-range auto`).
    pub range_choice: Option<RangeChoice>,
    /// The estimator the activation ranges came from: the settings' own, or the one chosen.
    /// Ranges for other schemes (16-bit activations) come from the observers by it.
    pub activation_method: Method,
    pub seconds: StageSeconds,
}

impl Calibrated {
    /// The float graph the quantized one is measured against.
    pub fn reference(&self) -> &Graph {
        self.float.as_ref().unwrap_or(&self.graph)
    }
}

/// Prepares the model at `path`, places its quantizers, calibrates them and sets their
/// parameters, with AdaRound or bias correction if the settings ask for it.
pub fn calibrated(
    path: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Calibrated> {
    let mut seconds = StageSeconds::default();
    let t = Instant::now();
    let Prepared {
        base,
        mut graph,
        canonical,
        equalization,
        stored_bytes,
    } = prepare_measuring(path, &opts.settings, Some(&|g, v| measured(g, v, opts)))?;
    let smoothing = smooth(&mut graph, opts)?;
    let mut data = open_data(&graph, opts)?;
    let (seen, first, read_whole) = probe(&graph, opts, &mut data)?;
    let whole_sample = whole_sample_reason(read_whole.is_some(), &data);
    let opts = &read_whole.unwrap_or_else(|| opts.clone());
    drop_contradicted_output_shapes(&mut graph, &seen);
    let sizes = element_counts(&seen);
    let types = dtypes_of(&graph, seen);
    let plan = Plan::new(&graph, types.clone(), opts.choices())?;
    check_activation_bits(&graph, &plan, &opts.settings)?;
    // The batches after the probe's first round hold what memory allows, whatever the count.
    let batch =
        crate::calibrate::batch_within_budget(&graph, (&sizes, &types), opts.settings.batch);
    let mut settings = Settings {
        batch,
        ..opts.settings.clone()
    };
    seconds.prepare = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let total = data.len;
    let mut calibrating = |done| progress("calibrating", done, total);
    let at = (&graph, &plan);
    let (observers, one_sample_at_a_time, activation_method, range_choice) =
        observe_choosing(first, at, opts, &mut settings, &mut data, &mut calibrating)?;
    let settings = &settings;
    let method = Some(&activation_method);
    let ranges = ranges_as(&graph, &plan, &observers, settings, method)?;
    let step_samples = step_samples(&graph, opts)?;
    let at = (&graph, &plan, &ranges);
    let (mut params, output_ranges, mut steps) = parameters(
        path,
        at,
        (opts, settings),
        step_samples.as_deref(),
        progress,
    )?;
    let float = settings.changes_weights().then(|| graph.clone());
    let mut rounded = Rounding {
        graph: &mut graph,
        plan: &plan,
        params: &params,
        canonical: &canonical,
    };
    let (adaround, bias_corrections) = rounded.run(opts, progress)?;
    if !bias_corrections.is_empty() {
        params = corrected((&graph, &plan, &ranges), settings, &params, &output_ranges)?;
    }
    let limited_pairs = match settings.limit_pairs {
        true => crate::pair_limit::limit_pairs(&mut graph, &plan, &params)?,
        false => Vec::new(),
    };
    if let Some(b) = &step_samples {
        let graphs = (float.as_ref().unwrap_or(&graph), &graph);
        steps.extend(crate::recipe::rounding(settings, graphs, &params, b)?);
    }
    seconds.calibrate = t.elapsed().as_secs_f64();
    Ok(Calibrated {
        base,
        canonical,
        equalization,
        smoothing,
        graph,
        float,
        types,
        sizes,
        plan,
        observers,
        ranges,
        params,
        bias_corrections,
        adaround,
        output_ranges,
        limited_pairs,
        steps,
        calibration_samples: total,
        batch: settings.batch,
        one_sample_at_a_time,
        whole_sample,
        options: opts.clone(),
        activation_method,
        range_choice,
        seconds,
        stored_bytes,
    })
}

/// Every value's element count in the probe's run.
fn element_counts(seen: &Run) -> HashMap<String, usize> {
    (seen.iter())
        .map(|(name, (_, dims))| (name.clone(), dims.iter().product()))
        .collect()
}

/// The estimator `--activation-range auto` chose, and what it measured.
type Chosen = (Method, RangeChoice);

/// Calibration's observers, why they went one sample at a time if they did, the estimator the
/// activation ranges are to come from, and what `--activation-range auto` measured to choose it.
type Observed = (
    HashMap<String, Observer>,
    Option<String>,
    Method,
    Option<RangeChoice>,
);

/// [`observe_all`], and with `--activation-range auto` the choice of estimator: the observers
/// first see all but the held-out samples, the estimators are scored on those, and then the
/// observers see them too.
fn observe_choosing(
    first: Option<FirstRound>,
    at: (&Graph, &Plan),
    opts: &Options,
    settings: &mut Settings,
    data: &mut Dataset,
    progress: &mut dyn FnMut(usize),
) -> Result<Observed> {
    let total = data.len;
    let held_out = match settings.choose_activation_range {
        true => crate::range_choice::held_out(total),
        false => 0,
    };
    if held_out == 0 {
        let (observers, one) = observe_all(first, at, opts, settings, data, progress)?;
        return Ok((observers, one, settings.activation_method, None));
    }
    let fitting = Options {
        samples: Some(total - held_out),
        ..opts.clone()
    };
    data.truncate(total - held_out);
    let (observers, one) = observe_all(first, at, &fitting, settings, data, progress)?;
    let (observers, (method, choice)) =
        choose_ranges(at, opts, settings, observers, held_out, progress)?;
    Ok((observers, one, method, Some(choice)))
}

/// `--activation-range auto` (crate::range_choice): the estimators scored on the last `held_out`
/// calibration samples with `observers` fitted on the others, then those observers fed the
/// held-out samples too.
fn choose_ranges(
    (graph, plan): (&Graph, &Plan),
    opts: &Options,
    settings: &Settings,
    observers: HashMap<String, Observer>,
    held_out: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<(HashMap<String, Observer>, Chosen)> {
    let mut data = open_data(graph, opts)?;
    let fitted_on = data.len - held_out;
    let probe = Probe::new(
        graph,
        graph,
        samples_from(graph, opts, fitted_on, held_out)?,
    )?;
    let chosen =
        crate::range_choice::choose((graph, plan), &observers, settings, &probe, fitted_on)?;
    data.skip(fitted_on);
    let observers = observe_from(vec![observers], graph, plan, &mut data, settings, progress)?;
    Ok((observers, chosen))
}

/// The float model's statistics per channel of `values` on the calibration data: what high-bias
/// absorption takes where no BatchNorm gives them.
pub fn measured(
    graph: &Graph,
    values: &HashMap<String, i64>,
    opts: &Options,
) -> Result<HashMap<String, crate::channel_stats::ChannelStats>> {
    crate::channel_stats::measure(graph, values, open_data(graph, opts)?)
}

/// SmoothQuant's scales migrated into the weights, when asked (`--smoothquant`).
fn smooth(graph: &mut Graph, opts: &Options) -> Result<Vec<crate::smooth_quant::Smoothed>> {
    let Some(sq) = &opts.settings.smooth_quant else {
        return Ok(Vec::new());
    };
    let mut data = open_data(graph, opts)?;
    let batch = crate::dataset::batch_for(&graph.inputs, opts.settings.batch);
    crate::smooth_quant::smooth(graph, (&mut data, batch), &opts.settings, &opts.exclude, sq)
}

/// Samples each step of the pipeline is scored on (at most the report's).
const STEP_SAMPLES: usize = 16;

/// The samples the pipeline's steps are scored on; None when no step beyond range setting is
/// on, or the report is off.
fn step_samples(graph: &Graph, opts: &Options) -> Result<Option<Vec<Batch>>> {
    let s = &opts.settings;
    let any = s.equalize.is_some()
        || s.adaround.is_some()
        || s.bias_correction.is_some()
        || s.output_weight_ranges.is_some();
    if !any || opts.report_samples == Some(0) {
        return Ok(None);
    }
    let n = STEP_SAMPLES.min(opts.report_samples.unwrap_or(STEP_SAMPLES));
    Ok(Some(first_samples(graph, opts, n)?))
}

/// The score of the model quantized without cross-layer equalization (nor any later step), with
/// min-max weight ranges: the pipeline's first step.
fn score_without_cle(
    path: &Path,
    opts: &Options,
    batches: &[Batch],
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Score> {
    let plain = Options {
        settings: Settings {
            equalize: None,
            adaround: None,
            bias_correction: None,
            target: None,
            weight_method: Method::MinMax,
            ..opts.settings.clone()
        },
        report_samples: Some(0),
        ..opts.clone()
    };
    let c = calibrated(path, &plain, &mut |_, done, total| {
        progress("calibrating without CLE", done, total)
    })?;
    Probe::new(&c.graph, &c.graph, batches.to_vec())?.score(&c.params)
}

/// The quantizers' parameters from `ranges`, with each layer's weight range fitted to its
/// output where the settings ask, and the pipeline's steps up to there when they are scored
/// (on `step_samples`).
fn parameters(
    path: &Path,
    at: (&Graph, &Plan, &Ranges),
    (opts, settings): (&Options, &Settings),
    step_samples: Option<&[Batch]>,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<(Params, Vec<FittedRange>, Vec<StepScore>)> {
    let (graph, plan, ranges) = at;
    let mut params = params(graph, plan, ranges, settings)?;
    let mut steps = match step_samples {
        Some(b) => {
            let mut without_cle = || score_without_cle(path, opts, b, progress);
            crate::recipe::before_rounding(settings, at, b, &mut without_cle)?
        }
        None => Vec::new(),
    };
    let output_ranges = match settings.output_weight_ranges {
        Some(samples) => fit_output_ranges(at, settings, &mut params, (opts, samples), progress)?,
        None => Vec::new(),
    };
    if let (Some(b), false) = (step_samples, output_ranges.is_empty()) {
        steps.push(crate::recipe::fitted_ranges(graph, &params, b)?);
    }
    Ok((params, output_ranges, steps))
}

/// `--weight-range output` (crate::output_ranges): each layer's weight range fitted to its
/// output on `samples` calibration samples, written into `params` with the biases at the
/// fitted scales.
fn fit_output_ranges(
    (graph, plan, ranges): (&Graph, &Plan, &Ranges),
    settings: &Settings,
    params: &mut Params,
    (opts, samples): (&Options, usize),
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Vec<FittedRange>> {
    let mut data = open_data(graph, opts)?;
    data.truncate(samples);
    let inputs = crate::reconstruction::Inputs {
        quantized: true,
        max_columns: crate::output_ranges::MAX_COLUMNS,
    };
    let mut on_layer = |done: usize, total: usize, f: &FittedRange| {
        let line = format!(
            "weight ranges\t{}: loss {:.4} -> {:.4}",
            f.layer, f.loss_minmax, f.loss_fitted
        );
        progress(&line, done, total);
    };
    let fitted =
        crate::output_ranges::fit_ranges(graph, plan, params, data, inputs, &mut on_layer)?;
    *params = params_reusing_weights(graph, plan, ranges, settings, params)?;
    Ok(fitted)
}

/// The parameters after bias correction: the corrected biases' codes, and the weights' from
/// their estimator but where `fitted` to the layers' outputs.
fn corrected(
    (graph, plan, ranges): (&Graph, &Plan, &Ranges),
    settings: &Settings,
    params: &Params,
    fitted: &[FittedRange],
) -> Result<Params> {
    let keep = Params {
        weights: (params.weights.iter())
            .filter(|w| fitted.iter().any(|f| f.weight == w.name))
            .cloned()
            .collect(),
        ..Params::default()
    };
    params_reusing_weights(graph, plan, ranges, settings, &keep)
}

/// The graph whose weights AdaRound learns or whose biases bias correction changes.
struct Rounding<'a> {
    graph: &'a mut Graph,
    plan: &'a Plan,
    params: &'a Params,
    canonical: &'a Report,
}

impl Rounding<'_> {
    /// AdaRound or bias correction, as the settings ask.
    fn run(
        &mut self,
        opts: &Options,
        progress: &mut dyn FnMut(&str, usize, usize),
    ) -> Result<(
        Vec<crate::adaround::Rounded>,
        Vec<crate::bias_correction::Correction>,
    )> {
        let settings = &opts.settings;
        let adaround = match &settings.adaround {
            Some(a) => self.adaround(opts, a, progress)?,
            None => Vec::new(),
        };
        let (graph, plan, params) = (&mut *self.graph, self.plan, self.params);
        let corrections = match settings.bias_correction {
            Some(BiasCorrection::Empirical { samples }) => {
                let mut data = open_data(graph, opts)?;
                data.truncate(samples);
                correct_biases(graph, plan, params, data)?
            }
            Some(BiasCorrection::Analytic { measured_means }) => {
                let stats = &self.canonical.batch_norm_stats;
                let data = open_data(graph, opts)?;
                // The float pass measures the model's inputs too: no pass of the data alone.
                let means = if measured_means {
                    // Nothing to measure where a BatchNorm precedes every layer.
                    match unknown_means(graph, plan, stats) {
                        unknown if unknown.is_empty() => HashMap::new(),
                        unknown => float_means(graph, &unknown, data)?,
                    }
                } else {
                    data_means(graph, data)?
                };
                correct_biases_analytic(graph, plan, params, stats, &means)?
            }
            None => Vec::new(),
        };
        Ok((adaround, corrections))
    }

    /// AdaRound, its layers learned on worker threads while this one shows their progress.
    fn adaround(
        &mut self,
        opts: &Options,
        a: &crate::adaround::Options,
        progress: &mut dyn FnMut(&str, usize, usize),
    ) -> Result<Vec<crate::adaround::Rounded>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let on_layer = move |done: usize, total: usize, r: &crate::adaround::Rounded| {
            let line = format!(
                "AdaRound\t{}: loss {:.4} -> {:.4}",
                r.layer, r.loss_nearest, r.loss_learned
            );
            let _ = tx.send((line, done, total));
        };
        let (graph, plan, params) = (&mut *self.graph, self.plan, self.params);
        std::thread::scope(|s| {
            // Owns the sender: the progress loop ends when AdaRound does.
            let run = s.spawn(move || {
                let mut data = open_data(graph, opts)?;
                data.truncate(a.samples);
                crate::adaround::adaround(graph, plan, params, data, a, &on_layer)
            });
            for (line, done, total) in rx {
                progress(&line, done, total);
            }
            run.join().expect("AdaRound does not panic")
        })
    }
}

/// Every activation given its own bit-width must have its own quantizer.
fn check_activation_bits(graph: &Graph, plan: &Plan, settings: &Settings) -> Result<()> {
    for (value, _) in &settings.activation_bits {
        if plan.activations.contains(value) {
            continue;
        }
        let why = match plan.shared.iter().find(|(v, _)| v == value) {
            Some((_, source)) => format!("it shares the grid of '{source}'; give that one's bits"),
            None => "it is not a quantized activation (`quantize --json` lists them)".into(),
        };
        return Err(crate::error::Error::new(
            &graph.source,
            format!("--activation-bits '{value}': {why}"),
        ));
    }
    Ok(())
}

/// Samples in calibration's first round, one a batch. A constant, not the thread count: a matrix
/// product's rows are not the same bits in a batch of one and in one of several (the GEMM
/// takes another path and another blocking of the sum), so each sample's batch must not depend
/// on the threads for the ranges not to.
const FIRST_ROUND: usize = 2;

/// Types and shapes from one run on the first sample of `data`: nothing is guessed about free
/// dimensions, and control flow takes the data's path. Where observers merge exactly, that run
/// is calibration's first round, beside [`FIRST_ROUND`] − 1 more samples alone (taken from
/// `data`, in parallel where there are threads); else `data` is left as it was.
///
/// A model without a batch axis whose first axis is free ([frames, bins]) fails on the data as
/// read, each frame taken for a sample. Where the whole arrays are small enough and the model
/// runs on them, as `zeropoint run` takes them, they are the data from then on: `data` is
/// replaced, and the options returned hold them.
fn probe(
    graph: &Graph,
    opts: &Options,
    data: &mut Dataset,
) -> Result<(Run, Option<FirstRound>, Option<Options>)> {
    data.check_one_sample()?;
    let failed = match probe_first(graph, opts, data) {
        Ok((seen, first)) => return Ok((seen, first, None)),
        Err(Error::Engine(e)) => e,
        Err(e) => return Err(e),
    };
    let Some(hint) = samples_hint(graph, data) else {
        return Err(Error::Engine(failed));
    };
    if let Some((whole, mut whole_data)) = read_whole(graph, opts) {
        if let Ok((seen, first)) = probe_first(graph, &whole, &mut whole_data) {
            *data = whole_data;
            return Ok((seen, first, Some(whole)));
        }
    }
    let first = opts.data.first().map_or("<memory>", String::as_str);
    Err(Error::at(Path::new(first), hint, failed))
}

/// Why the data was read as whole samples, where it was: by [`Dataset::open`], or by [`probe`]
/// (`by_probe`).
fn whole_sample_reason(by_probe: bool, data: &Dataset) -> Option<String> {
    const MORE: &str =
        "stack samples on a new first axis, or give a folder of files, one a sample, for more";
    if by_probe {
        return Some(format!("one whole sample, as the model fails on the slices of the arrays' first axes taken for samples (it has no batch axis); {MORE}"));
    }
    match (data.whole, data.len) {
        (false, _) => None,
        (true, 1) => Some(format!("one whole sample, as the arrays count different samples along their first axes; {MORE}")),
        (true, n) => Some(format!("{n} whole samples, one a file, as each file's arrays count different samples along their first axes or an input's samples would not lie there")),
    }
}

/// The most bytes of data [`probe`] reads whole to try it as one sample: a long spectrogram
/// (10 minutes of 81 bins at 100 frames a second is 19 MB), not a stack of images whose batch
/// would be one run.
const WHOLE_SAMPLE_BYTES: usize = 32 << 20;

/// `opts` with its data read whole into memory as one sample, and that data opened; None where
/// it is larger than [`WHOLE_SAMPLE_BYTES`] or an array has not its input's declared shape.
fn read_whole(graph: &Graph, opts: &Options) -> Option<(Options, Dataset)> {
    let (specs, arrays) = (&opts.data, opts.arrays.clone());
    let inputs = &graph.inputs;
    let arrays = Dataset::read_whole(specs, arrays, inputs, &opts.preprocess, WHOLE_SAMPLE_BYTES)
        .ok()
        .flatten()?;
    let whole = Options {
        data: Vec::new(),
        arrays,
        ..opts.clone()
    };
    let data = open_data(graph, &whole).ok()?;
    Some((whole, data))
}

/// The data of `specs` for `graph`, read as calibration reads it ([`probe`]): where the model
/// fails on the first sample taken along a free first axis ([frames, bins] taken for frames)
/// but runs on the whole arrays, the whole arrays, one sample. For commands that run the model
/// on data without calibrating it (`eval`); true where it read the data so.
pub fn data_as_calibration_reads(
    graph: &Graph,
    specs: &[String],
    prep: &Preprocess,
) -> Result<(Dataset, bool)> {
    let data = Dataset::open(specs, &graph.inputs, prep)?;
    if samples_hint(graph, &data).is_none() {
        return Ok((data, false));
    }
    let unit = crate::dataset::unit_batch(&graph.inputs);
    let first = Dataset::open(specs, &graph.inputs, prep)?.next_batch(unit)?;
    if probe_on(graph, first.unwrap_or_default()).is_ok() {
        return Ok((data, false));
    }
    let inputs = &graph.inputs;
    let arrays = Dataset::read_whole(specs, Vec::new(), inputs, prep, WHOLE_SAMPLE_BYTES)?;
    let Some(arrays) = arrays else {
        return Ok((data, false));
    };
    let mut whole = Dataset::from_arrays(arrays.clone(), inputs)?;
    let runs = probe_on(graph, whole.next_batch(1)?.unwrap_or_default()).is_ok();
    match runs {
        true => Ok((Dataset::from_arrays(arrays, inputs)?, true)),
        false => Ok((data, false)),
    }
}

/// Where the model fails on the first sample and the samples were taken along a free first axis
/// of the inputs, what the data was read as and how to give whole samples instead: a model
/// without a batch axis ([frames, bins]) took each frame for a sample.
fn samples_hint(graph: &Graph, data: &Dataset) -> Option<String> {
    let shapes = data.sample_shapes();
    let free_first = |i: &ValueInfo| matches!(i.shape.as_deref(), Some([Dim::Sym(_), ..]));
    let input = graph
        .inputs
        .iter()
        .find(|i| free_first(i))
        .filter(|_| !data.stacked())?;
    // A sample's shape, less the batch axis of one it has there.
    let sample = shapes.get(&input.name)?.get(1..)?;
    let whole = std::iter::once(data.len).chain(sample.iter().copied());
    let whole: Vec<String> = whole.map(|d| d.to_string()).collect();
    Some(format!(
        "the model fails on the calibration samples as read, each input's first axis taken for samples ('{}': {} samples of {sample:?}); if that axis is not samples (a sequence's frames, a graph's nodes), stack whole samples on a new first axis, e.g. [N, {}]",
        input.name,
        data.len,
        whole.join(", ")
    ))
}

fn probe_first(
    graph: &Graph,
    opts: &Options,
    data: &mut Dataset,
) -> Result<(Run, Option<FirstRound>)> {
    let unit = crate::dataset::unit_batch(&graph.inputs);
    let watched = merges_exactly(&opts.settings)
        .then(|| Plan::new(graph, guessed_types(graph), opts.choices()).ok())
        .flatten();
    let Some(watched) = watched else {
        let one = open_data(graph, opts)?.next_batch(unit)?;
        return Ok((probe_on(graph, one.unwrap_or_default())?, None));
    };
    let mut batches = next_batches(data, unit, FIRST_ROUND)?;
    if batches.is_empty() {
        batches.push(Batch::default());
    }
    let (seen, first) = FirstRound::run(graph, &watched.activations, batches, &opts.settings)?;
    Ok((seen, Some(first)))
}

/// Calibration after [`probe`] ([`observe_rest`]), and again one sample at a time where a batch
/// of several samples fails: the probe ran one, and a model whose free batch dimension takes only
/// one (a Reshape to a constant shape inside) observes the same values so (observers do not
/// depend on the batching). An error of the data fails again there, on its own sample. Returns
/// the observers and, when it went one at a time, why.
fn observe_all(
    first: Option<FirstRound>,
    at: (&Graph, &Plan),
    opts: &Options,
    settings: &mut Settings,
    data: &mut Dataset,
    progress: &mut dyn FnMut(usize),
) -> Result<(HashMap<String, Observer>, Option<String>)> {
    let unit = crate::dataset::unit_batch(&at.0.inputs);
    match observe_rest(first, at, (opts, settings), data, progress) {
        Err(e) if settings.batch > unit => {
            let e = crate::analysis::model::with_causes(&e);
            settings.batch = unit;
            let observers = observe(at.0, at.1, &mut open_data(at.0, opts)?, settings, progress)?;
            Ok((
                observers,
                Some(format!("batches of several samples failed ({e})")),
            ))
        }
        observed => Ok((observed?, None)),
    }
}

/// Calibration after [`probe`]: from `first`'s observers on through the rest of `data`; through
/// all of `data` where the first round was not run (it took nothing from `data` then), and from
/// the first sample again, with the data reopened, where its observers do not cover `plan`.
fn observe_rest(
    first: Option<FirstRound>,
    (graph, plan): (&Graph, &Plan),
    (opts, settings): (&Options, &Settings),
    data: &mut Dataset,
    progress: &mut dyn FnMut(usize),
) -> Result<HashMap<String, Observer>> {
    match first.map(|f| f.observers_for(plan)) {
        None => observe(graph, plan, data, settings, progress),
        Some(Some(first)) => observe_from(first, graph, plan, data, settings, progress),
        Some(None) => observe(
            graph,
            plan,
            &mut open_data(graph, opts)?,
            settings,
            progress,
        ),
    }
}

/// The element types a plan can be made from before any run: the initializers' and declared
/// inputs' own, float32 for every other value. What a node computes in another type is left
/// unobserved by the calibration round made from it.
fn guessed_types(graph: &Graph) -> HashMap<String, DType> {
    // Not `flattened()`: it copies every initializer's data.
    fn guess(graph: &Graph, types: &mut HashMap<String, DType>) {
        for input in &graph.inputs {
            types.insert(input.name.clone(), input.dtype.unwrap_or(DType::F32));
        }
        for t in &graph.initializers {
            types.insert(t.name.clone(), t.dtype);
        }
        for n in &graph.nodes {
            types.extend(n.outputs.iter().map(|o| (o.clone(), DType::F32)));
            n.subgraphs.iter().for_each(|(_, g)| guess(g, types));
        }
    }
    let mut types = HashMap::new();
    guess(graph, &mut types);
    types
}

/// Replaces the declared shape of each graph output that the model does not produce on the data
/// (exporters write stale ones, like a rank-2 `[1, seqlen]` for a rank-3 output) by unknown
/// dimensions of the right rank: ONNX Runtime refuses a model whose declared shapes contradict
/// its own inference.
fn drop_contradicted_output_shapes(graph: &mut Graph, seen: &Run) {
    for output in &mut graph.outputs {
        let observed = seen.get(&output.name).map(|(_, dims)| dims);
        if let (Some(declared), Some(dims)) = (&output.shape, observed) {
            if !dims_fit(declared, dims) {
                output.shape = Some(vec![Dim::Sym("?".into()); dims.len()]);
            }
        }
    }
}

/// The first `n` calibration samples (fewer if the data has fewer), one per batch (or, for a
/// model that fixes its batch, one such batch each).
pub fn first_samples(graph: &Graph, opts: &Options, n: usize) -> Result<Vec<Batch>> {
    samples_from(graph, opts, 0, n)
}

/// [`first_samples`], from sample `start` on (none where the data has no more).
pub fn samples_from(graph: &Graph, opts: &Options, start: usize, n: usize) -> Result<Vec<Batch>> {
    let mut data = open_data(graph, opts)?;
    let unit = crate::dataset::unit_batch(&graph.inputs);
    let n = n.min(data.len.saturating_sub(start));
    data.skip(start);
    next_batches(&mut data, unit, n.div_ceil(unit))
}

/// The calibration data of `opts`, for `graph`'s inputs.
pub fn open_data(graph: &Graph, opts: &Options) -> Result<Dataset> {
    let arrays = opts.arrays.clone();
    let mut data =
        Dataset::from_specs_or_arrays(&opts.data, arrays, &graph.inputs, &opts.preprocess)?
            .at_most(opts.samples);
    let first = opts.data.first().map_or("<memory>", String::as_str);
    data.whole_batches(crate::dataset::unit_batch(&graph.inputs), Path::new(first))?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::Options;

    fn asking(report_samples: Option<usize>) -> Options {
        Options {
            settings: crate::settings::Settings::default(),
            exclude: vec![],
            data: vec![],
            arrays: vec![],
            preprocess: Default::default(),
            samples: None,
            report_samples,
        }
    }

    #[test]
    fn the_report_takes_a_quarter_of_the_samples_4_to_8() {
        let default = asking(None);
        let counts: Vec<usize> = [0, 1, 3, 4, 8, 16, 17, 28, 29, 33, 64, 1000]
            .iter()
            .map(|&n| default.report_count(n))
            .collect();
        assert_eq!(counts, [0, 1, 3, 4, 4, 4, 5, 7, 8, 8, 8, 8]);
        let asked = asking(Some(7));
        assert_eq!((asked.report_count(5), asked.report_count(50)), (5, 7));
    }
}
