//! The one error type of zeropoint-gguf: every message starts with the file, names the tensor or
//! key at fault and reads as one line.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened, mapped or written.
    #[error("{}: cannot {action}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a well-formed GGUF file.
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    /// One tensor cannot be converted.
    #[error("{}: tensor '{tensor}': {message}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    /// A tensor-data callback of [`crate::write::write`] could not write (`?` on an I/O error
    /// gives this); `write` reports it as the output file's write failure.
    #[error("cannot write tensor data")]
    Write(#[from] std::io::Error),
    /// Writing through zeropoint-onnx's atomic writer failed.
    #[error(transparent)]
    Output(#[from] zeropoint_onnx::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(path: &Path, message: impl Into<String>) -> Error {
        Error::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub(crate) fn tensor(path: &Path, tensor: &str, message: impl Into<String>) -> Error {
        Error::Tensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            message: message.into(),
        }
    }
}
