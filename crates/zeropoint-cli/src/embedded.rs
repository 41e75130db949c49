//! The default model and data built into the binary, so that the main job runs anywhere: the
//! MNIST CNN of assets/models, 500 MNIST training images to calibrate on and 2000 test images
//! with labels to evaluate on (assets/README.md has their provenance and licenses).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub const MODEL: &[u8] = include_bytes!("../../../assets/models/mnist_cnn.onnx");
pub const MODEL_NAME: &str = "<embedded>/mnist_cnn.onnx";
const CALIB_IMAGES: &[u8] =
    include_bytes!("../../../assets/data/mnist-train-500-images-idx3-ubyte.gz");
const TEST_IMAGES: &[u8] =
    include_bytes!("../../../assets/data/mnist-test-2000-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] =
    include_bytes!("../../../assets/data/mnist-test-2000-labels-idx1-ubyte.gz");

/// MNIST preprocessing of the embedded model: (x/255 − 0.1307)/0.3081.
pub const MEAN: f32 = 0.1307;
pub const STD: f32 = 0.3081;

/// The embedded files, written into `dir` (the pipeline reads files).
pub struct Files {
    pub model: PathBuf,
    pub calib_images: PathBuf,
    pub test_images: PathBuf,
    pub test_labels: PathBuf,
}

/// Sets `data` to the embedded model's preprocessing.
pub fn use_preprocessing(data: &mut crate::data_args::DataArgs) {
    data.mean = vec![MEAN];
    data.std = vec![STD];
}

pub fn write(dir: &Path) -> Result<Files> {
    let put = |name: &str, bytes: &[u8]| -> Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("{}: cannot write", p.display()))?;
        Ok(p)
    };
    Ok(Files {
        model: put("mnist_cnn.onnx", MODEL)?,
        calib_images: put("mnist-train-500-images-idx3-ubyte.gz", CALIB_IMAGES)?,
        test_images: put("mnist-test-2000-images-idx3-ubyte.gz", TEST_IMAGES)?,
        test_labels: put("mnist-test-2000-labels-idx1-ubyte.gz", TEST_LABELS)?,
    })
}
