//! `zeropoint equalize MODEL -o OUT.onnx`: cross-layer equalization and high-bias absorption of
//! a float model, written as a float model (the step `quantize --cle` takes before calibrating),
//! to inspect it or to quantize it with another tool.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use zeropoint_onnx::model;
use zeropoint_quant::equalize::Options;
use zeropoint_quant::prepare::prepare;
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
    let prepared = prepare(&args.model, &settings)?;
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
