//! The ONNX operators, each a short function from its inputs and attributes to its outputs, on
//! candle tensors so that gradients flow through the same code (candle's autodiff).
//!
//! An operator gets a [`Cx`]: the node (attributes, for messages), its input values and the
//! model's opset, whose version decides attribute-versus-input signatures (Squeeze's axes, Clip's
//! bounds, ...). Errors are plain strings; the executor adds which node.

mod conv;
mod einsum;
mod elementwise;
mod matmul;
mod norm;
mod pool;
mod quant;
mod reduce;
mod resize;
mod shape;

use candle_core::{DType as CDType, Tensor};

use crate::graph::Node;
use crate::onnx::proto::attribute_proto::AttributeType;
use crate::tensor::DType;
use crate::value::Value;

/// Operator results.
pub type R<T> = std::result::Result<T, OpError>;

/// What went wrong inside an operator (the executor prefixes the node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError(pub String);

impl From<candle_core::Error> for OpError {
    fn from(e: candle_core::Error) -> OpError {
        // candle's messages can span lines (backtraces): keep the first.
        OpError(e.to_string().lines().next().unwrap_or("").to_string())
    }
}

impl From<String> for OpError {
    fn from(m: String) -> OpError {
        OpError(m)
    }
}

impl From<&str> for OpError {
    fn from(m: &str) -> OpError {
        OpError(m.to_string())
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

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
fn lookup(op: &str) -> Option<OpFn> {
    use elementwise as e;
    Some(match op {
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Equal" | "Less" | "Greater" | "LessOrEqual"
        | "GreaterOrEqual" | "And" | "Or" | "Xor" => e::binary,
        "Max" | "Min" | "Sum" | "Mean" => e::variadic,
        "Relu" | "Sigmoid" | "Tanh" | "Exp" | "Log" | "Sqrt" | "Neg" | "Abs" | "Erf"
        | "Reciprocal" | "Floor" | "Ceil" | "Not" | "Sign" | "Softplus" | "Sin" | "Cos" => e::unary,
        "LeakyRelu" | "HardSigmoid" | "HardSwish" | "Gelu" | "Elu" | "Selu" => e::activation,
        "Clip" => e::clip,
        "PRelu" => e::prelu,
        "Where" => e::where_op,
        "Cast" => e::cast,
        "Identity" => e::identity,
        "Dropout" => e::dropout,
        "MatMul" => matmul::matmul,
        "Gemm" => matmul::gemm,
        "Conv" => conv::conv,
        "ConvTranspose" => conv::conv_transpose,
        "MaxPool" | "AveragePool" => pool::pool,
        "GlobalAveragePool" | "GlobalMaxPool" => pool::global_pool,
        "BatchNormalization" => norm::batch_norm,
        "LayerNormalization" => norm::layer_norm,
        "Softmax" | "LogSoftmax" => norm::softmax,
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd"
        | "ReduceSumSquare" | "ReduceL2" => reduce::reduce,
        "ArgMax" | "ArgMin" => reduce::arg_reduce,
        "Reshape" => shape::reshape,
        "Flatten" => shape::flatten,
        "Transpose" => shape::transpose,
        "Squeeze" => shape::squeeze,
        "Unsqueeze" => shape::unsqueeze,
        "Concat" => shape::concat,
        "Split" => shape::split,
        "Slice" => shape::slice,
        "Gather" => shape::gather,
        "Expand" => shape::expand,
        "Tile" => shape::tile,
        "Shape" => shape::shape,
        "Size" => shape::size,
        "Constant" => shape::constant,
        "ConstantOfShape" => shape::constant_of_shape,
        "Range" => shape::range,
        "Pad" => resize::pad,
        "Resize" => resize::resize,
        "Einsum" => einsum::einsum,
        "QuantizeLinear" => quant::quantize_linear,
        "DequantizeLinear" => quant::dequantize_linear,
        _ => return None,
    })
}

pub(crate) use elementwise::cast_value;
pub(crate) use quant::{codes as quant_codes, CODE_TYPES};

/// Whether zeropoint can run this node.
pub fn supports(node: &Node) -> bool {
    matches!(node.domain.as_str(), "" | "ai.onnx") && lookup(&node.op).is_some()
}

/// Runs one node on its inputs.
pub fn run(cx: &Cx) -> R<Vec<Value>> {
    let f = lookup(&cx.node.op)
        .filter(|_| supports(cx.node))
        .ok_or_else(|| OpError(format!("operator {} is not supported", cx.node.op)))?;
    // candle answers some type combinations with a panic (unimplemented kernels); a user gets
    // an error naming the node instead.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(cx))).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(OpError(format!("not supported for these inputs ({what})")))
    })
}

/// candle's result as an operator result.
pub(crate) fn c<T>(r: candle_core::Result<T>) -> R<T> {
    Ok(r?)
}

impl<'a> Cx<'a> {
    /// Input `i`, which the operator requires.
    pub fn input(&self, i: usize) -> R<&'a Value> {
        self.opt(i)
            .ok_or_else(|| OpError(format!("missing required input {i}")))
    }

    /// Input `i` if given (optional inputs may be absent or named "").
    pub fn opt(&self, i: usize) -> Option<&'a Value> {
        self.inputs.get(i).and_then(Option::as_ref)
    }

    /// Input `i` as float32: integer operands are rejected with the op's name.
    pub fn float(&self, i: usize) -> R<&'a Tensor> {
        let v = self.input(i)?;
        if !v.dtype.is_float() {
            return Err(OpError(format!(
                "input {i} is {}, expected a float tensor",
                v.dtype
            )));
        }
        Ok(&v.tensor)
    }

    /// Input `i` read as integers (shapes, axes, pads), or None if absent.
    pub fn ints_input(&self, i: usize) -> R<Option<Vec<i64>>> {
        Ok(self.opt(i).map(Value::to_i64s).transpose()?)
    }

    fn attr(
        &self,
        name: &str,
        ty: AttributeType,
    ) -> R<Option<&'a crate::onnx::proto::AttributeProto>> {
        match self.node.attribute(name) {
            None => Ok(None),
            Some(a) if a.r#type() == ty || a.r#type() == AttributeType::Undefined => Ok(Some(a)),
            Some(a) => Err(OpError(format!(
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

/// Resolves a possibly negative axis against `rank`.
pub(crate) fn axis(a: i64, rank: usize) -> R<usize> {
    let r = rank as i64;
    if a < -r || a >= r.max(1) {
        return Err(OpError(format!("axis {a} is out of range for rank {rank}")));
    }
    Ok(if a < 0 { a + r } else { a } as usize)
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
    let idx = Tensor::from_slice(idx, idx.len(), t.device())?;
    Ok(t.contiguous()?.index_select(&idx, dim)?)
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
                _ => Err(OpError(format!("shapes {a:?} and {b:?} do not broadcast"))),
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
    crate::onnx::dtype_of(code as i32).ok_or_else(|| {
        OpError(format!(
            "element type {} is not supported",
            crate::onnx::type_name(code as i32)
        ))
    })
}
