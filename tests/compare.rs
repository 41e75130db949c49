//! Running a model directory written by the reference scripts (model.onnx or model.txt naming
//! the model, inputs.npz, expected.npz) and comparing zeropoint's outputs with the expected ones.

// Each test file uses a different subset.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use zeropoint_engine::{Executor, Value};
use zeropoint_graph::Graph;
use zeropoint_onnx::tensor_file::read_arrays;
use zeropoint_onnx::RawTensor;

use crate::support::chain;

/// The model of a case directory: model.onnx there, or the path written in model.txt.
pub fn model_path(dir: &Path) -> PathBuf {
    let local = dir.join("model.onnx");
    if local.exists() {
        return local;
    }
    PathBuf::from(
        std::fs::read_to_string(dir.join("model.txt"))
            .unwrap()
            .trim(),
    )
}

/// The arrays of an .npz by name, as executor values.
pub fn load_values(path: &Path) -> HashMap<String, Value> {
    read_arrays(path)
        .unwrap()
        .iter()
        .map(|r| (r.name.clone(), Value::from_raw(r).unwrap()))
        .collect()
}

/// Runs the case in `dir` and compares every output except those in `skip`.
pub fn run_case(dir: &Path, skip: &[&str]) -> Result<(), String> {
    run_model(&model_path(dir), dir, skip)
}

/// Runs `model` on the inputs of the case in `dir` and compares every output except those in
/// `skip` with the case's expected ones.
pub fn run_model(model: &Path, dir: &Path, skip: &[&str]) -> Result<(), String> {
    let graph = Graph::load(model).map_err(|e| chain(&e))?;
    let exec = Executor::new(&graph).map_err(|e| chain(&e))?;
    let outputs = exec
        .run(load_values(&dir.join("inputs.npz")))
        .map_err(|e| chain(&e))?;
    let expected = read_arrays(&dir.join("expected.npz")).map_err(|e| chain(&e))?;
    for want in &expected {
        if skip.contains(&want.name.as_str()) {
            continue;
        }
        let got = outputs
            .iter()
            .find(|(n, _)| *n == want.name)
            .ok_or_else(|| format!("no output '{}'", want.name))?;
        let got = got.1.to_raw(&want.name).map_err(|e| chain(&e))?;
        compare(&got, want).map_err(|e| format!("output '{}': {e}", want.name))?;
    }
    Ok(())
}

/// Same dtype and shape; floats within 1e-5 + 1e-4·|expected| (NaN matches NaN), others exact.
pub fn compare(got: &RawTensor, want: &RawTensor) -> Result<(), String> {
    if got.dtype != want.dtype {
        return Err(format!("dtype {} instead of {}", got.dtype, want.dtype));
    }
    if got.shape != want.shape {
        return Err(format!("shape {:?} instead of {:?}", got.shape, want.shape));
    }
    if !got.dtype.is_float() {
        return if got.data == want.data {
            Ok(())
        } else {
            // In f64: an int32 past 2^24 printed through f32 reads like its neighbour.
            let (g, w) = (got.to_f64s(), want.to_f64s());
            let i = (0..g.len()).find(|&i| g[i] != w[i]).unwrap_or(0);
            Err(format!("element {i}: {} instead of {}", g[i], w[i]))
        };
    }
    let (g, w) = (got.clone().widen().values, want.clone().widen().values);
    for i in 0..g.len() {
        let ok = (g[i].is_nan() && w[i].is_nan())
            || g[i] == w[i]
            || (g[i] - w[i]).abs() <= 1e-5 + 1e-4 * w[i].abs();
        if !ok {
            return Err(format!(
                "element {i}: {} instead of {} (max abs diff {})",
                g[i],
                w[i],
                max_abs_diff(&g, &w)
            ));
        }
    }
    Ok(())
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
