//! The last stage of quantization: how far the simulated quantized model is from the float one,
//! value by value, on a few samples.

use std::collections::HashMap;

use rayon::prelude::*;
use zeropoint_engine::{Executor, Value};
use zeropoint_graph::Graph;

use crate::compare::{next_batches, Batch, LayerError, LayerErrors, References};
use crate::dataset::Dataset;
use crate::error::Result;
use crate::params::Params;
use crate::placement::Plan;
use crate::simulate::Simulation;

/// SQNR of every planned activation and graph output, simulated against float, in graph order.
/// Each thread takes a batch of `batch` samples through both models side by side
/// ([`side_by_side`]) into accumulators of the batch's own, merged in batch order: the report is
/// the same for any thread count.
///
/// `(reference, graph)`: the float graph, and the one simulated (the same nodes, with AdaRound's
/// weights or corrected biases where those changed it).
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
    let workers = rayon::current_num_threads().max(1);
    let mut layers = LayerErrors::new(names.clone());
    loop {
        let batches = next_batches(data, batch, workers)?;
        if batches.is_empty() {
            break;
        }
        let measured: Vec<LayerErrors> = batches
            .into_par_iter()
            .map(|b| side_by_side(&float, &sim, &names, b))
            .collect::<Result<_>>()?;
        for m in &measured {
            layers.merge(m);
        }
        progress(data.consumed(), data.len);
    }
    Ok(layers.into_list())
}

/// One batch through the float model and its simulation on this thread, node by node: each
/// value of `names` is measured as soon as both runs have it, so memory holds one node's
/// reference values at a time (the report of a 416×416 detector held 330 MB when the float
/// run went first), and neither run waits on another thread.
fn side_by_side(
    float: &Executor,
    sim: &Simulation,
    names: &[String],
    b: Batch,
) -> Result<LayerErrors> {
    let mut layers = LayerErrors::new(names.to_vec());
    // The float values of the node just run.
    let mut references = References::new(names);
    let measure = |layers: &mut LayerErrors, references: &mut References, name: &str, v: Value| {
        if let Some(r) = references.take(name) {
            layers.measure(name, &r, &v)?;
        }
        Ok(v)
    };
    let mut f = float.begin(b.clone(), &mut |n, v| Ok(references.hold(n, v)))?;
    let mut s = sim.begin(b, &mut |n, v| measure(&mut layers, &mut references, n, v))?;
    references.clear();
    while float.step(&mut f, &mut |n, v| Ok(references.hold(n, v)))? {
        sim.step(&mut s, &mut |n, v| {
            measure(&mut layers, &mut references, n, v)
        })?;
        // What the simulated run did not produce (the other branch of an If) is not compared.
        references.clear();
    }
    Ok(layers)
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
