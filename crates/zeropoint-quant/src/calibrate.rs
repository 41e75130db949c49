//! Calibration: the float model runs on the calibration data batch by batch, an observer per
//! planned activation watches every batch through the executor's hook, and each observer's
//! estimator (MSE, percentile, entropy, ...) then picks that activation's clipping range.

use std::collections::HashMap;

use rayon::prelude::*;

use zeropoint_core::observer::{Config, Method, Observer};
use zeropoint_engine::exec::HookError;
use zeropoint_engine::Executor;
use zeropoint_graph::Graph;

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
    let exec = Executor::new(graph)?;
    let config = Config::new(settings.activation_method);
    let fresh = || -> Result<HashMap<String, Observer>> {
        plan.activations
            .iter()
            .map(|a| {
                let obs = Observer::new(config)
                    .map_err(|e| Error::at(&graph.source, "the activation range estimator", e))?;
                Ok((a.clone(), obs))
            })
            .collect()
    };
    // Each thread runs its own slice of every batch into its own observers, merged at the end:
    // the executor's operators scale poorly across threads on small images, whole samples do.
    // Observers merge exactly (docs/ranges.md), except the moving average, which depends on the
    // batch order and so runs on one slice.
    let workers = match settings.activation_method {
        Method::MovingAverage { .. } => 1,
        _ => rayon::current_num_threads().max(1),
    };
    let mut sets: Vec<HashMap<String, Observer>> =
        (0..workers).map(|_| fresh()).collect::<Result<_>>()?;
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
