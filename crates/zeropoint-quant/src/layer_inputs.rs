//! The values some layers read, streamed over calibration data: the float model runs batch by
//! batch (as many batches at once as the thread pool has threads), each wanted value is reduced
//! to a summary per batch, and the summaries are merged in batch order, so that what is
//! collected does not depend on the thread count. GPTQ's Hessians and SmoothQuant's channel
//! statistics are gathered this way.

use std::collections::HashMap;

use rayon::prelude::*;
use zeropoint_engine::Executor;
use zeropoint_graph::Graph;

use crate::compare::next_batches;
use crate::dataset::Dataset;
use crate::error::Result;

/// Reduces one batch's value (its f32s, and K) to a summary, or says what is wrong with it.
pub type Summary<'a, T> = dyn Fn(&[f32], usize) -> std::result::Result<T, String> + Sync + 'a;

/// Runs `graph` over `data` in batches of `batch` samples; `summary(x, k)` reduces each batch's
/// value of every wanted input (name → K, the layer's input width) and `merge(name, summary)`
/// takes the summaries in batch order. `progress(done, total)` follows the samples.
pub fn summarize<T: Send>(
    graph: &Graph,
    wanted: &HashMap<&str, usize>,
    (data, batch): (&mut Dataset, usize),
    summary: &Summary<'_, T>,
    merge: &mut dyn FnMut(String, T),
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let exec = Executor::new(graph)?;
    let workers = rayon::current_num_threads().max(1);
    let len = data.len;
    loop {
        let batches = next_batches(data, batch.max(1), workers)?;
        if batches.is_empty() {
            return Ok(());
        }
        let parts: Vec<Vec<(String, T)>> = batches
            .into_par_iter()
            .map(|b| {
                let mut part = Vec::new();
                exec.run_with(b, &mut |name, v| {
                    if let Some(&k) = wanted.get(name) {
                        part.push((name.to_string(), v.with_f32s(|x| summary(x, k))??));
                    }
                    Ok(v)
                })?;
                Ok(part)
            })
            .collect::<Result<_>>()?;
        for (name, s) in parts.into_iter().flatten() {
            merge(name, s);
        }
        progress(data.consumed(), len);
    }
}

/// Whether `x` is rows of `k` finite values, as a layer with `k` inputs reads them; what is
/// wrong, if not (the executor names the value).
pub fn check_rows(x: &[f32], k: usize) -> std::result::Result<(), String> {
    if k == 0 || !x.len().is_multiple_of(k) {
        return Err(format!(
            "has {} values, not rows of the weight's {k} inputs",
            x.len()
        ));
    }
    match x.iter().find(|v| !v.is_finite()) {
        Some(bad) => Err(format!("has a non-finite value ({bad}): check the data")),
        None => Ok(()),
    }
}
