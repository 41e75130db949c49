//! Post-training quantization, end to end: load → canonicalize → place quantizers → calibrate
//! (streamed) → parameters → QDQ export, and the simulated model's error per layer against the
//! float model on the calibration data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use zeropoint_core::metrics::Running;

use crate::calibrate::{self, Params, Settings};
use crate::canonicalize::{canonicalize, Report};
use crate::dataset::{Dataset, Preprocess};
use crate::error::FileError;
use crate::evaluate::{compare_batch, next_batches, LayerErrors};
use crate::exec::Executor;
use crate::graph::Graph;
use crate::onnx::ModelProto;
use crate::placement::Plan;
use crate::value::Value;
use crate::{external_data, onnx};

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

/// Everything a quantization run produced.
pub struct Outcome {
    pub model: ModelProto,
    pub canonical: Report,
    pub graph: Graph,
    pub plan: Plan,
    pub params: Params,
    pub calibration_samples: usize,
    /// Per planned activation and per graph output, in graph order: SQNR of the simulated
    /// quantized model against the float one.
    pub sqnr: Vec<(String, Running)>,
    pub seconds: HashMap<&'static str, f64>,
}

/// The per-layer report's samples are cut into this many batches (at most), which run in
/// parallel: enough to keep the threads busy on a few samples, and fixed, so that the report does
/// not depend on the thread count.
const REPORT_BATCHES: usize = 8;

/// Quantizes the model at `path`. `progress(stage, done, total)` reports calibration progress.
pub fn quantize(
    path: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Outcome, FileError> {
    let mut seconds = HashMap::new();
    let t = Instant::now();
    let mut proto = onnx::load(path)?;
    external_data::load_external_data(&mut proto, path)?;
    let mut graph = Graph::from_model(&proto, path)?;
    Executor::new(&graph)?;
    // Move to the opset the export will need now: an opset the model cannot be upgraded to
    // fails before calibration, and the export's own upgrade finds nothing left to do.
    crate::opset::upgrade(
        &mut graph,
        crate::qdq_export::required_opset(&opts.settings),
    )?;
    let canonical = canonicalize(&mut graph)?;
    crate::canonicalize::decompose_hard_swish(&mut graph);
    let plan = Plan::new(&graph, &opts.exclude)?;
    seconds.insert("prepare", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let mut data = open_data(&graph, opts)?;
    let total = data.len;
    let observers = calibrate::observe(&graph, &plan, &mut data, &opts.settings, &mut |done| {
        progress("calibrating", done, total)
    })?;
    let params = calibrate::params(&graph, &plan, &observers, &opts.settings)?;
    seconds.insert("calibrate", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let model = crate::qdq_export::export(&graph, &plan, &params, &proto)?;
    seconds.insert("export", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let sqnr = if opts.report_samples > 0 {
        let mut data = open_data(&graph, opts)?;
        data.truncate(opts.report_samples);
        let batch = data
            .len
            .div_ceil(REPORT_BATCHES)
            .clamp(1, opts.settings.batch);
        layer_sqnr(&graph, &plan, &params, &mut data, batch, &mut |done, n| {
            progress("measuring", done, n)
        })?
    } else {
        Vec::new()
    };
    seconds.insert("measure", t.elapsed().as_secs_f64());
    Ok(Outcome {
        model,
        canonical,
        graph,
        plan,
        params,
        calibration_samples: total,
        sqnr,
        seconds,
    })
}

fn open_data(graph: &Graph, opts: &Options) -> Result<Dataset, FileError> {
    let mut data = Dataset::open(&opts.data, &graph.inputs, &opts.preprocess)?;
    if let Some(n) = opts.samples {
        data.truncate(n);
    }
    Ok(data)
}

/// The simulated quantized model: fake-quantized weights in the graph, activations
/// fake-quantized as they are produced.
pub struct Simulation<'g> {
    exec: Executor<'g>,
    params: &'g Params,
}

impl<'g> Simulation<'g> {
    /// `quantized` is the graph with dequantized weights ([`calibrate::quantized_weights`]).
    pub fn new(quantized: &'g Graph, params: &'g Params) -> Result<Simulation<'g>, FileError> {
        Ok(Simulation {
            exec: Executor::new(quantized)?,
            params,
        })
    }

    /// Runs a batch; `each` sees every value after quantization.
    pub fn run(
        &self,
        batch: HashMap<String, Value>,
        each: &mut dyn FnMut(&str, &Value),
    ) -> Result<Vec<(String, Value)>, FileError> {
        self.run_with(batch, &mut |name, v| {
            each(name, &v);
            Ok(v)
        })
    }

    /// Runs a batch; `hook` gets every value after quantization and returns the value to go on
    /// with (to compare layer by layer with another runtime, feed its values back).
    pub fn run_with(
        &self,
        batch: HashMap<String, Value>,
        hook: &mut dyn FnMut(&str, Value) -> Result<Value, String>,
    ) -> Result<Vec<(String, Value)>, FileError> {
        self.exec.run_with(batch, &mut |name, v| {
            let v = match self.params.activations.get(name) {
                Some(qp) => calibrate::fake_quant_value(v, qp)?,
                None => v,
            };
            hook(name, v)
        })
    }
}

/// SQNR of every planned activation and graph output, simulated against float.
pub fn layer_sqnr(
    graph: &Graph,
    plan: &Plan,
    params: &Params,
    data: &mut Dataset,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<(String, Running)>, FileError> {
    let float = Executor::new(graph)?;
    let qgraph = calibrate::quantized_weights(graph, params)?;
    let sim = Simulation::new(&qgraph, params)?;
    let mut names: Vec<String> = plan.activations.clone();
    names.extend(plan.shared.iter().map(|(v, _)| v.clone()));
    names.extend(graph.outputs.iter().map(|o| o.name.clone()));
    let order: HashMap<String, usize> = graph
        .nodes
        .iter()
        .flat_map(|n| n.outputs.iter().cloned())
        .enumerate()
        .map(|(i, o)| (o, i + 1))
        .collect();
    names.sort_by_key(|n| order.get(n).copied().unwrap_or(0));
    names.dedup();
    // Batches of a fixed size run in parallel, each into its own accumulators, merged in batch
    // order: the report is the same for any thread count.
    let measure = |b| {
        compare_batch(&float, &|b, hook| sim.run_with(b, hook), &names, b)
            .map(|(_, _, layers)| layers)
    };
    let mut layers = LayerErrors::new(names.clone());
    let workers = rayon::current_num_threads().max(1);
    let (mut done, total) = (0, data.len);
    loop {
        let batches = next_batches(data, batch, workers)?;
        if batches.is_empty() {
            break;
        }
        done += batches
            .iter()
            .filter_map(|b| b.values().next())
            .map(|v| v.shape().first().copied().unwrap_or(0))
            .sum::<usize>();
        let parts: Vec<LayerErrors> = batches
            .into_par_iter()
            .map(measure)
            .collect::<Result<_, _>>()?;
        for p in &parts {
            layers.merge(p);
        }
        progress(done, total);
    }
    Ok(layers.into_list())
}

/// The default output path beside the model: `<stem>.<tag>.onnx` (tag "int8", "w4a8", ...).
pub fn default_output(model: &Path, tag: &str) -> PathBuf {
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    model.with_file_name(format!("{stem}.{tag}.onnx"))
}
