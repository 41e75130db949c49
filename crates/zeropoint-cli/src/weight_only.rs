//! `zeropoint quantize MODEL --mode weight-only`: MatMul and Gemm weights in 2 to 8 bits, in
//! blocks along K, activations float; written as ONNX Runtime's MatMulNBits or as blocked
//! DequantizeLinear.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args as ClapArgs, ValueEnum};
use zeropoint_core::Granularity;
use zeropoint_quant::weight_only::blocks::{BlockRange, BlockScheme};
use zeropoint_quant::weight_only::{self, awq, gptq, hqq, Format, Method, Options, Outcome};

use crate::output::check_output;
use crate::quant_args::{parse_scheme, QuantArgs, WeightRange};
use crate::range_args::RangeMethod;
use crate::table::{db, Table};

/// `--method`'s variants.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodArg {
    /// Round to nearest on each block's range (--weight-range minmax or mse).
    Rtn,
    /// GPTQ (Frantar et al. 2022): each rounding error compensated on the weights not yet
    /// quantized, from the calibration inputs' Hessian. Needs --calib.
    Gptq,
    /// HQQ (Badri & Shaji 2023): each block's zero-point fitted to its weights under an l_0.7
    /// error, without data. Asymmetric only.
    Hqq,
    /// AWQ (Lin et al. 2023), then round to nearest: input channels scaled by their activations'
    /// magnitude (the exponent searched per layer on --calib), the inverse folded before the
    /// layer. Same as --method rtn --awq.
    Awq,
}

/// `--format`'s variants.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatArg {
    /// ONNX Runtime's com.microsoft.MatMulNBits (2, 4 or 8 bits; blocks of 16, 32, ... 256).
    Matmulnbits,
    /// Integer weights with a blocked DequantizeLinear (opset 21) for any ONNX runtime.
    Qdq,
}

/// The weight-only options of `quantize`.
#[derive(ClapArgs, Debug, Clone)]
pub struct WeightOnlyArgs {
    /// With --mode weight-only: how the codes are chosen.
    #[arg(long, value_enum, default_value = "rtn")]
    pub method: MethodArg,
    /// With --mode weight-only: how the quantized layers are written.
    #[arg(long, value_enum, default_value = "matmulnbits")]
    pub format: FormatArg,
    /// With --mode weight-only or dynamic: bits of embedding tables (Gather of rows, quantized per row in
    /// the weights' blocks; --exclude Gather keeps them float) [default: 8, or the weights' bits
    /// if more: 4-bit tables cost MiniLM-L3 0.015 of embedding cosine, 8-bit ones nothing].
    #[arg(long, value_name = "BITS")]
    pub embedding_bits: Option<u32>,
    /// GPTQ's dampening of the Hessian, a fraction of its mean diagonal.
    #[arg(long, default_value_t = 0.01)]
    pub gptq_damp: f64,
    /// With --format matmulnbits: the precision ONNX Runtime computes in (0 its default, 1 fp32,
    /// 2 fp16, 3 bf16, 4 int8: the inputs quantized per block at run time, faster on CPUs with
    /// integer dot products).
    #[arg(long, value_name = "0-4", value_parser = clap::value_parser!(i64).range(0..=4))]
    pub accuracy_level: Option<i64>,
    /// With --mode dynamic: Conv layers as ConvInteger too (smaller file; ONNX Runtime 1.32 runs
    /// ConvInteger 4-5x slower than float Conv on the zoo's CNNs).
    #[arg(long)]
    pub conv_integer: bool,
    /// With --mode dynamic: MatMul and Gemm inputs quantized per row (each token's features) at
    /// run time on a symmetric grid, instead of one scale per tensor (DynamicQuantizeLinear):
    /// a decoder's outlier tokens then coarsen only their own rows.
    #[arg(long)]
    pub per_token: bool,
    /// AWQ's channel scaling before any method (--method gptq --awq: both). Needs --calib.
    #[arg(long)]
    pub awq: bool,
    /// With AWQ and rounding to nearest: skip AWQ's clipping search (each block clipped to the
    /// ratio of its largest weight in 1, 0.95, ..., 0.55 with the least output error).
    #[arg(long)]
    pub no_awq_clip: bool,
    /// GPTQ quantizes the inputs with the largest Hessian diagonal first (its act-order); block
    /// parameters then come from the weights before any update.
    #[arg(long)]
    pub act_order: bool,
    /// GPTQ in its paper's order: each layer's Hessian from the inputs the model gives with the
    /// layers before it already quantized (the inputs of the float model otherwise).
    #[arg(long)]
    pub gptq_sequential: bool,
}

/// The weight scheme when --weights is not given: 4-bit, asymmetric, blocks of 32.
const DEFAULT_WEIGHTS: &str = "uint4,asym,per-block=32";

/// The weight-only options from the command line.
pub fn options(q: &QuantArgs, w: &WeightOnlyArgs, calib: Vec<String>) -> Result<Options> {
    let spec = q.weights.as_deref().unwrap_or(DEFAULT_WEIGHTS);
    let parsed = parse_scheme(spec, true)?;
    let Granularity::PerBlock { block, .. } = parsed.granularity else {
        bail!("--mode weight-only quantizes in blocks: give --weights like '{DEFAULT_WEIGHTS}', not '{spec}'");
    };
    let range = match WeightRange::estimator(q.weight_range, "--mode weight-only")? {
        RangeMethod::Minmax => BlockRange::MinMax,
        RangeMethod::Mse => BlockRange::Mse,
        other => bail!("--mode weight-only takes --weight-range minmax or mse, not {other:?}"),
    };
    if q.activations.is_some() {
        bail!("--mode weight-only keeps activations float: drop --activations");
    }
    if q.smoothquant.is_some() {
        bail!("--mode weight-only keeps activations float, so there is nothing to smooth: --awq scales channels for the weights' sake");
    }
    if w.gptq_sequential && w.method != MethodArg::Gptq {
        bail!("--gptq-sequential is GPTQ's: it needs --method gptq");
    }
    if !(w.gptq_damp.is_finite() && w.gptq_damp > 0.0) {
        bail!("--gptq-damp must be a positive number");
    }
    let method = match w.method {
        MethodArg::Rtn | MethodArg::Awq => Method::Rtn,
        MethodArg::Gptq => Method::Gptq(gptq::Options {
            damp: w.gptq_damp,
            act_order: w.act_order,
            ..Default::default()
        }),
        MethodArg::Hqq => Method::Hqq(hqq::Options::default()),
    };
    Ok(Options {
        scheme: BlockScheme {
            bits: parsed.bits,
            block,
            symmetric: parsed.symmetric,
            range,
        },
        method,
        awq: (w.awq || w.method == MethodArg::Awq).then(|| awq::Options {
            clip: !w.no_awq_clip,
            ..Default::default()
        }),
        accuracy_level: w.accuracy_level,
        format: match w.format {
            FormatArg::Matmulnbits => Format::MatMulNBits,
            FormatArg::Qdq => Format::Qdq,
        },
        exclude: q.exclude.clone(),
        embedding_bits: w.embedding_bits.unwrap_or(parsed.bits.max(8)),
        data: calib,
        preprocess: q.data.preprocess()?,
        samples: q.samples,
        batch: q.batch()?,
        sequential: w.gptq_sequential,
    })
}

/// What `quantize --mode weight-only` was given.
pub struct Request<'a> {
    pub model: &'a Path,
    pub output: Option<PathBuf>,
    pub quant: &'a QuantArgs,
    pub weight_only: &'a WeightOnlyArgs,
    pub calib: Vec<String>,
    pub json: bool,
}

/// Quantizes the model weight-only and prints the report.
pub fn run(r: Request) -> Result<()> {
    let model = r.model;
    let opts = options(r.quant, r.weight_only, r.calib)?;
    let output = r.output.unwrap_or_else(|| {
        zeropoint_quant::ptq::default_output(model, &format!("w{}", opts.scheme.bits))
    });
    check_output(model, &output)?;
    let mut outcome = weight_only::quantize(model, &opts, &mut crate::progress::bar())?;
    let written = crate::output::save_model(std::mem::take(&mut outcome.model), &output)?;
    report(model, (&output, written), &outcome, r.json)
}

/// What both transformer modes say about sizes and time.
pub struct Sizes<'a> {
    pub model: &'a Path,
    /// The model's size on disk, its external data files included.
    pub model_bytes: u64,
    pub output: &'a Path,
    /// The written model's size on disk, its side file included.
    pub output_bytes: u64,
    pub layers: usize,
    pub float_bytes: usize,
    pub quantized_bytes: usize,
    pub seconds: f64,
}

impl Sizes<'_> {
    /// The JSON report's common fields, with `extra` (the mode's own) added.
    pub fn json(&self, extra: serde_json::Value) -> Result<String> {
        let mut doc = serde_json::json!({
            "model": self.model.display().to_string(),
            "output": self.output.display().to_string(),
            "bytes_before": self.model_bytes,
            "bytes_after": self.output_bytes,
            "weight_bytes_float": self.float_bytes,
            "weight_bytes_quantized": self.quantized_bytes,
            "seconds": self.seconds,
        });
        if let (Some(d), serde_json::Value::Object(e)) = (doc.as_object_mut(), extra) {
            d.extend(e);
        }
        Ok(serde_json::to_string_pretty(&doc)?)
    }

    /// One line: weights and file before and after, and the time taken.
    pub fn print(&self) {
        let (before, after) = (self.model_bytes, self.output_bytes);
        println!(
            "{} layers: weights {:.2} MB -> {:.2} MB; {} -> {}: {:.2} MB -> {:.2} MB ({:.1}x smaller) in {:.1} s",
            self.layers,
            self.float_bytes as f64 / 1e6,
            self.quantized_bytes as f64 / 1e6,
            self.model.display(),
            self.output.display(),
            before as f64 / 1e6,
            after as f64 / 1e6,
            before as f64 / after.max(1) as f64,
            self.seconds
        );
    }
}

fn report(
    model: &Path,
    (output, output_bytes): (&Path, u64),
    o: &Outcome,
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
        let extra = serde_json::json!({
            "calibration_samples": o.calibration_samples,
            "layers": o.layers,
            "awq": o.awq,
            "awq_clipped_blocks": o.clipped_blocks,
        });
        println!("{}", sizes.json(extra)?);
        return Ok(());
    }
    let mut t = Table::new(&["layer", "K x N", "weight SQNR", "output SQNR"]);
    for l in &o.layers {
        t.row(vec![
            l.name.clone(),
            format!("{} x {}", l.k, l.n),
            db(l.weight_sqnr_db),
            l.output_sqnr_db.map_or("-".into(), db),
        ]);
    }
    print!("{}", t.render());
    sizes.print();
    let scaled: Vec<_> = o.awq.iter().filter(|a| a.alpha > 0.0).collect();
    if !o.awq.is_empty() {
        let before: f64 = o.awq.iter().map(|a| a.error_before).sum();
        let after: f64 = o.awq.iter().map(|a| a.error_after).sum();
        println!(
            "AWQ: {} of {} input groups scaled; their layers' output error on calibration data {:.1}% of round to nearest's",
            scaled.len(),
            o.awq.len(),
            100.0 * after / before.max(f64::MIN_POSITIVE)
        );
        for a in &scaled {
            println!(
                "  {} (alpha {:.2}) -> {}",
                a.layers.join(", "),
                a.alpha,
                a.folded_into
            );
        }
    }
    let [clipped, blocks] = o.clipped_blocks;
    if blocks > 0 {
        println!("AWQ clipping: {clipped} of {blocks} weight blocks clipped");
    }
    if o.calibration_samples > 0 {
        println!(
            "output SQNR: each layer's on its inputs from {} calibration samples",
            o.calibration_samples
        );
    }
    Ok(())
}
