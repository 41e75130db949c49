//! Mixed precision to a target: the quantizers whose precision buys the most accuracy per byte
//! are raised, one at a time, until the simulated model meets the user's output SQNR (or top-1
//! agreement) on calibration samples. This is the white paper's debugging flow (Nagel et al.
//! 2021, §4.8: "fix the most sensitive layers") made automatic.
//!
//! Two raises exist: an activation to 16 bits (it costs a byte per element at run time, and
//! ONNX Runtime runs the layers around it in float), and a weight's layer kept float (it costs
//! the weight's size in float less its size quantized). Each candidate's noise is measured with
//! its quantizer alone enabled; quantization noise adds up nearly independently, so candidates
//! are taken in order of noise per byte, as many at a time as their noise says the target needs,
//! and kept unless the model, with every raise kept so far, gets worse (then one at a time).
//! Activation ranges at 16 bits come from the same observers, without another pass over the
//! data.

use std::collections::HashMap;

use serde::Serialize;

use crate::calibrate::Ranges;
use crate::calibrated::Calibrated;
use crate::error::{Error, Result};
use crate::params::{params_reusing_weights, Params};
use crate::placement::Plan;
use crate::sensitivity::{Probe, Quantizer, Score, Sites};
use crate::settings::{Settings, Target};

/// The bit-width an activation is raised to.
const RAISED_BITS: u32 = 16;

/// What was raised and what it bought.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: Target,
    /// The model with every quantizer at the settings' precision.
    pub before: Score,
    /// The model with the raises below.
    pub after: Score,
    pub met: bool,
    /// The raises kept, in the order taken.
    pub steps: Vec<Step>,
    /// How many raises were measured.
    pub candidates: usize,
}

/// One raise kept.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub quantizer: Quantizer,
    /// The layer kept float, or the node producing the activation.
    pub node: String,
    pub change: Change,
    /// Bytes it adds: to the model for a float layer, per sample at run time for a 16-bit
    /// activation.
    pub bytes: usize,
    /// The score of the model with only this quantizer (its noise).
    pub alone: Score,
    /// The score with this raise and every one kept before it (raises measured together share
    /// it).
    pub after: Score,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The activation quantized with 16 bits.
    Bits16,
    /// The layer reading the weight kept float.
    Float,
}

/// The model as mixed precision leaves it.
pub struct Mixed {
    /// The settings with the raised activations in `activation_bits`.
    pub settings: Settings,
    /// The options' exclusions and the layers kept float.
    pub exclude: Vec<String>,
    pub plan: Plan,
    pub params: Params,
}

/// What choosing the next raises looks at.
struct Next<'a> {
    c: &'a Calibrated,
    probe: &'a Probe<'a>,
    mixed: &'a Mixed,
    candidates: &'a [Candidate],
    /// Each candidate's score alone.
    alone: &'a [Score],
    current: Score,
    target: Target,
}

impl Next<'_> {
    /// How many of `left` (candidates in order) to raise next, and the model with them; None
    /// when the first of them alone does not help. As many raises as the noise they remove says
    /// the target needs are measured together; then the fewest of them that still meet the
    /// target, or one alone if together they do not help.
    fn raises(&self, left: &[usize]) -> Result<(usize, Option<Measured>)> {
        let (current, target) = (&self.current, &self.target);
        let noises = left.iter().map(|&i| noise(&self.alone[i]));
        let mut take = enough(current, target, noises);
        // Noise does not always add up: raises that make the model worse are undone.
        let helps = |m: &Option<Measured>| {
            m.as_ref()
                .is_some_and(|m| gain(current, &m.3, target) >= 0.0)
        };
        let mut measured = self.measure(&left[..take])?;
        if !helps(&measured) && take > 1 {
            take = 1;
            measured = self.measure(&left[..1])?;
        }
        if !helps(&measured) {
            return Ok((take, None));
        }
        if take > 1 && measured.as_ref().is_some_and(|m| meets(&m.3, target)) {
            let (mut lo, mut hi) = (1, take);
            while lo < hi {
                let mid = (lo + hi) / 2;
                let m = self.measure(&left[..mid])?;
                if m.as_ref().is_some_and(|m| meets(&m.3, target)) {
                    (hi, measured) = (mid, m);
                } else {
                    lo = mid + 1;
                }
            }
            take = hi;
        }
        Ok((take, measured))
    }

    /// The model with the raises `chosen` added to those kept so far.
    fn measure(&self, chosen: &[usize]) -> Result<Option<Measured>> {
        let (s, e) = chosen.iter().fold(
            (self.mixed.settings.clone(), self.mixed.exclude.clone()),
            |(s, e), &i| raised(&s, &e, &self.candidates[i]),
        );
        let Some((plan, params)) = build(self.c, &s, &e)? else {
            return Ok(None);
        };
        let after = self.probe.score(&params)?;
        Ok(Some((s, e, (plan, params), after)))
    }
}

/// Raises measured together: the settings and exclusions with them, the plan and parameters,
/// and the score.
type Measured = (Settings, Vec<String>, (Plan, Params), Score);

/// A raise not yet taken.
struct Candidate {
    quantizer: Quantizer,
    node: String,
    change: Change,
    bytes: usize,
}

/// Raises quantizers of `c` until `probe` scores the model at `target`, or no raise is left.
///
/// `known` holds scores of the model with one quantizer alone already measured (by
/// `analyze`'s sensitivity pass): they are not measured again.
pub fn to_target(
    c: &Calibrated,
    probe: &Probe,
    (settings, exclude): (&Settings, &[String]),
    target: Target,
    known: &HashMap<Quantizer, Score>,
) -> Result<(Report, Mixed)> {
    let mut mixed = Mixed {
        settings: settings.clone(),
        exclude: exclude.to_vec(),
        plan: c.plan.clone(),
        params: c.params.clone(),
    };
    let before = probe.score(&c.params)?;
    if target.agreement.is_some() && before.agreement.is_none() {
        return Err(Error::new(
            &c.graph.source,
            "--target-agreement needs a first output whose last axis holds class scores",
        ));
    }
    let candidates = candidates(c, settings);
    // Each candidate's own noise: the model with only its quantizer. Quantization noise adds up
    // nearly independently, so removing the quantizers with the most noise per byte first is
    // the cheapest way to the target.
    let alone = alone_scores(c, &probe.first(RANKING_SAMPLES), &candidates, known)?;
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let per_byte = |i: usize| noise(&alone[i]) / candidates[i].bytes.max(1) as f64;
        per_byte(b).total_cmp(&per_byte(a)).then(a.cmp(&b))
    });
    let mut current = before;
    let mut steps = Vec::new();
    let mut left = &order[..];
    while !left.is_empty() && !meets(&current, &target) {
        let ctx = Next {
            c,
            probe,
            mixed: &mixed,
            candidates: &candidates,
            alone: &alone,
            current,
            target,
        };
        let (take, measured) = ctx.raises(left)?;
        if let Some((s, e, (plan, params), after)) = measured {
            (mixed.settings, mixed.exclude, mixed.plan, mixed.params) = (s, e, plan, params);
            current = after;
            steps.extend(left[..take].iter().map(|&i| Step {
                quantizer: candidates[i].quantizer.clone(),
                node: candidates[i].node.clone(),
                change: candidates[i].change,
                bytes: candidates[i].bytes,
                alone: alone[i],
                after,
            }));
        }
        left = &left[take..];
    }
    let report = Report {
        target,
        before,
        after: current,
        met: meets(&current, &target),
        steps,
        candidates: candidates.len(),
    };
    Ok((report, mixed))
}

/// The samples each candidate's noise alone is measured on, as `analyze`'s sensitivities: the
/// ranking needs the order of the noises, and every raise is measured on all the target's
/// samples before it is kept.
const RANKING_SAMPLES: usize = 8;

/// Each candidate's score alone on `probe`: from `known`, else measured, the candidates
/// sharing each sample's float run up to their quantizer ([`Probe::alone`]).
fn alone_scores(
    c: &Calibrated,
    probe: &Probe,
    candidates: &[Candidate],
    known: &HashMap<Quantizer, Score>,
) -> Result<Vec<Score>> {
    let unknown: Vec<Quantizer> = (candidates.iter())
        .map(|cand| cand.quantizer.clone())
        .filter(|q| !known.contains_key(q))
        .collect();
    let mut measured = probe.alone(&unknown, &c.plan, &c.params)?.into_iter();
    let scores = candidates.iter().map(|cand| {
        let known = known.get(&cand.quantizer).copied();
        known.or_else(|| measured.next())
    });
    let scores: Option<Vec<Score>> = scores.collect();
    scores.ok_or_else(|| Error::new(&c.graph.source, "a candidate was not scored"))
}

/// The noise-to-signal power ratio of a score: 10^(−SQNR/10).
fn noise(s: &Score) -> f64 {
    10f64.powf(-s.sqnr_db / 10.0)
}

/// How many of the next raises (their noise, in order) the target needs if noise adds up: the
/// fewest whose noise, removed from the model's, leaves it at the target SQNR; 1 for an
/// agreement target, and at least 1.
fn enough(current: &Score, t: &Target, noises: impl Iterator<Item = f64>) -> usize {
    let Some(want) = t.sqnr_db else {
        return 1;
    };
    let allowed = 10f64.powf(-want / 10.0);
    let mut left = noise(current);
    let mut n = 0;
    for x in noises {
        if left <= allowed {
            break;
        }
        left -= x;
        n += 1;
    }
    n.max(1)
}

/// Whether `s` is at the target.
fn meets(s: &Score, t: &Target) -> bool {
    let sqnr = t.sqnr_db.is_none_or(|want| s.sqnr_db >= want);
    let agreement = t
        .agreement
        .is_none_or(|want| s.agreement.is_some_and(|a| a >= want));
    sqnr && agreement
}

/// What `after` gained on `before` in the target's measure: SQNR dB when an SQNR is targeted,
/// else agreement.
fn gain(before: &Score, after: &Score, t: &Target) -> f64 {
    match (t.sqnr_db, before.agreement, after.agreement) {
        (None, Some(b), Some(a)) => a - b,
        _ => after.sqnr_db - before.sqnr_db,
    }
}

/// Every raise of `c`: each activation below 16 bits to 16 bits, each weight's layer to float.
fn candidates(c: &Calibrated, settings: &Settings) -> Vec<Candidate> {
    let sites = Sites::new(&c.graph, &c.plan);
    let activations = c
        .plan
        .activations
        .iter()
        .filter(|a| settings.activation_scheme(a).bits < RAISED_BITS)
        .map(|a| Candidate {
            quantizer: Quantizer::Activation(a.clone()),
            node: sites.of(&Quantizer::Activation(a.clone())).0.to_string(),
            change: Change::Bits16,
            bytes: c.sizes.get(a).copied().unwrap_or(1) * (RAISED_BITS - 8) as usize / 8,
        });
    let weights = c.plan.weights.iter().filter_map(|w| {
        let elements: usize = c.graph.find_initializer(&w.name)?.shape.iter().product();
        let bits = c.params.weight(&w.name)?.scheme.bits as usize;
        Some(Candidate {
            quantizer: Quantizer::Weight(w.name.clone()),
            node: w.node.clone(),
            change: Change::Float,
            bytes: elements * (32 - bits) / 8,
        })
    });
    activations.chain(weights).collect()
}

/// The settings and exclusions with `cand` raised.
fn raised(settings: &Settings, exclude: &[String], cand: &Candidate) -> (Settings, Vec<String>) {
    let (mut s, mut e) = (settings.clone(), exclude.to_vec());
    match cand.change {
        Change::Bits16 => s
            .activation_bits
            .push((cand.quantizer.name().to_string(), RAISED_BITS)),
        Change::Float => e.push(cand.node.clone()),
    }
    (s, e)
}

/// The score of `c` quantized with these settings and exclusions; None when the plan needs an
/// activation that was never observed.
pub fn score_with(
    c: &Calibrated,
    probe: &Probe,
    settings: &Settings,
    exclude: &[String],
) -> Result<Option<Score>> {
    build(c, settings, exclude)?
        .map(|(_, p)| probe.score(&p))
        .transpose()
}

/// The plan and parameters of `c` with these settings and exclusions: calibrated ranges where
/// the scheme is unchanged, ranges for the raised scheme from the same observers. None when the
/// plan needs an activation that was never observed.
fn build(
    c: &Calibrated,
    settings: &Settings,
    exclude: &[String],
) -> Result<Option<(Plan, Params)>> {
    let choices = crate::placement::Choices::of(settings, exclude);
    let plan = Plan::new(&c.graph, c.types.clone(), choices)?;
    let calibrated: HashMap<&str, (f32, f32)> =
        c.ranges.0.iter().map(|(n, r)| (n.as_str(), *r)).collect();
    let mut ranges = Vec::with_capacity(plan.activations.len());
    for a in &plan.activations {
        let raised = settings.activation_bits.iter().any(|(v, _)| v == a);
        let range = match (raised, calibrated.get(a.as_str()), c.observers.get(a)) {
            (false, Some(r), _) => *r,
            (_, _, Some(obs)) => {
                let scheme = settings.activation_scheme(a);
                (obs.ranges_by(&c.activation_method, &scheme))
                    .map_err(|e| Error::at(&c.graph.source, format!("activation '{a}'"), e))?[0]
            }
            (_, _, None) => return Ok(None),
        };
        ranges.push((a.clone(), range));
    }
    let params = params_reusing_weights(&c.graph, &plan, &Ranges(ranges), settings, &c.params)?;
    Ok(Some((plan, params)))
}
