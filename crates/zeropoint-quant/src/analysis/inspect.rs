//! What each quantization scheme would cost a tensor (`zeropoint inspect`): its statistics, and
//! for int8 and int4 the SQNR of min-max quantization per-tensor and per-channel, symmetric and
//! asymmetric, with a recommendation: the simplest scheme within 0.5 dB of the best, in this
//! order of simplicity: per-tensor symmetric, per-channel symmetric, per-tensor asymmetric,
//! per-channel asymmetric (symmetric weights save the zero-point cross terms at inference).

use zeropoint_core::stats::{self, Summary};
use zeropoint_core::{metrics, QParams, Scheme};
use zeropoint_onnx::Tensor;

use crate::analysis::ranges::RangeResult;

/// The candidate schemes, simplest first, as `inspect` labels them.
pub const CANDIDATES: [&str; 4] = [
    "per-tensor sym",
    "per-channel sym",
    "per-tensor asym",
    "per-channel asym",
];

/// Tolerance within which a simpler scheme is preferred to the best one.
pub const PREFER_SIMPLER_DB: f64 = 0.5;

/// One candidate scheme and the SQNR it gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub label: &'static str,
    pub scheme: Scheme,
    pub sqnr_db: f64,
}

#[derive(Debug, Clone)]
pub struct Analysis {
    pub tensor: Tensor,
    pub summary: Summary,
    /// Empty when the tensor cannot be quantized (empty, NaN or Inf), with the reason in `note`.
    pub candidates: Vec<Candidate>,
    /// The --range comparison, when asked for.
    pub ranges: Vec<RangeResult>,
    pub note: Option<String>,
}

impl Analysis {
    /// The recommended candidate for a bit-width.
    pub fn recommended(&self, bits: u32) -> Option<&Candidate> {
        let of_bits: Vec<&Candidate> = self
            .candidates
            .iter()
            .filter(|c| c.scheme.bits == bits)
            .collect();
        let best = of_bits
            .iter()
            .map(|c| c.sqnr_db)
            .fold(f64::NEG_INFINITY, f64::max);
        of_bits
            .into_iter()
            .find(|c| c.sqnr_db >= best - PREFER_SIMPLER_DB)
    }
}

/// Statistics and the SQNR of every candidate scheme for one tensor.
pub fn analyse(tensor: Tensor, axis: usize) -> Analysis {
    let summary = stats::summarize(&tensor.values);
    let note = if tensor.values.is_empty() {
        Some("empty tensor".to_string())
    } else if summary.nan + summary.inf > 0 {
        Some(format!(
            "holds {} NaN and {} Inf values: not quantizable",
            summary.nan, summary.inf
        ))
    } else {
        None
    };
    let mut candidates = Vec::new();
    if note.is_none() {
        let per_channel = tensor.shape.len() >= 2 && axis < tensor.shape.len();
        for bits in [8, 4] {
            let options = [
                (CANDIDATES[0], Scheme::new(bits), true),
                (CANDIDATES[1], Scheme::new(bits).per_axis(axis), per_channel),
                (CANDIDATES[2], Scheme::new(bits).symmetric(false), true),
                (
                    CANDIDATES[3],
                    Scheme::new(bits).symmetric(false).per_axis(axis),
                    per_channel,
                ),
            ];
            for (label, scheme, applies) in options {
                if !applies {
                    continue;
                }
                if let Ok(sqnr_db) = sqnr(&tensor, &scheme) {
                    candidates.push(Candidate {
                        label,
                        scheme,
                        sqnr_db,
                    });
                }
            }
        }
    }
    Analysis {
        tensor,
        summary,
        candidates,
        ranges: Vec::new(),
        note,
    }
}

fn sqnr(t: &Tensor, scheme: &Scheme) -> zeropoint_core::Result<f64> {
    let params = QParams::from_data(scheme, &t.values, &t.shape)?;
    Ok(metrics::quantization_error(&t.values, &t.shape, &params)?
        .0
        .sqnr_db)
}
