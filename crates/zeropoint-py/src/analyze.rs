//! `analyze`: the white paper's debugging flow (`zeropoint analyze`) on a model, its report as
//! JSON text for the package's Python side.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use zeropoint_quant::analyze::{analyze as run_analysis, Options};

use crate::errors::quant;
use crate::model::{json_text, ptq_options};

/// The 16-bit check, weights only vs activations only, every quantizer's sensitivity, the worst
/// ones' distributions and measured fixes, for the quantization `options` describe (those of
/// `quantize_model`).
#[pyfunction]
#[pyo3(signature = (model, data, *, samples=32, sensitivity_samples=8, plots=6, suggestions=true, **options))]
#[allow(clippy::too_many_arguments)]
fn analyze(
    py: Python<'_>,
    model: PathBuf,
    data: &Bound<'_, PyAny>,
    samples: usize,
    sensitivity_samples: usize,
    plots: usize,
    suggestions: bool,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<String> {
    let opts = Options {
        ptq: ptq_options(options, data)?,
        samples: samples.max(1),
        sensitivity_samples: sensitivity_samples.max(1),
        plots,
        suggestions,
    };
    let a = py
        .detach(|| run_analysis(&model, &opts, &mut |_, _, _| {}))
        .map_err(|e| quant(&model, e))?;
    json_text(&a)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(analyze, m)?)
}
