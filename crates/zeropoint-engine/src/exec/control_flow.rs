//! The control-flow operators If, Loop and Scan (ONNX opsets 11 to 22, Scan from 9): each runs
//! a subgraph of the node with an executor of its own, feeding it its declared inputs and the
//! enclosing graphs' values it reads. The hook sees every value inside, like any other (a loop
//! body's values once per iteration), which is how calibration observes what runs in a branch
//! or a loop.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use zeropoint_graph::{Graph, Node, Op};
use zeropoint_onnx::DType;

use super::{Executor, Hook, Scope};
use crate::error::{Error, Result};
use crate::ops::{self, axis};
use crate::value::Value;

/// Whether `node` is a control-flow operator with the subgraphs it needs.
pub fn supports(node: &Node) -> bool {
    let has = |name: &str| node.subgraph(name).is_some();
    match node.op {
        Op::If => has("then_branch") && has("else_branch"),
        Op::Loop | Op::Scan => has("body"),
        _ => false,
    }
}

/// Runs a control-flow node on its inputs; `scope` holds the values its subgraphs may capture.
/// `prepared` holds the subgraphs' initializers, as the enclosing executor converted them.
pub(crate) fn run(
    node: &Node,
    prepared: &[(String, Arc<Scope>)],
    inputs: &[Option<Value>],
    scope: &HashMap<String, Value>,
    hook: &mut Hook,
) -> Result<Vec<Value>> {
    let cx = Cx {
        node,
        prepared,
        scope,
    };
    match node.op {
        Op::If => run_if(&cx, inputs, hook),
        Op::Loop => run_loop(&cx, inputs, hook),
        Op::Scan => run_scan(&cx, inputs, hook),
        _ => Err(Error::Op(format!("operator {} is not supported", node.op))),
    }
}

/// What every control-flow operator needs: its node, its subgraphs' prepared initializers, and
/// the values the subgraphs may capture.
struct Cx<'a> {
    node: &'a Node,
    prepared: &'a [(String, Arc<Scope>)],
    scope: &'a HashMap<String, Value>,
}

/// A subgraph ready to be called, once or once per iteration.
struct Body<'g> {
    attr: &'static str,
    exec: Executor<'g>,
    /// The captured values, looked up once.
    captured: HashMap<String, Value>,
}

impl<'g> Body<'g> {
    fn new(cx: &Cx<'g>, attr: &'static str) -> Result<Self> {
        let missing = || Error::Op(format!("attribute '{attr}' (a graph) is missing"));
        let graph = cx.node.subgraph(attr).ok_or_else(missing)?;
        let prepared = cx
            .prepared
            .iter()
            .find(|(a, _)| a == attr)
            .ok_or_else(missing)?;
        let exec = Executor::in_scope(graph, prepared.1.clone());
        let captured = graph
            .captures()
            .into_iter()
            .map(|name| match cx.scope.get(&name) {
                Some(v) => Ok((name, v.clone())),
                None => Err(Error::Op(format!(
                    "{attr}: value '{name}' is not available"
                ))),
            })
            .collect::<Result<_>>()?;
        Ok(Body {
            attr,
            exec,
            captured,
        })
    }

    fn graph(&self) -> &Graph {
        self.exec.graph()
    }

    /// Runs the subgraph on `args`, one per declared input, in order.
    fn call(&self, args: Vec<Value>, hook: &mut Hook) -> Result<Vec<Value>> {
        let declared = &self.graph().inputs;
        if args.len() != declared.len() {
            return Err(Error::Op(format!(
                "{}: the subgraph declares {} inputs, the operator gives {}",
                self.attr,
                declared.len(),
                args.len()
            )));
        }
        let feeds = declared.iter().map(|i| i.name.clone()).zip(args).collect();
        self.exec
            .run_scoped(self.captured.clone(), feeds, hook)
            .map_err(|e| inside(self.attr, e))
    }

    /// How many outputs the subgraph has; at least `min`, or the model is wrong.
    fn outputs(&self, min: usize) -> Result<usize> {
        let n = self.graph().outputs.len();
        if n < min {
            return Err(Error::Op(format!(
                "{}: the subgraph has {n} outputs, the operator needs at least {min}",
                self.attr
            )));
        }
        Ok(n)
    }
}

/// An error of a subgraph's node, said as one line under the attribute that holds it
/// ("then_branch: node 'conv' (Conv): ..."), the file being the enclosing graph's.
fn inside(attr: &str, e: Error) -> Error {
    match e {
        Error::Graph(zeropoint_graph::Error::Model {
            message, source, ..
        }) => {
            let cause = source.map(|s| format!(": {s}")).unwrap_or_default();
            Error::Op(format!("{attr}: {message}{cause}"))
        }
        other => other,
    }
}

/// If: the branch the (one-element, boolean) condition picks.
fn run_if(cx: &Cx, inputs: &[Option<Value>], hook: &mut Hook) -> Result<Vec<Value>> {
    let node = cx.node;
    let cond = truth(required(inputs, 0, "cond")?, "cond")?;
    let branch = Body::new(cx, if cond { "then_branch" } else { "else_branch" })?;
    let outs = branch.call(Vec::new(), hook)?;
    if outs.len() != node.outputs.len() {
        return Err(Error::Op(format!(
            "{}: the branch has {} outputs, the node {}",
            branch.attr,
            outs.len(),
            node.outputs.len()
        )));
    }
    Ok(outs)
}

/// Loop: runs the body while the trip count and the condition allow, carrying N values from one
/// iteration to the next; the body's further outputs are stacked along a new first axis.
fn run_loop(cx: &Cx, inputs: &[Option<Value>], hook: &mut Hook) -> Result<Vec<Value>> {
    let trips = match inputs.first().and_then(Option::as_ref) {
        Some(m) => Some(one_int(m, "M")?),
        None => None,
    };
    let mut cond = match inputs.get(1).and_then(Option::as_ref) {
        Some(c) => Some(truth(c, "cond")?),
        None => None,
    };
    if trips.is_none() && cond.is_none() {
        return Err(Error::Op(
            "neither a trip count (M) nor a condition is given: the loop would never end".into(),
        ));
    }
    let mut carried: Vec<Value> = inputs
        .iter()
        .skip(2)
        .enumerate()
        .map(|(k, v)| {
            v.clone()
                .ok_or_else(|| Error::Op(format!("loop-carried input {} is missing", k + 2)))
        })
        .collect::<Result<_>>()?;
    let n_carried = carried.len();
    let body = Body::new(cx, "body")?;
    let n_scan = body.outputs(1 + n_carried)? - 1 - n_carried;
    let mut scans = Stacks::new(n_scan);
    let mut i = 0i64;
    while trips.is_none_or(|m| i < m) && cond != Some(false) {
        check_iterations(i as u64)?;
        let mut args = vec![scalar_i64(i)?, scalar_bool(cond.unwrap_or(true))?];
        args.append(&mut carried);
        let mut outs = body.call(args, hook)?.into_iter();
        let cond_out = outs.next().expect("checked: at least one output");
        if cond.is_some() {
            cond = Some(truth(&cond_out, "the body's condition")?);
        }
        carried = outs.by_ref().take(n_carried).collect();
        scans.push(outs)?;
        i += 1;
    }
    let mut results = carried;
    for (k, values) in scans.0.into_iter().enumerate() {
        let declared = &body.graph().outputs[1 + n_carried + k];
        results.push(stack(values, 0, declared.dtype)?);
    }
    Ok(results)
}

/// Scan: runs the body once per slice of the scan inputs along their axes, carrying N state
/// values; the body's further outputs are stacked along the scan output axes.
fn run_scan(cx: &Cx, inputs: &[Option<Value>], hook: &mut Hook) -> Result<Vec<Value>> {
    let node = cx.node;
    let attr = |name: &str| {
        node.attribute(name)
            .map(|a| a.ints.clone())
            .unwrap_or_default()
    };
    let m = node
        .attribute("num_scan_inputs")
        .map(|a| a.i())
        .ok_or_else(|| Error::Op("attribute 'num_scan_inputs' is missing".into()))?;
    let given: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(k, v)| {
            v.clone()
                .ok_or_else(|| Error::Op(format!("input {k} is missing")))
        })
        .collect::<Result<_>>()?;
    if m < 1 || m as usize > given.len() {
        return Err(Error::Op(format!(
            "num_scan_inputs {m} does not fit the {} inputs",
            given.len()
        )));
    }
    let n_state = given.len() - m as usize;
    let (mut state, scan_inputs) = (given[..n_state].to_vec(), &given[n_state..]);
    let in_axes = axes(&attr("scan_input_axes"), scan_inputs)?;
    let in_reverse = attr("scan_input_directions");
    let len = sequence_length(scan_inputs, &in_axes)?;
    let body = Body::new(cx, "body")?;
    let n_scan = body.outputs(n_state)? - n_state;
    let mut scans = Stacks::new(n_scan);
    check_iterations(len.saturating_sub(1) as u64)?;
    for t in 0..len {
        let mut args = std::mem::take(&mut state);
        for (j, v) in scan_inputs.iter().enumerate() {
            let at = if in_reverse.get(j) == Some(&1) {
                len - 1 - t
            } else {
                t
            };
            let slice = v.tensor.narrow(in_axes[j], at, 1)?.squeeze(in_axes[j])?;
            args.push(Value::new(slice, v.dtype));
        }
        let mut outs = body.call(args, hook)?;
        let rest = outs.split_off(n_state);
        state = outs;
        scans.push(rest)?;
    }
    let out_axes_attr = attr("scan_output_axes");
    let out_reverse = attr("scan_output_directions");
    let mut results = state;
    for (k, mut values) in scans.0.into_iter().enumerate() {
        if out_reverse.get(k) == Some(&1) {
            values.reverse();
        }
        let rank = values.first().map_or(0, |v| v.shape().len()) + 1;
        let out_axis = match out_axes_attr.get(k) {
            Some(&a) => axis(a, rank)?,
            None => 0,
        };
        let declared = &body.graph().outputs[n_state + k];
        results.push(stack(values, out_axis, declared.dtype)?);
    }
    Ok(results)
}

/// Refuses a loop past its `i`-th iteration when that is over the iteration limit: a file whose
/// loop never ends (or runs 10^18 times) gets an error, not a hung process.
fn check_iterations(i: u64) -> Result<()> {
    let limit = zeropoint_onnx::limits::max_iterations();
    if i < limit {
        return Ok(());
    }
    Err(Error::Op(format!(
        "the loop would run more than {limit} iterations, the limit for one node"
    )))
}

/// The per-iteration outputs to stack, one list per output, held within the memory limit.
struct Stacks(Vec<Vec<Value>>, u128);

impl Stacks {
    fn new(n: usize) -> Stacks {
        Stacks(vec![Vec::new(); n], 0)
    }

    fn push(&mut self, values: impl IntoIterator<Item = Value>) -> Result<()> {
        for (k, v) in values.into_iter().enumerate() {
            let bytes = v.tensor.elem_count() * v.tensor.dtype().size_in_bytes();
            self.1 += bytes as u128;
            zeropoint_onnx::limits::check(self.1, "the loop's stacked outputs")
                .map_err(Error::Op)?;
            self.0[k].push(v);
        }
        Ok(())
    }
}

/// Each scan input's axis (attribute values, default 0), checked against its rank.
fn axes(given: &[i64], values: &[Value]) -> Result<Vec<usize>> {
    values
        .iter()
        .enumerate()
        .map(|(j, v)| axis(given.get(j).copied().unwrap_or(0), v.shape().len()))
        .collect()
}

/// The common length of the scan inputs along their axes.
fn sequence_length(values: &[Value], axes: &[usize]) -> Result<usize> {
    let lens: Vec<usize> = values
        .iter()
        .zip(axes)
        .map(|(v, &a)| v.shape()[a])
        .collect();
    match lens.split_first() {
        Some((&first, rest)) if rest.iter().all(|&l| l == first) => Ok(first),
        _ => Err(Error::Op(format!(
            "the scan inputs have different lengths along their axes: {lens:?}"
        ))),
    }
}

/// Per-iteration values stacked along a new `axis`; an empty list (no iteration) is an empty
/// tensor of the declared element type (float when none is declared).
fn stack(values: Vec<Value>, axis: usize, declared: Option<DType>) -> Result<Value> {
    let Some(first) = values.first() else {
        let dtype = declared.unwrap_or(DType::F32);
        let t = Tensor::zeros(0, crate::value::carrier(dtype), &Device::Cpu)?;
        return Ok(Value::new(t, dtype));
    };
    let (dtype, shape) = (first.dtype, first.shape().to_vec());
    if let Some(v) = values
        .iter()
        .find(|v| v.shape() != shape || v.dtype != dtype)
    {
        return Err(Error::Op(format!(
            "iterations give outputs of different shapes or types ({dtype} {shape:?}, then {} {:?}): they cannot be stacked",
            v.dtype,
            v.shape()
        )));
    }
    let tensors: Vec<Tensor> = values.into_iter().map(|v| v.tensor).collect();
    Ok(Value::new(ops::stack(&tensors, axis)?, dtype))
}

fn required<'a>(inputs: &'a [Option<Value>], i: usize, name: &str) -> Result<&'a Value> {
    inputs
        .get(i)
        .and_then(Option::as_ref)
        .ok_or_else(|| Error::Op(format!("input '{name}' is missing")))
}

/// The value of a one-element tensor as a truth value (nonzero is true).
fn truth(v: &Value, what: &str) -> Result<bool> {
    Ok(one_int(v, what)? != 0)
}

fn one_int(v: &Value, what: &str) -> Result<i64> {
    match v.to_i64s()?.as_slice() {
        [x] => Ok(*x),
        other => Err(Error::Op(format!(
            "{what} must have one element, it has {}",
            other.len()
        ))),
    }
}

fn scalar_i64(x: i64) -> Result<Value> {
    Ok(Value::new(Tensor::new(x, &Device::Cpu)?, DType::I64))
}

fn scalar_bool(b: bool) -> Result<Value> {
    Ok(Value::new(Tensor::new(b as u8, &Device::Cpu)?, DType::Bool))
}
