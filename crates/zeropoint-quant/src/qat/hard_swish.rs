//! HardSwish as quantization-aware training runs it. Quantization rewrites each HardSwish as
//! x · HardSigmoid(x) with a fake-quantized gate (`canonicalize::decompose_hard_swish`), so that
//! the product is an integer Mul in the export. Run as the graph's three candle ops (the clamp,
//! the gate's fake quantizer, the product) the gate took seven tensor-sized passes over memory
//! forward and fifteen backward; here the HardSigmoid and the Mul become one op,
//! y = x · fq(h(x)), that takes one pass forward and one backward (the backward keeps a chunk's
//! gate in cache between the quantizer's sums and ∂x).
//!
//! The arithmetic is the three ops', operation by operation: the engine's HardSigmoid and its
//! gradient ([`HardSigmoid`]), the fake quantizer's rounding, lanes and chunked sums,
//! the product's ∂x = ∂y·fq(h) and ∂gate = ∂y·x. A model trains to the same bits either way.
//!
//! The graph is not changed: the trainer runs it with a node hook ([`Gates::run`]) that answers
//! for the two nodes.

use std::collections::{HashMap, HashSet};
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use zeropoint_engine::exec::HookError;
use zeropoint_engine::ops::{Cx, HardSigmoid};
use zeropoint_engine::Value;
use zeropoint_graph::{Graph, Node, Op};
use zeropoint_onnx::DType;

use crate::qat::fake_quant::{f32_storages, quantized, zero_point, FakeQuant, Quantizer};

/// The HardSigmoid → Mul pairs of a graph that run as one op, by the output each node writes.
#[derive(Default)]
pub(crate) struct Gates {
    /// The HardSigmoid nodes' gates: the product computes them, so nothing else does.
    gates: HashSet<String>,
    /// The products, with the HardSigmoid node and the gate each multiplies by.
    products: HashMap<String, Gate>,
}

struct Gate {
    sigmoid: Node,
    /// The gate's value (its quantizer's name).
    value: String,
}

impl Gates {
    /// The pairs of `graph`: a HardSigmoid of x whose gate, quantized (`has_quantizer`), goes
    /// only to a Mul of x and the gate.
    pub(crate) fn of(graph: &Graph, has_quantizer: impl Fn(&str) -> bool) -> Gates {
        let consumers = graph.consumers();
        let outputs: Vec<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
        let mut gates = Gates::default();
        for node in &graph.nodes {
            let ([x], [gate]) = (node.inputs.as_slice(), node.outputs.as_slice()) else {
                continue;
            };
            if node.op != Op::HardSigmoid
                || !has_quantizer(gate)
                || outputs.contains(&gate.as_str())
            {
                continue;
            }
            let Some([only]) = consumers.get(gate).map(Vec::as_slice) else {
                continue;
            };
            let product = &graph.nodes[*only];
            let mut operands = product.inputs.clone();
            operands.sort();
            let mut pair = vec![x.clone(), gate.clone()];
            pair.sort();
            if product.op != Op::Mul || operands != pair || product.outputs.len() != 1 {
                continue;
            }
            gates.gates.insert(gate.clone());
            gates.products.insert(
                product.outputs[0].clone(),
                Gate {
                    sigmoid: node.clone(),
                    value: gate.clone(),
                },
            );
        }
        gates
    }

    /// Whether `value` is a gate the product computes (the placeholder [`Gates::run`] gives it
    /// is not to be quantized).
    pub(crate) fn is_gate(&self, value: &str) -> bool {
        self.gates.contains(value)
    }

    /// The node hook: a pair's HardSigmoid gives its input as a placeholder for the gate, its
    /// Mul gives x · fq(h(x)) from `quantizer` of the gate; None for any other node. A pair
    /// whose x is not float32 or whose gate has no quantizer is an error, not a product with
    /// the placeholder.
    pub(crate) fn run<'q>(
        &self,
        node: &Node,
        args: &[Option<Value>],
        quantizer: impl Fn(&str) -> Option<Quantizer<'q>>,
    ) -> Option<std::result::Result<Vec<Value>, HookError>> {
        let out = node.outputs.first()?;
        if self.is_gate(out) {
            return Some(
                args.first()?
                    .clone()
                    .map(|x| vec![x])
                    .ok_or_else(|| "missing input".into()),
            );
        }
        let gate = self.products.get(out)?;
        let x = node
            .inputs
            .iter()
            .zip(args)
            .find(|(name, _)| **name == gate.sigmoid.inputs[0])
            .and_then(|(_, v)| v.as_ref());
        Some(match (x, quantizer(&gate.value)) {
            (Some(x), Some(q)) if x.dtype == DType::F32 => hard_swish(&x.tensor, &gate.sigmoid, &q)
                .map(|y| vec![Value::new(y, DType::F32)])
                .map_err(Into::into),
            _ => Err(format!(
                "fused HardSwish: '{}' is not float32 or gate '{}' has no quantizer",
                gate.sigmoid.inputs[0], gate.value
            )
            .into()),
        })
    }
}

/// x · fq(h(x)) for HardSigmoid node `sigmoid` (its α and β) and the gate's quantizer `q`.
fn hard_swish(x: &Tensor, sigmoid: &Node, q: &Quantizer) -> Result<Tensor> {
    let cx = Cx {
        node: sigmoid,
        inputs: &[],
        opset: 0,
    };
    let h = HardSigmoid::of(&cx).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let op = QuantizedHardSwish {
        h,
        fq: FakeQuant::new(x.dims(), q)?,
    };
    x.contiguous()?.apply_op3(q.scale, &zero_point(q)?, op)
}

/// The candle op: arguments x, the gate's scale and zero-point.
struct QuantizedHardSwish {
    h: HardSigmoid,
    fq: FakeQuant,
}

impl QuantizedHardSwish {
    fn forward(&self, x: &[f32], s: &[f32], z: &[f32]) -> Vec<f32> {
        let h = self.h;
        self.fq.map_runs(
            (x, s, z),
            #[inline(always)]
            |y, x, s, bounds| {
                for (y, &x) in y.iter_mut().zip(x) {
                    y.write(x * quantized(h.value(x), s, bounds));
                }
            },
        )
    }

    /// ∂x, and the gate quantizer's sums as [`FakeQuant::backward`] returns them. Per run, the
    /// gate h and its incoming gradient ∂y·x are computed into buffers the size of the run
    /// (a chunk at most), the quantizer's lanes turn them into ∂h and the sums, and
    /// ∂x = ∂y·fq(h) + h'(x; ∂h).
    fn backward(
        &self,
        x: &[f32],
        s: &[f32],
        z: &[f32],
        g: &[f32],
    ) -> (Vec<f32>, Vec<f64>, Vec<f64>) {
        let h = self.h;
        self.fq.backward_runs(
            (x, s, z, g),
            #[inline(always)]
            |dx, x, g, s, bounds| {
                let gate: Vec<f32> = x.iter().map(|&x| h.value(x)).collect();
                let gate_grad: Vec<f32> = g.iter().zip(x).map(|(&g, &x)| g * x).collect();
                let mut d_gate = vec![MaybeUninit::<f32>::uninit(); x.len()];
                let sums = FakeQuant::element_sums((&gate, &gate_grad, &mut d_gate), s, bounds);
                // Zipped, not indexed: the loop vectorizes.
                let inputs = g.iter().zip(x).zip(&gate).zip(&d_gate);
                for (dx, (((&g, &x), &gate), d)) in dx.iter_mut().zip(inputs) {
                    // SAFETY: element_sums wrote each element of its run.
                    let d = unsafe { d.assume_init() };
                    dx.write(g * quantized(gate, s, bounds) + h.grad(x, d));
                }
                sums
            },
        )
    }
}

impl CustomOp3 for QuantizedHardSwish {
    fn name(&self) -> &'static str {
        "quantized-hard-swish"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        s: &CpuStorage,
        ls: &Layout,
        z: &CpuStorage,
        lz: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [x, s, z] = f32_storages([(x, lx), (s, ls), (z, lz)])?;
        if s.len() != 1 || z.len() != 1 {
            candle_core::bail!("quantized HardSwish: the gate's quantizer is not per tensor");
        }
        Ok((CpuStorage::F32(self.forward(x, s, z)), lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        s: &Tensor,
        z: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        (self.fq).gradients((x, s, z, grad), |x, s, z, g| self.backward(x, s, z, g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qat::fake_quant::{fake_quant, CHUNK};
    use candle_core::{Device, Var};
    use zeropoint_engine::Executor;
    use zeropoint_graph::graph::{float_attribute, Dim, ValueInfo};

    /// x → HardSigmoid → gate → Mul(x, gate) → y, HardSwish as quantization decomposes it.
    fn decomposed(shape: &[usize]) -> Graph {
        let mut sigmoid = Node::new("hs", Op::HardSigmoid, &["x"], &["gate"]);
        sigmoid.attributes = vec![
            float_attribute("alpha", 1.0 / 6.0),
            float_attribute("beta", 0.5),
        ];
        let value = |name: &str| ValueInfo {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: Some(shape.iter().map(|&d| Dim::Fixed(d)).collect()),
        };
        Graph {
            source: "hard_swish.onnx".into(),
            opset: 13,
            inputs: vec![value("x")],
            outputs: vec![value("y")],
            initializers: vec![],
            nodes: vec![sigmoid, Node::new("m", Op::Mul, &["x", "gate"], &["y"])],
        }
    }

    /// The fused op gives the bits of the graph's three ops (HardSigmoid, the gate's fake
    /// quantizer, Mul): y, ∂x, ∂scale and ∂zero-point, over two chunks and a ragged tail, on
    /// HardSigmoid's kinks (x = ±3), gate codes on and past the grid's top, and ties.
    #[test]
    fn the_fused_op_is_the_three_ops() {
        let shape = [3, 5, 37, 41];
        let n: usize = shape.iter().product();
        assert!(n > CHUNK && !n.is_multiple_of(8));
        let x: Vec<f32> = (0..n)
            .map(|i| match i % 9 {
                0 => 3.0,
                1 => -3.0,
                2 => (i % 64) as f32 * 0.0625 - 2.0, // gate codes on ties: h = x/6 + 0.5
                _ => ((i * 7919) % 2000) as f32 * 0.004 - 4.0,
            })
            .collect();
        let g: Vec<f32> = (0..n).map(|i| ((i * 31) % 17) as f32 * 0.1 - 0.8).collect();
        let dev = Device::Cpu;
        let graph = decomposed(&shape);
        let exec = Executor::new(&graph).unwrap();
        let run = |fuse: bool| {
            let x = Var::from_slice(&x, &shape[..], &dev).unwrap();
            let (scale, zero) = (
                Var::from_slice(&[0.05f32], 1, &dev).unwrap(),
                Var::from_slice(&[2.0f32], 1, &dev).unwrap(),
            );
            let q = || Quantizer {
                scale: scale.as_tensor(),
                zero_point: Some(zero.as_tensor()),
                qmin: 0.0,
                qmax: 15.0,
                grad_scale: 0.01,
            };
            let gates = if fuse {
                Gates::of(&graph, |v| v == "gate")
            } else {
                Gates::default()
            };
            assert_eq!(gates.products.len(), usize::from(fuse));
            let inputs = [(
                "x".to_string(),
                Value::new(x.as_tensor().clone(), DType::F32),
            )];
            let out = exec
                .run_with_nodes(
                    inputs.into_iter().collect(),
                    &mut |name, v| match name == "gate" && !gates.is_gate(name) {
                        true => Ok(Value::new(fake_quant(&v.tensor, &q())?, DType::F32)),
                        false => Ok(v),
                    },
                    &mut |node, args| gates.run(node, args, |_| Some(q())),
                )
                .unwrap();
            let y = out[0].1.tensor.clone();
            let gt = Tensor::from_slice(&g, &shape[..], &dev).unwrap();
            let grads = y.mul(&gt).unwrap().sum_all().unwrap().backward().unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v.iter().map(|v| v.to_bits()).collect()
            };
            [
                bits(&y),
                bits(grads.get(x.as_tensor()).unwrap()),
                bits(grads.get(scale.as_tensor()).unwrap()),
                bits(grads.get(zero.as_tensor()).unwrap()),
            ]
        };
        let (three, fused) = (run(false), run(true));
        for (what, (a, b)) in ["y", "∂x", "∂scale", "∂zero-point"]
            .iter()
            .zip(three.iter().zip(&fused))
        {
            assert!(a == b, "{what} differs");
        }
        let dz = f32::from_bits(fused[3][0]);
        assert!(dz != 0.0, "some gate codes are clipped");
    }

    /// A fused pair whose gate has no quantizer when it runs stops with the gate's name: the
    /// HardSigmoid has already handed on its placeholder, so running the Mul would be wrong.
    #[test]
    fn a_fused_gate_without_a_quantizer_is_an_error() {
        let graph = decomposed(&[2, 3]);
        let gates = Gates::of(&graph, |_| true);
        let exec = Executor::new(&graph).unwrap();
        let x = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let inputs = [("x".to_string(), Value::new(x, DType::F32))];
        let err = exec
            .run_with_nodes(
                inputs.into_iter().collect(),
                &mut |_, v| Ok(v),
                &mut |node, args| gates.run(node, args, |_| None),
            )
            .unwrap_err();
        let err = crate::analysis::model::with_causes(&err);
        assert!(err.contains("gate 'gate' has no quantizer"), "{err}");
    }

    /// Only a quantized gate whose one reader is the product of the same x fuses.
    #[test]
    fn only_the_decomposed_pattern_fuses() {
        let graph = decomposed(&[2, 3]);
        assert_eq!(Gates::of(&graph, |_| true).products.len(), 1);
        assert_eq!(Gates::of(&graph, |_| false).products.len(), 0);
        let mut other = graph.clone();
        other.nodes[1].inputs[0] = "w".into(); // gate · another value
        assert_eq!(Gates::of(&other, |_| true).products.len(), 0);
        let mut read = graph.clone();
        read.outputs.push(ValueInfo {
            name: "gate".into(),
            dtype: None,
            shape: None,
        });
        assert_eq!(Gates::of(&read, |_| true).products.len(), 0);
        let mut twice = graph;
        twice
            .nodes
            .push(Node::new("neg", Op::Neg, &["gate"], &["z"]));
        assert_eq!(Gates::of(&twice, |_| true).products.len(), 0);
    }
}
