//! # zeropoint-engine
//!
//! Runs ONNX graphs in Rust, because quantization needs more than a runtime gives: calibration
//! observes every intermediate tensor, simulation replaces them with fake-quantized ones, and
//! AdaRound and QAT need gradients through the model.
//!
//! - [`value`]: a candle-core tensor and the ONNX element type it stands for.
//! - [`ops`]: one short function per operator family, on candle tensors, so that gradients
//!   flow through the same code (candle's autodiff).
//! - [`exec`]: the [`Executor`], with a hook that observes or replaces every value, the values
//!   inside If branches and Loop/Scan bodies included (its `control_flow` module runs those).
//! - [`infer`]: the shape and element type of every value, from probe runs of the executor.
//! - [`evaluator`]: the engine as the evaluator that zeropoint-graph's passes ask
//!   (constant folding, value types).
//!
//! ```no_run
//! use std::collections::HashMap;
//! use std::path::Path;
//! use zeropoint_engine::{Executor, Value};
//! use zeropoint_graph::Graph;
//! use zeropoint_onnx::tensor_file;
//!
//! let graph = Graph::load(Path::new("model.onnx"))?;
//! let input = &tensor_file::read_arrays(Path::new("x.npy"))?[0];
//! let feeds = HashMap::from([("input".to_string(), Value::from_raw(input)?)]);
//! let mut seen = Vec::new();
//! let outputs = Executor::new(&graph)?.run_with(feeds, &mut |name, v| {
//!     seen.push((name.to_string(), v.shape().to_vec())); // every intermediate tensor
//!     Ok(v)
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod error;
pub mod evaluator;
pub mod exec;
pub mod infer;
pub mod ops;
pub mod value;

pub use error::{Error, Result};
pub use evaluator::Engine;
pub use exec::Executor;
pub use value::Value;
