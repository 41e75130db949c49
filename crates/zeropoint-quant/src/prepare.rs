//! The first stage of quantization: the float model read, checked, made to compute in float32 if
//! it computes in float16 or bfloat16, moved to the opset its export needs and canonicalized, as
//! every later stage assumes it.

use std::collections::HashMap;
use std::path::Path;

use zeropoint_engine::Engine;
use zeropoint_graph::canonicalize::{self, canonicalize};
use zeropoint_graph::{half_precision, opset, Graph};
use zeropoint_onnx::proto::GraphProto;
use zeropoint_onnx::{external_data, model, ModelProto};

use crate::channel_stats::ChannelStats;
use crate::equalize;
use crate::error::{Error, Result};
use crate::qdq_export::required_opset;
use crate::settings::Settings;

/// The float model as quantization takes it.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The model as read, without its initializers (they are in the graph): the export writes
    /// the quantized graph back into it, keeping its metadata and doc strings.
    pub base: ModelProto,
    /// The canonical graph: at the export's opset, constants and BatchNorms folded, HardSwish
    /// decomposed.
    pub graph: Graph,
    /// What canonicalization changed.
    pub canonical: canonicalize::Report,
    /// What cross-layer equalization changed, when the settings ask for it.
    pub equalization: Option<equalize::Report>,
    /// The model's size on disk: its file and its external data files.
    pub stored_bytes: u64,
}

/// Measures the float graph's statistics per channel of the given values (with their channel
/// axes) on calibration data: [`crate::channel_stats::measure`] on the data at hand.
pub type Measure<'a> =
    dyn Fn(&Graph, &HashMap<String, i64>) -> Result<HashMap<String, ChannelStats>> + 'a;

/// Reads the model at `path` and prepares it for quantization with `settings`. An operator
/// zeropoint cannot run, or an opset the model cannot be upgraded to, fails here, before any
/// calibration. Without data, high-bias absorption takes its statistics from BatchNorms only.
pub fn prepare(path: &Path, settings: &Settings) -> Result<Prepared> {
    prepare_measuring(path, settings, None)
}

/// [`prepare`], with the statistics on data of each layer output high-bias absorption applies
/// to from `measure`: c from them where no BatchNorm gives β and γ, and capped by their
/// minimum where one does.
pub fn prepare_measuring(
    path: &Path,
    settings: &Settings,
    measure: Option<&Measure>,
) -> Result<Prepared> {
    let mut base = model::load(path)?;
    let side_files = external_data::load_external_data(&mut base, path)?;
    let stored_bytes = std::fs::metadata(path).map_or(0, |m| m.len()) + side_files;
    // The initializers move into the graph: `base` keeps none, and the weights are held once.
    let mut graph = Graph::from_model_taking(&mut base, path)?;
    let half_precision_values = half_precision::compute_in_float32(&mut graph)?;
    if half_precision_values > 0 {
        // The declared types of the values inside were the half ones.
        if let Some(g) = base.graph.as_mut() {
            clear_value_info(g);
        }
    }
    // First: a model in ONNX Runtime's operator format (QLinearConv) is refused as quantized
    // already, not for operators zeropoint does not run.
    refuse_quantized(&graph)?;
    zeropoint_engine::exec::check_supported(&graph)?;
    opset::upgrade(&mut graph, required_opset(settings), &Engine)?;
    let mut canonical = canonicalize(&mut graph, &Engine)?;
    canonical.half_precision_values = half_precision_values;
    // Before HardSwish is decomposed: equalization names it when it refuses a pair through it.
    let equalization = match settings.equalize {
        Some(opts) => {
            let stats = &mut canonical.batch_norm_stats;
            let sites = equalize::absorption_sites(&graph, opts);
            let measured = match measure {
                Some(measure) if !sites.is_empty() => measure(&graph, &sites)?,
                _ => HashMap::new(),
            };
            Some(equalize::equalize(&mut graph, stats, &measured, opts)?)
        }
        None => None,
    };
    canonicalize::decompose_hard_swish(&mut graph);
    crate::placement::own_biases(&mut graph);
    Ok(Prepared {
        base,
        graph,
        canonical,
        equalization,
        stored_bytes,
    })
}

/// The operators of a model that is quantized already: quantization nodes, integer kernels and
/// ONNX Runtime's block-quantized weights.
const QUANTIZED_OPS: [&str; 10] = [
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "ConvInteger",
    "MatMulInteger",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulNBits",
    "GatherBlockQuantized",
    "DynamicQuantizeLSTM",
];

/// Refuses a model that is quantized already. Its float-looking parts are what the integer
/// kernels compute, not a float model to calibrate: quantizing it again would place nothing or
/// compound the error, and the float original is what to start from.
fn refuse_quantized(graph: &Graph) -> Result<()> {
    let nodes = graph.all_nodes();
    let mut counts: Vec<(&str, usize)> = QUANTIZED_OPS
        .iter()
        .map(|&op| (op, nodes.iter().filter(|n| n.op.as_str() == op).count()))
        .filter(|&(_, n)| n > 0)
        .collect();
    if counts.is_empty() {
        return Ok(());
    }
    counts.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    let first = nodes
        .iter()
        .find(|n| QUANTIZED_OPS.contains(&n.op.as_str()))
        .map_or(String::new(), |n| format!(", first {}", n.label()));
    let list: Vec<String> = counts.iter().map(|(op, n)| format!("{n} {op}")).collect();
    Err(Error::new(
        &graph.source,
        format!(
            "the model is quantized already ({}{first}): quantize its float original",
            list.join(", ")
        ),
    ))
}

/// Drops the declared types of intermediate values of `g` and of its subgraphs.
fn clear_value_info(g: &mut GraphProto) {
    g.value_info.clear();
    for a in g.node.iter_mut().flat_map(|n| n.attribute.iter_mut()) {
        a.g.iter_mut()
            .chain(a.graphs.iter_mut())
            .for_each(clear_value_info);
    }
}
