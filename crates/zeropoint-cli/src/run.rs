//! `zeropoint run MODEL --input NAME=FILE.npy ...`: runs the float model with zeropoint's
//! executor and writes each output as .npy; prints a short summary of every output.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde_json::json;
use zeropoint_model::exec::Executor;
use zeropoint_model::graph::ValueInfo;
use zeropoint_model::tensor_file::read_arrays;
use zeropoint_model::{npy, Graph, Value};

use crate::table::{num, Table};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The ONNX model.
    pub model: PathBuf,
    /// An input: NAME=FILE.npy, or FILE.npz holding arrays named after the inputs, or FILE.npy
    /// alone when the model has one input. Repeat for several inputs.
    #[arg(long = "input", short = 'i', value_name = "NAME=FILE")]
    pub inputs: Vec<String>,
    /// Write each output to DIR/<output name>.npy (characters other than letters, digits, '.',
    /// '-' and '_' in the name become '_').
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Run this many times and report the median time (for benchmarks; outputs are identical).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Print the time spent per operator type (of the last run).
    #[arg(long)]
    pub profile: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let graph = Graph::load(&args.model)?;
    let exec = Executor::new(&graph)?;
    let feeds = read_inputs(&args.model, &graph.inputs, &args.inputs)?;
    let mut times = Vec::new();
    let mut outputs = Vec::new();
    let node_of: HashMap<&str, &zeropoint_model::Node> = graph
        .nodes
        .iter()
        .flat_map(|n| n.outputs.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let mut per_op: HashMap<&str, f64> = HashMap::new();
    let mut per_node: HashMap<&str, f64> = HashMap::new();
    for _ in 0..args.repeat {
        per_op.clear();
        per_node.clear();
        let start = Instant::now();
        let mut last = start;
        // The hook runs right after each node: the time since the previous call is that node's.
        outputs = exec.run_with(feeds.clone(), &mut |name, v| {
            let now = Instant::now();
            if let Some(node) = node_of.get(name) {
                let dt = (now - last).as_secs_f64();
                *per_op.entry(node.op.as_str()).or_default() += dt;
                *per_node.entry(node.name.as_str()).or_default() += dt;
            }
            last = now;
            Ok(v)
        })?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let seconds = times[times.len() / 2];
    if let Some(dir) = &args.output {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        for (name, v) in &outputs {
            let raw = v.to_raw(name).map_err(anyhow::Error::msg)?;
            let path = dir.join(format!("{}.npy", file_name(name)));
            if path == args.model {
                bail!("{}: refusing to overwrite the model", path.display());
            }
            zeropoint_model::atomic::write_bytes(&path, &npy::raw_to_bytes(&raw))?;
        }
    }
    let rows: Vec<serde_json::Value> = outputs
        .iter()
        .map(|(name, v)| summary(name, v))
        .collect::<Result<_>>()?;
    if args.json {
        let doc = json!({"model": args.model.display().to_string(), "seconds": seconds, "runs": times, "outputs": rows});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let mut t = Table::new(&["output", "dtype", "shape", "min", "max", "mean"]);
    for r in &rows {
        let f = |k: &str| r[k].as_f64().map_or("-".into(), |v| num(v, 5));
        t.row(vec![
            r["name"].as_str().unwrap_or("").to_string(),
            r["dtype"].as_str().unwrap_or("").to_string(),
            r["shape"].to_string(),
            f("min"),
            f("max"),
            f("mean"),
        ]);
    }
    print!("{}", t.render());
    if args.profile {
        let mut ops: Vec<(&&str, &f64)> = per_op.iter().collect();
        ops.sort_by(|a, b| b.1.total_cmp(a.1));
        let total: f64 = per_op.values().sum();
        let mut t = Table::new(&["operator", "seconds", "share"]);
        for (op, s) in ops {
            t.row(vec![
                op.to_string(),
                format!("{s:.4}"),
                format!("{:.1}%", 100.0 * s / total.max(1e-12)),
            ]);
        }
        print!("{}", t.render());
        let mut nodes: Vec<(&&str, &f64)> = per_node.iter().collect();
        nodes.sort_by(|a, b| b.1.total_cmp(a.1));
        let mut t = Table::new(&["slowest nodes", "seconds"]);
        for (name, s) in nodes.into_iter().take(8) {
            t.row(vec![name.to_string(), format!("{s:.4}")]);
        }
        print!("{}", t.render());
    }
    match args.repeat {
        1 => println!("ran {} nodes in {:.3} s", graph.nodes.len(), seconds),
        n => println!(
            "ran {} nodes {n} times: median {:.3} s, fastest {:.3} s",
            graph.nodes.len(),
            seconds,
            times[0]
        ),
    }
    if let Some(dir) = &args.output {
        println!("outputs written to {}", dir.display());
    }
    Ok(())
}

/// The values to feed, by input name, from the --input arguments.
fn read_inputs(
    model: &Path,
    inputs: &[ValueInfo],
    args: &[String],
) -> Result<HashMap<String, Value>> {
    if args.is_empty() && !inputs.is_empty() {
        let list: Vec<String> = inputs.iter().map(describe).collect();
        bail!(
            "{}: the model needs inputs ({}): give them with --input NAME=FILE.npy",
            model.display(),
            list.join(", ")
        );
    }
    let mut feeds = HashMap::new();
    for arg in args {
        let (name, file) = match arg.split_once('=') {
            Some((n, f)) => (Some(n.to_string()), PathBuf::from(f)),
            None => (None, PathBuf::from(arg)),
        };
        let arrays = read_arrays(&file)?;
        let is_npz = file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npz"));
        for raw in arrays {
            let key = match (&name, is_npz) {
                (Some(n), false) => n.clone(),
                (None, false) if inputs.len() == 1 => inputs[0].name.clone(),
                (None, false) => bail!(
                    "{}: the model has {} inputs: say which this is with NAME={}",
                    file.display(),
                    inputs.len(),
                    file.display()
                ),
                (_, true) => raw.name.clone(),
            };
            let v =
                Value::from_raw(&raw).map_err(|m| anyhow::anyhow!("{}: {m}", file.display()))?;
            feeds.insert(key, v);
        }
    }
    Ok(feeds)
}

fn describe(i: &ValueInfo) -> String {
    let dtype = i.dtype.map_or("?".to_string(), |d| d.to_string());
    format!("{} {dtype} {}", i.name, i.shape_text())
}

/// Name, dtype, shape and the range and mean of the values.
fn summary(name: &str, v: &Value) -> Result<serde_json::Value> {
    let values = v.to_f32s().map_err(anyhow::Error::msg)?;
    let finite = || values.iter().copied().filter(|x| x.is_finite());
    let (min, max) = finite().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let n = finite().count();
    let mean = finite().map(f64::from).sum::<f64>() / n.max(1) as f64;
    Ok(json!({
        "name": name,
        "dtype": v.dtype.name(),
        "shape": v.shape(),
        "min": if n > 0 { Some(min) } else { None },
        "max": if n > 0 { Some(max) } else { None },
        "mean": if n > 0 { Some(mean) } else { None },
    }))
}

/// An output name as a file name.
pub fn file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
