//! NumPy's `.npz` archives: a zip of `.npy` members, stored (numpy's `savez`) or deflated
//! (`savez_compressed`), each named after its array.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::npy;
use crate::tensor::RawTensor;

/// One member of an archive: its array's name, and where its `.npy` image starts in the file
/// when it is stored uncompressed (so that it can be read with seeks, like a `.npy` file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub stored_at: Option<u64>,
}

fn open(path: &Path) -> Result<zip::ZipArchive<std::fs::File>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
    zip::ZipArchive::new(file)
        .map_err(|e| Error::invalid_because(path, "not a valid .npz (zip) archive", e))
}

/// The name of member `i`: its file name without `.npy`.
fn member_name(
    member: &zip::read::ZipFile<'_, std::fs::File>,
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
            let stored = member.compression() == zip::CompressionMethod::Stored;
            Ok(Member {
                name: member_name(&member, i, path)?,
                stored_at: member.data_start().filter(|_| stored),
            })
        })
        .collect()
}

/// Every array of the archive with its element type, decompressed.
pub fn read(path: &Path) -> Result<Vec<RawTensor>> {
    let mut zip = open(path)?;
    let mut tensors = Vec::new();
    for i in 0..zip.len() {
        let mut member = zip.by_index(i).map_err(|e| {
            Error::invalid_because(path, format!("cannot read archive member {i}"), e)
        })?;
        let name = member_name(&member, i, path)?;
        let mut bytes = Vec::new();
        member.read_to_end(&mut bytes).map_err(|e| Error::Tensor {
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
