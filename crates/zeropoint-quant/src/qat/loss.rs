//! The losses QAT trains with: cross-entropy on labels, distillation from the float model (KL of
//! softmaxes at a temperature, or mean squared error), on the output the options name.

use candle_core::{DType as CDType, Tensor, D};
use zeropoint_engine::Value;
use zeropoint_graph::{Graph, Op};
use zeropoint_onnx::DType;

use crate::error::{Error, Result};
use crate::qat::options::Options;

/// A tensor's values, flattened.
pub(crate) fn f32s(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(candle_error)
}

pub(crate) fn candle_error(e: candle_core::Error) -> Error {
    Error::Environment(format!(
        "training: {}",
        zeropoint_engine::error::candle_message(e)
    ))
}

/// Log-softmax over the last axis, rows flattened.
fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let last = x.dim(D::Minus1)?;
    let x = x.reshape(((), last))?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// The output the loss is computed on: `opts.output`, or the first float one.
pub(crate) fn trained_output(out: Vec<(String, Value)>, opts: &Options) -> Result<Tensor> {
    let names: Vec<String> = out.iter().map(|(n, _)| n.clone()).collect();
    let picked = match &opts.output {
        Some(name) => out.into_iter().find(|(n, _)| n == name),
        None => out.into_iter().find(|(_, v)| v.dtype == DType::F32),
    };
    picked.map(|(_, v)| v.tensor).ok_or_else(|| {
        Error::Environment(match &opts.output {
            Some(name) => format!(
                "training: the model has no output '{name}' (its outputs: {})",
                names.join(", ")
            ),
            None => "training: the model has no float output".into(),
        })
    })
}

/// The axis of the Softmax that computes the trained output, where one does: many exported
/// classifiers end in one and give probabilities, not logits.
pub(crate) fn softmax_axis(graph: &Graph, output: Option<&str>) -> Option<i64> {
    let name = match output {
        Some(name) => name,
        None => graph
            .outputs
            .iter()
            .find(|o| o.dtype.is_none_or(|d| d == DType::F32))?
            .name
            .as_str(),
    };
    let node = graph
        .nodes
        .iter()
        .find(|n| n.outputs.first().map(String::as_str) == Some(name))?;
    let default = if graph.opset >= 13 { -1 } else { 1 };
    (node.op == Op::Softmax).then(|| node.attribute("axis").map_or(default, |a| a.i()))
}

/// The scores the losses take the softmax of: the output itself, or, where it is a Softmax over
/// its last axis, its logarithm. That is the Softmax's input (the logits) less a constant per
/// row, which no softmax sees, so cross-entropy and distillation get the logits' gradients; a
/// softmax of the probabilities themselves would be nearly flat.
pub(crate) fn scores(output: &Tensor, softmax_axis: Option<i64>) -> candle_core::Result<Tensor> {
    let rank = output.rank() as i64;
    match softmax_axis {
        Some(axis) if rank > 0 && (axis == -1 || axis == rank - 1) => {
            output.clamp(f32::MIN_POSITIVE, 1f32)?.log()
        }
        _ => Ok(output.clone()),
    }
}

/// Mean cross-entropy of `logits` (rows over the last axis) against class `labels`.
pub(crate) fn cross_entropy(logits: &Tensor, labels: &[i64]) -> candle_core::Result<Tensor> {
    let logp = log_softmax(logits)?;
    let classes = logp.dim(1)? as i64;
    if let Some(bad) = labels.iter().find(|&&l| l >= classes) {
        candle_core::bail!("label {bad} is out of range for {classes} classes");
    }
    let idx = Tensor::new(labels, logp.device())?
        .to_dtype(CDType::U32)?
        .unsqueeze(1)?;
    logp.gather(&idx, 1)?.mean_all()?.neg()
}

/// KL(softmax(t/T) ‖ softmax(s/T))·T², averaged over rows.
pub(crate) fn distillation(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
) -> candle_core::Result<Tensor> {
    let t = temperature.max(1e-6);
    let ls = log_softmax(&(student / t)?)?;
    let lt = log_softmax(&(teacher / t)?)?;
    let pt = lt.exp()?;
    let rows = ls.dim(0)? as f64;
    (pt * (lt - ls)?)?.sum_all()? * (t * t / rows)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};
    use zeropoint_graph::graph::int_attribute;
    use zeropoint_graph::{Node, ValueInfo};

    use super::*;

    fn softmax(z: &Tensor) -> Tensor {
        let e = z.exp().unwrap();
        e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let (a, b) = (f32s(a).unwrap(), f32s(b).unwrap());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= tol, "{x} vs {y}");
        }
    }

    /// On a Softmax's output, both losses and their gradients with respect to the logits are
    /// those of the logits themselves.
    #[test]
    fn losses_on_probabilities_are_the_losses_on_logits() {
        let dev = Device::Cpu;
        let z: Vec<f32> = (0..12).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.7).collect();
        let t: Vec<f32> = (0..12).map(|i| ((i * 5 % 7) as f32 - 3.0) * 0.9).collect();
        let zs = Var::from_vec(z, (3, 4), &dev).unwrap();
        let zt = Tensor::from_vec(t, (3, 4), &dev).unwrap();
        let (pt, ps) = (softmax(&zt), softmax(zs.as_tensor()));
        let direct = distillation(zs.as_tensor(), &zt, 2.0).unwrap();
        let via = distillation(
            &scores(&ps, Some(-1)).unwrap(),
            &scores(&pt, Some(1)).unwrap(),
            2.0,
        )
        .unwrap();
        close(&direct, &via, 1e-5);
        let (gd, gv) = (direct.backward().unwrap(), via.backward().unwrap());
        close(gd.get(&zs).unwrap(), gv.get(&zs).unwrap(), 1e-5);
        let ce = cross_entropy(zs.as_tensor(), &[0, 3, 1]).unwrap();
        let ce_p = cross_entropy(&scores(&ps, Some(-1)).unwrap(), &[0, 3, 1]).unwrap();
        close(&ce, &ce_p, 1e-5);
        // Not over the last axis: the output is taken as it is.
        close(&scores(&ps, Some(0)).unwrap(), &ps, 0.0);
        close(&scores(&ps, None).unwrap(), &ps, 0.0);
    }

    #[test]
    fn finds_the_softmax_behind_the_trained_output() {
        let output = |name: &str| ValueInfo {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: None,
        };
        let mut softmax = Node::new("s", Op::Softmax, &["logits"], &["probs"]);
        let mut g = Graph {
            source: "classifier.onnx".into(),
            opset: 11,
            inputs: vec![output("x")],
            outputs: vec![output("probs"), output("logits")],
            initializers: Vec::new(),
            nodes: vec![
                Node::new("m", Op::Relu, &["x"], &["logits"]),
                softmax.clone(),
            ],
        };
        assert_eq!(softmax_axis(&g, None), Some(1), "opset 11's default axis");
        g.opset = 13;
        assert_eq!(softmax_axis(&g, None), Some(-1));
        softmax.attributes = vec![int_attribute("axis", 0)];
        g.nodes[1] = softmax;
        assert_eq!(softmax_axis(&g, Some("probs")), Some(0));
        assert_eq!(softmax_axis(&g, Some("logits")), None);
    }
}
