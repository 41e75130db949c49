//! Layout Transposes moved past element-wise ops until they meet their inverse.
//!
//! A TensorFlow model converted by tf2onnx computes in NHWC around NCHW convolutions:
//!
//! ```text
//! Conv → Transpose(0,2,3,1) → Add(bias) → Sub(mean) → Mul(scale) → Add(shift) → Relu
//!      → Transpose(0,3,1,2) → Conv
//! ```
//!
//! (open_nsfw's ResNet-50: 53 such chains). tf2onnx's own optimizer usually cancels the pairs;
//! where something blocked it (open_nsfw's float-to-float Casts), the bias and BatchNorm ops sit
//! between the two Transposes, where nothing folds them into the Conv, and in a quantized model
//! they run in float between integer convolutions.
//!
//! A Transpose whose output one element-wise node alone reads swaps places with it: a unary op
//! (Relu, Clip with constant bounds, ...) commutes with any transpose, and a binary op with a
//! constant does once the constant is transposed the other way. Moved down so, the Transpose
//! meets the next one: the two compose, and vanish where the composition is the identity. The
//! bias and BatchNorm ops then follow the Conv, for the folds that come next in canonicalization.
//! Where a value forks (a residual block's output) the Transpose stops; runtimes cancel such
//! ones themselves.

use zeropoint_onnx::{DType, RawTensor};

use crate::graph::{ints_attribute, Graph, Node};
use crate::op::Op;
use crate::rewrite::{only_reader, unique_name};

/// Moves Transposes past the element-wise nodes that alone read them, composing and cancelling
/// the ones that meet; returns how many Transposes were removed. A Transpose moves only where
/// that gains something: it meets another one, or it leaves a layer's output to the constant
/// Add, Sub or Mul after it, which then folds into the layer. Elsewhere moving it would change
/// the graph for nothing.
pub fn sink_transposes(graph: &mut Graph) -> usize {
    let mut removed = 0;
    // Each step moves a Transpose one node down or removes one: bounded by the graph's size.
    let mut budget = 4 * graph.nodes.len() + 16;
    let mut i = 0;
    while i < graph.nodes.len() && budget > 0 {
        if !(meets_a_transpose(graph, i) || uncovers_a_fold(graph, i)) {
            i += 1;
            continue;
        }
        // The node at i is another one once this Transpose has moved or gone.
        let mut at = i;
        let mut moved = false;
        while budget > 0 {
            budget -= 1;
            match step(graph, at) {
                Step::Moved(to) => (at, moved) = (to, true),
                Step::Removed(n) => {
                    removed += n;
                    break;
                }
                Step::Stays => {
                    i += usize::from(!moved);
                    break;
                }
            }
        }
    }
    removed
}

/// Whether node `i` is a Transpose of a Conv's (or ConvTranspose's) output, read by a constant
/// Add, Sub or Mul alone.
fn uncovers_a_fold(graph: &Graph, i: usize) -> bool {
    let t = &graph.nodes[i];
    let (Some(perm), Some(x)) = (permutation(t), t.inputs.first()) else {
        return false;
    };
    let layer = graph.nodes[..i]
        .iter()
        .any(|n| n.outputs.first() == Some(x) && matches!(n.op, Op::Conv | Op::ConvTranspose));
    let Some(r) = only_reader(graph, &graph.consumers(), &t.outputs[0]) else {
        return false;
    };
    let reader = &graph.nodes[r];
    layer
        && matches!(reader.op, Op::Add | Op::Sub | Op::Mul)
        && swapped_operands(graph, reader, &t.outputs[0], "", &perm).is_some()
}

/// Whether node `i` is a Transpose whose output reaches another Transpose of the same rank
/// through nodes it can move past, each the one reader of the value before it.
fn meets_a_transpose(graph: &Graph, i: usize) -> bool {
    let Some(perm) = permutation(&graph.nodes[i]) else {
        return false;
    };
    let consumers = graph.consumers();
    let mut y = graph.nodes[i].outputs[0].clone();
    loop {
        let Some(r) = only_reader(graph, &consumers, &y) else {
            return false;
        };
        let reader = &graph.nodes[r];
        if reader.op == Op::Transpose {
            return permutation(reader).is_some_and(|p| p.len() == perm.len());
        }
        if swapped_operands(graph, reader, &y, "", &perm).is_none() {
            return false;
        }
        let [out] = reader.outputs.as_slice() else {
            return false;
        };
        y = out.clone();
    }
}

enum Step {
    /// The Transpose swapped places with its reader and is now at this index.
    Moved(usize),
    /// It merged into the Transpose after it: this many Transposes are gone (2 where the two
    /// cancelled).
    Removed(usize),
    /// It stays where it is.
    Stays,
}

/// One move of the node at `i`, if it is a Transpose that can move.
fn step(graph: &mut Graph, i: usize) -> Step {
    let t = &graph.nodes[i];
    let (Some(perm), [x], [y]) = (permutation(t), t.inputs.as_slice(), t.outputs.as_slice()) else {
        return Step::Stays;
    };
    let (x, y) = (x.clone(), y.clone());
    // In a sorted graph of single assignment the reader comes later; the moves rely on it.
    let Some(r) = only_reader(graph, &graph.consumers(), &y).filter(|&r| r > i) else {
        return Step::Stays;
    };
    if graph.nodes[r].op == Op::Transpose {
        return merge(graph, i, r, &perm, &x);
    }
    let Some((operands, constant)) = swapped_operands(graph, &graph.nodes[r], &y, &x, &perm) else {
        return Step::Stays;
    };
    let [out] = graph.nodes[r].outputs.as_slice() else {
        return Step::Stays;
    };
    let out = out.clone();
    // r computes on x, and the Transpose moves after it to write r's output.
    let inner = unique_name(graph, &format!("{out}_before_transpose"));
    graph.initializers.extend(constant);
    let reader = &mut graph.nodes[r];
    reader.inputs = operands;
    reader.outputs = vec![inner.clone()];
    let mut t = graph.nodes.remove(i);
    t.inputs = vec![inner];
    t.outputs = vec![out];
    graph.nodes.insert(r, t);
    Step::Moved(r)
}

/// Transpose `i` (perm `perm`, input `x`) read only by Transpose `r`: one Transpose of the
/// composed permutation, or none where that is the identity.
fn merge(graph: &mut Graph, i: usize, r: usize, perm: &[usize], x: &str) -> Step {
    let Some(second) = permutation(&graph.nodes[r]).filter(|p| p.len() == perm.len()) else {
        return Step::Stays;
    };
    let composed: Vec<usize> = second.iter().map(|&k| perm[k]).collect();
    let out = graph.nodes[r].outputs[0].clone();
    let identity = composed.iter().enumerate().all(|(k, &p)| k == p);
    let cancel = identity && !graph.outputs.iter().any(|o| o.name == out);
    if cancel {
        crate::rewrite::rename_inputs(graph, &[(out, x.to_string())].into_iter().collect());
        graph.nodes.remove(r);
    } else {
        let n = &mut graph.nodes[r];
        n.inputs = vec![x.to_string()];
        let c: Vec<i64> = composed.iter().map(|&p| p as i64).collect();
        n.attributes = vec![ints_attribute("perm", &c)];
    }
    graph.nodes.remove(i);
    Step::Removed(1 + usize::from(cancel))
}

/// The inputs `reader` takes to compute on `x`, the input of the Transpose (perm `perm`) that
/// wrote `y`, instead of on `y`, and the new constant they name if any (a constant operand
/// transposed the other way). None where `reader` does not commute with the Transpose.
fn swapped_operands(
    graph: &Graph,
    reader: &Node,
    y: &str,
    x: &str,
    perm: &[usize],
) -> Option<(Vec<String>, Option<RawTensor>)> {
    let unary = matches!(
        reader.op,
        Op::Relu | Op::LeakyRelu | Op::Sigmoid | Op::Tanh | Op::HardSigmoid | Op::Elu | Op::Neg
    );
    let x = x.to_string();
    if unary && reader.inputs.len() == 1 {
        return Some((vec![x], None));
    }
    let clip = reader.op == Op::Clip
        && reader.inputs[1..]
            .iter()
            .all(|b| b.is_empty() || graph.initializer(b).is_some());
    if clip && reader.inputs[0] == y {
        let mut inputs = reader.inputs.clone();
        inputs[0] = x;
        return Some((inputs, None));
    }
    if !matches!(reader.op, Op::Add | Op::Sub | Op::Mul | Op::Div) || reader.inputs.len() != 2 {
        return None;
    }
    let k = reader.inputs.iter().position(|v| v == y)?;
    let c = graph.initializer(&reader.inputs[1 - k])?;
    let name = unique_name(graph, &format!("{}_transposed", c.name));
    let transposed = inverse_transposed(c, perm, &name)?;
    let mut inputs = reader.inputs.clone();
    inputs[k] = x;
    inputs[1 - k] = name;
    Some((inputs, Some(transposed)))
}

/// A Transpose's permutation, if it is a valid one.
fn permutation(node: &Node) -> Option<Vec<usize>> {
    if node.op != Op::Transpose {
        return None;
    }
    let perm: Vec<usize> = (node.attribute("perm")?.ints.iter())
        .map(|&p| usize::try_from(p).ok())
        .collect::<Option<_>>()?;
    let mut seen = vec![false; perm.len()];
    for &p in &perm {
        if p >= perm.len() || std::mem::replace(&mut seen[p], true) {
            return None;
        }
    }
    Some(perm)
}

/// `c` (float32, rank at most perm's, aligned to it with leading 1s) transposed by the inverse of
/// `perm`: `Op(Transpose(x, perm), c) = Transpose(Op(x, c'), perm)`.
fn inverse_transposed(c: &RawTensor, perm: &[usize], name: &str) -> Option<RawTensor> {
    let n = perm.len();
    if c.dtype != DType::F32 || c.shape.len() > n || c.len() != c.shape.iter().product::<usize>() {
        return None;
    }
    let mut aligned = vec![1; n - c.shape.len()];
    aligned.extend(&c.shape);
    // c'.shape[perm[k]] = aligned[k]; c'[j] = c[i] where i[k] = j[perm[k]].
    let mut shape = vec![0; n];
    for k in 0..n {
        shape[perm[k]] = aligned[k];
    }
    let strides = |s: &[usize]| -> Vec<usize> {
        let mut st = vec![1; s.len()];
        for k in (0..s.len().saturating_sub(1)).rev() {
            st[k] = st[k + 1] * s[k + 1];
        }
        st
    };
    let (from, to) = (strides(&aligned), strides(&shape));
    let values = c.f32s();
    let mut out = vec![0f32; values.len()];
    for (flat, &v) in values.iter().enumerate() {
        let j: usize = (0..n)
            .map(|k| (flat / from[k]) % aligned[k] * to[perm[k]])
            .sum();
        out[j] = v;
    }
    Some(RawTensor::from_f32s(name, &shape, &out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::ValueInfo;
    use zeropoint_onnx::DType;

    /// Two Transposes that cancel, once in order and once with the reader listed first (a graph
    /// the loader would have sorted, or refused for a value written twice): the first cancels,
    /// the second is left as it is rather than indexed past the end.
    #[test]
    fn a_transpose_moves_only_toward_a_later_reader() {
        let transpose = |name: &str, x: &str, y: &str, perm: &[i64]| {
            let mut n = Node::new(name, Op::Transpose, &[x], &[y]);
            n.attributes = vec![ints_attribute("perm", perm)];
            n
        };
        let graph = |nodes: Vec<Node>| Graph {
            source: "t.onnx".into(),
            opset: 13,
            inputs: vec![],
            outputs: vec![ValueInfo {
                name: "z".into(),
                dtype: Some(DType::F32),
                shape: None,
            }],
            initializers: vec![],
            nodes,
        };
        let first = transpose("first", "x", "t", &[0, 2, 3, 1]);
        let relu = Node::new("relu", Op::Relu, &["t"], &["r"]);
        let back = transpose("back", "r", "u", &[0, 3, 1, 2]);
        let last = Node::new("last", Op::Neg, &["u"], &["z"]);
        let mut sorted = graph(vec![
            first.clone(),
            relu.clone(),
            back.clone(),
            last.clone(),
        ]);
        assert_eq!(sink_transposes(&mut sorted), 2);
        let ops: Vec<&Op> = sorted.nodes.iter().map(|n| &n.op).collect();
        assert_eq!(ops, [&Op::Relu, &Op::Neg]);
        let mut unsorted = graph(vec![back, relu, first, last]);
        assert_eq!(sink_transposes(&mut unsorted), 0);
        assert_eq!(unsorted.nodes.len(), 4);
    }
}
