//! `zeropoint train` end to end (tests/python/qat_reference.py): QAT beats its PTQ start at
//! W2A2, the trained export runs in ONNX Runtime as in zeropoint's executor, the same seed gives
//! the same bytes at any thread count, and mismatched labels are refused in one line.

#[path = "../../../tests/support.rs"]
mod support;

use std::path::Path;

use support::check_reference;

#[test]
fn quantization_aware_training_end_to_end() {
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    check_reference("qat_reference.py", zeropoint, "qat reference");
}
