//! The summary of a quantization run, as `zeropoint quantize` reports it (a table, or JSON):
//! sizes, what was placed, and each reported value's quantizer and error.

use serde::Serialize;

use crate::ptq::{Outcome, StageSeconds};

/// What a quantization run did, as `zeropoint quantize` reports it (table or JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The model's name, and the output's path.
    pub model: String,
    pub output: String,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub calibration_samples: usize,
    /// Why calibration went one sample at a time where batches were planned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_sample_at_a_time: Option<String>,
    /// Why the data's arrays were read as one whole sample, where they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whole_sample: Option<String>,
    /// The activation range estimator chosen on held-out samples (`--activation-range auto`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_choice: Option<crate::range_choice::RangeChoice>,
    /// The samples each layer's SQNR was measured on (0: no per-layer report).
    pub report_samples: usize,
    pub canonicalization: Canonicalization,
    /// Cross-layer equalization, when asked for (`--cle`).
    pub equalization: Option<crate::equalize::Report>,
    /// SmoothQuant per layer input, when asked for (`--smoothquant`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub smoothing: Vec<crate::smooth_quant::Smoothed>,
    /// Empirical bias correction, when asked for (`--bias-correction`).
    pub bias_corrections: Vec<crate::bias_correction::Correction>,
    /// AdaRound, when asked for (`--adaround`).
    pub adaround: Vec<crate::adaround::Rounded>,
    /// Weight ranges fitted to the layers' outputs, when asked for (`--weight-range output`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub output_ranges: Vec<crate::output_ranges::FittedRange>,
    /// The weights whose paired codes were lowered, when asked for (`--limit-pairs`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limited_pairs: Vec<crate::pair_limit::Limited>,
    /// The output SQNR after each step of the pipeline, when a step beyond range setting ran.
    pub steps: Vec<crate::recipe::StepScore>,
    /// Mixed precision to a target, when asked for (`--target-sqnr`, `--target-agreement`).
    pub mixed_precision: Option<crate::mixed_precision::Report>,
    pub quantizers: Quantizers,
    /// Layers kept float because a Log reads their output (an audio front end's filterbank;
    /// docs/ptq.md).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub float_before_log: Vec<String>,
    /// Layers and Gathers kept float because a weight they read holds an infinity or a NaN.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub float_non_finite: Vec<String>,
    pub layers: Vec<Layer>,
    /// Wall time of the whole run.
    pub seconds: f64,
    pub stage_seconds: StageSeconds,
}

/// What canonicalization folded, and what else preparing the model changed.
#[derive(Debug, Clone, Serialize)]
pub struct Canonicalization {
    pub folded_batch_norms: usize,
    pub folded_constants: usize,
    /// Loop-carried constants made weights of their loop's body.
    pub hoisted_loop_constants: usize,
    /// Float16 and bfloat16 values widened to float32 (a half-precision model computed in
    /// float32 behind its own interface).
    pub half_precision_values: usize,
}

/// How many quantizers of each kind were placed.
#[derive(Debug, Clone, Serialize)]
pub struct Quantizers {
    pub weights: usize,
    pub biases: usize,
    pub activations: usize,
    /// Values that share another value's grid.
    pub shared: usize,
    /// Biases with a channel clipped to int32: too large for the scale s_x·s_w of a per-tensor
    /// weight grid (`params::fit_bias_in_int32`).
    pub clipped_biases: Vec<String>,
}

/// One reported value: its quantizer (if any) and the simulated model's error there.
#[derive(Debug, Clone, Serialize)]
pub struct Layer {
    pub value: String,
    /// SQNR of the simulated model against float; None when infinite (no error).
    pub sqnr_db: Option<f64>,
    /// The calibrated range, for an activation with its own observer.
    pub range: Option<[f32; 2]>,
    pub scale: Option<f32>,
    pub zero_point: Option<i32>,
    /// The bit-width of its quantizer.
    pub bits: Option<u32>,
    /// The value whose grid it shares.
    pub shares: Option<String>,
    /// A graph output (kept float).
    pub output: bool,
}

impl Summary {
    /// The summary of `o`, a run on `model` (its name and size) written to `output` (its path and
    /// size), which took `seconds`.
    pub fn new(o: &Outcome, model: (&str, u64), output: (&str, u64), seconds: f64) -> Summary {
        let kept = crate::placement::kept_float(&o.graph);
        let layers = o
            .layers
            .iter()
            .map(|l| {
                let a = o.params.activation(&l.value);
                Layer {
                    value: l.value.clone(),
                    sqnr_db: Some(l.error.stats().sqnr_db).filter(|d| d.is_finite()),
                    range: a.and_then(|a| a.range).map(|r| [r.0, r.1]),
                    scale: a.map(|a| a.qparams.scale[0]),
                    zero_point: a.map(|a| a.qparams.zero_point[0]),
                    bits: a.map(|a| o.settings.activation_scheme(a.grid_owner()).bits),
                    shares: o
                        .plan
                        .shared
                        .iter()
                        .find(|(v, _)| *v == l.value)
                        .map(|(_, s)| s.clone()),
                    output: o.graph.outputs.iter().any(|g| g.name == l.value),
                }
            })
            .collect();
        Summary {
            model: model.0.to_string(),
            output: output.0.to_string(),
            bytes_before: model.1,
            bytes_after: output.1,
            calibration_samples: o.calibration_samples,
            one_sample_at_a_time: o.one_sample_at_a_time.clone(),
            whole_sample: o.whole_sample.clone(),
            range_choice: o.range_choice.clone(),
            report_samples: o.report_samples,
            canonicalization: Canonicalization {
                folded_batch_norms: o.canonical.folded_batch_norms.len(),
                folded_constants: o.canonical.folded_constants,
                hoisted_loop_constants: o.canonical.hoisted_loop_constants,
                half_precision_values: o.canonical.half_precision_values,
            },
            equalization: o.equalization.clone(),
            smoothing: o.smoothing.clone(),
            bias_corrections: o.bias_corrections.clone(),
            adaround: o.adaround.clone(),
            output_ranges: o.output_ranges.clone(),
            limited_pairs: o.limited_pairs.clone(),
            steps: o.steps.clone(),
            mixed_precision: o.mixed_precision.clone(),
            quantizers: Quantizers {
                weights: o.plan.weights.len(),
                biases: o.params.biases.len(),
                activations: o.plan.activations.len(),
                shared: o.plan.shared.len(),
                clipped_biases: (o.params.biases.iter())
                    .filter(|b| b.codes.iter().any(|&c| c == i32::MIN || c == i32::MAX))
                    .map(|b| b.name.clone())
                    .collect(),
            },
            float_before_log: kept.before_log,
            float_non_finite: kept.non_finite,
            layers,
            seconds,
            stage_seconds: o.seconds,
        }
    }
}
