//! `--activation-range auto`: the activation range estimator chosen per model on calibration
//! samples held out from fitting.
//!
//! No estimator wins on every model (docs/zoo.md): MSE ranges clip the few large values a
//! LayerNorm or a detection needs (magika: 18 dB below min-max), min-max ranges waste the grid
//! on outliers elsewhere (ppocr-v5-rec, malviz-resnet18). Scoring the estimators on the samples
//! the ranges were fitted to picks wrong (ranges fit the samples they are scored on: silero-vad,
//! oww-hey-jarvis), so the last quarter of the calibration samples is held out: the MSE
//! observers see the rest, their histograms answer MSE, min-max and percentile ranges
//! ([`zeropoint_core::observer::Observer::ranges_with`]), and each set of ranges is scored by the
//! simulated model's output SQNR on the held-out samples. MSE stays unless another estimator
//! scores more than [`MARGIN_DB`] higher; then the observers go on through the held-out samples
//! and the chosen estimator sets the final ranges from all of them.

use serde::Serialize;

use zeropoint_core::observer::Method;
use zeropoint_graph::Graph;

use crate::calibrate::ranges_as;
use crate::error::Result;
use crate::placement::Plan;
use crate::sensitivity::Probe;
use crate::settings::Settings;

/// How much better another estimator must score than MSE on the held-out samples to be chosen:
/// a difference of a few tenths is the held-out samples' noise, not the estimator's merit.
pub const MARGIN_DB: f64 = 1.0;

/// The fewest calibration samples that leave one to hold out and three to fit.
pub const FEWEST_SAMPLES: usize = 4;

/// What the choice measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RangeChoice {
    /// The estimator chosen.
    pub method: String,
    /// Samples the ranges were fitted on, and held out to score them.
    pub fitted_on: usize,
    pub held_out: usize,
    /// Each estimator's output SQNR (dB) on the held-out samples.
    pub scores: Vec<(String, f64)>,
}

/// The samples to hold out of `total`: a quarter, at least one; none below [`FEWEST_SAMPLES`].
pub fn held_out(total: usize) -> usize {
    if total < FEWEST_SAMPLES {
        0
    } else {
        (total / 4).max(1)
    }
}

/// The candidates: MSE (the observers' own, `settings.activation_method`), min-max and
/// percentile with its defaults.
fn candidates(settings: &Settings) -> Vec<Method> {
    let percentile = Method::parse("percentile").expect("a known estimator");
    vec![settings.activation_method, Method::MinMax, percentile]
}

/// Scores every candidate's ranges from `observers` (fitted without the held-out samples) on
/// `probe` (the held-out samples) and returns the estimator to use, with what was measured.
pub fn choose(
    (graph, plan): (&Graph, &Plan),
    observers: &std::collections::HashMap<String, zeropoint_core::observer::Observer>,
    settings: &Settings,
    probe: &Probe,
    fitted_on: usize,
) -> Result<(Method, RangeChoice)> {
    let mut scored = Vec::new();
    for method in candidates(settings) {
        let ranges = ranges_as(graph, plan, observers, settings, Some(&method))?;
        let params = crate::params::params(graph, plan, &ranges, settings)?;
        scored.push((method, probe.score(&params)?.sqnr_db));
    }
    let mse = scored[0].1;
    let best = (1..scored.len())
        .filter(|&i| scored[i].1 > mse + MARGIN_DB)
        .max_by(|&a, &b| scored[a].1.total_cmp(&scored[b].1))
        .unwrap_or(0);
    let choice = RangeChoice {
        method: scored[best].0.name().to_string(),
        fitted_on,
        held_out: probe.samples(),
        scores: (scored.iter())
            .map(|(m, s)| (m.name().to_string(), *s))
            .collect(),
    };
    Ok((scored.swap_remove(best).0, choice))
}

#[cfg(test)]
mod tests {
    use super::held_out;

    #[test]
    fn a_quarter_is_held_out_of_four_samples_or_more() {
        assert_eq!(held_out(3), 0);
        assert_eq!(held_out(4), 1);
        assert_eq!(held_out(16), 4);
        assert_eq!(held_out(64), 16);
        assert_eq!(held_out(7), 1);
    }
}
