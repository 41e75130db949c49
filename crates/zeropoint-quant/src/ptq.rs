//! Post-training quantization, end to end, as a list of stages, each a function of the one
//! before it (docs/architecture.md walks through them):
//!
//! ```text
//! prepare    model file      → Prepared (canonical graph at the export's opset,   prepare.rs
//!                              equalized with --cle)                            equalize.rs
//! smooth     graph, data     → SmoothQuant's channel scales moved into weights    smooth_quant.rs
//!                              (--smoothquant)
//! place      graph           → Plan (which values get which quantizer)            placement.rs
//! calibrate  graph, plan     → Ranges (each activation's clipping range)          calibrate.rs
//! parameters ranges, weights → Params (scales, zero-points, int32 biases)         params.rs
//!            fitted to the layers' outputs (--weight-range output)            output_ranges.rs
//! rounding   graph, params   → AdaRound's weights (--adaround)                    adaround.rs
//!            or the biases corrected (--bias-correction)                        bias_correction.rs
//! report     graph, params   → the simulated model's error per value              report.rs
//! export     graph, params   → the QDQ ModelProto                                 qdq_export.rs
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use zeropoint_graph::canonicalize::Report;
use zeropoint_graph::Graph;
use zeropoint_onnx::ModelProto;

use crate::compare::LayerError;
use crate::dataset::unit_batch;
use crate::error::Result;
use crate::params::Params;
use crate::placement::Plan;
use crate::qdq_export::export;
use crate::recipe::StepScore;
use crate::report::layer_errors;
use crate::sensitivity::Probe;
use crate::settings::Settings;

use crate::calibrated::first_samples;
pub use crate::calibrated::{calibrated, open_data, Calibrated, Options, StageSeconds};

/// Everything a quantization run produced.
pub struct Outcome {
    /// The QDQ model.
    pub model: ModelProto,
    /// The float model's size on disk, side files included.
    pub stored_bytes: u64,
    pub canonical: Report,
    /// What cross-layer equalization changed (`--cle`).
    pub equalization: Option<crate::equalize::Report>,
    /// What SmoothQuant did (`--smoothquant`), per layer input.
    pub smoothing: Vec<crate::smooth_quant::Smoothed>,
    /// The biases corrected (`--bias-correction`), in graph order.
    pub bias_corrections: Vec<crate::bias_correction::Correction>,
    /// The layers AdaRounded (`--adaround`), in graph order.
    pub adaround: Vec<crate::adaround::Rounded>,
    /// The weight ranges fitted to the layers' outputs (`--weight-range output`), in graph order.
    pub output_ranges: Vec<crate::output_ranges::FittedRange>,
    /// The weights whose paired codes were lowered (`--limit-pairs`).
    pub limited_pairs: Vec<crate::pair_limit::Limited>,
    /// The output SQNR after each step of the pipeline (`--recipe standard` and its switches).
    pub steps: Vec<StepScore>,
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
    /// Why calibration went one sample at a time where batches were planned (None when
    /// batches ran).
    pub one_sample_at_a_time: Option<String>,
    /// Why the data was read as one whole sample, where it was
    /// ([`crate::calibrated::Calibrated::whole_sample`]).
    pub whole_sample: Option<String>,
    /// The activation range estimator chosen on held-out samples (`--activation-range auto`).
    pub range_choice: Option<crate::range_choice::RangeChoice>,
    /// The samples `layers` was measured on (0: no report).
    pub report_samples: usize,
    /// Per planned activation and per graph output, in graph order: the error of the simulated
    /// quantized model against the float one.
    pub layers: Vec<LayerError>,
    pub seconds: StageSeconds,
}

/// The per-layer report's samples are cut into this many batches (at most): small batches keep
/// the two side-by-side runs' activations small, and the count is fixed, so that the report does not
/// depend on the thread count.
const REPORT_BATCHES: usize = 8;

/// Quantizes the model at `path`. `progress(stage, done, total)` reports calibration progress.
pub fn quantize(
    path: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Outcome> {
    let mut c = calibrated(path, opts, progress)?;
    let opts = &c.options.clone();
    let mut settings = opts.settings.clone();
    let mixed_precision = match opts.settings.target {
        Some(target) => {
            let t = Instant::now();
            let samples = first_samples(&c.graph, opts, target.samples)?;
            let probe = Probe::new(c.reference(), &c.graph, samples)?;
            let known = std::collections::HashMap::new();
            let (report, mixed) = crate::mixed_precision::to_target(
                &c,
                &probe,
                (&opts.settings, &opts.exclude),
                target,
                &known,
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
    let (report_samples, layers) = if opts.report_samples != Some(0) {
        let mut data = open_data(&c.graph, opts)?;
        data.truncate(opts.report_count(data.len));
        let batch = (data.len.div_ceil(REPORT_BATCHES)).clamp(unit_batch(&c.graph.inputs), c.batch);
        let graphs = (c.reference(), &c.graph);
        // Announced before its executors are built: the caller may release memory between
        // stages (the CLI returns what calibration freed, see zeropoint-cli's main.rs).
        progress("measuring", 0, data.len);
        let layers = layer_errors(
            graphs,
            &c.plan,
            &c.params,
            &mut data,
            batch,
            &mut |done, n| progress("measuring", done, n),
        )?;
        (data.len, layers)
    } else {
        (0, Vec::new())
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
        smoothing: c.smoothing,
        bias_corrections: c.bias_corrections,
        adaround: c.adaround,
        output_ranges: c.output_ranges,
        limited_pairs: c.limited_pairs,
        steps: c.steps,
        mixed_precision,
        settings,
        graph: c.graph,
        plan: c.plan,
        params: c.params,
        calibration_samples: c.calibration_samples,
        one_sample_at_a_time: c.one_sample_at_a_time.clone(),
        whole_sample: c.whole_sample.clone(),
        range_choice: c.range_choice.clone(),
        report_samples,
        layers,
        seconds,
        stored_bytes: c.stored_bytes,
    })
}

/// The default output path beside the model: `<stem>.<tag>.onnx` (tag "int8", "w4a8", ...).
pub fn default_output(model: &Path, tag: &str) -> PathBuf {
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    model.with_file_name(format!("{stem}.{tag}.onnx"))
}
