//! Hostile files (docs/security.md): each attack of tests/python/hostile_files.py gets a one-line
//! error naming the file and what is wrong, exit status 1, no output file, and no hang; a
//! compressed archive larger than the memory limit still calibrates, streamed. And outputs never
//! follow a link planted at their path.

#[path = "../../../tests/support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{repo_root, run_python};

/// Runs zeropoint in `dir`, killing it after `limit`: an attack must not make it hang.
fn zeropoint_in(dir: &Path, args: &[String], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zeropoint"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start zeropoint");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("zeropoint {args:?} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The file an `-o` argument names, if any.
fn output_of(args: &[String]) -> Option<&String> {
    args.iter()
        .position(|a| a == "-o")
        .and_then(|i| args.get(i + 1))
}

#[test]
fn hostile_files_are_refused_in_one_line_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    run_python("hostile_files.py", &[dir.path()]);
    let cases: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.path().join("cases.json")).unwrap()).unwrap();
    assert!(cases.len() >= 20, "only {} cases", cases.len());
    let mnist = repo_root().join("assets/models/mnist_cnn.onnx");
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let args: Vec<String> = case["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                a.as_str()
                    .unwrap()
                    .replace("{mnist}", mnist.to_str().unwrap())
            })
            .collect();
        let out = zeropoint_in(dir.path(), &args, Duration::from_secs(120));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let written = output_of(&args).map(|o| dir.path().join(o));
        let problem = match case["expect"].as_str() {
            None if !out.status.success() => Some(format!("failed: {stderr}")),
            None if written.as_ref().is_some_and(|w| !w.exists()) => {
                Some("succeeded but wrote nothing".into())
            }
            None => None,
            Some(_) if out.status.code() != Some(1) => {
                Some(format!("exit status {:?}: {stderr}", out.status.code()))
            }
            Some(expect)
                if !stderr.starts_with("zeropoint: error: ") || !stderr.contains(expect) =>
            {
                Some(format!("expected '{expect}', got: {stderr}"))
            }
            Some(_) if stderr.trim_end().lines().count() != 1 => {
                Some(format!("not one line: {stderr}"))
            }
            Some(_) if written.as_ref().is_some_and(|w| w.exists()) => {
                Some("wrote its output anyway".into())
            }
            Some(_) => None,
        };
        if let Some(p) = problem {
            failures.push(format!("{name}: {p}"));
        }
        if let Some(w) = written {
            let _ = std::fs::remove_file(w);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn outputs_replace_a_planted_link_instead_of_following_it() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let link: PathBuf = dir.path().join("out.onnx");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let model = repo_root().join("assets/models/mnist_cnn.onnx");
    let args: Vec<String> = ["graph", model.to_str().unwrap(), "-o", "out.onnx"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = zeropoint_in(dir.path(), &args, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    // A folder at the output path is refused before any work.
    std::fs::create_dir(dir.path().join("folder.onnx")).unwrap();
    let args: Vec<String> = ["quantize", "-o", "folder.onnx"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = zeropoint_in(dir.path(), &args, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("folder.onnx: is a folder"), "{stderr}");
}
