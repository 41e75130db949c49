//! Opset upgrades checked in ONNX Runtime: every operator case of tests/python/op_cases.py below
//! opset 21 and every real model is upgraded to opset 21 by zeropoint; the upgraded model must
//! pass onnx.checker's full check and ONNX Runtime must run it to the outputs of the original
//! (tests/python/ort_equivalence.py --batch), and so must zeropoint's executor.

#[path = "../../../tests/support.rs"]
mod support;

#[path = "../../../tests/compare.rs"]
mod compare;

#[path = "../../../tests/models.rs"]
mod models;

use std::path::{Path, PathBuf};

use models::{real_models, write_references};
use support::{chain, repo_root, run_python};
use zeropoint_engine::{Engine, Executor};
use zeropoint_graph::{opset, Graph};
use zeropoint_onnx::model::{self as onnx, save};

const TARGET: i64 = 21;

/// Cases that have no opset-21 spelling: the upgrade must refuse them with this message.
const REFUSED: &[(&str, &str)] = &[
    (
        "Resize_opset11_tf_half_pixel_for_nn",
        "coordinate_transformation_mode 'tf_half_pixel_for_nn' was removed in opset 13",
    ),
    ("Clip_opset6_attrs", "models below opset 7 are not upgraded"),
];

/// Upgrades `model` into `out`; None if the model already has the target opset.
fn upgrade(model: &Path, out: &Path) -> Result<Option<Graph>, String> {
    let proto = onnx::load(model).map_err(|e| chain(&e))?;
    let mut g = Graph::load(model).map_err(|e| chain(&e))?;
    if g.opset >= TARGET {
        return Ok(None);
    }
    opset::upgrade(&mut g, TARGET, &Engine).map_err(|e| chain(&e))?;
    save(&g.to_model(&proto).map_err(|e| chain(&e))?, out).map_err(|e| chain(&e))?;
    Ok(Some(g))
}

/// Has ONNX Runtime compare each (original, upgraded, inputs, skipped outputs); returns failures.
fn ort_compare(dir: &Path, entries: Vec<serde_json::Value>) -> Vec<String> {
    let list = dir.join("upgraded.json");
    std::fs::write(&list, serde_json::to_vec(&entries).unwrap()).unwrap();
    let line = run_python("ort_equivalence.py", &[Path::new("--batch"), &list]);
    let results: Vec<serde_json::Value> = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(results.len(), entries.len());
    let mut failures = Vec::new();
    for r in results {
        let ok = r["error"].is_null()
            && r["exact"].as_bool() == Some(true)
            && r["max_rel_err"].as_f64().is_some_and(|e| e <= 1e-5);
        if !ok {
            failures.push(r.to_string());
        }
    }
    failures
}

fn entry(original: &Path, upgraded: &Path, inputs: &Path, skip: &[&str]) -> serde_json::Value {
    serde_json::json!({"original": original, "rewritten": upgraded, "inputs": inputs, "skip": skip})
}

#[test]
fn upgraded_operator_cases_run_as_before() {
    let dir = tempfile::tempdir().unwrap();
    run_python("op_cases.py", &[dir.path()]);
    let mut entries = Vec::new();
    let mut failures = Vec::new();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    cases.sort();
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let model = case.join("model.onnx");
        // Out-of-scope cases (refused by the executor, see ort_ops.rs) have nothing to keep.
        let Ok(g) = Graph::load(&model) else { continue };
        if Executor::new(&g).is_err() || compare::run_case(&case, &["mask"]).is_err() {
            continue;
        }
        let upgraded = case.join("upgraded.onnx");
        let refusal = REFUSED.iter().find(|(c, _)| *c == name).map(|(_, m)| *m);
        match (upgrade(&model, &upgraded), refusal) {
            (Ok(None), None) => continue,
            (Ok(Some(_)), None) => {}
            (Err(e), Some(want)) if e.contains(want) && !e.contains('\n') => continue,
            (Err(e), _) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
            (Ok(_), Some(want)) => {
                failures.push(format!("{name}: upgraded, but should be refused: {want}"));
                continue;
            }
        }
        // Before opset 12, ONNX Runtime's Dropout mask departs from the spec (see ort_ops.rs).
        let skip: &[&str] = if name == "Dropout_opset11_mask" {
            &["mask"]
        } else {
            &[]
        };
        if let Err(e) = compare::run_model(&upgraded, &case, skip) {
            failures.push(format!("{name}: zeropoint on the upgraded model: {e}"));
        }
        entries.push(entry(&model, &upgraded, &case.join("inputs.npz"), skip));
    }
    let n = entries.len();
    failures.extend(ort_compare(dir.path(), entries));
    println!(
        "{n} operator cases upgraded to opset {TARGET}, {} failures",
        failures.len()
    );
    assert!(n > 150, "only {n} cases below opset {TARGET}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn upgraded_real_models_run_as_before() {
    let refs = tempfile::tempdir().unwrap();
    write_references(refs.path());
    let mut entries = Vec::new();
    for (name, model) in real_models() {
        let case = refs.path().join(name);
        let upgraded = refs.path().join(format!("{name}.opset{TARGET}.onnx"));
        let g = upgrade(&model, &upgraded).unwrap().expect(name);
        assert_eq!(g.opset, TARGET);
        compare::run_model(&upgraded, &case, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        entries.push(entry(&model, &upgraded, &case.join("inputs.npz"), &[]));
    }
    let failures = ort_compare(refs.path(), entries);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn old_and_unknown_opsets_are_refused() {
    let model = repo_root().join("../shared/assets/models/ccexam_mnist_cnn.onnx");
    let mut g = Graph::load(&model).unwrap();
    let e = chain(&opset::upgrade(&mut g, 99, &Engine).unwrap_err());
    assert!(
        e.ends_with("cannot upgrade to opset 99: the newest supported is 22"),
        "{e}"
    );
    g.opset = 6;
    let e = chain(&opset::upgrade(&mut g, 13, &Engine).unwrap_err());
    assert!(
        e.ends_with("cannot upgrade opset 6 to 13: models below opset 7 are not upgraded"),
        "{e}"
    );
}
