//! `zeropoint eval FLOAT.onnx QUANT.onnx --data DATA [--labels LABELS]`: both models on the same
//! data in zeropoint's executor (which runs QDQ models as the ONNX spec defines them): accuracy,
//! agreement, output SQNR and cosine, and SQNR per layer.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args as ClapArgs, ValueEnum};
use serde_json::json;
use zeropoint_graph::Graph;
use zeropoint_quant::calibrated::data_as_calibration_reads;
use zeropoint_quant::dataset::{read_labels, Preprocess};
use zeropoint_quant::evaluate::{evaluate, Evaluation, Runtime};
use zeropoint_quant::ort_runtime::OrtModel;

use crate::data_args::DataArgs;
use crate::table::{db, Table};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The float model.
    pub float: PathBuf,
    /// The quantized (QDQ) model.
    pub quantized: PathBuf,
    /// Evaluation data, as for `quantize --calib` (.npy, .npz, idx files, image folders).
    #[arg(long, required = true, value_name = "DATA")]
    pub data: Vec<String>,
    /// Labels: an idx1 file or a 1-D integer .npy, one per sample.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Use at most this many samples.
    #[arg(long)]
    pub samples: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[command(flatten)]
    pub prep: DataArgs,
    /// Where the quantized model runs.
    #[arg(long, value_enum, default_value = "zeropoint")]
    pub runtime: RuntimeArg,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// The runtimes the quantized model can run in.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeArg {
    /// zeropoint's executor, which also compares layer by layer.
    Zeropoint,
    /// ONNX Runtime, loaded from ORT_DYLIB_PATH or a local .venv's onnxruntime.
    Ort,
}

pub fn run(args: &Args) -> Result<()> {
    let prep = args.prep.preprocess()?;
    let ort = args.runtime == RuntimeArg::Ort;
    let e = compare(&Comparison {
        float: &args.float,
        quantized: &args.quantized,
        data: &args.data,
        labels: args.labels.as_deref(),
        prep: &prep,
        samples: args.samples,
        batch: args.batch,
        ort,
    })?;
    print(&e, args.json)
}

/// What to compare on which data.
pub struct Comparison<'a> {
    pub float: &'a std::path::Path,
    pub quantized: &'a std::path::Path,
    pub data: &'a [String],
    pub labels: Option<&'a std::path::Path>,
    pub prep: &'a Preprocess,
    pub samples: Option<usize>,
    pub batch: usize,
    /// Run the quantized model in ONNX Runtime instead of zeropoint's executor.
    pub ort: bool,
}

/// Loads both models and the data, and evaluates.
pub fn compare(c: &Comparison) -> Result<Evaluation> {
    let (f, q) = (Graph::load(c.float)?, Graph::load(c.quantized)?);
    let (ds, whole) = data_as_calibration_reads(&f, c.data, c.prep)?;
    if whole {
        eprintln!("the model fails on the slices of the data's first axes taken for samples (it has no batch axis): read as `zeropoint run` reads it, one whole sample");
    }
    let mut ds = ds.at_most(c.samples);
    let (batch, ort, quantized) = (c.batch, c.ort, c.quantized);
    let labels = c.labels.map(read_labels).transpose()?;
    let mut bar = crate::progress::bar();
    let mut session = if ort {
        Some(OrtModel::load(quantized)?)
    } else {
        None
    };
    let mut run;
    let runtime: Option<Runtime> = match session.as_mut() {
        Some(s) => {
            run = move |b| s.run(b);
            Some(&mut run)
        }
        None => None,
    };
    Ok(evaluate(
        f,
        q,
        &mut ds,
        labels.as_deref(),
        batch.max(1),
        runtime,
        &mut |d, n| bar("evaluating", d, n),
    )?)
}

pub fn print(e: &Evaluation, json_out: bool) -> Result<()> {
    let pct = |n: usize| 100.0 * n as f64 / e.samples.max(1) as f64;
    if json_out {
        let doc = json!({
            "samples": e.samples,
            "output": e.output,
            "top1": e.top1.map(|(f, q)| json!({"float": pct(f), "quantized": pct(q)})),
            "top5": e.top5.map(|(f, q)| json!({"float": pct(f), "quantized": pct(q)})),
            "argmax_agreement": pct(e.agree),
            "output_sqnr_db": e.output_sqnr.stats().sqnr_db,
            "cosine_mean": e.cosine_mean,
            "cosine_min": e.cosine_min,
            "layers": e.layers.iter().map(|l| json!({"value": l.value, "sqnr_db": l.error.stats().sqnr_db})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let mut t = Table::new(&["", "float", "quantized"]);
    if let (Some((f1, q1)), Some((f5, q5))) = (e.top1, e.top5) {
        t.row(vec![
            "top-1".into(),
            format!("{:.2}%", pct(f1)),
            format!("{:.2}%", pct(q1)),
        ]);
        t.row(vec![
            "top-5".into(),
            format!("{:.2}%", pct(f5)),
            format!("{:.2}%", pct(q5)),
        ]);
    }
    print!("{}", t.render());
    println!(
        "{} samples; same argmax on {} ({:.2}%); output '{}': SQNR {} dB, cosine mean {:.5}, min {:.5}",
        e.samples,
        e.agree,
        pct(e.agree),
        e.output,
        db(e.output_sqnr.stats().sqnr_db),
        e.cosine_mean,
        e.cosine_min
    );
    if !e.layers.is_empty() {
        let mut t = Table::new(&["layer output", "SQNR dB"]);
        for l in &e.layers {
            t.row(vec![l.value.clone(), db(l.error.stats().sqnr_db)]);
        }
        print!("\n{}", t.render());
    }
    Ok(())
}
