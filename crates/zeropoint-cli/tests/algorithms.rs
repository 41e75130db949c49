//! The white paper's PTQ algorithms against independent numpy implementations of their
//! formulas (tests/python/cle_reference.py, bias_correction_reference.py): cross-layer
//! equalization, high-bias absorption and empirical bias correction.

#[path = "../../../tests/support.rs"]
mod support;

use std::path::Path;

use support::run_python;

#[test]
fn cross_layer_equalization_matches_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    let out = run_python("cle_reference.py", &[zeropoint, dir.path()]);
    print!("{out}");
    assert!(out.contains("cle reference: all checks passed"), "{out}");
}

#[test]
fn bias_correction_matches_a_sequential_reference_in_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    let out = run_python("bias_correction_reference.py", &[zeropoint, dir.path()]);
    print!("{out}");
    assert!(
        out.contains("bias correction reference: all checks passed"),
        "{out}"
    );
}
