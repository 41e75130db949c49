//! Pooling: MaxPool and AveragePool (pads, strides, dilations, ceil mode, count_include_pad)
//! and the global pools.
//!
//! The input is padded to exactly the windows' reach, which gives ONNX Runtime's windows for
//! every attribute combination. Float32 MaxPool is a custom op over those windows, with its own
//! backward pass. Otherwise each output is the max (or sum) over shifted strided views of the
//! padded input, one per kernel offset; without dilation and gradients, candle's pooling kernels
//! compute the same windows faster.

use candle_core::Tensor;

use super::conv::{pairs, spatial, strided, to_2d};
use super::resize::pad_constant;
use super::{c, like, one, Cx, Error, R};
use crate::value::Value;
use zeropoint_graph::Op;

pub fn pool(cx: &Cx) -> R<Vec<Value>> {
    if cx.node.outputs.get(1).is_some_and(|o| !o.is_empty()) {
        return Err("the Indices output of MaxPool is not supported".into());
    }
    let v = cx.input(0)?;
    if !v.dtype.is_float() {
        // 8-bit maxima are exact in f32.
        let f = crate::ops::elementwise::cast_value(v, zeropoint_onnx::DType::F32)?;
        let inputs = [Some(f)];
        let y = pool(&Cx {
            inputs: &inputs,
            ..*cx
        })?;
        return Ok(vec![crate::ops::elementwise::cast_value(&y[0], v.dtype)?]);
    }
    let x = cx.float(0)?;
    let one_d = x.rank() == 3;
    let x = to_2d(x)?;
    let w = Windows::new(cx, &x, one_d)?;
    // Padding decides the output's size: refused over the memory limit before it is allocated
    // (and the padded frame, where one is made: `Windows::grow`).
    let (n, ch) = (x.dims()[0], x.dims()[1]);
    crate::ops::check_output(&[n, ch, w.out[0], w.out[1]], x.dtype())?;
    // Without dilation, candle's own pooling kernels cover the padded input exactly. Their
    // gradients are not usable (candle 0.11 scales max-pool gradients by (#max)/k² instead of
    // 1/#max, and has none for overlapping windows): differentiated runs that are not float32
    // MaxPool take the window path.
    let native = w.d == [1, 1] && !x.track_op();
    let y = if cx.node.op == Op::MaxPool {
        max_pool(&x, &w, native)?
    } else {
        let include_pad = cx.int("count_include_pad", 0)? != 0;
        average_pool(&x, &w, native, include_pad)?
    };
    let y = if one_d { c(y.squeeze(2))? } else { y };
    one(like(y, v))
}

/// The pooling windows over the two spatial axes of a 4-D input: output size, kernel, strides,
/// dilations, explicit pads, and the padded length the windows reach.
struct Windows {
    out: Vec<usize>,
    reach: Vec<i64>,
    pads: Vec<(i64, i64)>,
    k: Vec<usize>,
    s: Vec<usize>,
    d: Vec<usize>,
}

impl Windows {
    fn new(cx: &Cx, x: &Tensor, one_d: bool) -> R<Windows> {
        let kernel = cx
            .ints("kernel_shape")?
            .ok_or("attribute kernel_shape is required")?;
        // `x` is 4-D here; a 1-D pool was viewed as 2-D with a unit height.
        let axes = if one_d { 1 } else { 2 };
        if kernel.len() != axes {
            return Err(Error::Op(format!(
                "kernel_shape {kernel:?} does not fit the {axes} spatial axes of the input"
            )));
        }
        let sp = spatial(cx, kernel.iter().map(|&k| k.max(1) as usize).collect())?;
        let n = sp.kernel.len();
        let size = x.dims()[4 - n..].to_vec();
        let pads = sp.conv_pads(&size);
        let ceil = cx.int("ceil_mode", 0)? != 0;
        let mut out = Vec::new();
        let mut reach = Vec::new();
        for i in 0..n {
            let (s, k) = (sp.strides[i] as i64, sp.effective_kernel(i) as i64);
            let span = size[i] as i64 + pads[i].0 + pads[i].1 - k;
            let mut o = if ceil {
                (span + s - 1).div_euclid(s) + 1
            } else {
                span.div_euclid(s) + 1
            };
            // A last window starting in the end padding is dropped (ceil mode only).
            if ceil && (o - 1) * s >= size[i] as i64 + pads[i].0 {
                o -= 1;
            }
            if o < 1 {
                return Err(Error::Op(format!(
                    "kernel {:?} is larger than the padded input",
                    sp.kernel
                )));
            }
            out.push(o as usize);
            reach.push((o - 1) * s + k);
        }
        Ok(Windows {
            out: pairs(&out, 1),
            reach: pairs(&reach, 1),
            pads: pairs(&pads, (0, 0)),
            k: pairs(&sp.kernel, 1),
            s: pairs(&sp.strides, 1),
            d: pairs(&sp.dilations, 1),
        })
    }

    /// `t` padded to exactly the reach with `fill`: explicit pads at the beginning, the rest at
    /// the end.
    fn grow(&self, t: &Tensor, fill: f64) -> R<Tensor> {
        let (n, ch) = (t.dims()[0], t.dims()[1]);
        let reach = self.reach.iter().map(|&r| r.max(0) as usize);
        let frame: Vec<usize> = [n, ch].into_iter().chain(reach).collect();
        crate::ops::check_output(&frame, t.dtype())?;
        let mut t = t.clone();
        for (i, dim) in [2usize, 3].into_iter().enumerate() {
            let tail = self.reach[i] - self.pads[i].0 - t.dims()[dim] as i64;
            t = pad_constant(&t, dim, self.pads[i].0, tail, fill)?;
        }
        Ok(t)
    }

    /// One strided view of the padded input per kernel offset.
    fn views(&self, t: &Tensor) -> R<Vec<Tensor>> {
        let (k, s, d, out) = (&self.k, &self.s, &self.d, &self.out);
        let mut w = Vec::new();
        for i in 0..k[0] {
            for j in 0..k[1] {
                let r = strided(t, 2, i * d[0], out[0], s[0])?;
                w.push(strided(&r, 3, j * d[1], out[1], s[1])?);
            }
        }
        Ok(w)
    }
}

fn max_pool(x: &Tensor, w: &Windows, native: bool) -> R<Tensor> {
    let (k, s) = ((w.k[0], w.k[1]), (w.s[0], w.s[1]));
    let mut window = MaxPool {
        k,
        s,
        d: (w.d[0], w.d[1]),
        out: (w.out[0], w.out[1]),
        pad: (0, 0),
    };
    let (top, left) = (w.pads[0].0, w.pads[1].0);
    if x.dtype() == candle_core::DType::F32 && !x.track_op() && top >= 0 && left >= 0 {
        // No gradient to send back: the windows read the input where it lies and treat the
        // padding as −∞, instead of copying the input into a padded frame first (two copies
        // were a fifth of a ResNet's stem pooling).
        window.pad = (top as usize, left as usize);
        return c(x.contiguous()?.apply_op1(window));
    }
    let xp = w.grow(x, f64::NEG_INFINITY)?;
    if xp.dtype() == candle_core::DType::F32 {
        c(xp.contiguous()?.apply_op1(window))
    } else if native {
        c(xp.max_pool2d_with_stride(k, s))
    } else {
        let mut it = w.views(&xp)?.into_iter();
        let first = it.next().ok_or("empty kernel")?;
        it.try_fold(first, |m, v| c(m.maximum(&v)))
    }
}

fn average_pool(x: &Tensor, w: &Windows, native: bool, include_pad: bool) -> R<Tensor> {
    let xp = w.grow(x, 0.0)?;
    let (k, s, d, out, pads) = (&w.k, &w.s, &w.d, &w.out, &w.pads);
    let sum = if native {
        let avg = c(xp.avg_pool2d_with_stride((k[0], k[1]), (s[0], s[1])))?;
        c(avg.affine((k[0] * k[1]) as f64, 0.0))?
    } else {
        sum_all(w.views(&xp)?)?
    };
    // The divisor is separable: per axis, how many window positions count.
    let counts: Vec<Vec<f32>> = (0..2)
        .map(|i| {
            let len = x.dims()[2 + i] as i64;
            let (lo, hi) = if include_pad {
                (-pads[i].0, len + pads[i].1)
            } else {
                (0, len)
            };
            (0..out[i])
                .map(|o| {
                    let first = (o * s[i]) as i64 - pads[i].0;
                    (0..k[i] as i64)
                        .filter(|j| (lo..hi).contains(&(first + j * d[i] as i64)))
                        .count() as f32
                })
                .collect()
        })
        .collect();
    let count: Vec<f32> = counts[0]
        .iter()
        .flat_map(|h| counts[1].iter().map(move |w| h * w))
        .collect();
    let count =
        c(Tensor::from_vec(count, (1, 1, out[0], out[1]), x.device())?.to_dtype(x.dtype()))?;
    c(sum.broadcast_div(&count))
}

fn sum_all(ts: Vec<Tensor>) -> R<Tensor> {
    let mut it = ts.into_iter();
    let first = it.next().ok_or("empty kernel")?;
    it.try_fold(first, |a, b| c(a.add(&b)))
}

pub fn global_pool(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let x = cx.float(0)?;
    let dims: Vec<usize> = (2..x.rank()).collect();
    let y = if cx.node.op == Op::GlobalMaxPool {
        dims.iter()
            .try_fold(x.clone(), |t, &d| c(t.max_keepdim(d)))?
    } else {
        c(x.mean_keepdim(dims))?
    };
    one(like(y, v))
}

/// Max pooling of a padded float32 input [N, C, H, W] as a candle op: direct loops over each
/// image plane in parallel (candle's kernel visits one window at a time; row-wise maxima over
/// each kernel offset vectorize), and a backward pass that sends each output's gradient to its
/// window's first maximum, as PyTorch and ONNX's Indices output pick it (the maximum of views it
/// replaces split the gradient of tied values, and zeroed and re-added the whole input once per
/// kernel offset).
struct MaxPool {
    k: (usize, usize),
    s: (usize, usize),
    d: (usize, usize),
    out: (usize, usize),
    /// Where the input starts in the padded frame the windows cover (rows, columns): the
    /// padding around it reads as −∞. (0, 0) when the input given is padded already.
    pad: (usize, usize),
}

impl MaxPool {
    /// Calls `f(index, input plane, output plane)` for each image plane of `x` [planes, H, W]
    /// and the matching plane of an output `y`, in parallel.
    fn planes(
        &self,
        x: &[f32],
        (h, wd): (usize, usize),
        y: &mut [f32],
        plane_out: usize,
        f: impl Fn(usize, &[f32], &mut [f32]) + Sync,
    ) {
        use rayon::prelude::*;
        if plane_out == 0 {
            return;
        }
        y.par_chunks_mut(plane_out)
            .enumerate()
            .for_each(|(p, out)| f(p, &x[p * h * wd..(p + 1) * h * wd], out));
    }

    /// The maxima of `planes` image planes [H, W] of `x`, back to back. The plane count is
    /// given, not derived from `x`: an input of no rows or columns has planes whose windows read
    /// only padding.
    fn forward(&self, x: &[f32], shape: (usize, usize, usize)) -> Vec<f32> {
        if self.s == (1, 1) && self.d == (1, 1) && self.out.1 < NARROW {
            self.forward_narrow(x, shape)
        } else {
            self.forward_rows(x, shape)
        }
    }

    /// [`forward`](Self::forward) one output row at a time.
    fn forward_rows(&self, x: &[f32], (planes, h, wd): (usize, usize, usize)) -> Vec<f32> {
        let ((oh, ow), (kh, kw), (sh, sw), (dh, dw)) = (self.out, self.k, self.s, self.d);
        let (top, left) = self.pad;
        let mut y = vec![f32::NEG_INFINITY; planes * oh * ow];
        // The padded columns the windows of an output row reach.
        let reach = ow.saturating_sub(1) * sw + (kw.max(1) - 1) * dw + 1;
        // A window's maximum is the maximum over its columns of each column's maximum: kh + kw
        // comparisons per output instead of kh·kw (a 13×13 SPP pooling took 8 % of a YOLO's run).
        self.planes(x, (h, wd), &mut y, oh * ow, |_, src, out| {
            let mut columns = vec![f32::NEG_INFINITY; reach];
            for (r, row_out) in out.chunks_mut(ow).enumerate() {
                zeropoint_core::kernel::dispatch(
                    #[inline(always)]
                    || {
                        columns.fill(f32::NEG_INFINITY);
                        for i in 0..kh {
                            // Rows in the padding hold −∞ and change nothing.
                            let y = (r * sh + i * dh).wrapping_sub(top);
                            if let (true, Some(inside)) = (y < h, columns.get_mut(left..)) {
                                let row = &src[y * wd..][..wd];
                                inside.iter_mut().zip(row).for_each(keep_max);
                            }
                        }
                        for j in 0..kw {
                            let taps = &columns[j * dw..];
                            if sw == 1 {
                                row_out.iter_mut().zip(taps).for_each(keep_max);
                            } else if let Some((last, head)) =
                                row_out.split_last_mut().filter(|_| sw == 2)
                            {
                                // Every other tap: pairs vectorize as shuffles, a `step_by`
                                // was a scalar loop of compares and branches.
                                (head.iter_mut().zip(taps.chunks_exact(2)))
                                    .for_each(|(m, pair)| keep_max((m, &pair[0])));
                                keep_max((last, &taps[2 * head.len()]));
                            } else {
                                row_out
                                    .iter_mut()
                                    .zip(taps.iter().step_by(sw))
                                    .for_each(keep_max);
                            }
                        }
                    },
                );
            }
        });
        y
    }

    /// [`forward`](Self::forward) at stride 1 without dilation on planes of fewer than
    /// [`NARROW`] output columns, the same maxima in the same order: each pass is one long
    /// loop over a whole plane, where the row-by-row passes ran loops of one row, too short to
    /// vectorize (an SPP block's 13×13 planes: 1.7 ms a run of ddddocr-det, against ONNX
    /// Runtime's 0.4). The rows' maxima (over the kernel's rows) are laid out in rows padded
    /// with −∞ to `ow + kw − 1` columns, so that tap j of every output column is the same
    /// shift of the whole plane.
    fn forward_narrow(&self, x: &[f32], (planes, h, wd): (usize, usize, usize)) -> Vec<f32> {
        let ((oh, ow), (kh, kw)) = (self.out, self.k);
        let (top, left) = self.pad;
        let pw = (ow + kw.max(1) - 1).max(left + wd);
        let mut y = vec![f32::NEG_INFINITY; planes * oh * ow];
        self.planes(x, (h, wd), &mut y, oh * ow, |_, src, out| {
            let mut rows = vec![f32::NEG_INFINITY; oh * wd];
            // The taps read up to kw − 1 past the last row: −∞ there too.
            let mut padded = vec![f32::NEG_INFINITY; oh * pw + kw];
            let mut taps = vec![f32::NEG_INFINITY; oh * pw];
            zeropoint_core::kernel::dispatch(
                #[inline(always)]
                || {
                    for i in 0..kh {
                        // Output rows r whose row r + i − top lies in the input.
                        let first = top.saturating_sub(i);
                        let end = (h + top).saturating_sub(i).min(oh);
                        if first < end {
                            let from = (first + i - top) * wd;
                            (rows[first * wd..end * wd].iter_mut())
                                .zip(&src[from..from + (end - first) * wd])
                                .for_each(keep_max);
                        }
                    }
                    for (p, r) in padded.chunks_mut(pw).zip(rows.chunks(wd.max(1))) {
                        p[left..left + wd].copy_from_slice(r);
                    }
                    for j in 0..kw {
                        taps.iter_mut().zip(&padded[j..]).for_each(keep_max);
                    }
                    for (o, t) in out.chunks_mut(ow).zip(taps.chunks(pw)) {
                        o.copy_from_slice(&t[..ow]);
                    }
                },
            );
        });
        y
    }

    /// ∂X: each output's gradient `dy` added onto the element its forward pass kept.
    fn backward(&self, x: &[f32], (h, wd): (usize, usize), dy: &[f32]) -> Vec<f32> {
        let ((oh, ow), (kh, kw), (sh, sw), (dh, dw)) = (self.out, self.k, self.s, self.d);
        // Each window element's offset from the window's first.
        let taps: Vec<usize> = (0..kh)
            .flat_map(|i| (0..kw).map(move |j| i * dh * wd + j * dw))
            .collect();
        let mut dx = vec![0f32; x.len()];
        self.planes(x, (h, wd), &mut dx, h * wd, |p, src, dx| {
            let dy = &dy[p * oh * ow..(p + 1) * oh * ow];
            for r in 0..oh {
                for q in 0..ow {
                    let first = r * sh * wd + q * sw;
                    let window = &src[first..];
                    let (mut m, mut at) = (f32::NEG_INFINITY, None);
                    for &t in &taps {
                        if window[t] > m || window[t].is_nan() {
                            (m, at) = (window[t], Some(t));
                        }
                    }
                    if let Some(t) = at {
                        dx[first + t] += dy[r * ow + q];
                    }
                }
            }
        });
        dx
    }
}

/// Output columns below which a stride-1 pooling runs [`MaxPool::forward_narrow`].
const NARROW: usize = 32;

/// `m` becomes `v` if `v` is larger or NaN: a NaN in the window makes the result NaN.
#[inline(always)]
fn keep_max((m, &v): (&mut f32, &f32)) {
    if v > *m || v.is_nan() {
        *m = v;
    }
}

impl candle_core::CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (n, ch, h, wd) = l.shape().dims4()?;
        let y = self.forward(crate::value::storage_f32s(x, l)?, (n * ch, h, wd));
        let shape = candle_core::Shape::from((n, ch, self.out.0, self.out.1));
        Ok((candle_core::CpuStorage::F32(y), shape))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (_, _, h, wd) = x.dims4()?;
        let dx = crate::value::with_f32_slices([x, dy], |[x, dy]| self.backward(x, (h, wd), dy))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The padding read as −∞ in place gives what the padded copy gives: pads on either side,
    /// strides 1 to 3, dilation, and windows that reach past the padding (ceil mode) or stop
    /// short of the input's end.
    #[test]
    fn max_pool_pads_in_place_as_a_padded_copy_does() {
        let (h, wd) = (9, 11);
        let x: Vec<f32> = (0..2 * h * wd)
            .map(|i| ((i * 7919) % 23) as f32 - 11.0)
            .collect();
        // (kernel, strides, dilation, (top, left), output).
        let cases = [
            ((3, 3), (2, 2), (1, 1), (1, 1), (5, 6)),
            ((3, 3), (2, 2), (1, 1), (1, 1), (5, 5)),
            ((2, 3), (3, 3), (1, 2), (0, 2), (4, 5)),
            ((3, 2), (1, 2), (2, 1), (2, 0), (8, 6)),
            ((5, 5), (1, 1), (1, 1), (2, 2), (9, 11)),
        ];
        for (k, s, d, pad, out) in cases {
            let reach = |o: usize, s: usize, k: usize, d: usize| (o - 1) * s + (k - 1) * d + 1;
            let (rh, rw) = (reach(out.0, s.0, k.0, d.0), reach(out.1, s.1, k.1, d.1));
            let mut padded = vec![f32::NEG_INFINITY; 2 * rh * rw];
            for p in 0..2 {
                for r in 0..h.min(rh - pad.0) {
                    for q in 0..wd.min(rw - pad.1) {
                        padded[(p * rh + r + pad.0) * rw + q + pad.1] = x[(p * h + r) * wd + q];
                    }
                }
            }
            let op = |pad| MaxPool { k, s, d, out, pad };
            let want = op((0, 0)).forward(&padded, (2, rh, rw));
            assert_eq!(
                op(pad).forward(&x, (2, h, wd)),
                want,
                "{k:?} {s:?} {d:?} {pad:?}"
            );
        }
        // An input of no rows: every window reads padding (a fuzzed model's [1, 1, 0, 6]).
        let op = MaxPool {
            k: (3, 3),
            s: (2, 2),
            d: (1, 1),
            out: (1, 3),
            pad: (1, 1),
        };
        assert_eq!(op.forward(&[], (2, 0, 6)), [f32::NEG_INFINITY; 6]);
    }

    /// Narrow planes at stride 1 take whole-plane passes: the same bits as the row-by-row
    /// passes, NaN and ±∞ included, with pads on any side, windows larger than the plane, and
    /// planes of no rows or columns.
    #[test]
    fn narrow_planes_pool_as_rows_do() {
        for (i, (h, wd, k, pad, out)) in [
            (13, 13, (5, 5), (2, 2), (13, 13)),
            (13, 13, (13, 13), (6, 6), (13, 13)),
            (7, 9, (3, 2), (0, 1), (5, 9)),
            (5, 6, (2, 4), (1, 0), (5, 3)),
            (3, 4, (7, 7), (3, 3), (3, 4)),
            (0, 5, (3, 3), (1, 1), (1, 5)),
            (4, 0, (3, 3), (1, 1), (4, 1)),
        ]
        .into_iter()
        .enumerate()
        {
            let mut x: Vec<f32> = (0..3 * h * wd)
                .map(|v| ((v * 7919 + i) % 29) as f32 - 14.0)
                .collect();
            for (at, special) in [(5, f32::NAN), (11, f32::INFINITY), (17, f32::NEG_INFINITY)] {
                if let Some(v) = x.get_mut(at) {
                    *v = special;
                }
            }
            let op = MaxPool {
                k,
                s: (1, 1),
                d: (1, 1),
                out,
                pad,
            };
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            assert_eq!(
                bits(op.forward_narrow(&x, (3, h, wd))),
                bits(op.forward_rows(&x, (3, h, wd))),
                "{h}x{wd} {k:?} {pad:?}"
            );
        }
    }

    /// Forward and backward against a window-by-window definition, with dilation, strides and
    /// tied maxima (the first of the ties in row-major window order takes the gradient).
    #[test]
    fn max_pool_follows_its_windows_and_sends_gradients_to_the_first_maximum() {
        let (h, wd) = (7, 8);
        let op = MaxPool {
            k: (2, 3),
            s: (2, 1),
            d: (2, 1),
            out: (2, 6),
            pad: (0, 0),
        };
        // Two planes; the values repeat every 5, so most windows hold tied maxima.
        let x: Vec<f32> = (0..2 * h * wd).map(|i| ((i * 3) % 5) as f32).collect();
        let dy: Vec<f32> = (0..2 * 2 * 6).map(|i| 1.0 + i as f32).collect();
        let y = op.forward(&x, (2, h, wd));
        let dx = op.backward(&x, (h, wd), &dy);
        let mut want_dx = vec![0f32; x.len()];
        for p in 0..2 {
            for r in 0..2 {
                for q in 0..6 {
                    let window: Vec<usize> = (0..2)
                        .flat_map(|i| (0..3).map(move |j| (r * 2 + i * 2) * wd + q + j))
                        .map(|e| p * h * wd + e)
                        .collect();
                    let max = window.iter().map(|&e| x[e]).fold(f32::MIN, f32::max);
                    assert_eq!(y[(p * 2 + r) * 6 + q], max);
                    let first = *window.iter().find(|&&e| x[e] == max).unwrap();
                    want_dx[first] += dy[(p * 2 + r) * 6 + q];
                }
            }
        }
        assert_eq!(dx, want_dx);
    }
}
