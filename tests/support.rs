//! Helpers shared by the integration tests of every crate (included with `#[path]`): finding the
//! test venv's Python, running the reference scripts of tests/python, deterministic test data.

// Each test crate uses a different subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The Python of the test venv: $ZEROPOINT_PYTHON, else .venv/bin/python at the repository root.
/// Missing Python is a failure, not a skip: these tests are the project's proof of correctness.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("ZEROPOINT_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "the reference tests need Python with onnx and onnxruntime: run scripts/setup-venv \
         (or scripts/test, which does it), or set ZEROPOINT_PYTHON"
    );
    venv
}

/// Runs a Python script of tests/python with arguments; returns its stdout, panicking with the
/// whole output if it fails.
pub fn run_python(script: &str, args: &[&Path]) -> String {
    let out = Command::new(python())
        .arg(repo_root().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("cannot start python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// Runs the reference script `script` of tests/python on the CLI binary `zeropoint` and a fresh
/// temporary folder, prints its report, and asserts that it says "`name`: all checks passed".
pub fn check_reference(script: &str, zeropoint: &Path, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = run_python(script, &[zeropoint, dir.path()]);
    print!("{out}");
    let passed = format!("{name}: all checks passed");
    assert!(out.contains(&passed), "{out}");
}

/// A small deterministic generator (xorshift64*), so that test data needs no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Approximately standard normal (Irwin-Hall with 12 terms).
    pub fn normal(&mut self) -> f32 {
        (0..12).map(|_| self.uniform()).sum::<f32>() - 6.0
    }
}

/// An error and its sources joined by ": ", the one line the zeropoint command prints for it.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

/// Whether ONNX Runtime's uint8 × int8 CPU kernels saturate on this machine. On x86 without VNNI
/// they sum adjacent products in int16 (AVX2's vpmaddubsw), so full-range int8 weights can
/// overflow and ORT's fused integer graph departs from the QDQ semantics; 7-bit weights (±63,
/// 2·255·63 < 2^15) cannot overflow. VNNI and ARM dot products accumulate in int32.
pub fn ort_int8_kernels_saturate() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    !["avx512_vnni", "avx_vnni", "amx_int8"]
        .iter()
        .any(|f| flags.contains(f))
}
