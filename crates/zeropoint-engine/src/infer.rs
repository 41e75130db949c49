//! Shape and dtype inference for every value of a graph, dynamic dimensions included.
//!
//! Rather than a second, symbolic implementation of every operator's shape rule (which could
//! disagree with the executor), the graph is run twice on zero-filled inputs with each symbolic
//! input dimension set to two different probe sizes. A dimension equal in both runs is fixed; one
//! that follows a symbol (or a multiple or fraction of it, like `seq*384` after a reshape or
//! `H/32` after a backbone) is named after it; any other varying dimension is `?`. The
//! executor's own operators thus define the shapes.
//!
//! Probe sizes start small (2, 3, ...) and grow when the model cannot run on them (a kernel
//! larger than the input, sizes that must divide by 32): [`PROBE_SCALES`]. Where the caller
//! knows the real sizes (`--shape`, the calibration data), [`with_input_shapes`] fixes them and
//! nothing is guessed.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use zeropoint_graph::{Dim, Graph, ValueType};
use zeropoint_onnx::DType;

use crate::error::{Error, Result};
use crate::exec::{with_weights_taken, Executor};
use crate::value::{carrier, Value};

/// Inputs larger than this (elements) are refused rather than allocated for a probe run.
const MAX_PROBE_ELEMENTS: usize = 1 << 28;

/// Probe sizes are multiplied by these in turn until the model runs: tiny inputs first (fast),
/// then sizes that pass 5 stride-2 stages, then audio-length ones. Batch dimensions (a symbol on
/// an input's first axis) are never scaled.
pub const PROBE_SCALES: [usize; 3] = [1, 32, 512];

/// A scaled probe whose inputs would exceed this many elements in all is not tried: shape
/// inference must stay cheap whatever a file declares.
const MAX_SCALED_PROBE_ELEMENTS: usize = 1 << 22;

/// A symbolic input dimension: a name shared by every dimension that carries it, or an
/// anonymous `?` of its own.
#[derive(Debug, Clone, PartialEq)]
struct Symbol {
    name: String,
    anonymous: bool,
    /// On an input's first axis somewhere: the batch, which probes keep small.
    batch: bool,
    /// Which probe sizes it takes: its own place among the symbols, or the first batch
    /// symbol's where the batches are tied ([`tied_batches`]).
    slot: usize,
}

/// Probe sizes per symbol: the one in slot k is (2 + k)·scale in the first run and
/// (5 + 2k)·scale in the second, so that no two symbols (nor their small multiples) coincide in
/// both runs.
fn probe_size(sym: &Symbol, run: usize, scale: usize) -> usize {
    let (k, scale) = (sym.slot, if sym.batch { 1 } else { scale });
    scale * if run == 0 { 2 + k } else { 5 + 2 * k }
}

/// The symbols with every batch symbol given the first one's probe sizes, where there are two
/// or more: exporters (tf2onnx) name each input's batch apart although the model only runs when
/// they are equal (a Concat of two inputs' features), and distinct probe batches would fail it.
fn tied_batches(symbols: &[Symbol]) -> Option<Vec<Symbol>> {
    let mut batches = symbols.iter().filter(|s| s.batch);
    let first = batches.next()?.slot;
    batches.next()?;
    let tie = |s: &Symbol| Symbol {
        slot: if s.batch { first } else { s.slot },
        ..s.clone()
    };
    Some(symbols.iter().map(tie).collect())
}

/// `probe(symbols)`, and where it fails, again with the batches tied if that makes it run; the
/// symbols of the run that was kept. The first error is the one reported.
fn with_tied_batches<T>(
    symbols: Vec<Symbol>,
    mut probe: impl FnMut(&[Symbol]) -> Result<T>,
) -> Result<(T, Vec<Symbol>)> {
    let error = match probe(&symbols) {
        Ok(t) => return Ok((t, symbols)),
        Err(e) => e,
    };
    match tied_batches(&symbols) {
        Some(tied) => probe(&tied).map(|t| (t, tied)).map_err(|_| error),
        None => Err(error),
    }
}

/// `graph` with the inputs named in `shapes` declared with those exact dimensions (the data's
/// or the user's), for inference that guesses none of them.
pub fn with_input_shapes(graph: &Graph, shapes: &HashMap<String, Vec<usize>>) -> Graph {
    let mut g = graph.clone();
    for input in &mut g.inputs {
        if let Some(dims) = shapes.get(&input.name) {
            input.shape = Some(dims.iter().map(|&d| Dim::Fixed(d)).collect());
        }
    }
    g
}

/// The type of every graph input, initializer and node output. The probe runs take the graph's
/// weights and give them back (the same bits) rather than copy them.
pub fn infer(graph: &mut Graph) -> Result<HashMap<String, ValueType>> {
    let ((runs, scale), symbols) = with_weights_taken(graph, |graph, exec| {
        with_tied_batches(symbols(graph), |s| probe_runs(graph, exec, s))
    })??;
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
                .map(|(&x, &y)| dim(x, y, &symbols, scale))
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
    Ok(dtypes_of(graph, probe(graph)?))
}

/// The element type of every initializer of `graph` and every value of a probe `run` of it.
pub fn dtypes_of(graph: &Graph, run: Run) -> HashMap<String, DType> {
    graph
        .initializers
        .iter()
        .map(|t| (t.name.clone(), t.dtype))
        .chain(run.into_iter().map(|(name, (dtype, _))| (name, dtype)))
        .collect()
}

/// The element type and shape of every graph input and node output in one probe run, at the
/// first probe scale the model runs at: exact where the graph's inputs have fixed shapes
/// ([`with_input_shapes`]).
pub fn probe(graph: &Graph) -> Result<Run> {
    let exec = Executor::new(graph)?;
    let first_run = |symbols: &[Symbol]| {
        let mut run = probe_run(graph, &exec, symbols, 0, PROBE_SCALES[0]);
        for &scale in &PROBE_SCALES[1..] {
            if run.is_ok() || symbols.is_empty() {
                break;
            }
            run = probe_run(graph, &exec, symbols, 0, scale).or(run);
        }
        run
    };
    Ok(with_tied_batches(symbols(graph), first_run)?.0)
}

/// Per value: its element type and shape in one run.
pub type Run = HashMap<String, (DType, Vec<usize>)>;

/// The two probe runs at the first scale where both succeed, and that scale; the error of the
/// first scale if none does (the smallest sizes tell most plainly what went wrong).
fn probe_runs(graph: &Graph, exec: &Executor, symbols: &[Symbol]) -> Result<([Run; 2], usize)> {
    let mut first_error = None;
    for scale in PROBE_SCALES {
        let runs = probe_run(graph, exec, symbols, 0, scale).and_then(|a| {
            // Without symbolic dimensions the second run would be the first again (zeros at
            // the same sizes): a full forward pass of a static 1024² model for nothing.
            let b = match symbols.is_empty() {
                true => a.clone(),
                false => probe_run(graph, exec, symbols, 1, scale)?,
            };
            Ok([a, b])
        });
        match runs {
            Ok(runs) => return Ok((runs, scale)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        if symbols.is_empty() {
            break;
        }
    }
    Err(first_error.expect("at least one probe scale"))
}

/// The symbolic dimensions of the graph inputs, in order of appearance. Each anonymous `?` is
/// a symbol of its own (`?` at input i, axis j), so that a batch `?` does not tie the others.
fn symbols(graph: &Graph) -> Vec<Symbol> {
    let mut symbols: Vec<Symbol> = Vec::new();
    for (i, input) in graph.inputs.iter().enumerate() {
        for (j, d) in input.shape.iter().flatten().enumerate() {
            let Dim::Sym(s) = d else { continue };
            let anonymous = s == "?";
            let name = if anonymous {
                format!("?{i}.{j}")
            } else {
                s.clone()
            };
            match symbols.iter_mut().find(|x| x.name == name) {
                Some(sym) => sym.batch |= j == 0,
                None => symbols.push(Symbol {
                    name,
                    anonymous,
                    batch: j == 0,
                    slot: symbols.len(),
                }),
            }
        }
    }
    symbols
}

/// The probe size of input `i`'s axis `j`, declared `d`.
fn probe_dim(d: &Dim, i: usize, j: usize, symbols: &[Symbol], run: usize, scale: usize) -> usize {
    match d {
        Dim::Fixed(n) => *n,
        Dim::Sym(s) => {
            let name = if s == "?" {
                format!("?{i}.{j}")
            } else {
                s.clone()
            };
            let sym = symbols
                .iter()
                .find(|x| x.name == name)
                .expect("collected symbol");
            probe_size(sym, run, scale)
        }
    }
}

/// Runs the graph on zeros, each symbolic dimension at its probe size for `run`; the element
/// type and shape of every input and node output.
fn probe_run(
    graph: &Graph,
    exec: &Executor,
    symbols: &[Symbol],
    run: usize,
    scale: usize,
) -> Result<Run> {
    let err = |m: String| -> Error { zeropoint_graph::Error::model(&graph.source, m).into() };
    let mut feeds = HashMap::new();
    let mut total = 0usize;
    for (i, input) in graph.inputs.iter().enumerate() {
        let dtype = input.dtype.unwrap_or(DType::F32);
        let shape: Vec<usize> = match &input.shape {
            Some(s) => s
                .iter()
                .enumerate()
                .map(|(j, d)| probe_dim(d, i, j, symbols, run, scale))
                .collect(),
            None => {
                return Err(err(format!(
                    "input '{}' has no declared shape to infer from",
                    input.name
                )))
            }
        };
        let n = zeropoint_onnx::element_count(&shape).filter(|&n| n <= MAX_PROBE_ELEMENTS);
        let Some(n) = n else {
            return Err(err(format!(
                "input '{}': declared shape {shape:?} is too large to infer from",
                input.name
            )));
        };
        total = total.saturating_add(n);
        if scale > 1 && total > MAX_SCALED_PROBE_ELEMENTS {
            return Err(err(format!(
                "probe inputs at scale {scale} would exceed {MAX_SCALED_PROBE_ELEMENTS} elements"
            )));
        }
        zeropoint_onnx::limits::check_elements(n as u128, dtype.size().max(1), "a probe input")
            .map_err(|m| err(format!("input '{}': {m}", input.name)))?;
        let t = Tensor::zeros(shape, carrier(dtype), &Device::Cpu).map_err(|e| {
            zeropoint_graph::Error::at(
                &graph.source,
                format!("input '{}'", input.name),
                Error::from(e),
            )
        })?;
        feeds.insert(input.name.clone(), Value::new(t, dtype));
    }
    probe_with(exec, feeds, &mut |_, _| {})
}

/// The element type and shape of every graph input and node output on a run of `graph` on
/// `feeds` (real data: a model whose control flow depends on its inputs' values takes the path
/// the data takes).
pub fn probe_on(graph: &Graph, feeds: HashMap<String, Value>) -> Result<Run> {
    probe_with(&Executor::new(graph)?, feeds, &mut |_, _| {})
}

/// [`probe_on`] with an executor at hand, showing each value to `watch` as it is computed:
/// calibration observes the probe's run rather than running its sample again.
pub fn probe_with(
    exec: &Executor,
    feeds: HashMap<String, Value>,
    watch: &mut dyn FnMut(&str, &Value),
) -> Result<Run> {
    let mut seen = HashMap::new();
    exec.run_with(feeds, &mut |name, v| {
        seen.insert(name.to_string(), (v.dtype, v.shape().to_vec()));
        watch(name, &v);
        Ok(v)
    })
    .map_err(|e| match e {
        Error::Graph(g) => Error::Graph(g.during("shape inference")),
        op => op,
    })?;
    Ok(seen)
}

/// A dimension seen as `x` in the first run and `y` in the second.
fn dim(x: usize, y: usize, symbols: &[Symbol], scale: usize) -> Dim {
    if x == y {
        return Dim::Fixed(x);
    }
    for sym in symbols {
        let (p, q) = (probe_size(sym, 0, scale), probe_size(sym, 1, scale));
        // An anonymous dimension's relatives are as anonymous as it is.
        let s = if sym.anonymous {
            "?"
        } else {
            sym.name.as_str()
        };
        if x == p && y == q {
            return Dim::Sym(s.to_string());
        }
        if x.is_multiple_of(p) && y.is_multiple_of(q) && x / p == y / q {
            return Dim::Sym(if sym.anonymous {
                s.into()
            } else {
                format!("{s}*{}", x / p)
            });
        }
        if x > 0 && y > 0 && p.is_multiple_of(x) && q.is_multiple_of(y) && p / x == q / y {
            return Dim::Sym(if sym.anonymous {
                s.into()
            } else {
                format!("{s}/{}", p / x)
            });
        }
    }
    Dim::Sym("?".into())
}

#[cfg(test)]
mod tests {
    use zeropoint_graph::{Node, Op, ValueInfo};
    use zeropoint_onnx::RawTensor;

    use super::*;

    /// x [N, 2] → MatMul(w) → Add(b) → y, with odd float bits and an integer initializer read
    /// by no node.
    fn graph(op: Op) -> Graph {
        let value = |name: &str, shape: Option<Vec<Dim>>| ValueInfo {
            name: name.into(),
            dtype: Some(DType::F32),
            shape,
        };
        Graph {
            source: "m.onnx".into(),
            opset: 17,
            inputs: vec![value("x", Some(vec![Dim::Sym("N".into()), Dim::Fixed(2)]))],
            outputs: vec![value("y", None)],
            initializers: vec![
                RawTensor::from_f32s("w", &[2, 3], &[-0.0, f32::NAN, 1e-45, 1.0, 2.0, 3.0]),
                RawTensor::from_f32s("b", &[3], &[f32::INFINITY, 0.5, -1.0]),
                RawTensor::from_i64s("ints", &[2], &[-1, i64::MAX], DType::I64),
            ],
            nodes: vec![
                Node::new("mm", op, &["x", "w"], &["h"]),
                Node::new("add", Op::Add, &["h", "b"], &["y"]),
            ],
        }
    }

    /// Inference runs on the graph's own weights and gives them back bit for bit, in order; a
    /// graph it cannot run (an unknown operator, or a MatMul that fails in the probe runs, after
    /// the weights were taken) keeps them too.
    #[test]
    fn inference_gives_the_weights_back() {
        let bits = |g: &Graph| -> Vec<(String, Vec<u8>)> {
            (g.initializers.iter())
                .map(|t| (t.name.clone(), t.data.clone()))
                .collect()
        };
        let mut g = graph(Op::MatMul);
        let before = bits(&g);
        let types = infer(&mut g).unwrap();
        assert_eq!(bits(&g), before);
        let y = &types["y"];
        assert_eq!(y.shape, [Dim::Sym("N".into()), Dim::Fixed(3)]);
        let mut unknown = graph(Op::Other("NoSuchOp".into()));
        assert!(infer(&mut unknown).is_err());
        assert_eq!(bits(&unknown), before);
        let mut misfit = graph(Op::MatMul);
        misfit.inputs[0].shape = Some(vec![Dim::Sym("N".into()), Dim::Fixed(4)]);
        let e = infer(&mut misfit).unwrap_err();
        assert!(e.to_string().contains("mm"), "{e}");
        assert_eq!(bits(&misfit), before);
    }

    /// Two inputs whose batches an exporter named apart but a Concat of their features ties:
    /// inference probes them tied after the distinct probe fails, and names the batch after the
    /// first. A graph that fails tied too reports the first, untied error.
    #[test]
    fn batches_named_apart_but_concatenated_are_probed_tied() {
        let input = |name: &str, batch: &str, features: usize| ValueInfo {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: Some(vec![Dim::Sym(batch.into()), Dim::Fixed(features)]),
        };
        let mut concat = Node::new("cat", Op::Concat, &["a", "b"], &["y"]);
        concat
            .attributes
            .push(zeropoint_graph::graph::int_attribute("axis", 1));
        let mut g = Graph {
            source: "m.onnx".into(),
            opset: 17,
            inputs: vec![input("a", "unk__1", 2), input("b", "unk__2", 3)],
            outputs: vec![input("y", "unk__3", 5)],
            initializers: vec![],
            nodes: vec![concat],
        };
        let types = infer(&mut g).unwrap();
        assert_eq!(types["y"].shape, [Dim::Sym("unk__1".into()), Dim::Fixed(5)]);
        assert_eq!(types["b"].shape, [Dim::Sym("unk__1".into()), Dim::Fixed(3)]);
        assert_eq!(probe(&g).unwrap()["y"].1, [2, 5]);
        // Concatenated along the batch: 2 and 3 features never match, tied or not.
        g.nodes[0].attributes = vec![zeropoint_graph::graph::int_attribute("axis", 0)];
        let e = format!("{:?}", infer(&mut g).unwrap_err());
        assert!(e.contains("[2, 2]") && e.contains("[3, 3]"), "{e}");
    }

    /// A weight the executor replaced while it held the weights comes back replaced, and runs
    /// meanwhile read the replacement; the graph's other initializers come back as they were.
    #[test]
    fn a_weight_replaced_while_taken_comes_back_replaced() {
        let mut g = graph(Op::MatMul);
        let before = g.initializers.clone();
        let y = with_weights_taken(&mut g, |graph, exec| {
            assert!(graph.initializers.is_empty(), "the executor holds them");
            let w = Value::from_f32_vec(vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0], &[2, 3]).unwrap();
            assert!(exec.set_initializer("w", w));
            let x = Value::from_f32_vec(vec![2.0, 3.0], &[1, 2]).unwrap();
            let out = exec.run(HashMap::from([("x".to_string(), x)])).unwrap();
            out[0].1.with_f32s(<[f32]>::to_vec).unwrap()
        })
        .unwrap();
        assert_eq!(y, [f32::INFINITY, 3.5, -1.0]);
        let w = g.initializer("w").unwrap();
        assert_eq!(w.f32s().as_ref(), [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        assert_eq!(w.shape, [2, 3]);
        assert_eq!(g.initializers[1..], before[1..]);
    }
}
