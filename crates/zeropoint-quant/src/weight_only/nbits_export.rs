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
//! A float weight another node still reads is kept; otherwise the codes replace it (the graph's
//! dead-value removal drops it).

use std::collections::HashMap;

use zeropoint_graph::canonicalize::remove_dead;
use zeropoint_graph::graph::{int_attribute, Names};
use zeropoint_graph::{Graph, Node, Op};
use zeropoint_onnx::proto::OperatorSetIdProto;
use zeropoint_onnx::{DType, ModelProto, RawTensor};

use crate::error::Result;
use crate::weight_only::blocks::BlockWeights;
use crate::weight_only::{transpose, Format, Site};

/// The domain of ONNX Runtime's contrib operators.
pub const MS_DOMAIN: &str = "com.microsoft";

/// `g` with each site's weight replaced by its quantized form; the float weights no node reads
/// any more are dropped.
pub fn rewrite(
    mut g: Graph,
    sites: &[Site],
    mut quantized: HashMap<String, BlockWeights>,
    format: Format,
    accuracy_level: Option<i64>,
) -> Result<Graph> {
    let mut names = Names::new(&g);
    // Each weight's new initializers, once however many layers share it (a tied table and LM
    // head share the codes but not the layout: one set per operator kind).
    let mut written: HashMap<(String, bool), Vec<String>> = HashMap::new();
    let mut dequantized: HashMap<String, String> = HashMap::new();
    let mut added = Vec::new();
    for (i, site) in sites.iter().enumerate() {
        let q = &quantized[&site.weight];
        let gather = site.op == Op::Gather;
        let key = (site.weight.clone(), gather);
        if !written.contains_key(&key) {
            let (tensors, inputs) = match format {
                Format::MatMulNBits if gather => gather_tensors(&site.weight, q, &mut names),
                Format::MatMulNBits => nbits_tensors(&site.weight, q, &mut names),
                Format::Qdq => qdq_tensors(site, q, &mut names),
            };
            g.initializers.extend(tensors);
            written.insert(key.clone(), inputs);
        }
        let tensors = &written[&key];
        let node = &mut g.nodes[site.node];
        match (format, gather) {
            (Format::MatMulNBits, false) => {
                *node = matmul_nbits(node, site, q, tensors);
                if let Some(level) = accuracy_level {
                    node.attributes.push(int_attribute("accuracy_level", level));
                }
            }
            (Format::MatMulNBits, true) => *node = gather_block_quantized(node, q, tensors),
            (Format::Qdq, false) => {
                let out = dequantized.entry(site.weight.clone()).or_insert_with(|| {
                    let axis = i64::from(site.transposed);
                    let dq = dequantize(&site.weight, tensors, axis, q, &mut names);
                    let out = dq.outputs[0].clone();
                    added.push(dq);
                    out
                });
                node.inputs[1] = out.clone();
            }
            (Format::Qdq, true) => {
                let mut nodes = gather_dequantize(node, q, tensors, &mut names);
                // The DequantizeLinear producing the Gather's output takes its place.
                *node = nodes
                    .pop()
                    .expect("the gathers end with their DequantizeLinear");
                added.extend(nodes);
            }
        }
        if !sites[i + 1..].iter().any(|s| s.weight == site.weight) {
            quantized.remove(&site.weight);
            release_float(&mut g, &site.weight);
        }
    }
    g.nodes.extend(added);
    g.sort()?;
    remove_dead(&mut g);
    Ok(g)
}

/// Frees the float data of `weight` once no node reads it (its last layer rewritten), instead of
/// at the end: a 0.5B decoder's 2.5 GB of float weights were held beside all of their codes.
/// The emptied initializer is dead, and goes with the others after the rewrite.
fn release_float(g: &mut Graph, weight: &str) {
    let read = (g.nodes.iter()).any(|n| n.reads().iter().any(|r| r == weight));
    if read || g.outputs.iter().any(|o| o.name == weight) {
        return;
    }
    if let Some(t) = g.initializers.iter_mut().find(|t| t.name == weight) {
        t.data = Vec::new();
    }
}

/// The model of a rewritten graph, written into `base`; ONNX Runtime's domain is imported when
/// a node uses it.
pub fn to_model(g: Graph, base: &ModelProto) -> Result<ModelProto> {
    let contrib = g.nodes.iter().any(|n| n.domain == MS_DOMAIN);
    let mut model = g.into_model(base)?;
    if contrib && !model.opset_import.iter().any(|o| o.domain() == MS_DOMAIN) {
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
    let name = names.fresh(&format!("{weight}_zero_points"));
    if !q.integral_zeros() {
        let zeros = transpose(&q.zeros, blocks, n);
        tensors.push(RawTensor::from_f32s(name, &[n * blocks], &zeros));
    } else if let Some((packed, _)) = packed_zeros(q) {
        tensors.push(RawTensor {
            name,
            shape: vec![packed.len()],
            dtype: DType::U8,
            data: packed,
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

/// The integer weight, its scale and zero-point, in the weight's own layout (a transposed
/// weight, `[N, K]`, has its blocks along axis 1); 4-bit types except for tables, which Gather
/// reads.
fn qdq_tensors(site: &Site, q: &BlockWeights, names: &mut Names) -> (Vec<RawTensor>, Vec<String>) {
    let (k, n, blocks) = (q.k, q.n, q.blocks());
    let symmetric = q.scheme.symmetric;
    let shift = if symmetric {
        1i64 << (q.scheme.bits - 1)
    } else {
        0
    };
    // ONNX's Gather takes no 4-bit types: a table's codes take a byte each.
    let nibbles = q.scheme.bits <= 4 && site.op != Op::Gather;
    let (code_ty, zero_ty) = match (nibbles, symmetric) {
        (true, true) => (DType::I4, None),
        (true, false) => (DType::U4, Some(DType::U4)),
        (false, true) => (DType::I8, None),
        (false, false) => (DType::U8, Some(DType::U8)),
    };
    let codes: Vec<i64> = q.codes.iter().map(|&c| i64::from(c) - shift).collect();
    let zeros: Vec<i64> = q.zeros.iter().map(|&z| z as i64).collect();
    let (codes, scales, zeros, shape, pshape) = if site.transposed {
        (
            transpose(&codes, k, n),
            transpose(&q.scales, blocks, n),
            transpose(&zeros, blocks, n),
            [n, k],
            [n, blocks],
        )
    } else {
        (codes, q.scales.clone(), zeros, [k, n], [blocks, n])
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
    let inputs = tensors.iter().map(|t| t.name.clone()).collect();
    (tensors, inputs)
}

/// The DequantizeLinear of blocked codes `inputs` (codes, scale [, zero-point]) along `axis`.
fn dequantize(
    base: &str,
    inputs: &[String],
    axis: i64,
    q: &BlockWeights,
    names: &mut Names,
) -> Node {
    let out = names.fresh(&format!("{base}_dequantized"));
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let mut dq = Node::new(
        names.fresh(&format!("{base}_DequantizeLinear")),
        Op::DequantizeLinear,
        &inputs,
        &[&out],
    );
    dq.attributes = vec![
        int_attribute("axis", axis),
        int_attribute("block_size", q.scheme.block as i64),
    ];
    dq
}

/// A Gather of rows of a blocked table in standard operators: the rows' codes, scales and
/// zero-points gathered, then dequantized along the last axis, so that only the rows read are.
fn gather_dequantize(
    node: &Node,
    q: &BlockWeights,
    tensors: &[String],
    names: &mut Names,
) -> Vec<Node> {
    let indices = node.inputs[1].as_str();
    let mut nodes = Vec::new();
    let mut gathered = Vec::new();
    for t in tensors {
        let out = names.fresh(&format!("{t}_rows"));
        nodes.push(Node::new(
            names.fresh(&format!("{}_{t}", node.name)),
            Op::Gather,
            &[t, indices],
            &[&out],
        ));
        gathered.push(out);
    }
    let mut dq = dequantize(&node.name, &gathered, -1, q, names);
    dq.outputs = node.outputs.clone();
    nodes.push(dq);
    nodes
}

/// GatherBlockQuantized's data `[rows, ⌈K·bits/8⌉]`, scales `[rows, blocks]` and zero points
/// `[rows, ⌈blocks·bits/8⌉]` (absent when every zero is the 2^(bits−1) it assumes).
fn gather_tensors(
    weight: &str,
    q: &BlockWeights,
    names: &mut Names,
) -> (Vec<RawTensor>, Vec<String>) {
    let (rows, blocks, bits) = (q.n, q.blocks(), q.scheme.bits as usize);
    let width = (q.k * bits).div_ceil(8);
    let mut data = vec![0u8; rows * width];
    for (r, out) in data.chunks_mut(width).enumerate() {
        for t in 0..q.k {
            out[t * bits / 8] |= q.codes[t * rows + r] << ((t * bits) % 8);
        }
    }
    let scales = transpose(&q.scales, blocks, rows);
    let mut tensors = vec![
        RawTensor {
            name: names.fresh(&format!("{weight}_gather_data")),
            shape: vec![rows, width],
            dtype: DType::U8,
            data,
        },
        RawTensor::from_f32s(
            names.fresh(&format!("{weight}_gather_scales")),
            &[rows, blocks],
            &scales,
        ),
    ];
    if let Some((packed, per_row)) = packed_zeros(q) {
        let name = names.fresh(&format!("{weight}_gather_zero_points"));
        tensors.push(RawTensor {
            name,
            shape: vec![rows, per_row],
            dtype: DType::U8,
            data: packed,
        });
    }
    let inputs = tensors.iter().map(|t| t.name.clone()).collect();
    (tensors, inputs)
}

/// The integer zeros per output (row of the `[N, blocks]` transpose), packed low bits first,
/// and the bytes per output; None when every zero is 2^(bits−1), the operators' default.
fn packed_zeros(q: &BlockWeights) -> Option<(Vec<u8>, usize)> {
    let (n, blocks, bits) = (q.n, q.blocks(), q.scheme.bits as usize);
    let middle = (1u32 << (bits - 1)) as f32;
    if q.zeros.iter().all(|&z| z == middle) {
        return None;
    }
    let zeros = transpose(&q.zeros, blocks, n);
    let per = (blocks * bits).div_ceil(8);
    let mut packed = vec![0u8; n * per];
    for (i, z) in zeros.iter().enumerate() {
        let (j, b) = (i / blocks, i % blocks);
        packed[j * per + b * bits / 8] |= (*z as u8) << ((b * bits) % 8);
    }
    Some((packed, per))
}

/// The GatherBlockQuantized node replacing a Gather of rows.
fn gather_block_quantized(node: &Node, q: &BlockWeights, tensors: &[String]) -> Node {
    let mut inputs = vec![tensors[0].clone(), node.inputs[1].clone()];
    inputs.extend(tensors[1..].iter().cloned());
    Node {
        name: node.name.clone(),
        op: Op::Other("GatherBlockQuantized".into()),
        domain: MS_DOMAIN.into(),
        inputs,
        outputs: node.outputs.clone(),
        attributes: vec![
            int_attribute("gather_axis", 0),
            int_attribute("quantize_axis", 1),
            int_attribute("block_size", q.scheme.block as i64),
            int_attribute("bits", q.scheme.bits as i64),
        ],
        subgraphs: vec![],
    }
}
