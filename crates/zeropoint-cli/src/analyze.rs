//! `zeropoint analyze MODEL --calib DATA`: the white paper's debugging flow (Nagel et al. 2021,
//! §4.8) as a table, JSON, and a self-contained HTML report with SVG plots.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use zeropoint_onnx::atomic;
use zeropoint_quant::analyze::{analyze, Analysis, Options};

use crate::analysis_html;
use crate::quant_args::QuantArgs;
use crate::scores::{label, score, verdict_16_bits, verdict_split};
use crate::table::{db, Table};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The float ONNX model. Without it: the embedded MNIST CNN and its 500 calibration images.
    pub model: Option<PathBuf>,
    /// Calibration data, as for `quantize`.
    #[arg(long, value_name = "DATA")]
    pub calib: Vec<String>,
    /// The quantization to analyze (the same options as `quantize`).
    #[command(flatten)]
    pub quant: QuantArgs,
    /// Calibration samples every score is measured on.
    #[arg(long, default_value_t = 32)]
    pub analysis_samples: usize,
    /// The first of those samples each quantizer's sensitivity is measured on (two simulations
    /// per quantizer and sample: most of the analysis's time).
    #[arg(long, default_value_t = 8)]
    pub sensitivity_samples: usize,
    /// How many of the most harmful quantizers get a histogram in the report.
    #[arg(long, default_value_t = 6)]
    pub plots: usize,
    /// Do not measure the suggested fixes (some calibrate again).
    #[arg(long)]
    pub no_suggestions: bool,
    /// Where to write the HTML report (default: beside the model, <name>.analysis.html).
    #[arg(long, value_name = "FILE.html")]
    pub html: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (model, name, calib, quant) = match &args.model {
        Some(m) => (
            m.clone(),
            m.display().to_string(),
            args.calib.clone(),
            args.quant.clone(),
        ),
        None => {
            let files = crate::embedded::write(dir.path())?;
            let mut quant = args.quant.clone();
            crate::embedded::use_preprocessing(&mut quant.data);
            let calib = vec![files.calib_images.display().to_string()];
            (
                files.model,
                crate::embedded::MODEL_NAME.to_string(),
                calib,
                quant,
            )
        }
    };
    if calib.is_empty() {
        bail!("{name}: give calibration data with --calib FILE (.npy, .npz or idx)");
    }
    let html = args.html.clone().unwrap_or_else(|| {
        let base = args.model.as_deref().unwrap_or(Path::new("mnist_cnn.onnx"));
        base.with_extension("analysis.html")
    });
    crate::output::check_output(&model, &html)?;
    let ptq = quant.options(calib)?;
    if ptq.settings.float_activations {
        bail!(
            "analyze weighs weights against activations; --activations float leaves none to weigh"
        );
    }
    let opts = Options {
        ptq,
        samples: args.analysis_samples.max(1),
        sensitivity_samples: args.sensitivity_samples.max(1),
        plots: args.plots,
        suggestions: !args.no_suggestions,
    };
    let a = analyze(&model, &opts, &mut crate::progress::bar())?;
    let page = analysis_html::page(&name, &a);
    atomic::write_bytes(&html, page.as_bytes())?;
    if args.json {
        let doc = serde_json::to_value(&a)?;
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    print(&a);
    println!("\nwrote {}", html.display());
    Ok(())
}

fn print(a: &Analysis) {
    println!(
        "scores: output SQNR against float on {} calibration samples (calibrated on {})",
        a.samples, a.calibration_samples
    );
    println!(
        "simulation check, 16-bit weights and activations: {} ({})",
        score(&a.check_16_bits),
        verdict_16_bits(&a.check_16_bits)
    );
    println!("quantized:        {}", score(&a.quantized));
    println!("weights only:     {}", score(&a.weights_only));
    println!(
        "activations only: {} ({})",
        score(&a.activations_only),
        verdict_split(a)
    );
    let mut t = Table::new(&["quantizer", "node", "op", "alone dB", "all but dB"]);
    for s in a.sensitivities.iter().take(15) {
        t.row(vec![
            label(&s.quantizer),
            s.node.clone(),
            s.op.clone(),
            db(s.alone.sqnr_db),
            db(s.all_but.sqnr_db),
        ]);
    }
    println!(
        "\nquantizers, most harmful alone first ({} of {}; on the first {} samples):\n{}",
        a.sensitivities.len().min(15),
        a.sensitivities.len(),
        a.sensitivity_samples,
        t.render()
    );
    if a.suggestions.is_empty() {
        return;
    }
    let mut t = Table::new(&["try", "SQNR dB", "gain dB", "why"]);
    for s in &a.suggestions {
        t.row(vec![
            s.options.clone(),
            db(s.score.sqnr_db),
            format!("{:+.1}{}", s.gain_db, analysis_html::fitted_mark(s)),
            s.why.clone(),
        ]);
    }
    println!("\nfixes, each measured alone:\n{}", t.render());
    for note in analysis_html::fitted_notes(a) {
        println!("{note}");
    }
}
