//! ONNX Runtime as a second runtime for evaluation (`zeropoint eval --runtime ort`): the real
//! client's view of an exported model. The library is loaded at run time (the `ort` crate's load-dynamic), so
//! zeropoint builds and runs without it; it is found through `ORT_DYLIB_PATH`, or in the
//! `onnxruntime` Python package of a `.venv` in the current folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use zeropoint_engine::Value;
use zeropoint_onnx::DType;

use crate::error::{Error, Result};

/// The ONNX Runtime shared library to load.
fn library() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(p));
    }
    let venv = Path::new(".venv/lib");
    let found = std::fs::read_dir(venv).ok().and_then(|dirs| {
        dirs.flatten()
            .map(|d| d.path().join("site-packages/onnxruntime/capi"))
            .find_map(|capi| {
                std::fs::read_dir(&capi)
                    .ok()?
                    .flatten()
                    .map(|f| f.path())
                    .find(|f| {
                        f.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so"))
                    })
            })
    });
    found.ok_or_else(|| {
        Error::Environment(
            "ONNX Runtime library not found: set ORT_DYLIB_PATH to libonnxruntime.so (the pip package onnxruntime has one in onnxruntime/capi/)".into(),
        )
    })
}

/// A model loaded in ONNX Runtime.
pub struct OrtModel {
    session: ort::session::Session,
    path: PathBuf,
}

impl OrtModel {
    pub fn load(model: &Path) -> Result<OrtModel> {
        static ENV: std::sync::OnceLock<
            std::result::Result<ort::environment::Environment, String>,
        > = std::sync::OnceLock::new();
        let lib = library()?;
        let env = ENV
            .get_or_init(|| {
                let builder = ort::init_from(&lib)
                    .map_err(|e| format!("{}: cannot load: {e}", lib.display()))?;
                builder
                    .build()
                    .map_err(|e| format!("{}: {e}", lib.display()))
            })
            .as_ref()
            .map_err(|m| Error::Environment(m.clone()))?;
        let session = ort::session::Session::builder(env)
            .and_then(|mut b| b.commit_from_file(model))
            .map_err(|e| Error::at(model, "ONNX Runtime cannot load the model", e))?;
        Ok(OrtModel {
            session,
            path: model.to_path_buf(),
        })
    }

    /// Runs one batch; returns every output (float and int64 ones) by name.
    pub fn run(&mut self, feeds: HashMap<String, Value>) -> Result<Vec<(String, Value)>> {
        let err = |m: String| Error::new(&self.path, m);
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'static>)> = Vec::new();
        for (name, v) in feeds {
            let shape: Vec<i64> = v.shape().iter().map(|&d| d as i64).collect();
            let value: ort::value::DynValue = match v.dtype {
                DType::F32 => {
                    ort::value::Tensor::from_array((shape, v.to_f32s()?)).map(|t| t.into_dyn())
                }
                DType::I64 => {
                    ort::value::Tensor::from_array((shape, v.to_i64s()?)).map(|t| t.into_dyn())
                }
                d => {
                    return Err(err(format!(
                        "input '{name}': {d} inputs are not passed to ONNX Runtime"
                    )))
                }
            }
            .map_err(|e| Error::at(&self.path, format!("input '{name}'"), e))?;
            inputs.push((name, value.into()));
        }
        let names: Vec<String> = self
            .session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let outputs = self
            .session
            .run(inputs)
            .map_err(|e| Error::at(&self.path, "ONNX Runtime", e))?;
        let mut result = Vec::new();
        for name in names {
            let out = &outputs[name.as_str()];
            let dims = |shape: &ort::value::Shape| -> Vec<usize> {
                shape.iter().map(|&d| d as usize).collect()
            };
            let value = if let Ok((shape, data)) = out.try_extract_tensor::<f32>() {
                Value::from_f32_vec(data.to_vec(), &dims(shape))
            } else if let Ok((shape, data)) = out.try_extract_tensor::<i64>() {
                Value::from_ints(data.to_vec(), &dims(shape), DType::I64)
            } else {
                continue;
            };
            result.push((name, value?));
        }
        Ok(result)
    }
}
