//! Operators that pick elements by computed indices: GatherElements (torch's `gather`) and TopK
//! (the k largest or smallest along an axis, with their indices, as detectors use to keep their
//! best boxes).

use candle_core::{DType as CDType, Tensor};
use zeropoint_onnx::DType;

use super::{axis, c, check_output, indices_in, like, Cx, Error, R};
use crate::value::Value;

/// `out[i][j][k] = data[indices[i][j][k]][j][k]` along `axis` (axis 0 here): the output has the
/// indices' shape, which may be smaller than the data's on the other axes.
pub fn gather_elements(cx: &Cx) -> R<Vec<Value>> {
    let (data, idx_v) = (cx.input(0)?, cx.input(1)?);
    let rank = data.shape().len();
    let a = axis(cx.int("axis", 0)?, rank)?;
    if idx_v.shape().len() != rank {
        return Err(Error::Op(format!(
            "indices of rank {} do not match the data's rank {rank}",
            idx_v.shape().len()
        )));
    }
    if let Some(d) = (0..rank).find(|&d| d != a && idx_v.shape()[d] > data.shape()[d]) {
        return Err(Error::Op(format!(
            "indices {:?} are larger than the data {:?} on axis {d}",
            idx_v.shape(),
            data.shape()
        )));
    }
    let idx = indices_in(&idx_v.to_i64s()?, a, data.shape()[a])?;
    let idx = Tensor::from_vec(idx, idx_v.shape(), data.tensor.device())?;
    let out = c(data.tensor.contiguous()?.gather(&idx, a))?;
    Ok(vec![like(out, data)])
}

/// The `k` largest (or smallest) elements along `axis` and their int64 indices. Ties keep the
/// lower index first, as ONNX Runtime does; the output is sorted whatever `sorted` says (the spec
/// leaves the order free when it is 0).
pub fn top_k(cx: &Cx) -> R<Vec<Value>> {
    let x = cx.input(0)?;
    let k = match cx.ints_input(1)?.as_deref() {
        Some(&[k]) => k,
        other => return Err(Error::Op(format!("K must hold one value, got {other:?}"))),
    };
    let rank = x.shape().len();
    let a = axis(cx.int("axis", -1)?, rank)?;
    let n = x.shape()[a];
    if k < 0 || k as usize > n {
        return Err(Error::Op(format!(
            "K = {k} is out of range for axis {a} of size {n}"
        )));
    }
    let k = k as usize;
    let largest = cx.int("largest", 1)? != 0;
    let mut out_shape = x.shape().to_vec();
    out_shape[a] = k;
    check_output(&out_shape, CDType::I64)?;
    // Rows along the last axis: one sort per row.
    let last = c(x.tensor.transpose(a, rank - 1))?;
    let rows: Vec<f64> = c(last.to_dtype(CDType::F64)?.flatten_all()?.to_vec1::<f64>())?;
    let mut picked: Vec<i64> = Vec::with_capacity(rows.len() / n.max(1) * k);
    for row in rows.chunks(n.max(1)).filter(|_| n > 0) {
        let mut order: Vec<usize> = (0..n).collect();
        // Stable: equal values keep the lower index first. NaN counts as largest, as in numpy.
        order.sort_by(|&i, &j| {
            let o = row[i].total_cmp(&row[j]);
            if largest {
                o.reverse()
            } else {
                o
            }
        });
        picked.extend(order[..k].iter().map(|&i| i as i64));
    }
    let mut last_shape = last.dims().to_vec();
    last_shape[rank - 1] = k;
    let indices = Tensor::from_vec(picked, last_shape, x.tensor.device())?;
    let values = c(last.contiguous()?.gather(&indices, rank - 1))?;
    let back = |t: Tensor| c(t.transpose(a, rank - 1)?.contiguous());
    Ok(vec![
        like(back(values)?, x),
        Value::new(back(indices)?, DType::I64),
    ])
}
