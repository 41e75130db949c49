//! The .npy and .safetensors parsers on arbitrary bytes: errors, never panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use zeropoint_onnx::{npy, safetensors};

fuzz_target!(|data: &[u8]| {
    let _ = npy::parse(data, Path::new("x.npy"), "x");
    let _ = safetensors::parse(data, Path::new("x.safetensors"));
});
