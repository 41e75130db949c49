//! Reductions over axes (ReduceMean, ReduceSum, ...) and ArgMax/ArgMin.

use candle_core::{DType as CDType, Tensor};

use super::{axis, c, like, one, Cx, R};
use crate::value::Value;
use zeropoint_graph::Op;
use zeropoint_onnx::DType;

pub fn reduce(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let x = &v.tensor;
    // ReduceSum took axes as an input from opset 13, the others from opset 18.
    let input_from = if cx.node.op == Op::ReduceSum { 13 } else { 18 };
    let axes = cx.axes(input_from, 1)?.unwrap_or_default();
    let keep = cx.int("keepdims", 1)? != 0;
    if axes.is_empty() && cx.int("noop_with_empty_axes", 0)? != 0 {
        return one(v.clone());
    }
    let mut dims: Vec<usize> = if axes.is_empty() {
        (0..x.rank()).collect()
    } else {
        axes.iter().map(|&a| axis(a, x.rank())).collect::<R<_>>()?
    };
    dims.sort_unstable();
    dims.dedup();
    let t = match &cx.node.op {
        Op::ReduceMean => c(x.mean_keepdim(dims.as_slice()))?,
        Op::ReduceSum => c(x.sum_keepdim(dims.as_slice()))?,
        Op::ReduceSumSquare => c(x.sqr()?.sum_keepdim(dims.as_slice()))?,
        Op::ReduceL2 => c(x.sqr()?.sum_keepdim(dims.as_slice())?.sqrt())?,
        Op::ReduceMax => dims
            .iter()
            .try_fold(x.clone(), |t, &d| c(t.max_keepdim(d)))?,
        Op::ReduceMin => dims
            .iter()
            .try_fold(x.clone(), |t, &d| c(t.min_keepdim(d)))?,
        _ => prod_keepdim(x, &dims)?,
    };
    let t = if keep {
        t
    } else {
        dims.iter().rev().try_fold(t, |t, &d| c(t.squeeze(d)))?
    };
    one(like(t, v))
}

/// Product over `dims` as exp(sum(log|x|)) would lose signs; multiply slices instead.
fn prod_keepdim(x: &Tensor, dims: &[usize]) -> R<Tensor> {
    let mut t = x.clone();
    for &d in dims {
        let n = t.dims()[d];
        let mut acc = c(t.narrow(d, 0, 1.min(n)))?;
        for i in 1..n {
            acc = c(acc.mul(&t.narrow(d, i, 1)?))?;
        }
        t = acc;
    }
    Ok(t)
}

pub fn arg_reduce(cx: &Cx) -> R<Vec<Value>> {
    let x = &cx.input(0)?.tensor;
    let a = axis(cx.int("axis", 0)?, x.rank())?;
    if cx.int("select_last_index", 0)? != 0 {
        return Err("select_last_index=1 is not supported".into());
    }
    let t = c(if cx.node.op == Op::ArgMax {
        x.argmax_keepdim(a)
    } else {
        x.argmin_keepdim(a)
    })?;
    let t = if cx.int("keepdims", 1)? != 0 {
        t
    } else {
        c(t.squeeze(a))?
    };
    one(Value::new(c(t.to_dtype(CDType::I64))?, DType::I64))
}
