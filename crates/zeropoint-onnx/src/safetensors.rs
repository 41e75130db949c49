//! The safetensors format: an 8-byte little-endian header length, a JSON header mapping each
//! tensor name to its dtype, shape and byte range, then the data.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::tensor::{element_count, DType, Tensor};

/// Writes float32 tensors (name, shape, values) and string `metadata` as a safetensors file,
/// atomically; the tensors' data follows in the order given.
pub fn write_f32(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: &[(&str, &str)],
) -> Result<()> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        header.insert("__metadata__".into(), Value::Object(m));
    }
    let mut offset = 0usize;
    for (name, shape, values) in tensors {
        let end = offset + 4 * values.len();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut head = serde_json::to_vec(&Value::Object(header)).unwrap_or_default();
    // The data starts 8-byte aligned, as the format recommends.
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut bytes = Vec::with_capacity(8 + head.len() + offset);
    bytes.extend_from_slice(&(head.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&head);
    for (_, _, values) in tensors {
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    crate::atomic::write_bytes(path, &bytes)
}

/// The string metadata of a safetensors file (empty if it has none).
pub fn metadata(bytes: &[u8], path: &Path) -> Result<Vec<(String, String)>> {
    let (header, _) = header(bytes, path)?;
    let pairs = header
        .get("__metadata__")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    Ok(pairs)
}

/// The JSON header, and where the data starts.
fn header(bytes: &[u8], path: &Path) -> Result<(Value, usize)> {
    let bad = |msg: String| Error::invalid(path, msg);
    let header_len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .ok_or_else(|| bad("truncated: shorter than the 8-byte header length".into()))?;
    let data_start = usize::try_from(header_len)
        .ok()
        .and_then(|h| h.checked_add(8))
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            bad(format!(
                "truncated or not safetensors: header length {header_len} exceeds the file size {}",
                bytes.len()
            ))
        })?;
    let header: Value = serde_json::from_slice(&bytes[8..data_start])
        .map_err(|e| Error::invalid_because(path, "header is not valid JSON", e))?;
    Ok((header, data_start))
}

/// One tensor as a safetensors header describes it: its bytes are `range` of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub range: std::ops::Range<usize>,
}

/// Parses a whole safetensors file, tensors in the order of their data offsets.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Vec<Tensor>> {
    Ok(index(bytes, path)?
        .into_iter()
        .map(|e| Tensor {
            values: e.dtype.decode(&bytes[e.range.clone()], true),
            name: e.name,
            shape: e.shape,
            dtype: e.dtype,
        })
        .collect())
}

/// The header's tensors, in the order of their data offsets, each checked to lie in `bytes` with
/// the size its shape and dtype need; the data is left where it is (a caller may memory-map a
/// file larger than memory).
pub fn index(bytes: &[u8], path: &Path) -> Result<Vec<Entry>> {
    let bad = |msg: String| Error::invalid(path, msg);
    let (header, data_start) = header(bytes, path)?;
    let entries = header
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data_len = bytes.len() - data_start;
    let mut out = Vec::new();
    for (name, info) in entries.iter().filter(|(k, _)| *k != "__metadata__") {
        let mut e = entry(name, info, data_len, path)?;
        e.range = e.range.start + data_start..e.range.end + data_start;
        out.push(e);
    }
    out.sort_by_key(|e| e.range.start);
    Ok(out)
}

/// One header entry, its range relative to the data section (errors name the file and the
/// tensor).
fn entry(name: &str, info: &Value, data_len: usize, path: &Path) -> Result<Entry> {
    let bad = |m: &str| Error::tensor(path, name, m);
    let dtype_name = info["dtype"].as_str().ok_or_else(|| bad("has no dtype"))?;
    let dtype = match dtype_name {
        "F64" => DType::F64,
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I16" => DType::I16,
        "I8" => DType::I8,
        "U64" => DType::U64,
        "U32" => DType::U32,
        "U16" => DType::U16,
        "U8" => DType::U8,
        "BOOL" => DType::Bool,
        other => return Err(bad(&format!("unsupported dtype '{other}'"))),
    };
    let shape = info["shape"]
        .as_array()
        .and_then(|dims| {
            dims.iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| bad("has a malformed shape"))?;
    let offsets = info["data_offsets"]
        .as_array()
        .filter(|o| o.len() == 2)
        .and_then(|o| Some((o[0].as_u64()? as usize, o[1].as_u64()? as usize)))
        .ok_or_else(|| bad("has malformed data_offsets"))?;
    let (begin, end) = offsets;
    if begin > end || end > data_len {
        return Err(bad(&format!(
            "data_offsets [{begin}, {end}] fall outside the {data_len} bytes of data (truncated file?)"
        )));
    }
    let n = element_count(&shape).ok_or_else(|| bad("shape is too large"))?;
    if n.checked_mul(dtype.size()) != Some(end - begin) {
        return Err(bad(&format!(
            "shape {shape:?} of {dtype} needs {} bytes but data_offsets span {}",
            n.saturating_mul(dtype.size()),
            end - begin
        )));
    }
    Ok(Entry {
        name: name.to_string(),
        dtype,
        shape,
        range: begin..end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn reads_tensors_in_data_order() {
        let h = r#"{"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},
                    "a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"x":"y"}}"#;
        let mut data = Vec::new();
        data.extend_from_slice(&1.5f32.to_le_bytes());
        data.extend_from_slice(&(-2.0f32).to_le_bytes());
        data.extend_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
        data.extend_from_slice(&half::f16::from_f32(4.0).to_bits().to_le_bytes());
        let t = parse(&file(h, &data), Path::new("m.safetensors")).unwrap();
        assert_eq!(t[0].name, "a");
        assert_eq!(t[0].values, vec![1.5, -2.0]);
        assert_eq!(t[1].values, vec![0.5, 4.0]);
    }

    #[test]
    fn bad_files() {
        let p = Path::new("m.safetensors");
        let h = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let e = parse(&file(h, &[0; 8]), p).unwrap_err().to_string();
        assert!(
            e.starts_with("m.safetensors: tensor 'a': data_offsets"),
            "{e}"
        );
        let h = r#"{"a":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}}"#;
        let e = parse(&file(h, &[0]), p).unwrap_err().to_string();
        assert!(e.contains("unsupported dtype 'F8_E4M3'"), "{e}");
        assert!(parse(&[1, 2, 3], p)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        assert!(parse(&file("{not json", &[]), p).is_err());
    }
}
