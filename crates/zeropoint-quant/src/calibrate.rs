//! Calibration: the float model runs on the calibration data batch by batch, an observer per
//! planned activation watches every batch through the executor's hook, and each observer's
//! estimator (MSE, percentile, entropy, ...) then picks that activation's clipping range.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use zeropoint_core::observer::{Config, Method, Observer};
use zeropoint_engine::exec::HookError;
use zeropoint_engine::infer::{probe_with, Run};
use zeropoint_engine::{Executor, Value};
use zeropoint_graph::Graph;
use zeropoint_onnx::DType;

use crate::compare::next_batches;
use crate::dataset::{batch_for, Dataset};
use crate::error::{Error, Result};
use crate::placement::Plan;
use crate::settings::Settings;

/// The calibrated (clipping) range of every activation with its own observer, in plan order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ranges(pub Vec<(String, (f32, f32))>);

/// Streams `data` through the float model and returns each planned activation's range.
/// `progress` is called with the number of samples done after each batch.
pub fn calibrate(
    graph: &Graph,
    plan: &Plan,
    data: &mut Dataset,
    settings: &Settings,
    progress: &mut dyn FnMut(usize),
) -> Result<Ranges> {
    let observers = observe(graph, plan, data, settings, progress)?;
    ranges(graph, plan, &observers, settings)
}

/// Streams `data` through the float model, feeding an observer per planned activation.
pub fn observe(
    graph: &Graph,
    plan: &Plan,
    data: &mut Dataset,
    settings: &Settings,
    progress: &mut dyn FnMut(usize),
) -> Result<HashMap<String, Observer>> {
    observe_from(Vec::new(), graph, plan, data, settings, progress)
}

/// Calibration's threads: one per core, each observing whole batches; one for the moving
/// average, whose result depends on the order of the batches. Every other observer merges
/// exactly (docs/ranges.md).
pub fn workers(settings: &Settings) -> usize {
    match settings.activation_method {
        Method::MovingAverage { .. } => 1,
        _ => rayon::current_num_threads().max(1),
    }
}

/// An observer per activation of `watched`.
fn fresh_observers(
    graph: &Graph,
    watched: &[String],
    settings: &Settings,
) -> Result<HashMap<String, Observer>> {
    let config = Config::new(settings.activation_method);
    watched
        .iter()
        .map(|a| {
            let obs = Observer::new(config)
                .map_err(|e| Error::at(&graph.source, "the activation range estimator", e))?;
            Ok((a.clone(), obs))
        })
        .collect()
}

/// The probe that placement needs (every value's element type and shape, on the first batch)
/// run as calibration's first round: beside it each other thread observes a batch of its own,
/// and the probe's run feeds observers too. Placement is not known yet, so the observers are
/// those of `watched`, a plan made before the types were: [`FirstRound::observers_for`] keeps
/// what the real plan needs. The probe alone was one model run in 33 of quantizing ppocr-v3-det
/// on 16 samples (16 to calibrate, 8 float and 8 simulated to report), with the second core
/// mostly idle.
pub struct FirstRound {
    /// Per batch, in order, its observers.
    sets: Vec<HashMap<String, Observer>>,
    /// Values an observer refused (a NaN or ±Inf): a plan that needs one calibrates anew, and
    /// fails there as it always did.
    refused: HashSet<String>,
}

impl FirstRound {
    /// Runs `batches` (the first is the probe's; at least one) in parallel. Returns each
    /// value's element type and shape in the probe, as [`zeropoint_engine::infer::probe_on`],
    /// and the round.
    pub fn run(
        graph: &Graph,
        watched: &[String],
        batches: Vec<HashMap<String, Value>>,
        settings: &Settings,
    ) -> Result<(Run, FirstRound)> {
        let exec = Executor::new(graph)?;
        let fresh = || fresh_observers(graph, watched, settings);
        let sets: Vec<HashMap<String, Observer>> =
            batches.iter().map(|_| fresh()).collect::<Result<_>>()?;
        let runs: Vec<Result<_>> = batches
            .into_par_iter()
            .zip(sets)
            .enumerate()
            .map(|(i, (batch, mut observers))| {
                let mut refused = HashSet::new();
                let mut watch = |name: &str, v: &Value| {
                    let Some(obs) = observers.get_mut(name) else {
                        return;
                    };
                    let taken = v.dtype == DType::F32
                        && !refused.contains(name)
                        && matches!(v.with_f32s(|x| obs.update(x, v.shape())), Ok(Ok(())));
                    if !taken {
                        refused.insert(name.to_string());
                    }
                };
                let seen = if i == 0 {
                    Some(probe_with(&exec, batch, &mut watch)?)
                } else {
                    exec.run_with(batch, &mut |name, v| {
                        watch(name, &v);
                        Ok(v)
                    })?;
                    None
                };
                Ok((seen, observers, refused))
            })
            .collect::<Vec<Result<_>>>();
        let mut seen = Run::new();
        let mut round = FirstRound {
            sets: Vec::new(),
            refused: HashSet::new(),
        };
        // In batch order: where several fail, the error is the first batch's (the probe's,
        // which names shape inference), whatever thread finished first.
        for run in runs {
            let (probed, observers, refused) = run?;
            seen.extend(probed.unwrap_or_default());
            round.sets.push(observers);
            round.refused.extend(refused);
        }
        Ok((seen, round))
    }

    /// The observers of `plan`'s activations, one set per batch; None when the plan needs one
    /// that was not watched or that refused its batch.
    pub fn observers_for(self, plan: &Plan) -> Option<Vec<HashMap<String, Observer>>> {
        let watched = |a: &String| self.sets.iter().all(|s| s.contains_key(a));
        if !plan
            .activations
            .iter()
            .all(|a| watched(a) && !self.refused.contains(a))
        {
            return None;
        }
        let planned: HashSet<&String> = plan.activations.iter().collect();
        let mut sets = self.sets;
        for set in &mut sets {
            set.retain(|name, _| planned.contains(name));
        }
        Some(sets)
    }
}

/// [`observe`], going on from `first`: observers already fed with the batches before those left
/// in `data`, merged in.
pub fn observe_from(
    first: Vec<HashMap<String, Observer>>,
    graph: &Graph,
    plan: &Plan,
    data: &mut Dataset,
    settings: &Settings,
    progress: &mut dyn FnMut(usize),
) -> Result<HashMap<String, Observer>> {
    let exec = Executor::new(graph)?;
    let fresh = || fresh_observers(graph, &plan.activations, settings);
    // Each thread runs its own slice of every batch into its own observers, merged at the end:
    // the executor's operators scale poorly across threads on small images, whole samples do.
    let workers = workers(settings);
    let mut sets = first;
    while sets.len() < workers {
        sets.push(fresh()?);
    }
    loop {
        // One batch per thread.
        let batches = next_batches(data, batch_for(&graph.inputs, settings.batch), workers)?;
        if batches.is_empty() {
            break;
        }
        sets.par_iter_mut()
            .zip(batches)
            .try_for_each(|(observers, batch)| {
                exec.run_with(batch, &mut |name, v| {
                    if let Some(obs) = observers.get_mut(name) {
                        v.with_f32s(|x| observe_finite(obs, x, v.shape()))??;
                    }
                    Ok(v)
                })
                .map(|_| ())
            })?;
        progress(data.consumed());
    }
    let mut observers = sets.remove(0);
    for other in sets {
        for (name, obs) in observers.iter_mut() {
            if let Some(o) = other.get(name).filter(|o| o.state_bytes() > 0) {
                obs.merge(o)
                    .map_err(|e| Error::at(&graph.source, format!("activation '{name}'"), e))?;
            }
        }
    }
    Ok(observers)
}

/// Feeds one activation to its observer; NaN or ±Inf stops calibration (the data is wrong).
/// Every observer refuses a batch holding one before taking any of it, so the search for the
/// value to name runs only then (a pass of its own over every activation was 1.7 % of
/// quantizing ddddocr-det).
fn observe_finite(obs: &mut Observer, x: &[f32], shape: &[usize]) -> Result<(), HookError> {
    obs.update(x, shape)
        .map_err(|e| match zeropoint_core::kernel::first_non_finite(x) {
            Some(bad) => {
                format!("activation has a non-finite value ({bad}): check the data").into()
            }
            None => e.into(),
        })
}

/// Each observer's range for the activation scheme. Range searches (MSE, entropy) are
/// independent and can take milliseconds each: they run in parallel.
pub fn ranges(
    graph: &Graph,
    plan: &Plan,
    observers: &HashMap<String, Observer>,
    settings: &Settings,
) -> Result<Ranges> {
    let ranges: Vec<(f32, f32)> = plan
        .activations
        .par_iter()
        .map(|a| {
            let obs = observers.get(a).ok_or_else(|| {
                Error::new(
                    &graph.source,
                    format!("activation '{a}' was never computed"),
                )
            })?;
            obs.ranges(&settings.activation_scheme(a))
                .map(|r| r[0])
                .map_err(|e| Error::at(&graph.source, format!("activation '{a}'"), e))
        })
        .collect::<Result<_>>()?;
    Ok(Ranges(
        plan.activations.iter().cloned().zip(ranges).collect(),
    ))
}
