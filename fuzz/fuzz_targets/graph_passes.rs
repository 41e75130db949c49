//! The graph passes on arbitrary bytes read as an ONNX model: the IR, opset upgrade,
//! canonicalization (constants folded by the engine), cross-layer equalization (with high-bias
//! absorption from synthetic data statistics), quantizer
//! placement, parameters from synthetic ranges, analytic bias correction and the QDQ export. Errors, never panics. The memory limit is 512 KiB here:
//! an operator's legitimate work grows with the output it may allocate, so a small limit keeps
//! each input under the 1 s timeout; larger outputs take the same refusal path. Loops stop after
//! 1000 iterations for the same reason. Seed it with the operator cases (fuzz/README.md).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use zeropoint_engine::Engine;
use zeropoint_graph::canonicalize::{canonicalize, decompose_hard_swish};
use zeropoint_graph::{opset, Graph};
use zeropoint_onnx::{limits, model};
use zeropoint_quant::calibrate::Ranges;
use zeropoint_quant::channel_stats::ChannelStats;
use zeropoint_quant::placement::{Choices, Plan};
use zeropoint_quant::settings::Settings;
use zeropoint_quant::bias_correction::correct_biases_analytic;
use zeropoint_quant::{equalize, params, qdq_export};

fuzz_target!(|data: &[u8]| {
    limits::set_max_bytes(512 << 10);
    limits::set_max_iterations(1000);
    let path = Path::new("fuzz/nonexistent/model.onnx");
    let Ok(base) = model::decode(data, path) else {
        return;
    };
    let Ok(mut graph) = Graph::from_model(&base, path) else {
        return;
    };
    if zeropoint_engine::exec::check_supported(&graph).is_err() {
        return;
    }
    let settings = Settings::default();
    if opset::upgrade(&mut graph, qdq_export::required_opset(&settings), &Engine).is_err() {
        return;
    }
    let Ok(mut canonical) = canonicalize(&mut graph, &Engine) else {
        return;
    };
    let cle = equalize::Options {
        relu6_as_relu: true,
        absorb_high_bias: true,
    };
    // High-bias absorption from data: statistics of a high, narrow output (μ 5, σ 1, min 1) on
    // each site's channels as its weight counts them (a dense layer's, miscounted, moves nothing).
    let measured = equalize::absorption_sites(&graph, cle)
        .into_keys()
        .filter_map(|v| {
            let node = graph.nodes.iter().find(|n| n.outputs.first() == Some(&v))?;
            let channels = *graph.initializer(node.inputs.get(1)?)?.shape.first()?;
            let stats = ChannelStats {
                count: 1000.0,
                sum: vec![5000.0; channels],
                sum_of_squares: vec![26_000.0; channels],
                min: vec![1.0; channels],
            };
            Some((v, stats))
        })
        .collect();
    let stats = &mut canonical.batch_norm_stats;
    if equalize::equalize(&mut graph, stats, &measured, cle).is_err() {
        return;
    }
    decompose_hard_swish(&mut graph);
    let Ok(types) = zeropoint_engine::infer::dtypes(&graph) else {
        return;
    };
    let Ok(plan) = Plan::new(&graph, types, Choices::excluding(&[])) else {
        return;
    };
    let ranges = Ranges(plan.activations.iter().map(|a| (a.clone(), (-1.0, 1.0))).collect());
    let Ok(params) = params::params(&graph, &plan, &ranges, &settings) else {
        return;
    };
    let stats = &canonical.batch_norm_stats;
    // No data: E[x] from the BatchNorms alone.
    let means = std::collections::HashMap::new();
    if correct_biases_analytic(&mut graph, &plan, &params, stats, &means).is_err() {
        return;
    }
    let Ok(params) = params::params(&graph, &plan, &ranges, &settings) else {
        return;
    };
    if let Ok(m) = qdq_export::export(&graph, &plan, &params, &base) {
        let _ = model::encode(&m, path);
    }
});
