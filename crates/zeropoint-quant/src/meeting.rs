//! Runs of several samples that wait for each other at named values: each sample hands over its
//! part, the last to arrive combines all parts (in sample order, so the result does not depend
//! on which thread came first) and every sample goes on with the combined result. Bias
//! correction pools each layer's output error this way: it needs the whole calibration set's
//! statistics of a layer before any sample may go past it. Every sample's activations are held
//! meanwhile; AdaRound, which is run on more samples, steps paused runs instead
//! ([`crate::paused_runs`]).

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use zeropoint_engine::exec::HookError;
use zeropoint_engine::{Executor, Value};
use zeropoint_graph::Graph;

use crate::compare::{lockstep, Batch};
use crate::error::Result;
use crate::params::Params;
use crate::simulate::Simulation;

/// Runs every sample through the float model and the simulation of `graph` with `params` in
/// lockstep, each on its own thread, and hands sample i's values of `names` (the simulated ones
/// before their own quantizers) to the callback `each(i)` makes, which returns the simulated
/// value to go on with; the callbacks meet through `meeting`. Whatever stops a sample's run (an
/// error, a panic), the others stop waiting for it.
pub fn simulate_each<P: Send, R: Clone + Send, F>(
    graph: &Graph,
    params: &Params,
    samples: Vec<Batch>,
    names: &[String],
    meeting: &Meeting<P, R>,
    each: impl Fn(usize) -> F + Sync,
) -> Result<()>
where
    F: FnMut(&str, &Value, Value) -> std::result::Result<Value, HookError>,
{
    let float = Executor::new(graph)?;
    let sim = Simulation::sharing(graph, params, float.initializer_values())?;
    let quantized = |b, hook: &mut zeropoint_engine::exec::Hook| sim.run_before_quant(b, hook);
    run_each(samples, |i, sample| {
        let _leaving = Leaving(meeting);
        let mut on_value = each(i);
        lockstep(&float, &quantized, names, sample, &mut on_value).map(drop)
    })
}

/// The meeting of `samples` runs.
pub struct Meeting<P, R> {
    samples: usize,
    state: Mutex<State<P, R>>,
    arrived: Condvar,
}

struct State<P, R> {
    /// Per value: each sample's part as it arrives, then the combined result.
    values: HashMap<String, (Vec<Option<P>>, Option<R>)>,
    /// Samples whose run has stopped (finished or failed).
    left: usize,
}

impl<P, R: Clone> Meeting<P, R> {
    pub fn new(samples: usize) -> Self {
        Meeting {
            samples,
            state: Mutex::new(State {
                values: HashMap::new(),
                left: 0,
            }),
            arrived: Condvar::new(),
        }
    }

    /// Hands over sample `i`'s part for `name` and waits for the others; the last to arrive
    /// runs `combine` on every part, in sample order. Returns the combined result.
    pub fn pool(
        &self,
        name: &str,
        i: usize,
        part: P,
        combine: impl FnOnce(Vec<P>) -> std::result::Result<R, HookError>,
    ) -> std::result::Result<R, HookError> {
        let stopped = || -> HookError { "another sample's run stopped".into() };
        let mut st = self.state.lock().map_err(|_| stopped())?;
        let n = self.samples;
        let entry = st
            .values
            .entry(name.to_string())
            .or_insert_with(|| ((0..n).map(|_| None).collect(), None));
        entry.0[i] = Some(part);
        if entry.0.iter().all(Option::is_some) {
            let parts = entry.0.iter_mut().filter_map(Option::take).collect();
            // Combining may take long (an optimization): the others wait on the condition.
            entry.1 = Some(combine(parts)?);
            self.arrived.notify_all();
        }
        loop {
            if let Some(r) = st.values.get(name).and_then(|e| e.1.clone()) {
                return Ok(r);
            }
            if st.left > 0 {
                return Err(stopped());
            }
            st = self.arrived.wait(st).map_err(|_| stopped())?;
        }
    }

    /// The combined result of each of `names` that every sample reached, in that order.
    pub fn into_results(self, names: &[String]) -> Vec<(String, R)> {
        let Ok(mut st) = self.state.into_inner() else {
            return Vec::new();
        };
        names
            .iter()
            .filter_map(|n| Some((n.clone(), st.values.remove(n)?.1?)))
            .collect()
    }

    /// A sample's run has stopped. Values it has not pooled can never complete: whoever waits
    /// for one is released with an error (a run that finished pooled every value).
    fn leave(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.left += 1;
        }
        self.arrived.notify_all();
    }
}

/// Ends a sample's part in a [`Meeting`] when dropped, however its run stopped (an error, a
/// panic): the others then stop waiting for it.
struct Leaving<'a, P, R: Clone>(&'a Meeting<P, R>);

impl<P, R: Clone> Drop for Leaving<'_, P, R> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// Runs `run(i, sample)` for every sample, each on its own thread (they meet through a
/// [`Meeting`] that `run` holds), and returns the first error in sample order.
fn run_each<T: Send, E: Send>(
    samples: Vec<T>,
    run: impl Fn(usize, T) -> std::result::Result<(), E> + Sync,
) -> std::result::Result<(), E> {
    std::thread::scope(|s| {
        let run = &run;
        let threads: Vec<_> = samples
            .into_iter()
            .enumerate()
            .map(|(i, sample)| s.spawn(move || run(i, sample)))
            .collect();
        threads
            .into_iter()
            .try_for_each(|t| t.join().expect("a sample's run does not panic"))
    })
}
