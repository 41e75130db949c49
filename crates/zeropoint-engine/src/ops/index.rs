//! Operators that pick or write elements at computed indices: GatherElements (torch's
//! `gather`), GatherND (index tuples, as graph networks look up an edge's nodes), TopK (the k
//! largest or smallest along an axis, with their indices, as detectors use to keep their best
//! boxes), ScatterElements and ScatterND (torch's `scatter` and index assignment `x[i] = y`, with
//! their reductions) and OneHot.

use candle_core::{DType as CDType, Device, Layout, Tensor};
use zeropoint_onnx::DType;

use super::{axis, c, check_output, index_in, indices_in, like, one, Cx, Error, R};
use crate::value::{carrier, Value};

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

/// `data` with `updates[i]` written at the position `indices[i]` names: `indices` has the
/// updates' shape and gives the coordinate along `axis`; the other coordinates are the update's
/// own. Opset 11's Scatter is the same operator under its old name.
pub fn scatter_elements(cx: &Cx) -> R<Vec<Value>> {
    let (data, idx_v, updates) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let shape = data.shape();
    let rank = shape.len();
    let a = axis(cx.int("axis", 0)?, rank)?;
    let ishape = idx_v.shape();
    if ishape != updates.shape() || ishape.len() != rank {
        return Err(Error::Op(format!(
            "indices {ishape:?} and updates {:?} must have one shape, of the data's rank {rank}",
            updates.shape()
        )));
    }
    if let Some(d) = (0..rank).find(|&d| d != a && ishape[d] > shape[d]) {
        return Err(Error::Op(format!(
            "indices {ishape:?} are larger than the data {shape:?} on axis {d}"
        )));
    }
    let idx = idx_v.to_i64s()?;
    // Checked once here: the targets count a negative index from the end, each of them.
    idx.iter()
        .try_for_each(|&i| index_in(i, a, shape[a]).map(drop))?;
    let targets = element_targets(&idx, ishape, shape, a);
    one(scattered(cx, data, updates, targets)?)
}

/// The flat position in data of `shape` of each element of `idx` (of shape `ishape`, each index
/// in range), in order: the element's own coordinates, but along `axis` its index. A GNN's
/// scatter-add of messages to nodes runs it for every element of [edges, features]: the
/// leading coordinates are worked out once a row.
fn element_targets<'a>(
    idx: &'a [i64],
    ishape: &'a [usize],
    shape: &[usize],
    axis: usize,
) -> impl Iterator<Item = usize> + 'a {
    let strides = Layout::contiguous(shape).stride().to_vec();
    let last = ishape.len() - 1;
    let (width, n) = (ishape[last].max(1), shape[axis] as i64);
    let step = if axis == last { 0 } else { strides[last] };
    let along = strides[axis];
    idx.chunks(width).enumerate().flat_map(move |(r, row)| {
        let (mut rest, mut base) = (r, 0);
        for d in (0..last).rev() {
            if d != axis {
                base += rest % ishape[d] * strides[d];
            }
            rest /= ishape[d].max(1);
        }
        row.iter().enumerate().map(move |(j, &i)| {
            let i = if i < 0 { i + n } else { i } as usize;
            base + j * step + i * along
        })
    })
}

/// `data` with the slices `indices` names replaced by (or combined with) `updates`: the last
/// axis of `indices` holds the first k coordinates of a slice of `data`'s shape from axis k on.
pub fn scatter_nd(cx: &Cx) -> R<Vec<Value>> {
    let (data, idx_v, updates) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let shape = data.shape();
    let ishape = idx_v.shape();
    let k = ishape.last().copied().unwrap_or(0);
    if ishape.is_empty() || k > shape.len() {
        return Err(Error::Op(format!(
            "indices {ishape:?} must have rank 1 or more and at most {} coordinates per slice",
            shape.len()
        )));
    }
    let wanted: Vec<usize> = ishape[..ishape.len() - 1]
        .iter()
        .chain(&shape[k..])
        .copied()
        .collect();
    if updates.shape() != wanted {
        return Err(Error::Op(format!(
            "updates {:?} do not have the shape {wanted:?} that indices {ishape:?} and data {shape:?} give",
            updates.shape()
        )));
    }
    let layout = Layout::contiguous(shape);
    let strides = layout.stride();
    let slice: usize = shape[k..].iter().product();
    let idx = idx_v.to_i64s()?;
    let tuples: usize = ishape[..ishape.len() - 1].iter().product();
    let mut targets = Vec::with_capacity(tuples * slice);
    for t in 0..tuples {
        let mut start = 0;
        for (d, &i) in idx[t * k..(t + 1) * k].iter().enumerate() {
            start += index_in(i, d, shape[d])? * strides[d];
        }
        targets.extend(start..start + slice);
    }
    one(scattered(cx, data, updates, targets.into_iter())?)
}

/// The slices of `data` that `indices` names: the last axis of `indices` holds k coordinates,
/// after the first `batch_dims` axes, which `indices` and `data` share; the output has the
/// indices' shape less that last axis, then `data`'s shape from axis `batch_dims + k` on.
pub fn gather_nd(cx: &Cx) -> R<Vec<Value>> {
    let (data, idx_v) = (cx.input(0)?, cx.input(1)?);
    let (shape, ishape) = (data.shape(), idx_v.shape());
    let b = usize::try_from(cx.int("batch_dims", 0)?).map_err(|_| "batch_dims is negative")?;
    let k = ishape.last().copied().unwrap_or(0);
    if ishape.is_empty() || b >= ishape.len() || k == 0 || b + k > shape.len() {
        return Err(Error::Op(format!(
            "indices {ishape:?} with batch_dims {b} do not name slices of data {shape:?}"
        )));
    }
    if shape[..b] != ishape[..b] {
        return Err(Error::Op(format!(
            "the first {b} axes of data {shape:?} and indices {ishape:?} differ"
        )));
    }
    let out: Vec<usize> = ishape[..ishape.len() - 1]
        .iter()
        .chain(&shape[b + k..])
        .copied()
        .collect();
    check_output(&out, data.tensor.dtype())?;
    // Rows of data as [batch · indexed positions, slice]: each index tuple picks one row.
    let positions: usize = shape[b..b + k].iter().product();
    let strides = Layout::contiguous(&shape[b..b + k]).stride().to_vec();
    let per_batch: usize = ishape[b..ishape.len() - 1].iter().product();
    let idx = idx_v.to_i64s()?;
    let mut rows = Vec::with_capacity(idx.len() / k);
    for (t, tuple) in idx.chunks(k).enumerate() {
        let mut row = (t / per_batch.max(1)) * positions;
        for (d, &i) in tuple.iter().enumerate() {
            row += index_in(i, b + d, shape[b + d])? * strides[d];
        }
        rows.push(row as i64);
    }
    let slice: usize = shape[b + k..].iter().product();
    let table = c(data
        .tensor
        .reshape((shape[..b + k].iter().product::<usize>(), slice)))?;
    let rows = Tensor::from_vec(rows, idx.len() / k, &Device::Cpu)?;
    let picked = c(table.index_select(&rows, 0)?.reshape(out))?;
    one(like(picked, data))
}

/// A one-hot encoding of `indices` along a new axis of `depth`: `values[1]` where the
/// coordinate on that axis is the index (negative ones count from the end), `values[0]`
/// elsewhere; an index outside [-depth, depth) gives a row of `values[0]` only.
pub fn one_hot(cx: &Cx) -> R<Vec<Value>> {
    let (idx_v, values) = (cx.input(0)?, cx.input(2)?);
    let depth = match cx.input(1)?.to_f64s()?.as_slice() {
        // A float depth counts as its integer part, as ONNX Runtime reads it.
        &[d] if d >= 1.0 && d.is_finite() => d as usize,
        other => {
            return Err(Error::Op(format!(
                "depth must be one number, at least 1, got {other:?}"
            )))
        }
    };
    if values.shape().iter().product::<usize>() != 2 {
        return Err(Error::Op(format!(
            "values must hold two elements (off, on), got shape {:?}",
            values.shape()
        )));
    }
    let ishape = idx_v.shape();
    let a = axis(cx.int("axis", -1)?, ishape.len() + 1)?;
    let mut shape = ishape.to_vec();
    shape.insert(a, depth);
    check_output(&shape, values.tensor.dtype())?;
    let inner: usize = ishape[a..].iter().product();
    // Float indices count as their integer part, as ONNX Runtime reads them.
    let idx = idx_v.to_f64s()?;
    let targets: Vec<usize> = (idx.iter().enumerate())
        .filter_map(|(n, &i)| {
            let i = if i < 0.0 {
                i.trunc() + depth as f64
            } else {
                i.trunc()
            };
            (i >= 0.0 && i < depth as f64)
                .then(|| (n / inner.max(1) * depth + i as usize) * inner + n % inner.max(1))
        })
        .collect();
    let off = values.tensor.flatten_all()?.narrow(0, 0, 1)?;
    let filled = Value::new(
        c(off.broadcast_as(shape.as_slice())?.contiguous())?,
        values.dtype,
    );
    let on = Value::new(
        c(values
            .tensor
            .flatten_all()?
            .narrow(0, 1, 1)?
            .broadcast_as(targets.len())?
            .contiguous())?,
        values.dtype,
    );
    one(scattered(cx, &filled, &on, targets.into_iter())?)
}

/// How a scatter combines an update with the element it lands on (opset 16's and 18's
/// `reduction`); with none, the last update written to an element wins.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Reduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

/// The elements of a value in one of the three types the scatters compute in: f32 for
/// float32 and the half types (whose values it holds exactly), f64, and i64 for integers and
/// bools.
enum Elements {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

impl Elements {
    fn of(v: &Value) -> R<Elements> {
        Ok(match v.tensor.dtype() {
            CDType::F64 => Elements::F64(v.to_f64s()?),
            d if d.is_float() => Elements::F32(v.to_f32s()?),
            _ => Elements::I64(v.to_i64s()?),
        })
    }

    fn into_value(self, shape: &[usize], dtype: DType) -> R<Value> {
        let dev = &Device::Cpu;
        let t = match self {
            Elements::F32(v) => Tensor::from_vec(v, shape, dev),
            Elements::F64(v) => Tensor::from_vec(v, shape, dev),
            Elements::I64(v) => Tensor::from_vec(v, shape, dev),
        };
        Ok(Value::new(
            c(t.and_then(|t| t.to_dtype(carrier(dtype))))?,
            dtype,
        ))
    }
}

/// `data` with update i combined into its element `targets[i]`, in order, by the node's
/// `reduction`.
fn scattered(
    cx: &Cx,
    data: &Value,
    updates: &Value,
    targets: impl Iterator<Item = usize>,
) -> R<Value> {
    let reduction = match cx.string("reduction", "none")?.as_str() {
        "none" => Reduction::None,
        "add" => Reduction::Add,
        "mul" => Reduction::Mul,
        "max" => Reduction::Max,
        "min" => Reduction::Min,
        other => {
            return Err(Error::Op(format!(
                "reduction '{other}' is none of ONNX's (none, add, mul, max, min)"
            )))
        }
    };
    if updates.dtype != data.dtype {
        return Err(Error::Op(format!(
            "updates are {}, the data {}",
            updates.dtype, data.dtype
        )));
    }
    // The updates are read in place where they are float32 (a GNN's messages, [edges, features]).
    let out = match Elements::of(data)? {
        Elements::F32(mut d) => {
            let (add, mul) = (|a, b| a + b, |a, b| a * b);
            updates.with_f32s(|u| combine(&mut d, u, targets, reduction, add, mul))?;
            Elements::F32(d)
        }
        Elements::F64(mut d) => {
            let u = updates.to_f64s()?;
            combine(&mut d, &u, targets, reduction, |a, b| a + b, |a, b| a * b);
            Elements::F64(d)
        }
        Elements::I64(mut d) => {
            let (add, mul) = (i64::wrapping_add, i64::wrapping_mul);
            combine(&mut d, &updates.to_i64s()?, targets, reduction, add, mul);
            Elements::I64(d)
        }
    };
    out.into_value(data.shape(), data.dtype)
}

/// Combines `updates[i]` into `data[targets[i]]` for every i, in order.
fn combine<T: Copy + PartialOrd>(
    data: &mut [T],
    updates: &[T],
    targets: impl Iterator<Item = usize>,
    reduction: Reduction,
    add: impl Fn(T, T) -> T,
    mul: impl Fn(T, T) -> T,
) {
    for (t, &u) in targets.zip(updates) {
        let d = data[t];
        data[t] = match reduction {
            Reduction::None => u,
            Reduction::Add => add(d, u),
            Reduction::Mul => mul(d, u),
            Reduction::Max if u > d => u,
            Reduction::Min if u < d => u,
            Reduction::Max | Reduction::Min => d,
        };
    }
}
