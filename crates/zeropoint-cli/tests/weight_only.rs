//! `zeropoint quantize --mode weight-only` end to end (tests/python/weight_only_reference.py):
//! RTN, GPTQ and HQQ against numpy versions of their papers' update rules, both export formats
//! read back from the ONNX specifications and run in ONNX Runtime, the same bytes at any thread
//! count, and one-line refusals.

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
