//! MNIST-style idx files: a magic `00 00 08 NDIM` (unsigned bytes), NDIM big-endian u32
//! dimensions, then the data; optionally gzip-compressed (`.gz`). Images are read forward, a
//! batch at a time; label files whole, within the memory limit.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use zeropoint_onnx::limits;

use crate::error::{Error, Result};

/// The file at `path` as a reader positioned at its data, and its dimensions.
pub fn open(path: &Path) -> Result<(Box<dyn Read>, Vec<usize>)> {
    let mut reader = reader(path)?;
    let dims = read_header(&mut reader, path)?;
    Ok((reader, dims))
}

/// The file's bytes as they read: decompressed for `.gz` files.
fn reader(path: &Path) -> Result<Box<dyn Read>> {
    let file: File = limits::open_regular(path)?;
    let gz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    Ok(if gz {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    })
}

/// The magic and dimensions at the start of `reader`; `path` names the file in errors. The
/// dimensions are claims: whoever allocates for them checks them first.
pub fn read_header(reader: &mut dyn Read, path: &Path) -> Result<Vec<usize>> {
    let mut magic = [0u8; 4];
    reader
        .read_exact(&mut magic)
        .map_err(|e| Error::io(path, "read", e))?;
    if magic[0] != 0 || magic[1] != 0 || magic[2] != 8 || magic[3] == 0 {
        return Err(Error::new(
            path,
            "not an idx file of unsigned bytes (magic 00 00 08 NN)",
        ));
    }
    (0..magic[3])
        .map(|_| {
            let mut d = [0u8; 4];
            reader
                .read_exact(&mut d)
                .map_err(|e| Error::io(path, "read", e))?;
            Ok(u32::from_be_bytes(d) as usize)
        })
        .collect()
}

/// The labels of an idx1 file ([N] unsigned bytes).
pub fn read_labels(path: &Path) -> Result<Vec<i64>> {
    labels_from(reader(path)?, path)
}

/// The labels an idx1 stream holds; `path` names it in errors.
pub fn labels_from(mut reader: impl Read, path: &Path) -> Result<Vec<i64>> {
    let dims = read_header(&mut reader, path)
        .map_err(|_| Error::new(path, "not an idx1 label file (magic 00 00 08 01)"))?;
    if dims.len() != 1 {
        return Err(Error::new(
            path,
            "not an idx1 label file (magic 00 00 08 01)",
        ));
    }
    let bytes =
        limits::read_limited(reader, "the label file").map_err(|e| Error::io(path, "read", e))?;
    let labels = bytes
        .get(..dims[0])
        .ok_or_else(|| Error::new(path, "truncated label file"))?;
    Ok(labels.iter().map(|&b| i64::from(b)).collect())
}
