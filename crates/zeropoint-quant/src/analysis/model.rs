//! What a model is made of (`zeropoint graph`): inputs and outputs with their inferred shapes,
//! operator counts and whether zeropoint runs each, parameters, and what canonicalization does
//! (constants folded, BatchNorms folded, fused groups).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use zeropoint_engine::{exec, infer, Engine};
use zeropoint_graph::canonicalize::canonicalize;
use zeropoint_graph::pattern::fused_groups;
use zeropoint_graph::{Dim, Graph, ValueInfo, ValueType};

use crate::error::Result;

/// A model described.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    /// The model's name (its path, as the user gave it).
    pub model: String,
    pub opset: i64,
    /// Nodes, those of subgraphs (If branches, Loop/Scan bodies) included.
    pub nodes: usize,
    /// Elements of float initializers, subgraphs' included.
    pub parameters: usize,
    pub inputs: Vec<ValueSummary>,
    pub outputs: Vec<ValueSummary>,
    /// By operator type, alphabetically.
    pub operators: Vec<OperatorCount>,
    /// The nodes zeropoint cannot run, as "node 'x' (Op)".
    pub unsupported_nodes: Vec<String>,
    /// Why the shapes could not be inferred (a free dimension the probe sizes do not fit: fix it
    /// with `--shape`); None when they were.
    pub shape_error: Option<String>,
    /// What canonicalization did; None when the graph has unsupported operators.
    pub canonicalization: Option<Canonicalization>,
    /// Of the canonical graph when there is one.
    pub fused_groups: Vec<Group>,
}

/// A graph input or output.
#[derive(Debug, Clone, Serialize)]
pub struct ValueSummary {
    pub name: String,
    /// Inferred, else declared.
    pub dtype: Option<&'static str>,
    pub declared_shape: Option<Vec<String>>,
    pub shape: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OperatorCount {
    pub op: String,
    pub count: usize,
    pub supported: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Canonicalization {
    pub folded_constants: usize,
    pub folded_batch_norms: Vec<FoldedBatchNorm>,
    pub folded_bias_adds: usize,
    pub folded_scale_muls: usize,
    /// Per-channel Mul (and Add) pairs written as depthwise Convs.
    pub scale_shift_convs: usize,
    /// Attention score scales folded into the query projection.
    pub folded_attention_scales: usize,
    /// Loop-carried constants made initializers of their loop's body.
    pub hoisted_loop_constants: usize,
    /// Recurrent layers whose zero initial state (built explicitly) was dropped.
    pub dropped_zero_states: usize,
    /// HardSwishes written out as four operators, made HardSigmoid and Mul.
    pub fused_hard_swishes: usize,
    /// GELUs written out as five operators after a layer, made one Gelu (opset 20).
    pub fused_gelus: usize,
    /// Adds and Subs of a 0-d zero, Muls and Divs by a 0-d one, Casts to their input's type,
    /// removed.
    pub dropped_neutral_ops: usize,
    /// Layout Transposes cancelled against their inverse after moving past element-wise ops.
    pub cancelled_transposes: usize,
    pub removed_nodes: usize,
    pub removed_initializers: usize,
    pub nodes_after: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct FoldedBatchNorm {
    pub batch_norm: String,
    pub into: String,
}

/// A layer and what runtimes fuse into it.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub nodes: Vec<String>,
    pub output: String,
}

/// An error and its causes on one line ("...: node 'If_0' (If): then_branch: ...").
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

/// Describes `graph` (read from the file named `model`), its inputs named in `shapes` taken at
/// those sizes; returns the canonicalized graph too when zeropoint can run the model. Shapes that
/// cannot be inferred are reported, not fatal: the model may still run on its real inputs.
pub fn describe(
    model: &str,
    graph: &Graph,
    shapes: &HashMap<String, Vec<usize>>,
) -> Result<(ModelSummary, Option<Graph>)> {
    let unsupported = exec::unsupported(graph);
    // Shapes and folding need a run; a graph zeropoint cannot run is still described.
    let (types, shape_error, canonical) = if unsupported.is_empty() {
        let (types, shape_error) = match infer::infer(&mut infer::with_input_shapes(graph, shapes))
        {
            Ok(types) => (Some(types), None),
            Err(e) => (None, Some(with_causes(&e))),
        };
        let mut canonical = graph.clone();
        let report = canonicalize(&mut canonical, &Engine)?;
        (types, shape_error, Some((canonical, report)))
    } else {
        (None, None, None)
    };
    let groups = fused_groups(canonical.as_ref().map_or(graph, |(g, _)| g));
    let mut ops: BTreeMap<&str, (usize, bool)> = BTreeMap::new();
    for n in graph.all_nodes() {
        ops.entry(n.op.as_str()).or_insert((0, exec::supports(n))).0 += 1;
    }
    let io = |infos: &[ValueInfo]| -> Vec<ValueSummary> {
        infos
            .iter()
            .map(|i| value_summary(i, types.as_ref().and_then(|t| t.get(&i.name))))
            .collect()
    };
    let summary = ModelSummary {
        model: model.to_string(),
        opset: graph.opset,
        nodes: graph.all_nodes().len(),
        parameters: graph.parameter_count(),
        inputs: io(&graph.inputs),
        outputs: io(&graph.outputs),
        operators: ops
            .into_iter()
            .map(|(op, (count, supported))| OperatorCount {
                op: op.to_string(),
                count,
                supported,
            })
            .collect(),
        unsupported_nodes: unsupported,
        shape_error,
        canonicalization: canonical.as_ref().map(|(g, r)| Canonicalization {
            folded_constants: r.folded_constants,
            folded_batch_norms: r
                .folded_batch_norms
                .iter()
                .map(|(bn, into)| FoldedBatchNorm {
                    batch_norm: bn.clone(),
                    into: into.clone(),
                })
                .collect(),
            folded_bias_adds: r.folded_bias_adds.len(),
            folded_scale_muls: r.folded_scale_muls.len(),
            scale_shift_convs: r.scale_shift_convs.len(),
            folded_attention_scales: r.folded_attention_scales.len(),
            hoisted_loop_constants: r.hoisted_loop_constants,
            dropped_zero_states: r.dropped_zero_states.len(),
            fused_hard_swishes: r.fused_hard_swishes,
            fused_gelus: r.fused_gelus,
            dropped_neutral_ops: r.dropped_neutral_ops.len(),
            cancelled_transposes: r.cancelled_transposes,
            removed_nodes: r.removed_nodes,
            removed_initializers: r.removed_initializers,
            nodes_after: g.all_nodes().len(),
        }),
        fused_groups: groups
            .into_iter()
            .map(|g| Group {
                nodes: g.nodes,
                output: g.output,
            })
            .collect(),
    };
    Ok((summary, canonical.map(|(g, _)| g)))
}

fn value_summary(i: &ValueInfo, inferred: Option<&ValueType>) -> ValueSummary {
    ValueSummary {
        name: i.name.clone(),
        dtype: inferred
            .map(|t| t.dtype.name())
            .or(i.dtype.map(|d| d.name())),
        declared_shape: i.shape.as_ref().map(|s| dims(s)),
        shape: inferred.map(|t| dims(&t.shape)),
    }
}

fn dims(shape: &[Dim]) -> Vec<String> {
    shape.iter().map(Dim::to_string).collect()
}
