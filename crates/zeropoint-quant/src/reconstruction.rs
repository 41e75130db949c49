//! Each layer's reconstruction problem, as AdaRound (crate::adaround) and the output-fitted
//! weight ranges (crate::output_ranges) pose it: the layer's weight as one matrix per group,
//! and its input as columns (a convolution's im2col rows, a dense layer's input rows), taken
//! from the float model and from the simulated quantized one, layer after layer in graph order.
//!
//! [`walk`] steps every sample's float and simulated runs from layer to layer together, kept on
//! disk in between ([`crate::paused_runs`]): memory holds a few samples' activations and one
//! layer's columns, whatever the number of samples. Each layer is fitted on everyone's columns,
//! and the simulation goes on with the weight the fit returns, so that each layer's input x̃
//! carries the error of every earlier layer as fitted (the asymmetric reconstruction of
//! AdaRound's §3.3).

use candle_core::{Device, Tensor};
use zeropoint_core::{QParams, Scheme};
use zeropoint_engine::exec::Paused;
use zeropoint_engine::{Executor, Value};
use zeropoint_graph::pattern::fused_groups;
use zeropoint_graph::{Graph, Node, Op};
use zeropoint_onnx::RawTensor;

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::params::Params;
use crate::paused_runs::PausedRuns;
use crate::placement::Plan;
use crate::simulate::Simulation;

/// Where a layer's inputs come from and how many of them are kept.
#[derive(Debug, Clone, Copy)]
pub struct Inputs {
    /// x̃ from the quantized model with its activation quantizers (as deployed), or with its
    /// weights quantized only (as AIMET's AdaRound takes it).
    pub quantized: bool,
    /// Columns kept per layer, over all samples.
    pub max_columns: usize,
}

/// A layer's fit in [`walk`]: from the layer and its input columns, the initializers the
/// simulation goes on with and what the caller keeps.
pub type Fit<'a, T> = dyn FnMut(&Layer, Vec<Part>) -> Result<(Vec<RawTensor>, T)> + 'a;

/// Fits every layer of `layers` (from [`layers`]) in turn on `data` (one batch of the model's
/// smallest batch size per sample, read as the runs start): `fit(layer, parts)` gets every
/// sample's columns of the layer's input, float and simulated, and returns the initializers the
/// simulation is to go on with (the layer's weight on its grid, which is not quantized again;
/// its bias where the fit changed it), with what the caller keeps. The simulation starts with
/// `params`. `on_layer(done, total, kept)` is called as each layer is fitted.
pub fn walk<T>(
    graph: &Graph,
    layers: &[Layer],
    params: &Params,
    data: Dataset,
    inputs: Inputs,
    fit: &mut Fit<'_, T>,
    on_layer: &mut dyn FnMut(usize, usize, &T),
) -> Result<Vec<T>> {
    let mut fitted = Vec::with_capacity(layers.len());
    if layers.is_empty() || data.len == 0 {
        return Ok(fitted);
    }
    let weights_only;
    let sim_params = if inputs.quantized {
        params
    } else {
        weights_only = Params {
            activations: Vec::new(),
            ..params.clone()
        };
        &weights_only
    };
    let float = Executor::new(graph)?;
    let mut sim = Simulation::sharing(graph, sim_params, float.initializer_values())?;
    let mut runs = PausedRuns::start(&float, &sim, data)?;
    let take = (inputs.max_columns / runs.samples().max(1)).max(1);
    for layer in layers {
        let parts = runs.step(&float, &sim, layer.index, |f, q| {
            let (xf, xq) = (input_of(layer, f)?, input_of(layer, q)?);
            (0..matrix_dims(layer).0)
                .map(|g| Ok((columns(layer, xf, g, take)?, columns(layer, xq, g, take)?)))
                .collect::<Result<Part>>()
        })?;
        let (initializers, kept) = fit(layer, parts)?;
        on_layer(fitted.len() + 1, layers.len(), &kept);
        for t in &initializers {
            sim.set_weight(t)?;
        }
        fitted.push(kept);
    }
    Ok(fitted)
}

/// A layer with a planned weight, and how its weight and input map onto matrices.
#[derive(Clone)]
pub struct Layer {
    /// The node's index in the graph.
    pub index: usize,
    pub node: Node,
    pub weight: RawTensor,
    pub scheme: Scheme,
    pub qparams: QParams,
    /// The bias and the Relu or Clip fused into the layer, if it has such an activation.
    pub activation: Option<Activation>,
    shape: LayerShape,
}

/// The bias and the Relu or Clip that runtimes fuse into a layer
/// ([`zeropoint_graph::pattern::fused_groups`]), nothing quantized between them: the layer's
/// output as the next quantizer sees it is clamp(W·x + b, lo, hi). AdaRound compares outputs
/// there, as its paper's final objective does (eq. 25, ‖f(W·x) − f(W̃·x̃)‖²): an error the
/// activation clips away costs nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Activation {
    /// One per output channel over all groups, zero where the layer has no bias.
    pub bias: Vec<f32>,
    /// The clamp's bounds: Relu's are 0 and +∞.
    pub lo: f32,
    pub hi: f32,
}

#[derive(Clone, Copy)]
enum LayerShape {
    /// [M, C/g, kh, kw] (a 1-D convolution has kh = 1), with its geometry.
    Conv(Conv),
    /// x [.., K] times W [K, M] (or [M, K] with transB).
    Dense { trans_b: bool },
}

#[derive(Clone, Copy)]
struct Conv {
    groups: usize,
    kernel: [usize; 2],
    strides: [usize; 2],
    dilations: [usize; 2],
    pads: [usize; 2],
    end_pads: [usize; 2],
}

impl Conv {
    /// The output's spatial size for an input of spatial size `input`, if the kernel fits the
    /// padded input.
    fn output_size(&self, input: [usize; 2]) -> Option<[usize; 2]> {
        let axis = |a: usize| {
            let span = self.dilations[a] * (self.kernel[a].max(1) - 1) + 1;
            let padded = input[a] + self.pads[a] + self.end_pads[a];
            Some((padded.checked_sub(span)?) / self.strides[a].max(1) + 1)
        };
        Some([axis(0)?, axis(1)?])
    }
}

/// The layers of `graph` with a planned weight, in graph order: Conv (1-D or 2-D, explicit
/// pads), Gemm and MatMul by a constant matrix. A weight several layers share (ALBERT's) is
/// left out: what is fitted to one layer's inputs is not the others'.
pub fn layers(graph: &Graph, plan: &Plan, params: &Params) -> Vec<Layer> {
    let mut out = Vec::new();
    let readers = graph.consumers();
    let groups = fused_groups(graph);
    for (index, node) in graph.nodes.iter().enumerate() {
        let Some(site) = plan.weights.iter().find(|w| w.node == node.name) else {
            continue;
        };
        if readers.get(&site.name).is_some_and(|r| r.len() > 1) {
            continue;
        }
        let (Some(wp), Some(w)) = (params.weight(&site.name), graph.initializer(&site.name)) else {
            continue;
        };
        if node.inputs.get(1) != Some(&site.name) {
            continue;
        }
        let shape = match node.op {
            Op::Conv => match conv_geometry(node, &w.shape) {
                Some(c) => LayerShape::Conv(c),
                None => continue,
            },
            Op::Gemm if node.attribute("transA").is_none_or(|a| a.i() == 0) => LayerShape::Dense {
                trans_b: node.attribute("transB").is_some_and(|a| a.i() != 0),
            },
            Op::MatMul if w.shape.len() == 2 => LayerShape::Dense { trans_b: false },
            _ => continue,
        };
        out.push(Layer {
            index,
            node: node.clone(),
            weight: w.clone(),
            scheme: wp.scheme,
            qparams: wp.qparams.clone(),
            activation: groups
                .iter()
                .find(|g| g.nodes[0] == node.name)
                .and_then(|g| activation_of(graph, node, &g.nodes[1..], &w.shape, shape)),
            shape,
        });
    }
    out
}

/// The [`Activation`] of `node`, a layer with weight shape `w` whose fused group's other
/// members are `members` (a bias Add, then the Relu or Clip), if the group ends in one with
/// constant bounds and its biases are one value per output channel (or one for all).
fn activation_of(
    graph: &Graph,
    node: &Node,
    members: &[String],
    w: &[usize],
    shape: LayerShape,
) -> Option<Activation> {
    let member = |name: &String| graph.nodes.iter().find(|n| &n.name == name);
    let act = member(members.last()?)?;
    let (lo, hi) = match act.op {
        Op::Relu => (0.0, f32::INFINITY),
        Op::Clip => graph.clip_bounds(act).filter(|(lo, hi)| lo <= hi)?,
        _ => return None,
    };
    let (channels, spatial) = match shape {
        LayerShape::Conv(_) => (w[0], w.len() - 2),
        LayerShape::Dense { trans_b } => (w[usize::from(!trans_b)], 0),
    };
    let mut bias = vec![0f32; channels];
    // The layer's own bias input: Conv's B, Gemm's C (alpha and beta 1, or the clamp would see
    // another output than W·x + b).
    let own = match node.op {
        Op::Gemm
            if ["alpha", "beta"]
                .iter()
                .any(|a| node.attribute(a).is_some_and(|a| a.f() != 1.0)) =>
        {
            return None
        }
        Op::Conv | Op::Gemm => node.inputs.get(2).filter(|b| !b.is_empty()),
        _ => None,
    };
    if let Some(b) = own {
        let t = graph.initializer(b)?;
        add_bias(
            &mut bias,
            &t.to_f32s(),
            node.op == Op::Conv || along_channels(&t.shape, 0),
        )?;
    }
    if let [bias_add, _] = members {
        let bias_add = member(bias_add)?;
        let constant = bias_add.inputs.iter().find(|i| *i != &node.outputs[0])?;
        let t = graph.initializer(constant)?;
        add_bias(&mut bias, &t.to_f32s(), along_channels(&t.shape, spatial))?;
    }
    Some(Activation { bias, lo, hi })
}

/// Adds `values` to the per-channel `bias`: one value for every channel, or one per channel
/// where `per_channel` says their shape lays them along the channels.
fn add_bias(bias: &mut [f32], values: &[f32], per_channel: bool) -> Option<()> {
    match values.len() {
        1 => bias.iter_mut().for_each(|b| *b += values[0]),
        n if n == bias.len() && per_channel => {
            bias.iter_mut().zip(values).for_each(|(b, v)| *b += v);
        }
        _ => return None,
    }
    Some(())
}

/// Whether a constant of shape `c` added to a layer's output [N, M, `spatial` axes..] lies
/// along its channels M (right-aligned broadcasting: M, then a 1 for each spatial axis, and
/// nothing but 1s before M).
fn along_channels(c: &[usize], spatial: usize) -> bool {
    let Some(at) = c.len().checked_sub(spatial + 1) else {
        return false;
    };
    c[..at].iter().chain(&c[at + 1..]).all(|&d| d == 1)
}

/// A convolution's geometry, when its pads are explicit (auto_pad NOTSET or VALID) and it has
/// one or two spatial axes.
fn conv_geometry(node: &Node, w: &[usize]) -> Option<Conv> {
    let auto = node
        .attribute("auto_pad")
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_default();
    if !matches!(auto.as_str(), "" | "NOTSET" | "VALID") || !(3..=4).contains(&w.len()) {
        return None;
    }
    let ints = |name: &str| node.attribute(name).map(|a| a.ints.clone());
    let two = |v: Option<Vec<i64>>, fill: usize| -> Option<[usize; 2]> {
        match v.as_deref() {
            None => Some([fill, fill]),
            Some([a]) => Some([fill, usize::try_from(*a).ok()?]),
            Some([a, b]) => Some([usize::try_from(*a).ok()?, usize::try_from(*b).ok()?]),
            _ => None,
        }
    };
    let pads = ints("pads").unwrap_or_else(|| vec![0; 2 * (w.len() - 2)]);
    let half = pads.len() / 2;
    let begin = two(Some(pads[..half].to_vec()), 0)?;
    let end = two(Some(pads[half..].to_vec()), 0)?;
    Some(Conv {
        groups: node.attribute("group").map_or(1, |a| a.i()).max(1) as usize,
        kernel: if w.len() == 3 {
            [1, w[2]]
        } else {
            [w[2], w[3]]
        },
        strides: two(ints("strides"), 1)?,
        dilations: two(ints("dilations"), 1)?,
        pads: begin,
        end_pads: end,
    })
}

/// The flat index, in the layer's weight, of row m (output channel) and column k (input
/// element) of group g's matrix.
pub fn weight_index(layer: &Layer, g: usize, m: usize, k: usize) -> usize {
    let shape = &layer.weight.shape;
    match layer.shape {
        LayerShape::Conv(c) => {
            let k_len: usize = shape[1..].iter().product();
            (g * (shape[0] / c.groups) + m) * k_len + k
        }
        LayerShape::Dense { trans_b: true } => m * shape[1] + k,
        LayerShape::Dense { trans_b: false } => k * shape[1] + m,
    }
}

/// Group `g`'s weight matrix [rows, columns] out of the layer's weight `w` (or of any tensor of
/// its shape: a quantized weight).
pub fn group_matrix(layer: &Layer, w: &[f32], g: usize) -> Vec<f32> {
    let (_, rows, k) = matrix_dims(layer);
    (0..rows * k)
        .map(|e| w[weight_index(layer, g, e / k, e % k)])
        .collect()
}

/// One group's reconstruction problem over all samples: the quantized model's input columns x̃
/// [P, K] and the float model's outputs W·x [P, rows], both row-major.
pub struct Columns {
    pub inputs: Vec<f32>,
    pub targets: Vec<f32>,
}

/// Every group's [`Columns`] from the samples' `parts`, with W·x from the layer's weight `w`.
/// Each sample's part is dropped once copied and each group's float columns once multiplied: a
/// large layer's columns (8192 × 4608 for a 3×3 convolution of 512 channels) are 150 MB a copy.
pub fn group_columns(
    layer: &Layer,
    parts: Vec<Part>,
    w: &[f32],
) -> candle_core::Result<Vec<Columns>> {
    let (groups, rows, k) = matrix_dims(layer);
    let mut columns: Vec<(Vec<f32>, Vec<f32>)> = vec![Default::default(); groups];
    for part in parts {
        for ((f, q), (fp, qp)) in columns.iter_mut().zip(part) {
            f.extend_from_slice(&fp);
            q.extend_from_slice(&qp);
        }
    }
    (columns.into_iter().enumerate())
        .map(|(g, (float, inputs))| {
            let positions = inputs.len() / k.max(1);
            let wt = Tensor::from_vec(group_matrix(layer, w, g), (rows, k), &Device::Cpu)?;
            let xf = Tensor::from_vec(float, (positions, k), &Device::Cpu)?;
            let targets = xf.matmul(&wt.t()?)?.flatten_all()?.to_vec1::<f32>()?;
            Ok(Columns { inputs, targets })
        })
        .collect()
}

/// (groups, rows per group, columns) of the layer's weight matrices.
pub fn matrix_dims(layer: &Layer) -> (usize, usize, usize) {
    let shape = &layer.weight.shape;
    match layer.shape {
        LayerShape::Conv(c) => (c.groups, shape[0] / c.groups, shape[1..].iter().product()),
        LayerShape::Dense { trans_b: true } => (1, shape[0], shape[1]),
        LayerShape::Dense { trans_b: false } => (1, shape[1], shape[0]),
    }
}

/// The columns of group `g` at up to `take` output positions spread evenly: a convolution's
/// im2col rows (zero where a tap falls in the padding), a dense layer's input rows.
fn columns(layer: &Layer, x: &Value, g: usize, take: usize) -> Result<Vec<f32>> {
    // Read in place: a depthwise layer asks once per channel.
    x.with_f32s(|data| gather_columns(layer, data, x.shape(), g, take))?
}

/// [`columns`] of the input `data` of shape `shape`.
fn gather_columns(
    layer: &Layer,
    data: &[f32],
    shape: &[usize],
    g: usize,
    take: usize,
) -> Result<Vec<f32>> {
    let (_, _, k) = matrix_dims(layer);
    let mut cols = Vec::new();
    match layer.shape {
        LayerShape::Conv(c) => {
            let (n, ch) = (shape[0], shape[1]);
            let (h, w) = if shape.len() == 3 {
                (1, shape[2])
            } else {
                (shape[2], shape[3])
            };
            let [oh, ow] = c.output_size([h, w]).ok_or_else(|| {
                Error::Environment(format!(
                    "{}: its kernel does not fit its padded input {shape:?}",
                    layer.node.label()
                ))
            })?;
            let cg = ch / c.groups;
            let positions = n * oh * ow;
            for j in 0..take.min(positions) {
                let p = j * positions / take.min(positions).max(1);
                let (b, oy, ox) = (p / (oh * ow), (p / ow) % oh, p % ow);
                for cc in 0..cg {
                    let plane = &data[(b * ch + g * cg + cc) * h * w..][..h * w];
                    for i in 0..c.kernel[0] {
                        let y = (oy * c.strides[0] + i * c.dilations[0]) as i64 - c.pads[0] as i64;
                        for jj in 0..c.kernel[1] {
                            let xx =
                                (ox * c.strides[1] + jj * c.dilations[1]) as i64 - c.pads[1] as i64;
                            let inside = y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w;
                            cols.push(if inside {
                                plane[y as usize * w + xx as usize]
                            } else {
                                0.0
                            });
                        }
                    }
                }
            }
        }
        LayerShape::Dense { .. } => {
            let positions = data.len() / k.max(1);
            for j in 0..take.min(positions) {
                let p = j * positions / take.min(positions).max(1);
                cols.extend_from_slice(&data[p * k..(p + 1) * k]);
            }
        }
    }
    Ok(cols)
}

/// One sample's columns of a layer, per group: (float model's input, quantized model's input).
pub type Part = Vec<(Vec<f32>, Vec<f32>)>;

/// The layer's input in a run paused before it.
fn input_of<'a>(layer: &Layer, run: &'a Paused) -> Result<&'a Value> {
    let input = &layer.node.inputs[0];
    run.values.get(input).ok_or_else(|| {
        Error::Environment(format!(
            "{}: its input '{input}' was not computed",
            layer.node.label()
        ))
    })
}

#[cfg(test)]
mod tests {
    use zeropoint_graph::graph::float_attribute;

    use super::*;

    fn graph(nodes: Vec<Node>, initializers: Vec<RawTensor>) -> Graph {
        Graph {
            source: "g.onnx".into(),
            opset: 13,
            inputs: Vec::new(),
            outputs: Vec::new(),
            initializers,
            nodes,
        }
    }

    fn tensor(name: &str, shape: &[usize], values: &[f32]) -> RawTensor {
        RawTensor::from_f32s(name, shape, values)
    }

    /// `activation_of` the first node of `g`, with `members` its fused group's others.
    fn activation(
        g: &Graph,
        members: &[&str],
        w: &[usize],
        shape: LayerShape,
    ) -> Option<Activation> {
        let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
        activation_of(g, &g.nodes[0], &members, w, shape)
    }

    const CONV: LayerShape = LayerShape::Conv(Conv {
        groups: 1,
        kernel: [1, 1],
        strides: [1, 1],
        dilations: [1, 1],
        pads: [0, 0],
        end_pads: [0, 0],
    });

    /// A convolution's own bias and a per-channel Add before the Relu sum into the bias; an
    /// Add along another axis than the channels' ([3] against [N, 3, H, W] adds along W) leaves
    /// the layer without an activation.
    #[test]
    fn a_convolution_with_its_bias_adds_and_relu() {
        let conv = Node::new("c", Op::Conv, &["x", "w", "b"], &["y"]);
        let relu = Node::new("r", Op::Relu, &["z"], &["out"]);
        let bias = tensor("b", &[3], &[1.0, 2.0, 3.0]);
        for (shape, want) in [
            (vec![3, 1, 1], Some(vec![1.5, 2.5, 3.5])),
            (vec![1, 3, 1, 1], Some(vec![1.5, 2.5, 3.5])),
            (vec![1], Some(vec![1.5, 2.5, 3.5])),
            (vec![3], None),
            (vec![1, 1, 3], None),
        ] {
            let n = shape.iter().product();
            let add = Node::new("a", Op::Add, &["y", "k"], &["z"]);
            let g = graph(
                vec![conv.clone(), add, relu.clone()],
                vec![bias.clone(), tensor("k", &shape, &vec![0.5; n])],
            );
            let got = activation(&g, &["a", "r"], &[3, 2, 1, 1], CONV);
            assert_eq!(
                got.as_ref().map(|a| a.bias.clone()),
                want,
                "Add of shape {shape:?}"
            );
            if let Some(a) = got {
                assert_eq!((a.lo, a.hi), (0.0, f32::INFINITY));
            }
        }
        let g = graph(vec![conv, relu], vec![bias]);
        let got = activation(&g, &["r"], &[3, 2, 1, 1], CONV).unwrap();
        assert_eq!(got.bias, [1.0, 2.0, 3.0]);
    }

    /// A MatMul's bias Add and a Clip with constant bounds (ReLU6); a Gemm whose alpha or beta
    /// is not 1, a Clip without constant bounds and a group ending in no activation have none.
    #[test]
    fn dense_layers_with_a_clip_and_what_has_no_activation() {
        let dense = LayerShape::Dense { trans_b: false };
        let clip = Node::new("c", Op::Clip, &["z", "lo", "hi"], &["out"]);
        let bounds = || vec![tensor("lo", &[], &[0.0]), tensor("hi", &[], &[6.0])];
        let matmul = Node::new("m", Op::MatMul, &["x", "w"], &["y"]);
        let add = Node::new("a", Op::Add, &["k", "y"], &["z"]);
        let mut inits = bounds();
        inits.push(tensor("k", &[1, 2], &[-1.0, 4.0]));
        let g = graph(
            vec![matmul.clone(), add.clone(), clip.clone()],
            inits.clone(),
        );
        let got = activation(&g, &["a", "c"], &[5, 2], dense).unwrap();
        assert_eq!((got.bias, got.lo, got.hi), (vec![-1.0, 4.0], 0.0, 6.0));
        // [2, 1] against [N, 2] broadcasts along N, not the channels.
        inits[2] = tensor("k", &[2, 1], &[-1.0, 4.0]);
        let g = graph(vec![matmul.clone(), add.clone(), clip.clone()], inits);
        assert_eq!(activation(&g, &["a", "c"], &[5, 2], dense), None);
        let g = graph(vec![matmul.clone(), add.clone(), clip], Vec::new());
        assert_eq!(activation(&g, &["a", "c"], &[5, 2], dense), None);
        let g = graph(vec![matmul, add], Vec::new());
        assert_eq!(activation(&g, &["a"], &[5, 2], dense), None);

        let trans = LayerShape::Dense { trans_b: true };
        let relu = Node::new("r", Op::Relu, &["y"], &["out"]);
        let mut gemm = Node::new("g", Op::Gemm, &["x", "w", "b"], &["y"]);
        let b = tensor("b", &[3], &[0.1, 0.2, 0.3]);
        let g = graph(vec![gemm.clone(), relu.clone()], vec![b.clone()]);
        let got = activation(&g, &["r"], &[3, 5], trans).unwrap();
        assert_eq!(got.bias, [0.1, 0.2, 0.3]);
        gemm.attributes = vec![float_attribute("beta", 0.5)];
        let g = graph(vec![gemm, relu], vec![b]);
        assert_eq!(activation(&g, &["r"], &[3, 5], trans), None);
    }
}
