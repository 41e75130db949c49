//! # zeropoint-core
//!
//! The uniform affine quantizer and nothing about models: the math every other part of zeropoint
//! goes through, in a crate light enough for a candle or burn user to depend on alone.
//!
//! ```text
//! q  = clamp(round_half_to_even(x / s) + z, qmin, qmax)     quantize
//! x^ = (q - z) · s                                          dequantize
//! fake_quant(x) = dequantize(quantize(x))
//! ```
//!
//! - [`Scheme`]: bit-width, signed/unsigned, symmetric/asymmetric, narrow range, power-of-two
//!   scales, and [`Granularity`] (per-tensor, per-axis, per-block).
//! - [`QParam`] / [`QParams`]: scale and zero-point from a range, per tensor, channel or block.
//! - [`kernel`]: quantize / dequantize / fake-quant over slices, bit-exact with ONNX
//!   QuantizeLinear / DequantizeLinear, vectorized and parallel; [`pack`] for int4/int2 storage;
//!   [`QTensor`] ties codes, shape and parameters together.
//! - [`observer`]: range estimation (min-max, moving average, percentile, MSE, entropy,
//!   cross-entropy, BatchNorm-based), streaming, in bounded memory, mergeable and deterministic.
//! - [`metrics`]: MSE, SQNR, cosine, max error, and clipping vs rounding error.
//! - [`stats`]: what the data looks like (moments, tails, percentiles, histograms).
//! - [`ggml`]: llama.cpp's block formats (Q8_0, Q4_0 .. Q6_K), byte-identical to ggml's reference
//!   quantizers, and GPTQ inside them.
//! - [`linalg`]: the Cholesky factor of an inverse Hessian, for GPTQ.
//! - [`awq`]: AWQ's per-channel scales.
//!
//! ```
//! use zeropoint_core::{QTensor, Scheme};
//! let x = [-1.0f32, -0.25, 0.0, 0.5, 2.0];
//! let q = QTensor::quantize(&x, &[5], &Scheme::asymmetric_unsigned(8)).unwrap();
//! let p = q.params.get(0);
//! assert_eq!(p.zero_point, 85); // round(0 - (-1) / (3/255))
//! let back = q.dequantize().unwrap();
//! assert!(back.iter().zip(&x).all(|(a, b)| (a - b).abs() <= p.scale / 2.0));
//! ```

pub mod awq;
pub mod error;
pub mod ggml;
pub mod kernel;
pub mod layout;
pub mod linalg;
pub mod metrics;
pub mod observer;
pub mod pack;
pub mod params;
pub mod qtensor;
pub mod scheme;
pub mod stats;

pub use error::{Error, Result};

/// Elements per parallel task, for every kernel and reduction: large enough to amortize
/// scheduling, small enough to balance two to dozens of cores. Reductions combine per-chunk
/// results in chunk order, which is what makes them independent of the thread count.
pub(crate) const CHUNK: usize = 1 << 16;
pub use kernel::{dequantize, fake_quant, fake_quant_in_place, quantize, Code};
pub use layout::Layout;
pub use pack::{dequantize_packed, quantize_packed, Packing};
pub use params::{QParam, QParams};
pub use qtensor::{Codes, QTensor, Storage};
pub use scheme::{Granularity, Grid, Scheme};
