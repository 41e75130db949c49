//! Pad and Resize: both index the input along each axis independently (Resize's nearest,
//! linear and cubic modes are separable), so each is a per-axis gather with host-computed
//! indices (and, to interpolate, a weighted sum of such gathers), which is exact and
//! differentiable.

use candle_core::{DType as CDType, Tensor};

use super::{axis, c, check_output, like, narrow, one, select, Cx, Error, R};
use crate::value::Value;

pub fn pad(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let rank = v.shape().len();
    let mode = cx.string("mode", "constant")?;
    let (pads, fill) = if cx.opset < 11 {
        let p = cx.ints("pads")?.ok_or("missing pads")?;
        (p, cx.float_attr("value", 0.0)? as f64)
    } else {
        let p = cx.ints_input(1)?.ok_or("missing pads input")?;
        let fill = cx.opt(2).map(Value::to_f64s).transpose()?;
        (p, fill.and_then(|f| f.first().copied()).unwrap_or(0.0))
    };
    let axes: Vec<usize> = match cx.ints_input(3)? {
        Some(a) if cx.opset >= 18 => a.iter().map(|&a| axis(a, rank)).collect::<R<_>>()?,
        _ => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(Error::Op(format!(
            "pads {pads:?} do not fit {} axes",
            axes.len()
        )));
    }
    let mut out = v.shape().to_vec();
    for (i, &a) in axes.iter().enumerate() {
        let grown = out[a] as i128 + i128::from(pads[i]) + i128::from(pads[i + axes.len()]);
        out[a] = usize::try_from(grown.max(0)).unwrap_or(usize::MAX);
    }
    check_output(&out, v.tensor.dtype())?;
    let mut t = v.tensor.clone();
    for (i, &a) in axes.iter().enumerate() {
        let (b, e) = (pads[i], pads[i + axes.len()]);
        t = match mode.as_str() {
            "constant" => pad_constant(&t, a, b, e, fill)?,
            "reflect" | "edge" | "wrap" => {
                let n = t.dims()[a] as i64;
                if n == 0 {
                    return Err(Error::Op(format!("cannot {mode}-pad an empty axis {a}")));
                }
                // The index list spans -b .. n + e: its length is the output's, checked above,
                // unless the pads themselves overflow.
                let len = i128::from(n) + i128::from(b) + i128::from(e);
                if b.checked_neg().is_none() || len != out[a] as i128 {
                    return Err(Error::Op(format!(
                        "pads {b} and {e} do not fit axis {a} of size {n}"
                    )));
                }
                let idx: Vec<i64> = (-b..n + e)
                    .map(|j| match mode.as_str() {
                        "edge" => j.clamp(0, n - 1),
                        "wrap" => j.rem_euclid(n),
                        _ => reflect(j, n),
                    })
                    .collect();
                select(&t, &idx, a)?
            }
            m => return Err(Error::Op(format!("mode '{m}' is not a Pad mode"))),
        };
    }
    one(like(t, v))
}

/// Index `j` reflected into [0, n) without repeating the edge (numpy's "reflect").
fn reflect(j: i64, n: i64) -> i64 {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let j = j.rem_euclid(period);
    if j < n {
        j
    } else {
        period - j
    }
}

/// Pads with `fill` (or crops, for negative counts) along `dim`: output element i is input
/// element i - begin where that exists, else `fill`, as in ONNX Runtime; the output has
/// n + begin + end elements, and fewer than none is an error.
pub(crate) fn pad_constant(t: &Tensor, dim: usize, begin: i64, end: i64, fill: f64) -> R<Tensor> {
    let n = t.dims()[dim] as i64;
    // Pads come from attributes and inputs (Conv, pooling, Pad): their size is the file's to say.
    let size = i128::from(n) + i128::from(begin) + i128::from(end);
    if size < 0 {
        return Err(Error::Op(format!(
            "pads {begin} and {end} leave {size} elements of axis {dim} (size {n})"
        )));
    }
    let mut out = t.dims().to_vec();
    out[dim] = usize::try_from(size).unwrap_or(usize::MAX);
    check_output(&out, t.dtype())?;
    // No block is longer than the whole output, checked above: the kept part and the two pads
    // add up to it, or nothing is kept and the one block is the output.
    let block = |len: i128| -> R<Tensor> {
        let mut shape = t.dims().to_vec();
        shape[dim] = len as usize;
        c(Tensor::full(fill as f32, shape, t.device())?.to_dtype(t.dtype()))
    };
    let keep_from = begin.saturating_neg().clamp(0, n);
    let keep_to = n.saturating_add(end.min(0)).max(keep_from);
    if keep_from == keep_to {
        // Nothing of the input is kept (pads and crops that overlap it whole): all fill.
        return block(size);
    }
    let mut t = narrow(t, dim, keep_from as usize, (keep_to - keep_from) as usize)?;
    if begin > 0 {
        t = c(Tensor::cat(&[&block(begin.into())?, &t], dim))?;
    }
    if end > 0 {
        t = c(Tensor::cat(&[&t, &block(end.into())?], dim))?;
    }
    Ok(t)
}

pub fn resize(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let x = cx.float(0)?;
    let rank = x.rank();
    let mode = cx.string("mode", "nearest")?;
    if !matches!(mode.as_str(), "nearest" | "linear" | "cubic") {
        return Err(Error::Op(format!(
            "mode '{mode}' is not a Resize mode (nearest, linear, cubic)"
        )));
    }
    let cubic = Cubic {
        a: cx.float_attr("cubic_coeff_a", -0.75)?,
        exclude_outside: cx.int("exclude_outside", 0)? != 0,
    };
    if cx.int("antialias", 0)? != 0 {
        return Err("antialias=1 is not supported".into());
    }
    let ctm = cx.string("coordinate_transformation_mode", "half_pixel")?;
    let nearest = cx.string("nearest_mode", "round_prefer_floor")?;
    let axes: Vec<usize> = match cx.ints("axes")? {
        Some(a) => a.iter().map(|&a| axis(a, rank)).collect::<R<_>>()?,
        None => (0..rank).collect(),
    };
    let (scales_in, sizes_in) = if cx.opset < 11 {
        (cx.opt(1).map(Value::to_f64s).transpose()?, None)
    } else {
        (
            cx.opt(2)
                .map(Value::to_f64s)
                .transpose()?
                .filter(|s| !s.is_empty()),
            cx.ints_input(3)?.filter(|s| !s.is_empty()),
        )
    };
    let policy = cx.string("keep_aspect_ratio_policy", "stretch")?;
    if sizes_in.as_ref().is_some_and(|sz| sz.len() != axes.len()) {
        return Err("sizes do not fit the axes".into());
    }
    let common = sizes_in
        .as_ref()
        .and_then(|sz| common_scale(&policy, sz, &axes, x.dims()));
    // Half-precision inputs interpolate in f32: CPUs have no f16 arithmetic, and candle's
    // software fallback made a 1 MiB output take a second.
    let half = matches!(x.dtype(), CDType::F16 | CDType::BF16);
    let mut t = if half {
        c(x.to_dtype(CDType::F32))?
    } else {
        x.clone()
    };
    let mut shape = x.dims().to_vec();
    for (k, &a) in axes.iter().enumerate() {
        let n = x.dims()[a];
        let (out, scale) = match (&sizes_in, &scales_in) {
            (Some(_), _) if common.is_some() => {
                let s = common.unwrap_or(1.0);
                ((s * n as f32 + 0.5).floor() as usize, s)
            }
            (Some(sz), _) => {
                let o = *sz.get(k).ok_or("sizes do not fit the axes")? as usize;
                (o, o as f32 / n as f32)
            }
            (None, Some(sc)) => {
                let s = *sc.get(k).ok_or("scales do not fit the axes")? as f32;
                (((n as f32) * s).floor() as usize, s)
            }
            _ => return Err("one of scales and sizes is required".into()),
        };
        shape[a] = out;
        check_output(&shape, x.dtype())?;
        if out == n && scale == 1.0 {
            continue;
        }
        if n == 0 && out == 0 {
            continue;
        }
        if n == 0 {
            return Err(Error::Op(format!(
                "axis {a} is empty: there is nothing to resize to {out}"
            )));
        }
        let src = |i: usize| source_coordinate(&ctm, i as f32, scale, n, out);
        t = match mode.as_str() {
            "nearest" => {
                let idx: Vec<i64> = (0..out)
                    .map(|i| Ok(round_nearest(&nearest, src(i)?)?.clamp(0, n as i64 - 1)))
                    .collect::<R<_>>()?;
                select(&t, &idx, a)?
            }
            "linear" => weighted_sum(&t, a, linear_taps(out, n, &src)?)?,
            _ => weighted_sum(&t, a, cubic.taps(out, n, &src)?)?,
        };
    }
    if half {
        t = c(t.to_dtype(x.dtype()))?;
    }
    one(like(t, v))
}

/// One tap of an interpolation along an axis: for each output sample, the input index it reads
/// and that value's weight.
struct Tap {
    index: Vec<i64>,
    weight: Vec<f32>,
}

impl Tap {
    fn with_capacity(n: usize) -> Tap {
        Tap {
            index: Vec::with_capacity(n),
            weight: Vec::with_capacity(n),
        }
    }
}

/// `t` interpolated along axis `a`: output sample i is Σ over taps of weight[i] · t[index[i]].
fn weighted_sum(t: &Tensor, a: usize, taps: Vec<Tap>) -> R<Tensor> {
    let mut sum: Option<Tensor> = None;
    for tap in taps {
        let mut shape = vec![1usize; t.rank()];
        shape[a] = tap.weight.len();
        let w = c(Tensor::from_vec(tap.weight, shape.as_slice(), t.device())?.to_dtype(t.dtype()))?;
        let term = c(select(t, &tap.index, a)?.broadcast_mul(&w))?;
        sum = Some(match sum {
            None => term,
            Some(s) => c(s.add(&term))?,
        });
    }
    sum.ok_or_else(|| "an interpolation without taps".into())
}

/// Linear interpolation of an axis of size `n` to `out` samples at the source coordinates
/// `src` gives, clamped into the axis.
fn linear_taps(out: usize, n: usize, src: &dyn Fn(usize) -> R<f32>) -> R<Vec<Tap>> {
    let (mut lo, mut hi) = (Tap::with_capacity(out), Tap::with_capacity(out));
    for i in 0..out {
        let p = src(i)?.clamp(0.0, (n - 1) as f32);
        let below = p.floor();
        lo.index.push(below as i64);
        hi.index.push((below as i64 + 1).min(n as i64 - 1));
        lo.weight.push(1.0 - (p - below));
        hi.weight.push(p - below);
    }
    Ok(vec![lo, hi])
}

/// Cubic convolution (Keys 1981) with the operator's `cubic_coeff_a` and `exclude_outside`.
struct Cubic {
    a: f32,
    exclude_outside: bool,
}

impl Cubic {
    /// The kernel at distance `d` from a sample: 1 at 0, 0 at the other integers, 0 from 2 on.
    fn weight(&self, d: f32) -> f32 {
        let (a, d) = (self.a, d.abs());
        if d <= 1.0 {
            ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
        } else if d < 2.0 {
            ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
        } else {
            0.0
        }
    }

    /// The four samples around each source coordinate: ⌊p⌋ − 1 … ⌊p⌋ + 2, indices past the
    /// edges reading the edge (the definition pads with edge values) or, with
    /// `exclude_outside`, weighing nothing, the other weights scaled to sum to 1.
    fn taps(&self, out: usize, n: usize, src: &dyn Fn(usize) -> R<f32>) -> R<Vec<Tap>> {
        let mut taps: Vec<Tap> = (0..4).map(|_| Tap::with_capacity(out)).collect();
        for i in 0..out {
            let p = src(i)?;
            let below = p.floor();
            let mut w = [0f32; 4];
            let mut idx = [0i64; 4];
            for k in 0..4 {
                let at = below + k as f32 - 1.0;
                w[k] = self.weight(p - at);
                idx[k] = at as i64;
            }
            let inside = |j: i64| (0..n as i64).contains(&j);
            if self.exclude_outside {
                let total: f32 = (0..4).filter(|&k| inside(idx[k])).map(|k| w[k]).sum();
                for k in 0..4 {
                    w[k] = if inside(idx[k]) { w[k] / total } else { 0.0 };
                }
            }
            for (k, tap) in taps.iter_mut().enumerate() {
                tap.index.push(idx[k].clamp(0, n as i64 - 1));
                tap.weight.push(w[k]);
            }
        }
        Ok(taps)
    }
}

/// keep_aspect_ratio_policy (opset 18): one scale for all axes, fitting inside ("not_larger") or
/// around ("not_smaller") the sizes; None for "stretch".
fn common_scale(policy: &str, sizes: &[i64], axes: &[usize], dims: &[usize]) -> Option<f32> {
    let ratios = axes
        .iter()
        .zip(sizes)
        .map(|(&a, &s)| s as f32 / dims[a] as f32);
    match policy {
        "not_larger" => Some(ratios.fold(f32::INFINITY, f32::min)),
        "not_smaller" => Some(ratios.fold(0.0, f32::max)),
        _ => None,
    }
}

/// Where output index `x` samples the input, per coordinate_transformation_mode.
fn source_coordinate(mode: &str, x: f32, scale: f32, n: usize, out: usize) -> R<f32> {
    Ok(match mode {
        "half_pixel" => (x + 0.5) / scale - 0.5,
        "pytorch_half_pixel" if out > 1 => (x + 0.5) / scale - 0.5,
        "pytorch_half_pixel" => 0.0,
        "align_corners" if out > 1 => x * (n as f32 - 1.0) / (out as f32 - 1.0),
        "align_corners" => 0.0,
        "asymmetric" => x / scale,
        "tf_half_pixel_for_nn" => (x + 0.5) / scale,
        "half_pixel_symmetric" => {
            let adjustment = out as f32 / (scale * n as f32);
            let center = n as f32 / 2.0;
            center * (1.0 - adjustment) + (x + 0.5) / scale - 0.5
        }
        m => {
            return Err(Error::Op(format!(
                "coordinate_transformation_mode '{m}' is not supported"
            )))
        }
    })
}

fn round_nearest(mode: &str, x: f32) -> R<i64> {
    let half = x.fract().abs() == 0.5;
    Ok(match mode {
        "round_prefer_floor" if half => x.floor(),
        "round_prefer_ceil" if half => x.ceil(),
        "round_prefer_floor" | "round_prefer_ceil" => x.round(),
        "floor" => x.floor(),
        "ceil" => x.ceil(),
        m => return Err(Error::Op(format!("nearest_mode '{m}' is not supported"))),
    } as i64)
}
