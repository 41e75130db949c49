//! A float model against another run of it (quantized, simulated), batch by batch: both runs'
//! outputs, and the error of every tracked value against the float run.

use std::collections::HashMap;

use zeropoint_core::metrics::Running;
use zeropoint_engine::exec::Hook;
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

/// Error per named value of one run against a float reference, batch by batch: the float run
/// records the values, the other run is measured against them.
pub struct LayerErrors {
    /// The tracked names, in report order.
    names: Vec<String>,
    acc: HashMap<String, Running>,
    /// The float run's values of the current batch (tensors are shared, not copied).
    reference: HashMap<String, Value>,
}

impl LayerErrors {
    pub fn new(names: Vec<String>) -> LayerErrors {
        let acc = names
            .iter()
            .map(|n| (n.clone(), Running::default()))
            .collect();
        LayerErrors {
            names,
            acc,
            reference: HashMap::new(),
        }
    }

    /// Hook for the float run: keeps the value if it is tracked.
    fn record(&mut self, name: &str, v: &Value) {
        if self.acc.contains_key(name) && v.dtype.is_float() {
            self.reference.insert(name.to_string(), v.clone());
        }
    }

    /// Hook for the other run: adds the value's error against the recorded one.
    fn measure(&mut self, name: &str, v: &Value) -> zeropoint_engine::Result<()> {
        if let (Some(r), Some(a)) = (self.reference.get(name), self.acc.get_mut(name)) {
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
    let fo = float.run_with(b.clone(), &mut |name, v| {
        layers.record(name, &v);
        Ok(v)
    })?;
    let qo = other(b, &mut |name, v| {
        layers.measure(name, &v)?;
        Ok(v)
    })?;
    Ok(Compared {
        float: fo,
        other: qo,
        layers,
    })
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
