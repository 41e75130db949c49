//! Writing GGUF as ggml does (`gguf_write_out`): header, metadata, tensor infos, zero padding to
//! the alignment, then each tensor's data padded to the alignment. Tensor data is streamed, one
//! tensor at a time, into a temporary file that is renamed into place at the end.

use std::io::Write;
use std::path::Path;

use zeropoint_core::ggml::GgmlType;

use crate::error::{Error, Result};
use crate::read::{data_size, pad, DEFAULT_ALIGNMENT, MAGIC};
use crate::value::{write_string, Value};

/// A tensor to write: its name, ggml dims (row length first) and type. Offsets are computed.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl NewTensor {
    /// Bytes of its data, without padding.
    pub fn byte_size_of(&self) -> u64 {
        data_size(&self.dims, self.ty)
    }
}

/// The bytes before the data section, and the offset of each tensor within that section.
pub fn encode_header(metadata: &[(String, Value)], tensors: &[NewTensor]) -> (Vec<u8>, Vec<u64>) {
    let alignment = match metadata
        .iter()
        .find(|(k, _)| k == crate::read::ALIGNMENT_KEY)
    {
        Some((_, Value::U32(a))) => *a as u64,
        _ => DEFAULT_ALIGNMENT,
    };
    let mut out = Vec::new();
    out.extend(MAGIC);
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        write_string(&mut out, key.as_bytes());
        out.extend(value.type_id().to_le_bytes());
        value.write_to(&mut out);
    }
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for t in tensors {
        write_string(&mut out, t.name.as_bytes());
        out.extend((t.dims.len() as u32).to_le_bytes());
        t.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(t.ty.id().to_le_bytes());
        out.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset = pad(offset + t.byte_size_of(), alignment);
    }
    out.resize(pad(out.len() as u64, alignment) as usize, 0);
    (out, offsets)
}

/// Writes a GGUF file at `path`, atomically. `data(i, out)` writes tensor `i`'s bytes, exactly
/// its size; it is called once per tensor, in order, so a large model need not be in memory. Its
/// I/O errors may be passed up with `?` ([`Error::Write`]): they are reported against `path`.
pub fn write(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[NewTensor],
    mut data: impl FnMut(usize, &mut dyn Write) -> Result<()>,
) -> Result<()> {
    let (header, _) = encode_header(metadata, tensors);
    let alignment = crate::read::parse_meta(&header)
        .map_err(|m| Error::invalid(path, format!("refusing to write an invalid file: {m}")))?
        .alignment;
    let mut failure = None;
    let written = zeropoint_onnx::atomic::write_file(path, |out| {
        out.write_all(&header)?;
        for (i, t) in tensors.iter().enumerate() {
            let mut counted = Counted { inner: out, n: 0 };
            match data(i, &mut counted) {
                Ok(()) => {}
                // The atomic writer names the output file for an I/O failure.
                Err(Error::Write(e)) => return Err(e),
                Err(e) => {
                    failure = Some(e);
                    return Err(std::io::Error::other("tensor data failed"));
                }
            }
            let n = counted.n;
            if n != t.byte_size_of() {
                failure = Some(Error::tensor(
                    path,
                    &t.name,
                    format!("{n} bytes written, {} expected", t.byte_size_of()),
                ));
                return Err(std::io::Error::other("tensor size mismatch"));
            }
            out.write_all(&vec![0u8; (pad(n, alignment) - n) as usize])?;
        }
        Ok(())
    });
    match (written, failure) {
        (_, Some(e)) => Err(e),
        (r, None) => r.map_err(Error::from),
    }
}

/// Counts what goes through, to check each tensor's size.
struct Counted<'a> {
    inner: &'a mut dyn Write,
    n: u64,
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
