//! NumPy's `.npz` archives: a zip of `.npy` members, stored (numpy's `savez`) or deflated
//! (`savez_compressed`), each named after its array.
//!
//! A member can be read whole ([`read`], within the memory limit: a decompression bomb is refused
//! after at most the limit) or streamed ([`Member::open`]): decompressed on the fly, so that an
//! archive larger than memory can feed calibration batch by batch.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{Error, Result};
use crate::tensor::RawTensor;
use crate::{limits, npy};

/// How a member's bytes are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compression {
    Stored,
    Deflated,
    /// Another method (bzip2, zstd, ...), by name: refused when read.
    Other(String),
}

/// One member of an archive: its array's name, and where and how its `.npy` image is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Bytes of its `.npy` image once decompressed, as the archive declares them.
    pub size: u64,
    pub compression: Compression,
    /// Where its (compressed) bytes start in the file, and how many there are.
    data_start: u64,
    compressed_size: u64,
}

impl Member {
    /// Where its `.npy` image starts in the file when it is stored uncompressed (so that it can
    /// be read with seeks, like a `.npy` file).
    pub fn stored_at(&self) -> Option<u64> {
        (self.compression == Compression::Stored).then_some(self.data_start)
    }

    /// Its `.npy` image as a stream, decompressed on the fly; `path` is the archive.
    pub fn open(&self, path: &Path) -> Result<Box<dyn Read>> {
        let mut file = limits::open_regular(path)?;
        file.seek(SeekFrom::Start(self.data_start))
            .map_err(|e| Error::io(path, "read", e))?;
        let bytes = file.take(self.compressed_size);
        Ok(match &self.compression {
            Compression::Stored => Box::new(bytes),
            Compression::Deflated => Box::new(flate2::read::DeflateDecoder::new(bytes)),
            Compression::Other(method) => {
                return Err(Error::tensor(
                    path,
                    &self.name,
                    format!(
                    "compression {method} is not read (numpy writes stored or deflated members)"
                ),
                ))
            }
        })
    }
}

fn open(path: &Path) -> Result<zip::ZipArchive<File>> {
    archive(limits::open_regular(path)?, path)
}

fn archive<R: Read + Seek>(reader: R, path: &Path) -> Result<zip::ZipArchive<R>> {
    zip::ZipArchive::new(reader)
        .map_err(|e| Error::invalid_because(path, "not a valid .npz (zip) archive", e))
}

/// The name of member `i`: its file name without `.npy`.
fn member_name<R: Read>(
    member: &zip::read::ZipFile<'_, R>,
    i: usize,
    path: &Path,
) -> Result<String> {
    let name = member.name().map_err(|e| {
        Error::invalid_because(path, format!("archive member {i} has a bad name"), e)
    })?;
    Ok(name.strip_suffix(".npy").unwrap_or(&name).to_string())
}

/// The members of the archive at `path`, in archive order.
pub fn members(path: &Path) -> Result<Vec<Member>> {
    let mut zip = open(path)?;
    (0..zip.len())
        .map(|i| {
            let member = zip.by_index(i).map_err(|e| {
                Error::invalid_because(path, format!("cannot read archive member {i}"), e)
            })?;
            let name = member_name(&member, i, path)?;
            let data_start = member.data_start().ok_or_else(|| {
                Error::tensor(
                    path,
                    &name,
                    "the archive does not say where the member starts",
                )
            })?;
            let compression = match member.compression() {
                zip::CompressionMethod::Stored => Compression::Stored,
                zip::CompressionMethod::Deflated => Compression::Deflated,
                other => Compression::Other(other.to_string()),
            };
            Ok(Member {
                name,
                size: member.size(),
                compression,
                data_start,
                compressed_size: member.compressed_size(),
            })
        })
        .collect()
}

/// Every array of the archive with its element type, decompressed whole: each member within the
/// memory limit, by the archive's word and by its actual bytes.
pub fn read(path: &Path) -> Result<Vec<RawTensor>> {
    read_archive(open(path)?, path)
}

/// [`read`] of an archive held in memory; `path` names it in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Vec<RawTensor>> {
    read_archive(archive(std::io::Cursor::new(bytes), path)?, path)
}

/// Writes `arrays` as an archive numpy's `load` reads: members `NAME.npy`, stored, as `savez`
/// writes them (with no timestamps: the same arrays give the same bytes). Atomically; the
/// archive is built in memory first.
pub fn write(path: &Path, arrays: &[RawTensor]) -> Result<()> {
    let zip_error =
        |e: zip::result::ZipError| Error::invalid(path, format!("cannot write the archive: {e}"));
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for t in arrays {
        let bytes = npy::raw_to_bytes(t);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(bytes.len() as u64 >= u64::from(u32::MAX));
        zip.start_file(format!("{}.npy", t.name), options)
            .map_err(zip_error)?;
        std::io::Write::write_all(&mut zip, &bytes).map_err(|e| Error::io(path, "write", e))?;
    }
    let archive = zip.finish().map_err(zip_error)?;
    crate::atomic::write_bytes(path, archive.get_ref())
}

fn read_archive<R: Read + Seek>(
    mut zip: zip::ZipArchive<R>,
    path: &Path,
) -> Result<Vec<RawTensor>> {
    let mut tensors = Vec::new();
    for i in 0..zip.len() {
        let member = zip.by_index(i).map_err(|e| {
            Error::invalid_because(path, format!("cannot read archive member {i}"), e)
        })?;
        let name = member_name(&member, i, path)?;
        limits::check(u128::from(member.size()), "decompressing the member")
            .map_err(|m| Error::tensor(path, &name, m))?;
        let bytes = limits::read_limited(member, "the member").map_err(|e| Error::Tensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            message: "cannot decompress".into(),
            unsupported: false,
            source: Some(e.into()),
        })?;
        tensors.push(npy::parse_raw(&bytes, path, &name)?);
    }
    Ok(tensors)
}
