//! Image decoding and preprocessing on arbitrary bytes (PNG, JPEG, whatever the bytes look
//! like): decode within the memory limit, then resize, crop and normalize as a calibration folder
//! would. Errors, never panics. The limit is 256 KiB here: the work an image legitimately takes
//! grows with the memory it may use, so a small limit keeps each input well under the 1 s timeout
//! and the executions many; what is over it takes the same refusal path as a larger one.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use zeropoint_onnx::limits;
use zeropoint_quant::images::{decode_bytes, to_input, ImagePrep, Layout, Target};

fuzz_target!(|data: &[u8]| {
    limits::set_max_bytes(256 << 10);
    let path = Path::new("x.png");
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let Ok(img) = decode_bytes(bytes, path) else {
        return;
    };
    // The first byte picks the steps: gray and resized, or colour as it is; the fuzzer finds tiny
    // and odd images, which the steps must take or refuse.
    let steps = [(1, Layout::Nchw, Some(32)), (3, Layout::Nhwc, None)];
    let (channels, layout, resize) = steps[usize::from(mode & 1)];
    {
        let prep = ImagePrep {
            resize,
            crop: Some((28, 28)),
            layout,
            bgr: channels == 3,
        };
        let target = Target {
            channels,
            size: (28, 28),
            prep: &prep,
            scale: 1.0 / 255.0,
            mean: &[0.5],
            std: &[0.25],
        };
        let _ = to_input(img.clone(), path, &target);
    }
});
