//! The ONNX loader on arbitrary bytes: decoding, turning initializers into tensors and building
//! the graph IR (names, topological order, operator support) must return errors, never panic.
//! Run: `cargo fuzz run onnx_load` (see fuzz/README.md).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use zeropoint_model::{onnx, Graph};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz/nonexistent/model.onnx");
    if let Ok(model) = onnx::decode(data, path) {
        let _ = onnx::initializers(&model, path);
        if let Ok(graph) = Graph::from_model(&model, path) {
            let _ = graph.unsupported();
            let _ = zeropoint_model::canonicalize::fused_groups(&graph);
        }
    }
});
