//! Shape and dtype inference for every value of a graph, dynamic dimensions included.
//!
//! Rather than a second, symbolic implementation of every operator's shape rule (which could
//! disagree with the executor), the graph is run twice on zero-filled inputs with each symbolic
//! input dimension set to two different small probe sizes. A dimension equal in both runs is
//! fixed; one that follows a symbol (or a multiple of it, like `seq*384` after a reshape) is
//! named after it; any other varying dimension is `?`. The executor's own operators thus define
//! the shapes, and a graph that cannot run fails here, before any real work.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use zeropoint_graph::{Dim, Graph, ValueType};
use zeropoint_onnx::DType;

use crate::error::{Error, Result};
use crate::exec::Executor;
use crate::value::{carrier, Value};

/// Inputs larger than this (elements) are refused rather than allocated for a probe run.
const MAX_PROBE_ELEMENTS: usize = 1 << 28;

/// Probe sizes per symbol: the k-th distinct symbol is 2 + k in the first run, 5 + 2k in the
/// second, so that no two symbols (nor their small multiples) coincide in both runs.
fn probe(k: usize, run: usize) -> usize {
    if run == 0 {
        2 + k
    } else {
        5 + 2 * k
    }
}

/// The type of every graph input, initializer and node output.
pub fn infer(graph: &Graph) -> Result<HashMap<String, ValueType>> {
    let exec = Executor::new(graph)?;
    let symbols = symbols(graph);
    let runs = [
        probe_run(graph, &exec, &symbols, 0)?,
        probe_run(graph, &exec, &symbols, 1)?,
    ];
    let mut types: HashMap<String, ValueType> = graph
        .initializers
        .iter()
        .map(|t| {
            let shape = t.shape.iter().map(|&d| Dim::Fixed(d)).collect();
            (
                t.name.clone(),
                ValueType {
                    dtype: t.dtype,
                    shape,
                },
            )
        })
        .collect();
    for (name, (dtype, a)) in &runs[0] {
        let Some((_, b)) = runs[1].get(name) else {
            continue;
        };
        let shape = if a.len() == b.len() {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| dim(x, y, &symbols))
                .collect()
        } else {
            // The rank itself depends on the input sizes.
            vec![Dim::Sym("?".into()); a.len()]
        };
        types.insert(
            name.clone(),
            ValueType {
                dtype: *dtype,
                shape,
            },
        );
    }
    Ok(types)
}

/// The element type of every graph input, initializer and node output: one probe run (types do
/// not depend on sizes), half the work of [`infer`].
pub fn dtypes(graph: &Graph) -> Result<HashMap<String, DType>> {
    let exec = Executor::new(graph)?;
    let mut types: HashMap<String, DType> = graph
        .initializers
        .iter()
        .map(|t| (t.name.clone(), t.dtype))
        .collect();
    let run = probe_run(graph, &exec, &symbols(graph), 0)?;
    types.extend(run.into_iter().map(|(name, (dtype, _))| (name, dtype)));
    Ok(types)
}

/// The symbolic dimensions of the graph inputs, in order of appearance.
fn symbols(graph: &Graph) -> Vec<String> {
    let mut symbols: Vec<String> = Vec::new();
    for input in &graph.inputs {
        for d in input.shape.iter().flatten() {
            if let Dim::Sym(s) = d {
                if !symbols.contains(s) {
                    symbols.push(s.clone());
                }
            }
        }
    }
    symbols
}

/// Runs the graph on zeros, each symbolic dimension at its probe size for `run`; the element
/// type and shape of every input and node output.
fn probe_run(
    graph: &Graph,
    exec: &Executor,
    symbols: &[String],
    run: usize,
) -> Result<HashMap<String, (DType, Vec<usize>)>> {
    let err = |m: String| -> Error { zeropoint_graph::Error::model(&graph.source, m).into() };
    let mut feeds = HashMap::new();
    for input in &graph.inputs {
        let dtype = input.dtype.unwrap_or(DType::F32);
        let shape: Vec<usize> = match &input.shape {
            Some(s) => s
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Sym(s) => probe(symbols.iter().position(|x| x == s).unwrap(), run),
                })
                .collect(),
            None => {
                return Err(err(format!(
                    "input '{}' has no declared shape to infer from",
                    input.name
                )))
            }
        };
        if zeropoint_onnx::element_count(&shape).is_none_or(|n| n > MAX_PROBE_ELEMENTS) {
            return Err(err(format!(
                "input '{}': declared shape {shape:?} is too large to infer from",
                input.name
            )));
        }
        let t = Tensor::zeros(shape, carrier(dtype), &Device::Cpu).map_err(|e| {
            zeropoint_graph::Error::at(
                &graph.source,
                format!("input '{}'", input.name),
                Error::from(e),
            )
        })?;
        feeds.insert(input.name.clone(), Value::new(t, dtype));
    }
    let mut seen = HashMap::new();
    exec.run_with(feeds, &mut |name, v| {
        seen.insert(name.to_string(), (v.dtype, v.shape().to_vec()));
        Ok(v)
    })
    .map_err(|e| match e {
        Error::Graph(g) => Error::Graph(g.during("shape inference")),
        op => op,
    })?;
    Ok(seen)
}

/// A dimension seen as `x` in the first run and `y` in the second.
fn dim(x: usize, y: usize, symbols: &[String]) -> Dim {
    if x == y {
        return Dim::Fixed(x);
    }
    for (k, s) in symbols.iter().enumerate() {
        let (p, q) = (probe(k, 0), probe(k, 1));
        if x == p && y == q {
            return Dim::Sym(s.clone());
        }
        if x.is_multiple_of(p) && y.is_multiple_of(q) && x / p == y / q {
            return Dim::Sym(format!("{s}*{}", x / p));
        }
    }
    Dim::Sym("?".into())
}
