//! The range each estimator picks for a tensor, and what it costs, side by side
//! (`zeropoint inspect --range`).

use std::path::Path;

use zeropoint_core::observer::{self, Config, Method};
use zeropoint_core::{metrics, QParams, Scheme};
use zeropoint_onnx::Tensor;

use crate::error::{Error, Result};

/// One estimator's verdict on one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeResult {
    pub method: Method,
    pub min: f32,
    pub max: f32,
    pub sqnr_db: f64,
    pub mse: f64,
    /// Fraction of the values outside [min, max].
    pub clipped: f64,
    pub clip_mse: f64,
    pub round_mse: f64,
}

/// Ranges of every estimator for the whole tensor `t` of the file `path` (per-tensor), and their
/// error at `scheme`.
pub fn compare(
    path: &Path,
    t: &Tensor,
    configs: &[Config],
    scheme: &Scheme,
) -> Result<Vec<RangeResult>> {
    let bad = |what: String, e: zeropoint_core::Error| {
        Error::at(path, format!("tensor '{}': {what}", t.name), e)
    };
    configs
        .iter()
        .map(|&config| {
            let n = [t.values.len()];
            let (min, max) = observer::estimate_values(&t.values, &n, scheme, config)
                .map_err(|e| bad(format!("{} range", config.method), e))?[0];
            let params = QParams::from_ranges(scheme, &[(min, max)])
                .map_err(|e| bad("parameters".into(), e))?;
            let (e, split) = metrics::quantization_error(&t.values, &n, &params)
                .map_err(|e| bad("error".into(), e))?;
            Ok(RangeResult {
                method: config.method,
                min,
                max,
                sqnr_db: e.sqnr_db,
                mse: e.mse,
                clipped: split.clipped_fraction(),
                clip_mse: split.clip_mse(),
                round_mse: split.round_mse(),
            })
        })
        .collect()
}
