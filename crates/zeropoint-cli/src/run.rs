//! `zeropoint run MODEL --input NAME=FILE.npy ...`: runs the float model with zeropoint's
//! executor and writes each output as .npy; prints a short summary of every output.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde::Serialize;
use serde_json::json;
use zeropoint_engine::{Executor, Value};
use zeropoint_graph::{Graph, Node, ValueInfo};
use zeropoint_onnx::npy;
use zeropoint_onnx::tensor_file::read_arrays;

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
    /// '-' and '_' in the name become '_'), or, for a path ending in .npz, into that archive
    /// under its own name.
    #[arg(long, short = 'o', value_name = "DIR|FILE.npz")]
    pub output: Option<PathBuf>,
    /// Run this many times and report the median time (for benchmarks; outputs are identical).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Print the time spent per operator type and in the slowest nodes (of the last run); with
    /// --json, every node's time under "profile".
    #[arg(long)]
    pub profile: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Wall time per operator type and per node, of one run.
#[derive(Default, Serialize)]
struct Profile {
    per_op: BTreeMap<String, f64>,
    per_node: BTreeMap<String, f64>,
}

pub fn run(args: &Args) -> Result<()> {
    let exec = Executor::owning(Graph::load(&args.model)?)?;
    let graph = exec.graph();
    let feeds = read_inputs(&args.model, &graph.inputs, &args.inputs)?;
    let Runs {
        outputs,
        times,
        profile,
    } = in_pool(|| timed_runs(&exec, &feeds, args.repeat))?;
    let seconds = times[times.len() / 2];
    if let Some(dir) = &args.output {
        write_outputs(dir, &args.model, &outputs)?;
    }
    let rows: Vec<OutputSummary> = outputs
        .iter()
        .map(|(name, v)| summary(name, v))
        .collect::<Result<_>>()?;
    if args.json {
        let mut doc = json!({"model": args.model.display().to_string(), "seconds": seconds, "runs": times, "outputs": rows});
        if args.profile {
            doc["profile"] = serde_json::to_value(&profile)?;
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    print_outputs(&rows);
    if args.profile {
        print_profile(&profile);
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

/// Runs `f` on a thread of rayon's pool. From any other thread, each parallel operator is
/// handed to the pool and waited for: two thread wake-ups per operator, a fifth of a detector's
/// run time at 1 thread (ddddocr-det: 83 ms a run from the main thread, 64 ms from the pool).
fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// What repeated runs gave: the outputs, the run times (sorted), and the last run's profile.
struct Runs {
    outputs: Vec<(String, Value)>,
    times: Vec<f64>,
    profile: Profile,
}

/// Runs the model `repeat` times.
fn timed_runs(exec: &Executor, feeds: &HashMap<String, Value>, repeat: u32) -> Result<Runs> {
    let node_of: HashMap<&str, &Node> = exec
        .graph()
        .nodes
        .iter()
        .flat_map(|n| n.outputs.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let mut times = Vec::new();
    let mut outputs = Vec::new();
    let mut profile = Profile::default();
    for _ in 0..repeat {
        profile = Profile::default();
        let start = Instant::now();
        let mut last = start;
        // The hook runs right after each node: the time since the previous call is that node's.
        outputs = exec.run_with(feeds.clone(), &mut |name, v| {
            let now = Instant::now();
            if let Some(node) = node_of.get(name) {
                let dt = (now - last).as_secs_f64();
                *profile.per_op.entry(node.op.to_string()).or_default() += dt;
                *profile.per_node.entry(node.name.clone()).or_default() += dt;
            }
            last = now;
            Ok(v)
        })?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(Runs {
        outputs,
        times,
        profile,
    })
}

/// Each output as DIR/<name>.npy, or as a member of DIR when it is named *.npz.
fn write_outputs(dir: &Path, model: &Path, outputs: &[(String, Value)]) -> Result<()> {
    if dir
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"))
    {
        if dir == model {
            bail!("{}: refusing to overwrite the model", dir.display());
        }
        let arrays: Vec<_> = (outputs.iter())
            .map(|(name, v)| v.to_raw(name))
            .collect::<std::result::Result<_, _>>()?;
        return Ok(zeropoint_onnx::npz::write(dir, &arrays)?);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    for (name, v) in outputs {
        let raw = v.to_raw(name)?;
        let path = dir.join(format!("{}.npy", file_name(name)));
        if path == model {
            bail!("{}: refusing to overwrite the model", path.display());
        }
        zeropoint_onnx::atomic::write_bytes(&path, &npy::raw_to_bytes(&raw))?;
    }
    Ok(())
}

fn print_outputs(rows: &[OutputSummary]) {
    let mut t = Table::new(&["output", "dtype", "shape", "min", "max", "mean"]);
    for r in rows {
        let f = |v: Option<f64>| v.map_or("-".into(), |v| num(v, 5));
        t.row(vec![
            r.name.clone(),
            r.dtype.to_string(),
            json!(r.shape).to_string(),
            f(r.min.map(f64::from)),
            f(r.max.map(f64::from)),
            f(r.mean),
        ]);
    }
    print!("{}", t.render());
}

fn print_profile(p: &Profile) {
    let mut ops: Vec<(&String, &f64)> = p.per_op.iter().collect();
    ops.sort_by(|a, b| b.1.total_cmp(a.1));
    let total: f64 = p.per_op.values().sum();
    let mut t = Table::new(&["operator", "seconds", "share"]);
    for (op, s) in ops {
        t.row(vec![
            op.to_string(),
            format!("{s:.4}"),
            format!("{:.1}%", 100.0 * s / total.max(1e-12)),
        ]);
    }
    print!("{}", t.render());
    let mut nodes: Vec<(&String, &f64)> = p.per_node.iter().collect();
    nodes.sort_by(|a, b| b.1.total_cmp(a.1));
    let mut t = Table::new(&["slowest nodes", "seconds"]);
    for (name, s) in nodes.into_iter().take(8) {
        t.row(vec![name.to_string(), format!("{s:.4}")]);
    }
    print!("{}", t.render());
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
            let v = Value::from_raw(&raw).with_context(|| file.display().to_string())?;
            feeds.insert(key, v);
        }
    }
    Ok(feeds)
}

fn describe(i: &ValueInfo) -> String {
    let dtype = i.dtype.map_or("?".to_string(), |d| d.to_string());
    format!("{} {dtype} {}", i.name, i.shape_text())
}

/// An output: its name, element type and shape, and the range and mean of its finite values
/// (None when it has none).
#[derive(Serialize)]
struct OutputSummary {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    min: Option<f32>,
    max: Option<f32>,
    mean: Option<f64>,
}

fn summary(name: &str, v: &Value) -> Result<OutputSummary> {
    let values = v.to_f32s()?;
    let finite = || values.iter().copied().filter(|x| x.is_finite());
    let (min, max) = finite().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let n = finite().count();
    let mean = finite().map(f64::from).sum::<f64>() / n.max(1) as f64;
    Ok(OutputSummary {
        name: name.to_string(),
        dtype: v.dtype.name(),
        shape: v.shape().to_vec(),
        min: (n > 0).then_some(min),
        max: (n > 0).then_some(max),
        mean: (n > 0).then_some(mean),
    })
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
