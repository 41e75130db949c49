//! The values some layers read, streamed over calibration data: the float model runs batch by
//! batch (as many batches at once as the thread pool has threads), each wanted value is reduced
//! to a summary per batch, and the summaries are merged in batch order, so that what is
//! collected does not depend on the thread count. GPTQ's Hessians and SmoothQuant's channel
//! statistics are gathered this way.

use std::collections::HashMap;

use rayon::prelude::*;
use zeropoint_engine::Executor;
use zeropoint_graph::Graph;
use zeropoint_onnx::{DType, RawTensor};

use crate::compare::next_batches;
use crate::dataset::Dataset;
use crate::error::Result;

/// Reduces one batch's value (its f32s, and K) to a summary, or says what is wrong with it.
pub type Summary<'a, T> = dyn Fn(&[f32], usize) -> std::result::Result<T, String> + Sync + 'a;

/// Runs `graph` over `data` in batches of `batch` samples; `summary(x, k)` reduces each batch's
/// value of every wanted input (name → K, the layer's input width) and `merge(name, summary)`
/// takes the summaries in batch order. `progress(done, total)` follows the samples.
///
/// The run takes the graph's float32 weights instead of a copy of them and gives them back
/// after (the same bits): a decoder's weights were held twice during this pass, the largest
/// part of GPTQ's peak memory.
pub fn summarize<T: Send>(
    graph: &mut Graph,
    wanted: &HashMap<&str, usize>,
    (data, batch): (&mut Dataset, usize),
    summary: &Summary<'_, T>,
    merge: &mut dyn FnMut(String, T),
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let until = nodes_needed(graph, wanted);
    run_owning(graph, |exec| {
        let workers = rayon::current_num_threads().max(1);
        let len = data.len;
        loop {
            let batches = next_batches(data, batch.max(1), workers)?;
            if batches.is_empty() {
                return Ok(());
            }
            let parts: Vec<Vec<(String, T)>> = batches
                .into_par_iter()
                .map(|b| {
                    let mut part = Vec::new();
                    let mut hook = |name: &str, v: zeropoint_engine::Value| {
                        if let Some(&k) = wanted.get(name) {
                            part.push((name.to_string(), v.with_f32s(|x| summary(x, k))??));
                        }
                        Ok(v)
                    };
                    let mut run = exec.begin(b, &mut hook)?;
                    for _ in 0..until {
                        exec.step(&mut run, &mut hook)?;
                    }
                    Ok(part)
                })
                .collect::<Result<_>>()?;
            for (name, s) in parts.into_iter().flatten() {
                merge(name, s);
            }
            progress(data.consumed(), len);
        }
    })?
}

/// `run(exec)` with an executor that takes `graph`'s float32 weights instead of a copy of
/// them, and gives them back after, whatever `run` returned (the same bits; other
/// initializers stay as they are).
fn run_owning<R>(graph: &mut Graph, run: impl FnOnce(&Executor) -> R) -> Result<R> {
    let others: HashMap<String, RawTensor> = (graph.initializers.iter())
        .filter(|t| t.dtype != DType::F32)
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    let shell = Graph {
        source: graph.source.clone(),
        opset: graph.opset,
        inputs: Vec::new(),
        outputs: Vec::new(),
        initializers: Vec::new(),
        nodes: Vec::new(),
    };
    let exec = Executor::owning(std::mem::replace(graph, shell))?;
    let result = run(&exec);
    let (mut back, values) = exec.into_parts()?;
    back.initializers = Vec::with_capacity(values.len());
    for (name, v) in values {
        back.initializers.push(match others.get(&name) {
            Some(t) => t.clone(),
            None => v.to_raw(&name)?,
        });
    }
    *graph = back;
    Ok(result)
}

/// How many of the graph's nodes (in order) a run needs to compute every wanted value: up to
/// the last node that writes one. A decoder's Hessians then stop before its LM head, whose
/// logits (vocabulary × tokens × batch) are the largest value it computes. All nodes where a
/// wanted value is not written by a node of the graph itself (a Loop body's).
fn nodes_needed(graph: &Graph, wanted: &HashMap<&str, usize>) -> usize {
    let mut last = 0;
    let mut found = 0;
    for (i, node) in graph.nodes.iter().enumerate() {
        let writes = node
            .outputs
            .iter()
            .filter(|o| wanted.contains_key(o.as_str()));
        let n = writes.count();
        if n > 0 {
            last = i + 1;
            found += n;
        }
    }
    let fed = |name: &&str| {
        graph.inputs.iter().any(|v| v.name == *name) || graph.initializer(name).is_some()
    };
    let unwritten = wanted.keys().filter(|n| !fed(n)).count();
    if found < unwritten {
        graph.nodes.len()
    } else {
        last
    }
}

/// Whether `x` is rows of `k` finite values, as a layer with `k` inputs reads them; what is
/// wrong, if not (the executor names the value).
pub fn check_rows(x: &[f32], k: usize) -> std::result::Result<(), String> {
    if k == 0 || !x.len().is_multiple_of(k) {
        return Err(format!(
            "has {} values, not rows of the weight's {k} inputs",
            x.len()
        ));
    }
    match x.iter().find(|v| !v.is_finite()) {
        Some(bad) => Err(format!("has a non-finite value ({bad}): check the data")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use zeropoint_graph::{Dim, Node, Op, ValueInfo};
    use zeropoint_onnx::{DType, RawTensor};

    use super::*;

    /// x → MatMul(w1) → h → MatMul(w2) → y, where w2 does not fit h: a run to the end fails.
    fn graph() -> Graph {
        let value = |name: &str, shape: Option<Vec<Dim>>| ValueInfo {
            name: name.into(),
            dtype: Some(DType::F32),
            shape,
        };
        let ones = |name: &str, shape: &[usize]| {
            RawTensor::from_f32s(name, shape, &vec![1.0; shape.iter().product()])
        };
        Graph {
            source: "two_layers.onnx".into(),
            opset: 13,
            inputs: vec![value("x", Some(vec![Dim::Sym("N".into()), Dim::Fixed(2)]))],
            outputs: vec![value("y", None)],
            initializers: vec![
                ones("w1", &[2, 3]),
                ones("w2", &[5, 4]),
                // Read by no node: given back by the run as they were, bit for bit.
                RawTensor::from_f32s("odd", &[4], &[-0.0, f32::NAN, 1e-45, f32::INFINITY]),
                RawTensor::from_i64s("ints", &[2], &[-1, i64::MAX], DType::I64),
            ],
            nodes: vec![
                Node::new("first", Op::MatMul, &["x", "w1"], &["h"]),
                Node::new("second", Op::MatMul, &["h", "w2"], &["y"]),
            ],
        }
    }

    /// Only the nodes up to the last wanted value run: the broken second layer is never reached
    /// when its input is what is wanted, and is when its output is. Either way the graph comes
    /// back as it was, its initializers bit for bit (the run held them).
    #[test]
    fn a_run_stops_after_the_last_wanted_value() {
        let g = graph();
        let x = RawTensor::from_f32s("x", &[4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let summarize_at = |name: &str, k: usize| {
            let mut data =
                Dataset::from_arrays(vec![("x".into(), Arc::new(x.clone()))], &g.inputs)?;
            let wanted = HashMap::from([(name, k)]);
            let mut sums = Vec::new();
            let sum = |v: &[f32], _: usize| Ok(v.iter().sum::<f32>());
            let mut run = g.clone();
            let result = summarize(
                &mut run,
                &wanted,
                (&mut data, 2),
                &sum,
                &mut |_, s| sums.push(s),
                &mut |_, _| {},
            );
            assert!(run == g, "the graph changed");
            result.map(|()| sums)
        };
        assert_eq!(nodes_needed(&g, &HashMap::from([("h", 3)])), 1);
        // h = x·1: each row of x summed, three times; two batches of two samples.
        assert_eq!(summarize_at("h", 3).unwrap(), vec![3.0 * 10.0, 3.0 * 26.0]);
        let e = summarize_at("y", 4).expect_err("the second MatMul cannot run");
        assert!(e.to_string().contains("second"), "{e}");
    }
}
