//! `zeropoint graph MODEL`: what a model is made of: inputs and outputs with their inferred
//! shapes, operator counts and whether zeropoint runs each, parameters, and what
//! canonicalization would do (constants folded, BatchNorms folded, fused groups).
//! `--output OUT.onnx` writes the canonicalized model, `--opset N` upgraded to that opset.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use zeropoint_engine::{exec, Engine};
use zeropoint_graph::graph::dims_fit;
use zeropoint_graph::{opset, Graph};
use zeropoint_onnx::{external_data, model};
use zeropoint_quant::analysis::model::{describe, ModelSummary, ValueSummary};

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
    /// Fix an input's free dimensions for shape inference: NAME=DIMS, e.g. x=1,3,480,640.
    /// Repeat for several inputs. Without it, free dimensions are probed at small sizes.
    #[arg(long, value_name = "NAME=DIMS")]
    pub shape: Vec<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// The `--shape NAME=DIMS` arguments, checked against the model's inputs.
fn input_shapes(args: &Args, graph: &Graph) -> Result<HashMap<String, Vec<usize>>> {
    let mut shapes = HashMap::new();
    for spec in &args.shape {
        let Some((name, dims)) = spec.split_once('=') else {
            bail!("--shape '{spec}': expected NAME=DIMS, e.g. x=1,3,224,224");
        };
        let Some(input) = graph.inputs.iter().find(|i| i.name == name) else {
            let names: Vec<&str> = graph.inputs.iter().map(|i| i.name.as_str()).collect();
            bail!(
                "--shape '{spec}': the model has no input '{name}' (inputs: {})",
                names.join(", ")
            );
        };
        let dims: Vec<usize> = dims
            .split([',', 'x'])
            .map(|d| d.trim().parse())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("--shape '{spec}': dimensions must be whole numbers"))?;
        if input.shape.as_ref().is_some_and(|d| !dims_fit(d, &dims)) {
            bail!(
                "--shape '{spec}': input '{name}' is declared {}, which {dims:?} does not fit",
                input.shape_text()
            );
        }
        shapes.insert(name.to_string(), dims);
    }
    Ok(shapes)
}

pub fn run(args: &Args) -> Result<()> {
    let mut proto = model::load(&args.model)?;
    external_data::load_external_data(&mut proto, &args.model)?;
    let graph = Graph::from_model(&proto, &args.model)?;
    let shapes = input_shapes(args, &graph)?;
    let (summary, canonical) = describe(&args.model.display().to_string(), &graph, &shapes)?;
    let written = match &args.output {
        Some(out) => Some(write_canonical(args, &summary, canonical, &proto, out)?),
        None => None,
    };
    if args.json {
        // Through a JSON value: keys sorted.
        let doc = serde_json::to_value(&summary)?;
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    print_tables(&summary);
    if let (Some(out), Some(opset)) = (&args.output, written) {
        println!(
            "canonicalized model (opset {opset}) written to {}",
            out.display()
        );
    }
    Ok(())
}

/// Writes the canonical graph (upgraded to --opset if asked) into the model; returns its opset.
fn write_canonical(
    args: &Args,
    summary: &ModelSummary,
    canonical: Option<Graph>,
    proto: &zeropoint_onnx::ModelProto,
    out: &std::path::Path,
) -> Result<i64> {
    if out == args.model {
        bail!(
            "{}: the output would overwrite the model; choose another path",
            out.display()
        );
    }
    let Some(mut canonical) = canonical else {
        bail!(
            "{}: cannot canonicalize: {}",
            args.model.display(),
            exec::unsupported_message(&summary.unsupported_nodes)
        );
    };
    if let Some(to) = args.opset {
        if to < canonical.opset {
            bail!(
                "{}: the model has opset {}; --opset {to} would downgrade it",
                args.model.display(),
                canonical.opset
            );
        }
        opset::upgrade(&mut canonical, to, &Engine)?;
    }
    model::save(&canonical.to_model(proto)?, out)?;
    Ok(canonical.opset)
}

fn print_tables(s: &ModelSummary) {
    println!(
        "{}: opset {}, {} nodes, {} parameters",
        s.model, s.opset, s.nodes, s.parameters
    );
    let mut t = Table::new(&["", "name", "dtype", "shape"]);
    let row = |t: &mut Table, kind: &str, v: &ValueSummary| {
        let shape = v.shape.as_ref().or(v.declared_shape.as_ref());
        let dims = shape.map_or(String::new(), |d| d.join(", "));
        t.row(vec![
            kind.to_string(),
            v.name.clone(),
            v.dtype.unwrap_or("?").to_string(),
            format!("[{dims}]"),
        ]);
    };
    for v in &s.inputs {
        row(&mut t, "input", v);
    }
    for v in &s.outputs {
        row(&mut t, "output", v);
    }
    print!("\n{}", t.render());
    if let Some(e) = &s.shape_error {
        println!(
            "shapes above are the declared ones: inference failed at every probe size ({e}); \
             give the real sizes with --shape NAME=DIMS"
        );
    }
    let mut t = Table::new(&["operator", "count", "supported"]);
    for o in &s.operators {
        let supported = if o.supported { "yes" } else { "NO" };
        t.row(vec![
            o.op.clone(),
            o.count.to_string(),
            supported.to_string(),
        ]);
    }
    print!("\n{}", t.render());
    if !s.unsupported_nodes.is_empty() {
        println!(
            "\nzeropoint cannot run this model: {}",
            exec::unsupported_message(&s.unsupported_nodes)
        );
        return;
    }
    if let Some(c) = &s.canonicalization {
        println!(
            "\ncanonicalization: {} constant node(s) folded, {} BatchNormalization, {} scale Mul and {} bias Add folded, {} per-channel Mul/Add made depthwise Conv, {} attention scale(s) folded into the query projection, {} loop-carried constant(s) made loop-body weights, {} recurrent layer(s) given their default zero state, {} HardSwish(es) written out as four operators made two, {} GELU(s) written out as five operators after a layer made one Gelu, {} node(s) that change nothing removed (x + 0, x * 1, a Cast to its input's type), {} layout Transpose(s) cancelled, {} dead node(s) removed: {} -> {} nodes",
            c.folded_constants,
            c.folded_batch_norms.len(),
            c.folded_scale_muls,
            c.folded_bias_adds,
            c.scale_shift_convs,
            c.folded_attention_scales,
            c.hoisted_loop_constants,
            c.dropped_zero_states,
            c.fused_hard_swishes,
            c.fused_gelus,
            c.dropped_neutral_ops,
            c.cancelled_transposes,
            c.removed_nodes,
            s.nodes,
            c.nodes_after
        );
    }
    let with_act = s.fused_groups.iter().filter(|g| g.nodes.len() > 1).count();
    println!(
        "fused groups (layer + bias + Relu/Clip): {}, {with_act} of them with more than the layer",
        s.fused_groups.len()
    );
}
