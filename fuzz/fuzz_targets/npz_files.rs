//! The `.npz` reader on arbitrary bytes (zip archives of `.npy` members, stored or deflated),
//! and the streamed `.npy` header reader: errors, never panics, never more memory than the
//! limit (64 MiB here), however large the sizes an archive declares.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use zeropoint_onnx::{limits, npy, npz};

fuzz_target!(|data: &[u8]| {
    limits::set_max_bytes(64 << 20);
    let path = Path::new("x.npz");
    let _ = npz::parse(data, path);
    let _ = npy::read_header(&mut std::io::Cursor::new(data), path, "x");
});
