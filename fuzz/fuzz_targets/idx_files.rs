//! The idx reader (MNIST-style images and labels) on arbitrary bytes, plain or gzip-compressed
//! (by the first byte's parity): errors, never panics, never more memory than the limit (64 MiB
//! here), however large the dimensions it declares.
#![no_main]

use std::io::{Cursor, Read};
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use zeropoint_onnx::limits;
use zeropoint_quant::idx;

fuzz_target!(|data: &[u8]| {
    limits::set_max_bytes(64 << 20);
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let path = Path::new("x-idx3-ubyte");
    let reader = || -> Box<dyn Read> {
        if mode & 1 == 1 {
            Box::new(flate2::read::GzDecoder::new(Cursor::new(body)))
        } else {
            Box::new(Cursor::new(body))
        }
    };
    let _ = idx::read_header(&mut reader(), path);
    let _ = idx::labels_from(reader(), path);
});
