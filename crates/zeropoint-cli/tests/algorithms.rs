//! The white paper's PTQ algorithms against independent numpy implementations of their
//! formulas (tests/python/cle_reference.py, bias_correction_reference.py): cross-layer
//! equalization, high-bias absorption, empirical bias correction and AdaRound's reconstruction
//! losses (adaround_reference.py, in ONNX Runtime); the weight ranges fitted to the layers'
//! outputs (output_ranges_reference.py); and the debugging flow
//! (`analyze`) and mixed precision against ONNX Runtime; CLE on a model whose per-tensor W8A8
//! collapses (scripts/cle_collapse.py).

#[path = "../../../tests/support.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use support::check_reference;

#[test]
fn cross_layer_equalization_matches_numpy() {
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    check_reference("cle_reference.py", zeropoint, "cle reference");
}

/// The paper's effect on a model whose per-tensor W8A8 collapses: the MNIST CNN with its
/// channels scaled by up to four decades (the same function), at chance level per-tensor and
/// back to float accuracy with CLE (scripts/cle_collapse.py, on 2 000 test images).
#[test]
fn cle_restores_a_model_whose_per_tensor_w8a8_collapses() {
    let zeropoint = env!("CARGO_BIN_EXE_zeropoint");
    let script = support::repo_root().join("scripts/cle_collapse.py");
    let args = [
        "--zeropoint",
        zeropoint,
        "--eval",
        "2000",
        "--spread",
        "4",
        "--check",
    ];
    let out = Command::new(support::python())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("cle collapse: all checks passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bias_correction_matches_a_sequential_reference_in_onnx_runtime() {
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    check_reference(
        "bias_correction_reference.py",
        zeropoint,
        "bias correction reference",
    );
}

/// AdaRound's reported reconstruction losses are ONNX Runtime's, recomputed from the float
/// model's layer inputs and the exported model's (the quantized input, with earlier layers'
/// learned weights), as the paper's asymmetric reconstruction defines them.
#[test]
fn adaround_losses_match_onnx_runtime() {
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    check_reference("adaround_reference.py", zeropoint, "adaround reference");
}

/// `--weight-range output`'s fitted ranges, scales and losses are those of a numpy search over
/// ONNX Runtime's layer products (tests/python/output_ranges_reference.py), per channel and per
/// tensor, with float and with quantized activations.
#[test]
fn output_weight_ranges_match_a_numpy_search_in_onnx_runtime() {
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    check_reference(
        "output_ranges_reference.py",
        zeropoint,
        "output ranges reference",
    );
}

/// `--recipe standard` is CLE, MSE weight ranges and AdaRound together (bias correction with
/// `--bias-correction`; output-fitted weight ranges with `--weight-range output`), and no
/// output depends on the thread count (AdaRound, bias correction and the range fit run their
/// samples in parallel).
#[test]
fn standard_recipe_is_deterministic_and_does_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let model = support::repo_root().join("../shared/assets/models/ccexam_svhn_cnn_bn.onnx");
    let mut rng = support::Rng::new(11);
    let values: Vec<f32> = (0..12 * 3 * 32 * 32).map(|_| rng.normal()).collect();
    let x = dir.path().join("x.npy");
    zeropoint_onnx::npy::write(&x, &[12, 3, 32, 32], &values).unwrap();
    for (tag, extra, key) in [
        ("adaround", &["--adaround", "50"][..], "adaround"),
        ("bias", &["--bias-correction"][..], "bias_corrections"),
        (
            "output",
            &["--weight-range", "output", "--bias-correction"][..],
            "output_ranges",
        ),
    ] {
        let mut files = Vec::new();
        for threads in ["1", "3"] {
            let out = dir.path().join(format!("{tag}{threads}.onnx"));
            let run = Command::new(env!("CARGO_BIN_EXE_zeropoint"))
                .args([
                    "quantize",
                    "--recipe",
                    "standard",
                    "--json",
                    "--adaround-samples",
                    "4",
                ])
                .args(extra)
                .args([Path::new("-o"), &out, &model, Path::new("--calib"), &x])
                .env("RAYON_NUM_THREADS", threads)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&run.stderr);
            assert!(run.status.success(), "{stderr}");
            let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
            assert_eq!(
                summary["equalization"]["pairs"].as_array().unwrap().len(),
                6
            );
            assert_eq!(
                summary[key].as_array().unwrap().len(),
                8,
                "{tag}: {summary}"
            );
            files.push(std::fs::read(&out).unwrap());
        }
        assert_eq!(
            files[0], files[1],
            "{tag}: the thread count changed the model"
        );
    }
    // The equalization options need equalization.
    let run = Command::new(env!("CARGO_BIN_EXE_zeropoint"))
        .args(["quantize", "--cle-relu6", "--calib"])
        .args([&x, &model])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("go with --cle"), "{stderr}");
    // Output-fitted weight ranges need the quantized model's layer inputs.
    let calib = [Path::new("--calib"), &x];
    for (extra, says) in [
        (
            &[Path::new("--mode"), Path::new("dynamic")][..],
            "static quantization only",
        ),
        (
            &[&calib[..], &[Path::new("--limit-pairs")]].concat()[..],
            "does not go with --limit-pairs",
        ),
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_zeropoint"))
            .args(["quantize", "--weight-range", "output"])
            .arg(&model)
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(1), "{extra:?}");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            stderr.contains(says) && stderr.lines().count() == 1,
            "{stderr}"
        );
    }
}

/// `analyze`'s scores are ONNX Runtime's on the exported models, its report is complete, and
/// mixed precision meets its target in ONNX Runtime (tests/python/analyze_reference.py).
#[test]
fn analysis_and_mixed_precision_match_onnx_runtime() {
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    check_reference("analyze_reference.py", zeropoint, "analyze reference");
}
