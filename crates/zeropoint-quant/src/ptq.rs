//! Post-training quantization, end to end, as a list of stages, each a function of the one
//! before it (docs/architecture.md walks through them):
//!
//! ```text
//! prepare    model file      → Prepared (canonical graph at the export's opset,   prepare.rs
//!                              equalized with --cle)                            equalize.rs
//! place      graph           → Plan (which values get which quantizer)            placement.rs
//! calibrate  graph, plan     → Ranges (each activation's clipping range)          calibrate.rs
//! parameters ranges, weights → Params (scales, zero-points, int32 biases)         params.rs
//! rounding   graph, params   → AdaRound's weights (--adaround)                    adaround.rs
//!            or the biases corrected (--bias-correction)                        bias_correction.rs
//! report     graph, params   → the simulated model's error per value              report.rs
//! export     graph, params   → the QDQ ModelProto                                 qdq_export.rs
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use zeropoint_graph::canonicalize::Report;
use zeropoint_graph::Graph;
use zeropoint_core::observer::Observer;
use zeropoint_onnx::{DType, ModelProto};

use crate::bias_correction::{correct_biases, correct_biases_analytic};
use crate::calibrate::{observe, ranges, Ranges};
use crate::compare::{next_batches, LayerError};
use crate::dataset::{Dataset, Preprocess};
use crate::error::Result;
use crate::params::{params, Params};
use crate::placement::Plan;
use crate::prepare::{prepare, Prepared};
use crate::sensitivity::Probe;
use crate::qdq_export::export;
use crate::report::layer_errors;
use crate::settings::{BiasCorrection, Settings};
use zeropoint_engine::infer::{dtypes_of, probe_on, Run};
use zeropoint_graph::graph::dims_fit;
use zeropoint_graph::Dim;

/// What `quantize` needs besides the model.
#[derive(Debug, Clone)]
pub struct Options {
    pub settings: Settings,
    /// Node names or operator types kept float.
    pub exclude: Vec<String>,
    /// Calibration data specs (see [`Dataset::open`]).
    pub data: Vec<String>,
    pub preprocess: Preprocess,
    /// Use at most this many calibration samples.
    pub samples: Option<usize>,
    /// Samples used to measure the per-layer error (0: skip).
    pub report_samples: usize,
}

/// Wall time of each stage of a run, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StageSeconds {
    pub prepare: f64,
    pub calibrate: f64,
    pub export: f64,
    pub measure: f64,
}

/// Everything a quantization run produced.
pub struct Outcome {
    /// The QDQ model.
    pub model: ModelProto,
    pub canonical: Report,
    /// What cross-layer equalization changed (`--cle`).
    pub equalization: Option<crate::equalize::Report>,
    /// The biases corrected (`--bias-correction`), in graph order.
    pub bias_corrections: Vec<crate::bias_correction::Correction>,
    /// The layers AdaRounded (`--adaround`), in graph order.
    pub adaround: Vec<crate::adaround::Rounded>,
    /// What mixed precision raised to meet the target (`--target-sqnr`).
    pub mixed_precision: Option<crate::mixed_precision::Report>,
    /// The settings the model was quantized with: the options' own, with the activations mixed
    /// precision raised in `activation_bits`.
    pub settings: Settings,
    /// The canonical float graph the quantizers were placed on.
    pub graph: Graph,
    pub plan: Plan,
    pub params: Params,
    pub calibration_samples: usize,
    /// Per planned activation and per graph output, in graph order: the error of the simulated
    /// quantized model against the float one.
    pub layers: Vec<LayerError>,
    pub seconds: StageSeconds,
}

/// The model calibrated and its quantizers' parameters set (rounding learned or biases
/// corrected, when asked), before anything is measured or exported: what `quantize` exports
/// and `analyze` takes apart.
pub struct Calibrated {
    /// The model as read, without its initializers ([`Prepared::base`]).
    pub base: ModelProto,
    pub canonical: Report,
    pub equalization: Option<crate::equalize::Report>,
    /// The canonical graph, with AdaRound's weights or corrected biases.
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
    pub calibration_samples: usize,
    pub seconds: StageSeconds,
}

/// The per-layer report's samples are cut into this many batches (at most): small batches keep
/// the two lockstep runs' activations small, and the count is fixed, so that the report does not
/// depend on the thread count.
const REPORT_BATCHES: usize = 8;

/// Quantizes the model at `path`. `progress(stage, done, total)` reports calibration progress.
pub fn quantize(
    path: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Outcome> {
    let mut c = calibrated(path, opts, progress)?;
    let mut settings = opts.settings.clone();
    let mixed_precision = match opts.settings.target {
        Some(target) => {
            let t = Instant::now();
            let samples = next_batches(&mut open_data(&c.graph, opts)?, 1, target.samples)?;
            let probe = Probe::new(c.reference(), &c.graph, samples)?;
            let (report, mixed) = crate::mixed_precision::to_target(
                &c,
                &probe,
                &opts.settings,
                &opts.exclude,
                target,
            )?;
            settings = mixed.settings;
            (c.plan, c.params) = (mixed.plan, mixed.params);
            c.seconds.calibrate += t.elapsed().as_secs_f64();
            Some(report)
        }
        None => None,
    };
    let mut seconds = c.seconds;

    // The report runs before the export, so that its executors are gone when the exported
    // model is built: peak memory is the larger of the two, not their sum.
    let t = Instant::now();
    let layers = if opts.report_samples > 0 {
        let mut data = open_data(&c.graph, opts)?;
        data.truncate(opts.report_samples);
        let batch = data
            .len
            .div_ceil(REPORT_BATCHES)
            .clamp(1, opts.settings.batch);
        let graphs = (c.reference(), &c.graph);
        layer_errors(graphs, &c.plan, &c.params, &mut data, batch, &mut |done, n| {
            progress("measuring", done, n)
        })?
    } else {
        Vec::new()
    };
    seconds.measure = t.elapsed().as_secs_f64();
    c.float = None;
    let t = Instant::now();
    let model = export(&c.graph, &c.plan, &c.params, &c.base)?;
    seconds.export = t.elapsed().as_secs_f64();

    Ok(Outcome {
        model,
        canonical: c.canonical,
        equalization: c.equalization,
        bias_corrections: c.bias_corrections,
        adaround: c.adaround,
        mixed_precision,
        settings,
        graph: c.graph,
        plan: c.plan,
        params: c.params,
        calibration_samples: c.calibration_samples,
        layers,
        seconds,
    })
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
    } = prepare(path, &opts.settings)?;
    // Types and shapes from one run on the first sample: nothing is guessed about free
    // dimensions, and control flow takes the data's path.
    let mut data = open_data(&graph, opts)?;
    data.check_one_sample()?;
    let first = open_data(&graph, opts)?.next_batch(1)?.unwrap_or_default();
    let seen = probe_on(&graph, first)?;
    drop_contradicted_output_shapes(&mut graph, &seen);
    let sizes = seen
        .iter()
        .map(|(name, (_, dims))| (name.clone(), dims.iter().product()))
        .collect();
    let types = dtypes_of(&graph, seen);
    let plan = Plan::new(&graph, types.clone(), &opts.exclude)?;
    check_activation_bits(&graph, &plan, &opts.settings)?;
    seconds.prepare = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let total = data.len;
    let settings = &opts.settings;
    let observers = observe(&graph, &plan, &mut data, settings, &mut |done| {
        progress("calibrating", done, total)
    })?;
    let ranges = ranges(&graph, &plan, &observers, settings)?;
    let mut params = params(&graph, &plan, &ranges, settings)?;
    let changes_weights = settings.adaround.is_some() || settings.bias_correction.is_some();
    let float = changes_weights.then(|| graph.clone());
    let adaround = match &settings.adaround {
        Some(a) => {
            let one_each = next_batches(&mut open_data(&graph, opts)?, 1, a.samples)?;
            crate::adaround::adaround(&mut graph, &plan, &params, one_each, a)?
        }
        None => Vec::new(),
    };
    let bias_corrections = match settings.bias_correction {
        Some(BiasCorrection::Empirical { samples }) => {
            let one_each = next_batches(&mut open_data(&graph, opts)?, 1, samples)?;
            correct_biases(&mut graph, &plan, &params, one_each)?
        }
        Some(BiasCorrection::Analytic) => {
            let stats = &canonical.batch_norm_stats;
            correct_biases_analytic(&mut graph, &plan, &params, stats)?
        }
        None => Vec::new(),
    };
    if !bias_corrections.is_empty() {
        params = crate::params::params(&graph, &plan, &ranges, settings)?;
    }
    seconds.calibrate = t.elapsed().as_secs_f64();
    Ok(Calibrated {
        base,
        canonical,
        equalization,
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
        calibration_samples: total,
        seconds,
    })
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

/// The calibration data of `opts`, for `graph`'s inputs.
pub fn open_data(graph: &Graph, opts: &Options) -> Result<Dataset> {
    let mut data = Dataset::open(&opts.data, &graph.inputs, &opts.preprocess)?;
    if let Some(n) = opts.samples {
        data.truncate(n);
    }
    Ok(data)
}

/// The default output path beside the model: `<stem>.<tag>.onnx` (tag "int8", "w4a8", ...).
pub fn default_output(model: &Path, tag: &str) -> PathBuf {
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    model.with_file_name(format!("{stem}.{tag}.onnx"))
}
