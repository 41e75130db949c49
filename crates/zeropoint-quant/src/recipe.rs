//! What each step of the white paper's standard PTQ pipeline (Nagel et al. 2021, §4.7, its
//! Fig. 9) bought on this model: the output SQNR of the simulated model after BatchNorm folding
//! with min-max weight ranges, then after each step the run took (cross-layer equalization, the
//! weight range estimator, AdaRound or bias correction), on the same calibration samples.
//! Measured only when one of those steps is on, and the report is not turned off.

use serde::Serialize;

use zeropoint_core::observer::Method;
use zeropoint_graph::Graph;

use crate::calibrate::Ranges;
use crate::compare::Batch;
use crate::error::Result;
use crate::params::{params, Params};
use crate::placement::Plan;
use crate::sensitivity::{Probe, Score};
use crate::settings::Settings;

/// The model after one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepScore {
    pub step: String,
    pub score: Score,
}

/// The steps up to the weight ranges, on `graph` as calibrated (equalized, if asked).
/// `without_cle` scores the model quantized without equalization (it calibrates again).
pub fn before_rounding(
    s: &Settings,
    (graph, plan, ranges): (&Graph, &Plan, &Ranges),
    batches: &[Batch],
    without_cle: &mut dyn FnMut() -> Result<Score>,
) -> Result<Vec<StepScore>> {
    let probe = Probe::new(graph, graph, batches.to_vec())?;
    let minmax = Settings {
        weight_method: Method::MinMax,
        ..s.clone()
    };
    let score_with = |settings: &Settings| probe.score(&params(graph, plan, ranges, settings)?);
    let mut steps = Vec::new();
    let mut push = |step: String, score: Score| steps.push(StepScore { step, score });
    const FOLDED: &str = "BatchNorm folded, min-max weight ranges";
    if s.equalize.is_some() {
        push(FOLDED.into(), without_cle()?);
        push("+ cross-layer equalization".into(), score_with(&minmax)?);
    } else {
        push(FOLDED.into(), score_with(&minmax)?);
    }
    if s.weight_method != Method::MinMax {
        push(
            format!("+ {} weight ranges", s.weight_method),
            score_with(s)?,
        );
    }
    Ok(steps)
}

/// The step of weight ranges fitted to the layers' outputs (crate::output_ranges), with the
/// fitted `params`.
pub fn fitted_ranges(graph: &Graph, params: &Params, batches: &[Batch]) -> Result<StepScore> {
    let score = Probe::new(graph, graph, batches.to_vec())?.score(params)?;
    Ok(StepScore {
        step: "+ weight ranges fitted to layer outputs".into(),
        score,
    })
}

/// The step of AdaRound or bias correction: `graph` with its weights or biases, against
/// `float`.
pub fn rounding(
    s: &Settings,
    (float, graph): (&Graph, &Graph),
    params: &Params,
    batches: &[Batch],
) -> Result<Option<StepScore>> {
    let step = match (&s.adaround, &s.bias_correction) {
        (Some(_), _) => "+ AdaRound",
        (None, Some(_)) => "+ bias correction",
        (None, None) => return Ok(None),
    };
    let score = Probe::new(float, graph, batches.to_vec())?.score(params)?;
    Ok(Some(StepScore {
        step: step.into(),
        score,
    }))
}
