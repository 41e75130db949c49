//! Reading and writing ONNX models: a read -> write round trip of the real models keeps every
//! field, passes onnx.checker's full check and runs in ONNX Runtime with identical outputs, with
//! and without external data (tests/python/onnx_roundtrip.py).

#[path = "../../../tests/support.rs"]
mod support;

use std::path::{Path, PathBuf};

use support::{chain, repo_root, run_python};
use zeropoint_onnx::external_data::load_external_data;
use zeropoint_onnx::model::{self as onnx, save, save_with_external_data};

fn shared_models() -> Vec<PathBuf> {
    let dir = repo_root().join("../shared/assets/models");
    let mut models: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    models.sort();
    // And the MiniLM-L3 encoder that scripts/fetch-assets fetches (69 MB, opset 17).
    let minilm = repo_root().join(".cache/shared/minilm-l3/paraphrase-MiniLM-L3-v2.onnx");
    assert!(
        minilm.exists(),
        "run scripts/fetch-assets first (scripts/test does)"
    );
    models.push(minilm);
    models
}

fn check(original: &Path, written: &Path) {
    let out = run_python("onnx_roundtrip.py", &[original, written]);
    assert!(
        out.trim_end().ends_with("mismatches=0") && out.contains("equal=True"),
        "{}: {out}",
        original.display()
    );
}

#[test]
fn real_models_survive_a_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let models = shared_models();
    assert_eq!(models.len(), 5);
    for model in &models {
        let m = onnx::load(model).unwrap();
        // Loaded one initializer at a time (model::load), the model is the one decoded whole.
        let whole = onnx::decode(&std::fs::read(model).unwrap(), model).unwrap();
        assert!(m == whole, "{}", model.display());
        let out = dir.path().join(model.file_name().unwrap());
        save(&m, &out).unwrap();
        check(model, &out);
        // And the written file reads back to the same message.
        assert_eq!(onnx::load(&out).unwrap(), m);
    }
}

#[test]
fn external_data_is_written_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let model = repo_root().join("../shared/assets/models/cifar10_keras_cnn_bn.onnx");
    let m = onnx::load(&model).unwrap();
    let out = dir.path().join("split.onnx");
    save_with_external_data(&m, &out, "split.weights", 1024, &model).unwrap();
    let small = std::fs::metadata(&out).unwrap().len();
    let side = std::fs::metadata(dir.path().join("split.weights"))
        .unwrap()
        .len();
    assert!(
        small < 100_000,
        "the model file kept the weights: {small} bytes"
    );
    assert!(side > 3_000_000, "{side}");
    check(&model, &out);
    // zeropoint reads it back, side file included, to the original model.
    let mut back = onnx::load(&out).unwrap();
    assert_ne!(back, m);
    // The side file's size is what it reports reading, counted once for all its tensors.
    assert_eq!(load_external_data(&mut back, &out).unwrap(), side);
    assert_eq!(back, m);
    // Saving again elsewhere from the split model brings the data along.
    let again = dir.path().join("sub");
    std::fs::create_dir(&again).unwrap();
    let split = onnx::load(&out).unwrap();
    let out2 = again.join("m.onnx");
    save_with_external_data(&split, &out2, "m.data", 4096, &out).unwrap();
    check(&model, &out2);
}

/// A model over the file size limit is written with its data beside it, under the model's
/// file name + `.data`, and reads back (in zeropoint and in ONNX Runtime) to the same model;
/// one under the limit stays one file.
#[test]
fn a_model_over_the_limit_is_written_with_a_side_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = repo_root().join("../shared/assets/models/cifar10_keras_cnn_bn.onnx");
    let m = onnx::load(&model).unwrap();
    let out = dir.path().join("big.onnx");
    let written = onnx::save_owned_within(m.clone(), &out, 1_000_000).unwrap();
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let side = dir.path().join("big.onnx.data");
    assert!(size(&out) < 100_000);
    assert_eq!(written, size(&out) + size(&side));
    check(&model, &out);
    let mut back = onnx::load(&out).unwrap();
    load_external_data(&mut back, &out).unwrap();
    assert_eq!(back, m);
    let small = dir.path().join("small.onnx");
    assert_eq!(onnx::save_owned(m.clone(), &small).unwrap(), size(&small));
    assert!(!dir.path().join("small.onnx.data").exists());
    assert_eq!(onnx::load(&small).unwrap(), m);
}

#[test]
fn bad_external_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = repo_root().join("../shared/assets/models/ccexam_mnist_cnn.onnx");
    let m = onnx::load(&model).unwrap();
    let out = dir.path().join("m.onnx");
    save_with_external_data(&m, &out, "w.bin", 0, &model).unwrap();
    // A truncated side file.
    let w = dir.path().join("w.bin");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let mut back = onnx::load(&out).unwrap();
    let e = chain(&load_external_data(&mut back, &out).unwrap_err());
    assert!(e.contains("too short for offset"), "{e}");
    // Locations must be plain names when writing.
    for bad in ["../x.bin", "/tmp/x.bin", ""] {
        let e = save_with_external_data(&m, &out, bad, 0, &model).unwrap_err();
        assert!(e.to_string().contains("must be a plain file name"), "{e}");
    }
}
