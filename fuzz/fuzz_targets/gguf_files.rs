//! GGUF files on arbitrary bytes: `read::parse_header` (every tensor's bytes then checked to lie
//! in the file, in exact arithmetic); a header that parses is re-encoded by `write::encode_header`
//! and must parse again to the same metadata and tensors; then `quantize::plan` under three
//! presets (mixture or pure, requantizing or not), each small tensor (at most 64K elements)
//! dequantized, and its first rows quantized to the planned type, plain and with an importance
//! vector drawn from its data: errors, never panics.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use zeropoint_core::ggml::{self, GgmlType};
use zeropoint_gguf::preset::Preset;
use zeropoint_gguf::quantize::{self, Options};
use zeropoint_gguf::read::{parse_header, Header};
use zeropoint_gguf::write::{encode_header, NewTensor};

/// Elements (or elements of a row) of a tensor read back to floats at most; larger tensors are
/// only planned.
const MAX_TENSOR: u64 = 1 << 16;
/// Elements quantized per input at most, the plain and the weighted pass each counted: ggml's
/// scale searches cost microseconds per element under instrumentation, so only the first rows
/// of a tensor are quantized, and conversions take turns (by the input's length) within this.
const MAX_QUANTIZED: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = parse_header(data) else {
        return;
    };
    let bytes = tensor_bytes(&header, data);
    round_trip(&header, data);
    // The third preset is picked by the input, so that every preset gets its turn.
    let names = Preset::names();
    let picked = Preset::from_name(names[data.len() % names.len()]).expect("a listed name");
    let runs = [
        (Preset::Q4_K_M, false, false),
        (Preset::Q3_K_M, false, true),
        (picked, true, true),
    ];
    let mut jobs: Vec<(usize, GgmlType, GgmlType)> = Vec::new();
    let mut planned = HashSet::new();
    for (preset, pure, allow_requantize) in runs {
        let opts = Options {
            preset,
            imatrix: None,
            calibration: None,
            pure,
            allow_requantize,
        };
        let Ok(plan) = quantize::plan(&header, &opts) else {
            continue;
        };
        for t in &plan.tensors {
            let job = (t.input, t.from, t.to);
            let info = &header.tensors[t.input];
            // A tensor with no elements may still declare a row of 2^40 (`[2^40, 0]`): the
            // importance vector has a row's length.
            let big = info.elements().max(info.row_len()) > MAX_TENSOR;
            if !big && t.from.can_dequantize() && planned.insert(job) {
                jobs.push(job);
            }
        }
    }
    let mut budget = MAX_QUANTIZED;
    for k in 0..jobs.len() {
        let (i, from, to) = jobs[(k + data.len()) % jobs.len()];
        let row = header.tensors[i].row_len() as usize;
        convert(bytes[i], row, from, to, &mut budget);
    }
});

/// Each tensor's bytes, once their size and place are checked in exact arithmetic: a size that
/// wraps around 2^64 must have been refused.
fn tensor_bytes<'a>(header: &Header, data: &'a [u8]) -> Vec<&'a [u8]> {
    header
        .tensors
        .iter()
        .map(|t| {
            let elements = t.dims.iter().map(|&d| d as u128).product::<u128>();
            let size = elements / t.ty.block_size() as u128 * t.ty.type_size() as u128;
            assert_eq!(size, t.byte_size() as u128, "'{}': size wraps", t.name);
            let start = header.data_offset as u128 + t.offset as u128;
            assert!(
                start + size <= data.len() as u128,
                "'{}': past the end",
                t.name
            );
            &data[start as usize..(start + size) as usize]
        })
        .collect()
}

/// The header written again and read back: the same metadata (compared as bytes, NaNs
/// included) and the same tensors.
fn round_trip(header: &Header, data: &[u8]) {
    let new: Vec<NewTensor> = header
        .tensors
        .iter()
        .map(|t| NewTensor {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
        })
        .collect();
    let (mut encoded, offsets) = encode_header(&header.metadata, &new);
    let expected: Vec<u64> = header.tensors.iter().map(|t| t.offset).collect();
    assert_eq!(offsets, expected, "re-encoded offsets differ");
    let header_len = encoded.len();
    encoded.extend_from_slice(&data[header.data_offset as usize..]);
    let again = match parse_header(&encoded) {
        Ok(h) => h,
        Err(e) => panic!("the re-encoded header does not parse: {e}"),
    };
    assert_eq!(
        again.tensors, header.tensors,
        "tensors differ after a round trip"
    );
    assert_eq!(again.alignment, header.alignment);
    let keys = |h: &Header| {
        h.metadata
            .iter()
            .map(|(k, _)| k.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&again), keys(header), "keys differ after a round trip");
    let (twice, _) = encode_header(&again.metadata, &new);
    assert!(
        twice == encoded[..header_len],
        "metadata differs after a round trip"
    );
}

/// One tensor's bytes to floats, and its first rows (within `budget`) to `to`, plain and
/// weighted.
fn convert(bytes: &[u8], row: usize, from: GgmlType, to: GgmlType, budget: &mut usize) {
    let Ok(x) = ggml::dequantize_rows(from, bytes, row) else {
        return;
    };
    if !to.can_quantize() {
        return;
    }
    // An importance per column, as llama-imatrix gathers one: the mean square of its values
    // over all rows, finite and non-negative whatever the data.
    let rows = x.len().checked_div(row).unwrap_or(0);
    let mut importance = vec![0f64; row];
    for chunk in x.chunks_exact(row.max(1)) {
        for (w, v) in importance.iter_mut().zip(chunk) {
            if v.is_finite() {
                *w += (*v as f64) * (*v as f64);
            }
        }
    }
    let importance: Vec<f32> = importance
        .iter()
        .map(|w| (w / rows.max(1) as f64).min(f32::MAX as f64) as f32)
        .collect();
    let take = rows.min((*budget / 2).checked_div(row).unwrap_or(rows));
    if take == 0 && rows > 0 {
        return;
    }
    *budget -= 2 * take * row;
    let x = &x[..take * row];
    let _ = ggml::quantize_rows(to, x, row);
    let _ = ggml::quantize_rows_weighted(to, x, row, &importance);
}
