//! `zeropoint quantize MODEL --calib DATA -o OUT.onnx`: post-training quantization to a QDQ
//! model, with a report of what was placed, the ranges chosen and the error per layer.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args as ClapArgs, ValueEnum};
use zeropoint_onnx::atomic;
use zeropoint_quant::encodings::encodings;

use zeropoint_quant::ptq::{self, Outcome};
use zeropoint_quant::summary::Summary;

use crate::quant_args::QuantArgs;
use crate::table::{db, num, Table};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The float ONNX model. Without it: the built-in demonstration, the embedded MNIST CNN
    /// calibrated on 500 embedded MNIST training images, then evaluated float vs quantized on
    /// 2000 embedded test images.
    pub model: Option<PathBuf>,
    /// Calibration data: NAME=FILE or FILE (.npy, .npz with arrays named after the inputs,
    /// MNIST-style idx files, a folder of PNG/JPEG images, or a folder of .npz/.npy files, one
    /// batch each, whose sizes may differ); repeat for several inputs.
    #[arg(long, value_name = "DATA")]
    pub calib: Vec<String>,
    /// Where to write the quantized model (default: beside the model, <name>.int8.onnx, or
    /// <name>.w4a8.onnx etc. for the other presets, <name>.qdq.onnx with custom schemes).
    #[arg(long, short = 'o', value_name = "OUT.onnx")]
    pub output: Option<PathBuf>,
    /// static: weights and activations quantized, activation ranges calibrated (QDQ).
    /// dynamic: int8 weights, activations quantized at run time (DynamicQuantizeLinear →
    /// MatMulInteger / ConvInteger, as ONNX Runtime fuses them); needs no --calib, except with
    /// --smoothquant.
    /// weight-only: MatMul/Gemm weights in 2-8 bits in blocks along K, activations float
    /// (--method, --format; --weights defaults to uint4,asym,per-block=32).
    #[arg(long, value_enum, default_value = "static")]
    pub mode: Mode,
    #[command(flatten)]
    pub quant: QuantArgs,
    #[command(flatten)]
    pub weight_only: crate::weight_only::WeightOnlyArgs,
    /// Also write the quantization parameters as JSON (per tensor: bits, symmetric, scale,
    /// zero_point, offset, min, max).
    #[arg(long, value_name = "FILE.json")]
    pub encodings: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `--mode`'s variants.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Static,
    Dynamic,
    WeightOnly,
}

pub fn run(args: &Args) -> Result<()> {
    let w = &args.weight_only;
    if args.mode != Mode::Dynamic && (w.per_token || w.conv_integer) {
        let flag = if w.per_token {
            "--per-token"
        } else {
            "--conv-integer"
        };
        bail!("{flag} is for --mode dynamic, whose activations are quantized at run time");
    }
    let Some(model) = &args.model else {
        if args.mode != Mode::Static {
            bail!("--mode dynamic and weight-only need a MODEL: the built-in demonstration is a CNN quantized statically");
        }
        return demo(args);
    };
    if args.mode != Mode::Static {
        crate::release_freed_memory_at_once();
    }
    if args.mode == Mode::Dynamic {
        return crate::dynamic::run(crate::dynamic::Request {
            model,
            output: args.output.clone(),
            quant: &args.quant,
            embedding_bits: w.embedding_bits,
            conv: w.conv_integer,
            per_token: w.per_token,
            calib: args.calib.clone(),
            json: args.json,
        });
    }
    if args.mode == Mode::WeightOnly {
        return crate::weight_only::run(crate::weight_only::Request {
            model,
            output: args.output.clone(),
            quant: &args.quant,
            weight_only: &args.weight_only,
            calib: args.calib.clone(),
            json: args.json,
        });
    }
    if args.calib.is_empty() {
        bail!(
            "{}: give calibration data with --calib FILE (.npy, .npz or idx)",
            model.display()
        );
    }
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| ptq::default_output(model, args.quant.tag()));
    crate::output::check_output(model, &output)?;
    let opts = args.quant.options(args.calib.clone())?;
    let start = Instant::now();
    let mut outcome = ptq::quantize(model, &opts, &mut crate::progress::bar())?;
    let written = write(&mut outcome, &output, args.encodings.as_deref())?;
    let seconds = start.elapsed().as_secs_f64();
    report(
        (model, outcome.stored_bytes),
        (&output, written),
        &outcome,
        seconds,
        args.json,
    )?;
    // After the work, so that a failure stays one line.
    let s = &opts.settings;
    if !s.float_activations {
        crate::vnni::note_overflow(
            &s.weights,
            s.activations.bits,
            s.limit_pairs,
            "--limit-pairs or --reduce-range",
        );
    }
    Ok(())
}

/// The quantized model (taken out of `outcome`) and, if asked, the encodings; returns the
/// model's size on disk.
fn write(
    outcome: &mut Outcome,
    output: &std::path::Path,
    encodings_path: Option<&std::path::Path>,
) -> Result<u64> {
    let bytes = crate::output::save_model(std::mem::take(&mut outcome.model), output)?;
    if let Some(path) = encodings_path {
        let doc = encodings(outcome, &outcome.settings);
        atomic::write_bytes(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    Ok(bytes)
}

/// The main job on the embedded model and data: quantize, write, evaluate.
fn demo(args: &Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let files = crate::embedded::write(dir.path())?;
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| ptq::default_output(Path::new("mnist_cnn.onnx"), args.quant.tag()));
    crate::output::check_output(&files.model, &output)?;
    let mut quant = args.quant.clone();
    crate::embedded::use_preprocessing(&mut quant.data);
    let calib = if args.calib.is_empty() {
        vec![files.calib_images.display().to_string()]
    } else {
        args.calib.clone()
    };
    let opts = quant.options(calib)?;
    let start = Instant::now();
    let mut outcome = ptq::quantize(&files.model, &opts, &mut crate::progress::bar())?;
    let written = write(&mut outcome, &output, args.encodings.as_deref())?;
    let seconds = start.elapsed().as_secs_f64();
    if !args.json {
        let embedded = PathBuf::from(crate::embedded::MODEL_NAME);
        report(
            (&embedded, crate::embedded::MODEL.len() as u64),
            (&output, written),
            &outcome,
            seconds,
            false,
        )?;
        println!("\nevaluation on 2000 MNIST test images (not used for calibration):");
    }
    let data = [files.test_images.display().to_string()];
    let labels = Some(files.test_labels.as_path());
    let e = crate::eval::compare(&crate::eval::Comparison {
        float: &files.model,
        quantized: &output,
        data: &data,
        labels,
        prep: &opts.preprocess,
        samples: None,
        batch: 256,
        ort: false,
    })?;
    crate::eval::print(&e, args.json)
}

/// Prints the summary of a run on `model` (its name for the report, and its size in bytes)
/// written to `output` (`after` bytes on disk).
fn report(
    (model, before): (&std::path::Path, u64),
    (output, after): (&std::path::Path, u64),
    o: &Outcome,
    seconds: f64,
    json_out: bool,
) -> Result<()> {
    let model_name = model.display().to_string();
    let output_name = output.display().to_string();
    let summary = Summary::new(o, (&model_name, before), (&output_name, after), seconds);
    if json_out {
        // Through a JSON value: keys sorted, floats printed as the f64 they widen to.
        let doc = serde_json::to_value(&summary)?;
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    print_summary(&summary);
    if o.settings.limit_pairs {
        let lowered: usize = summary.limited_pairs.iter().map(|l| l.lowered).sum();
        println!(
            "pair limit: weight scales widened where needed so that no same-sign pair of codes that int8 kernels without VNNI add in 16 bits exceeds 128; {lowered} codes that rounding carried past it lowered"
        );
    }
    Ok(())
}

/// What cross-layer equalization did, in a few lines.
pub fn print_equalization(e: &zeropoint_quant::equalize::Report) {
    use zeropoint_quant::equalize::Statistics;
    let absorbed = |from: Statistics| -> usize {
        (e.pairs.iter())
            .filter(|p| p.statistics == Some(from))
            .map(|p| p.absorbed_channels)
            .sum()
    };
    let (bn, data) = (
        absorbed(Statistics::BatchNorm),
        absorbed(Statistics::Calibration),
    );
    let from = match (bn, data) {
        (0, 0) => String::new(),
        (_, 0) => " (BatchNorm statistics)".to_string(),
        (0, _) => " (statistics of the calibration data)".to_string(),
        _ => format!(" ({bn} from BatchNorm statistics, {data} from the calibration data)"),
    };
    println!(
        "cross-layer equalization: {} layer pairs in {} rounds, high bias absorbed in {} channels{from}; {} ReLU6 made ReLU",
        e.pairs.len(),
        e.rounds,
        bn + data,
        e.relu6_replaced.len()
    );
    let padded = e
        .pairs
        .iter()
        .filter(|p| p.absorption_skipped.is_some())
        .count();
    if padded > 0 {
        println!("  no high-bias absorption into {padded} layers that pad with zeros (it would change their border outputs)");
    }
    for r in e.refused.iter().take(5) {
        println!("  not equalized: {} ({})", r.layer, r.reason);
    }
    if e.refused.len() > 5 {
        println!(
            "  ... {} more not equalized (--json lists them)",
            e.refused.len() - 5
        );
    }
}

/// How far `--weight-range output` clipped the min-max ranges, and what it bought on the
/// layers' reconstruction error.
fn print_output_ranges(fitted: &[zeropoint_quant::output_ranges::FittedRange]) {
    if fitted.is_empty() {
        return;
    }
    let searched: Vec<_> = fitted.iter().filter(|f| !f.alpha.is_empty()).collect();
    let mut alphas: Vec<f32> = searched.iter().flat_map(|f| f.alpha.clone()).collect();
    alphas.sort_by(f32::total_cmp);
    let (before, after) = searched.iter().fold((0.0, 0.0), |(a, b), f| {
        (a + f.loss_minmax, b + f.loss_fitted)
    });
    let kept = fitted.len() - searched.len();
    if let (Some(lo), Some(hi)) = (alphas.first(), alphas.last()) {
        println!(
            "weight ranges fitted to layer outputs: {} layers, {} to {} of min-max kept (median {}); reconstruction error {} -> {}",
            searched.len(),
            num(f64::from(*lo), 2),
            num(f64::from(*hi), 2),
            num(f64::from(alphas[alphas.len() / 2]), 2),
            num(before, 4),
            num(after, 4)
        );
    }
    if kept > 0 {
        println!("  {kept} layers kept the estimator's range: their grid is not one range per output channel");
    }
}

/// What AdaRound or bias correction changed, when they ran.
fn print_rounding(s: &Summary) {
    print_output_ranges(&s.output_ranges);
    if !s.adaround.is_empty() {
        let flipped: usize = s.adaround.iter().map(|r| r.flipped).sum();
        let total: usize = s.adaround.iter().map(|r| r.total).sum();
        let (near, learned) = s.adaround.iter().fold((0.0, 0.0), |(a, b), r| {
            (a + r.loss_nearest, b + r.loss_learned)
        });
        let through = s.adaround.iter().filter(|r| r.through_activation).count();
        let settled: usize = s.adaround.iter().map(|r| r.settled).sum();
        println!(
            "AdaRound: {} layers ({through} fitted after their Relu/Clip), {flipped} of {total} weights rounded the other way ({settled} undecided ones settled against h >= 1/2); reconstruction error {} -> {}",
            s.adaround.len(),
            num(near, 4),
            num(learned, 4)
        );
    }
    if !s.bias_corrections.is_empty() {
        let largest = s
            .bias_corrections
            .iter()
            .fold(0f64, |m, c| m.max(c.max_shift));
        println!(
            "bias correction: {} biases corrected, largest channel shift {}",
            s.bias_corrections.len(),
            num(largest, 4)
        );
    }
}

/// The activation range estimator `--activation-range auto` chose, and the scores it chose by.
fn print_range_choice(c: &zeropoint_quant::range_choice::RangeChoice) {
    let scores: Vec<String> = (c.scores.iter())
        .map(|(m, db)| format!("{m} {}", crate::table::db(*db)))
        .collect();
    println!(
        "activation ranges: {} (output SQNR on {} held-out samples, fitted on {}: {} dB)",
        c.method,
        c.held_out,
        c.fitted_on,
        scores.join(", ")
    );
}

/// What mixed precision raised, and what it bought.
fn print_mixed_precision(m: &zeropoint_quant::mixed_precision::Report) {
    use crate::scores::score;
    use zeropoint_quant::mixed_precision::Change;
    println!(
        "mixed precision: {} -> {} on calibration samples ({}; {} raises measured)",
        score(&m.before),
        score(&m.after),
        if m.met {
            "target met"
        } else {
            "target NOT met"
        },
        m.candidates
    );
    for step in &m.steps {
        let what = match step.change {
            Change::Bits16 => format!(
                "activation {} to 16 bits (+{} B per sample)",
                step.quantizer.name(),
                step.bytes
            ),
            Change::Float => format!("layer {} kept float (+{} B)", step.node, step.bytes),
        };
        println!("  {what}: {} dB", db(step.after.sqnr_db));
    }
}

fn print_summary(s: &Summary) {
    let (before, after) = (s.bytes_before, s.bytes_after);
    println!(
        "{} -> {}: {:.2} MB -> {:.2} MB ({:.1}x smaller)",
        s.model,
        s.output,
        before as f64 / 1e6,
        after as f64 / 1e6,
        before as f64 / after.max(1) as f64
    );
    let q = &s.quantizers;
    println!(
        "placed {} weight, {} int32 bias and {} activation quantizers ({} more values share a grid); {} BatchNorm folded",
        q.weights, q.biases, q.activations, q.shared, s.canonicalization.folded_batch_norms
    );
    if let Some(first) = q.clipped_biases.first() {
        println!(
            "clipped to int32: {} bias(es) ('{first}' first) too large for their per-tensor weight grid; the channels stay saturated (docs/algorithms.md, MobileNet)",
            q.clipped_biases.len()
        );
    }
    if !s.float_before_log.is_empty() {
        println!(
            "kept float: {} layer(s) whose output a Log reads ({}; docs/ptq.md)",
            s.float_before_log.len(),
            s.float_before_log.join(", ")
        );
    }
    if !s.float_non_finite.is_empty() {
        println!(
            "kept float: {} node(s) whose weights hold an infinity or NaN, which no grid holds ({})",
            s.float_non_finite.len(),
            s.float_non_finite.join(", ")
        );
    }
    let c = &s.canonicalization;
    if c.half_precision_values > 0 {
        println!(
            "float16/bfloat16 model: computed in float32 behind its own input and output types ({} values widened)",
            c.half_precision_values
        );
    }
    if c.hoisted_loop_constants > 0 {
        println!(
            "{} loop-carried constant(s) made weights of their loop's body",
            c.hoisted_loop_constants
        );
    }
    if let Some(e) = &s.equalization {
        print_equalization(e);
    }
    if !s.smoothing.is_empty() {
        crate::smoothing::print(&s.smoothing);
    }
    print_rounding(s);
    if !s.steps.is_empty() {
        println!("output SQNR against float after each step (on up to 16 calibration samples):");
        for step in &s.steps {
            println!("  {:<42} {}", step.step, crate::scores::score(&step.score));
        }
    }
    if let Some(m) = &s.mixed_precision {
        print_mixed_precision(m);
    }
    if let Some(why) = &s.whole_sample {
        println!("read the data as `zeropoint run` reads it, each array a whole input: {why}");
    }
    if let Some(why) = &s.one_sample_at_a_time {
        println!("calibrated one sample at a time: {why}");
    }
    if let Some(c) = &s.range_choice {
        print_range_choice(c);
    }
    match s.report_samples {
        0 => println!("calibrated on {} samples", s.calibration_samples),
        n => println!(
            "calibrated on {} samples; SQNR of each value on {n} of them",
            s.calibration_samples
        ),
    }
    print_layers(s);
    if let (Some((output, sqnr)), None) = (farthest_output(s), &s.mixed_precision) {
        println!(
            "\noutput '{output}' has an SQNR of {} dB against the float model's: this quantization does not hold it. `zeropoint analyze` ranks the quantizers that cost most and measures the fixes (other ranges, `--bias-correction`, `--cle`); `--target-sqnr 20` raises the costliest to 16 bits or keeps their layers float until the outputs reach 20 dB",
            db(sqnr)
        );
    }
    println!("\ndone in {:.2} s", s.seconds);
}

/// The report's table: each value's bits, range, grid and SQNR.
fn print_layers(s: &Summary) {
    let mut t = Table::new(&["value", "bits", "min", "max", "scale", "zp", "SQNR dB"]);
    for l in &s.layers {
        let range = |i: usize| l.range.map_or("-".to_string(), |r| num(f64::from(r[i]), 4));
        let label = match (&l.shares, l.output) {
            (Some(s), _) => format!("{} (grid of {s})", l.value),
            (_, true) => format!("{} (output, float)", l.value),
            _ => l.value.clone(),
        };
        t.row(vec![
            label,
            l.bits.map_or("-".into(), |b| b.to_string()),
            range(0),
            range(1),
            l.scale.map_or("-".into(), |v| num(f64::from(v), 4)),
            l.zero_point.map_or("-".into(), |v| v.to_string()),
            l.sqnr_db.map_or("inf".into(), db),
        ]);
    }
    print!("\n{}", t.render());
}

/// Below this SQNR (a cosine of about 0.95) an output does not follow the float model's.
const FAR_DB: f64 = 10.0;

/// The graph output of the report with the lowest SQNR, where it is below [`FAR_DB`].
fn farthest_output(s: &Summary) -> Option<(&str, f64)> {
    let outputs = s.layers.iter().filter(|l| l.output);
    let scored = outputs.filter_map(|l| Some((l.value.as_str(), l.sqnr_db?)));
    scored
        .filter(|&(_, db)| db < FAR_DB)
        .min_by(|a, b| a.1.total_cmp(&b.1))
}
