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

/// How many float values the float run may be ahead of the compared one: the reference values
/// held at any time, instead of every tracked value of the batch.
const LOOKAHEAD: usize = 4;

/// One batch through the float model and the compared one: both outputs, and the errors of the
/// values in `names` against the float run.
pub fn compare_batch(
    float: &Executor,
    other: &RunWith,
    names: &[String],
    b: Batch,
) -> Result<Compared> {
    let mut layers = LayerErrors::new(names.to_vec());
    let (fo, qo) = lockstep(float, other, names, b, &mut |name, r, v| {
        layers.measure(name, r, &v)?;
        Ok(v)
    })?;
    Ok(Compared {
        float: fo,
        other: qo,
        layers,
    })
}

/// What [`lockstep`] calls with each tracked value: its name, the float run's value and the
/// compared run's; returns the value the compared run goes on with.
pub type OnValue<'a> = dyn FnMut(&str, &Value, Value) -> std::result::Result<Value, HookError> + 'a;

/// One batch through the float model and the compared one, both outputs; `on_value` sees each
/// value of `names` of both runs as the compared run produces it.
///
/// The two runs go in lockstep on two threads: the float run hands each tracked value over as
/// it is produced, and the compared run takes it and drops it, so memory holds a few reference
/// values rather than all of a batch's (the per-layer report of a 416×416 detector held 330 MB
/// of them). Called from a thread of rayon's pool, the runs go one after the other instead.
pub fn lockstep(
    float: &Executor,
    other: &RunWith,
    names: &[String],
    b: Batch,
    on_value: &mut OnValue,
) -> Result<(Outputs, Outputs)> {
    let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
    let float_run = |b: Batch, send: &dyn Fn(String, Value)| {
        float.run_with(b, &mut |name, v| {
            if wanted.contains(name) && v.dtype.is_float() {
                send(name.to_string(), v.clone());
            }
            Ok(v)
        })
    };
    let mut compared_run = |references: &mut References, b: Batch| {
        other(b, &mut |name, v| {
            if !wanted.contains(name) {
                return Ok(v);
            }
            match references.take(name) {
                Some(r) => on_value(name, &r, v),
                None => Ok(v),
            }
        })
    };
    if rayon::current_thread_index().is_some() {
        // A thread of the pool must not wait on another thread (the float run's operators need
        // the pool): the float run goes first and its values wait in memory.
        let (tx, rx) = std::sync::mpsc::channel();
        let fo = float_run(b.clone(), &|n, v| drop(tx.send((n, v))));
        drop(tx);
        let qo = compared_run(&mut References::new(rx), b);
        return Ok((fo?, qo?));
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(LOOKAHEAD);
    std::thread::scope(|s| {
        let fb = b.clone();
        let float_thread = s.spawn(move || {
            // The compared run may have stopped (an error): nothing more to hand over.
            float_run(fb, &|n, v| drop(tx.send((n, v))))
        });
        let mut references = References::new(rx);
        let qo = compared_run(&mut references, b);
        // Unblocks the float run if the compared one stopped early.
        drop(references);
        let fo = float_thread.join().expect("the float run does not panic");
        Ok((fo?, qo?))
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

/// The float run's values, received in the order it produced them, looked up by name; values
/// the compared run asks for later (or never: a branch the float run did not take) are kept
/// aside.
struct References {
    rx: std::sync::mpsc::Receiver<(String, Value)>,
    aside: HashMap<String, VecDeque<Value>>,
}

impl References {
    fn new(rx: std::sync::mpsc::Receiver<(String, Value)>) -> References {
        References {
            rx,
            aside: HashMap::new(),
        }
    }

    /// The next float value of `name`, if the float run produces one.
    fn take(&mut self, name: &str) -> Option<Value> {
        if let Some(v) = self.aside.get_mut(name).and_then(|q| q.pop_front()) {
            return Some(v);
        }
        while let Ok((n, v)) = self.rx.recv() {
            if n == name {
                return Some(v);
            }
            self.aside.entry(n).or_default().push_back(v);
        }
        None
    }
}
