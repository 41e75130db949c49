//! `zeropoint graph MODEL`: what a model is made of: inputs and outputs with their inferred
//! shapes, operator counts and whether zeropoint runs each, parameters, and what
//! canonicalization would do (constants folded, BatchNorms folded, fused groups).
//! `--output OUT.onnx` writes the canonicalized model, `--opset N` upgraded to that opset.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use serde_json::json;
use zeropoint_model::canonicalize::{canonicalize, fused_groups};
use zeropoint_model::graph::Dim;
use zeropoint_model::infer::{infer, ValueType};
use zeropoint_model::{external_data, onnx, Graph};

use crate::table::Table;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The ONNX model.
    pub model: PathBuf,
    /// Write the canonicalized model here (constants folded, BatchNormalization folded into the
    /// layer before it, dead nodes removed).
    #[arg(long, short = 'o', value_name = "OUT.onnx")]
    pub output: Option<PathBuf>,
    /// Upgrade the written model to this opset of the default domain (7 to 22), rewriting the
    /// operators whose signature changed.
    #[arg(long, requires = "output")]
    pub opset: Option<i64>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let mut proto = onnx::load(&args.model)?;
    external_data::load_external_data(&mut proto, &args.model)?;
    let graph = Graph::from_model(&proto, &args.model)?;
    let unsupported = graph.unsupported();
    // Shapes need a run; a graph zeropoint cannot run is still described.
    let types = if unsupported.is_empty() {
        Some(infer(&graph)?)
    } else {
        None
    };
    let mut canonical = graph.clone();
    let report = if unsupported.is_empty() {
        Some(canonicalize(&mut canonical)?)
    } else {
        None
    };
    let groups = fused_groups(if report.is_some() { &canonical } else { &graph });

    let mut ops: BTreeMap<&str, (usize, bool)> = BTreeMap::new();
    for n in &graph.nodes {
        let e = ops
            .entry(n.op.as_str())
            .or_insert((0, zeropoint_model::ops::supports(n)));
        e.0 += 1;
    }
    let io = |infos: &[zeropoint_model::graph::ValueInfo]| -> Vec<serde_json::Value> {
        infos
            .iter()
            .map(|i| {
                let inferred = types.as_ref().and_then(|t| t.get(&i.name));
                json!({
                    "name": i.name,
                    "dtype": inferred.map(|t| t.dtype.name()).or(i.dtype.map(|d| d.name())),
                    "declared_shape": i.shape.as_ref().map(|s| dims(s)),
                    "shape": inferred.map(|t: &ValueType| dims(&t.shape)),
                })
            })
            .collect()
    };
    let doc = json!({
        "model": args.model.display().to_string(),
        "opset": graph.opset,
        "nodes": graph.nodes.len(),
        "parameters": graph.parameter_count(),
        "inputs": io(&graph.inputs),
        "outputs": io(&graph.outputs),
        "operators": ops.iter().map(|(op, (n, ok))| json!({"op": op, "count": n, "supported": ok})).collect::<Vec<_>>(),
        "unsupported_nodes": unsupported,
        "canonicalization": report.as_ref().map(|r| json!({
            "folded_constants": r.folded_constants,
            "folded_batch_norms": r.folded_batch_norms.iter().map(|(bn, into)| json!({"batch_norm": bn, "into": into})).collect::<Vec<_>>(),
            "folded_bias_adds": r.folded_bias_adds.len(),
            "removed_nodes": r.removed_nodes,
            "removed_initializers": r.removed_initializers,
            "nodes_after": canonical.nodes.len(),
        })),
        "fused_groups": groups.iter().map(|g| json!({"nodes": g.nodes, "output": g.output})).collect::<Vec<_>>(),
    });
    if let Some(out) = &args.output {
        if out == &args.model {
            bail!(
                "{}: the output would overwrite the model; choose another path",
                out.display()
            );
        }
        if report.is_none() {
            bail!(
                "{}: cannot canonicalize: unsupported operators: {}",
                args.model.display(),
                unsupported.join(", ")
            );
        }
        if let Some(to) = args.opset {
            if to < canonical.opset {
                bail!(
                    "{}: the model has opset {}; --opset {to} would downgrade it",
                    args.model.display(),
                    canonical.opset
                );
            }
            zeropoint_model::opset::upgrade(&mut canonical, to)?;
        }
        external_data::save(&canonical.to_model(&proto)?, out)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    print_tables(&doc);
    if let Some(out) = &args.output {
        println!(
            "canonicalized model (opset {}) written to {}",
            canonical.opset,
            out.display()
        );
    }
    Ok(())
}

fn dims(shape: &[Dim]) -> Vec<String> {
    shape.iter().map(Dim::to_string).collect()
}

fn print_tables(doc: &serde_json::Value) {
    println!(
        "{}: opset {}, {} nodes, {} parameters",
        doc["model"].as_str().unwrap_or(""),
        doc["opset"],
        doc["nodes"],
        doc["parameters"]
    );
    let mut t = Table::new(&["", "name", "dtype", "shape"]);
    for (kind, key) in [("input", "inputs"), ("output", "outputs")] {
        for v in doc[key].as_array().into_iter().flatten() {
            let shape = if v["shape"].is_null() {
                &v["declared_shape"]
            } else {
                &v["shape"]
            };
            let shape: Vec<&str> = shape
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str())
                .collect();
            t.row(vec![
                kind.to_string(),
                v["name"].as_str().unwrap_or("").to_string(),
                v["dtype"].as_str().unwrap_or("?").to_string(),
                format!("[{}]", shape.join(", ")),
            ]);
        }
    }
    print!("\n{}", t.render());
    let mut t = Table::new(&["operator", "count", "supported"]);
    for o in doc["operators"].as_array().into_iter().flatten() {
        t.row(vec![
            o["op"].as_str().unwrap_or("").to_string(),
            o["count"].to_string(),
            if o["supported"] == true { "yes" } else { "NO" }.to_string(),
        ]);
    }
    print!("\n{}", t.render());
    let unsupported = doc["unsupported_nodes"].as_array().map_or(0, Vec::len);
    if unsupported > 0 {
        println!(
            "\nzeropoint cannot run {unsupported} node(s): {}",
            doc["unsupported_nodes"]
        );
        return;
    }
    let c = &doc["canonicalization"];
    println!(
        "\ncanonicalization: {} constant node(s) folded, {} BatchNormalization and {} bias Add folded, {} dead node(s) removed: {} -> {} nodes",
        c["folded_constants"],
        c["folded_batch_norms"].as_array().map_or(0, Vec::len),
        c["folded_bias_adds"],
        c["removed_nodes"],
        doc["nodes"],
        c["nodes_after"]
    );
    let groups = doc["fused_groups"].as_array().map_or(0, Vec::len);
    let with_act = doc["fused_groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["nodes"].as_array().is_some_and(|n| n.len() > 1))
        .count();
    println!("fused groups (layer + bias + Relu/Clip): {groups}, {with_act} of them with more than the layer");
}
