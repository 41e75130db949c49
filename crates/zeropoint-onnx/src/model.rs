//! ONNX model files: loading with clear errors, saving atomically (with or without external
//! data), and a model's initializers as tensors.

use std::io::Read;
use std::path::Path;

use prost::Message;

use crate::atomic;
use crate::error::{Error, Result};
use crate::proto::ModelProto;
use crate::tensor::Tensor;

/// Protobuf's limit on a message's size: a model at least this large needs external data.
pub const PROTOBUF_LIMIT: usize = (1 << 31) - 1;

/// Reads and decodes an ONNX model file (external data stays where it is: see
/// [`crate::external_data::load_external_data`]).
pub fn load(path: &Path) -> Result<ModelProto> {
    let (file, len) = crate::limits::open_within_limit(path)?;
    let reader = std::io::BufReader::new(file).take(len);
    match crate::piecewise::decode(reader, len) {
        Some(model) => checked(Ok(model), path),
        None => decode_owned(crate::limits::read_file(path)?, path),
    }
}

/// Decodes an ONNX model from bytes. `path` is for error messages.
pub fn decode(bytes: &[u8], path: &Path) -> Result<ModelProto> {
    checked(ModelProto::decode(bytes), path)
}

/// [`decode`] from bytes it may keep. Each tensor's data is then copied once: from a borrowed
/// slice prost copies it twice (into a `Bytes`, then into the field), and the allocator keeps
/// the freed intermediates, which made decoding a 98 MB model peak at 2.6x its size.
pub fn decode_owned(bytes: Vec<u8>, path: &Path) -> Result<ModelProto> {
    checked(ModelProto::decode(prost::bytes::Bytes::from(bytes)), path)
}

fn checked(
    decoded: std::result::Result<ModelProto, prost::DecodeError>,
    path: &Path,
) -> Result<ModelProto> {
    let model = decoded.map_err(|e| {
        Error::invalid_because(
            path,
            "not a valid ONNX model (truncated or malformed protobuf)",
            e,
        )
    })?;
    if model.graph.is_none() {
        return Err(Error::invalid(path, "not an ONNX model: it has no graph"));
    }
    Ok(model)
}

/// An initializer that could not be turned into a tensor, and why (string or complex data, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// The graph's initializers as f32 tensors. Initializers of types zeropoint does not read are
/// returned in the second list; malformed ones (wrong byte counts, unsafe external paths) are
/// errors. `path` is the model file: external data is resolved beside it.
pub fn initializers(model: &ModelProto, path: &Path) -> Result<(Vec<Tensor>, Vec<Skipped>)> {
    let Some(graph) = model.graph.as_ref() else {
        return Err(Error::invalid(path, "not an ONNX model: it has no graph"));
    };
    let mut tensors = Vec::new();
    let mut skipped = Vec::new();
    for t in &graph.initializer {
        match crate::tensor_proto::to_raw(t, path) {
            Ok(raw) => tensors.push(raw.widen()),
            Err(Error::Tensor {
                tensor,
                message,
                unsupported: true,
                ..
            }) => skipped.push(Skipped {
                name: tensor,
                reason: message,
            }),
            Err(e) => return Err(e),
        }
    }
    Ok((tensors, skipped))
}

/// Encodes a model; refuses one over protobuf's 2 GB limit.
pub fn encode(model: &ModelProto, path: &Path) -> Result<Vec<u8>> {
    let size = model.encoded_len();
    if size > PROTOBUF_LIMIT {
        return Err(Error::invalid(
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
/// Tensors already external are brought in first (from beside `model_source`, the file the
/// model was read from), so the model's old side files are not needed. The data file is written
/// first and removed again if the model cannot be written.
pub fn save_with_external_data(
    model: &ModelProto,
    path: &Path,
    location: &str,
    threshold: usize,
    model_source: &Path,
) -> Result<()> {
    if location.contains(['/', '\\']) || location.is_empty() || location == ".." {
        return Err(Error::invalid(
            path,
            format!("external data location '{location}' must be a plain file name"),
        ));
    }
    let mut model = model.clone();
    crate::external_data::load_external_data(&mut model, model_source)?;
    write_split(model, path, location, threshold).map(drop)
}

/// Tensors of at least this many bytes go to the side file of a model too large for one file.
pub const SIDE_FILE_THRESHOLD: usize = 1024;

/// Writes `model`, which holds its tensors' data, atomically: as one file when it fits
/// protobuf's 2 GB limit, else with the data of its tensors of at least
/// [`SIDE_FILE_THRESHOLD`] bytes in `<file name>.data` beside `path`, as ONNX Runtime and
/// `onnx.load` read it (a quantized model of a few billion parameters is over the limit; the
/// model is not copied to move its data out). Returns the bytes written, side file included.
pub fn save_owned(model: ModelProto, path: &Path) -> Result<u64> {
    save_owned_within(model, path, PROTOBUF_LIMIT)
}

/// [`save_owned`] with a file size `limit` (tests split small models).
pub fn save_owned_within(model: ModelProto, path: &Path, limit: usize) -> Result<u64> {
    if model.encoded_len() <= limit {
        let bytes = encode(&model, path)?;
        atomic::write_bytes(path, &bytes)?;
        return Ok(bytes.len() as u64);
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let location = format!("{}.data", name.unwrap_or_else(|| "model.onnx".into()));
    write_split(model, path, &location, SIDE_FILE_THRESHOLD)
}

/// Moves the data of `model`'s tensors of at least `threshold` bytes to the file `location`
/// beside `path` and writes both, the data file first (removed again if the model cannot be
/// written); returns the bytes written.
fn write_split(
    mut model: ModelProto,
    path: &Path,
    location: &str,
    threshold: usize,
) -> Result<u64> {
    let data_path = path.with_file_name(location);
    if data_path == path {
        return Err(Error::invalid(
            path,
            "the external data file cannot be the model file itself",
        ));
    }
    let data = crate::external_data::move_out(&mut model, location, threshold);
    let bytes = encode(&model, path)?;
    drop(model);
    atomic::write_bytes(&data_path, &data)?;
    atomic::write_bytes(path, &bytes).inspect_err(|_| {
        let _ = std::fs::remove_file(&data_path);
    })?;
    Ok((data.len() + bytes.len()) as u64)
}
