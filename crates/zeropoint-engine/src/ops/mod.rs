//! The ONNX operators, each a short function from its inputs and attributes to its outputs, on
//! candle tensors so that gradients flow through the same code (candle's autodiff).
//!
//! An operator gets a [`Cx`]: the node (attributes, for messages), its input values and the
//! model's opset, whose version decides attribute-versus-input signatures (Squeeze's axes, Clip's
//! bounds, ...). Errors say what went wrong ([`Error::Op`]); the executor adds which node.

mod blocked;
mod blockwise;
mod conv;
mod conv_gemm;
mod conv_grad;
mod einsum;
mod elementwise;
pub(crate) use elementwise::sigmoid_and_product;
mod index;
mod integer;
mod linear;
mod matmul;
mod norm;
mod pool;
mod quant;
mod recurrent;
mod reduce;
mod resize;
mod shape;
mod spectral;
mod winograd;

pub use elementwise::HardSigmoid;
pub use matmul::fix_thread_count;

use candle_core::{DType as CDType, Tensor};

use zeropoint_graph::{Node, Op};
use zeropoint_onnx::proto::attribute_proto::AttributeType;
use zeropoint_onnx::DType;

use crate::error::Error;
use crate::value::Value;

/// Operator results: the error says what went wrong; the executor adds which node.
pub type R<T> = std::result::Result<T, Error>;

/// What an operator sees.
pub struct Cx<'a> {
    pub node: &'a Node,
    pub inputs: &'a [Option<Value>],
    pub opset: i64,
}

impl Clone for Cx<'_> {
    fn clone(&self) -> Self {
        *self
    }
}

impl Copy for Cx<'_> {}

type OpFn = fn(&Cx) -> R<Vec<Value>>;

/// The function running `op` of the default domain, if zeropoint has it.
fn lookup(op: &Op) -> Option<OpFn> {
    use elementwise as e;
    Some(match op {
        op if binary(op) => e::binary,
        Op::Max | Op::Min | Op::Sum | Op::Mean => e::variadic,
        Op::Relu
        | Op::Sigmoid
        | Op::Tanh
        | Op::Exp
        | Op::Log
        | Op::Sqrt
        | Op::Neg
        | Op::Abs
        | Op::Erf
        | Op::Reciprocal
        | Op::Floor
        | Op::Ceil
        | Op::Not
        | Op::Sign
        | Op::Softplus
        | Op::Sin
        | Op::Cos
        | Op::Atan => e::unary,
        Op::LeakyRelu | Op::HardSigmoid | Op::HardSwish | Op::Gelu | Op::Elu | Op::Selu => {
            e::activation
        }
        Op::Clip => e::clip,
        Op::IsNaN | Op::IsInf => e::is_special,
        Op::PRelu => e::prelu,
        Op::Where => e::where_op,
        Op::Trilu => e::trilu,
        Op::Cast => e::cast,
        Op::Identity => e::identity,
        Op::Dropout => e::dropout,
        Op::MatMul => matmul::matmul,
        Op::Gemm => matmul::gemm,
        Op::Conv => conv::conv,
        Op::ConvTranspose => conv::conv_transpose,
        Op::MaxPool | Op::AveragePool => pool::pool,
        Op::GlobalAveragePool | Op::GlobalMaxPool => pool::global_pool,
        Op::BatchNormalization => norm::batch_norm,
        Op::LayerNormalization => norm::layer_norm,
        Op::InstanceNormalization => norm::instance_norm,
        Op::LRN => norm::lrn,
        Op::Softmax | Op::LogSoftmax => norm::softmax,
        Op::ReduceMean
        | Op::ReduceSum
        | Op::ReduceMax
        | Op::ReduceMin
        | Op::ReduceProd
        | Op::ReduceSumSquare
        | Op::ReduceL2 => reduce::reduce,
        Op::ArgMax | Op::ArgMin => reduce::arg_reduce,
        Op::Reshape => shape::reshape,
        Op::Flatten => shape::flatten,
        Op::Transpose => shape::transpose,
        Op::DepthToSpace => shape::depth_to_space,
        Op::SpaceToDepth => shape::space_to_depth,
        Op::Squeeze => shape::squeeze,
        Op::Unsqueeze => shape::unsqueeze,
        Op::Concat => shape::concat,
        Op::Split => shape::split,
        Op::Slice => shape::slice,
        Op::Gather => shape::gather,
        Op::GatherElements => index::gather_elements,
        Op::TopK => index::top_k,
        Op::ScatterElements | Op::Scatter => index::scatter_elements,
        Op::ScatterND => index::scatter_nd,
        Op::GatherND => index::gather_nd,
        Op::OneHot => index::one_hot,
        Op::Mod => e::modulo,
        Op::Expand => shape::expand,
        Op::Tile => shape::tile,
        Op::Shape => shape::shape,
        Op::Size => shape::size,
        Op::Constant => shape::constant,
        Op::ConstantOfShape => shape::constant_of_shape,
        Op::Range => shape::range,
        Op::Pad => resize::pad,
        Op::Resize => resize::resize,
        Op::Einsum => einsum::einsum,
        Op::DFT => spectral::dft,
        Op::STFT => spectral::stft,
        Op::LSTM => recurrent::lstm,
        Op::GRU => recurrent::gru,
        Op::RNN => recurrent::rnn,
        Op::QuantizeLinear => quant::quantize_linear,
        Op::DequantizeLinear => quant::dequantize_linear,
        Op::DynamicQuantizeLinear => integer::dynamic_quantize_linear,
        Op::MatMulInteger => integer::matmul_integer,
        Op::ConvInteger => integer::conv_integer,
        _ => return None,
    })
}

/// The function running a node of ONNX Runtime's domain, if zeropoint has it (the weight-only
/// and dynamic formats zeropoint writes).
fn lookup_contrib(node: &Node) -> Option<OpFn> {
    if node.domain != "com.microsoft" {
        return None;
    }
    Some(match node.op.as_str() {
        "MatMulNBits" => blocked::matmul_nbits,
        "GatherBlockQuantized" => blocked::gather_block_quantized,
        "DynamicQuantizeLSTM" => recurrent::dynamic_quantize_lstm,
        "MatMulIntegerToFloat" => integer::matmul_integer_to_float,
        _ => return None,
    })
}

/// The function running `node`.
fn function(node: &Node) -> Option<OpFn> {
    lookup(&node.op).or_else(|| lookup_contrib(node))
}

/// Whether zeropoint can run this node (operators of other domains are never [`Op`] variants;
/// of those, ONNX Runtime's block-quantized weight operators are run).
pub fn supports(node: &Node) -> bool {
    function(node).is_some()
}

/// Runs one node on its inputs.
pub fn run(cx: &Cx) -> R<Vec<Value>> {
    let f = function(cx.node)
        .ok_or_else(|| Error::Op(format!("operator {} is not supported", cx.node.op)))?;
    if broadcasts(&cx.node.op) {
        check_broadcast(cx.inputs)?;
    }
    // candle answers some type combinations with a panic (unimplemented kernels); a user gets
    // an error naming the node instead.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(cx))).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(Error::Op(format!(
            "not supported for these inputs ({what})"
        )))
    })
}

/// The two-operand arithmetic, comparison and logic operators ([`elementwise::binary`]).
fn binary(op: &Op) -> bool {
    matches!(
        op,
        Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Div
            | Op::Pow
            | Op::Equal
            | Op::Less
            | Op::Greater
            | Op::LessOrEqual
            | Op::GreaterOrEqual
            | Op::And
            | Op::Or
            | Op::Xor
    )
}

/// The operators whose output is the numpy broadcast of their inputs.
fn broadcasts(op: &Op) -> bool {
    binary(op)
        || matches!(
            op,
            Op::Max | Op::Min | Op::Sum | Op::Mean | Op::Mod | Op::PRelu | Op::Where
        )
}

/// Refuses a broadcast over the memory limit before any operator allocates it: inputs of
/// [n, 1] and [1, m] ask for n·m elements, a square of sizes the inputs themselves never hold.
fn check_broadcast(inputs: &[Option<Value>]) -> R<()> {
    let mut shape = Vec::new();
    let mut widest = CDType::U8;
    for v in inputs.iter().flatten() {
        shape = broadcast_shape(&shape, v.shape())?;
        if v.tensor.dtype().size_in_bytes() > widest.size_in_bytes() {
            widest = v.tensor.dtype();
        }
    }
    check_output(&shape, widest)
}

/// `n` pseudo-random values in [-1, 1) from `seed` (xorshift): the kernels' tests' inputs.
#[cfg(test)]
pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// `f` run on a pool of `threads` threads: the kernels' tests check that the thread count does
/// not change the bits.
#[cfg(test)]
pub(crate) fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
        .install(f)
}

/// candle's result as an operator result.
pub(crate) fn c<T>(r: candle_core::Result<T>) -> R<T> {
    Ok(r?)
}

impl<'a> Cx<'a> {
    /// Input `i`, which the operator requires.
    pub fn input(&self, i: usize) -> R<&'a Value> {
        self.opt(i)
            .ok_or_else(|| Error::Op(format!("missing required input {i}")))
    }

    /// Input `i` if given (optional inputs may be absent or named "").
    pub fn opt(&self, i: usize) -> Option<&'a Value> {
        self.inputs.get(i).and_then(Option::as_ref)
    }

    /// Input `i` as float32: integer operands are rejected with the op's name.
    pub fn float(&self, i: usize) -> R<&'a Tensor> {
        let v = self.input(i)?;
        if !v.dtype.is_float() {
            return Err(Error::Op(format!(
                "input {i} is {}, expected a float tensor",
                v.dtype
            )));
        }
        Ok(&v.tensor)
    }

    /// Input `i` read as integers (shapes, axes, pads), or None if absent.
    pub fn ints_input(&self, i: usize) -> R<Option<Vec<i64>>> {
        self.opt(i).map(Value::to_i64s).transpose()
    }

    fn attr(
        &self,
        name: &str,
        ty: AttributeType,
    ) -> R<Option<&'a zeropoint_onnx::proto::AttributeProto>> {
        match self.node.attribute(name) {
            None => Ok(None),
            Some(a) if a.r#type() == ty || a.r#type() == AttributeType::Undefined => Ok(Some(a)),
            Some(a) => Err(Error::Op(format!(
                "attribute '{name}' has type {:?}, expected {:?}",
                a.r#type(),
                ty
            ))),
        }
    }

    pub fn int(&self, name: &str, default: i64) -> R<i64> {
        Ok(self
            .attr(name, AttributeType::Int)?
            .map_or(default, |a| a.i()))
    }

    pub fn float_attr(&self, name: &str, default: f32) -> R<f32> {
        Ok(self
            .attr(name, AttributeType::Float)?
            .map_or(default, |a| a.f()))
    }

    pub fn ints(&self, name: &str) -> R<Option<Vec<i64>>> {
        Ok(self
            .attr(name, AttributeType::Ints)?
            .map(|a| a.ints.clone()))
    }

    pub fn string(&self, name: &str, default: &str) -> R<String> {
        Ok(self
            .attr(name, AttributeType::String)?
            .map_or(default.to_string(), |a| {
                String::from_utf8_lossy(a.s()).into_owned()
            }))
    }

    /// Axes from the attribute (older opsets) or from input `i` (newer ones).
    pub fn axes(&self, attr_until: i64, i: usize) -> R<Option<Vec<i64>>> {
        if self.opset < attr_until {
            self.ints("axes")
        } else {
            self.ints_input(i)
        }
    }
}

/// Refuses an output of `shape` in `carrier` elements over the memory limit, before it is
/// allocated: for the operators whose output size their inputs decide (Expand, Tile, Range,
/// ConstantOfShape, Pad, Resize, Reshape, and pooling's padding).
pub(crate) fn check_output(shape: &[usize], carrier: CDType) -> R<()> {
    // Empty axes count as one: a [0, 2^60] output holds nothing, but the loops and index lists
    // that build it would still run 2^60 times.
    let n = shape
        .iter()
        .fold(1u128, |a, &d| a.saturating_mul(d.max(1) as u128));
    zeropoint_onnx::limits::check_elements(
        n,
        carrier.size_in_bytes(),
        &format!("an output of shape {shape:?}"),
    )
    .map_err(Error::Op)
}

/// Resolves a possibly negative axis against `rank`.
pub(crate) fn axis(a: i64, rank: usize) -> R<usize> {
    let r = rank as i64;
    if a < -r || a >= r {
        return Err(Error::Op(format!(
            "axis {a} is out of range for rank {rank}"
        )));
    }
    Ok(if a < 0 { a + r } else { a } as usize)
}

/// A gather-style index into axis `a` of size `n`, a negative one counted from the end; one
/// outside the axis is refused.
pub(crate) fn index_in(i: i64, a: usize, n: usize) -> R<usize> {
    let n = n as i64;
    let j = if i < 0 { i.saturating_add(n) } else { i };
    if (0..n).contains(&j) {
        Ok(j as usize)
    } else {
        Err(Error::Op(format!(
            "index {i} is out of range for axis {a} of size {n}"
        )))
    }
}

/// [`index_in`] of each of `idx`.
pub(crate) fn indices_in(idx: &[i64], a: usize, n: usize) -> R<Vec<i64>> {
    idx.iter().map(|&i| Ok(index_in(i, a, n)? as i64)).collect()
}

/// A float result with the dtype of a float operand.
pub(crate) fn like(t: Tensor, of: &Value) -> Value {
    Value::new(t, of.dtype)
}

/// One output.
pub(crate) fn one(v: Value) -> R<Vec<Value>> {
    Ok(vec![v])
}

/// A scalar tensor of `like`'s candle type.
pub(crate) fn scalar(v: f64, like: &Tensor) -> R<Tensor> {
    c(Tensor::new(v, like.device()).and_then(|t| t.to_dtype(like.dtype())))
}

/// `t[idx]` along `dim` (candle's index_select wants a contiguous input).
pub(crate) fn select(t: &Tensor, idx: &[i64], dim: usize) -> R<Tensor> {
    // candle's index_select indexes rows of an empty tensor as if they had elements (a panic
    // found by fuzzing: a GRU of hidden size 0 with sequence lengths).
    if t.elem_count() == 0 {
        if t.dims()[dim] == 0 && !idx.is_empty() {
            return Err(Error::Op("an index into an empty axis".into()));
        }
        let mut shape = t.dims().to_vec();
        shape[dim] = idx.len();
        return c(Tensor::zeros(shape, t.dtype(), t.device()));
    }
    if t.dtype() == CDType::F32 && !t.track_op() {
        return select_f32(t, idx, dim);
    }
    let idx = Tensor::from_slice(idx, idx.len(), t.device())?;
    Ok(t.contiguous()?.index_select(&idx, dim)?)
}

/// `t[start..start + len]` along `dim`. An empty result is a fresh tensor: candle's empty view
/// keeps its storage offset, a narrow of another axis moves that past the storage, and reading
/// the view then panics (a fuzz find: Pads that cropped one axis away, then another).
pub(crate) fn narrow(t: &Tensor, dim: usize, start: usize, len: usize) -> R<Tensor> {
    if len > 0 && t.elem_count() > 0 {
        return c(t.narrow(dim, start, len));
    }
    let mut shape = t.dims().to_vec();
    if start.checked_add(len).is_none_or(|end| end > shape[dim]) {
        return Err(Error::Op(format!(
            "elements {start}..{start}+{len} are out of range for an axis of {}",
            shape[dim]
        )));
    }
    shape[dim] = len;
    c(Tensor::zeros(shape, t.dtype(), t.device()))
}

/// [`select`] as a plain copy loop: candle's copies one `memcpy` per selected run, which for
/// the last axis (Resize, strided subsampling) is one call per element.
fn select_f32(t: &Tensor, idx: &[i64], dim: usize) -> R<Tensor> {
    let dims = t.dims();
    let n = dims[dim];
    let right: usize = dims[dim + 1..].iter().product();
    if let Some(bad) = idx.iter().find(|&&i| i < 0 || i as usize >= n) {
        return Err(Error::Op(format!(
            "index {bad} is out of range for an axis of {n}"
        )));
    }
    let mut shape = dims.to_vec();
    shape[dim] = idx.len();
    check_output(&shape, CDType::F32)?;
    let mut out = Vec::with_capacity(shape.iter().product());
    crate::value::with_f32_slice(t, |x| {
        // Every other element (a strided Slice's step of 2, YOLOX's Focus), read in pairs
        // that vectorize as shuffles: one index at a time was 1.8 ns an element.
        let pairs = (right == 1 && idx.len() > 1)
            .then(|| idx[0] as usize)
            .filter(|_| idx.windows(2).all(|w| w[1] == w[0] + 2));
        for block in x.chunks_exact(n * right) {
            if let Some(first) = pairs {
                // The last index is in range (checked above), so 2·(len − 1) + 1 values are.
                let len = idx.len();
                let src = &block[first..first + 2 * (len - 1) + 1];
                out.extend(src.chunks_exact(2).map(|p| p[0]));
                out.push(src[2 * (len - 1)]);
            } else if right == 1 {
                out.extend(idx.iter().map(|&i| block[i as usize]));
            } else {
                for &i in idx {
                    out.extend_from_slice(&block[i as usize * right..(i as usize + 1) * right]);
                }
            }
        }
    })?;
    c(Tensor::from_vec(out, shape, t.device()))
}

/// `v` (tensors of one shape, at least one) stacked along a new `dim`. candle copies empty
/// tensors with their strides and panics (a GRU of hidden size 0, found by fuzzing): those give zeros of
/// the stacked shape.
pub(crate) fn stack(v: &[Tensor], dim: usize) -> R<Tensor> {
    match v.first() {
        Some(first) if first.elem_count() == 0 => {
            let mut shape = first.dims().to_vec();
            shape.insert(dim, v.len());
            c(Tensor::zeros(shape, first.dtype(), first.device()))
        }
        _ => c(Tensor::stack(v, dim)),
    }
}

/// The numpy broadcast of two shapes.
pub(crate) fn broadcast_shape(a: &[usize], b: &[usize]) -> R<Vec<usize>> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let da = if i + a.len() >= n {
                a[i + a.len() - n]
            } else {
                1
            };
            let db = if i + b.len() >= n {
                b[i + b.len() - n]
            } else {
                1
            };
            match (da, db) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                _ => Err(Error::Op(format!(
                    "shapes {a:?} and {b:?} do not broadcast"
                ))),
            }
        })
        .collect()
}

/// Both tensors broadcast to their common shape.
pub(crate) fn broadcast_pair(a: &Tensor, b: &Tensor) -> R<(Tensor, Tensor)> {
    let s = broadcast_shape(a.dims(), b.dims())?;
    Ok((
        c(a.broadcast_as(s.as_slice()))?,
        c(b.broadcast_as(s.as_slice()))?,
    ))
}

/// The carrier type check for integer-only operations.
pub(crate) fn is_int(t: &Tensor) -> bool {
    matches!(
        t.dtype(),
        CDType::I64 | CDType::U8 | CDType::U32 | CDType::I32 | CDType::I16
    )
}

/// The ONNX dtype named by a Cast/ConstantOfShape `to`-style code.
pub(crate) fn dtype_code(code: i64) -> R<DType> {
    zeropoint_onnx::tensor_proto::dtype_of(code as i32).ok_or_else(|| {
        Error::Op(format!(
            "element type {} is not supported",
            zeropoint_onnx::tensor_proto::type_name(code as i32)
        ))
    })
}
