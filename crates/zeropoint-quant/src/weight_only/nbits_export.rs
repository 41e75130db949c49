//! Writes weight-only quantized layers in one of two forms:
//!
//! - **MatMulNBits** (ONNX Runtime's `com.microsoft` domain): the layer becomes one node with
//!   `B` as uint8 `[N, blocks, block·bits/8]` (each output column's codes along K, packed
//!   low bits first), `scales` `[N·blocks]`, `zero_points` packed the same way per column (or
//!   float `[N·blocks]` for HQQ's fractional zeros; absent for symmetric grids, whose zero is
//!   the 2^(bits−1) the operator assumes), and a Gemm's C as `bias`.
//! - **QDQ**: the integer weight in the layer's own layout with a blocked DequantizeLinear
//!   (opset 21, `axis` the K axis, `block_size`) feeding the unchanged layer. Symmetric grids
//!   store signed codes without a zero-point.
//!
//! A float weight another node still reads is kept; otherwise the codes replace it.

use std::collections::{HashMap, HashSet};

use zeropoint_graph::graph::{int_attribute, Names};
use zeropoint_graph::{Graph, Node, Op};
use zeropoint_onnx::proto::OperatorSetIdProto;
use zeropoint_onnx::{DType, ModelProto, RawTensor};

use crate::error::Result;
use crate::weight_only::blocks::BlockWeights;
use crate::weight_only::{transpose, Format, Site};

/// The domain of ONNX Runtime's contrib operators.
const MS_DOMAIN: &str = "com.microsoft";

/// The model with each site's weight replaced by its quantized form.
pub fn export(
    graph: &Graph,
    sites: &[Site],
    quantized: &HashMap<String, BlockWeights>,
    format: Format,
    base: &ModelProto,
) -> Result<ModelProto> {
    let mut names = Names::new(graph);
    let mut g = graph.clone();
    let site_nodes: HashSet<usize> = sites.iter().map(|s| s.node).collect();
    let still_read: HashSet<String> = (graph.nodes.iter().enumerate())
        .filter(|(i, _)| !site_nodes.contains(i))
        .flat_map(|(_, n)| n.reads())
        .chain(graph.outputs.iter().map(|o| o.name.clone()))
        .collect();
    g.initializers
        .retain(|t| !quantized.contains_key(&t.name) || still_read.contains(&t.name));
    // Each weight's new initializers (and for QDQ its DequantizeLinear), once however many
    // layers share it.
    let mut written: HashMap<String, Vec<String>> = HashMap::new();
    let mut dequantizers = Vec::new();
    for site in sites {
        let q = &quantized[&site.weight];
        let inputs = match written.get(&site.weight) {
            Some(i) => i.clone(),
            None => {
                let (tensors, i) = match format {
                    Format::MatMulNBits => nbits_tensors(&site.weight, q, &mut names),
                    Format::Qdq => {
                        let (t, dq) = qdq_tensors(site, q, &mut names);
                        let out = dq.outputs[0].clone();
                        dequantizers.push(dq);
                        (t, vec![out])
                    }
                };
                g.initializers.extend(tensors);
                written.insert(site.weight.clone(), i.clone());
                i
            }
        };
        let node = &mut g.nodes[site.node];
        match format {
            Format::MatMulNBits => *node = matmul_nbits(node, site, q, &inputs),
            Format::Qdq => node.inputs[1] = inputs[0].clone(),
        }
    }
    g.nodes.extend(dequantizers);
    g.sort()?;
    let mut model = g.into_model(base)?;
    if format == Format::MatMulNBits && !model.opset_import.iter().any(|o| o.domain() == MS_DOMAIN)
    {
        model.opset_import.push(OperatorSetIdProto {
            domain: Some(MS_DOMAIN.into()),
            version: Some(1),
        });
    }
    Ok(model)
}

/// Bytes the quantized weight takes: codes, scales and stored zeros.
pub fn bytes(q: &BlockWeights) -> usize {
    let params = q.blocks() * q.n;
    let zeros = if q.scheme.symmetric {
        0
    } else if q.integral_zeros() {
        (params * q.scheme.bits as usize).div_ceil(8)
    } else {
        params * 4
    };
    (q.k * q.n * q.scheme.bits as usize).div_ceil(8) + params * 4 + zeros
}

/// MatMulNBits' B, scales and zero_points for `q` (names of the inputs, "" for no zero points).
fn nbits_tensors(
    weight: &str,
    q: &BlockWeights,
    names: &mut Names,
) -> (Vec<RawTensor>, Vec<String>) {
    let (n, blocks, bits) = (q.n, q.blocks(), q.scheme.bits as usize);
    let block = q.scheme.block;
    let blob = block * bits / 8;
    let mut b = vec![0u8; n * blocks * blob];
    for j in 0..n {
        for bl in 0..blocks {
            let zero = q.zeros[bl * n + j].round().clamp(0.0, q.scheme.qmax()) as u8;
            let out = &mut b[(j * blocks + bl) * blob..(j * blocks + bl + 1) * blob];
            for t in 0..block {
                let row = bl * block + t;
                // Past K the block is padded with the zero's code: a weight of exactly 0.
                let c = if row < q.k {
                    q.codes[row * n + j]
                } else {
                    zero
                };
                out[t * bits / 8] |= c << ((t * bits) % 8);
            }
        }
    }
    let scales = transpose(&q.scales, blocks, n);
    let mut tensors = vec![
        RawTensor {
            name: names.fresh(&format!("{weight}_nbits")),
            shape: vec![n, blocks, blob],
            dtype: DType::U8,
            data: b,
        },
        RawTensor::from_f32s(
            names.fresh(&format!("{weight}_scales")),
            &[n * blocks],
            &scales,
        ),
    ];
    let middle = (1u32 << (bits - 1)) as f32;
    if q.zeros.iter().any(|&z| z != middle) {
        let zeros = transpose(&q.zeros, blocks, n);
        let name = names.fresh(&format!("{weight}_zero_points"));
        tensors.push(if q.integral_zeros() {
            let per_column = (blocks * bits).div_ceil(8);
            let mut packed = vec![0u8; n * per_column];
            for (i, z) in zeros.iter().enumerate() {
                let (j, bl) = (i / blocks, i % blocks);
                packed[j * per_column + bl * bits / 8] |= (*z as u8) << ((bl * bits) % 8);
            }
            RawTensor {
                name,
                shape: vec![n * per_column],
                dtype: DType::U8,
                data: packed,
            }
        } else {
            RawTensor::from_f32s(name, &[n * blocks], &zeros)
        });
    }
    let inputs = tensors.iter().map(|t| t.name.clone()).collect();
    (tensors, inputs)
}

/// The MatMulNBits node replacing `node` (a MatMul, or a Gemm whose C becomes the bias).
fn matmul_nbits(node: &Node, site: &Site, q: &BlockWeights, tensors: &[String]) -> Node {
    let mut inputs = vec![node.inputs[0].clone()];
    inputs.extend(tensors.iter().cloned());
    let bias = node.inputs.get(2).filter(|c| !c.is_empty());
    if let Some(c) = bias {
        inputs.resize(4, String::new()); // zero_points may be absent
        inputs.push(String::new()); // g_idx
        inputs.push(c.clone());
    }
    Node {
        name: node.name.clone(),
        op: Op::Other("MatMulNBits".into()),
        domain: MS_DOMAIN.into(),
        inputs,
        outputs: node.outputs.clone(),
        attributes: vec![
            int_attribute("K", site.k as i64),
            int_attribute("N", site.n as i64),
            int_attribute("bits", q.scheme.bits as i64),
            int_attribute("block_size", q.scheme.block as i64),
        ],
        subgraphs: vec![],
    }
}

/// The integer weight, its scale and zero-point (in the weight's own layout), and the
/// DequantizeLinear giving the float weight back.
fn qdq_tensors(site: &Site, q: &BlockWeights, names: &mut Names) -> (Vec<RawTensor>, Node) {
    let (k, n, blocks) = (q.k, q.n, q.blocks());
    let symmetric = q.scheme.symmetric;
    let shift = if symmetric {
        1i64 << (q.scheme.bits - 1)
    } else {
        0
    };
    let (code_ty, zero_ty) = match (q.scheme.bits <= 4, symmetric) {
        (true, true) => (DType::I4, None),
        (true, false) => (DType::U4, Some(DType::U4)),
        (false, true) => (DType::I8, None),
        (false, false) => (DType::U8, Some(DType::U8)),
    };
    let codes: Vec<i64> = q.codes.iter().map(|&c| i64::from(c) - shift).collect();
    let zeros: Vec<i64> = q.zeros.iter().map(|&z| z as i64).collect();
    // A transposed Gemm weight is stored [N, K]: its blocks run along axis 1.
    let (codes, scales, zeros, shape, pshape, axis) = if site.transposed {
        (
            transpose(&codes, k, n),
            transpose(&q.scales, blocks, n),
            transpose(&zeros, blocks, n),
            [n, k],
            [n, blocks],
            1,
        )
    } else {
        (codes, q.scales.clone(), zeros, [k, n], [blocks, n], 0)
    };
    let w = &site.weight;
    let mut tensors = vec![
        RawTensor::from_i64s(
            names.fresh(&format!("{w}_quantized")),
            &shape,
            &codes,
            code_ty,
        ),
        RawTensor::from_f32s(names.fresh(&format!("{w}_scale")), &pshape, &scales),
    ];
    if let Some(ty) = zero_ty {
        let name = names.fresh(&format!("{w}_zero_point"));
        tensors.push(RawTensor::from_i64s(name, &pshape, &zeros, ty));
    }
    let inputs: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let out = names.fresh(&format!("{w}_dequantized"));
    let mut dq = Node::new(
        names.fresh(&format!("{w}_DequantizeLinear")),
        Op::DequantizeLinear,
        &inputs,
        &[&out],
    );
    dq.attributes = vec![
        int_attribute("axis", axis),
        int_attribute("block_size", q.scheme.block as i64),
    ];
    (tensors, dq)
}
