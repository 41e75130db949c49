//! The one error type of zeropoint-quant: an error of the model, its files or its run (from the
//! crates below), or one of quantization's own, named by the file (the model, or a data file) and
//! the tensor or value it is about, with the lower error as its source. Each reads as one line;
//! print the chain (anyhow's `{:#}`) to see the source too.

use std::path::{Path, PathBuf};

/// A lower error kept as the source of one of ours.
pub type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading, rewriting or running the model failed.
    #[error(transparent)]
    Engine(#[from] zeropoint_engine::Error),
    /// Quantization's own: calibration data, parameters, export, evaluation. `message` says
    /// where (a data file's input, a weight, an activation) and what.
    #[error("{}: {message}", path.display())]
    Quant {
        path: PathBuf,
        message: String,
        #[source]
        source: Option<Source>,
    },
    /// Something this machine lacks, not any file's fault (the ONNX Runtime library).
    #[error("{0}")]
    Environment(String),
}

impl Error {
    /// Something wrong about the file at `path` (the model, or a data file).
    pub fn new(path: &Path, message: impl Into<String>) -> Error {
        Error::Quant {
            path: path.to_path_buf(),
            message: message.into(),
            source: None,
        }
    }

    /// An I/O failure while trying to `action` ("read", "open", ...) the file at `path`.
    pub fn io(path: &Path, action: &str, source: std::io::Error) -> Error {
        Error::at(path, format!("cannot {action}"), source)
    }

    /// A lower error at a place (`at`: "weight 'w'", "activation 'x'", ...) of the file at `path`.
    pub fn at(path: &Path, at: impl Into<String>, source: impl Into<Source>) -> Error {
        Error::Quant {
            path: path.to_path_buf(),
            message: at.into(),
            source: Some(source.into()),
        }
    }
}

impl From<zeropoint_graph::Error> for Error {
    fn from(e: zeropoint_graph::Error) -> Error {
        Error::Engine(e.into())
    }
}

impl From<zeropoint_onnx::Error> for Error {
    fn from(e: zeropoint_onnx::Error) -> Error {
        Error::Engine(e.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
