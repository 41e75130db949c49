//! The values some layers read, streamed over calibration data: the float model runs batch by
//! batch (as many batches at once as the thread pool has threads), each wanted value is reduced
//! to a summary per batch, and the summaries are merged in batch order, so that what is
//! collected does not depend on the thread count. GPTQ's Hessians and SmoothQuant's channel
//! statistics are gathered this way.

use std::collections::HashMap;
use std::sync::Mutex;

use rayon::prelude::*;
use zeropoint_engine::exec::with_weights_taken;
use zeropoint_graph::Graph;

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
    merge: &mut (dyn FnMut(String, T) + Send),
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let until = nodes_needed(graph, wanted);
    let merger = Mutex::new(InOrder {
        merge,
        values: HashMap::new(),
    });
    with_weights_taken(graph, |_, exec| {
        let exec = &*exec;
        let workers = rayon::current_num_threads().max(1);
        let len = data.len;
        loop {
            let batches = next_batches(data, batch.max(1), workers)?;
            if batches.is_empty() {
                return Ok(());
            }
            (batches.into_par_iter().enumerate())
                .map(|(i, b)| {
                    let mut hook = |name: &str, v: zeropoint_engine::Value| {
                        if let Some(&k) = wanted.get(name) {
                            let s = v.with_f32s(|x| summary(x, k))??;
                            lock(&merger).add(i, name, s);
                        }
                        Ok(v)
                    };
                    let mut run = exec.begin(b, &mut hook)?;
                    for _ in 0..until {
                        exec.step(&mut run, &mut hook)?;
                    }
                    Ok(())
                })
                .collect::<Result<()>>()?;
            lock(&merger).end_round();
            progress(data.consumed(), len);
        }
    })?
}

fn lock<'a, 'm, T>(m: &'a Mutex<InOrder<'m, T>>) -> std::sync::MutexGuard<'a, InOrder<'m, T>> {
    // A panic while merging is a bug that propagates anyway; the state is not needed after it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Summaries merged in batch order as they come. Held until a round of batches ended, a
/// decoder's were every layer's XᵀX of every batch of the round at once (2.3 GB a batch for a
/// 0.5B model); now a summary waits only while an earlier batch of the round has not yet
/// reached its value. Each value is written once per run.
struct InOrder<'m, T> {
    merge: &'m mut (dyn FnMut(String, T) + Send),
    /// Per value: the round's next batch to merge, and the later batches' summaries waiting.
    values: HashMap<String, (usize, Vec<(usize, T)>)>,
}

impl<T> InOrder<'_, T> {
    fn add(&mut self, batch: usize, name: &str, s: T) {
        let (next, waiting) = self.values.entry(name.to_string()).or_default();
        if batch != *next {
            waiting.push((batch, s));
            return;
        }
        (self.merge)(name.to_string(), s);
        *next += 1;
        while let Some(at) = waiting.iter().position(|(b, _)| b == next) {
            let (_, s) = waiting.swap_remove(at);
            (self.merge)(name.to_string(), s);
            *next += 1;
        }
    }

    /// What still waits (batches that did not write a value an earlier batch skipped, in a
    /// control-flow branch), in batch order.
    fn end_round(&mut self) {
        for (name, (_, mut waiting)) in self.values.drain() {
            waiting.sort_by_key(|(b, _)| *b);
            for (_, s) in waiting {
                (self.merge)(name.clone(), s);
            }
        }
    }
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

    /// Summaries arriving out of batch order are merged in batch order; one that an earlier
    /// batch never wrote (a branch it did not take) is merged when the round ends.
    #[test]
    fn summaries_merge_in_batch_order_whatever_order_they_arrive_in() {
        let mut seen = Vec::new();
        let mut merge = |name: String, s: usize| seen.push((name, s));
        let mut m = InOrder {
            merge: &mut merge,
            values: HashMap::new(),
        };
        m.add(2, "a", 20);
        m.add(1, "a", 10);
        m.add(1, "b", 11);
        m.add(0, "a", 0);
        m.add(2, "b", 21);
        m.end_round();
        m.add(0, "a", 100);
        m.end_round();
        drop(m);
        let of = |v: &str| -> Vec<usize> {
            seen.iter()
                .filter(|(n, _)| n == v)
                .map(|(_, s)| *s)
                .collect()
        };
        assert_eq!(of("a"), [0, 10, 20, 100]);
        assert_eq!(of("b"), [11, 21]);
    }
}
