//! What a quantizer does to a range or to data, made concrete (`zeropoint explain`): the scale,
//! zero-point and offset, the grid and the real range it covers, a worked quantize → dequantize
//! of sample values, how many levels symmetric quantization wastes compared with asymmetric, and
//! a diagnosis of the dynamic range measured relative to the data (never against fixed absolute
//! thresholds on the scale).

use zeropoint_core::kernel::fake_quant_value;
use zeropoint_core::observer::{self, Config, Method};
use zeropoint_core::{metrics, stats, Grid, QParam, QParams, Scheme};

/// Levels per standard deviation below which the step is called coarse, and at or above which
/// it is called fine: thresholds on σ/s, i.e. relative to the data's spread.
pub const COARSE_LEVELS_PER_STD: f64 = 4.0;
pub const FINE_LEVELS_PER_STD: f64 = 16.0;
/// Two-sided percentiles tried as clipping ranges.
const PERCENTILES: [f64; 3] = [99.0, 99.9, 99.99];

/// One row of the worked example.
pub struct Example {
    pub x: f32,
    pub x_over_s: f32,
    pub rounded: f32,
    pub q: i64,
    pub xhat: f32,
    pub note: &'static str,
}

pub fn example(x: f32, p: QParam, grid: Grid) -> Example {
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
pub struct Occupancy {
    pub scheme: Scheme,
    pub param: QParam,
    pub lo_code: i32,
    pub hi_code: i32,
}

impl Occupancy {
    pub fn new(scheme: Scheme, min: f32, max: f32) -> zeropoint_core::Result<Occupancy> {
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

    /// Levels between the smallest and the largest value's codes.
    pub fn used(&self) -> u32 {
        (self.hi_code - self.lo_code) as u32 + 1
    }

    /// Levels of the grid.
    pub fn levels(&self) -> u32 {
        self.scheme.grid().levels()
    }
}

/// Quality of one clipping range over the data.
pub struct Clip {
    pub label: String,
    pub lo: f32,
    pub hi: f32,
    pub scale: f32,
    pub sqnr: f64,
    pub clipped: f64,
    pub clip_mse: f64,
    pub round_mse: f64,
}

fn clip_quality(
    scheme: &Scheme,
    label: String,
    lo: f32,
    hi: f32,
    x: &[f32],
) -> zeropoint_core::Result<Clip> {
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
pub struct Diagnosis {
    pub summary: stats::Summary,
    pub levels_per_std: f64,
    pub verdict: Verdict,
    pub clips: Vec<Clip>,
}

/// How finely the grid resolves the data, by levels per standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every value is the same: there is no spread to resolve.
    Constant,
    /// Fewer than [`COARSE_LEVELS_PER_STD`] levels per σ.
    Coarse,
    /// Between the two thresholds.
    Moderate,
    /// At least [`FINE_LEVELS_PER_STD`] levels per σ.
    Fine,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Constant => "constant",
            Verdict::Coarse => "coarse",
            Verdict::Moderate => "moderate",
            Verdict::Fine => "fine",
        }
    }
}

/// Everything `explain` says about one quantizer of a range, and of data when there is some.
pub struct Explanation {
    pub scheme: Scheme,
    /// Where the range came from ("the range given with --min/--max", a tensor's name, ...).
    pub source: String,
    pub min: f32,
    pub max: f32,
    pub param: QParam,
    pub examples: Vec<Example>,
    /// The range quantized asymmetric and symmetric, with the same bits.
    pub asym: Option<Occupancy>,
    pub sym: Option<Occupancy>,
    /// How the data sits on the grid, when data was given.
    pub diagnosis: Option<Diagnosis>,
}

impl Explanation {
    /// The explanation of `param` (from `scheme` and [min, max]) over `data`, if given.
    pub fn new(
        scheme: Scheme,
        min: f32,
        max: f32,
        param: QParam,
        data: Option<&[f32]>,
        source: String,
    ) -> Explanation {
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
        Explanation {
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
}

pub fn diagnose(scheme: &Scheme, p: QParam, min: f32, max: f32, x: &[f32]) -> Diagnosis {
    let summary = stats::summarize(x);
    let levels_per_std = summary.std / f64::from(p.scale);
    let verdict = if summary.std == 0.0 {
        Verdict::Constant
    } else if levels_per_std < COARSE_LEVELS_PER_STD {
        Verdict::Coarse
    } else if levels_per_std < FINE_LEVELS_PER_STD {
        Verdict::Moderate
    } else {
        Verdict::Fine
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
