//! # zeropoint-graph
//!
//! An ONNX model as a graph zeropoint can rewrite: nodes in topological order with typed
//! operators ([`Op`]), declared inputs and outputs, initializers as raw tensors. No tensor library
//! lives here; the passes that must run operators ask an [`Evaluator`] (zeropoint-engine's).
//!
//! - [`graph`]: the IR, read from and written back into the original `ModelProto` (opsets,
//!   metadata and doc strings kept), with producer/consumer queries and fresh names for rewrites.
//! - [`op`]: the operator of a node, parsed once from its `op_type` and domain.
//! - [`canonicalize`]: constant folding, BatchNorm folding, bias Adds into Convs, dead nodes,
//!   HardSwish as its definition: the form every later step assumes.
//! - [`attention_scale`]: attention's `/ √d` folded into the query projection (one of
//!   canonicalization's passes).
//! - [`scale_shift`]: a per-channel Mul/Add or BatchNorm that no layer absorbs, as a depthwise
//!   Conv (one of canonicalization's passes).
//! - [`zero_state`]: a recurrent op's initial state that is zeros by construction, dropped (one
//!   of canonicalization's passes).
//! - [`hard_swish`]: a HardSwish written out as Add, Clip, Mul and Div, made HardSigmoid and Mul
//!   (one of canonicalization's passes).
//! - [`neutral_ops`]: `x + 0`, `x · 1` and the like by a 0-d constant, and Casts to their
//!   input's type, removed (one of canonicalization's passes).
//! - [`transpose_sink`]: layout Transposes moved past element-wise ops until they meet their
//!   inverse (one of canonicalization's passes).
//! - [`batch_norm`]: what a folded or rewritten BatchNorm says of its output.
//! - [`opset`]: upgrading a graph to a newer opset of the default domain, one step per opset.
//! - [`half_precision`]: a float16 or bfloat16 model rewritten to compute in float32 behind the
//!   same interface, for quantization.
//! - [`pattern`]: what quantization looks for, the fused groups (layer + bias + Relu/Clip).
//! - [`evaluator`]: what the passes ask of whoever runs operators.
//!
//! ```no_run
//! use std::path::Path;
//! use zeropoint_graph::{canonicalize::canonicalize, evaluator::Structural, Graph};
//!
//! let mut graph = Graph::load(Path::new("model.onnx"))?;
//! // Without an engine, constants are not folded; BatchNorms and bias Adds still are.
//! let report = canonicalize(&mut graph, &Structural)?;
//! println!("{} BatchNorm folded", report.folded_batch_norms.len());
//! # Ok::<(), zeropoint_graph::Error>(())
//! ```

pub mod attention_scale;
pub mod batch_norm;
pub mod canonicalize;
pub mod error;
pub mod evaluator;
pub mod gelu;
pub mod graph;
pub mod half_precision;
pub mod hard_swish;
pub mod neutral_ops;
pub mod op;
pub mod opset;
pub mod pattern;
pub mod reshape_dims;
mod rewrite;
pub mod scale_shift;
pub mod transpose_sink;
pub mod zero_state;

pub use error::{Error, Result};
pub use evaluator::Evaluator;
pub use graph::{Dim, Graph, Node, ValueInfo, ValueType};
pub use op::Op;
