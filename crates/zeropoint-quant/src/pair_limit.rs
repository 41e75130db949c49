//! The last step of `--limit-pairs`: after rounding (nearest or AdaRound's), the few pairs of
//! weight codes that rounding carried past the limit that [`crate::kernel_pairs`] keeps lose a
//! step where it adds the least rounding error, and go back into the graph on their grid, so
//! that the simulation, the report and the export all see the same codes.

use zeropoint_core::kernel::quantize;
use zeropoint_core::{Layout, QParams};
use zeropoint_graph::Graph;
use zeropoint_onnx::RawTensor;

use crate::error::{Error, Result};
use crate::kernel_pairs::{eligible, pairings, PAIR_LIMIT};
use crate::params::Params;
use crate::placement::Plan;

/// The codes of one weight that rounding carried past the limit, lowered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Limited {
    pub weight: String,
    /// Codes lowered in magnitude (by 1 or 2 steps).
    pub lowered: usize,
    pub total: usize,
}

/// Lowers the codes of every pair that rounding carried past [`PAIR_LIMIT`] in the weights of
/// `plan` whose scales `kernel_pairs::widen_scales` widened, and writes them into `graph` on
/// their grid; returns what changed, per weight with such a pair.
pub fn limit_pairs(graph: &mut Graph, plan: &Plan, params: &Params) -> Result<Vec<Limited>> {
    let mut done = Vec::new();
    for site in &plan.weights {
        let Some(wp) = params
            .weight(&site.name)
            .filter(|wp| eligible(site, &wp.scheme, &wp.qparams))
        else {
            continue;
        };
        let Some(t) = graph.initializer(&site.name) else {
            continue;
        };
        let qp = &wp.qparams;
        let label = |e: String| Error::Environment(format!("weight '{}': {e}", site.name));
        let w = t.to_f32s();
        let mut codes = vec![0i8; w.len()];
        quantize(&w, &t.shape, qp, &mut codes).map_err(|e| label(e.to_string()))?;
        let layout = Layout::new(&t.shape, qp.granularity).map_err(|e| label(e.to_string()))?;
        let mut codes: Vec<i32> = codes.into_iter().map(i32::from).collect();
        let before = codes.clone();
        for pairs in pairings(site, &t.shape) {
            for (a, b) in pairs {
                lower_pair(&mut codes, &w, (a, b), |e| qp.scale[layout.param_index(e)]);
            }
        }
        let lowered = codes.iter().zip(&before).filter(|(a, b)| a != b).count();
        if lowered == 0 {
            continue;
        }
        let values = on_grid(&w, &codes, &before, qp, &layout);
        let new = RawTensor::from_f64s(&t.name, &t.shape, &values, t.dtype);
        if let Some(slot) = graph.initializers.iter_mut().find(|i| i.name == site.name) {
            *slot = new;
        }
        done.push(Limited {
            weight: site.name.clone(),
            lowered,
            total: w.len(),
        });
    }
    Ok(done)
}

/// The weights with their lowered codes replaced by those codes' grid values; the others as
/// they were (they quantize to the same codes).
fn on_grid(w: &[f32], codes: &[i32], before: &[i32], qp: &QParams, layout: &Layout) -> Vec<f64> {
    w.iter()
        .enumerate()
        .map(|(e, &v)| {
            if codes[e] == before[e] {
                f64::from(v)
            } else {
                f64::from(codes[e]) * f64::from(qp.scale[layout.param_index(e)])
            }
        })
        .collect()
}

/// Brings a same-sign pair of codes at `(a, b)` within [`PAIR_LIMIT`], lowering their
/// magnitudes by the split that adds the least squared rounding error (in steps) against the
/// real values `w / s`.
fn lower_pair(codes: &mut [i32], w: &[f32], (a, b): (usize, usize), scale: impl Fn(usize) -> f32) {
    let (qa, qb) = (codes[a], codes[b]);
    let excess = (qa + qb).abs() - PAIR_LIMIT;
    if excess <= 0 || qa.signum() * qb.signum() < 0 {
        return;
    }
    let real = |e: usize| (f64::from(w[e]) / f64::from(scale(e))).abs();
    let (ra, rb) = (real(a), real(b));
    let cost = |i: i32| {
        let (ma, mb) = (f64::from(qa.abs() - i), f64::from(qb.abs() - (excess - i)));
        (ma - ra).powi(2) + (mb - rb).powi(2)
    };
    // i: how much of the excess `a` gives up; neither magnitude goes below 0.
    let lo = (excess - qb.abs()).max(0);
    let hi = excess.min(qa.abs());
    let best = (lo..=hi)
        .min_by(|&x, &y| cost(x).total_cmp(&cost(y)))
        .unwrap_or(lo);
    codes[a] = qa.signum() * (qa.abs() - best);
    codes[b] = qb.signum() * (qb.abs() - (excess - best));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The split that adds the least rounding error, and no change for opposite signs.
    #[test]
    fn lowering_takes_the_cheapest_split() {
        // Real values 100.4 and 29.4 rounded to 100 and 29 would be fine; 101 and 30 (131) are
        // 3 over: a's 101 is 0.6 above its value, b's 30 is 0.6 above: lowering a by 1 and b
        // by 2 (or the reverse) costs the same; the first minimum is kept.
        let w = [100.4f32, 29.4];
        let mut q = [101, 30];
        lower_pair(&mut q, &w, (0, 1), |_| 1.0);
        assert_eq!(q[0] + q[1], 128);
        assert!((q[0] - 100).abs() <= 1 && (q[1] - 28).abs() <= 1, "{q:?}");
        let mut q = [-101, -30];
        lower_pair(&mut q, &[-100.4, -29.4], (0, 1), |_| 1.0);
        assert_eq!(q[0] + q[1], -128);
        let mut q = [127, -120];
        lower_pair(&mut q, &[127.0, -120.0], (0, 1), |_| 1.0);
        assert_eq!(q, [127, -120]);
    }
}
