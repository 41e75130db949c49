//! Reading GGUF: the header, metadata and tensor infos parsed with every count and length checked
//! against the bytes that are there, and tensor data left in the memory map, so that a model
//! larger than memory streams through the page cache.
//!
//! The checks are ggml's own (`gguf_init_from_file_impl`): a file llama.cpp loads is read here,
//! and a file it refuses is refused here with the reason in one line.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use zeropoint_core::ggml::GgmlType;

use crate::error::{Error, Result};
use crate::value::{Value, TYPE_ARRAY, TYPE_STRING};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml's `GGML_MAX_DIMS` and `GGML_MAX_NAME`.
pub const MAX_DIMS: usize = 4;
pub const MAX_NAME: usize = 64;
/// ggml's `GGUF_MAX_STRING_LENGTH` / `GGUF_MAX_ARRAY_ELEMENTS`.
const MAX_LENGTH: u64 = 1 << 30;

/// One tensor as the header describes it. `dims` are ggml's `ne`: the row (contiguous) length
/// first, the reverse of an ONNX or NumPy shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Bytes from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Elements per row (`ne[0]`).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    pub fn byte_size(&self) -> u64 {
        data_size(&self.dims, self.ty)
    }
}

/// Bytes of a tensor of ggml dims `dims` and type `ty`, without padding.
pub fn data_size(dims: &[u64], ty: GgmlType) -> u64 {
    dims.iter().product::<u64>() / ty.block_size() as u64 * ty.type_size() as u64
}

/// Everything before the tensor data.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub version: u32,
    /// Key/value pairs in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Where the data section starts in the file.
    pub data_offset: u64,
}

impl Header {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// An open GGUF file: its header and its memory-mapped bytes.
pub struct GgufFile {
    pub path: PathBuf,
    pub header: Header,
    map: memmap2::Mmap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let io = |action, source| Error::Io {
            path: path.to_path_buf(),
            action,
            source,
        };
        let file = File::open(path).map_err(|e| io("open", e))?;
        // SAFETY: the map is read-only; a file changed underneath by another process can change
        // what we read, as with any read, but not the memory safety of slices into it.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io("map", e))?;
        let header = parse_header(&map).map_err(|m| Error::invalid(path, m))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            header,
            map,
        })
    }

    /// The stored bytes of tensor `i`.
    pub fn data(&self, i: usize) -> &[u8] {
        let t = &self.header.tensors[i];
        let start = (self.header.data_offset + t.offset) as usize;
        &self.map[start..start + t.byte_size() as usize]
    }
}

/// Parses everything before the tensor data and checks that the data is all there. Errors are
/// one line without the file name, which the caller adds.
pub fn parse_header(bytes: &[u8]) -> Result<Header, String> {
    let header = parse_meta(bytes)?;
    check_data(
        &header.tensors,
        header.alignment,
        header.data_offset,
        bytes.len() as u64,
    )?;
    Ok(header)
}

/// The header alone: `bytes` may end where the data section starts.
pub(crate) fn parse_meta(bytes: &[u8]) -> Result<Header, String> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(4).ok() != Some(&MAGIC[..]) {
        return Err("not a GGUF file: it does not start with the magic 'GGUF'".into());
    }
    let version = r.u32()?;
    if version == 1 || version > 3 {
        return Err(format!(
            "GGUF version {version} is not supported (only 2 and 3 are)"
        ));
    }
    let n_tensors = r.count("tensors")?;
    let n_kv = r.count("key/value pairs")?;
    // Duplicates are found by hashing: a file of a few thousand tiny keys or tensors made the
    // pairwise comparison take seconds (a fuzzing timeout).
    let mut keys: HashSet<String> = HashSet::new();
    let mut metadata: Vec<(String, Value)> = Vec::new();
    for i in 0..n_kv {
        let key = r.utf8(&format!("key {i}"))?;
        if key.is_empty() {
            return Err(format!("key {i} is empty"));
        }
        if !keys.insert(key.clone()) {
            return Err(format!("duplicate key '{key}'"));
        }
        let value = r.value().map_err(|e| format!("key '{key}': {e}"))?;
        metadata.push((key, value));
    }
    let alignment = alignment(&metadata)?;
    let mut names: HashSet<String> = HashSet::new();
    let mut tensors: Vec<TensorInfo> = Vec::new();
    for i in 0..n_tensors {
        let t = r.tensor_info(i)?;
        if !names.insert(t.name.clone()) {
            return Err(format!("duplicate tensor name '{}'", t.name));
        }
        tensors.push(t);
    }
    let data_offset = if n_tensors > 0 {
        pad(r.pos as u64, alignment)
    } else {
        r.pos as u64
    };
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

pub(crate) fn pad(n: u64, alignment: u64) -> u64 {
    n.div_ceil(alignment) * alignment
}

fn alignment(metadata: &[(String, Value)]) -> Result<u64, String> {
    match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some((_, Value::U32(a))) if a.is_power_of_two() => Ok(*a as u64),
        Some((_, Value::U32(a))) => Err(format!("{ALIGNMENT_KEY} {a} is not a power of 2")),
        Some(_) => Err(format!("{ALIGNMENT_KEY} must be a u32")),
    }
}

/// Tensors must follow one another in order, each padded to the alignment, as ggml requires.
fn check_data(tensors: &[TensorInfo], alignment: u64, start: u64, file: u64) -> Result<(), String> {
    let mut expected = 0u64;
    for t in tensors {
        if t.offset != expected {
            return Err(format!(
                "tensor '{}' has offset {}, expected {expected}",
                t.name, t.offset
            ));
        }
        // Padded in checked arithmetic too: a size just under 2^64 would pad to 0 and let the
        // next tensor start at offset 0, as ggml's "overflows after padding" check refuses.
        expected = expected
            .checked_add(t.byte_size())
            .and_then(|e| e.checked_next_multiple_of(alignment))
            .ok_or_else(|| format!("tensor '{}': data size overflows", t.name))?;
    }
    let last = tensors.last();
    let end = last.map_or(0, |t| t.offset + t.byte_size());
    if start.saturating_add(end) > file {
        let name = last.map_or("", |t| &t.name);
        return Err(format!(
            "truncated: tensor '{name}' ends at byte {} but the file has {file}",
            start.saturating_add(end)
        ));
    }
    Ok(())
}

/// A cursor over the header bytes; every read checks the bytes are there.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(format!(
                "truncated: {n} bytes needed at byte {} but only {left} remain",
                self.pos
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N as u64)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items that each take at least one byte, so it cannot exceed what is left.
    fn count(&mut self, what: &str) -> Result<u64, String> {
        let n = self.u64()?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(format!("{n} {what} cannot fit in the {left} bytes left"));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<&'a [u8], String> {
        let n = self.u64()?;
        if n > MAX_LENGTH {
            return Err(format!(
                "string length {n} exceeds the maximum {MAX_LENGTH}"
            ));
        }
        self.take(n)
    }

    fn utf8(&mut self, what: &str) -> Result<String, String> {
        let s = self.string().map_err(|e| format!("{what}: {e}"))?;
        String::from_utf8(s.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }

    fn value(&mut self) -> Result<Value, String> {
        let ty = self.u32()?;
        if ty != TYPE_ARRAY {
            return self.scalar(ty);
        }
        let elem = self.u32()?;
        let n = self.u64()?;
        if n > MAX_LENGTH {
            return Err(format!("array length {n} exceeds the maximum {MAX_LENGTH}"));
        }
        match Value::scalar_size(elem) {
            Some(size) if n.saturating_mul(size as u64) > (self.bytes.len() - self.pos) as u64 => {
                return Err(format!(
                    "array of {n} elements runs past the end of the file"
                ))
            }
            None if elem != TYPE_STRING => {
                return Err(format!("invalid array element type {elem}"))
            }
            _ => {}
        }
        // Each element becomes a `Value` of 32 bytes, however few bytes it takes in the file.
        zeropoint_onnx::limits::check_elements(
            u128::from(n),
            std::mem::size_of::<Value>(),
            &format!("an array of {n} elements"),
        )?;
        let mut items = Vec::with_capacity(n.min(1 << 16) as usize);
        for _ in 0..n {
            items.push(self.scalar(elem)?);
        }
        Ok(Value::Array(elem, items))
    }

    fn scalar(&mut self, ty: u32) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                b @ (0 | 1) => Value::Bool(b == 1),
                b => return Err(format!("bool value {b} is neither 0 nor 1")),
            },
            TYPE_STRING => Value::String(self.string()?.to_vec()),
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            _ => return Err(format!("invalid GGUF type {ty}")),
        })
    }

    fn tensor_info(&mut self, i: u64) -> Result<TensorInfo, String> {
        let name = self.utf8(&format!("tensor {i}'s name"))?;
        if name.len() >= MAX_NAME {
            return Err(format!(
                "tensor name '{name}' is {} bytes, at most {} allowed",
                name.len(),
                MAX_NAME - 1
            ));
        }
        let at = |e: String| format!("tensor '{name}': {e}");
        let n_dims = self.u32().map_err(at)? as usize;
        if n_dims > MAX_DIMS {
            return Err(at(format!(
                "{n_dims} dimensions, at most {MAX_DIMS} allowed"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let d = i64::from_le_bytes(self.array().map_err(at)?);
            dims.push(u64::try_from(d).map_err(|_| at(format!("dimension {d} is negative")))?);
        }
        if dims
            .iter()
            .try_fold(1u64, |p, &d| {
                p.checked_mul(d).filter(|p| *p <= i64::MAX as u64)
            })
            .is_none()
        {
            return Err(at(format!("shape {dims:?} overflows")));
        }
        let id = self.u32().map_err(at)?;
        let ty = GgmlType::from_id(id).ok_or_else(|| at(format!("invalid ggml type {id}")))?;
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(ty.block_size() as u64) {
            return Err(at(format!(
                "{row} elements per row is not a multiple of {ty}'s block size {}",
                ty.block_size()
            )));
        }
        // ggml's check that the size in bytes is representable: `byte_size` cannot wrap.
        let blocks = dims.iter().product::<u64>() / ty.block_size() as u64;
        if blocks.checked_mul(ty.type_size() as u64).is_none() {
            return Err(at(format!(
                "shape {dims:?} of {ty} has a size in bytes over {}",
                u64::MAX
            )));
        }
        let offset = self.u64().map_err(at)?;
        Ok(TensorInfo {
            name,
            dims,
            ty,
            offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A llama-style header with these tensors (name, dims, ggml id, offset), then `data` bytes
    /// of zeros after the padding.
    fn file(tensors: &[(&str, &[i64], u32, u64)], data: usize) -> Vec<u8> {
        let string = |out: &mut Vec<u8>, s: &[u8]| {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s);
        };
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend(1u64.to_le_bytes());
        string(&mut out, b"general.architecture");
        out.extend(TYPE_STRING.to_le_bytes());
        string(&mut out, b"llama");
        for (name, dims, ty, offset) in tensors {
            string(&mut out, name.as_bytes());
            out.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
        }
        out.resize(pad(out.len() as u64, DEFAULT_ALIGNMENT) as usize + data, 0);
        out
    }

    #[test]
    fn a_size_in_bytes_over_2_64_is_refused() {
        // 2^62 F32 elements: 2^64 bytes, which wrapped to 0 and needed no data at all.
        let e = parse_header(&file(&[("a.weight", &[1 << 62], 0, 0)], 0)).unwrap_err();
        assert!(e.contains("size in bytes over"), "{e}");
    }

    #[test]
    fn a_size_that_pads_past_2_64_is_refused() {
        // 2^63 - 15 F16 elements: 2^64 - 30 bytes, padded to 2^64, which wrapped to 0; the next
        // tensor at offset 0 then passed the end check, and reading the first one panicked.
        let tensors: &[(&str, &[i64], u32, u64)] = &[
            ("a.weight", &[i64::MAX - 14], 1, 0),
            ("b.weight", &[1], 0, 0),
        ];
        let e = parse_header(&file(tensors, 4)).unwrap_err();
        assert!(e.contains("data size overflows"), "{e}");
    }

    #[test]
    fn a_metadata_array_over_the_memory_limit_is_refused() {
        // 4096 one-byte elements take 4 KiB in the file and 128 KiB as values.
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        out.extend(1u64.to_le_bytes());
        out.extend(4u64.to_le_bytes());
        out.extend(b"tags");
        out.extend(TYPE_ARRAY.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(4096u64.to_le_bytes());
        out.extend(vec![7u8; 4096]);
        zeropoint_onnx::limits::set_max_bytes(64 << 10);
        let result = parse_header(&out);
        zeropoint_onnx::limits::set_max_bytes(0);
        let e = result.unwrap_err();
        assert!(e.contains("over the memory limit"), "{e}");
        assert!(parse_header(&out).is_ok());
    }
}
