//! A checkpoint's JSON files (config, index, tokenizer), read with errors that name the file.

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};

pub(crate) fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        action: "read",
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| Error::invalid(path, format!("not valid JSON: {e}")))
}

/// A JSON file the checkpoint may lack.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Json>> {
    if !path.is_file() {
        return Ok(None);
    }
    read_json(path).map(Some)
}
