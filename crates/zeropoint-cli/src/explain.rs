//! `zeropoint explain`: the concepts made concrete for one range or one set of values, as text or
//! JSON (zeropoint_quant::analysis::explain computes what is shown).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args as ClapArgs;
use serde_json::{json, Value};
use zeropoint_core::{stats, QParam};
use zeropoint_onnx::tensor_file;
use zeropoint_quant::analysis::explain::{
    Diagnosis, Explanation, Occupancy, Verdict, COARSE_LEVELS_PER_STD, FINE_LEVELS_PER_STD,
};

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
    let e = Explanation::new(scheme, min, max, p, data.as_deref(), source);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&e))?);
    } else {
        print!("{}", to_text(&e));
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

fn to_text(e: &Explanation) -> String {
    let mut o = String::new();
    parameters_text(&mut o, e);
    example_text(&mut o, e);
    if let (Some(a), Some(s)) = (&e.asym, &e.sym) {
        symmetry_text(&mut o, e, a, s);
    }
    match &e.diagnosis {
        Some(d) => text_diagnosis(&mut o, d, e.scheme.bits),
        None => {
            let range = f64::from(e.max.max(0.0)) - f64::from(e.min.min(0.0));
            let _ = writeln!(o, "dynamic range");
            let _ = writeln!(
                o,
                "  no data given: if values were spread uniformly over the range, SQNR would be about {} dB (20·log10(range / s)); pass --values or --tensor for a diagnosis of real data",
                db(20.0 * (range / f64::from(e.param.scale)).log10())
            );
        }
    }
    o
}

/// The scheme, the grid, and the parameters with what each means.
fn parameters_text(w: &mut String, e: &Explanation) {
    let g = e.scheme.grid();
    let p = e.param;
    let (lo, hi) = p.real_range(g);
    let _ = writeln!(w, "scheme      {}", e.scheme);
    let _ = writeln!(w, "data        {}: range [{}, {}]", e.source, e.min, e.max);
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
    let _ = writeln!(
        w,
        "  real range    [{lo}, {hi}]  = [(qmin - z)·s, (qmax - z)·s]: values outside are clipped"
    );
    let _ = writeln!(
        w,
        "  worst rounding error inside the range: s/2 = {}",
        num(f64::from(p.scale) / 2.0, 4)
    );
    let _ = writeln!(w);
}

/// The worked quantize → dequantize of the sample values.
fn example_text(w: &mut String, e: &Explanation) {
    let g = e.scheme.grid();
    let _ = writeln!(
        w,
        "quantize    q  = clamp(round_half_to_even(x / s) + z, {}, {})",
        g.qmin, g.qmax
    );
    let _ = writeln!(w, "dequantize  x^ = (q - z) · s");
    let mut t = Table::new(&["x", "x/s", "round", "q", "x^", "x - x^", ""]);
    for x in &e.examples {
        t.row(vec![
            num(f64::from(x.x), 6),
            num(f64::from(x.x_over_s), 6),
            num(f64::from(x.rounded), 6),
            x.q.to_string(),
            num(f64::from(x.xhat), 6),
            num(f64::from(x.x - x.xhat), 3),
            x.note.to_string(),
        ]);
    }
    for line in t.render().lines() {
        let _ = writeln!(w, "  {line}");
    }
    let _ = writeln!(w);
}

/// How many levels symmetric quantization wastes against asymmetric over the range.
fn symmetry_text(w: &mut String, e: &Explanation, a: &Occupancy, s: &Occupancy) {
    let _ = writeln!(w, "symmetric vs asymmetric over [{}, {}]", e.min, e.max);
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
    let side = if e.max.abs() >= e.min.abs() {
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

fn to_json(e: &Explanation) -> Value {
    let g = e.scheme.grid();
    let (lo, hi) = e.param.real_range(g);
    let occ = |o: &Option<Occupancy>| {
        o.as_ref().map(|o| {
            json!({"scheme": o.scheme.to_string(), "scale": o.param.scale, "zero_point": o.param.zero_point,
                   "lowest_code": o.lo_code, "highest_code": o.hi_code, "levels_used": o.used(), "levels": o.levels()})
        })
    };
    json!({
        "scheme": {"description": e.scheme.to_string(), "bits": e.scheme.bits, "signed": e.scheme.signed,
                   "symmetric": e.scheme.symmetric, "narrow": e.scheme.narrow, "pow2_scale": e.scheme.pow2_scale},
        "source": e.source,
        "min": e.min, "max": e.max,
        "grid": {"qmin": g.qmin, "qmax": g.qmax, "levels": g.levels()},
        "scale": e.param.scale, "zero_point": e.param.zero_point, "offset": e.param.offset(),
        "real_range": [lo, hi],
        "max_rounding_error": e.param.scale / 2.0,
        "examples": e.examples.iter().map(|e| json!({"x": e.x, "x_over_s": e.x_over_s, "rounded": e.rounded,
            "q": e.q, "dequantized": e.xhat, "error": e.x - e.xhat, "note": e.note})).collect::<Vec<_>>(),
        "asymmetric": occ(&e.asym),
        "symmetric": occ(&e.sym),
        "diagnosis": e.diagnosis.as_ref().map(|d| json!({
            "count": d.summary.finite(), "mean": d.summary.mean, "std": d.summary.std,
            "kurtosis": d.summary.kurtosis, "max_abs_over_std": d.summary.max_abs_over_std(),
            "levels_per_std": d.levels_per_std, "verdict": d.verdict.name(),
            "thresholds": {"coarse_below_levels_per_std": COARSE_LEVELS_PER_STD, "fine_from_levels_per_std": FINE_LEVELS_PER_STD},
            "ranges": d.clips.iter().map(|c| json!({"label": c.label, "min": c.lo, "max": c.hi, "scale": c.scale,
                "sqnr_db": finite_or_null(c.sqnr), "clipped_fraction": c.clipped, "clip_mse": c.clip_mse, "round_mse": c.round_mse})).collect::<Vec<_>>(),
        })),
    })
}

fn finite_or_null(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
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
        Verdict::Coarse => format!("coarse: fewer than {COARSE_LEVELS_PER_STD} levels per σ; the bulk of the data falls on a handful of levels: expect large rounding error at {bits} bits"),
        Verdict::Moderate => format!("moderate: between {COARSE_LEVELS_PER_STD} and {FINE_LEVELS_PER_STD} levels per σ"),
        _ => format!("fine: at least {FINE_LEVELS_PER_STD} levels per σ; rounding error is small next to the spread"),
    };
    if d.verdict == Verdict::Constant {
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
