//! `zeropoint quantize MODEL --calib DATA -o OUT.onnx`: post-training quantization to a QDQ
//! model, with a report of what was placed, the ranges chosen and the error per layer.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde_json::json;
use zeropoint_core::observer::Method;
use zeropoint_core::{Granularity, Scheme};
use zeropoint_model::calibrate::Settings;
use zeropoint_model::ptq::{self, Options, Outcome};
use zeropoint_model::{atomic, external_data};

use crate::data_args::DataArgs;
use crate::table::{db, num, Table};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The float ONNX model. Without it: the built-in demonstration, the embedded MNIST CNN
    /// calibrated on 500 embedded MNIST training images, then evaluated float vs quantized on
    /// 2000 embedded test images.
    pub model: Option<PathBuf>,
    /// Calibration data: NAME=FILE or FILE (.npy, .npz with arrays named after the inputs,
    /// MNIST-style idx files, or a folder of PNG/JPEG images); repeat for several inputs.
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

/// The choices of a quantization run, shared with the main job.
#[derive(ClapArgs, Debug, Clone)]
pub struct QuantArgs {
    /// w8a8 (int8 weights, uint8 activations), w4a8, w8a16, w4a16.
    #[arg(long, default_value = "w8a8")]
    pub preset: String,
    /// Weight scheme, overriding the preset: int8|int4|..., then ",sym"/",asym" and
    /// ",per-channel"/",per-tensor"/",per-block=N", e.g. "int8,sym,per-channel".
    #[arg(long)]
    pub weights: Option<String>,
    /// Activation scheme, overriding the preset: uint8|int8|uint16|int16, then ",asym"/",sym".
    #[arg(long)]
    pub activations: Option<String>,
    /// Range estimator for weights: minmax, mse, percentile, abs-percentile, entropy.
    #[arg(long, default_value = "minmax")]
    pub weight_range: String,
    /// Range estimator for activations: mse, minmax, percentile, abs-percentile, entropy, ema.
    #[arg(long, default_value = "mse")]
    pub activation_range: String,
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
}

impl QuantArgs {
    /// What default output names say about the scheme: "int8" for the default preset, the
    /// preset's name for the others, "qdq" when schemes are given explicitly.
    fn tag(&self) -> &str {
        match (&self.weights, &self.activations, self.preset.as_str()) {
            (None, None, "w8a8") => "int8",
            (None, None, preset) => preset,
            _ => "qdq",
        }
    }

    pub fn options(&self, data: Vec<String>) -> Result<Options> {
        let (w, a) = match self.preset.as_str() {
            "w8a8" => ("int8", "uint8"),
            "w4a8" => ("int4", "uint8"),
            "w8a16" => ("int8", "uint16"),
            "w4a16" => ("int4", "uint16"),
            p => bail!("unknown preset '{p}' (w8a8, w4a8, w8a16, w4a16)"),
        };
        let weights = parse_scheme(self.weights.as_deref().unwrap_or(w), true)?;
        let activations = parse_scheme(self.activations.as_deref().unwrap_or(a), false)?;
        if activations.granularity != Granularity::PerTensor {
            bail!("activations are quantized per tensor");
        }
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        Ok(Options {
            settings: Settings {
                weights,
                weight_method: Method::parse(&self.weight_range)?,
                activations,
                activation_method: Method::parse(&self.activation_range)?,
                batch: self.batch,
            },
            exclude: self.exclude.clone(),
            data,
            preprocess: self.data.preprocess()?,
            samples: self.samples,
            report_samples: self.report_samples,
        })
    }
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
    let outcome = ptq::quantize(model, &opts, &mut progress_bar())?;
    write(&outcome, &opts, &output, args.encodings.as_deref())?;
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
    opts: &Options,
    output: &std::path::Path,
    encodings_path: Option<&std::path::Path>,
) -> Result<()> {
    external_data::save(&outcome.model, output)?;
    if let Some(path) = encodings_path {
        let doc = encodings(outcome, opts);
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
    quant.data.mean = vec![crate::embedded::MEAN];
    quant.data.std = vec![crate::embedded::STD];
    let calib = if args.calib.is_empty() {
        vec![files.calib_images.display().to_string()]
    } else {
        args.calib.clone()
    };
    let opts = quant.options(calib)?;
    let start = Instant::now();
    let outcome = ptq::quantize(&files.model, &opts, &mut progress_bar())?;
    write(&outcome, &opts, &output, args.encodings.as_deref())?;
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

/// Progress on stderr (hidden when stderr is not a terminal).
pub fn progress_bar() -> impl FnMut(&str, usize, usize) {
    let mut bar: Option<(String, indicatif::ProgressBar)> = None;
    move |stage: &str, done: usize, total: usize| {
        if bar.as_ref().is_none_or(|(s, _)| s != stage) {
            if let Some((_, b)) = &bar {
                b.finish_and_clear();
            }
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>12} [{bar:30}] {pos}/{len} samples {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_message(stage.to_string());
            bar = Some((stage.to_string(), b));
        }
        if let Some((_, b)) = &bar {
            b.set_position(done as u64);
            if done >= total {
                b.finish_and_clear();
            }
        }
    }
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
    let after = file_size(output);
    let layers: Vec<serde_json::Value> = o
        .sqnr
        .iter()
        .map(|(name, s)| {
            let qp = o.params.activations.get(name);
            json!({
                "value": name,
                "sqnr_db": Some(s.stats().sqnr_db).filter(|d| d.is_finite()),
                "range": o.params.ranges.get(name).map(|r| [r.0, r.1]),
                "scale": qp.map(|q| q.scale[0]),
                "zero_point": qp.map(|q| q.zero_point[0]),
                "shares": o.plan.shared.iter().find(|(v, _)| v == name).map(|(_, s)| s),
                "output": o.graph.outputs.iter().any(|g| &g.name == name),
            })
        })
        .collect();
    let doc = json!({
        "model": model.display().to_string(),
        "output": output.display().to_string(),
        "bytes_before": before,
        "bytes_after": after,
        "calibration_samples": o.calibration_samples,
        "canonicalization": {
            "folded_batch_norms": o.canonical.folded_batch_norms.len(),
            "folded_constants": o.canonical.folded_constants,
        },
        "quantizers": {
            "weights": o.plan.weights.len(),
            "biases": o.params.biases.len(),
            "activations": o.plan.activations.len(),
            "shared": o.plan.shared.len(),
        },
        "layers": layers,
        "seconds": seconds,
        "stage_seconds": o.seconds,
    });
    if json_out {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "{} -> {}: {:.2} MB -> {:.2} MB ({:.1}x smaller)",
        model.display(),
        output.display(),
        before as f64 / 1e6,
        after as f64 / 1e6,
        before as f64 / after.max(1) as f64
    );
    println!(
        "placed {} weight, {} int32 bias and {} activation quantizers ({} more values share a grid); {} BatchNorm folded",
        o.plan.weights.len(),
        o.params.biases.len(),
        o.plan.activations.len(),
        o.plan.shared.len(),
        o.canonical.folded_batch_norms.len()
    );
    println!("calibrated on {} samples", o.calibration_samples);
    let mut t = Table::new(&["value", "min", "max", "scale", "zp", "SQNR dB"]);
    for l in &layers {
        let f = |k: &str, i: usize| {
            l[k].get(i)
                .and_then(|v| v.as_f64())
                .map_or("-".to_string(), |v| num(v, 4))
        };
        let name = l["value"].as_str().unwrap_or("");
        let label = match (l["shares"].as_str(), l["output"].as_bool()) {
            (Some(s), _) => format!("{name} (grid of {s})"),
            (_, Some(true)) => format!("{name} (output, float)"),
            _ => name.to_string(),
        };
        t.row(vec![
            label,
            f("range", 0),
            f("range", 1),
            l["scale"].as_f64().map_or("-".into(), |v| num(v, 4)),
            l["zero_point"]
                .as_i64()
                .map_or("-".into(), |v| v.to_string()),
            l["sqnr_db"].as_f64().map_or("inf".into(), db),
        ]);
    }
    print!("\n{}", t.render());
    println!("\ndone in {seconds:.2} s");
    Ok(())
}

/// The parameters as JSON: per tensor bits, symmetric, scale, zero_point, offset (= −zp), and
/// the real range [min, max] the grid covers; per-channel values as lists.
pub fn encodings(o: &Outcome, opts: &Options) -> serde_json::Value {
    let entry = |qp: &zeropoint_core::QParams, scheme: &Scheme, range: Option<(f32, f32)>| {
        let per_channel = qp.scale.len() > 1;
        let real: Vec<(f32, f32)> = (0..qp.scale.len())
            .map(|i| qp.get(i).real_range(qp.grid))
            .collect();
        let pick = |v: Vec<serde_json::Value>| if per_channel { json!(v) } else { v[0].clone() };
        json!({
            "bits": scheme.bits,
            "signed": scheme.signed,
            "symmetric": scheme.symmetric,
            "granularity": format!("{:?}", qp.granularity),
            "scale": pick(qp.scale.iter().map(|&s| json!(s)).collect()),
            "zero_point": pick(qp.zero_point.iter().map(|&z| json!(z)).collect()),
            "offset": pick(qp.zero_point.iter().map(|&z| json!(-z)).collect()),
            "min": pick(real.iter().map(|r| json!(r.0)).collect()),
            "max": pick(real.iter().map(|r| json!(r.1)).collect()),
            "calibrated_range": range.map(|r| [r.0, r.1]),
        })
    };
    let s = &opts.settings;
    let weights: serde_json::Map<String, serde_json::Value> = o
        .plan
        .weights
        .iter()
        .filter_map(|w| {
            o.params
                .weights
                .get(&w.name)
                .map(|qp| (w.name.clone(), entry(qp, &s.weights, None)))
        })
        .collect();
    let activations: serde_json::Map<String, serde_json::Value> = o
        .params
        .activations
        .iter()
        .map(|(n, qp)| {
            (
                n.clone(),
                entry(qp, &s.activations, o.params.ranges.get(n).copied()),
            )
        })
        .collect();
    let biases: serde_json::Map<String, serde_json::Value> = o
        .params
        .biases
        .iter()
        .map(|(n, b)| (n.clone(), json!({"bits": 32, "signed": true, "symmetric": true, "scale": b.scale, "zero_point": 0, "offset": 0})))
        .collect();
    json!({"weights": weights, "activations": activations, "biases": biases})
}
