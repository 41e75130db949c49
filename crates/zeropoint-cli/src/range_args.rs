//! Range estimators on the command line: their names (`--range`, `--weight-range`,
//! `--activation-range`), the settings `inspect --range` takes, and its comparison table.

use anyhow::Result;
use clap::{Args as ClapArgs, ValueEnum};
use serde_json::{json, Value};
use zeropoint_core::observer::{self, Config, Method};
use zeropoint_core::Scheme;
use zeropoint_quant::analysis::ranges::RangeResult;

use crate::table::{db, num, Table};

/// A range estimator by its command-line name (docs/ranges.md).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeMethod {
    /// The smallest and largest value.
    #[value(alias = "min-max")]
    Minmax,
    /// Moving average of each batch's min and max.
    #[value(alias = "moving-average")]
    Ema,
    /// Two-sided percentiles.
    Percentile,
    /// [-t, t], t a percentile of |x| (ONNX Runtime's percentile calibration).
    AbsPercentile,
    /// The range with the least quantization MSE.
    Mse,
    /// TensorRT's KL-divergence criterion.
    #[value(alias = "kl")]
    Entropy,
    /// The range that best keeps the softmax cross-entropy of logits.
    #[value(alias = "ce")]
    CrossEntropy,
}

impl RangeMethod {
    /// The estimator with its default settings (those of zeropoint-core's `Method::parse`).
    pub fn method(self) -> Method {
        let name = self.to_possible_value().expect("no variant is skipped");
        Method::parse(name.get_name()).expect("every name here is one Method::parse knows")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_an_estimator() {
        for m in RangeMethod::value_variants() {
            let name = m.to_possible_value().unwrap();
            assert_eq!(m.method().name(), name.get_name());
        }
    }
}

#[derive(ClapArgs, Debug, Clone)]
pub struct RangeArgs {
    /// Compare range estimators per tensor (comma-separated). Shows each one's range and the
    /// SQNR it gives at --bits.
    #[arg(long, value_delimiter = ',', value_name = "METHOD,...")]
    pub range: Vec<RangeMethod>,
    /// Bit-width of the quantizer the ranges are compared for.
    #[arg(long, default_value_t = 8)]
    pub bits: u32,
    /// Compare for a symmetric signed quantizer (z = 0); asymmetric signed by default.
    #[arg(long)]
    pub symmetric: bool,
    /// The percentile method keeps the values between percentiles 100-P and P.
    #[arg(long, default_value_t = 99.99, value_name = "P")]
    pub percentile: f64,
    /// The abs-percentile method keeps [-t, t], t the P-th percentile of |x| (ONNX Runtime's
    /// default percentile calibration, at 99.999).
    #[arg(long, default_value_t = 99.99, value_name = "P")]
    pub abs_percentile: f64,
    /// Bins of the streaming histogram (power-of-two widths, see docs/ranges.md).
    #[arg(long, default_value_t = observer::histogram::DEFAULT_BINS)]
    pub bins: usize,
    /// Bins over ±max|x| on which the entropy method's KL is evaluated (TensorRT: 2048).
    #[arg(long, default_value_t = 2048)]
    pub entropy_bins: usize,
    /// Quantized bins of the entropy method (TensorRT: 128).
    #[arg(long, default_value_t = 128)]
    pub quantized_bins: usize,
    /// Momentum of the ema method: running = m·running + (1 - m)·batch.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    /// Norm p of the MSE method's error |x - x^|^p (2 = mean squared error).
    #[arg(long, default_value_t = 2.0)]
    pub norm: f64,
}

impl RangeArgs {
    pub fn scheme(&self) -> Result<Scheme> {
        let s = Scheme::new(self.bits).symmetric(self.symmetric);
        s.validate()?;
        Ok(s)
    }

    /// The estimators asked for, with the settings of the flags.
    pub fn configs(&self) -> Result<Vec<Config>> {
        self.range
            .iter()
            .map(|m| {
                let method = match m.method() {
                    Method::Percentile { .. } => Method::Percentile {
                        lower: 100.0 - self.percentile,
                        upper: self.percentile,
                    },
                    Method::AbsPercentile { .. } => Method::AbsPercentile {
                        p: self.abs_percentile,
                    },
                    Method::Entropy { .. } => Method::Entropy {
                        bins: self.entropy_bins,
                        quantized_bins: self.quantized_bins,
                    },
                    Method::MovingAverage { .. } => Method::MovingAverage {
                        momentum: self.momentum,
                    },
                    Method::Mse { .. } => Method::Mse { norm: self.norm },
                    m => m,
                };
                let config = Config::new(method).bins(self.bins);
                // Validates the settings (percentiles, bins) up front, with a clear message.
                observer::Observer::new(config)?;
                Ok(config)
            })
            .collect()
    }
}

/// The text table: one row per tensor and method, the best SQNR of each tensor marked.
pub fn table(rows: &[(&str, &[RangeResult])], scheme: &Scheme) -> String {
    let mut t = Table::new(&[
        "tensor",
        "method",
        "min",
        "max",
        "SQNR dB",
        "MSE",
        "clipped",
        "clip MSE",
        "round MSE",
        "",
    ]);
    for (name, results) in rows {
        let best = results
            .iter()
            .map(|r| r.sqnr_db)
            .fold(f64::NEG_INFINITY, f64::max);
        for r in results.iter() {
            t.row(vec![
                name.to_string(),
                r.method.to_string(),
                num(f64::from(r.min), 5),
                num(f64::from(r.max), 5),
                db(r.sqnr_db),
                num(r.mse, 3),
                format!("{:.3}%", 100.0 * r.clipped),
                num(r.clip_mse, 3),
                num(r.round_mse, 3),
                if r.sqnr_db == best {
                    "best".into()
                } else {
                    String::new()
                },
            ]);
        }
    }
    format!(
        "\nranges per estimator, quantized per-tensor with {scheme}\n{}",
        t.render()
    )
}

pub fn to_json(results: &[RangeResult]) -> Value {
    let finite = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
    results
        .iter()
        .map(|r| {
            json!({
                "method": r.method.name(), "description": r.method.to_string(),
                "min": r.min, "max": r.max, "sqnr_db": finite(r.sqnr_db), "mse": r.mse,
                "clipped_fraction": r.clipped, "clip_mse": r.clip_mse, "round_mse": r.round_mse,
            })
        })
        .collect()
}
