//! The ONNX loader on arbitrary bytes: decoding, turning initializers into tensors and building
//! the graph IR (names, topological order, operator support) must return errors, never panic.
//! Run: `cargo fuzz run onnx_load` (see fuzz/README.md).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use zeropoint_graph::Graph;
use zeropoint_onnx::{model, piecewise};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz/nonexistent/model.onnx");
    let whole = model::decode(data, path);
    if let Some(m) = piecewise::decode(data, data.len() as u64) {
        // Whole decoding refuses only a model without a graph then, or one nested as deep as
        // prost's recursion limit, which piecewise decoding counts from the graph.
        match &whole {
            // Compared encoded: a NaN in float_data makes equal messages unequal.
            Ok(whole) => assert!(
                model::encode(&m, path).ok() == model::encode(whole, path).ok(),
                "piecewise decoding differs"
            ),
            Err(e) => assert!(
                m.graph.is_none() || format!("{e:?}").contains("recursion"),
                "piecewise decoding took a bad file: {e:?}"
            ),
        }
    }
    if let Ok(m) = whole {
        let _ = model::initializers(&m, path);
        if let Ok(graph) = Graph::from_model(&m, path) {
            let _ = zeropoint_engine::exec::unsupported(&graph);
            let _ = zeropoint_graph::pattern::fused_groups(&graph);
        }
    }
});
