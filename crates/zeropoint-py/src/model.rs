//! Models: run an ONNX model, quantize it (zeropoint's PTQ, calibrated on files or on arrays),
//! compare it with its quantized version, and quantize a GGUF language model as llama-quantize
//! does. Reports cross as JSON text that the package's Python side turns into dataclasses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use zeropoint_core::observer::Method;
use zeropoint_engine::{Executor, Value};
use zeropoint_graph::Graph;
use zeropoint_quant::dataset::{read_labels, Arrays, Dataset, Preprocess};
use zeropoint_quant::evaluate::Evaluation;
use zeropoint_quant::ptq::{self, Options};
use zeropoint_quant::settings::{
    check_pair_limit, parse_scheme, reduced_range, BiasCorrection, Preset, Settings,
};
use zeropoint_quant::summary::Summary;

use crate::array::{raw_tensor, to_numpy};
use crate::errors::{chain, quant, raise, Kind};
use crate::observer::parse_method;

/// Runs the float (or QDQ) model on `inputs` (name → array) and returns every graph output.
#[pyfunction]
fn run<'py>(
    py: Python<'py>,
    model: PathBuf,
    inputs: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut raw = Vec::new();
    for (name, array) in inputs.iter() {
        let name: String = name.extract()?;
        raw.push(raw_tensor(&name, &array)?);
    }
    let outputs = py
        .detach(|| -> Result<Vec<_>, zeropoint_engine::Error> {
            let exec = Executor::owning(Graph::load(&model)?)?;
            let feeds = raw
                .iter()
                .map(|t| Ok((t.name.clone(), Value::from_raw(t)?)))
                .collect::<Result<HashMap<_, _>, zeropoint_engine::Error>>()?;
            exec.run(feeds)?
                .into_iter()
                .map(|(name, v)| v.to_raw(&name))
                .collect()
        })
        .map_err(|e| raise(Kind::Model, format!("{}: {}", model.display(), chain(&e))))?;
    let out = PyDict::new(py);
    for t in &outputs {
        out.set_item(&t.name, to_numpy(py, t)?)?;
    }
    Ok(out)
}

/// Every node of the model as (name, operator type), in graph order (names made unique as
/// zeropoint makes them: what `exclude` takes).
#[pyfunction]
fn graph_nodes(py: Python<'_>, model: PathBuf) -> PyResult<Vec<(String, String)>> {
    let graph = py
        .detach(|| Graph::load(&model))
        .map_err(|e| raise(Kind::Model, chain(&e)))?;
    Ok(graph
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.op.to_string()))
        .collect())
}

/// Calibration data: file specs (a path or a list of them, as `--calib` takes) or arrays (a dict
/// of one batch-first array per model input).
fn data_source(data: &Bound<'_, PyAny>) -> PyResult<(Vec<String>, Arrays)> {
    if let Ok(d) = data.cast::<PyDict>() {
        let mut arrays = Vec::new();
        for (name, array) in d.iter() {
            let name: String = name.extract()?;
            arrays.push((name.clone(), Arc::new(raw_tensor(&name, &array)?)));
        }
        if arrays.is_empty() {
            return Err(raise(Kind::Data, "the calibration dict holds no arrays"));
        }
        return Ok((Vec::new(), arrays));
    }
    if data.is_instance_of::<PyString>() || data.hasattr("__fspath__")? {
        return Ok((vec![path_text(data)?], Vec::new()));
    }
    let specs = data
        .try_iter()
        .map_err(|_| {
            raise(
                Kind::Data,
                "data must be a path, a list of paths or a dict of arrays by input name",
            )
        })?
        .map(|item| path_text(&item?))
        .collect::<PyResult<Vec<_>>>()?;
    if specs.is_empty() {
        return Err(raise(Kind::Data, "no calibration files given"));
    }
    Ok((specs, Vec::new()))
}

/// Pixel files' (idx, images) preprocessing: `(x / 255 − mean[c]) / std[c]`.
pub fn preprocess(mean: Vec<f32>, std: Vec<f32>) -> PyResult<Preprocess> {
    if mean.is_empty() || std.is_empty() {
        return Err(raise(Kind::Data, "mean and std need at least one value"));
    }
    if std.iter().any(|&s| s == 0.0 || !s.is_finite()) || mean.iter().any(|m| !m.is_finite()) {
        return Err(raise(
            Kind::Data,
            "std must be finite and nonzero, mean finite",
        ));
    }
    Ok(Preprocess {
        mean,
        std,
        ..Preprocess::default()
    })
}

fn path_text(p: &Bound<'_, PyAny>) -> PyResult<String> {
    let path: PathBuf = p.extract()?;
    Ok(path.to_string_lossy().into_owned())
}

/// The settings of `quantize_model`'s keywords, checked as the CLI checks its flags.
#[allow(clippy::too_many_arguments)]
fn settings(
    preset: &str,
    weights: Option<&str>,
    activations: Option<&str>,
    weight_range: Option<&str>,
    activation_range: Method,
    batch: usize,
    cle: bool,
    bias_correction: Option<&str>,
    adaround: Option<usize>,
) -> PyResult<Settings> {
    let scheme_error = |m: String| raise(Kind::Scheme, m);
    let p = Preset::parse(preset).ok_or_else(|| {
        let names: Vec<_> = Preset::ALL.iter().map(|p| p.name()).collect();
        scheme_error(format!(
            "unknown preset '{preset}' (expected {})",
            names.join(", ")
        ))
    })?;
    let mut s = Settings::preset(p);
    if let Some(w) = weights {
        s.weights = parse_scheme(w, true).map_err(scheme_error)?;
    }
    if activations == Some("float") {
        s.float_activations = true;
    } else if let Some(a) = activations {
        s.activations = parse_scheme(a, false).map_err(scheme_error)?;
        if s.activations.granularity != zeropoint_core::Granularity::PerTensor {
            return Err(scheme_error("activations are quantized per tensor".into()));
        }
    }
    match weight_range {
        // Fitted to the layers' outputs from min-max, as `--weight-range output`.
        Some("output") => {
            s.weight_method = Method::MinMax;
            s.output_weight_ranges = Some(zeropoint_quant::settings::OUTPUT_RANGE_SAMPLES);
        }
        Some(r) => s.weight_method = parse_method(r, None)?,
        None => {}
    }
    s.activation_method = activation_range;
    if batch == 0 {
        return Err(scheme_error("batch must be at least 1".into()));
    }
    s.batch = batch;
    s.equalize = cle.then_some(zeropoint_quant::equalize::Options {
        relu6_as_relu: false,
        absorb_high_bias: true,
    });
    s.bias_correction = match bias_correction {
        None => None,
        Some("empirical") => Some(BiasCorrection::Empirical { samples: 16 }),
        Some("analytic") => Some(BiasCorrection::Analytic {
            measured_means: false,
        }),
        Some("analytic-means") => Some(BiasCorrection::Analytic {
            measured_means: true,
        }),
        Some(other) => {
            return Err(scheme_error(format!(
                "bias_correction '{other}' is not 'empirical', 'analytic' or 'analytic-means'"
            )))
        }
    };
    if adaround.is_some() && s.bias_correction.is_some() {
        return Err(scheme_error(
            "adaround and bias_correction do not go together: AdaRound learns the rounding that bias correction would compensate".into(),
        ));
    }
    s.adaround = match adaround {
        Some(0) => return Err(scheme_error("adaround needs at least 1 iteration".into())),
        Some(iterations) => Some(zeropoint_quant::adaround::Options {
            iterations,
            ..Default::default()
        }),
        None => None,
    };
    Ok(s)
}

/// Whether the option `name`, one of two words, is `yes` (else `no`).
fn one_of(name: &str, value: &str, yes: &str, no: &str) -> PyResult<bool> {
    match value {
        v if v == yes => Ok(true),
        v if v == no => Ok(false),
        other => Err(raise(
            Kind::Scheme,
            format!("{name} '{other}' is not '{yes}' or '{no}'"),
        )),
    }
}

/// The samples AdaRound and bias correction fit on, and AdaRound's input model, loss and
/// settling.
fn sampling(
    s: &mut Settings,
    adaround_samples: usize,
    (adaround_inputs, adaround_loss, adaround_settle): (&str, &str, bool),
    (bias_correction_samples, weight_range_samples): (usize, usize),
) -> PyResult<()> {
    let scheme_error = |m: String| raise(Kind::Scheme, m);
    if adaround_samples == 0 || bias_correction_samples == 0 || weight_range_samples == 0 {
        return Err(scheme_error(
            "adaround_samples, bias_correction_samples and weight_range_samples must be at least 1"
                .into(),
        ));
    }
    if let Some(samples) = s.output_weight_ranges.as_mut() {
        *samples = weight_range_samples;
    }
    let quantized_inputs = one_of(
        "adaround_inputs",
        adaround_inputs,
        "quantized",
        "weights-only",
    )?;
    let through_activation = one_of("adaround_loss", adaround_loss, "activation", "linear")?;
    if let Some(a) = s.adaround.as_mut() {
        a.samples = adaround_samples;
        a.quantized_inputs = quantized_inputs;
        a.through_activation = through_activation;
        a.settle = adaround_settle;
    }
    if let Some(BiasCorrection::Empirical { samples }) = s.bias_correction.as_mut() {
        *samples = bias_correction_samples;
    }
    Ok(())
}

/// Never over the input, never into a missing folder.
pub fn check_output(model: &Path, output: &Path, kind: Kind) -> PyResult<()> {
    match zeropoint_onnx::atomic::output_problem(model, output) {
        Some(m) => Err(raise(kind, format!("{}: {m}", output.display()))),
        None => Ok(()),
    }
}

/// Takes `key` out of the keyword options, converted.
fn take<'py, T>(kw: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<T>>
where
    T: pyo3::conversion::FromPyObjectOwned<'py>,
{
    let Some(v) = kw.get_item(key)? else {
        return Ok(None);
    };
    kw.del_item(key)?;
    if v.is_none() {
        return Ok(None);
    }
    let value: PyResult<T> = v.extract::<T>().map_err(Into::into);
    value
        .map(Some)
        .map_err(|e| raise(Kind::Scheme, format!("option {key}: {}", e.value(kw.py()))))
}

/// PTQ's options from `quantize_model`'s keywords (those of `zeropoint quantize`), checked as
/// the CLI checks its flags; a keyword it does not know is an error.
pub fn ptq_options(kw: Option<&Bound<'_, PyDict>>, data: &Bound<'_, PyAny>) -> PyResult<Options> {
    let py = data.py();
    let kw = match kw {
        Some(k) => k.copy()?,
        None => PyDict::new(py),
    };
    let preset: String = take(&kw, "preset")?.unwrap_or_else(|| "w8a8".into());
    let weights: Option<String> = take(&kw, "weights")?;
    let activations: Option<String> = take(&kw, "activations")?;
    let weight_range: Option<String> = take(&kw, "weight_range")?;
    let activation_range: String = take(&kw, "activation_range")?.unwrap_or_else(|| "mse".into());
    let range_options: Option<Bound<'_, PyDict>> = take(&kw, "range_options")?;
    let batch = take(&kw, "batch")?.unwrap_or(32);
    let cle = take(&kw, "cle")?.unwrap_or(false);
    let bias_correction: Option<String> = take(&kw, "bias_correction")?;
    let adaround: Option<usize> = take(&kw, "adaround")?;
    let adaround_samples: usize = take(&kw, "adaround_samples")?.unwrap_or(16);
    let adaround_inputs: String =
        take(&kw, "adaround_inputs")?.unwrap_or_else(|| "quantized".into());
    let adaround_loss: String = take(&kw, "adaround_loss")?.unwrap_or_else(|| "linear".into());
    let adaround_settle = take(&kw, "adaround_settle")?.unwrap_or(true);
    let bias_correction_samples: usize = take(&kw, "bias_correction_samples")?.unwrap_or(16);
    let weight_range_samples: usize = take(&kw, "weight_range_samples")?
        .unwrap_or(zeropoint_quant::settings::OUTPUT_RANGE_SAMPLES);
    let reduce_range = take(&kw, "reduce_range")?.unwrap_or(false);
    let limit_pairs = take(&kw, "limit_pairs")?.unwrap_or(false);
    let quantize_logits = take(&kw, "quantize_logits")?.unwrap_or(false);
    // "auto": MSE observers, whose histograms answer every estimator chosen among.
    let auto = activation_range.eq_ignore_ascii_case("auto");
    let observed = if auto {
        "mse"
    } else {
        activation_range.as_str()
    };
    let mut settings = settings(
        &preset,
        weights.as_deref(),
        activations.as_deref(),
        weight_range.as_deref(),
        parse_method(observed, range_options.as_ref())?,
        batch,
        cle,
        bias_correction.as_deref(),
        adaround,
    )?;
    let scheme_error = |m: String| raise(Kind::Scheme, m);
    sampling(
        &mut settings,
        adaround_samples,
        (&adaround_inputs, &adaround_loss, adaround_settle),
        (bias_correction_samples, weight_range_samples),
    )?;
    if reduce_range && limit_pairs {
        return Err(scheme_error(
            "reduce_range and limit_pairs do not go together: both keep ONNX Runtime's int8 kernels from overflowing".into(),
        ));
    }
    if reduce_range {
        settings.weights = reduced_range(settings.weights).map_err(scheme_error)?;
    }
    if limit_pairs && settings.output_weight_ranges.is_some() {
        return Err(scheme_error(
            "weight_range='output' does not go with limit_pairs: the fitted ranges do not keep the pair limit".into(),
        ));
    }
    if limit_pairs {
        check_pair_limit(&settings.weights).map_err(scheme_error)?;
        settings.limit_pairs = true;
    }
    settings.quantize_logits = quantize_logits;
    settings.choose_activation_range = auto;
    let preprocess = preprocess(
        take(&kw, "mean")?.unwrap_or_else(|| vec![0.0]),
        take(&kw, "std")?.unwrap_or_else(|| vec![1.0]),
    )?;
    let exclude = take(&kw, "exclude")?.unwrap_or_default();
    let samples = take(&kw, "samples")?;
    let report_samples = take(&kw, "report_samples")?;
    if let Some((key, _)) = kw.iter().next() {
        return Err(raise(Kind::Scheme, format!("unknown option '{key}'")));
    }
    let (specs, arrays) = data_source(data)?;
    Ok(Options {
        settings,
        exclude,
        data: specs,
        arrays,
        preprocess,
        samples,
        report_samples,
    })
}

/// Post-training quantization of the ONNX model at `model` to a QDQ model at `output`,
/// calibrated on `data`, with `zeropoint quantize`'s options as keywords (see the package's
/// `quantize_model`); returns the report (`zeropoint quantize --json`'s) as JSON text.
#[pyfunction]
#[pyo3(signature = (model, data, output, **options))]
fn quantize_model(
    py: Python<'_>,
    model: PathBuf,
    data: &Bound<'_, PyAny>,
    output: PathBuf,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<String> {
    check_output(&model, &output, Kind::Model)?;
    let opts = ptq_options(options, data)?;
    let summary = py.detach(|| -> Result<Summary, zeropoint_quant::Error> {
        let start = std::time::Instant::now();
        let mut outcome = ptq::quantize(&model, &opts, &mut |_, _, _| {})?;
        let written =
            zeropoint_onnx::model::save_owned(std::mem::take(&mut outcome.model), &output)?;
        Ok(Summary::new(
            &outcome,
            (&model.display().to_string(), outcome.stored_bytes),
            (&output.display().to_string(), written),
            start.elapsed().as_secs_f64(),
        ))
    });
    let summary = summary.map_err(|e| quant(&model, e))?;
    json_text(&summary)
}

/// A report as JSON text.
pub fn json_text(report: &impl serde::Serialize) -> PyResult<String> {
    serde_json::to_string(report).map_err(|e| raise(Kind::Model, e.to_string()))
}

/// Both models on the same data, in zeropoint's executor: accuracy (with labels), argmax
/// agreement, output SQNR and cosine, and SQNR per layer; as JSON text.
#[pyfunction]
#[pyo3(signature = (float_model, quantized_model, data, *, labels=None, samples=None, batch=64,
                    mean=vec![0.0], std=vec![1.0]))]
#[allow(clippy::too_many_arguments)]
fn evaluate(
    py: Python<'_>,
    float_model: PathBuf,
    quantized_model: PathBuf,
    data: &Bound<'_, PyAny>,
    labels: Option<&Bound<'_, PyAny>>,
    samples: Option<usize>,
    batch: usize,
    mean: Vec<f32>,
    std: Vec<f32>,
) -> PyResult<String> {
    let prep = preprocess(mean, std)?;
    let (specs, arrays) = data_source(data)?;
    let labels: Option<Vec<i64>> = match labels {
        None => None,
        Some(l) if l.is_instance_of::<PyString>() || l.hasattr("__fspath__")? => {
            let path: PathBuf = l.extract()?;
            Some(read_labels(&path).map_err(|e| quant(&float_model, e))?)
        }
        Some(l) => Some(
            py.import("numpy")?
                .call_method1("asarray", (l, "int64"))?
                .call_method0("ravel")?
                .call_method0("tolist")?
                .extract()?,
        ),
    };
    let e = py.detach(|| -> Result<Evaluation, zeropoint_quant::Error> {
        let (f, q) = (Graph::load(&float_model)?, Graph::load(&quantized_model)?);
        let mut ds =
            Dataset::from_specs_or_arrays(&specs, arrays, &f.inputs, &prep)?.at_most(samples);
        let labels = labels.as_deref();
        zeropoint_quant::evaluate::evaluate(
            f,
            q,
            &mut ds,
            labels,
            batch.max(1),
            None,
            &mut |_, _| {},
        )
    });
    let e = e.map_err(|e| quant(&float_model, e))?;
    Ok(evaluation_json(&e).to_string())
}

fn evaluation_json(e: &Evaluation) -> serde_json::Value {
    let frac = |n: usize| n as f64 / e.samples.max(1) as f64;
    let pair = |p: Option<(usize, usize)>| p.map(|(f, q)| [frac(f), frac(q)]);
    serde_json::json!({
        "samples": e.samples,
        "output": e.output,
        "top1": pair(e.top1),
        "top5": pair(e.top5),
        "agreement": frac(e.agree),
        "output_sqnr_db": finite(e.output_sqnr.stats().sqnr_db),
        "cosine_mean": e.cosine_mean,
        "cosine_min": e.cosine_min,
        "layers": e.layers.iter().map(|l| (l.value.clone(), finite(l.error.stats().sqnr_db))).collect::<Vec<_>>(),
    })
}

/// JSON has no infinity: an exact match (SQNR +inf) crosses as a string the Python side reads.
fn finite(v: f64) -> serde_json::Value {
    if v.is_finite() {
        v.into()
    } else {
        v.to_string().into()
    }
}

/// A float GGUF file (or a Hugging Face Llama checkpoint folder) to llama.cpp's `type`
/// ("Q4_K_M", "Q8_0", ...), byte-identical to llama-quantize; with `imatrix`, importance-
/// weighted; with `calib` (a text file), GPTQ (with its act-order unless `act_order=False`; AWQ
/// with `awq=True`, its clipping search unless `awq_clip=False`) in the same formats.
/// Returns the output's tensor types as a list of (name, input type, output type).
#[pyfunction]
#[pyo3(signature = (input, output, type_="Q4_K_M", *, imatrix=None, pure=false, calib=None,
                    awq=false, awq_clip=true, method="gptq", act_order=None,
                    calib_chunks=32, calib_ctx=None))]
#[allow(clippy::too_many_arguments)]
fn gguf(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    type_: &str,
    imatrix: Option<PathBuf>,
    pure: bool,
    calib: Option<PathBuf>,
    awq: bool,
    awq_clip: bool,
    method: &str,
    act_order: Option<bool>,
    calib_chunks: usize,
    calib_ctx: Option<usize>,
) -> PyResult<Vec<(String, String, String)>> {
    use zeropoint_gguf::{hf, imatrix::Imatrix, preset, quantize};
    check_output(&input, &output, Kind::Gguf)?;
    let gguf_error = |m: String| raise(Kind::Gguf, m);
    let preset = preset::Preset::from_name(type_).ok_or_else(|| {
        gguf_error(format!(
            "unknown type '{type_}': choose one of {}",
            preset::Preset::names().join(", ")
        ))
    })?;
    let gptq = match method {
        "gptq" => true,
        "rtn" => false,
        other => {
            return Err(gguf_error(format!(
                "method '{other}' is not 'gptq' or 'rtn'"
            )))
        }
    };
    if calib.is_some() && calib_chunks == 0 {
        return Err(gguf_error("calib_chunks must be at least 1".into()));
    }
    if act_order.is_some() && !(gptq && calib.is_some()) {
        return Err(gguf_error(
            "act_order is GPTQ's: it needs calib and method='gptq'".into(),
        ));
    }
    let plan = py.detach(|| -> Result<quantize::Plan, String> {
        let fail = |e: &dyn std::error::Error| chain(e);
        let imatrix = match &imatrix {
            Some(p) => Some((
                Imatrix::read(p).map_err(|e| fail(&e))?,
                p.to_string_lossy().into_owned(),
            )),
            None => None,
        };
        let checkpoint = hf::Options {
            tokenizer_pre: None,
        };
        let source = quantize::open_input(&input, &checkpoint).map_err(|e| fail(&e))?;
        let calibration = match &calib {
            Some(path) => {
                let mut c = quantize::Calibration::from_file(
                    source.header(),
                    path,
                    calib_ctx,
                    calib_chunks,
                    0.01,
                )?;
                c.gptq = gptq;
                c.act_order = act_order.unwrap_or(true);
                c.awq = awq;
                c.clip = awq_clip;
                Some(c)
            }
            None => None,
        };
        let opts = quantize::Options {
            calibration,
            preset,
            imatrix,
            pure,
            allow_requantize: false,
        };
        quantize::quantize(source.as_ref(), &output, &opts, |_, _| {}, |_| {}).map_err(|e| fail(&e))
    });
    let plan = plan.map_err(gguf_error)?;
    Ok(plan
        .tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.from.name().to_string(),
                t.to.name().to_string(),
            )
        })
        .collect())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(graph_nodes, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_model, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(gguf, m)?)?;
    Ok(())
}
