//! NumPy's `.npy` format (versions 1 to 3): a magic string, a Python-dict header giving `descr`,
//! `fortran_order` and `shape`, then the raw elements.
//!
//! ```
//! use std::path::Path;
//! use zeropoint_onnx::npy;
//! let bytes = npy::to_bytes(&[2, 2], &[1.5f32, -2.0, 0.0, 4.0]);
//! let t = npy::parse(&bytes, Path::new("w.npy"), "w").unwrap();
//! assert_eq!((t.shape, t.values), (vec![2, 2], vec![1.5, -2.0, 0.0, 4.0]));
//! ```

use std::io::Read;
use std::path::Path;

use crate::atomic;
use crate::error::{Error, Result};
use crate::tensor::{element_count, DType, RawTensor, Tensor};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Parses one `.npy` image, its values widened to f32. `path` and `name` are used in error
/// messages only.
pub fn parse(bytes: &[u8], path: &Path, name: &str) -> Result<Tensor> {
    parse_raw(bytes, path, name).map(RawTensor::widen)
}

/// What a `.npy` header says.
pub struct Header {
    pub dtype: DType,
    pub little_endian: bool,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// Where the data starts.
    pub data_offset: usize,
}

/// Parses the header of a `.npy` image (`bytes` must hold at least the header).
pub fn header(bytes: &[u8], path: &Path, name: &str) -> Result<Header> {
    let bad = |msg: String| Error::tensor(path, name, msg);
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("not a .npy file (missing the \\x93NUMPY magic)".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| bad("truncated header".into()))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text".into()))?;
    let descr = dict_value(header, "descr").ok_or_else(|| bad("header has no 'descr'".into()))?;
    let fortran = dict_value(header, "fortran_order")
        .ok_or_else(|| bad("header has no 'fortran_order'".into()))?;
    let shape = dict_value(header, "shape").ok_or_else(|| bad("header has no 'shape'".into()))?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    let (dtype, little_endian) =
        parse_descr(descr).ok_or_else(|| bad(format!("unsupported dtype '{descr}'")))?;
    let shape = parse_shape(shape).ok_or_else(|| bad(format!("malformed shape {shape}")))?;
    Ok(Header {
        dtype,
        little_endian,
        fortran_order: fortran.trim() == "True",
        shape,
        data_offset: start + header_len,
    })
}

/// Headers are a few hundred bytes; numpy's version 2 format allows 4 GB, which no array needs.
const MAX_HEADER: usize = 1 << 20;

/// Reads a `.npy` header from `reader`, positioned at the image's start, and leaves it at the
/// data (`data_offset` then says how many bytes the header took).
pub fn read_header(reader: &mut impl Read, path: &Path, name: &str) -> Result<Header> {
    let bad = |msg: String| Error::tensor(path, name, msg);
    let cannot = |e: std::io::Error| Error::Tensor {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        message: "cannot read the .npy header".into(),
        unsupported: false,
        source: Some(e.into()),
    };
    let mut image = vec![0u8; 10];
    reader.read_exact(&mut image).map_err(cannot)?;
    if &image[..6] != MAGIC {
        return Err(bad("not a .npy file (missing the \\x93NUMPY magic)".into()));
    }
    let (len, start) = match image[6] {
        1 => (u16::from_le_bytes([image[8], image[9]]) as usize, 10),
        2 | 3 => {
            image.resize(12, 0);
            reader.read_exact(&mut image[10..]).map_err(cannot)?;
            (
                u32::from_le_bytes(image[8..12].try_into().unwrap()) as usize,
                12,
            )
        }
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    if len > MAX_HEADER {
        return Err(bad(format!("a header of {len} bytes is not a .npy header")));
    }
    image.resize(start + len, 0);
    reader.read_exact(&mut image[start..]).map_err(cannot)?;
    header(&image, path, name)
}

/// Parses one `.npy` image, keeping its element type (bytes little-endian, row-major).
pub fn parse_raw(bytes: &[u8], path: &Path, name: &str) -> Result<RawTensor> {
    let bad = |msg: String| Error::tensor(path, name, msg);
    let Header {
        dtype,
        little_endian,
        fortran_order,
        shape,
        data_offset,
    } = header(bytes, path, name)?;
    let n = element_count(&shape).ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    let data = &bytes[data_offset..];
    let need = n
        .checked_mul(dtype.size())
        .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    if data.len() < need {
        return Err(bad(format!(
            "truncated: shape {shape:?} of {dtype} needs {need} bytes of data, the file has {}",
            data.len()
        )));
    }
    let mut data = data[..need].to_vec();
    if !little_endian {
        for element in data.chunks_exact_mut(dtype.size()) {
            element.reverse();
        }
    }
    if fortran_order && shape.len() > 1 {
        data = fortran_to_c(&data, dtype.size(), &shape);
    }
    Ok(RawTensor {
        name: name.to_string(),
        shape,
        dtype,
        data,
    })
}

/// Reads a `.npy` file; the tensor is named after the file.
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = crate::limits::read_file(path)?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse(&bytes, path, &name)
}

/// The text of `'key': value` in a header dict, up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

fn parse_descr(d: &str) -> Option<(DType, bool)> {
    // Not `split_at(1)`: the first character of a hostile header need not be one byte long.
    let mut chars = d.chars();
    let little = match chars.next()? {
        '<' | '|' | '=' => true,
        '>' => false,
        _ => return None,
    };
    let code = chars.as_str();
    let dtype = match code {
        "f8" => DType::F64,
        "f4" => DType::F32,
        "f2" => DType::F16,
        "i8" => DType::I64,
        "i4" => DType::I32,
        "i2" => DType::I16,
        "i1" => DType::I8,
        "u8" => DType::U64,
        "u4" => DType::U32,
        "u2" => DType::U16,
        "u1" => DType::U8,
        "b1" => DType::Bool,
        _ => return None,
    };
    Some((dtype, little))
}

fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.trim_end_matches('L').parse().ok())
        .collect()
}

/// Reorders column-major elements of `size` bytes to row-major.
fn fortran_to_c(bytes: &[u8], size: usize, shape: &[usize]) -> Vec<u8> {
    let mut out = vec![0; bytes.len()];
    let mut idx = vec![0usize; shape.len()];
    for v in out.chunks_exact_mut(size) {
        // Offset of the row-major index `idx` in column-major storage.
        let mut off = 0;
        for d in (0..shape.len()).rev() {
            off = off * shape[d] + idx[d];
        }
        v.copy_from_slice(&bytes[off * size..(off + 1) * size]);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// Element types `.npy` files are written in.
pub trait NpyElement: Copy {
    const DESCR: &'static str;
    fn write_le(self, out: &mut Vec<u8>);
}

macro_rules! npy_element {
    ($($t:ty => $d:literal),*) => {$(
        impl NpyElement for $t {
            const DESCR: &'static str = $d;
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
npy_element!(f32 => "<f4", f64 => "<f8", i8 => "|i1", u8 => "|u1", i16 => "<i2", u16 => "<u2",
    i32 => "<i4", i64 => "<i8");

/// The `.npy` image of a tensor of any element type.
pub fn raw_to_bytes(t: &RawTensor) -> Vec<u8> {
    let descr = match t.dtype {
        DType::F64 => "<f8",
        DType::F32 => "<f4",
        DType::F16 => "<f2",
        // numpy has no bfloat16: its bit patterns are written as uint16.
        DType::BF16 | DType::U16 => "<u2",
        DType::I64 => "<i8",
        DType::I32 => "<i4",
        DType::I16 => "<i2",
        // .npy has no 4-bit types: their values are written as 8-bit ones.
        DType::I8 | DType::I4 => "|i1",
        DType::U64 => "<u8",
        DType::U32 => "<u4",
        DType::U8 | DType::U4 => "|u1",
        DType::Bool => "|b1",
    };
    let mut out = header_bytes(&t.shape, descr, t.data.len());
    out.extend_from_slice(&t.data);
    out
}

/// The bytes of a version-1 `.npy` image of `data` with `shape`.
pub fn to_bytes<T: NpyElement>(shape: &[usize], data: &[T]) -> Vec<u8> {
    let mut out = header_bytes(shape, T::DESCR, std::mem::size_of_val(data));
    for &v in data {
        v.write_le(&mut out);
    }
    out
}

/// Magic, version and header dict of a version-1 `.npy` image, with room for `data_len` bytes.
fn header_bytes(shape: &[usize], descr: &str, data_len: usize) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so that the data starts on a 64-byte boundary, newline-terminated, as numpy does.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data_len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// Writes a `.npy` file atomically.
pub fn write<T: NpyElement>(path: &Path, shape: &[usize], data: &[T]) -> Result<()> {
    let bytes = to_bytes(shape, data);
    atomic::write_bytes(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes = to_bytes(&[2, 3], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!((bytes.len() - 6 * 4) % 64, 0);
        let t = parse(&bytes, Path::new("x.npy"), "x").unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.dtype, DType::F32);
        assert_eq!(t.values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let t = parse(&to_bytes(&[], &[7i16]), Path::new("s.npy"), "s").unwrap();
        assert_eq!((t.shape.len(), t.values[0]), (0, 7.0));
    }

    #[test]
    fn fortran_order_is_reordered() {
        let mut bytes = to_bytes(&[2, 3], &[1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let at = bytes.windows(5).position(|w| w == b"False").unwrap();
        bytes.splice(at..at + 5, *b"True ");
        let t = parse(&bytes, Path::new("f.npy"), "f").unwrap();
        assert_eq!(t.values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn bad_files_give_one_line_errors() {
        let p = Path::new("bad.npy");
        let good = to_bytes(&[4], &[1.0f32; 4]);
        let e = parse(&good[..good.len() - 3], p, "bad")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bad.npy: tensor 'bad': truncated"), "{e}");
        let e = parse(b"hello world", p, "bad").unwrap_err().to_string();
        assert!(e.contains("not a .npy file"), "{e}");
        let mut weird = good.clone();
        let at = weird.windows(3).position(|w| w == b"<f4").unwrap();
        weird.splice(at..at + 3, *b"<c8");
        let e = parse(&weird, p, "bad").unwrap_err().to_string();
        assert!(e.contains("unsupported dtype '<c8'"), "{e}");
        // Found by fuzzing: a descr starting with a character of two bytes.
        weird.splice(at..at + 3, "Þf4".bytes());
        let e = parse(&weird, p, "bad").unwrap_err().to_string();
        assert!(e.contains("unsupported dtype 'Þf4'"), "{e}");
        assert!(!e.contains('\n'));
    }
}
