//! Float model against quantized model on the same data: top-1/top-5 accuracy when labels
//! exist, agreement of the argmax, output SQNR and cosine similarity per sample, and SQNR per
//! layer for every value both graphs compute under the same name (in a QDQ model the layers keep
//! their float names; only the Q/DQ pairs are new).

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::error::FileError;
use crate::exec::Executor;
use crate::graph::Graph;
use zeropoint_core::metrics::{compare, Running};

/// What the comparison found.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub samples: usize,
    /// The output compared (the first float graph output).
    pub output: String,
    /// Correct top-1 and top-5 predictions (float, quantized), when labels were given.
    pub top1: Option<(usize, usize)>,
    pub top5: Option<(usize, usize)>,
    /// Samples on which both models pick the same class.
    pub agree: usize,
    pub output_sqnr: Running,
    /// Per-sample cosine similarity of the output rows: mean and minimum.
    pub cosine_mean: f64,
    pub cosine_min: f64,
    pub layers: Vec<(String, Running)>,
}

/// Error per named value of one model against a float reference, batch by batch: the float
/// run records the values, the other run is measured against them.
pub(crate) struct LayerErrors {
    /// The tracked names, in report order.
    names: Vec<String>,
    acc: HashMap<String, Running>,
    /// The float run's values of the current batch (tensors are shared, not copied).
    reference: HashMap<String, crate::Value>,
}

impl LayerErrors {
    pub(crate) fn new(names: Vec<String>) -> LayerErrors {
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
    pub(crate) fn record(&mut self, name: &str, v: &crate::Value) -> Result<(), String> {
        if self.acc.contains_key(name) && v.dtype.is_float() {
            self.reference.insert(name.to_string(), v.clone());
        }
        Ok(())
    }

    /// Hook for the other run: adds the value's error against the recorded one.
    pub(crate) fn measure(&mut self, name: &str, v: &crate::Value) -> Result<(), String> {
        if let (Some(r), Some(a)) = (self.reference.get(name), self.acc.get_mut(name)) {
            r.with_f32s(|r| v.with_f32s(|x| a.add(r, x)))??;
        }
        Ok(())
    }

    /// Adds the errors `other` accumulated (over later samples: merge in sample order).
    pub(crate) fn merge(&mut self, other: &LayerErrors) {
        for (name, a) in self.acc.iter_mut() {
            if let Some(o) = other.acc.get(name) {
                a.merge(o);
            }
        }
    }

    pub(crate) fn into_list(self) -> Vec<(String, Running)> {
        let acc = self.acc;
        self.names
            .into_iter()
            .map(|n| (n.clone(), acc[&n]))
            .collect()
    }
}

/// Runs the quantized model in another runtime: a batch in, the graph outputs out.
pub type Runtime<'a> = &'a mut dyn FnMut(
    HashMap<String, crate::Value>,
) -> Result<Vec<(String, crate::Value)>, FileError>;

/// Runs both models over `data` (batch by batch) and compares them. The quantized model runs in
/// zeropoint's executor, or in `runtime` when given (then without per-layer comparison).
pub fn evaluate(
    float: &Graph,
    quant: &Graph,
    data: &mut Dataset,
    labels: Option<&[i64]>,
    batch: usize,
    mut runtime: Option<Runtime>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Evaluation, FileError> {
    let (fe, qe) = (Executor::new(float)?, Executor::new(quant)?);
    let output = float
        .outputs
        .iter()
        .find(|o| o.dtype.is_none_or(|d| d.is_float()))
        .ok_or_else(|| FileError::new(&float.source, "the model has no float output to compare"))?
        .name
        .clone();
    if !quant.outputs.iter().any(|o| o.name == output) {
        return Err(FileError::new(
            &quant.source,
            format!("the quantized model has no output '{output}'"),
        ));
    }
    if let Some(l) = labels {
        if l.len() < data.len {
            return Err(FileError::new(
                &float.source,
                format!("{} labels for {} samples", l.len(), data.len),
            ));
        }
    }
    let produced: HashSet<&str> = quant
        .nodes
        .iter()
        .flat_map(|n| n.outputs.iter().map(String::as_str))
        .filter(|_| runtime.is_none())
        .collect();
    let common: Vec<String> = float
        .nodes
        .iter()
        .flat_map(|n| n.outputs.iter())
        .filter(|o| produced.contains(o.as_str()))
        .cloned()
        .collect();
    let mut layers = LayerErrors::new(common.clone());
    let mut e = Evaluation {
        output: output.clone(),
        cosine_min: f64::INFINITY,
        top1: labels.map(|_| (0, 0)),
        top5: labels.map(|_| (0, 0)),
        ..Default::default()
    };
    let mut cosine_sum = 0.0;
    // zeropoint's executors run several batches at once, each into its own layer errors, merged
    // in batch order; another runtime runs one batch at a time.
    let workers = match runtime {
        Some(_) => 1,
        None => rayon::current_num_threads().max(1),
    };
    loop {
        let batches = next_batches(data, batch, workers)?;
        if batches.is_empty() {
            break;
        }
        let runs: Vec<Compared> = match runtime.as_mut() {
            Some(run) => batches
                .into_iter()
                .map(|b| -> Result<Compared, FileError> {
                    Ok((fe.run(b.clone())?, run(b)?, LayerErrors::new(vec![])))
                })
                .collect::<Result<_, FileError>>()?,
            None => batches
                .into_par_iter()
                .map(|b| compare_batch(&fe, &|b, hook| qe.run_with(b, hook), &common, b))
                .collect::<Result<_, FileError>>()?,
        };
        for (fo, qo, batch_layers) in runs {
            layers.merge(&batch_layers);
            e.compare_outputs(&fo, &qo, &output, labels, &mut cosine_sum, quant)?;
        }
        progress(e.samples, data.len);
    }
    e.cosine_mean = cosine_sum / e.samples.max(1) as f64;
    e.layers = layers.into_list();
    Ok(e)
}

/// A batch's float outputs, quantized outputs, and layer errors.
pub(crate) type Compared = (Outputs, Outputs, LayerErrors);

type Outputs = Vec<(String, crate::Value)>;

type Batch = HashMap<String, crate::Value>;

/// How the compared model runs a batch: an executor's or a simulation's `run_with`.
pub(crate) type RunWith<'a> = dyn Fn(
        Batch,
        &mut dyn FnMut(&str, crate::Value) -> Result<crate::Value, String>,
    ) -> Result<Outputs, FileError>
    + Sync
    + 'a;

/// One batch through the float model and the compared one: both outputs, and the errors of the
/// values in `names` against the float run.
pub(crate) fn compare_batch(
    float: &Executor,
    quant: &RunWith,
    names: &[String],
    b: Batch,
) -> Result<Compared, FileError> {
    let mut layers = LayerErrors::new(names.to_vec());
    let fo = float.run_with(b.clone(), &mut |name, v| {
        layers.record(name, &v)?;
        Ok(v)
    })?;
    let qo = quant(b, &mut |name, v| {
        layers.measure(name, &v)?;
        Ok(v)
    })?;
    Ok((fo, qo, layers))
}

/// Up to `n` batches of `size` samples (fewer at the end of the data, none after it).
pub(crate) fn next_batches(
    data: &mut Dataset,
    size: usize,
    n: usize,
) -> Result<Vec<Batch>, FileError> {
    let mut batches = Vec::with_capacity(n);
    while batches.len() < n {
        match data.next_batch(size)? {
            Some(b) => batches.push(b),
            None => break,
        }
    }
    Ok(batches)
}

impl Evaluation {
    /// Adds one batch's outputs: SQNR, per-row cosine, argmax agreement, top-1/top-5.
    fn compare_outputs(
        &mut self,
        fo: &Outputs,
        qo: &Outputs,
        output: &str,
        labels: Option<&[i64]>,
        cosine_sum: &mut f64,
        quant: &Graph,
    ) -> Result<(), FileError> {
        let e = self;
        let pick = |outs: &[(String, crate::Value)]| -> Result<(Vec<f32>, Vec<usize>), FileError> {
            let v = &outs
                .iter()
                .find(|(n, _)| *n == output)
                .expect("checked above")
                .1;
            let x = v.to_f32s().map_err(|m| FileError::new(&quant.source, m))?;
            Ok((x, v.shape().to_vec()))
        };
        let ((f, shape), (q, _)) = (pick(fo)?, pick(qo)?);
        let rows = shape.first().copied().unwrap_or(1).max(1);
        let width = f.len() / rows;
        e.output_sqnr.add(&f, &q);
        for r in 0..rows {
            let (fr, qr) = (
                &f[r * width..(r + 1) * width],
                &q[r * width..(r + 1) * width],
            );
            let c = compare(fr, qr)
                .map_err(|e| FileError::new(&quant.source, e.to_string()))?
                .cosine;
            *cosine_sum += c;
            e.cosine_min = e.cosine_min.min(c);
            let (tf, tq) = (top(fr, 5), top(qr, 5));
            e.agree += usize::from(tf.first() == tq.first());
            if let Some(l) = labels {
                let y = l[e.samples + r] as usize;
                if let (Some(t1), Some(t5)) = (e.top1.as_mut(), e.top5.as_mut()) {
                    t1.0 += usize::from(tf.first() == Some(&y));
                    t1.1 += usize::from(tq.first() == Some(&y));
                    t5.0 += usize::from(tf.contains(&y));
                    t5.1 += usize::from(tq.contains(&y));
                }
            }
        }
        e.samples += rows;
        Ok(())
    }
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
fn top(x: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}
