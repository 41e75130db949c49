//! `zeropoint eval FLOAT.onnx QUANT.onnx --data DATA [--labels LABELS]`: both models on the same
//! data in zeropoint's executor (which runs QDQ models as the ONNX spec defines them): accuracy,
//! agreement, output SQNR and cosine, and SQNR per layer.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use serde_json::json;
use zeropoint_model::dataset::{read_labels, Dataset, Preprocess};
use zeropoint_model::evaluate::{evaluate, Evaluation};
use zeropoint_model::Graph;

use crate::data_args::DataArgs;
use crate::quantize::progress_bar;
use crate::table::{db, Table};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The float model.
    pub float: PathBuf,
    /// The quantized (QDQ) model.
    pub quantized: PathBuf,
    /// Evaluation data, as for `quantize --calib`.
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
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let prep = args.prep.preprocess()?;
    let e = compare(
        &args.float,
        &args.quantized,
        &args.data,
        args.labels.as_deref(),
        &prep,
        args.samples,
        args.batch,
    )?;
    print(&e, args.json)
}

/// Loads both models and the data, and evaluates.
pub fn compare(
    float: &std::path::Path,
    quantized: &std::path::Path,
    data: &[String],
    labels: Option<&std::path::Path>,
    prep: &Preprocess,
    samples: Option<usize>,
    batch: usize,
) -> Result<Evaluation> {
    let (f, q) = (Graph::load(float)?, Graph::load(quantized)?);
    let mut ds = Dataset::open(data, &f.inputs, prep)?;
    if let Some(n) = samples {
        ds.truncate(n);
    }
    let labels = labels.map(read_labels).transpose()?;
    let mut bar = progress_bar();
    Ok(evaluate(
        &f,
        &q,
        &mut ds,
        labels.as_deref(),
        batch.max(1),
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
            "output_sqnr_db": e.output_sqnr.db(),
            "cosine_mean": e.cosine_mean,
            "cosine_min": e.cosine_min,
            "layers": e.layers.iter().map(|(n, s)| json!({"value": n, "sqnr_db": s.db()})).collect::<Vec<_>>(),
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
        db(e.output_sqnr.db()),
        e.cosine_mean,
        e.cosine_min
    );
    let mut t = Table::new(&["layer output", "SQNR dB"]);
    for (n, s) in &e.layers {
        t.row(vec![n.clone(), db(s.db())]);
    }
    print!("\n{}", t.render());
    Ok(())
}
