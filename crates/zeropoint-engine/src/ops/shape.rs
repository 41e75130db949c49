//! Operators that move, select or create elements without arithmetic: reshapes, transposes,
//! concatenation and splitting, slicing and gathering, broadcasting, and the constant makers.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::{
    axis, broadcast_shape, c, check_output, indices_in, like, narrow, one, select, Cx, Error, R,
};
use crate::value::{carrier, Value};
use zeropoint_onnx::proto::TensorProto;
use zeropoint_onnx::DType;

/// The shape operand of Reshape: 0 copies the input's dimension (unless allowzero), −1 is
/// inferred from the element count.
pub fn reshape(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let spec = cx.ints_input(1)?.ok_or("missing shape input")?;
    let allow_zero = cx.int("allowzero", 0)? != 0;
    let dims = v.shape();
    let mut shape: Vec<usize> = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        shape.push(match d {
            0 if !allow_zero => *dims
                .get(i)
                .ok_or_else(|| format!("shape {spec:?}: 0 at {i} has no input dimension"))?,
            -1 if infer.is_none() => {
                infer = Some(i);
                1
            }
            d if d >= 0 => d as usize,
            _ => return Err(Error::Op(format!("shape {spec:?} is not valid"))),
        });
    }
    let n = v.tensor.elem_count();
    // Huge dimensions would overflow a plain product (and wrap to anything in release builds).
    let product = |s: &[usize]| s.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if let Some(i) = infer {
        let rest = product(&shape).unwrap_or(0);
        if rest == 0 || n % rest != 0 {
            return Err(Error::Op(format!("cannot reshape {dims:?} to {spec:?}")));
        }
        shape[i] = n / rest;
    }
    if product(&shape) != Some(n) {
        return Err(Error::Op(format!(
            "cannot reshape {dims:?} ({n} elements) to {spec:?}"
        )));
    }
    one(like(c(v.tensor.reshape(shape))?, v))
}

pub fn flatten(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let r = v.shape().len();
    let a = cx.int("axis", 1)?;
    let a = if a < 0 { a.saturating_add(r as i64) } else { a };
    if !(0..=r as i64).contains(&a) {
        return Err(Error::Op(format!("axis {a} is out of range for rank {r}")));
    }
    let rows: usize = v.shape()[..a as usize].iter().product();
    let cols: usize = v.shape()[a as usize..].iter().product();
    one(like(c(v.tensor.reshape((rows, cols)))?, v))
}

pub fn transpose(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let r = v.shape().len();
    let perm: Vec<usize> = match cx.ints("perm")? {
        Some(p) => p.iter().map(|&a| axis(a, r)).collect::<R<_>>()?,
        None => (0..r).rev().collect(),
    };
    one(like(c(v.tensor.permute(perm)?.contiguous())?, v))
}

/// DepthToSpace: [N, C, H, W] to [N, C/b², H·b, W·b], the channels read as (b, b, C/b²) in
/// "DCR" mode (the default) and as (C/b², b, b) in "CRD" mode, as the operator defines them.
pub fn depth_to_space(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let (n, ch, h, w) = c(v.tensor.dims4())?;
    let b = block_size(cx)?;
    // The block size is the file's to say: its square and the grown sides are checked.
    let area = b.checked_mul(b).filter(|a| ch % a == 0);
    let Some(area) = area else {
        return Err(Error::Op(format!(
            "{ch} channels do not divide into blocks of {b}x{b}"
        )));
    };
    let c = ch / area;
    let grown = |d: usize| d.checked_mul(b).ok_or("the output is too large");
    check_output(&[n, c, grown(h)?, grown(w)?], v.tensor.dtype())?;
    let t = match cx.string("mode", "DCR")?.as_str() {
        "DCR" => v
            .tensor
            .reshape(vec![n, b, b, c, h, w])?
            .permute(vec![0, 3, 4, 1, 5, 2])?,
        "CRD" => v
            .tensor
            .reshape(vec![n, c, b, b, h, w])?
            .permute(vec![0, 1, 4, 2, 5, 3])?,
        m => return Err(Error::Op(format!("mode '{m}' is not DCR or CRD"))),
    };
    one(like(super::c(t.reshape(vec![n, c, h * b, w * b]))?, v))
}

/// SpaceToDepth: [N, C, H, W] to [N, C·b², H/b, W/b], each b×b block of a channel becoming b²
/// channels (the block's row and column first, then the channel).
pub fn space_to_depth(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let (n, c, h, w) = super::c(v.tensor.dims4())?;
    let b = block_size(cx)?;
    if h % b != 0 || w % b != 0 {
        return Err(Error::Op(format!(
            "{h}x{w} does not divide into blocks of {b}x{b}"
        )));
    }
    // The block size is the file's to say (any block divides a side of 0): the channels it
    // makes are checked.
    let chans = b.checked_mul(b).and_then(|a| a.checked_mul(c));
    let chans = chans.ok_or("the output is too large")?;
    check_output(&[n, chans, h / b, w / b], v.tensor.dtype())?;
    let t = v
        .tensor
        .reshape(vec![n, c, h / b, b, w / b, b])?
        .permute(vec![0, 3, 5, 1, 2, 4])?;
    one(like(super::c(t.reshape(vec![n, chans, h / b, w / b]))?, v))
}

fn block_size(cx: &Cx) -> R<usize> {
    match cx.int("blocksize", 0)? {
        b if b > 0 => usize::try_from(b).map_err(|_| "blocksize is too large".into()),
        b => Err(Error::Op(format!("blocksize {b} is not positive"))),
    }
}

pub fn squeeze(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let dims = v.shape();
    let mut axes: Vec<usize> = match cx.axes(13, 1)? {
        Some(a) => a.iter().map(|&a| axis(a, dims.len())).collect::<R<_>>()?,
        None => (0..dims.len()).filter(|&d| dims[d] == 1).collect(),
    };
    axes.sort_unstable();
    axes.dedup();
    if let Some(&a) = axes.iter().find(|&&a| dims[a] != 1) {
        return Err(Error::Op(format!(
            "cannot squeeze axis {a} of size {}",
            dims[a]
        )));
    }
    let shape: Vec<usize> = (0..dims.len())
        .filter(|d| !axes.contains(d))
        .map(|d| dims[d])
        .collect();
    one(like(c(v.tensor.reshape(shape))?, v))
}

pub fn unsqueeze(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let axes = cx.axes(13, 1)?.ok_or("missing axes")?;
    let rank = v.shape().len() + axes.len();
    let mut axes: Vec<usize> = axes.iter().map(|&a| axis(a, rank)).collect::<R<_>>()?;
    axes.sort_unstable();
    // A repeated axis (found by fuzzing) would insert past the end of the shape.
    if axes.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::Op(format!("axes {axes:?} repeat an axis")));
    }
    let mut shape = v.shape().to_vec();
    for a in axes {
        shape.insert(a, 1);
    }
    one(like(c(v.tensor.reshape(shape))?, v))
}

pub fn concat(cx: &Cx) -> R<Vec<Value>> {
    let first = cx.input(0)?;
    let a = axis(cx.int("axis", 0)?, first.shape().len())?;
    let parts: Vec<&Tensor> = cx.inputs.iter().flatten().map(|v| &v.tensor).collect();
    if let Some(p) = parts.iter().find(|p| p.dtype() != first.tensor.dtype()) {
        return Err(Error::Op(format!(
            "inputs have different types ({:?})",
            p.dtype()
        )));
    }
    let nonempty: Vec<&Tensor> = parts
        .iter()
        .copied()
        .filter(|t| t.elem_count() > 0)
        .collect();
    let t = match nonempty.len() {
        0 => {
            let mut shape = first.shape().to_vec();
            shape[a] = parts
                .iter()
                .map(|t| t.dims().get(a).copied().unwrap_or(0))
                .sum();
            c(Tensor::zeros(
                shape,
                first.tensor.dtype(),
                first.tensor.device(),
            ))?
        }
        _ => c(Tensor::cat(&nonempty, a))?,
    };
    one(like(t, first))
}

pub fn split(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let a = axis(cx.int("axis", 0)?, v.shape().len())?;
    let len = v.shape()[a];
    let n = cx.node.outputs.len();
    let sizes: Vec<usize> = match if cx.opset < 13 {
        cx.ints("split")?
    } else {
        cx.ints_input(1)?
    } {
        Some(s) => s.iter().map(|&s| s.max(0) as usize).collect(),
        None => {
            // As many parts as the node has outputs (a huge num_outputs, found by fuzzing,
            // asked for a list of 2^62 sizes).
            let parts = cx.int("num_outputs", n as i64)?;
            if parts < 1 || parts > n as i64 {
                return Err(Error::Op(format!(
                    "num_outputs {parts} does not fit the node's {n} outputs"
                )));
            }
            let parts = parts as usize;
            let chunk = len.div_ceil(parts);
            (0..parts)
                .map(|i| chunk.min(len.saturating_sub(i * chunk)))
                .collect()
        }
    };
    if sizes.iter().try_fold(0usize, |a, &s| a.checked_add(s)) != Some(len) {
        return Err(Error::Op(format!(
            "split sizes {sizes:?} do not add up to {len}"
        )));
    }
    let mut start = 0;
    let mut out = Vec::new();
    for s in sizes {
        out.push(like(narrow(&v.tensor, a, start, s)?, v));
        start += s;
    }
    Ok(out)
}

pub fn slice(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let dims = v.shape();
    let (starts, ends, axes, steps) = if cx.opset < 10 {
        (
            cx.ints("starts")?.ok_or("missing starts")?,
            cx.ints("ends")?.ok_or("missing ends")?,
            cx.ints("axes")?,
            None,
        )
    } else {
        (
            cx.ints_input(1)?.ok_or("missing starts")?,
            cx.ints_input(2)?.ok_or("missing ends")?,
            cx.ints_input(3)?,
            cx.ints_input(4)?,
        )
    };
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err("starts, ends, axes and steps differ in length".into());
    }
    let mut t = v.tensor.clone();
    for i in 0..starts.len() {
        let a = axis(axes[i], dims.len())?;
        let idx = slice_indices(dims[a] as i64, starts[i], ends[i], steps[i])?;
        t = if steps[i] == 1 {
            narrow(&t, a, idx.first().copied().unwrap_or(0) as usize, idx.len())?
        } else {
            select(&t, &idx, a)?
        };
    }
    one(like(t, v))
}

/// The indices a Slice selects along an axis of length `dim`, with ONNX's clamping.
fn slice_indices(dim: i64, start: i64, end: i64, step: i64) -> R<Vec<i64>> {
    if step == 0 {
        return Err("slice step 0".into());
    }
    if dim == 0 {
        return Ok(Vec::new());
    }
    let norm = |x: i64| if x < 0 { x.saturating_add(dim) } else { x };
    let (s, e) = (norm(start), norm(end));
    let (s, e) = if step > 0 {
        (s.clamp(0, dim), e.clamp(0, dim))
    } else {
        (s.clamp(0, dim - 1), e.clamp(-1, dim - 1))
    };
    let mut out = Vec::new();
    let mut i = s;
    while (step > 0 && i < e) || (step < 0 && i > e) {
        out.push(i);
        match i.checked_add(step) {
            Some(next) => i = next,
            None => break,
        }
    }
    Ok(out)
}

pub fn gather(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let idx_v = cx.input(1)?;
    let a = axis(cx.int("axis", 0)?, v.shape().len())?;
    let fixed = indices_in(&idx_v.to_i64s()?, a, v.shape()[a])?;
    let mut shape = v.shape()[..a].to_vec();
    shape.extend_from_slice(idx_v.shape());
    shape.extend_from_slice(&v.shape()[a + 1..]);
    // Each index copies a whole slice: the output may outgrow both operands.
    check_output(&shape, v.tensor.dtype())?;
    let picked = select(&v.tensor, &fixed, a)?;
    one(like(c(picked.reshape(shape))?, v))
}

pub fn expand(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let spec: Vec<usize> = cx
        .ints_input(1)?
        .ok_or("missing shape input")?
        .iter()
        .map(|&d| d.max(0) as usize)
        .collect();
    let shape = broadcast_shape(v.shape(), &spec)?;
    check_output(&shape, v.tensor.dtype())?;
    one(like(c(v.tensor.broadcast_as(shape)?.contiguous())?, v))
}

pub fn tile(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let reps: Vec<usize> = cx
        .ints_input(1)?
        .ok_or("missing repeats input")?
        .iter()
        .map(|&r| r.max(0) as usize)
        .collect();
    if reps.len() != v.shape().len() {
        return Err(Error::Op(format!(
            "repeats {reps:?} do not match rank {}",
            v.shape().len()
        )));
    }
    let out: Vec<usize> = v
        .shape()
        .iter()
        .zip(&reps)
        .map(|(&d, &r)| d.saturating_mul(r))
        .collect();
    check_output(&out, v.tensor.dtype())?;
    if v.tensor.elem_count() == 0 {
        // candle would concatenate every repeat of nothing: 2^32 of them, if asked.
        return one(like(
            c(Tensor::zeros(out, v.tensor.dtype(), v.tensor.device()))?,
            v,
        ));
    }
    one(like(c(v.tensor.repeat(reps))?, v))
}

pub fn shape(cx: &Cx) -> R<Vec<Value>> {
    let dims: Vec<i64> = cx.input(0)?.shape().iter().map(|&d| d as i64).collect();
    let r = dims.len() as i64;
    let clamp = |x: i64| (if x < 0 { x.saturating_add(r) } else { x }).clamp(0, r) as usize;
    let start = clamp(cx.int("start", 0)?);
    let end = clamp(cx.int("end", r)?);
    one(Value::from_i64s(&dims[start..end.max(start)]))
}

pub fn size(cx: &Cx) -> R<Vec<Value>> {
    let n = cx.input(0)?.tensor.elem_count() as i64;
    one(Value::new(c(Tensor::new(n, &Device::Cpu))?, DType::I64))
}

pub fn constant(cx: &Cx) -> R<Vec<Value>> {
    let a = cx
        .node
        .attributes
        .first()
        .ok_or("Constant has no value attribute")?;
    let dev = &Device::Cpu;
    let v = match a.name() {
        "value" => tensor_attr(a.t.as_ref().ok_or("value holds no tensor")?)?,
        "value_float" => Value::f32(c(Tensor::new(a.f(), dev))?),
        "value_floats" => Value::f32(c(Tensor::new(a.floats.as_slice(), dev))?),
        "value_int" => Value::new(c(Tensor::new(a.i(), dev))?, DType::I64),
        "value_ints" => Value::from_i64s(&a.ints),
        other => {
            return Err(Error::Op(format!(
                "Constant attribute '{other}' is not supported"
            )))
        }
    };
    one(v)
}

/// A tensor attribute's value. Its external data, if any, is read relative to the current folder:
/// [`zeropoint_graph::Graph::load`] has brought every tensor of the model in by then.
fn tensor_attr(t: &TensorProto) -> R<Value> {
    let raw = zeropoint_onnx::tensor_proto::to_raw(t, Path::new("")).map_err(|e| match e {
        // The node is named by the executor; the file is not this tensor's to name.
        zeropoint_onnx::Error::Tensor { message, .. } => Error::Op(message),
        other => Error::Op(other.to_string()),
    })?;
    Value::from_raw(&raw)
}

pub fn constant_of_shape(cx: &Cx) -> R<Vec<Value>> {
    let shape: Vec<usize> = cx
        .ints_input(0)?
        .ok_or("missing shape input")?
        .iter()
        .map(|&d| d.max(0) as usize)
        .collect();
    let fill = match cx.node.attribute("value").and_then(|a| a.t.as_ref()) {
        Some(t) => tensor_attr(t)?,
        None => Value::f32(c(Tensor::new(&[0f32], &Device::Cpu))?),
    };
    check_output(&shape, fill.tensor.dtype())?;
    let t = c(fill
        .tensor
        .flatten_all()?
        .narrow(0, 0, 1)?
        .reshape(())?
        .broadcast_as(shape)?
        .contiguous())?;
    one(Value::new(t, fill.dtype))
}

pub fn range(cx: &Cx) -> R<Vec<Value>> {
    let start = cx.input(0)?;
    let scalar = |i: usize| -> R<f64> {
        cx.input(i)?
            .to_f64s()?
            .first()
            .copied()
            .ok_or_else(|| Error::Op(format!("input {i} is empty, not a scalar")))
    };
    let (s, l, d) = (scalar(0)?, scalar(1)?, scalar(2)?);
    if d == 0.0 {
        return Err("delta is 0".into());
    }
    let n = ((l - s) / d).ceil().max(0.0) as usize;
    check_output(&[n], carrier(start.dtype))?;
    let t = if start.dtype.is_float() {
        let (s, d) = (s as f32, d as f32);
        let v: Vec<f32> = (0..n).map(|i| s + i as f32 * d).collect();
        c(Tensor::from_vec(v, n, &Device::Cpu)?.to_dtype(carrier(start.dtype)))?
    } else {
        let int = |i: usize| -> R<i64> {
            cx.input(i)?
                .to_i64s()?
                .first()
                .copied()
                .ok_or_else(|| Error::Op(format!("input {i} is empty, not a scalar")))
        };
        let (s, d) = (int(0)?, int(2)?);
        let v: Vec<i64> = (0..n as i64).map(|i| s + i * d).collect();
        c(Tensor::from_vec(v, n, &Device::Cpu))?
    };
    one(Value::new(t, start.dtype))
}
