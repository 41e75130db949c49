//! The one error type of zeropoint-onnx. Every error starts with the file it is about (and the
//! tensor, where one is to blame) and reads as one line; a lower error (I/O, zip, protobuf, JSON)
//! is its [`source`](std::error::Error::source), not repeated in its text. Print the chain
//! (anyhow's `{:#}`, as the `zeropoint` command does) for the whole story:
//! `model.onnx: cannot read: No such file or directory (os error 2)`.

use std::path::{Path, PathBuf};

/// A lower error kept as the source of one of ours.
pub type Source = Box<dyn std::error::Error + Send + Sync>;

/// Something wrong with a file: where, and what.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened, read, listed or written.
    #[error("{}: cannot {action}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The file is not what it should be: truncated, malformed, of an unknown kind.
    #[error("{}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        message: String,
        #[source]
        source: Option<Source>,
    },
    /// One tensor of the file cannot be read.
    #[error("{}: tensor '{tensor}': {message}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
        /// Its element type is one zeropoint does not read (strings, complex, 8-bit floats),
        /// rather than its data being malformed.
        unsupported: bool,
        #[source]
        source: Option<Source>,
    },
}

impl Error {
    /// An I/O failure while trying to `action` ("read", "write", ...) the file.
    pub fn io(path: &Path, action: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }

    /// The file's contents are wrong.
    pub fn invalid(path: &Path, message: impl Into<String>) -> Error {
        Error::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
            source: None,
        }
    }

    /// The file's contents are wrong, as a lower error (zip, protobuf, JSON) found.
    pub fn invalid_because(
        path: &Path,
        message: impl Into<String>,
        source: impl Into<Source>,
    ) -> Error {
        Error::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// One tensor of the file is malformed.
    pub fn tensor(path: &Path, tensor: &str, message: impl Into<String>) -> Error {
        Error::Tensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            message: message.into(),
            unsupported: false,
            source: None,
        }
    }

    /// The file (its path) the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Error::Io { path, .. } | Error::Invalid { path, .. } | Error::Tensor { path, .. } => {
                path
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
