//! GPTQ in the paper's order (Frantar et al. 2022, arXiv 2210.17323, §4, "Step 3" and its
//! implementation): the layers are quantized one input at a time in graph order, and each
//! layer's Hessian comes from the inputs that the model produces with every layer before it
//! already quantized: each layer is fit on the inputs it will see in the quantized model, where
//! Hessians of the float model fit it on inputs it never sees. (The target is still the layer's
//! float output on those inputs, W·X̃: errors of earlier layers are not compensated.)
//!
//! Every calibration batch's run is paused in memory before the next group of layers (those
//! reading one value: a transformer block's query, key and value projections), and taken on
//! once the group's quantized weights replace the float ones in the executor. The model runs
//! once over the data, as the float pass does; memory holds each batch's live values at the
//! pause (a decoder's residual stream, not its logits).

use std::collections::HashMap;

use rayon::prelude::*;
use zeropoint_engine::exec::Paused;
use zeropoint_engine::{Executor, Value};
use zeropoint_graph::{Graph, Op};

use super::blocks::BlockWeights;
use super::hessian::{gram, Total};
use super::{quantize_once, Layer, Options, Quantized, Site};
use crate::dataset::Dataset;
use crate::error::{Error, Result};

/// Quantizes `sites` (in graph order) with Hessians from the partially quantized model on
/// `data`, `batch` samples per run: the quantized weights by name, the report's layers in the
/// order of `sites`, and AWQ's clipped blocks (none: GPTQ does not clip).
pub fn quantize(
    graph: &Graph,
    sites: &[Site],
    opts: &Options,
    (data, batch): (&mut Dataset, usize),
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Quantized> {
    let mut exec = Executor::new(graph)?;
    let mut runs = Vec::new();
    while let Some(b) = data.next_batch(batch)? {
        runs.push(exec.start(b, &mut |_, v| Ok(v))?);
        progress("calibrating", data.consumed(), data.len);
    }
    let mut quantized = HashMap::new();
    let mut clipped_blocks = [0usize; 2];
    let mut layers: Vec<Option<Layer>> = vec![None; sites.len()];
    for (done, group) in groups(sites).into_iter().enumerate() {
        progress("quantizing", done, sites.len());
        let first = &sites[group[0]];
        // A lookup's rows need no Hessian (they are rounded to nearest).
        let h = if first.op == Op::Gather {
            None
        } else {
            runs = resume(&exec, runs, first.node)?;
            Some(hessian(graph, &runs, &first.input, first.k)?)
        };
        for &i in &group {
            let site = &sites[i];
            let state = (&mut quantized, &mut clipped_blocks);
            let (line, now) = quantize_once(graph, site, opts, h.as_ref(), state)?;
            if now
                && !exec.set_initializer(&site.weight, dequantized(site, &quantized[&site.weight])?)
            {
                return Err(Error::new(
                    &graph.source,
                    format!(
                        "weight '{}' could not be replaced while calibrating",
                        site.weight
                    ),
                ));
            }
            layers[i] = Some(line);
        }
    }
    progress("quantizing", sites.len(), sites.len());
    Ok((
        quantized,
        layers.into_iter().flatten().collect(),
        clipped_blocks,
    ))
}

/// The sites grouped by the value they read, each group in the order of its first node, and the
/// groups in that order.
fn groups(sites: &[Site]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..sites.len()).collect();
    order.sort_by_key(|&i| sites[i].node);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_input: HashMap<&str, usize> = HashMap::new();
    for i in order {
        let s = &sites[i];
        // Lookups read indices: each is its own group.
        let key = (s.op != Op::Gather).then_some(s.input.as_str());
        match key.and_then(|k| by_input.get(k)) {
            Some(&g) => groups[g].push(i),
            None => {
                if let Some(k) = key {
                    by_input.insert(k, groups.len());
                }
                groups.push(vec![i]);
            }
        }
    }
    groups
}

/// Every run taken on to just before node `until`.
fn resume(exec: &Executor, runs: Vec<Paused>, until: usize) -> Result<Vec<Paused>> {
    runs.into_par_iter()
        .map(|p| exec.resume(p, until, &mut |_, v| Ok(v)))
        .collect::<std::result::Result<_, _>>()
        .map_err(Into::into)
}

/// H of `input` (K wide) over the paused runs, added in batch order.
fn hessian(graph: &Graph, runs: &[Paused], input: &str, k: usize) -> Result<Vec<f64>> {
    let missing = || {
        Error::new(
            &graph.source,
            format!("value '{input}' was never computed on the calibration data"),
        )
    };
    let mut total = Total::new(k);
    // A thread's worth of batches at a time: every batch's [K, K] sums at once were the peak
    // (32 × 2.4 MB for a 768-wide input).
    for some in runs.chunks(rayon::current_num_threads().max(1)) {
        let grams: Vec<_> = some
            .par_iter()
            .map(|p| {
                let v = p.values.get(input).ok_or_else(missing)?;
                v.with_f32s(|x| gram(x, k))?
                    .map_err(|m| Error::new(&graph.source, format!("value '{input}' {m}")))
            })
            .collect::<Result<_>>()?;
        grams.into_iter().for_each(|g| total.add(g));
    }
    Ok(total.finish(graph, input)?.full())
}

/// The dequantized weight in the layout the graph stores it in.
fn dequantized(site: &Site, q: &BlockWeights) -> Result<Value> {
    let (k, n) = (site.k, site.n);
    let (data, shape) = if site.transposed {
        // Read in the stored layout directly: an embedding table's [K, N] copy was 37 MB.
        let nk = (0..n * k).into_par_iter().map(|i| q.value(i % k, i / k));
        (nk.collect(), [n, k])
    } else {
        (q.dequantize(), [k, n])
    };
    Ok(Value::from_f32_vec(data, &shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(node: usize, op: Op, input: &str) -> Site {
        crate::weight_only::tests::site_of(node, op, &format!("w{node}"), input)
    }

    #[test]
    fn layers_reading_one_value_are_one_group_in_graph_order() {
        let sites = [
            site(7, Op::MatMul, "h2"),
            site(1, Op::Gather, "ids"),
            site(3, Op::MatMul, "h1"),
            site(5, Op::MatMul, "a"),
            site(4, Op::MatMul, "h1"),
            site(9, Op::Gather, "ids"),
        ];
        assert_eq!(
            groups(&sites),
            [vec![1], vec![2, 4], vec![3], vec![0], vec![5]]
        );
    }
}
