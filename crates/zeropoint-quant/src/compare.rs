//! A float model against another run of it (quantized, simulated), batch by batch: both runs'
//! outputs, and the error of every tracked value against the float run.

use std::collections::{HashMap, HashSet, VecDeque};

use zeropoint_core::metrics::Running;
use zeropoint_engine::exec::{Hook, HookError};
use zeropoint_engine::{Executor, Value};

use crate::dataset::Dataset;
use crate::error::Result;

/// A batch of model inputs, by input name.
pub type Batch = HashMap<String, Value>;

/// A run's graph outputs, in order.
pub type Outputs = Vec<(String, Value)>;

/// The error of one value of a run against the float run.
#[derive(Debug, Clone, Default)]
pub struct LayerError {
    pub value: String,
    pub error: Running,
}

/// Error per named value of one run against a float reference, accumulated batch by batch.
pub struct LayerErrors {
    /// The tracked names, in report order.
    names: Vec<String>,
    acc: HashMap<String, Running>,
}

impl LayerErrors {
    pub fn new(names: Vec<String>) -> LayerErrors {
        let acc = names
            .iter()
            .map(|n| (n.clone(), Running::default()))
            .collect();
        LayerErrors { names, acc }
    }

    /// Adds the error of `v` against the float run's value `r` of the tracked value `name`.
    pub(crate) fn measure(
        &mut self,
        name: &str,
        r: &Value,
        v: &Value,
    ) -> zeropoint_engine::Result<()> {
        if let Some(a) = self.acc.get_mut(name) {
            r.with_f32s(|r| v.with_f32s(|x| a.add(r, x)))??;
        }
        Ok(())
    }

    /// Adds the errors `other` accumulated (over later samples: merge in sample order).
    pub fn merge(&mut self, other: &LayerErrors) {
        for (name, a) in self.acc.iter_mut() {
            if let Some(o) = other.acc.get(name) {
                a.merge(o);
            }
        }
    }

    /// The errors in report order.
    pub fn into_list(self) -> Vec<LayerError> {
        let acc = self.acc;
        self.names
            .into_iter()
            .map(|n| LayerError {
                error: acc[&n],
                value: n,
            })
            .collect()
    }
}

/// A batch's float outputs, compared outputs, and layer errors.
pub struct Compared {
    pub float: Outputs,
    pub other: Outputs,
    pub layers: LayerErrors,
}

/// How the compared model runs a batch: an executor's or a simulation's `run_with`.
pub type RunWith<'a> = dyn Fn(Batch, &mut Hook) -> Result<Outputs> + Sync + 'a;

/// One batch through the float model and the compared one: both outputs, and the errors of the
/// values in `names` against the float run.
pub fn compare_batch(
    float: &Executor,
    other: &RunWith,
    names: &[String],
    b: Batch,
) -> Result<Compared> {
    let mut layers = LayerErrors::new(names.to_vec());
    let (fo, qo) = both_runs(float, other, names, b, &mut |name, r, v| {
        layers.measure(name, r, &v)?;
        Ok(v)
    })?;
    Ok(Compared {
        float: fo,
        other: qo,
        layers,
    })
}

/// What [`both_runs`] calls with each tracked value: its name, the float run's value and the
/// compared run's; returns the value the compared run goes on with.
pub type OnValue<'a> = dyn FnMut(&str, &Value, Value) -> std::result::Result<Value, HookError> + 'a;

/// One batch through the float model, then the compared one (a different graph: an exported
/// model, whose values are matched by name), both outputs; `on_value` sees each value of `names`
/// of both runs as the compared run produces it. The float run's tracked values wait in memory
/// for their twins; the per-layer report, whose two graphs have the same nodes, steps them side
/// by side instead and holds one node's values ([`crate::report`]).
pub fn both_runs(
    float: &Executor,
    other: &RunWith,
    names: &[String],
    b: Batch,
    on_value: &mut OnValue,
) -> Result<(Outputs, Outputs)> {
    let mut references = References::new(names);
    let fo = float.run_with(b.clone(), &mut |name, v| Ok(references.hold(name, v)))?;
    let qo = other(b, &mut |name, v| match references.take(name) {
        Some(r) => on_value(name, &r, v),
        None => Ok(v),
    })?;
    Ok((fo, qo))
}

/// The float run's values of the tracked names, waiting for their twins in the compared run:
/// by name, in the order produced (a Loop body's iterations). A value the compared run never
/// asks for (the other branch of an If) is never compared.
pub(crate) struct References<'a> {
    wanted: HashSet<&'a str>,
    held: HashMap<String, VecDeque<Value>>,
}

impl<'a> References<'a> {
    pub(crate) fn new(names: &'a [String]) -> References<'a> {
        References {
            wanted: names.iter().map(String::as_str).collect(),
            held: HashMap::new(),
        }
    }

    /// Keeps `v` if it is a tracked float value; returns it to the run either way.
    pub(crate) fn hold(&mut self, name: &str, v: Value) -> Value {
        if self.wanted.contains(name) && v.dtype.is_float() {
            let waiting = self.held.entry(name.to_string()).or_default();
            waiting.push_back(v.clone());
        }
        v
    }

    /// The oldest float value of `name` not yet taken.
    pub(crate) fn take(&mut self, name: &str) -> Option<Value> {
        self.held.get_mut(name).and_then(VecDeque::pop_front)
    }

    /// Drops what is held.
    pub(crate) fn clear(&mut self) {
        self.held.clear();
    }
}

/// Up to `n` batches of `size` samples (fewer at the end of the data, none after it).
pub fn next_batches(data: &mut Dataset, size: usize, n: usize) -> Result<Vec<Batch>> {
    let mut batches = Vec::with_capacity(n);
    while batches.len() < n {
        match data.next_batch(size)? {
            Some(b) => batches.push(b),
            None => break,
        }
    }
    Ok(batches)
}
