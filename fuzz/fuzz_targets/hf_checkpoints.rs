//! Hugging Face checkpoint folders on arbitrary bytes: the input is cut into `config.json`,
//! `tokenizer.json`, `tokenizer.model` (SentencePiece protobuf) and `tokenizer_config.json`
//! (each behind a 2-byte length; a zero length leaves the file out) and `model.safetensors` (the
//! rest), written to a scratch folder; then `hf::Checkpoint::open`, every tensor's bytes (the
//! rotary permutation, the widening of 1-D tensors) and `quantize::plan` under Q4_K_M: errors,
//! never panics.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use zeropoint_gguf::hf::{Checkpoint, Options};
use zeropoint_gguf::input::Input;
use zeropoint_gguf::preset::Preset;
use zeropoint_gguf::quantize::{self, Options as QuantizeOptions};

const FILES: [&str; 4] = [
    "config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
];

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("zeropoint-fuzz-hf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let mut rest = data;
    for name in FILES {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            continue;
        };
        let len = (u16::from_le_bytes(*len) as usize).min(tail.len());
        if len > 0 {
            std::fs::write(&path, &tail[..len]).unwrap();
        }
        rest = &tail[len..];
    }
    std::fs::write(dir.join("model.safetensors"), rest).unwrap();
    let Ok(model) = Checkpoint::open(dir, &Options::default()) else {
        return;
    };
    for i in 0..model.header().tensors.len() {
        if let Ok(bytes) = model.data(i) {
            assert_eq!(bytes.len() as u64, model.header().tensors[i].byte_size());
        }
    }
    let opts = QuantizeOptions {
        preset: Preset::Q4_K_M,
        imatrix: None,
        calibration: None,
        pure: false,
        allow_requantize: false,
    };
    let _ = quantize::plan(model.header(), &opts);
});
