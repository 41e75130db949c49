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

use std::borrow::Cow;
use std::collections::HashMap;

use rayon::prelude::*;
use zeropoint_engine::exec::{with_weights_taken, Paused};
use zeropoint_engine::{Executor, Value};
use zeropoint_graph::{Graph, Op};

use super::blocks::BlockWeights;
use super::hessian::{gram, Total};
use super::{quantize_once, Layer, Options, Quantized, Site};
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::linear_layers::in_kn_layout;

/// Quantizes `sites` (in graph order) with Hessians from the partially quantized model on
/// `data`, `batch` samples per run: the quantized weights by name, the report's layers in the
/// order of `sites`, and AWQ's clipped blocks (none: GPTQ does not clip). The runs take the
/// graph's weights rather than a copy of them (a 0.5B decoder's peak was 2.63x its file, against
/// 1.79x for GPTQ on the float model's Hessians), and each weight, once quantized, replaces its
/// float values there: `graph` gets the dequantized weights back, for the export to replace.
pub fn quantize(
    graph: &mut Graph,
    sites: &[Site],
    opts: &Options,
    (data, batch): (&mut Dataset, usize),
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Quantized> {
    with_weights_taken(graph, |graph, exec| {
        quantize_taken(graph, exec, sites, opts, (data, batch), progress)
    })?
}

/// [`quantize`] with the weights in `exec`.
fn quantize_taken(
    graph: &Graph,
    exec: &mut Executor,
    sites: &[Site],
    opts: &Options,
    (data, batch): (&mut Dataset, usize),
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Quantized> {
    let mut runs = Vec::new();
    while let Some(b) = data.next_batch(batch)? {
        runs.push(exec.start(b, &mut |_, v| Ok(v))?);
        progress("calibrating", data.consumed(), data.len);
    }
    let mut quantized = HashMap::new();
    let mut clipped_blocks = [0usize; 2];
    let mut layers: Vec<Option<Layer>> = vec![None; sites.len()];
    // A weight that sites share (a tied embedding and LM head) keeps its float values here from
    // its first site to its last: the executor's are replaced at the first.
    let mut readers: HashMap<&str, usize> = HashMap::new();
    sites
        .iter()
        .for_each(|s| *readers.entry(&s.weight).or_default() += 1);
    let mut shared: HashMap<&str, Vec<f32>> = HashMap::new();
    for (done, group) in groups(sites).into_iter().enumerate() {
        progress("quantizing", done, sites.len());
        let first = &sites[group[0]];
        // A lookup's rows need no Hessian (they are rounded to nearest).
        let h = if first.op == Op::Gather {
            None
        } else {
            runs = resume(exec, runs, first.node)?;
            Some(hessian(graph, &runs, &first.input, first.k)?)
        };
        for &i in &group {
            let site = &sites[i];
            let w = match shared.remove(site.weight.as_str()) {
                Some(w) => w,
                None => float_weight(graph, exec, site)?,
            };
            let state = (&mut quantized, &mut clipped_blocks);
            let (line, now) = quantize_once(graph, (site, &w), opts, h.as_ref(), state)?;
            let left = readers
                .get_mut(site.weight.as_str())
                .expect("counted above");
            *left -= 1;
            if *left > 0 {
                shared.insert(&site.weight, w);
            }
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

/// `site`'s float weight, [K, N], read from the executor that holds the graph's weights.
fn float_weight(graph: &Graph, exec: &Executor, site: &Site) -> Result<Vec<f32>> {
    let (_, v) = (exec.initializer_values().iter())
        .find(|(name, _)| *name == site.weight)
        .ok_or_else(|| {
            Error::new(
                &graph.source,
                format!("weight '{}' is missing", site.weight),
            )
        })?;
    v.with_f32s(|x| in_kn_layout(&graph.source, site, Cow::Borrowed(x)).map(Cow::into_owned))?
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
    use crate::weight_only::blocks::BlockScheme;

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

    /// A table tied to the head (a Gather and a Gemm with transB reading one initializer) is
    /// quantized once, at the lookup; the head's line measures the quantized table against its
    /// float values, not against the lookup's replacement of them; the graph gets the
    /// dequantized table back.
    #[test]
    fn a_tied_table_is_quantized_once_and_measured_against_its_float_values() {
        use std::sync::Arc;
        use zeropoint_graph::graph::int_attribute;
        use zeropoint_graph::{Dim, Node, ValueInfo};
        use zeropoint_onnx::{DType, RawTensor};

        let (rows, width, tokens) = (8, 32, 6);
        let table: Vec<f32> = (0..rows * width)
            .map(|i| (i * 37 % 101) as f32 / 50.0 - 1.0)
            .collect();
        let mut head = Node::new("head", Op::Gemm, &["h", "e"], &["logits"]);
        head.attributes.push(int_attribute("transB", 1));
        // Each token is a sample: the runs take them a batch at a time.
        let value = |name: &str, dtype, dims: &[Dim]| ValueInfo {
            name: name.into(),
            dtype: Some(dtype),
            shape: Some(dims.to_vec()),
        };
        let tokens_dim = Dim::Sym("tokens".into());
        let mut graph = Graph {
            source: "tied.onnx".into(),
            opset: 17,
            inputs: vec![value("ids", DType::I64, std::slice::from_ref(&tokens_dim))],
            outputs: vec![value("logits", DType::F32, &[tokens_dim, Dim::Fixed(rows)])],
            initializers: vec![RawTensor::from_f32s("e", &[rows, width], &table)],
            nodes: vec![Node::new("lookup", Op::Gather, &["e", "ids"], &["h"]), head],
        };
        let sites = crate::linear_layers::sites(&graph, &[]);
        assert_eq!(sites.len(), 2);
        let ids = RawTensor::from_i64s("ids", &[tokens], &[0, 3, 7, 1, 3, 5], DType::I64);
        let mut data =
            Dataset::from_arrays(vec![("ids".into(), Arc::new(ids))], &graph.inputs).unwrap();
        let opts = Options {
            scheme: BlockScheme {
                bits: 4,
                block: 16,
                symmetric: false,
                range: Default::default(),
            },
            method: super::super::Method::Gptq(Default::default()),
            format: Default::default(),
            accuracy_level: None,
            awq: None,
            exclude: Vec::new(),
            embedding_bits: 4,
            data: vec!["ids.npy".into()],
            preprocess: Default::default(),
            samples: None,
            batch: None,
            sequential: true,
        };
        let (quantized, layers, _) =
            quantize(&mut graph, &sites, &opts, (&mut data, 2), &mut |_, _, _| {}).unwrap();
        assert_eq!(quantized.len(), 1, "one table, quantized once");
        let [lookup, head] = &layers[..] else {
            panic!("two lines: {layers:?}")
        };
        assert!(
            (10.0..40.0).contains(&lookup.weight_sqnr_db),
            "4 bits: {lookup:?}"
        );
        assert_eq!(head.weight_sqnr_db, lookup.weight_sqnr_db);
        let back = graph.initializer("e").unwrap().f32s().into_owned();
        let q = &quantized["e"];
        let expected: Vec<f32> = (0..rows * width)
            .map(|i| q.value(i % width, i / width))
            .collect();
        assert_eq!(back, expected);
        assert_ne!(back, table);
    }
}
