//! `zeropoint quantize MODEL --mode dynamic`: int8 weights, activations quantized at run time,
//! in the form ONNX Runtime runs with its integer kernels. Needs no calibration data, except
//! for `--smoothquant`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use zeropoint_core::Granularity;
use zeropoint_quant::dynamic::{self, Options, Outcome, Smoothing};

use crate::output::check_output;
use crate::quant_args::{parse_scheme, QuantArgs, WeightRange};
use crate::table::{db, Table};
use crate::weight_only::Sizes;

/// What `quantize --mode dynamic` was given.
pub struct Request<'a> {
    pub model: &'a Path,
    pub output: Option<PathBuf>,
    pub quant: &'a QuantArgs,
    /// `--embedding-bits`: tables at these bits [default 8]; `--exclude Gather` keeps them float.
    pub embedding_bits: Option<u32>,
    /// `--conv-integer`: Conv layers as ConvInteger too.
    pub conv: bool,
    /// `--per-token`: MatMul and Gemm inputs quantized per row.
    pub per_token: bool,
    /// `--calib`: only SmoothQuant reads it.
    pub calib: Vec<String>,
    pub json: bool,
}

/// The dynamic options from the command line.
fn options(r: &Request) -> Result<Options> {
    let q = r.quant;
    let spec = q.weights.as_deref().unwrap_or("int8,sym,per-channel");
    let weights = q.reduced(parse_scheme(spec, true)?)?;
    if matches!(weights.granularity, Granularity::PerBlock { .. }) {
        bail!("--mode dynamic quantizes weights per channel or per tensor, not in blocks ('{spec}'): blocks are --mode weight-only");
    }
    if q.activations.is_some() {
        bail!("--mode dynamic quantizes activations at run time (per tensor, or per row with --per-token): drop --activations");
    }
    if q.limit_pairs {
        bail!("--limit-pairs is implemented for static quantization; with --mode dynamic use --reduce-range");
    }
    let smoothing = match q.smooth_quant()? {
        None if !r.calib.is_empty() => bail!("--mode dynamic reads --calib only for --smoothquant: drop --calib, or add --smoothquant"),
        None => None,
        Some(_) if r.calib.is_empty() => bail!("--smoothquant needs --calib: SmoothQuant's channel ranges and α come from calibration data"),
        Some(options) => Some(Smoothing {
            options,
            data: r.calib.clone(),
            preprocess: q.data.preprocess()?,
            samples: q.samples,
            batch: q.batch()?,
        }),
    };
    Ok(Options {
        weights,
        weight_method: WeightRange::estimator(q.weight_range, "--mode dynamic")?.method(),
        exclude: q.exclude.clone(),
        conv: r.conv,
        embedding_bits: Some(r.embedding_bits.unwrap_or(8)),
        smoothing,
        per_token: r.per_token,
    })
}

/// Quantizes the model dynamically and prints the report.
pub fn run(r: Request) -> Result<()> {
    let opts = options(&r)?;
    let output = (r.output.clone())
        .unwrap_or_else(|| zeropoint_quant::ptq::default_output(r.model, "dynamic"));
    check_output(r.model, &output)?;
    let mut outcome = dynamic::quantize(r.model, &opts)?;
    let written = crate::output::save_model(std::mem::take(&mut outcome.model), &output)?;
    report(
        r.model,
        (&output, written),
        &outcome,
        opts.per_token,
        r.json,
    )?;
    // After the work, so that a failure stays one line.
    crate::vnni::note_overflow(&opts.weights, 8, false, "--reduce-range");
    Ok(())
}

fn report(
    model: &Path,
    (output, output_bytes): (&Path, u64),
    o: &Outcome,
    per_token: bool,
    json: bool,
) -> Result<()> {
    let sizes = Sizes {
        model,
        model_bytes: o.stored_bytes,
        output,
        output_bytes,
        layers: o.layers.len(),
        float_bytes: o.float_bytes,
        quantized_bytes: o.quantized_bytes,
        seconds: o.seconds,
    };
    if json {
        let activations = if per_token {
            "per row, symmetric (uint8 codes around 128)"
        } else {
            "per tensor, asymmetric (uint8)"
        };
        let extra = serde_json::json!({
            "layers": o.layers,
            "smoothing": o.smoothing,
            "activations": activations,
        });
        println!("{}", sizes.json(extra)?);
        return Ok(());
    }
    let mut t = Table::new(&["layer", "op", "weight SQNR"]);
    for l in &o.layers {
        t.row(vec![l.name.clone(), l.op.clone(), db(l.weight_sqnr_db)]);
    }
    print!("{}", t.render());
    if !o.smoothing.is_empty() {
        crate::smoothing::print(&o.smoothing);
    }
    sizes.print();
    if per_token {
        println!("activations are quantized at run time: MatMul and Gemm inputs per row, symmetric (uint8 codes around 128), Conv inputs per tensor (DynamicQuantizeLinear)");
    } else {
        println!(
            "activations are quantized at run time (DynamicQuantizeLinear: uint8, per tensor)"
        );
    }
    Ok(())
}
