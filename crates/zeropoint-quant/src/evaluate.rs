//! Float model against quantized model on the same data: top-1/top-5 accuracy when labels
//! exist, agreement of the argmax, output SQNR and cosine similarity per sample, and SQNR per
//! layer for every value both graphs compute under the same name (in a QDQ model the layers keep
//! their float names; only the Q/DQ pairs are new).

use std::collections::HashSet;

use rayon::prelude::*;
use zeropoint_core::metrics::{compare, Running};
use zeropoint_engine::Executor;
use zeropoint_graph::Graph;

use crate::compare::{
    compare_batch, next_batches, Batch, Compared, LayerError, LayerErrors, Outputs,
};
use crate::dataset::batch_for;
use crate::dataset::Dataset;
use crate::error::{Error, Result};

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
    pub layers: Vec<LayerError>,
}

/// Runs the quantized model in another runtime: a batch in, the graph outputs out.
pub type Runtime<'a> = &'a mut dyn FnMut(Batch) -> Result<Outputs>;

/// Runs both models over `data` (batch by batch) and compares them. The quantized model runs in
/// zeropoint's executor, or in `runtime` when given (then without per-layer comparison). The
/// executors take the graphs, so that each weight is held once.
pub fn evaluate(
    float: Graph,
    quant: Graph,
    data: &mut Dataset,
    labels: Option<&[i64]>,
    batch: usize,
    mut runtime: Option<Runtime>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Evaluation> {
    let (fe, qe) = (Executor::owning(float)?, Executor::owning(quant)?);
    let (float, quant) = (fe.graph(), qe.graph());
    data.whole_batches(crate::dataset::unit_batch(&float.inputs), &float.source)?;
    let output = compared_output(float, quant)?;
    if let Some(l) = labels {
        if l.len() < data.len {
            return Err(Error::new(
                &float.source,
                format!("{} labels for {} samples", l.len(), data.len),
            ));
        }
    }
    // Every value both graphs compute under the same name (in a QDQ model the layers keep their
    // float names; only the Q/DQ pairs are new); none when another runtime runs the model.
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
    // Stacked samples are whole inputs, batch axis or not: each run's output is one sample.
    let one_row = data.stacked();
    // zeropoint's executors run several batches at once, each into its own layer errors, merged
    // in batch order; another runtime runs one batch at a time.
    let workers = match runtime {
        Some(_) => 1,
        None => rayon::current_num_threads().max(1),
    };
    loop {
        let batches = next_batches(data, batch_for(&float.inputs, batch), workers)?;
        if batches.is_empty() {
            break;
        }
        let runs: Vec<Compared> = match runtime.as_mut() {
            Some(run) => batches
                .into_iter()
                .map(|b| -> Result<Compared> {
                    Ok(Compared {
                        float: fe.run(b.clone())?,
                        other: run(b)?,
                        layers: LayerErrors::new(vec![]),
                    })
                })
                .collect::<Result<_>>()?,
            None => batches
                .into_par_iter()
                .map(|b| compare_batch(&fe, &|b, hook| Ok(qe.run_with(b, hook)?), &common, b))
                .collect::<Result<_>>()?,
        };
        for run in runs {
            layers.merge(&run.layers);
            e.compare_outputs(
                (&run.float, &run.other),
                &output,
                labels,
                &mut cosine_sum,
                quant,
                one_row,
            )?;
        }
        progress(e.samples, data.len);
    }
    e.cosine_mean = cosine_sum / e.samples.max(1) as f64;
    e.layers = layers.into_list();
    Ok(e)
}

/// The output compared: the first float output of the float model, which the quantized one must
/// also have.
fn compared_output(float: &Graph, quant: &Graph) -> Result<String> {
    let output = float
        .outputs
        .iter()
        .find(|o| o.dtype.is_none_or(|d| d.is_float()))
        .ok_or_else(|| Error::new(&float.source, "the model has no float output to compare"))?
        .name
        .clone();
    if !quant.outputs.iter().any(|o| o.name == output) {
        return Err(Error::new(
            &quant.source,
            format!("the quantized model has no output '{output}'"),
        ));
    }
    Ok(output)
}

impl Evaluation {
    /// Adds one batch's outputs: SQNR, per-row cosine, argmax agreement, top-1/top-5. Rows are
    /// along the output's first axis, or the whole output is one row (`one_row`: a stacked
    /// sample of a model without a batch axis).
    fn compare_outputs(
        &mut self,
        (fo, qo): (&Outputs, &Outputs),
        output: &str,
        labels: Option<&[i64]>,
        cosine_sum: &mut f64,
        quant: &Graph,
        one_row: bool,
    ) -> Result<()> {
        let e = self;
        let pick = |outs: &Outputs| -> Result<(Vec<f32>, Vec<usize>)> {
            let v = &outs
                .iter()
                .find(|(n, _)| *n == output)
                .ok_or_else(|| Error::new(&quant.source, format!("no output '{output}'")))?
                .1;
            let x = v
                .to_f32s()
                .map_err(|e| Error::at(&quant.source, format!("output '{output}'"), e))?;
            Ok((x, v.shape().to_vec()))
        };
        let ((f, shape), (q, _)) = (pick(fo)?, pick(qo)?);
        let rows = if one_row {
            1
        } else {
            shape.first().copied().unwrap_or(1).max(1)
        };
        let width = f.len() / rows;
        e.output_sqnr.add(&f, &q);
        for r in 0..rows {
            let (fr, qr) = (
                &f[r * width..(r + 1) * width],
                &q[r * width..(r + 1) * width],
            );
            let c = compare(fr, qr)
                .map_err(|e| Error::at(&quant.source, format!("output '{output}'"), e))?
                .cosine;
            *cosine_sum += c;
            e.cosine_min = e.cosine_min.min(c);
            let (tf, tq) = (top(fr, 5), top(qr, 5));
            e.agree += usize::from(tf.first() == tq.first());
            if let Some(l) = labels {
                // An output whose first axis is not the samples' has more rows than labels.
                let y = *l.get(e.samples + r).ok_or_else(|| {
                    Error::new(
                        &quant.source,
                        format!(
                            "output '{output}' has more rows than there are labels ({}): labels need an output with one row per sample",
                            l.len()
                        ),
                    )
                })? as usize;
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
pub(crate) fn top(x: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeropoint_engine::Value;

    fn evaluation() -> Evaluation {
        Evaluation {
            cosine_min: f64::INFINITY,
            top1: Some((0, 0)),
            top5: Some((0, 0)),
            ..Default::default()
        }
    }

    /// An output whose first axis is not the samples' (4 rows for the 2 labels of a batch) is
    /// refused with a message, not read past the labels; a stacked sample is one row.
    #[test]
    fn rows_beyond_the_labels_are_refused_and_a_stacked_sample_is_one_row() {
        let quant = Graph {
            source: "q.onnx".into(),
            opset: 13,
            inputs: vec![],
            outputs: vec![],
            initializers: vec![],
            nodes: vec![],
        };
        let y = Value::from_f32_vec((0..8).map(|i| i as f32).collect(), &[4, 2]).unwrap();
        let outs: Outputs = vec![("y".into(), y)];
        let labels = [1, 0];
        let mut sum = 0.0;
        let mut e = evaluation();
        let err = e
            .compare_outputs((&outs, &outs), "y", Some(&labels), &mut sum, &quant, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("output 'y' has more rows than there are labels (2): labels need an output with one row per sample"),
            "{err}"
        );
        let mut e = evaluation();
        e.compare_outputs((&outs, &outs), "y", Some(&labels), &mut sum, &quant, true)
            .unwrap();
        assert_eq!(e.samples, 1);
        // Its argmax over the whole output is element 7, not label 1.
        assert_eq!(e.top1, Some((0, 0)));
    }
}
