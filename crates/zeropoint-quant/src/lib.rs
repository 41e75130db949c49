//! # zeropoint-quant
//!
//! Quantization of whole models. [`ptq::quantize`] is post-training quantization as a list of
//! stages, each a function of its own module that takes the previous stage's output:
//!
//! | stage | module | from → to |
//! |---|---|---|
//! | prepare | [`prepare`] | model file → canonical graph at the export's opset |
//! | place | [`placement`] | graph → [`Plan`](placement::Plan): which values get which quantizer |
//! | calibrate | [`calibrate`] | graph, plan, [`dataset`] → each activation's clipping range |
//! | parameters | [`params`] | ranges, weights → scales, zero-points, int32 biases |
//! | export | [`qdq_export`] | graph, parameters → the QDQ ONNX model |
//! | report | [`report`] | the [`simulate`]d model against float, value by value |
//!
//! Around them: [`settings`] (schemes, presets), [`evaluate`] (a float model against its
//! quantized version, in zeropoint's executor or in ONNX Runtime through [`ort_runtime`]),
//! [`encodings`] (the parameters as JSON), [`summary`] (what `zeropoint quantize` reports) and
//! [`analysis`] (what `explain`, `inspect` and `graph` show). docs/architecture.md follows a run through these modules.
//!
//! ```no_run
//! use std::path::Path;
//! use zeropoint_quant::ptq::{quantize, Options};
//! use zeropoint_quant::settings::{Preset, Settings};
//!
//! let opts = Options {
//!     settings: Settings::preset(Preset::W8A8),
//!     exclude: vec![],
//!     data: vec!["calibration.npy".into()],
//!     arrays: vec![],
//!     preprocess: Default::default(),
//!     samples: Some(256),
//!     report_samples: None,
//! };
//! let outcome = quantize(Path::new("model.onnx"), &opts, &mut |_, _, _| {})?;
//! zeropoint_onnx::model::save(&outcome.model, Path::new("model.int8.onnx"))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod adaround;
pub mod analysis;
pub mod analyze;
pub mod bias_correction;
pub mod calibrate;
pub mod calibrated;
pub mod channel_scaling;
pub mod channel_stats;
pub mod compare;
pub mod dataset;
pub mod dynamic;
pub mod encodings;
pub mod equalize;
pub mod error;
pub mod evaluate;
pub mod idx;
pub mod images;
pub mod kernel_pairs;
pub mod layer_inputs;
pub mod linear_layers;
pub mod mixed_precision;
pub mod ort_runtime;
pub mod output_ranges;
pub mod pair_limit;
pub mod params;
pub mod paused_runs;
pub mod placement;
pub mod prepare;
pub mod ptq;
pub mod qat;
pub mod qdq_export;
pub mod range_choice;
pub mod recipe;
pub mod reconstruction;
pub mod report;
pub mod sensitivity;
pub mod settings;
pub mod simulate;
pub mod smooth_quant;
pub mod summary;
pub mod weight_only;

pub use error::{Error, Result};
