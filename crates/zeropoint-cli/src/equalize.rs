//! `zeropoint equalize MODEL -o OUT.onnx`: cross-layer equalization and high-bias absorption of
//! a float model, written as a float model (the step `quantize --cle` takes before calibrating),
//! to inspect it or to quantize it with another tool. With `--calib DATA`, high-bias absorption
//! also applies where the model has no BatchNorm statistics left, from the data's.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use zeropoint_onnx::model;
use zeropoint_quant::equalize::Options;
use zeropoint_quant::prepare::prepare_measuring;
use zeropoint_quant::settings::Settings;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The float ONNX model.
    pub model: PathBuf,
    /// Where to write the equalized float model.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Replace each ReLU6 between two layers by a ReLU so that they can be equalized.
    #[arg(long)]
    pub relu6_as_relu: bool,
    /// Do not absorb high biases into the next layer.
    #[arg(long)]
    pub no_bias_absorption: bool,
    /// Calibration data (as `quantize --calib`): high-bias absorption then takes each layer's
    /// output statistics from it where no BatchNorm gives them (one float pass).
    #[arg(long, value_name = "DATA")]
    pub calib: Vec<String>,
    /// Use at most this many calibration samples.
    #[arg(long)]
    pub samples: Option<usize>,
    #[command(flatten)]
    pub data: crate::data_args::DataArgs,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args) -> Result<()> {
    crate::output::check_output(&args.model, &args.output)?;
    let settings = Settings {
        equalize: Some(Options {
            relu6_as_relu: args.relu6_as_relu,
            absorb_high_bias: !args.no_bias_absorption,
        }),
        ..Settings::default()
    };
    let opts = zeropoint_quant::calibrated::Options {
        settings: settings.clone(),
        exclude: vec![],
        data: args.calib.clone(),
        arrays: vec![],
        preprocess: args.data.preprocess()?,
        samples: args.samples,
        report_samples: Some(0),
    };
    let measure = |g: &_, v: &_| zeropoint_quant::calibrated::measured(g, v, &opts);
    let with_data = !args.calib.is_empty();
    let prepared = prepare_measuring(&args.model, &settings, with_data.then_some(&measure))?;
    let report = prepared.equalization.unwrap_or_default();
    let out = prepared.graph.into_model(&prepared.base)?;
    model::save(&out, &args.output)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    crate::quantize::print_equalization(&report);
    println!("wrote {}", args.output.display());
    Ok(())
}
