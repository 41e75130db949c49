//! How much memory one allocation driven by a file may take, decided before allocating.
//!
//! A file's sizes are claims: a `.npy` header's shape, an external-data length, a zip member's
//! uncompressed size, an image's width and height, an operator's output shape computed from its
//! inputs. Every one is checked against the bytes actually present where there are any, and
//! against this limit, before memory is allocated for it, so that a hostile or broken file gets a
//! one-line error instead of exhausting the machine. The limit is process-wide: by default 3/4 of
//! physical memory, set by `zeropoint --max-memory`.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Set by [`set_max_bytes`]; 0 means the default.
static MAX_BYTES: AtomicU64 = AtomicU64::new(0);

/// Set by [`set_max_iterations`]; 0 means [`DEFAULT_MAX_ITERATIONS`].
static MAX_ITERATIONS: AtomicU64 = AtomicU64::new(0);

/// The most iterations one Loop or Scan node may run by default: far beyond a model's sequence
/// lengths (thousands of frames or tokens), far below what would hang the process on a file
/// whose loop never ends.
pub const DEFAULT_MAX_ITERATIONS: u64 = 1 << 20;

/// The limit used where physical memory cannot be read.
const FALLBACK: u64 = 8 << 30;

/// The most bytes one allocation driven by a file may take.
pub fn max_bytes() -> u64 {
    match MAX_BYTES.load(Ordering::Relaxed) {
        0 => default_max_bytes(),
        n => n,
    }
}

/// Sets the limit for the rest of the process (0 restores the default).
pub fn set_max_bytes(bytes: u64) {
    MAX_BYTES.store(bytes, Ordering::Relaxed);
}

/// The most iterations one Loop or Scan node may run.
pub fn max_iterations() -> u64 {
    match MAX_ITERATIONS.load(Ordering::Relaxed) {
        0 => DEFAULT_MAX_ITERATIONS,
        n => n,
    }
}

/// Sets the iteration limit for the rest of the process (0 restores the default).
pub fn set_max_iterations(n: u64) {
    MAX_ITERATIONS.store(n, Ordering::Relaxed);
}

/// 3/4 of physical memory: one tensor or file larger than that cannot be meant.
pub fn default_max_bytes() -> u64 {
    physical_memory().map_or(FALLBACK, |m| m / 4 * 3)
}

/// Physical memory in bytes, from /proc/meminfo (Linux), read once: every operator's output is
/// checked against the limit, and reading the file each time was 2 % of quantizing a detector.
pub fn physical_memory() -> Option<u64> {
    static MEMORY: OnceLock<Option<u64>> = OnceLock::new();
    *MEMORY.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    })
}

/// Refuses `bytes` (as many as `what` needs) over the limit, with the message to give.
pub fn check(bytes: u128, what: &str) -> std::result::Result<(), String> {
    let limit = max_bytes();
    if bytes <= u128::from(limit) {
        return Ok(());
    }
    Err(format!(
        "{what} needs {}, over the memory limit of {} (--max-memory)",
        size_text(bytes),
        size_text(u128::from(limit))
    ))
}

/// `n` elements of `size` bytes each, checked: the message names `what`.
pub fn check_elements(n: u128, size: usize, what: &str) -> std::result::Result<(), String> {
    check(n.saturating_mul(size as u128), what)
}

/// A size for people: "512 B", "3.5 MiB", "32.0 GiB".
pub fn size_text(bytes: u128) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Opens `path` for reading if it is a regular file (after following links): a FIFO or a device
/// would block or never end.
pub fn open_regular(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "read", e))?;
    if !meta.is_file() {
        return Err(Error::invalid(path, "not a regular file"));
    }
    File::open(path).map_err(|e| Error::io(path, "read", e))
}

/// `path` opened for reading, and its length, refused if it is larger than the limit.
pub fn open_within_limit(path: &Path) -> Result<(File, u64)> {
    let file = open_regular(path)?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(path, "read", e))?
        .len();
    check(u128::from(len), "reading the file").map_err(|m| Error::invalid(path, m))?;
    Ok((file, len))
}

/// The whole file at `path`, refused before reading if it is larger than the limit.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let (file, len) = open_within_limit(path)?;
    let mut bytes = Vec::with_capacity(len as usize);
    // The length can change under us: never read more than the limit.
    file.take(max_bytes().saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, "read", e))?;
    check(bytes.len() as u128, "reading the file").map_err(|m| Error::invalid(path, m))?;
    Ok(bytes)
}

/// Everything `reader` gives, up to the limit: more is an error (a decompression bomb) saying
/// that `what` is larger than the limit, after reading at most the limit.
pub fn read_limited(reader: impl Read, what: &str) -> std::io::Result<Vec<u8>> {
    let limit = max_bytes();
    let mut bytes = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "{what} is larger than the memory limit of {} (--max-memory)",
            size_text(u128::from(limit))
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_for_people() {
        assert_eq!(size_text(512), "512 B");
        assert_eq!(size_text(3 << 20), "3.0 MiB");
        assert_eq!(size_text(32 << 30), "32.0 GiB");
        assert!(physical_memory().is_some_and(|m| m > 1 << 20));
        assert!(default_max_bytes() < physical_memory().unwrap());
    }
}
