//! Convolutions: Conv and ConvTranspose, 1-D and 2-D.
//!
//! candle's conv2d takes one padding, stride and dilation for both axes; ONNX allows them per
//! axis and asymmetric. Uneven pads are applied explicitly before the convolution, uneven strides
//! by subsampling a stride-1 result. ConvTranspose is one matrix product whose columns are
//! scattered onto the output (col2im); where a gradient is needed, it is the convolution of the
//! zero-upsampled input with the flipped, transposed kernel. Both cover groups, dilations and
//! output padding.
//! The convolution itself is a matrix product of image patches (im2col) with the kernel, in
//! cache-sized tiles of output positions for float32 runs ([`conv_gemm`], within
//! [`conv_grad`]'s op, whose backward pass uses the same tiles); float32 depthwise convolutions
//! are direct loops (`conv_grad`'s depthwise op). Other dtypes take candle expressions: a chunk
//! of the batch at a time, and a sum of shifted products for depthwise convolutions.

use candle_core::Tensor;

use super::conv_gemm::{self, Sums};
use super::conv_grad;
use super::resize::pad_constant;
use super::{c, check_output, like, narrow, one, select, Cx, Error, R};
use crate::value::Value;

/// Spatial attributes of Conv, ConvTranspose and the pools, resolved per axis.
pub(super) struct Spatial {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    /// Explicit pads (begin, end) per axis; auto_pad is resolved by the caller.
    pub pads: Vec<(i64, i64)>,
    pub auto_pad: String,
}

pub(super) fn spatial(cx: &Cx, kernel: Vec<usize>) -> R<Spatial> {
    let n = kernel.len();
    check_extent("kernel", kernel.iter().map(|&k| k as i64))?;
    let list = |name: &str| -> R<Vec<usize>> {
        match cx.ints(name)? {
            None => Ok(vec![1; n]),
            Some(v) if v.len() == n && v.iter().all(|&s| s >= 1) => {
                check_extent(name, v.iter().copied())?;
                Ok(v.iter().map(|&s| s as usize).collect())
            }
            Some(v) => Err(Error::Op(format!(
                "{name} {v:?} do not fit {n} spatial axes"
            ))),
        }
    };
    let pads = match cx.ints("pads")? {
        None => vec![(0, 0); n],
        Some(p) if p.len() == 2 * n => {
            check_extent("pads", p.iter().copied())?;
            (0..n).map(|i| (p[i], p[i + n])).collect()
        }
        Some(p) => return Err(Error::Op(format!("pads {p:?} do not fit {n} spatial axes"))),
    };
    Ok(Spatial {
        kernel,
        strides: list("strides")?,
        dilations: list("dilations")?,
        pads,
        auto_pad: cx.string("auto_pad", "NOTSET")?,
    })
}

/// Larger kernels, strides, dilations or pads than this are refused: no real model comes
/// near, and the window arithmetic stays far from i64 overflow (2^24 · 2^24 = 2^48).
const MAX_EXTENT: i64 = 1 << 24;

fn check_extent(name: &str, values: impl Iterator<Item = i64>) -> R<()> {
    for v in values {
        if !(-MAX_EXTENT..=MAX_EXTENT).contains(&v) {
            return Err(Error::Op(format!(
                "{name} value {v} is beyond the supported magnitude {MAX_EXTENT}"
            )));
        }
    }
    Ok(())
}

impl Spatial {
    /// Pads for an input of spatial size `size`, as Conv and the pools resolve auto_pad.
    pub fn conv_pads(&self, size: &[usize]) -> Vec<(i64, i64)> {
        match self.auto_pad.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => (0..size.len())
                .map(|i| {
                    let (s, k) = (self.strides[i] as i64, self.effective_kernel(i) as i64);
                    let out = (size[i] as i64 + s - 1) / s;
                    let total = ((out - 1) * s + k - size[i] as i64).max(0);
                    if self.auto_pad == "SAME_UPPER" {
                        (total / 2, total - total / 2)
                    } else {
                        (total - total / 2, total / 2)
                    }
                })
                .collect(),
            "VALID" => vec![(0, 0); size.len()],
            _ => self.pads.clone(),
        }
    }

    pub fn effective_kernel(&self, i: usize) -> usize {
        (self.kernel[i] - 1) * self.dilations[i] + 1
    }
}

/// Views a 3-D (N, C, L) tensor as 4-D (N, C, 1, L), so that 1-D ops use the 2-D code.
pub(super) fn to_2d(x: &Tensor) -> R<Tensor> {
    if x.rank() == 3 {
        c(x.unsqueeze(2))
    } else if x.rank() == 4 {
        Ok(x.clone())
    } else {
        Err(Error::Op(format!(
            "input of rank {} is not supported (1-D and 2-D spatial only)",
            x.rank()
        )))
    }
}

/// The one dilation that serves both axes of a kernel of `(kh, kw)` taps, if there is one: a
/// dilation along an axis of one tap moves nothing, so a 1-D convolution's (its height's is 1)
/// is its width's. Without this a 1-D Conv of dilation 4096 spread 8 190 zeros into its kernel
/// (brainmaze's EEG spindle detector: 38 s a run, ONNX Runtime 0.15 s).
fn one_dilation(dil: &[usize], (kh, kw): (usize, usize)) -> Option<usize> {
    match (kh, kw) {
        (1, _) => Some(dil[1]),
        (_, 1) => Some(dil[0]),
        _ => (dil[0] == dil[1]).then_some(dil[0]),
    }
}

pub(super) fn pairs<T: Copy>(v: &[T], fill: T) -> Vec<T> {
    if v.len() == 1 {
        vec![fill, v[0]]
    } else {
        v.to_vec()
    }
}

/// The weight's shape against the input's: Conv's weight is [M, C/group, k...] and
/// ConvTranspose's [C, M/group, k...], of the input's rank. The kernels read a weight that does
/// not fit with the wrong strides (a fuzz find: a rank-3 weight on a 2-D convolution gave an
/// output of 43 844 channels, 4 GB).
fn check_weight(x: &Tensor, w: &Tensor, groups: usize, transposed: bool) -> R<()> {
    let (xd, wd) = (x.dims(), w.dims());
    if xd.len() != wd.len() {
        return Err(Error::Op(format!(
            "weight {wd:?} does not fit an input of shape {xd:?} (the ranks must be equal)"
        )));
    }
    if xd.len() < 3 {
        // No channel axis to check: `to_2d` refuses the rank.
        return Ok(());
    }
    let (channels, grouped) = if transposed {
        (wd[0], wd[0])
    } else {
        (wd[1].saturating_mul(groups), wd[0])
    };
    if xd[1] != channels || grouped % groups != 0 {
        let layout = if transposed {
            "[C, M/group, k...]"
        } else {
            "[M, C/group, k...]"
        };
        return Err(Error::Op(format!(
            "weight {wd:?} does not fit {} input channels in {groups} group(s) (weight {layout})",
            xd[1]
        )));
    }
    Ok(())
}

/// A convolution's bias is one value per output channel (ONNX: 1-D, M values); the kernels
/// index it per channel and would wrap around another length.
fn check_bias(bias: Option<&Tensor>, channels: usize) -> R<()> {
    match bias {
        Some(b) if b.rank() != 1 || b.elem_count() != channels => Err(Error::Op(format!(
            "bias {:?} for {channels} output channels",
            b.dims()
        ))),
        _ => Ok(()),
    }
}

/// Pads (positive) or crops (negative) `x` along `dim` with zeros.
fn pad_or_crop(x: &Tensor, dim: usize, begin: i64, end: i64) -> R<Tensor> {
    pad_constant(x, dim, begin, end, 0.0)
}

/// `x[start + step·i]` for i < count along `dim`.
pub(super) fn strided(
    x: &Tensor,
    dim: usize,
    start: usize,
    count: usize,
    step: usize,
) -> R<Tensor> {
    if step == 1 {
        return narrow(x, dim, start, count);
    }
    let idx: Vec<i64> = (0..count).map(|i| (start + i * step) as i64).collect();
    select(x, &idx, dim)
}

pub fn conv(cx: &Cx) -> R<Vec<Value>> {
    conv_summing(cx, Sums::Fast)
}

/// Conv with the sums `sums` allows: ConvInteger's float32 carrier needs the definition's.
pub fn conv_summing(cx: &Cx, sums: Sums) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let (x, w) = (cx.float(0)?, cx.float(1)?);
    let one_d = x.rank() == 3;
    let groups = cx.int("group", 1)?.max(1) as usize;
    check_weight(x, w, groups, false)?;
    let (x, w) = (to_2d(x)?, to_2d(w)?);
    let kernel = w.dims()[2..].to_vec();
    let sp = spatial(
        cx,
        if one_d {
            vec![kernel[1]]
        } else {
            kernel.clone()
        },
    )?;
    let size = &x.dims()[if one_d { 3 } else { 2 }..];
    let pads = pairs(&sp.conv_pads(size), (0, 0));
    let strides = pairs(&sp.strides, 1);
    let dil = pairs(&sp.dilations, 1);
    // candle dilates both axes alike: other dilations become zeros spread into the kernel.
    let (w, dil) = match one_dilation(&dil, (w.dims()[2], w.dims()[3])) {
        Some(d) => (w, d),
        None => (spread(&spread(&w, 2, dil[0])?, 3, dil[1])?, 1),
    };
    let (ph, pw) = (pads[0], pads[1]);
    // Pads are the file's to say: the padded input is checked before it is allocated.
    let grow = |d: usize, p: (i64, i64)| {
        usize::try_from((d as i128 + i128::from(p.0) + i128::from(p.1)).max(0))
            .unwrap_or(usize::MAX)
    };
    let d = x.dims();
    check_output(&[d[0], d[1], grow(d[2], ph), grow(d[3], pw)], x.dtype())?;
    let symmetric = ph.0 == ph.1 && pw.0 == pw.1 && ph.0 == pw.0 && ph.0 >= 0;
    let (xp, pad) = if symmetric {
        (x, ph.0 as usize)
    } else {
        (
            pad_or_crop(&pad_or_crop(&x, 2, ph.0, ph.1)?, 3, pw.0, pw.1)?,
            0,
        )
    };
    let bias = cx.opt(2).map(|b| &b.tensor);
    check_bias(bias, w.dims()[0])?;
    let mut y = conv2d(
        &xp,
        &w,
        bias,
        pad,
        (strides[0], strides[1]),
        dil,
        (groups, sums),
    )?;
    if one_d {
        y = c(y.squeeze(2))?;
    }
    one(like(y, v))
}

/// Elements of the unfolded (im2col) input per matrix product where a gradient is needed: the
/// batch is cut into chunks so that this buffer stays within a few MB rather than growing with
/// the batch.
const COLS_PER_CHUNK: usize = 1 << 21;

/// 2-D convolution with `pad` zeros on every side of the input, plus the bias of each output
/// channel. Depthwise convolutions (one input channel per group) are a sum of shifted products;
/// others one matrix product per group and batch chunk (candle's own conv2d multiplies per
/// image and unfolds the whole batch at once).
fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    pad: usize,
    (sh, sw): (usize, usize),
    dil: usize,
    (groups, sums): (usize, Sums),
) -> R<Tensor> {
    // Empty kernels, batches or outputs: the loops below divide the work by these sizes.
    let (n, c_in, h, wd) = c(x.dims4())?;
    let (m, _, kh, kw) = c(w.dims4())?;
    if kh == 0 || kw == 0 {
        return Err("the kernel is empty".into());
    }
    let (oh, ow) = (
        out_len(h + 2 * pad, kh, sh, dil).ok_or(TOO_LARGE)?,
        out_len(wd + 2 * pad, kw, sw, dil).ok_or(TOO_LARGE)?,
    );
    check_output(&[n, m, oh, ow], x.dtype())?;
    if n == 0 || m == 0 || oh == 0 || ow == 0 {
        return c(Tensor::zeros((n, m, oh, ow), x.dtype(), x.device()));
    }
    if groups > 1 && groups == c_in && w.dims()[0] == c_in {
        let geometry = conv_grad::Depthwise {
            kernel: (kh, kw),
            strides: (sh, sw),
            dilation: dil,
            pad,
            output: (oh, ow),
        };
        return biased(depthwise(x, w, geometry)?, bias);
    }
    if groups == 1 {
        return gemm_conv(x, w, bias, pad, (sh, sw), (dil, sums));
    }
    let (xs, ws) = (c(x.chunk(groups, 1))?, c(w.chunk(groups, 0))?);
    let parts = xs
        .iter()
        .zip(&ws)
        .map(|(x, w)| gemm_conv(x, w, None, pad, (sh, sw), (dil, sums)))
        .collect::<R<Vec<_>>>()?;
    biased(c(Tensor::cat(&parts, 1))?, bias)
}

/// `y` plus the bias of each output channel, if there is one.
fn biased(y: Tensor, bias: Option<&Tensor>) -> R<Tensor> {
    match bias {
        Some(b) => conv_grad::add_bias(&y, b),
        None => Ok(y),
    }
}

/// `x` with `pad` zeros on every side of its two spatial axes.
fn padded(x: &Tensor, pad: usize) -> R<Tensor> {
    if pad == 0 {
        return Ok(x.clone());
    }
    c(x.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad))
}

const TOO_LARGE: &str = "kernel larger than the padded input";

/// The output length of a convolution over `len` with kernel `k`, or None if it does not fit.
fn out_len(len: usize, k: usize, stride: usize, dil: usize) -> Option<usize> {
    (len + stride)
        .checked_sub((k - 1) * dil + 1)
        .map(|v| v / stride)
}

/// One group's convolution as W [M, C·kh·kw] × columns [C·kh·kw, OH·OW], image by image, at
/// strides (`sh`, `sw`) with `pad` zeros around the input: only the output positions are
/// computed (a 1-D STFT at stride 160 does 1/160 of the work of a stride-1 convolution).
/// Float32 runs take [`conv_grad`]'s op: [`conv_gemm`]'s tiled product, which reads the padding
/// as zeros instead of copying the input into a padded one, with its own backward pass.
fn gemm_conv(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    pad: usize,
    (sh, sw): (usize, usize),
    (dil, sums): (usize, Sums),
) -> R<Tensor> {
    let (_, ch, h, wd) = c(x.dims4())?;
    let (_, _, kh, kw) = c(w.dims4())?;
    let oh = out_len(h + 2 * pad, kh, sh, dil).ok_or(TOO_LARGE)?;
    let ow = out_len(wd + 2 * pad, kw, sw, dil).ok_or(TOO_LARGE)?;
    let g = conv_gemm::Geometry {
        input: (ch, h, wd),
        pad,
        kernel: (kh, kw),
        strides: (sh, sw),
        dilation: dil,
        output: (oh, ow),
    };
    let f32 = candle_core::DType::F32;
    if x.dtype() == f32 && w.dtype() == f32 {
        return conv_grad::conv(x, w, bias, (g, sums));
    }
    biased(unbiased_gemm_conv(x, w, g)?, bias)
}

/// [`gemm_conv`] of other dtypes, without the bias, as candle expressions.
fn unbiased_gemm_conv(x: &Tensor, w: &Tensor, g: conv_gemm::Geometry) -> R<Tensor> {
    let (n, ch, _, _) = c(x.dims4())?;
    let (m, _, kh, kw) = c(w.dims4())?;
    let ((oh, ow), (sh, sw), pad, dil) = (g.output, g.strides, g.pad, g.dilation);
    let x = padded(x, pad)?;
    let k = ch * kh * kw;
    let w2 = c(w.reshape((m, k)))?;
    if kh * kw == 1 && sh == 1 && sw == 1 {
        // Pointwise: each image is already its own column matrix [C, H·W].
        let hw = oh * ow;
        let y = c(w2.broadcast_matmul(&x.reshape((n, ch, hw))?.contiguous()?))?;
        return c(y.reshape((n, m, oh, ow)));
    }
    let chunk = (COLS_PER_CHUNK / (k * oh * ow).max(1)).clamp(1, n);
    let mut parts = Vec::new();
    for start in (0..n).step_by(chunk) {
        let b = chunk.min(n - start);
        let xb = c(x.narrow(0, start, b))?;
        let mut taps = Vec::with_capacity(kh * kw);
        for i in 0..kh {
            let rows = strided(&xb, 2, i * dil, oh, sh)?;
            for j in 0..kw {
                taps.push(strided(&rows, 3, j * dil, ow, sw)?);
            }
        }
        // [B, C, kh·kw, OH, OW] is, per image, the column matrix [C·kh·kw, OH·OW].
        let cols = c(Tensor::stack(&taps, 2)?.reshape((b, k, oh * ow)))?;
        parts.push(c(w2.broadcast_matmul(&cols)?.reshape((b, m, oh, ow)))?);
    }
    if parts.len() == 1 {
        return Ok(parts.remove(0));
    }
    c(Tensor::cat(&parts, 0))
}

/// Depthwise convolution: y = Σ over kernel offsets of w[:, i, j] · (shifted x). Float32 takes
/// [`conv_grad`]'s op; other dtypes add one shifted view per offset, at stride 1 on the padded
/// input, subsampled for larger strides.
fn depthwise(x: &Tensor, w: &Tensor, g: conv_grad::Depthwise) -> R<Tensor> {
    if x.dtype() == candle_core::DType::F32 && w.dtype() == candle_core::DType::F32 {
        return conv_grad::depthwise(x, w, g);
    }
    let ((kh, kw), (sh, sw), dil) = (g.kernel, g.strides, g.dilation);
    let xp = padded(x, g.pad)?;
    let reach = |len: usize, k: usize| len + 1 - ((k - 1) * dil + 1);
    let (oh, ow) = (reach(xp.dims()[2], kh), reach(xp.dims()[3], kw));
    let mut y: Option<Tensor> = None;
    for i in 0..kh {
        let rows = c(xp.narrow(2, i * dil, oh))?;
        for j in 0..kw {
            let tap = c(w.narrow(2, i, 1)?.narrow(3, j, 1)?.reshape((1, (), 1, 1)))?;
            let term = c(rows.narrow(3, j * dil, ow)?.broadcast_mul(&tap))?;
            y = Some(match y {
                None => term,
                Some(acc) => c(acc.add(&term))?,
            });
        }
    }
    let y = y.ok_or("empty kernel")?;
    let y = strided(&y, 2, 0, g.output.0, sh)?;
    strided(&y, 3, 0, g.output.1, sw)
}

/// Padding (begin, end) of one axis.
type Pad = (i64, i64);

/// ConvTranspose's (begin, end) pads per axis, from `output_shape`, auto_pad or `pads`, and its
/// output padding.
fn transposed_pads(cx: &Cx, sp: &Spatial, size: &[usize]) -> R<(Vec<Pad>, Vec<i64>)> {
    let n = sp.kernel.len();
    let out_pad = match cx.ints("output_padding")? {
        Some(p) if p.len() == n => p,
        Some(p) => {
            return Err(Error::Op(format!(
                "output_padding {p:?} does not fit {n} axes"
            )))
        }
        None => vec![0; n],
    };
    let pads: Vec<(i64, i64)> = match cx.ints("output_shape")? {
        Some(shape) if shape.len() < n => {
            return Err(Error::Op(format!(
                "output_shape {shape:?} does not fit {n} spatial axes"
            )))
        }
        Some(shape) => {
            let shape = &shape[shape.len() - n..];
            (0..n)
                .map(|i| {
                    let total = sp.strides[i] as i64 * (size[i] as i64 - 1)
                        + out_pad[i]
                        + sp.effective_kernel(i) as i64
                        - shape[i];
                    split_total(total, sp.auto_pad != "SAME_UPPER")
                })
                .collect()
        }
        None if sp.auto_pad.starts_with("SAME") => (0..n)
            .map(|i| {
                let total = sp.strides[i] as i64 * (size[i] as i64 - 1)
                    + out_pad[i]
                    + sp.effective_kernel(i) as i64
                    - (size[i] * sp.strides[i]) as i64;
                split_total(total.max(0), sp.auto_pad == "SAME_LOWER")
            })
            .collect(),
        None => sp.pads.clone(),
    };
    Ok((pads, out_pad))
}

pub fn conv_transpose(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let (x, w) = (cx.float(0)?, cx.float(1)?);
    let one_d = x.rank() == 3;
    let groups = cx.int("group", 1)?.max(1) as usize;
    check_weight(x, w, groups, true)?;
    let (x, w) = (to_2d(x)?, to_2d(w)?);
    let (c_in, m_g, kh, kw) = c(w.dims4())?;
    let sp = spatial(cx, if one_d { vec![kw] } else { vec![kh, kw] })?;
    let n = sp.kernel.len();
    let size: Vec<usize> = x.dims()[4 - n..].to_vec();
    let (pads, out_pad) = transposed_pads(cx, &sp, &size)?;
    let (pads, strides, dil, out_pad) = (
        pairs(&pads, (0, 0)),
        pairs(&sp.strides, 1),
        pairs(&sp.dilations, 1),
        pairs(&out_pad, 0),
    );
    if kh == 0 || kw == 0 {
        return Err("the kernel is empty".into());
    }
    check_bias(cx.opt(2).map(|b| &b.tensor), groups.saturating_mul(m_g))?;
    let plain_f32 = x.dtype() == candle_core::DType::F32 && w.dtype() == candle_core::DType::F32;
    if plain_f32 && !x.track_op() && !w.track_op() {
        let geometry = Transposed {
            pads: [pads[0].0, pads[1].0],
            strides: [strides[0], strides[1]],
            dil: [dil[0], dil[1]],
            out: [
                transposed_len(x.dims()[2], strides[0], dil[0], kh, pads[0], out_pad[0])?,
                transposed_len(x.dims()[3], strides[1], dil[1], kw, pads[1], out_pad[1])?,
            ],
        };
        let bias = cx.opt(2).map(|b| b.tensor.clone());
        let mut y = conv_transpose_direct(&x, &w, groups, &geometry, bias.as_ref())?;
        if one_d {
            y = c(y.squeeze(2))?;
        }
        return one(like(y, v));
    }
    let Some(d) = one_dilation(&dil, (kh, kw)) else {
        return Err(Error::Op(format!(
            "dilations {dil:?} differ per axis: not supported"
        )));
    };
    let dil = [d, d];
    // Zero-insertion upsampling, then "full" padding less the requested pads.
    let xu = spread(&spread(&x, 2, strides[0])?, 3, strides[1])?;
    let k = [kh, kw];
    let mut xu = xu;
    for (i, d) in [2usize, 3].into_iter().enumerate() {
        let full = dil[i].saturating_mul(k[i] - 1) as i64;
        xu = pad_or_crop(&xu, d, full - pads[i].0, full - pads[i].1 + out_pad[i])?;
    }
    // candle's convolution unfolds the input: [N, OH·OW, C·kh·kw] floats.
    let (n, _, h, wd) = c(xu.dims4())?;
    let unfolded = |len: usize, k: usize| (len + 1).saturating_sub((k - 1) * dil[0] + 1);
    let (oh, ow) = (unfolded(h, kh), unfolded(wd, kw));
    if oh == 0 || ow == 0 {
        return Err(Error::Op(format!(
            "pads {pads:?} leave no output for a {h}x{wd} upsampled input"
        )));
    }
    let cols = oh.saturating_mul(ow);
    check_output(&[n, cols, (c_in / groups.max(1)) * kh * kw], xu.dtype())?;
    let wt = c(w
        .reshape((groups, c_in / groups, m_g, kh, kw))?
        .transpose(1, 2)?
        .reshape((groups * m_g, c_in / groups, kh, kw))?
        .flip(&[2, 3]))?;
    // candle's grouped convolution indexes past an empty input (a batch of 0).
    let mut y = if n == 0 || m_g == 0 || c_in == 0 {
        c(Tensor::zeros(
            (n, groups * m_g, oh, ow),
            xu.dtype(),
            xu.device(),
        ))?
    } else {
        c(xu.contiguous()?
            .conv2d(&wt.contiguous()?, 0, 1, dil[0], groups))?
    };
    if let Some(b) = cx.opt(2) {
        y = conv_grad::add_bias(&y, &b.tensor)?;
    }
    if one_d {
        y = c(y.squeeze(2))?;
    }
    one(like(y, v))
}

/// Where ConvTranspose puts its taps: begin pads, strides and dilations per axis, and the
/// output's spatial size.
struct Transposed {
    pads: [i64; 2],
    strides: [usize; 2],
    dil: [usize; 2],
    out: [usize; 2],
}

/// `stride·(len − 1) + output_padding + dilation·(k − 1) + 1 − pads` (the ONNX formula).
fn transposed_len(
    len: usize,
    stride: usize,
    dil: usize,
    k: usize,
    pads: (i64, i64),
    out_pad: i64,
) -> R<usize> {
    let full = (stride as i64)
        .saturating_mul(len as i64 - 1)
        .saturating_add(out_pad)
        .saturating_add((dil as i64).saturating_mul(k as i64 - 1))
        .saturating_add(1)
        .saturating_sub(pads.0)
        .saturating_sub(pads.1);
    usize::try_from(full)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            Error::Op(format!(
                "pads {pads:?} leave no output for an input of {len}"
            ))
        })
}

/// ConvTranspose as one matrix product and a scatter, for runs that need no gradient:
/// `cols = Wᵀ·x` holds every input pixel's contribution to each output channel and kernel
/// tap, and each is added at its output position. The zero-insertion form that the gradient
/// path uses multiplies mostly zeros (three quarters of them at stride 2).
fn conv_transpose_direct(
    x: &Tensor,
    w: &Tensor,
    groups: usize,
    at: &Transposed,
    bias: Option<&Tensor>,
) -> R<Tensor> {
    use rayon::prelude::*;
    let (n, c_in, h, wd) = c(x.dims4())?;
    let (_, m_g, kh, kw) = c(w.dims4())?;
    let (c_g, taps, [oh, ow]) = (c_in / groups, kh * kw, at.out);
    let channels = groups * m_g;
    check_output(&[n, channels, oh, ow], x.dtype())?;
    check_output(&[n, channels * taps, h * wd], x.dtype())?;
    let mut y = vec![0f32; n * channels * oh * ow];
    if let Some(b) = bias {
        let b = c(b
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>())?;
        // One value per output channel: conv_transpose checked it (check_bias).
        for (plane, out) in y.chunks_mut(oh * ow).enumerate() {
            out.fill(b[plane % channels]);
        }
    }
    if y.is_empty() || c_in == 0 || h * wd == 0 {
        return c(Tensor::from_vec(y, (n, channels, oh, ow), x.device()));
    }
    let xs = c(x.contiguous()?.reshape((n, groups, c_g, h * wd)))?;
    let wt = c(w
        .reshape((groups, c_g, m_g * taps))?
        .transpose(1, 2)?
        .contiguous())?;
    let cols = c(wt.broadcast_matmul(&xs))?; // [n, groups, m_g·taps, h·wd]
    crate::value::with_f32_slice(&cols, |cols| {
        y.par_chunks_mut(oh * ow)
            .enumerate()
            .for_each(|(plane, out)| {
                let own = &cols[plane * taps * h * wd..(plane + 1) * taps * h * wd];
                for (tap, src) in own.chunks(h * wd).enumerate() {
                    scatter_tap(src, (h, wd), (tap / kw, tap % kw), at, out);
                }
            })
    })?;
    c(Tensor::from_vec(y, (n, channels, oh, ow), x.device()))
}

/// Adds one kernel tap's contributions, `src[i, j]` for each input pixel, at output position
/// `(i·stride + ki·dilation − pad, j·stride + kj·dilation − pad)` where that lies inside.
fn scatter_tap(
    src: &[f32],
    (h, wd): (usize, usize),
    (ki, kj): (usize, usize),
    at: &Transposed,
    out: &mut [f32],
) {
    let [oh, ow] = at.out;
    let [sh, sw] = at.strides;
    // The input columns whose output column is inside [0, ow).
    let first = |offset: i64, s: usize| -> usize {
        if offset >= 0 {
            0
        } else {
            (offset.unsigned_abs() as usize).div_ceil(s)
        }
    };
    let col0 = (kj as i64 * at.dil[1] as i64).saturating_sub(at.pads[1]);
    let j_start = first(col0, sw).min(wd);
    let j_end = if col0 >= ow as i64 {
        j_start
    } else {
        wd.min(((ow as i64 - 1 - col0) as usize) / sw + 1)
    };
    if j_start >= j_end {
        return;
    }
    let row0 = (ki as i64 * at.dil[0] as i64).saturating_sub(at.pads[0]);
    for i in first(row0, sh)..h {
        let r = row0 + (i * sh) as i64;
        if r >= oh as i64 {
            break;
        }
        let row = &mut out[r as usize * ow..(r as usize + 1) * ow];
        let start = (col0 + (j_start * sw) as i64) as usize;
        let dst = row[start..].iter_mut().step_by(sw);
        for (o, v) in dst.zip(&src[i * wd + j_start..i * wd + j_end]) {
            *o += v;
        }
    }
}

/// Inserts `s − 1` zeros between consecutive elements along `dim`.
fn spread(t: &Tensor, dim: usize, s: usize) -> R<Tensor> {
    let len = t.dims()[dim];
    if s <= 1 || len == 0 {
        return Ok(t.clone());
    }
    let mut shape = t.dims().to_vec();
    shape[dim] = len.saturating_mul(s);
    // Strides and dilations are the file's to say.
    check_output(&shape, t.dtype())?;
    Ok(t.unsqueeze(dim + 1)?
        .pad_with_zeros(dim + 1, 0, s - 1)?
        .reshape(shape)?
        .narrow(dim, 0, (len - 1) * s + 1)?)
}

/// Splits a total padding in two; `head_larger` gives the odd unit to the beginning.
fn split_total(total: i64, head_larger: bool) -> (i64, i64) {
    if head_larger {
        (total - total / 2, total / 2)
    } else {
        (total / 2, total - total / 2)
    }
}
