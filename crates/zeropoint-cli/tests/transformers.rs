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
//! all with the same bytes at any thread count and one-line refusals.

#[path = "../../../tests/support.rs"]
mod support;

use std::path::Path;

use support::run_python;

#[test]
fn weight_only_quantization_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    let out = run_python("weight_only_reference.py", &[zeropoint, dir.path()]);
    print!("{out}");
    assert!(
        out.contains("weight-only reference: all checks passed"),
        "{out}"
    );
}

#[test]
fn dynamic_quantization_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    let out = run_python("dynamic_reference.py", &[zeropoint, dir.path()]);
    print!("{out}");
    assert!(
        out.contains("dynamic reference: all checks passed"),
        "{out}"
    );
}

#[test]
fn smoothquant_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    let out = run_python("smoothquant_reference.py", &[zeropoint, dir.path()]);
    print!("{out}");
    assert!(
        out.contains("smoothquant reference: all checks passed"),
        "{out}"
    );
}
