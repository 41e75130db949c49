//! Recurrent initial states that are zeros by construction.
//!
//! An LSTM, GRU or RNN without `initial_h` (or an LSTM without `initial_c`) starts from zeros.
//! Exporters often build that zero state anyway, sized from the input's batch dimension:
//!
//! ```text
//! GRU(x, W, R, B, "", Slice(Expand([0.], Concat(..., Shape(x)[1], ...)), ...))
//! ```
//!
//! (paddle2onnx writes this for every recurrent layer, PyTorch's exporter a ConstantOfShape). The
//! state is then an explicit input that a runtime computes on every call: eight small ops for
//! lac-bigru's two GRUs in ONNX Runtime, about 3% of its time at one thread. Dropping the input
//! gives the same outputs, and the chain that built it, left unread, is removed by
//! `canonicalize::remove_dead`.

use std::collections::HashMap;

use zeropoint_onnx::proto::TensorProto;

use crate::{Graph, Op};

/// Clears each recurrent node's initial-state inputs that are zeros by construction; returns the
/// names of the nodes changed.
pub fn drop_zero_initial_states(graph: &mut Graph) -> Vec<String> {
    let producers = graph.producers();
    let mut cleared: Vec<(usize, usize)> = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let states: &[usize] = match node.op {
            Op::LSTM => &[5, 6],
            Op::GRU | Op::RNN => &[5],
            _ => continue,
        };
        for &at in states {
            let value = node.inputs.get(at).map(String::as_str).unwrap_or("");
            if !value.is_empty() && is_zeros(graph, &producers, value, 0) {
                cleared.push((i, at));
            }
        }
    }
    let mut changed = Vec::new();
    for (i, at) in cleared {
        let node = &mut graph.nodes[i];
        node.inputs[at].clear();
        // Trailing empty inputs are the same as absent ones; drop them so that the node reads
        // as the plain form.
        while node.inputs.last().is_some_and(String::is_empty) {
            node.inputs.pop();
        }
        if changed.last() != Some(&node.name) {
            changed.push(node.name.clone());
        }
    }
    changed
}

/// Whether `value` is all zeros whatever the graph's inputs: a zero constant, a ConstantOfShape
/// of zero, or an Expand, move or Concat of such values only. (Arithmetic is left out: 0·x is
/// NaN where x is.)
fn is_zeros(graph: &Graph, producers: &HashMap<&str, usize>, value: &str, depth: usize) -> bool {
    if let Some(t) = graph.initializer(value) {
        // −0.0 is a zero state too: it differs from +0.0 only in the sign of exact zeros.
        return match t.dtype.is_float() {
            true => t.to_f32s().iter().all(|&v| v == 0.0),
            false => t.data.iter().all(|&b| b == 0),
        };
    }
    // A state is built in a handful of steps; a deep chain is not one.
    let node = producers.get(value).map(|&i| &graph.nodes[i]);
    let Some(node) = node.filter(|_| depth <= 16) else {
        return false;
    };
    let zeros = |v: &String| is_zeros(graph, producers, v, depth + 1);
    match node.op {
        Op::ConstantOfShape => match node.attribute("value").and_then(|a| a.t.as_ref()) {
            None => true,
            Some(t) => tensor_is_zero(t),
        },
        Op::Expand
        | Op::Slice
        | Op::Reshape
        | Op::Squeeze
        | Op::Unsqueeze
        | Op::Transpose
        | Op::Identity
        | Op::Flatten
        | Op::Tile
        | Op::Cast => node.inputs.first().is_some_and(zeros),
        Op::Concat => !node.inputs.is_empty() && node.inputs.iter().all(zeros),
        _ => false,
    }
}

/// Whether a tensor attribute holds only zeros (all its bytes zero, in whichever field it uses).
fn tensor_is_zero(t: &TensorProto) -> bool {
    t.raw_data.iter().flatten().all(|&b| b == 0)
        && t.float_data.iter().all(|&v| v == 0.0)
        && t.double_data.iter().all(|&v| v == 0.0)
        && t.int32_data.iter().all(|&v| v == 0)
        && t.int64_data.iter().all(|&v| v == 0)
        && t.uint64_data.is_empty()
        && t.string_data.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Node;
    use zeropoint_onnx::RawTensor;

    /// A GRU reading `h0`, built by `producer` (if any) from the initializers `zero` (0) and
    /// `half` (0.5).
    fn gru_reading(producer: Option<Node>) -> Graph {
        let mut nodes: Vec<Node> = producer.into_iter().collect();
        nodes.push(Node::new(
            "gru",
            Op::GRU,
            &["x", "w", "r", "", "", "h0"],
            &["y"],
        ));
        Graph {
            source: "g.onnx".into(),
            opset: 13,
            inputs: Vec::new(),
            outputs: Vec::new(),
            initializers: vec![
                RawTensor::from_f32s("zero", &[1, 1, 2], &[0.0, -0.0]),
                RawTensor::from_f32s("half", &[1, 1, 2], &[0.5, 0.0]),
            ],
            nodes,
        }
    }

    #[test]
    fn only_states_zero_by_construction_are_dropped() {
        let mut g = gru_reading(Some(Node::new("t", Op::Tile, &["zero", "n"], &["h0"])));
        assert_eq!(drop_zero_initial_states(&mut g), vec!["gru"]);
        assert_eq!(g.nodes[1].inputs, vec!["x", "w", "r"]);
        // A zero initializer read directly (its −0.0 included) is dropped too.
        let mut direct = gru_reading(None);
        direct.nodes[0].inputs[5] = "zero".into();
        assert_eq!(drop_zero_initial_states(&mut direct), vec!["gru"]);
        for kept in [
            // Arithmetic on a zero can give NaN (0 · inf).
            Some(Node::new("m", Op::Mul, &["zero", "x"], &["h0"])),
            Some(Node::new("t", Op::Tile, &["half", "n"], &["h0"])),
            // A graph input: the caller's state.
            None,
        ] {
            let mut g = gru_reading(kept);
            assert!(drop_zero_initial_states(&mut g).is_empty());
            assert_eq!(g.nodes.last().unwrap().inputs.len(), 6);
        }
    }
}
