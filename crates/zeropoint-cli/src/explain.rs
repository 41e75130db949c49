//! `zeropoint explain`: the concepts made concrete for one range or one set of values.
//!
//! It prints the scale, zero-point and offset, the grid and the real range it covers, the step and
//! the worst rounding error, a worked quantize -> dequantize of sample values, how many levels
//! symmetric quantization wastes compared with asymmetric, and a diagnosis of the dynamic range
//! measured relative to the data (never against fixed absolute thresholds on the scale).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args as ClapArgs;
use serde_json::{json, Value};
use zeropoint_core::kernel::fake_quant_value;
use zeropoint_core::observer::{self, Config, Method};
use zeropoint_core::{metrics, stats, Grid, QParam, QParams, Scheme};
use zeropoint_model::tensor_file;

use crate::scheme_args::SchemeArgs;
use crate::table::{db, num, Table};

#[derive(ClapArgs, Debug)]
#[command(group(clap::ArgGroup::new("source").args(["min", "values", "tensor"]).required(true).multiple(true)))]
pub struct Args {
    /// Lower end of the range to quantize (with --max).
    #[arg(long, allow_hyphen_values = true, requires = "max")]
    pub min: Option<f32>,
    /// Upper end of the range to quantize (with --min).
    #[arg(long, allow_hyphen_values = true, requires = "min")]
    pub max: Option<f32>,
    /// Comma-separated sample values, e.g. --values=-1.2,0,0.4,3.1
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub values: Option<Vec<f32>>,
    /// A tensor file (.npy, .npz, .safetensors, .onnx) to take the values from.
    #[arg(long, conflicts_with = "values")]
    pub tensor: Option<PathBuf>,
    /// Which tensor of a multi-tensor file.
    #[arg(long, requires = "tensor")]
    pub name: Option<String>,
    #[command(flatten)]
    pub scheme: SchemeArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Levels per standard deviation below which the step is called coarse, and at or above which
/// it is called fine: thresholds on σ/s, i.e. relative to the data's spread.
const COARSE_LEVELS_PER_STD: f64 = 4.0;
const FINE_LEVELS_PER_STD: f64 = 16.0;
/// Two-sided percentiles tried as clipping ranges.
const PERCENTILES: [f64; 3] = [99.0, 99.9, 99.99];

pub fn run(args: &Args) -> Result<()> {
    let scheme = args.scheme.scheme()?;
    let (data, source) = load_values(args)?;
    let (min, max) = match (args.min, args.max) {
        (Some(lo), Some(hi)) => (lo, hi),
        _ => {
            let s = stats::summarize(data.as_deref().unwrap_or_default());
            (s.min, s.max)
        }
    };
    let p =
        QParam::from_range(&scheme, min, max).with_context(|| format!("range [{min}, {max}]"))?;
    let report = Report::new(scheme, min, max, p, data.as_deref(), source);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

/// The values to explain, if any, and where they came from. NaN, Inf and empty data are errors.
fn load_values(args: &Args) -> Result<(Option<Vec<f32>>, String)> {
    let (values, source) = if let Some(v) = &args.values {
        (v.clone(), format!("{} values given with --values", v.len()))
    } else if let Some(path) = &args.tensor {
        let set = tensor_file::read(path)?;
        let t = match &args.name {
            Some(name) => set
                .tensors
                .into_iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| anyhow!("{}: no tensor named '{name}'", path.display()))?,
            None if set.tensors.len() == 1 => set.tensors.into_iter().next().unwrap(),
            None => {
                let names: Vec<&str> = set
                    .tensors
                    .iter()
                    .take(8)
                    .map(|t| t.name.as_str())
                    .collect();
                bail!(
                    "{}: holds {} tensors; pick one with --name (e.g. {})",
                    path.display(),
                    set.tensors.len(),
                    names.join(", ")
                );
            }
        };
        let source = format!(
            "tensor '{}' of {} ({:?}, {})",
            t.name,
            path.display(),
            t.shape,
            t.dtype
        );
        (t.values, source)
    } else {
        return Ok((None, "the range given with --min/--max".into()));
    };
    if values.is_empty() {
        bail!("{source}: there are no values to explain");
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "{source}: value {i} is {}, which has no place on a quantization grid",
            values[i]
        );
    }
    Ok((Some(values), source))
}

/// One row of the worked example.
struct Example {
    x: f32,
    x_over_s: f32,
    rounded: f32,
    q: i64,
    xhat: f32,
    note: &'static str,
}

fn example(x: f32, p: QParam, grid: Grid) -> Example {
    let x_over_s = x / p.scale;
    let rounded = x_over_s.round_ties_even();
    let unclamped = rounded as i64 + i64::from(p.zero_point);
    let q = unclamped.clamp(i64::from(grid.qmin), i64::from(grid.qmax));
    let note = if unclamped > q {
        "clipped to qmax"
    } else if unclamped < q {
        "clipped to qmin"
    } else if (x_over_s - x_over_s.trunc()).abs() == 0.5 {
        "tie: rounds to even"
    } else {
        ""
    };
    Example {
        x,
        x_over_s,
        rounded,
        q,
        xhat: fake_quant_value(x, p, grid),
        note,
    }
}

/// Codes of the smallest and largest value, and how many grid levels lie between them.
struct Occupancy {
    scheme: Scheme,
    param: QParam,
    lo_code: i32,
    hi_code: i32,
}

impl Occupancy {
    fn new(scheme: Scheme, min: f32, max: f32) -> Result<Occupancy> {
        let param = QParam::from_range(&scheme, min, max)?;
        let grid = scheme.grid();
        let code = |x: f32| example(x, param, grid).q as i32;
        Ok(Occupancy {
            scheme,
            param,
            lo_code: code(min),
            hi_code: code(max),
        })
    }

    fn used(&self) -> u32 {
        (self.hi_code - self.lo_code) as u32 + 1
    }

    fn levels(&self) -> u32 {
        self.scheme.grid().levels()
    }
}

/// Quality of one clipping range over the data.
struct Clip {
    label: String,
    lo: f32,
    hi: f32,
    scale: f32,
    sqnr: f64,
    clipped: f64,
    clip_mse: f64,
    round_mse: f64,
}

fn clip_quality(scheme: &Scheme, label: String, lo: f32, hi: f32, x: &[f32]) -> Result<Clip> {
    let p = QParam::from_range(scheme, lo, hi)?;
    let params = QParams::new(
        scheme.granularity,
        scheme.grid(),
        vec![p.scale],
        vec![p.zero_point],
    )?;
    let (e, split) = metrics::quantization_error(x, &[x.len()], &params)?;
    Ok(Clip {
        label,
        lo,
        hi,
        scale: p.scale,
        sqnr: e.sqnr_db,
        clipped: split.clipped_fraction(),
        clip_mse: split.clip_mse(),
        round_mse: split.round_mse(),
    })
}

/// What the data looks like relative to the grid.
struct Diagnosis {
    summary: stats::Summary,
    levels_per_std: f64,
    verdict: &'static str,
    clips: Vec<Clip>,
}

struct Report {
    scheme: Scheme,
    source: String,
    min: f32,
    max: f32,
    param: QParam,
    examples: Vec<Example>,
    asym: Option<Occupancy>,
    sym: Option<Occupancy>,
    diagnosis: Option<Diagnosis>,
}

impl Report {
    fn new(
        scheme: Scheme,
        min: f32,
        max: f32,
        param: QParam,
        data: Option<&[f32]>,
        source: String,
    ) -> Report {
        let grid = scheme.grid();
        let mut samples = vec![min, max];
        if min < 0.0 && max > 0.0 {
            samples.push(0.0);
        }
        let middle = data
            .and_then(|d| stats::percentiles(d, &[50.0]))
            .map_or(0.5 * (min + max), |p| p[0]);
        samples.push(middle);
        // A value exactly halfway between two levels, to show round-half-to-even.
        let k = (middle / param.scale).floor();
        if let Some(tie) = (0..8)
            .map(|d| (k + d as f32 + 0.5) * param.scale)
            .find(|&t| (t / param.scale).fract().abs() == 0.5 && t >= min && t <= max)
        {
            samples.push(tie);
        }
        samples.push(max + 3.0 * param.scale);
        samples.dedup();
        let examples = samples
            .into_iter()
            .map(|x| example(x, param, grid))
            .collect();

        let same = Scheme::new(scheme.bits).narrow(scheme.narrow);
        let asym = Occupancy::new(same.symmetric(false).signed(scheme.signed), min, max).ok();
        let sym = Occupancy::new(same.symmetric(true).signed(true), min, max).ok();
        let diagnosis = data.map(|x| diagnose(&scheme, param, min, max, x));
        Report {
            scheme,
            source,
            min,
            max,
            param,
            examples,
            asym,
            sym,
            diagnosis,
        }
    }

    fn to_text(&self) -> String {
        let g = self.scheme.grid();
        let p = self.param;
        let (lo, hi) = p.real_range(g);
        let mut o = String::new();
        let w = &mut o;
        let _ = writeln!(w, "scheme      {}", self.scheme);
        let _ = writeln!(
            w,
            "data        {}: range [{}, {}]",
            self.source, self.min, self.max
        );
        let _ = writeln!(w, "grid        integers {g}: {} levels", g.levels());
        let _ = writeln!(w);
        let _ = writeln!(w, "parameters");
        let _ = writeln!(
            w,
            "  scale s       {:<14} the step between adjacent levels",
            p.scale
        );
        let _ = writeln!(
            w,
            "  zero-point z  {:<14} the code that real 0 maps to (exactly)",
            p.zero_point
        );
        let _ = writeln!(
            w,
            "  offset        {:<14} = -z, the convention of AIMET and TFLite tooling",
            p.offset()
        );
        let _ = writeln!(w, "  real range    [{lo}, {hi}]  = [(qmin - z)·s, (qmax - z)·s]: values outside are clipped");
        let _ = writeln!(
            w,
            "  worst rounding error inside the range: s/2 = {}",
            num(f64::from(p.scale) / 2.0, 4)
        );
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "quantize    q  = clamp(round_half_to_even(x / s) + z, {}, {})",
            g.qmin, g.qmax
        );
        let _ = writeln!(w, "dequantize  x^ = (q - z) · s");
        let mut t = Table::new(&["x", "x/s", "round", "q", "x^", "x - x^", ""]);
        for e in &self.examples {
            t.row(vec![
                num(f64::from(e.x), 6),
                num(f64::from(e.x_over_s), 6),
                num(f64::from(e.rounded), 6),
                e.q.to_string(),
                num(f64::from(e.xhat), 6),
                num(f64::from(e.x - e.xhat), 3),
                e.note.to_string(),
            ]);
        }
        for line in t.render().lines() {
            let _ = writeln!(w, "  {line}");
        }
        let _ = writeln!(w);
        if let (Some(a), Some(s)) = (&self.asym, &self.sym) {
            let _ = writeln!(
                w,
                "symmetric vs asymmetric over [{}, {}]",
                self.min, self.max
            );
            for occ in [a, s] {
                let _ = writeln!(
                    w,
                    "  {:<28} s = {:<12} codes {}..{}: {} of {} levels used",
                    occ.scheme.to_string(),
                    occ.param.scale,
                    occ.lo_code,
                    occ.hi_code,
                    occ.used(),
                    occ.levels()
                );
            }
            let wasted = s.levels().saturating_sub(s.used());
            let side = if self.max.abs() >= self.min.abs() {
                "negative"
            } else {
                "positive"
            };
            if wasted as f64 > 0.05 * f64::from(s.levels()) {
                let _ = writeln!(
                    w,
                    "  symmetric wastes {wasted} levels ({:.0}%) on the emptier ({side}) side: its step is {:.2}x the asymmetric one, {:.2} bits of resolution lost",
                    100.0 * f64::from(wasted) / f64::from(s.levels()),
                    f64::from(s.param.scale) / f64::from(a.param.scale),
                    (f64::from(s.levels()) / f64::from(s.used())).log2()
                );
            } else {
                let _ = writeln!(w, "  the data is nearly symmetric around 0: symmetric wastes only {wasted} levels and saves the zero-point arithmetic");
            }
            let _ = writeln!(w);
        }
        match &self.diagnosis {
            Some(d) => text_diagnosis(w, d, self.scheme.bits),
            None => {
                let range = f64::from(self.max.max(0.0)) - f64::from(self.min.min(0.0));
                let _ = writeln!(w, "dynamic range");
                let _ = writeln!(
                    w,
                    "  no data given: if values were spread uniformly over the range, SQNR would be about {} dB (20·log10(range / s)); pass --values or --tensor for a diagnosis of real data",
                    db(20.0 * (range / f64::from(p.scale)).log10())
                );
            }
        }
        o
    }

    fn to_json(&self) -> Value {
        let g = self.scheme.grid();
        let (lo, hi) = self.param.real_range(g);
        let occ = |o: &Option<Occupancy>| {
            o.as_ref().map(|o| {
                json!({"scheme": o.scheme.to_string(), "scale": o.param.scale, "zero_point": o.param.zero_point,
                       "lowest_code": o.lo_code, "highest_code": o.hi_code, "levels_used": o.used(), "levels": o.levels()})
            })
        };
        json!({
            "scheme": {"description": self.scheme.to_string(), "bits": self.scheme.bits, "signed": self.scheme.signed,
                       "symmetric": self.scheme.symmetric, "narrow": self.scheme.narrow, "pow2_scale": self.scheme.pow2_scale},
            "source": self.source,
            "min": self.min, "max": self.max,
            "grid": {"qmin": g.qmin, "qmax": g.qmax, "levels": g.levels()},
            "scale": self.param.scale, "zero_point": self.param.zero_point, "offset": self.param.offset(),
            "real_range": [lo, hi],
            "max_rounding_error": self.param.scale / 2.0,
            "examples": self.examples.iter().map(|e| json!({"x": e.x, "x_over_s": e.x_over_s, "rounded": e.rounded,
                "q": e.q, "dequantized": e.xhat, "error": e.x - e.xhat, "note": e.note})).collect::<Vec<_>>(),
            "asymmetric": occ(&self.asym),
            "symmetric": occ(&self.sym),
            "diagnosis": self.diagnosis.as_ref().map(|d| json!({
                "count": d.summary.finite(), "mean": d.summary.mean, "std": d.summary.std,
                "kurtosis": d.summary.kurtosis, "max_abs_over_std": d.summary.max_abs_over_std(),
                "levels_per_std": d.levels_per_std, "verdict": d.verdict,
                "thresholds": {"coarse_below_levels_per_std": COARSE_LEVELS_PER_STD, "fine_from_levels_per_std": FINE_LEVELS_PER_STD},
                "ranges": d.clips.iter().map(|c| json!({"label": c.label, "min": c.lo, "max": c.hi, "scale": c.scale,
                    "sqnr_db": finite_or_null(c.sqnr), "clipped_fraction": c.clipped, "clip_mse": c.clip_mse, "round_mse": c.round_mse})).collect::<Vec<_>>(),
            })),
        })
    }
}

fn finite_or_null(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

fn diagnose(scheme: &Scheme, p: QParam, min: f32, max: f32, x: &[f32]) -> Diagnosis {
    let summary = stats::summarize(x);
    let levels_per_std = summary.std / f64::from(p.scale);
    let verdict = if summary.std == 0.0 {
        "constant"
    } else if levels_per_std < COARSE_LEVELS_PER_STD {
        "coarse"
    } else if levels_per_std < FINE_LEVELS_PER_STD {
        "moderate"
    } else {
        "fine"
    };
    let mut clips = Vec::new();
    if let Ok(c) = clip_quality(scheme, "given range".into(), min, max, x) {
        clips.push(c);
    }
    // The same percentile ranges as `inspect --range percentile` (exact, inverted CDF), and
    // the range that minimizes the quantization MSE for this scheme.
    let methods = PERCENTILES
        .iter()
        .map(|&upper| Method::Percentile {
            lower: 100.0 - upper,
            upper,
        })
        .chain([Method::Mse { norm: 2.0 }]);
    for method in methods {
        let per_tensor = scheme.granularity(zeropoint_core::Granularity::PerTensor);
        let Ok(r) = observer::estimate_values(x, &[x.len()], &per_tensor, Config::new(method))
        else {
            continue;
        };
        let label = match method {
            Method::Mse { .. } => "minimum MSE".to_string(),
            m => m.to_string(),
        };
        if let Ok(c) = clip_quality(scheme, label, r[0].0, r[0].1, x) {
            clips.push(c);
        }
    }
    Diagnosis {
        summary,
        levels_per_std,
        verdict,
        clips,
    }
}

fn text_diagnosis(w: &mut String, d: &Diagnosis, bits: u32) {
    let s = &d.summary;
    let _ = writeln!(
        w,
        "dynamic range (judged relative to the data's own spread σ, not by absolute thresholds)"
    );
    let _ = writeln!(
        w,
        "  {} values: mean {}, σ {}, max|x|/σ {}, kurtosis {} (3 = Gaussian)",
        s.finite(),
        num(s.mean, 4),
        num(s.std, 4),
        num(s.max_abs_over_std(), 3),
        num(s.kurtosis, 3)
    );
    let advice = match d.verdict {
        "coarse" => format!("coarse: fewer than {COARSE_LEVELS_PER_STD} levels per σ; the bulk of the data falls on a handful of levels: expect large rounding error at {bits} bits"),
        "moderate" => format!("moderate: between {COARSE_LEVELS_PER_STD} and {FINE_LEVELS_PER_STD} levels per σ"),
        _ => format!("fine: at least {FINE_LEVELS_PER_STD} levels per σ; rounding error is small next to the spread"),
    };
    if d.verdict == "constant" {
        let _ = writeln!(
            w,
            "  every value is {}: there is no spread to resolve; the error is that of this one value",
            s.min
        );
    } else {
        let _ = writeln!(
            w,
            "  step s = {} of σ, i.e. {} levels per σ: {advice}",
            num(1.0 / d.levels_per_std, 3),
            num(d.levels_per_std, 3)
        );
    }
    let Some(base) = d.clips.first() else { return };
    let mut t = Table::new(&[
        "clipping range",
        "min",
        "max",
        "scale",
        "SQNR dB",
        "clipped",
        "clip MSE",
        "round MSE",
    ]);
    for c in &d.clips {
        t.row(vec![
            c.label.clone(),
            num(f64::from(c.lo), 5),
            num(f64::from(c.hi), 5),
            num(f64::from(c.scale), 4),
            db(c.sqnr),
            format!("{:.3}%", 100.0 * c.clipped),
            num(c.clip_mse, 3),
            num(c.round_mse, 3),
        ]);
    }
    for line in t.render().lines() {
        let _ = writeln!(w, "  {line}");
    }
    let best = d
        .clips
        .iter()
        .max_by(|a, b| a.sqnr.total_cmp(&b.sqnr))
        .unwrap();
    if best.sqnr > base.sqnr + 0.05 {
        let _ = writeln!(
            w,
            "  the {} range would gain {} dB SQNR over the given range: outliers cost more resolution than clipping them costs",
            best.label,
            db(best.sqnr - base.sqnr)
        );
    } else {
        let _ = writeln!(
            w,
            "  no clipping range here beats the given range: clipping would not help"
        );
    }
}
