//! Tensors stored outside the model file, as ONNX defines "external data": a tensor with
//! `data_location = EXTERNAL` names a `location` (a file relative to the model's folder), an
//! `offset` and a `length`. Models over 2 GB must be stored this way: protobuf messages cannot
//! exceed 2 GB.
//!
//! Reading refuses locations that leave the model's folder: absolute paths and `..` by their
//! spelling, and any path whose real location (every symbolic link on the way resolved) is not
//! inside the model's real folder, so that a model file cannot make zeropoint read arbitrary
//! files (onnx's CVE-2024-27318). Only regular files are read, and no more than the memory limit. Writing a model with external data is
//! [`crate::model::save_with_external_data`]; this module moves the tensors out of the model.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use crate::error::{Error, Result};
use crate::proto::tensor_proto::DataLocation;
use crate::proto::{AttributeProto, GraphProto, ModelProto, StringStringEntryProto, TensorProto};

/// Calls `f` on every tensor of the model: initializers, sparse initializers, node attributes,
/// subgraphs and functions.
pub fn for_each_tensor_mut(model: &mut ModelProto, f: &mut impl FnMut(&mut TensorProto)) {
    if let Some(g) = model.graph.as_mut() {
        graph_tensors(g, f);
    }
    for func in &mut model.functions {
        for node in &mut func.node {
            for a in &mut node.attribute {
                attribute_tensors(a, f);
            }
        }
    }
}

fn graph_tensors(g: &mut GraphProto, f: &mut impl FnMut(&mut TensorProto)) {
    g.initializer.iter_mut().for_each(&mut *f);
    for s in &mut g.sparse_initializer {
        s.values
            .iter_mut()
            .chain(s.indices.iter_mut())
            .for_each(&mut *f);
    }
    for node in &mut g.node {
        for a in &mut node.attribute {
            attribute_tensors(a, f);
        }
    }
}

fn attribute_tensors(a: &mut AttributeProto, f: &mut impl FnMut(&mut TensorProto)) {
    a.t.iter_mut().chain(a.tensors.iter_mut()).for_each(&mut *f);
    for s in a
        .sparse_tensor
        .iter_mut()
        .chain(a.sparse_tensors.iter_mut())
    {
        s.values
            .iter_mut()
            .chain(s.indices.iter_mut())
            .for_each(&mut *f);
    }
    for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
        graph_tensors(g, f);
    }
}

fn is_external(t: &TensorProto) -> bool {
    t.data_location == Some(DataLocation::External as i32)
}

fn field(t: &TensorProto, key: &str) -> Option<String> {
    t.external_data
        .iter()
        .find(|e| e.key.as_deref() == Some(key))
        .and_then(|e| e.value.clone())
}

/// The bytes of an externally stored tensor of the model file `model`, read from beside it.
pub fn read_tensor_bytes(t: &TensorProto, model: &Path) -> Result<Vec<u8>> {
    let bad = |m: String| Error::tensor(model, t.name(), m);
    let location =
        field(t, "location").ok_or_else(|| bad("external data without a 'location'".into()))?;
    let rel = Path::new(&location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(bad(format!(
            "external data location '{location}' leaves the model's folder; only relative paths inside it are allowed"
        )));
    }
    let number = |key: &str| -> Result<Option<u64>> {
        field(t, key)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| bad(format!("external data {key} '{v}' is not a number")))
            })
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    let dir = folder_of(model);
    let path = dir.join(rel);
    let cannot = |e: std::io::Error| Error::Tensor {
        path: model.to_path_buf(),
        tensor: t.name().to_string(),
        message: format!("cannot read external data {}", path.display()),
        unsupported: false,
        source: Some(e.into()),
    };
    let real = std::fs::canonicalize(&path).map_err(cannot)?;
    let real_dir = std::fs::canonicalize(dir).map_err(cannot)?;
    if !real.starts_with(&real_dir) {
        return Err(bad(format!(
            "external data location '{location}' resolves to {}, outside the model's folder {}",
            real.display(),
            real_dir.display()
        )));
    }
    // Before opening: opening a FIFO would block.
    let meta = std::fs::metadata(&real).map_err(cannot)?;
    if !meta.is_file() {
        return Err(bad(format!(
            "external data {} is not a regular file",
            path.display()
        )));
    }
    let size = meta.len();
    let length = number("length")?.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(bad(format!(
            "external data {} is {size} bytes, too short for offset {offset} and length {length}",
            path.display()
        )));
    }
    crate::limits::check(u128::from(length), "the external data").map_err(bad)?;
    let mut file = File::open(&real).map_err(cannot)?;
    let mut bytes = vec![0u8; length as usize];
    file.seek(SeekFrom::Start(offset)).map_err(cannot)?;
    file.read_exact(&mut bytes).map_err(cannot)?;
    Ok(bytes)
}

/// The folder a model's external data locations are relative to.
fn folder_of(model: &Path) -> &Path {
    (model.parent())
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Brings every externally stored tensor of a model loaded from `model_path` into memory
/// (`raw_data`), so that the model no longer depends on its side files. Returns the size of
/// those files on disk, each counted once: with the model file's own, what the model takes.
pub fn load_external_data(model: &mut ModelProto, model_path: &Path) -> Result<u64> {
    let mut failure = None;
    let mut files = std::collections::BTreeSet::new();
    for_each_tensor_mut(model, &mut |t| {
        if failure.is_some() || !is_external(t) {
            return;
        }
        match read_tensor_bytes(t, model_path) {
            Ok(bytes) => {
                files.extend(field(t, "location"));
                t.raw_data = Some(bytes);
                t.external_data.clear();
                t.data_location = None;
            }
            Err(e) => failure = Some(e),
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let dir = folder_of(model_path);
    Ok(files
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum())
}

/// Moves the raw data of every tensor of at least `threshold` bytes out of the model: the
/// returned bytes are the data file, tensors one after another at 64-byte aligned offsets, and
/// each tensor now points into the file `location`.
pub fn move_out(model: &mut ModelProto, location: &str, threshold: usize) -> Vec<u8> {
    // Sized once: growing by doubling held the data twice, a model's size more, at a copy.
    let mut size = 0;
    for_each_tensor_mut(model, &mut |t| {
        if let Some(r) = t.raw_data.as_ref().filter(|r| r.len() >= threshold) {
            size = usize::next_multiple_of(size, 64) + r.len();
        }
    });
    let mut data = Vec::with_capacity(size);
    for_each_tensor_mut(model, &mut |t| {
        let Some(raw) = t.raw_data.take_if(|r| r.len() >= threshold) else {
            return;
        };
        let offset = data.len().next_multiple_of(64);
        data.resize(offset, 0);
        data.extend_from_slice(&raw);
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.to_string()),
            value: Some(v),
        };
        t.external_data = vec![
            entry("location", location.to_string()),
            entry("offset", offset.to_string()),
            entry("length", raw.len().to_string()),
        ];
        t.data_location = Some(DataLocation::External as i32);
    });
    data
}
