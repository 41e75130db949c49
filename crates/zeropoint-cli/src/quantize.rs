//! `zeropoint quantize MODEL --calib DATA -o OUT.onnx`: post-training quantization to a QDQ
//! model, with a report of what was placed, the ranges chosen and the error per layer.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, ValueEnum};
use zeropoint_core::{Granularity, Scheme};
use zeropoint_onnx::{atomic, model};
use zeropoint_quant::encodings::encodings;

use zeropoint_quant::ptq::{self, Options, Outcome};
use zeropoint_quant::settings::{BiasCorrection, Preset, Settings, Target};
use zeropoint_quant::summary::Summary;

use crate::data_args::DataArgs;
use crate::range_args::RangeMethod;
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
    #[command(flatten)]
    pub quant: QuantArgs,
    /// Also write the quantization parameters as JSON (per tensor: bits, symmetric, scale,
    /// zero_point, offset, min, max).
    #[arg(long, value_name = "FILE.json")]
    pub encodings: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// The presets by name.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresetArg {
    /// int8 weights, uint8 activations.
    W8a8,
    /// int4 weights (embedding tables int8), uint8 activations.
    W4a8,
    /// int8 weights, uint16 activations.
    W8a16,
    /// int4 weights, uint16 activations.
    W4a16,
}

impl PresetArg {
    fn preset(self) -> Preset {
        match self {
            PresetArg::W8a8 => Preset::W8A8,
            PresetArg::W4a8 => Preset::W4A8,
            PresetArg::W8a16 => Preset::W8A16,
            PresetArg::W4a16 => Preset::W4A16,
        }
    }
}

/// `--recipe`'s variants.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipe {
    /// The white paper's standard PTQ pipeline.
    Standard,
}

/// `--bias-correction`'s variants.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasCorrectionArg {
    Empirical,
    Analytic,
}

/// The choices of a quantization run, shared with the main job.
#[derive(ClapArgs, Debug, Clone)]
pub struct QuantArgs {
    /// The schemes of weights and activations.
    #[arg(long, value_enum, default_value = "w8a8")]
    pub preset: PresetArg,
    /// Weight scheme, overriding the preset: int8|int4|..., then ",sym"/",asym" and
    /// ",per-channel"/",per-tensor"/",per-block=N", e.g. "int8,sym,per-channel".
    #[arg(long)]
    pub weights: Option<String>,
    /// Activation scheme, overriding the preset: uint8|int8|uint16|int16, then ",asym"/",sym".
    #[arg(long)]
    pub activations: Option<String>,
    /// Range estimator for weights [default: minmax; mse with --recipe standard].
    #[arg(long, value_enum)]
    pub weight_range: Option<RangeMethod>,
    /// Range estimator for activations.
    #[arg(long, value_enum, default_value = "mse")]
    pub activation_range: RangeMethod,
    /// Keep these nodes float: node names or operator types (repeatable).
    #[arg(long, value_name = "NAME|OP")]
    pub exclude: Vec<String>,
    /// Use at most this many calibration samples.
    #[arg(long)]
    pub samples: Option<usize>,
    /// Samples per calibration batch and thread.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[command(flatten)]
    pub data: DataArgs,
    /// Samples on which the simulated model is compared with the float one, layer by layer.
    #[arg(long, default_value_t = 64)]
    pub report_samples: usize,
    /// The white paper's standard PTQ pipeline (Nagel et al. 2021, §4.7, Fig. 9): BatchNorm
    /// folding, cross-layer equalization with high-bias absorption where it applies, MSE weight
    /// ranges, AdaRound, MSE activation ranges: --cle --weight-range mse --adaround.
    /// --weight-range and --adaround=ITERS override; --bias-correction replaces AdaRound.
    #[arg(long, value_enum)]
    pub recipe: Option<Recipe>,
    /// Cross-layer equalization before quantizing (Nagel et al. 2019): rescales the channels of
    /// consecutive layers so that per-tensor weight grids fit every channel, and absorbs high
    /// biases into the next layer where BatchNorm statistics say how high (docs/algorithms.md).
    #[arg(long)]
    pub cle: bool,
    /// With --cle: replace each ReLU6 between two layers by a ReLU so that they can be
    /// equalized (the paper's choice; changes the float model where an activation exceeds 6).
    #[arg(long)]
    pub cle_relu6: bool,
    /// With --cle: do not absorb high biases.
    #[arg(long)]
    pub no_bias_absorption: bool,
    /// Bias correction (Nagel et al. 2019). empirical (the default): each quantized layer's mean
    /// output error per channel, measured on calibration samples with the layers before it
    /// quantized and corrected, is subtracted from its bias. analytic: the error the quantized
    /// weights cause on the mean input that the preceding BatchNorm's statistics give.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "empirical")]
    pub bias_correction: Option<BiasCorrectionArg>,
    /// AdaRound (Nagel et al. 2020): learn each weight's rounding, up or down, layer by layer on
    /// calibration samples, with ITERS Adam steps per layer [default: 1000].
    #[arg(long, value_name = "ITERS", num_args = 0..=1, default_missing_value = "1000")]
    pub adaround: Option<usize>,
    /// Calibration samples AdaRound fits each layer on (their activations are held together).
    #[arg(long, default_value_t = 16)]
    pub adaround_samples: usize,
    /// AdaRound's Adam learning rate.
    #[arg(long, default_value_t = 1e-2)]
    pub adaround_lr: f64,
    /// Calibration samples empirical bias correction measures on, all in one batch (memory
    /// grows with it).
    #[arg(long, default_value_t = 16)]
    pub bias_correction_samples: usize,
    /// Mixed precision: raise the quantizers that buy the most output SQNR per byte (activations
    /// to 16 bits, layers kept float), one at a time, until the simulated model's output SQNR
    /// against float reaches DB on calibration samples. Exports at opset 21.
    #[arg(long, value_name = "DB")]
    pub target_sqnr: Option<f64>,
    /// Mixed precision, like --target-sqnr, to a top-1 agreement with the float model (a
    /// fraction, 0.99, or a percentage, 99%) on the first output's class scores.
    #[arg(long, value_name = "P")]
    pub target_agreement: Option<String>,
    /// Quantize this activation with BITS bits instead of the scheme's, e.g. relu_5=16
    /// (repeatable; `analyze` names the activations that need it).
    #[arg(long, value_name = "VALUE=BITS")]
    pub activation_bits: Vec<String>,
    /// Calibration samples the mixed-precision target is measured on.
    #[arg(long, default_value_t = 32)]
    pub target_samples: usize,
}

impl QuantArgs {
    /// What default output names say about the scheme: "int8" for the default preset, the
    /// preset's name for the others, "qdq" when schemes are given explicitly.
    fn tag(&self) -> &str {
        match (&self.weights, &self.activations, self.preset) {
            (None, None, PresetArg::W8a8) => "int8",
            (None, None, preset) => preset.preset().name(),
            _ => "qdq",
        }
    }

    pub fn options(&self, data: Vec<String>) -> Result<Options> {
        let preset = self.preset.preset();
        let weights = match &self.weights {
            Some(spec) => parse_scheme(spec, true)?,
            None => preset.weights(),
        };
        let activations = match &self.activations {
            Some(spec) => parse_scheme(spec, false)?,
            None => preset.activations(),
        };
        if activations.granularity != Granularity::PerTensor {
            bail!("activations are quantized per tensor");
        }
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        let standard = self.recipe == Some(Recipe::Standard);
        if (self.cle_relu6 || self.no_bias_absorption) && !(self.cle || standard) {
            bail!("--cle-relu6 and --no-bias-absorption go with --cle (or --recipe standard)");
        }
        let recipe_adaround = standard && self.bias_correction.is_none();
        let adaround = self.adaround.or(recipe_adaround.then_some(1000));
        if adaround.is_some() && self.bias_correction.is_some() {
            bail!("--adaround and --bias-correction do not go together: AdaRound learns the rounding that bias correction would compensate");
        }
        if adaround == Some(0) {
            bail!("--adaround needs at least 1 iteration");
        }
        if !(self.adaround_lr.is_finite() && self.adaround_lr > 0.0) {
            bail!("--adaround-lr must be a positive number");
        }
        let bias_correction = self.bias_correction;
        let target = self.target()?;
        Ok(Options {
            settings: Settings {
                weights,
                weight_method: self
                    .weight_range
                    .unwrap_or(if standard {
                        RangeMethod::Mse
                    } else {
                        RangeMethod::Minmax
                    })
                    .method(),
                activations,
                activation_method: self.activation_range.method(),
                batch: self.batch,
                equalize: (self.cle || standard).then_some(zeropoint_quant::equalize::Options {
                    relu6_as_relu: self.cle_relu6,
                    absorb_high_bias: !self.no_bias_absorption,
                }),
                bias_correction: bias_correction.map(|b| match b {
                    BiasCorrectionArg::Empirical => BiasCorrection::Empirical {
                        samples: self.bias_correction_samples,
                    },
                    BiasCorrectionArg::Analytic => BiasCorrection::Analytic,
                }),
                adaround: adaround.map(|iterations| zeropoint_quant::adaround::Options {
                    iterations,
                    samples: self.adaround_samples.max(1),
                    learning_rate: self.adaround_lr,
                    ..Default::default()
                }),
                activation_bits: self.activation_bits()?,
                target,
            },
            exclude: self.exclude.clone(),
            data,
            preprocess: self.data.preprocess()?,
            samples: self.samples,
            report_samples: self.report_samples,
        })
    }
}

impl QuantArgs {
    /// The mixed-precision target, if one is asked for.
    fn target(&self) -> Result<Option<Target>> {
        if self.target_sqnr.is_none() && self.target_agreement.is_none() {
            return Ok(None);
        }
        if self.target_sqnr.is_some_and(|d| !d.is_finite()) {
            bail!("--target-sqnr must be a number of dB");
        }
        let agreement = match self.target_agreement.as_deref() {
            Some(p) => Some(parse_fraction(p)?),
            None => None,
        };
        if self.target_samples == 0 {
            bail!("--target-samples must be at least 1");
        }
        Ok(Some(Target {
            sqnr_db: self.target_sqnr,
            agreement,
            samples: self.target_samples,
        }))
    }
}

impl QuantArgs {
    /// `--activation-bits` as (value, bits).
    fn activation_bits(&self) -> Result<Vec<(String, u32)>> {
        self.activation_bits
            .iter()
            .map(|spec| {
                let parsed = spec
                    .rsplit_once('=')
                    .and_then(|(v, b)| Some((v.to_string(), b.parse::<u32>().ok()?)));
                match parsed {
                    Some((v, b)) if (2..=16).contains(&b) && !v.is_empty() => Ok((v, b)),
                    _ => bail!("--activation-bits '{spec}' is not VALUE=BITS with 2 to 16 bits"),
                }
            })
            .collect()
    }
}

/// "0.99" or "99%" → 0.99.
fn parse_fraction(p: &str) -> Result<f64> {
    let (number, scale) = match p.trim().strip_suffix('%') {
        Some(n) => (n, 100.0),
        None => (p.trim(), 1.0),
    };
    let v: f64 = number
        .parse()
        .with_context(|| format!("--target-agreement '{p}' is not a fraction like 0.99 or 99%"))?;
    let v = v / scale;
    if !(0.0..=1.0).contains(&v) {
        bail!("--target-agreement '{p}' is not between 0 and 1 (0% and 100%)");
    }
    Ok(v)
}

/// "int8,sym,per-channel" → a scheme; weights default to symmetric per-channel, activations
/// to asymmetric per-tensor.
fn parse_scheme(spec: &str, weight: bool) -> Result<Scheme> {
    let mut parts = spec.split(',').map(str::trim);
    let ty = parts.next().unwrap_or("");
    let (signed, bits) = match ty.strip_prefix("uint") {
        Some(b) => (false, b),
        None => (true, ty.strip_prefix("int").unwrap_or("")),
    };
    let bits: u32 = bits
        .parse()
        .with_context(|| format!("'{ty}' is not a type like int8, uint8, int4"))?;
    let mut scheme = Scheme::new(bits).signed(signed).symmetric(weight);
    if weight {
        scheme = scheme.per_axis(0);
    }
    for p in parts {
        scheme = match p {
            "sym" | "symmetric" => scheme.symmetric(true),
            "asym" | "asymmetric" => scheme.symmetric(false),
            "per-tensor" => scheme.granularity(Granularity::PerTensor),
            "per-channel" => scheme.per_axis(0),
            "narrow" => scheme.narrow(true),
            other => match other.strip_prefix("per-block=").map(str::parse::<usize>) {
                Some(Ok(block)) if block > 0 => scheme.per_block(1, block),
                _ => bail!("unknown scheme option '{other}' in '{spec}'"),
            },
        };
    }
    scheme.validate()?;
    Ok(scheme)
}

pub fn run(args: &Args) -> Result<()> {
    let Some(model) = &args.model else {
        return demo(args);
    };
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
    check_output(model, &output)?;
    let opts = args.quant.options(args.calib.clone())?;
    let start = Instant::now();
    let outcome = ptq::quantize(model, &opts, &mut crate::progress::bar())?;
    write(&outcome, &output, args.encodings.as_deref())?;
    let seconds = start.elapsed().as_secs_f64();
    report(
        (model, file_size(model)),
        &output,
        &outcome,
        seconds,
        args.json,
    )
}

/// The quantized model and, if asked, the encodings.
fn write(
    outcome: &Outcome,
    output: &std::path::Path,
    encodings_path: Option<&std::path::Path>,
) -> Result<()> {
    model::save(&outcome.model, output)?;
    if let Some(path) = encodings_path {
        let doc = encodings(outcome, &outcome.settings);
        atomic::write_bytes(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    Ok(())
}

/// The main job on the embedded model and data: quantize, write, evaluate.
fn demo(args: &Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let files = crate::embedded::write(dir.path())?;
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| ptq::default_output(Path::new("mnist_cnn.onnx"), args.quant.tag()));
    check_output(&files.model, &output)?;
    let mut quant = args.quant.clone();
    crate::embedded::use_preprocessing(&mut quant.data);
    let calib = if args.calib.is_empty() {
        vec![files.calib_images.display().to_string()]
    } else {
        args.calib.clone()
    };
    let opts = quant.options(calib)?;
    let start = Instant::now();
    let outcome = ptq::quantize(&files.model, &opts, &mut crate::progress::bar())?;
    write(&outcome, &output, args.encodings.as_deref())?;
    let seconds = start.elapsed().as_secs_f64();
    if !args.json {
        let embedded = PathBuf::from(crate::embedded::MODEL_NAME);
        report(
            (&embedded, crate::embedded::MODEL.len() as u64),
            &output,
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

/// Never over the input; the parent folder must exist.
pub fn check_output(model: &std::path::Path, output: &std::path::Path) -> Result<()> {
    let same = match (model.canonicalize(), output.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => model == output,
    };
    if same {
        bail!(
            "{}: the output would overwrite the input model; choose another path",
            output.display()
        );
    }
    if output.is_dir() {
        bail!("{}: is a folder; give the file to write", output.display());
    }
    let parent = output.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent.filter(|d| !d.is_dir()) {
        bail!(
            "{}: the output folder {} does not exist",
            output.display(),
            dir.display()
        );
    }
    Ok(())
}

fn file_size(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Prints the summary of a run on `model` (its name for the report, and its size in bytes).
fn report(
    (model, before): (&std::path::Path, u64),
    output: &std::path::Path,
    o: &Outcome,
    seconds: f64,
    json_out: bool,
) -> Result<()> {
    let model_name = model.display().to_string();
    let output_name = output.display().to_string();
    let summary = Summary::new(
        o,
        (&model_name, before),
        (&output_name, file_size(output)),
        seconds,
    );
    if json_out {
        // Through a JSON value: keys sorted, floats printed as the f64 they widen to.
        let doc = serde_json::to_value(&summary)?;
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    print_summary(&summary);
    Ok(())
}

/// What cross-layer equalization did, in a few lines.
pub fn print_equalization(e: &zeropoint_quant::equalize::Report) {
    let absorbed: usize = e.pairs.iter().map(|p| p.absorbed_channels).sum();
    println!(
        "cross-layer equalization: {} layer pairs in {} rounds, high bias absorbed in {absorbed} channels; {} ReLU6 made ReLU",
        e.pairs.len(),
        e.rounds,
        e.relu6_replaced.len()
    );
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
    if let Some(e) = &s.equalization {
        print_equalization(e);
    }
    if !s.adaround.is_empty() {
        let flipped: usize = s.adaround.iter().map(|r| r.flipped).sum();
        let total: usize = s.adaround.iter().map(|r| r.total).sum();
        let (near, learned) = s.adaround.iter().fold((0.0, 0.0), |(a, b), r| {
            (a + r.loss_nearest, b + r.loss_learned)
        });
        println!(
            "AdaRound: {} layers, {flipped} of {total} weights rounded the other way; reconstruction error {} -> {}",
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
    if !s.steps.is_empty() {
        println!("output SQNR against float after each step (on up to 16 calibration samples):");
        for step in &s.steps {
            println!("  {:<42} {}", step.step, crate::scores::score(&step.score));
        }
    }
    if let Some(m) = &s.mixed_precision {
        print_mixed_precision(m);
    }
    println!("calibrated on {} samples", s.calibration_samples);
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
    println!("\ndone in {:.2} s", s.seconds);
}
