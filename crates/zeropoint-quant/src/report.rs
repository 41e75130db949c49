//! The last stage of quantization: how far the simulated quantized model is from the float one,
//! value by value, on a few samples.

use std::collections::HashMap;

use zeropoint_engine::Executor;
use zeropoint_graph::Graph;

use crate::compare::{compare_batch, LayerError, LayerErrors};
use crate::dataset::Dataset;
use crate::error::Result;
use crate::params::Params;
use crate::placement::Plan;
use crate::simulate::Simulation;

/// SQNR of every planned activation and graph output, simulated against float, in graph order.
/// Batches of `batch` samples run one after the other, each on two threads (float and simulated
/// in lockstep, [`compare_batch`]) into its own accumulators, merged in batch order: the report
/// is the same for any thread count.
///
/// `(reference, graph)`: the float graph, and the one simulated (the same, or with AdaRound's
/// weights or corrected biases).
pub fn layer_errors(
    (reference, graph): (&Graph, &Graph),
    plan: &Plan,
    params: &Params,
    data: &mut Dataset,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<LayerError>> {
    let float = Executor::new(reference)?;
    // The float initializers are shared only where they are the simulated graph's own.
    let sim = if std::ptr::eq(reference, graph) {
        Simulation::sharing(graph, params, float.initializer_values())?
    } else {
        Simulation::new(graph, params)?
    };
    let names = reported_values(graph, plan);
    let measure =
        |b| compare_batch(&float, &|b, hook| sim.run_with(b, hook), &names, b).map(|c| c.layers);
    let mut layers = LayerErrors::new(names.clone());
    while let Some(b) = data.next_batch(batch)? {
        layers.merge(&measure(b)?);
        progress(data.consumed(), data.len);
    }
    Ok(layers.into_list())
}

/// The planned activations (own grid or shared) and the graph outputs, in graph order.
fn reported_values(graph: &Graph, plan: &Plan) -> Vec<String> {
    let mut names: Vec<String> = plan.activations.clone();
    names.extend(plan.shared.iter().map(|(v, _)| v.clone()));
    names.extend(graph.outputs.iter().map(|o| o.name.clone()));
    let order: HashMap<String, usize> = graph
        .all_nodes()
        .into_iter()
        .flat_map(|n| n.outputs.iter().cloned())
        .enumerate()
        .map(|(i, o)| (o, i + 1))
        .collect();
    names.sort_by_key(|n| order.get(n).copied().unwrap_or(0));
    names.dedup();
    names
}
