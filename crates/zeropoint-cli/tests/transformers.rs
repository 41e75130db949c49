//! The transformer paths of `zeropoint quantize` end to end:
//! - `--mode weight-only` (tests/python/weight_only_reference.py): RTN, GPTQ and HQQ against
//!   numpy versions of their papers' update rules, MatMulNBits, GatherBlockQuantized and blocked
//!   DequantizeLinear read back from their specifications and run in ONNX Runtime;
//! - `--mode dynamic` (tests/python/dynamic_reference.py): int8 weights against numpy, and
//!   ONNX Runtime's DynamicQuantizeLinear → MatMulInteger / ConvInteger against a numpy
//!   simulation of their specifications;
//! - `--smoothquant` (tests/python/smoothquant_reference.py): the smoothing factors, where
//!   1/s goes and the scaled weights against numpy, and outputs closer to float than without;
//!
//! - a float decoder end to end (tests/python/decoder_reference.py): stories15M exported to ONNX,
//!   quantized dynamically per token and per tensor and to 4-bit weights with round to nearest
//!   and GPTQ, scored by perplexity in ONNX Runtime against float and ONNX Runtime's own
//!   4-bit round to nearest;
//!
//! all with the same bytes at any thread count and one-line refusals.

#[path = "../../../tests/support.rs"]
mod support;

use std::path::Path;

use support::check_reference;

#[test]
fn weight_only_quantization_end_to_end() {
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    check_reference(
        "weight_only_reference.py",
        zeropoint,
        "weight-only reference",
    );
}

#[test]
fn dynamic_quantization_end_to_end() {
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    check_reference("dynamic_reference.py", zeropoint, "dynamic reference");
}

#[test]
fn smoothquant_end_to_end() {
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    check_reference(
        "smoothquant_reference.py",
        zeropoint,
        "smoothquant reference",
    );
}

#[test]
fn a_float_decoder_quantizes_end_to_end() {
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    check_reference("decoder_reference.py", zeropoint, "decoder reference");
}
