//! Structure-aware fuzzing of the whole quantization pipeline on real graphs. The bytes do not
//! encode a model: they pick one of the seed models (fuzz/README.md) and a list of edits a broken
//! exporter or a hand-edited file could make — drop, duplicate or rewire nodes and inputs,
//! change attributes, dimensions and element types, remove initializers and outputs. The edited
//! model then goes through what `zeropoint quantize` does: load, float16 widened to float32,
//! opset upgrade, canonicalization (loop-carried constants hoisted), types at the data's shapes,
//! placement, calibration on a tiny in-memory input, parameters, the per-layer report (float and
//! simulated runs stepped side by side) and the QDQ export. Errors, never panics. Memory limit 4 MiB, as for `graph_passes`.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use zeropoint_core::observer::Method;
use zeropoint_engine::infer::{dtypes_of, probe, with_input_shapes};
use zeropoint_engine::Engine;
use zeropoint_graph::canonicalize::{canonicalize, decompose_hard_swish};
use zeropoint_graph::{half_precision, opset, Dim, Graph};
use zeropoint_onnx::proto::{tensor_shape_proto, type_proto, ModelProto};
use zeropoint_onnx::{limits, model, DType, RawTensor};
use zeropoint_quant::calibrate::calibrate;
use zeropoint_quant::dataset::Dataset;
use zeropoint_quant::placement::{Choices, Plan};
use zeropoint_quant::settings::Settings;
use zeropoint_quant::{params, qdq_export, report};

/// The seed models: every `.onnx` under `$ZEROPOINT_FUZZ_MODELS` (default fuzz/models).
fn seeds() -> &'static [ModelProto] {
    static SEEDS: OnceLock<Vec<ModelProto>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = std::env::var_os("ZEROPOINT_FUZZ_MODELS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("models"));
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("seed models in {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
            .collect();
        paths.sort();
        let models: Vec<ModelProto> = paths.iter().filter_map(|p| model::load(p).ok()).collect();
        assert!(!models.is_empty(), "no seed models in {}", dir.display());
        models
    })
}

/// The fuzzer's bytes, read as small numbers; zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    /// An index below `n` (n > 0).
    fn pick(&mut self, n: usize) -> usize {
        (usize::from(self.byte()) << 8 | usize::from(self.byte())) % n
    }

    /// A small signed value, with the extremes now and then.
    fn int(&mut self) -> i64 {
        match self.byte() {
            0 => i64::MIN,
            1 => i64::MAX,
            2 => 1 << 40,
            b => i64::from(b as i8),
        }
    }
}

/// Every value name of the graph: inputs, initializers, node outputs.
fn value_names(m: &ModelProto) -> Vec<String> {
    let g = m.graph.as_ref().expect("seeds have graphs");
    g.input
        .iter()
        .map(|i| i.name().to_string())
        .chain(g.initializer.iter().map(|t| t.name().to_string()))
        .chain(g.node.iter().flat_map(|n| n.output.clone()))
        .collect()
}

/// One edit of `m`, chosen by the bytes.
fn mutate(m: &mut ModelProto, b: &mut Bytes) {
    let names = value_names(m);
    let g = m.graph.as_mut().expect("seeds have graphs");
    let nodes = g.node.len();
    match b.byte() % 9 {
        0 if nodes > 0 => {
            g.node.remove(b.pick(nodes));
        }
        1 if nodes > 0 => {
            let n = g.node[b.pick(nodes)].clone();
            let at = b.pick(nodes + 1);
            g.node.insert(at, n);
        }
        2 if nodes > 0 => {
            let n = &mut g.node[b.pick(nodes)];
            let to = if b.byte() % 8 == 0 {
                String::new()
            } else {
                names[b.pick(names.len())].clone()
            };
            match n.input.len() {
                0 => n.input.push(to),
                k => n.input[b.pick(k)] = to,
            }
        }
        3 if nodes > 0 => {
            let n = &mut g.node[b.pick(nodes)];
            if let Some(a) = (!n.attribute.is_empty()).then(|| b.pick(n.attribute.len())) {
                let a = &mut n.attribute[a];
                match b.byte() % 3 {
                    0 => a.i = Some(b.int()),
                    1 if !a.ints.is_empty() => {
                        let k = b.pick(a.ints.len());
                        a.ints[k] = b.int();
                    }
                    1 => a.ints.push(b.int()),
                    _ => a.f = Some(f32::from(b.byte() as i8) / 4.0),
                }
            }
        }
        4 if !g.input.is_empty() => {
            let i = b.pick(g.input.len());
            if let Some(type_proto::Value::TensorType(t)) =
                g.input[i].r#type.as_mut().and_then(|t| t.value.as_mut())
            {
                if let Some(shape) = t.shape.as_mut().filter(|s| !s.dim.is_empty()) {
                    let d = b.pick(shape.dim.len());
                    shape.dim[d].value = Some(match b.byte() % 3 {
                        0 => tensor_shape_proto::dimension::Value::DimParam("free".into()),
                        _ => tensor_shape_proto::dimension::Value::DimValue(i64::from(b.byte() % 9)),
                    });
                } else if let Some(shape) = t.shape.as_mut() {
                    shape.dim.push(Default::default());
                }
            }
        }
        5 if !g.input.is_empty() => {
            let i = b.pick(g.input.len());
            if let Some(type_proto::Value::TensorType(t)) =
                g.input[i].r#type.as_mut().and_then(|t| t.value.as_mut())
            {
                t.elem_type = Some(i32::from(b.byte() % 24));
            }
        }
        6 if !g.initializer.is_empty() => {
            let i = b.pick(g.initializer.len());
            match b.byte() % 3 {
                0 => {
                    g.initializer.remove(i);
                }
                1 => g.initializer[i].data_type = Some(i32::from(b.byte() % 24)),
                _ => {
                    let dims = &mut g.initializer[i].dims;
                    match dims.len() {
                        0 => dims.push(b.int()),
                        k => dims[b.pick(k)] = b.int(),
                    }
                }
            }
        }
        7 if !g.output.is_empty() => {
            g.output.remove(b.pick(g.output.len()));
        }
        8 if nodes > 0 => {
            // A node output as an extra graph output.
            let n = &g.node[b.pick(nodes)];
            if let Some(o) = n.output.first() {
                g.output.push(zeropoint_onnx::proto::ValueInfoProto {
                    name: Some(o.clone()),
                    ..Default::default()
                });
            }
        }
        _ => {}
    }
}

/// A tiny batch-first input per graph input: free dimensions 2, fixed ones as declared, zeros
/// with a few ones (positions and masks take small integers).
fn tiny_inputs(graph: &Graph) -> Option<Vec<(String, Arc<RawTensor>)>> {
    graph
        .inputs
        .iter()
        .map(|i| {
            let shape: Vec<usize> = i
                .shape
                .as_ref()?
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Sym(_) => 2,
                })
                .collect();
            let n = zeropoint_onnx::element_count(&shape).filter(|&n| n <= 1 << 16)?;
            if shape.is_empty() {
                return None;
            }
            let dtype = i.dtype.unwrap_or(DType::F32);
            let data = vec![0u8; n * dtype.size()];
            Some((
                i.name.clone(),
                Arc::new(RawTensor {
                    name: i.name.clone(),
                    shape,
                    dtype,
                    data,
                }),
            ))
        })
        .collect()
}

fn quantize(m: &ModelProto, path: &Path) -> Option<()> {
    let mut graph = Graph::from_model(m, path).ok()?;
    half_precision::compute_in_float32(&mut graph).ok()?;
    zeropoint_engine::exec::check_supported(&graph).ok()?;
    let mut settings = Settings::default();
    settings.activation_method = Method::MinMax;
    opset::upgrade(&mut graph, qdq_export::required_opset(&settings), &Engine).ok()?;
    canonicalize(&mut graph, &Engine).ok()?;
    decompose_hard_swish(&mut graph);
    let mut data = Dataset::from_arrays(tiny_inputs(&graph)?, &graph.inputs).ok()?;
    let seen = probe(&with_input_shapes(&graph, &data.sample_shapes())).ok()?;
    let plan = Plan::new(&graph, dtypes_of(&graph, seen), Choices::excluding(&[])).ok()?;
    let ranges = calibrate(&graph, &plan, &mut data, &settings, &mut |_| {}).ok()?;
    let params = params::params(&graph, &plan, &ranges, &settings).ok()?;
    let mut again = Dataset::from_arrays(tiny_inputs(&graph)?, &graph.inputs).ok()?;
    report::layer_errors((&graph, &graph), &plan, &params, &mut again, 1, &mut |_, _| {}).ok()?;
    let exported = qdq_export::export(&graph, &plan, &params, m).ok()?;
    model::encode(&exported, path).ok().map(drop)
}

fuzz_target!(|data: &[u8]| {
    limits::set_max_bytes(4 << 20);
    limits::set_max_iterations(1000);
    let mut b = Bytes(data);
    let seeds = seeds();
    let mut m = seeds[b.pick(seeds.len())].clone();
    for _ in 0..1 + b.byte() % 4 {
        mutate(&mut m, &mut b);
    }
    // Triage: `ZEROPOINT_FUZZ_DUMP=edited.onnx cargo fuzz run ... <artifact>` keeps the edited
    // model, to reproduce a finding with `zeropoint quantize`.
    if let Some(dump) = std::env::var_os("ZEROPOINT_FUZZ_DUMP") {
        model::save(&m, Path::new(&dump)).expect("ZEROPOINT_FUZZ_DUMP is writable");
    }
    let _ = quantize(&m, Path::new("fuzz/nonexistent/model.onnx"));
});
