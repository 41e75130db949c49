//! `zeropoint inspect FILE`: per tensor, what the values look like and what each quantization
//! scheme would cost, with a recommendation (zeropoint_quant::analysis::inspect has the rules),
//! as tables, JSON or SVG histograms.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use serde_json::{json, Value};
use zeropoint_onnx::atomic;
use zeropoint_onnx::tensor_file::{self, TensorSet};
use zeropoint_quant::analysis::inspect::{analyse, Analysis, CANDIDATES, PREFER_SIMPLER_DB};
use zeropoint_quant::analysis::ranges::{self, RangeResult};

use crate::plot;
use crate::range_args::{self, RangeArgs};
use crate::table::{db, num, Table};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// A .npy, .npz, .safetensors or .onnx file; without it, the embedded default model (the
    /// MNIST CNN of assets/models/mnist_cnn.onnx).
    pub file: Option<PathBuf>,
    /// Axis of the channels for per-channel schemes (0 = output channels of Conv and of Gemm
    /// weights stored transposed; use 1 for MatMul weights [K, N]).
    #[arg(long, default_value_t = 0)]
    pub axis: usize,
    /// Only tensors whose name contains this text.
    #[arg(long)]
    pub name: Option<String>,
    /// Also analyse integer and boolean tensors (only floating-point ones by default).
    #[arg(long)]
    pub all: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG histogram per tensor into this folder, with the quantization grid and the
    /// clipping range drawn over it (and each --range estimator's range).
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub ranges: RangeArgs,
}

pub fn run(args: &Args) -> Result<()> {
    let (set, file) = match &args.file {
        Some(path) => (tensor_file::read(path)?, path.clone()),
        None => {
            let path = PathBuf::from(crate::embedded::MODEL_NAME);
            (
                tensor_file::read_onnx_bytes(crate::embedded::MODEL, &path)?,
                path,
            )
        }
    };
    let analyses = analyse_set(&file, &set, args)?;
    if let Some(dir) = &args.plot {
        write_plots(dir, &analyses)?;
    }
    if args.json {
        let out = json!({
            "file": file.display().to_string(),
            "tensors": analyses.iter().map(to_json).collect::<Vec<_>>(),
            "skipped": set.skipped.iter().map(|s| json!({"name": s.name, "reason": s.reason})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", to_text(&file, &set, &analyses, args));
    }
    Ok(())
}

fn analyse_set(file: &Path, set: &TensorSet, args: &Args) -> Result<Vec<Analysis>> {
    let configs = args.ranges.configs()?;
    let range_scheme = args.ranges.scheme()?;
    set.tensors
        .iter()
        .filter(|t| args.all || t.dtype.is_float())
        .filter(|t| {
            args.name
                .as_ref()
                .is_none_or(|n| t.name.contains(n.as_str()))
        })
        .map(|t| {
            let mut a = analyse(t.clone(), args.axis);
            if a.note.is_none() {
                a.ranges = ranges::compare(file, &a.tensor, &configs, &range_scheme)?;
            }
            Ok(a)
        })
        .collect()
}

fn shape_text(shape: &[usize]) -> String {
    if shape.is_empty() {
        return "scalar".into();
    }
    format!(
        "[{}]",
        shape
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("x")
    )
}

fn to_text(path: &Path, set: &TensorSet, analyses: &[Analysis], args: &Args) -> String {
    let mut out = format!("{}: {} tensors analysed", path.display(), analyses.len());
    let others = set.tensors.len() - analyses.len();
    if others > 0 {
        out.push_str(&format!(
            ", {others} left out ({})",
            if args.all {
                "--name"
            } else {
                "not floating-point; --all includes them"
            }
        ));
    }
    if !set.skipped.is_empty() {
        out.push_str(&format!(", {} of unreadable types", set.skipped.len()));
    }
    out.push_str("\n\n");
    out.push_str(&statistics_table(analyses));
    out.push_str(&sqnr_table(analyses, args.axis));
    out.push_str(&format!(
        "\nrecommended: the simplest scheme within {PREFER_SIMPLER_DB} dB of the best, simplest first: per-tensor sym, per-channel sym, per-tensor asym, per-channel asym\n"
    ));
    if !args.ranges.range.is_empty() {
        let rows: Vec<(&str, &[RangeResult])> = analyses
            .iter()
            .filter(|a| !a.ranges.is_empty())
            .map(|a| (a.tensor.name.as_str(), a.ranges.as_slice()))
            .collect();
        if let Ok(scheme) = args.ranges.scheme() {
            out.push_str(&range_args::table(&rows, &scheme));
        }
    }
    if let Some(dir) = &args.plot {
        out.push_str(&format!("histograms written to {}\n", dir.display()));
    }
    out
}

/// What the values look like, a row per tensor.
fn statistics_table(analyses: &[Analysis]) -> String {
    let mut t = Table::new(&[
        "tensor",
        "shape",
        "dtype",
        "min",
        "max",
        "mean",
        "std",
        "zeros",
        "kurtosis",
        "max|x|/σ",
    ]);
    for a in analyses {
        let s = &a.summary;
        t.row(vec![
            a.tensor.name.clone(),
            shape_text(&a.tensor.shape),
            a.tensor.dtype.to_string(),
            num(f64::from(s.min), 4),
            num(f64::from(s.max), 4),
            num(s.mean, 3),
            num(s.std, 3),
            format!("{:.1}%", 100.0 * s.zero_fraction()),
            num(s.kurtosis, 3),
            num(s.max_abs_over_std(), 3),
        ]);
    }
    t.render()
}

/// The SQNR of every candidate scheme and the recommendation, a row per tensor.
fn sqnr_table(analyses: &[Analysis], axis: usize) -> String {
    let mut out = format!(
        "\nSQNR in dB of min-max quantization (T = per-tensor, C = per-channel along axis {axis}; sym / asym)\n"
    );
    let mut header = vec!["tensor".to_string()];
    for bits in [8, 4] {
        for kind in ["T-sym", "C-sym", "T-asym", "C-asym"] {
            header.push(format!("int{bits} {kind}"));
        }
    }
    header.push("recommended".into());
    let mut t = Table::new(&header);
    for a in analyses {
        let mut row = vec![a.tensor.name.clone()];
        for bits in [8, 4] {
            for label in CANDIDATES {
                let v = a
                    .candidates
                    .iter()
                    .find(|c| c.scheme.bits == bits && c.label == label);
                row.push(v.map_or("-".into(), |c| db(c.sqnr_db)));
            }
        }
        row.push(match &a.note {
            Some(n) => n.clone(),
            None => [8, 4]
                .iter()
                .filter_map(|&b| a.recommended(b).map(|c| format!("int{b} {}", c.label)))
                .collect::<Vec<_>>()
                .join("; "),
        });
        t.row(row);
    }
    out.push_str(&t.render());
    out
}

fn to_json(a: &Analysis) -> Value {
    let s = &a.summary;
    let finite = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
    json!({
        "name": a.tensor.name,
        "shape": a.tensor.shape,
        "dtype": a.tensor.dtype.name(),
        "count": s.len, "nan": s.nan, "inf": s.inf,
        "min": s.min, "max": s.max, "mean": s.mean, "std": s.std,
        "zero_fraction": s.zero_fraction(), "kurtosis": s.kurtosis, "max_abs_over_std": s.max_abs_over_std(),
        "sqnr_db": a.candidates.iter().map(|c| json!({
            "bits": c.scheme.bits, "scheme": c.label, "sqnr_db": finite(c.sqnr_db)})).collect::<Vec<_>>(),
        "recommended": ([8, 4].iter().filter_map(|&b| a.recommended(b).map(|c| json!({
            "bits": b, "scheme": c.label, "sqnr_db": finite(c.sqnr_db)}))).collect::<Vec<_>>()),
        "ranges": range_args::to_json(&a.ranges),
        "note": a.note,
    })
}

fn write_plots(dir: &Path, analyses: &[Analysis]) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the plot folder", dir.display()))?;
    let mut used = HashSet::new();
    for a in analyses.iter().filter(|a| a.note.is_none()) {
        let base = plot::file_stem(&a.tensor.name);
        let mut stem = base.clone();
        let mut k = 2;
        while !used.insert(stem.clone()) {
            stem = format!("{base}-{k}");
            k += 1;
        }
        let svg = plot::histogram_svg(a)?;
        atomic::write_bytes(&dir.join(format!("{stem}.svg")), svg.as_bytes())?;
    }
    Ok(())
}
