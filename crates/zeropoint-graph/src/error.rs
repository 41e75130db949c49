//! The one error type of zeropoint-graph: a model file's error (from zeropoint-onnx), or
//! something wrong in the model itself, named by the file and the place in the graph (a node, a
//! value, an initializer) with the lower error, if any, as the source. Each reads as one line;
//! print the chain (anyhow's `{:#}`) to see the source too.

use std::path::{Path, PathBuf};

/// A lower error kept as the source of one of ours.
pub type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the model's file failed.
    #[error(transparent)]
    File(#[from] zeropoint_onnx::Error),
    /// Something in the model: `message` says where (a node, value or initializer) and what.
    #[error("{}: {message}", path.display())]
    Model {
        path: PathBuf,
        message: String,
        #[source]
        source: Option<Source>,
    },
}

impl Error {
    /// Something wrong in the model at `path`.
    pub fn model(path: &Path, message: impl Into<String>) -> Error {
        Error::Model {
            path: path.to_path_buf(),
            message: message.into(),
            source: None,
        }
    }

    /// A lower error at a place (`at`: "node 'conv1' (Conv)", "weight 'w'", ...) of the model.
    pub fn at(path: &Path, at: impl Into<String>, source: impl Into<Source>) -> Error {
        Error::Model {
            path: path.to_path_buf(),
            message: at.into(),
            source: Some(source.into()),
        }
    }

    /// The same error, said to have happened during `stage` ("shape inference: ...").
    pub fn during(self, stage: &str) -> Error {
        match self {
            Error::Model {
                path,
                message,
                source,
            } => Error::Model {
                path,
                message: format!("{stage}: {message}"),
                source,
            },
            file => file,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
