//! Errors about files: always a single line that starts with the file's path.

use std::fmt;
use std::path::Path;

/// Something wrong with a file: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub path: String,
    pub message: String,
}

impl FileError {
    pub fn new(path: &Path, message: impl Into<String>) -> FileError {
        FileError {
            path: path.display().to_string(),
            message: message.into(),
        }
    }

    /// An error about one tensor of the file.
    pub fn tensor(path: &Path, tensor: &str, message: impl fmt::Display) -> FileError {
        FileError::new(path, format!("tensor '{tensor}': {message}"))
    }

    /// An I/O error, phrased for people ("cannot read: No such file or directory").
    pub fn io(path: &Path, action: &str, e: &std::io::Error) -> FileError {
        FileError::new(path, format!("cannot {action}: {e}"))
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for FileError {}

pub type Result<T, E = FileError> = std::result::Result<T, E>;
