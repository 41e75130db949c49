//! The ONNX loader on arbitrary bytes: decoding and turning initializers into tensors must return
//! errors, never panic. Run: `cargo fuzz run onnx_load` (see fuzz/README.md).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use zeropoint_model::onnx;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz/nonexistent/model.onnx");
    if let Ok(model) = onnx::decode(data, path) {
        let _ = onnx::initializers(&model, path);
    }
});
