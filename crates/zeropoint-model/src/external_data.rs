//! Tensors stored outside the model file, as ONNX defines "external data": a tensor with
//! `data_location = EXTERNAL` names a `location` (a file relative to the model's folder), an
//! `offset` and a `length`. Models over 2 GB must be stored this way: protobuf messages cannot
//! exceed 2 GB.
//!
//! Reading refuses locations that leave the model's folder (absolute paths, `..`), so a model file
//! cannot make zeropoint read arbitrary files. Writing puts the data file and the model in place
//! atomically, data first, and removes the data file again if the model cannot be written.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use prost::Message;

use crate::atomic;
use crate::error::{FileError, Result};
use crate::onnx::proto::tensor_proto::DataLocation;
use crate::onnx::proto::{GraphProto, ModelProto, StringStringEntryProto, TensorProto};

/// Protobuf's limit on a message's size: a model at least this large needs external data.
pub const PROTOBUF_LIMIT: usize = (1 << 31) - 1;

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

fn attribute_tensors(
    a: &mut crate::onnx::proto::AttributeProto,
    f: &mut impl FnMut(&mut TensorProto),
) {
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

/// The bytes of an externally stored tensor, read from beside the model (folder `dir`).
pub fn read_tensor_bytes(t: &TensorProto, dir: &Path) -> std::result::Result<Vec<u8>, String> {
    let location = field(t, "location").ok_or("external data without a 'location'")?;
    let rel = Path::new(&location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "external data location '{location}' leaves the model's folder; only relative paths inside it are allowed"
        ));
    }
    let number = |key: &str| -> std::result::Result<Option<u64>, String> {
        field(t, key)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("external data {key} '{v}' is not a number"))
            })
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    let path = dir.join(rel);
    let cannot = |e: std::io::Error| format!("cannot read external data {}: {e}", path.display());
    let mut file = File::open(&path).map_err(cannot)?;
    let size = file.metadata().map_err(cannot)?.len();
    let length = number("length")?.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(format!(
            "external data {} is {size} bytes, too short for offset {offset} and length {length}",
            path.display()
        ));
    }
    let mut bytes = vec![0u8; length as usize];
    file.seek(SeekFrom::Start(offset)).map_err(cannot)?;
    file.read_exact(&mut bytes).map_err(cannot)?;
    Ok(bytes)
}

/// Brings every externally stored tensor of a model loaded from `model_path` into memory
/// (`raw_data`), so that the model no longer depends on its side files.
pub fn load_external_data(model: &mut ModelProto, model_path: &Path) -> Result<()> {
    let dir = model_path.parent().unwrap_or(Path::new("."));
    let mut failure = None;
    for_each_tensor_mut(model, &mut |t| {
        if failure.is_some() || !is_external(t) {
            return;
        }
        match read_tensor_bytes(t, dir) {
            Ok(bytes) => {
                t.raw_data = Some(bytes);
                t.external_data.clear();
                t.data_location = None;
            }
            Err(e) => failure = Some(FileError::tensor(model_path, t.name(), e)),
        }
    });
    failure.map_or(Ok(()), Err)
}

/// Encodes a model; refuses one over protobuf's 2 GB limit.
pub fn encode(model: &ModelProto, path: &Path) -> Result<Vec<u8>> {
    let size = model.encoded_len();
    if size > PROTOBUF_LIMIT {
        return Err(FileError::new(
            path,
            format!(
                "the model is {size} bytes, over protobuf's 2 GB limit: save it with external data"
            ),
        ));
    }
    Ok(model.encode_to_vec())
}

/// Writes a model file atomically.
pub fn save(model: &ModelProto, path: &Path) -> Result<()> {
    atomic::write_bytes(path, &encode(model, path)?)
}

/// Writes a model whose tensors of at least `threshold` bytes of raw data go to the file
/// `location` beside it (one file, tensors one after another at 64-byte aligned offsets).
/// Tensors already external are brought in first, so the model's old side files are not needed.
pub fn save_with_external_data(
    model: &ModelProto,
    path: &Path,
    location: &str,
    threshold: usize,
    model_source: &Path,
) -> Result<()> {
    if location.contains(['/', '\\']) || location.is_empty() || location == ".." {
        return Err(FileError::new(
            path,
            format!("external data location '{location}' must be a plain file name"),
        ));
    }
    let mut model = model.clone();
    load_external_data(&mut model, model_source)?;
    let mut data = Vec::new();
    for_each_tensor_mut(&mut model, &mut |t| {
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
    let bytes = encode(&model, path)?;
    let data_path = path.with_file_name(location);
    if data_path == path {
        return Err(FileError::new(
            path,
            "the external data file cannot be the model file itself",
        ));
    }
    atomic::write_bytes(&data_path, &data)?;
    atomic::write_bytes(path, &bytes).inspect_err(|_| {
        let _ = std::fs::remove_file(&data_path);
    })
}
