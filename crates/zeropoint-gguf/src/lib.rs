//! # zeropoint-gguf
//!
//! GGUF, llama.cpp's model file, and the job of llama.cpp's `llama-quantize`: turning a float
//! GGUF into Q8_0, Q4_K_M and the other ggml formats, byte for byte as llama.cpp would.
//!
//! - [`read`]: the header parsed with every length checked, tensor data memory-mapped;
//! - [`write`]: header and metadata as ggml writes them, tensor data streamed, atomic;
//! - [`value`]: metadata values, kept exactly as stored (a read-then-write is lossless);
//! - [`preset`]: llama.cpp's file types and its rules for the type of each tensor;
//! - [`imatrix`]: importance matrices from `llama-imatrix`, for importance-weighted rounding;
//! - [`quantize`]: the conversion itself, over [`zeropoint_core::ggml`]'s block formats, from
//!   any [`input::Input`]: a GGUF file, or
//! - [`hf`] and [`tokenizer`]: a Hugging Face checkpoint of a Llama-family model, read as
//!   llama.cpp's `convert_hf_to_gguf.py` would convert it;
//! - [`vocab`] and [`llama`]: calibration text tokenized as llama.cpp does and run through the
//!   model, layer by layer, for GPTQ and [`awq`] inside ggml's formats
//!   ([`quantize::Calibration`]).
//!
//! Nothing here touches ONNX or zeropoint's ONNX engine (the llama forward pass is its own, on the
//! `gemm` crate); the crate depends on zeropoint-onnx only for its atomic file writer, its
//! safetensors parser and its memory limits.
//!
//! ```no_run
//! use std::path::Path;
//! use zeropoint_gguf::{quantize, read::GgufFile, preset::Preset};
//!
//! let input = GgufFile::open(Path::new("model-f16.gguf"))?;
//! let opts = quantize::Options {
//!     preset: Preset::Q4_K_M,
//!     imatrix: None,
//!     calibration: None,
//!     pure: false,
//!     allow_requantize: false,
//! };
//! quantize::quantize(&input, Path::new("model-q4_k_m.gguf"), &opts, |_, _| {}, |_| {})?;
//! # Ok::<(), zeropoint_gguf::Error>(())
//! ```

pub mod awq;
pub mod error;
pub mod hf;
pub mod imatrix;
pub mod input;
mod json;
pub mod llama;
mod matmul;
pub mod preset;
pub mod quantize;
pub mod read;
pub mod tokenizer;
pub mod value;
pub mod vocab;
pub mod write;

pub use error::{Error, Result};

/// Uniform values in [−0.5, 0.5) from a seed: the tests' one generator.
#[cfg(test)]
fn uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut seed = seed;
    move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
}
