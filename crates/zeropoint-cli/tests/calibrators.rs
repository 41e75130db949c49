//! zeropoint's range estimators against ONNX Runtime's calibrators on real activations: the
//! MNIST and CIFAR-10 CNNs of ../shared/assets run by ONNX Runtime, their activations ranged by
//! `zeropoint inspect --range` and by onnxruntime.quantization's MinMax, Percentile and Entropy
//! calibrators (tests/python/ort_calibrators.py).

#[path = "../../../tests/support.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use support::run_python;

#[test]
fn ranges_agree_with_onnx_runtime_calibrators() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_python("ort_calibrators.py", &[Path::new("dump"), dir.path()]);
    assert!(out.contains("dumped 42 tensors"), "{out}");
    let mut reports = vec![Path::new("compare").to_path_buf(), dir.path().to_path_buf()];
    for model in ["mnist_cnn", "cifar10_cnn"] {
        let npz = dir.path().join(format!("{model}.acts.npz"));
        // ORT's two-sided percentile 99.999 cuts 0.0005% on each side.
        let run = Command::new(env!("CARGO_BIN_EXE_zeropoint"))
            .args([
                "inspect",
                "--json",
                "--range",
                "minmax,percentile,abs-percentile,entropy,mse",
            ])
            // ORT's default (symmetric) percentile is the 99.999th of |x|.
            .args(["--percentile", "99.9995", "--abs-percentile", "99.999"])
            .arg(&npz)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let report = dir.path().join(format!("{model}.report.json"));
        std::fs::write(&report, &run.stdout).unwrap();
        reports.push(report);
    }
    let args: Vec<&Path> = reports.iter().map(|p| p.as_path()).collect();
    let out = run_python("ort_calibrators.py", &args);
    print!("{out}");
    assert!(
        out.contains("entropy: zeropoint's KL <= ORT's on 42/42 tensors"),
        "{out}"
    );
    assert!(
        out.trim_end()
            .ends_with("minmax=42 percentile=42 abs-percentile=42 entropy=42 mismatches=0"),
        "{out}"
    );
}
