//! Atomic file output: write a temporary file beside the target, then rename it into place.
//! A failure at any point removes the temporary file and leaves the target untouched.
//!
//! Neither step follows a link someone planted: the temporary file is created new (an existing
//! file or link of that name is an error, not a target), and the rename replaces a link at the
//! target path itself, never the file it points to. A target that is a folder or a special file
//! (FIFO, device, socket) is refused.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Why `output` may not be written for the command reading `input`, if it may not: it is the
/// input itself, a folder, or in a folder that does not exist. (The text follows the path.)
pub fn output_problem(input: &Path, output: &Path) -> Option<String> {
    let same = match (input.canonicalize(), output.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => input == output,
    };
    if same {
        return Some("the output would overwrite the input model; choose another path".into());
    }
    if output.is_dir() {
        return Some("is a folder; give the file to write".into());
    }
    let parent = output.parent().filter(|p| !p.as_os_str().is_empty());
    parent
        .filter(|d| !d.is_dir())
        .map(|d| format!("the output folder {} does not exist", d.display()))
}

/// Writes `path` by calling `fill` on a buffered writer over a temporary file, then renaming.
pub fn write_file(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    check_target(path)?;
    let tmp = temp_path(path);
    let result = (|| {
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, "write", e)
    })
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file(path, |w| w.write_all(bytes))
}

/// A target may be absent, a regular file, or a link (replaced itself, whatever it points to).
fn check_target(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(Error::invalid(path, "is a folder, not a file to write")),
        Ok(m) if !m.is_file() && !m.file_type().is_symlink() => Err(Error::invalid(
            path,
            "is a special file (FIFO, device or socket), not a file to write",
        )),
        _ => Ok(()),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        fs::write(&target, b"old").unwrap();
        let err = write_file(&target, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk on fire"))
        })
        .unwrap_err();
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("disk on fire"));
        assert!(err
            .to_string()
            .starts_with(&format!("{}: cannot write", target.display())));
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        write_bytes(&target, b"new").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
    }

    #[test]
    fn a_link_planted_at_the_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.txt");
        fs::write(&victim, b"precious").unwrap();
        let target = dir.path().join("out.onnx");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_bytes(&target, b"model").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::symlink_metadata(&target).unwrap().is_file());
        assert_eq!(fs::read(&target).unwrap(), b"model");
        // A link planted at the temporary file's name is an error, not a way in.
        let tmp = temp_path(&target);
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        assert!(write_bytes(&target, b"again").is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(&target).unwrap(), b"model");
    }

    #[test]
    fn folders_and_special_files_are_not_targets() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_bytes(dir.path(), b"x").unwrap_err().to_string();
        assert!(e.ends_with("is a folder, not a file to write"), "{e}");
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let e = write_bytes(&fifo, b"x").unwrap_err().to_string();
            assert!(e.contains("is a special file"), "{e}");
        }
    }
}
