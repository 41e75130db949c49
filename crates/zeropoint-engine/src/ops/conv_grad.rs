//! The float32 convolution as a candle op, with or without gradients: its forward pass is
//! [`conv_gemm`]'s tiled product, and its backward pass computes the gradients tile by tile from
//! the same image patches:
//!
//! - ∂W [M, C·kh·kw] = Σ over images and tiles of ∂Y[:, tile] · colsᵀ;
//! - ∂X: per tile, ∂cols = Wᵀ · ∂Y[:, tile], added back onto the image where each patch value
//!   was read (col2im);
//! - ∂b: the sums of ∂Y over each output channel.
//!
//! Written as candle expressions (strided views, a stack and a matrix product), the backward pass
//! zeroed and added up kh·kw full copies of the input per layer, most of a training step's time.
//! The images are cut into groups fixed by the shapes; each group sums its own ∂W and the groups'
//! sums are added in order, so the gradients are the same bits at any thread count.
//!
//! Depthwise convolutions have an op of their own: the forward pass is direct loops over each
//! image plane, the backward pass the same loops run backwards (∂X gets w·∂Y at each tap's input
//! element, ∂W the products of ∂Y with each tap's inputs).
//!
//! The bias is added within the op for the same reason: candle's gradient of a broadcast addition
//! sums over the batch and spatial axes in a strided scalar loop. Convolutions whose bias comes
//! after (depthwise and grouped ones) take [`add_bias`], the block-wise addition.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use super::blockwise;
use super::conv_gemm::{self, gather, scatter, tile_width, Geometry, Sums};
use super::{c, R};
use crate::value::{storage_f32s as f32s, with_f32_slices as with_f32s};
use zeropoint_core::kernel::par_zeroed;

/// `x` [N, C, H, W] convolved with `w` [M, C, kh, kw] as `g` says, plus `bias` [M], with
/// gradients for all three.
pub(super) fn conv(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    (g, sums): (Geometry, Sums),
) -> R<Tensor> {
    let m = w.dims()[0];
    let b = match bias {
        Some(b) => c(b.flatten_all()?.contiguous())?,
        None => c(Tensor::zeros(m, DType::F32, w.device()))?,
    };
    let op = Conv {
        g,
        bias: bias.is_some(),
        sums,
    };
    c(x.contiguous()?.apply_op3(&w.contiguous()?, &b, op))
}

/// `y` [N, M, ...] plus the bias `b` [M] of each output channel: [`super::blockwise`]'s
/// addition.
pub(super) fn add_bias(y: &Tensor, b: &Tensor) -> R<Tensor> {
    let mut shape = vec![1; y.rank().max(2) - 1];
    shape[0] = b.elem_count();
    c(blockwise::arith(
        y,
        &b.reshape(shape)?,
        blockwise::Arith::Add,
    ))
}

/// Adds each plane's sum of `g` (`plane` elements, plane i of channel i mod M) to its channel's `sums`, in
/// f64 and in plane order.
fn add_channel_sums(sums: &mut [f64], g: &[f32], plane: usize) {
    let m = sums.len();
    for (i, g) in g.chunks(plane.max(1)).enumerate() {
        sums[i % m] += g.iter().map(|&v| f64::from(v)).sum::<f64>();
    }
}

/// Images per group of the backward pass: each group holds one partial ∂W.
const GROUP: usize = 4;

/// The op: arguments x, w and the bias (zeros, not added, without one).
struct Conv {
    g: Geometry,
    bias: bool,
    sums: Sums,
}

impl Conv {
    fn plane(&self) -> usize {
        let (ch, h, wd) = self.g.input;
        ch * h * wd
    }

    fn positions(&self) -> usize {
        self.g.output.0 * self.g.output.1
    }

    /// ∂X (when `want_dx`, else empty), ∂W and ∂b of `x` convolved with `w` ([M, K]), given ∂Y.
    fn backward(&self, x: &[f32], w: &[f32], dy: &[f32], want_dx: bool) -> [Vec<f32>; 3] {
        let g = self.g;
        let (k, plane, positions) = (g.k(), self.plane(), self.positions());
        let m = w.len() / k.max(1);
        let images = x.len() / plane.max(1);
        let t = tile_width(k);
        let dx_len = if want_dx { x.len() } else { 0 };
        let (dx, partial) = par_zeroed(
            (dx_len, GROUP * plane, images.div_ceil(GROUP)),
            || (),
            |_, group, dx| {
                let mut dw = vec![0f32; m * k];
                let mut db = vec![0f64; m];
                let (mut cols, mut dcols) = (Vec::new(), Vec::new());
                let first = group * GROUP;
                for image in first..(first + GROUP).min(images) {
                    let x = &x[image * plane..(image + 1) * plane];
                    let dy = &dy[image * m * positions..(image + 1) * m * positions];
                    add_channel_sums(&mut db, dy, positions);
                    let at = (image - first) * plane;
                    let dx = if want_dx {
                        Some(&mut dx[at..at + plane])
                    } else {
                        None
                    };
                    self.image(x, w, dy, t, (&mut dw, dx), (&mut cols, &mut dcols));
                }
                (dw, db)
            },
        );
        let (mut dw, mut db) = (vec![0f32; m * k], vec![0f64; m]);
        for (pw, pb) in partial {
            for (d, v) in dw.iter_mut().zip(pw) {
                *d += v;
            }
            for (d, v) in db.iter_mut().zip(pb) {
                *d += v;
            }
        }
        [dx, dw, db.into_iter().map(|v| v as f32).collect()]
    }

    /// One image's share of the backward pass, in tiles of `t` output positions: adds to `dw`,
    /// writes `dx`. `cols` and `dcols` are scratch space.
    fn image(
        &self,
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        t: usize,
        (dw, mut dx): (&mut [f32], Option<&mut [f32]>),
        (cols, dcols): (&mut Vec<f32>, &mut Vec<f32>),
    ) {
        let g = self.g;
        let (k, positions) = (g.k(), self.positions());
        let m = w.len() / k;
        // Wᵀ [K, M] as a view of W [M, K].
        let wt = View::new(w, (k, m), (1, k));
        for start in (0..positions).step_by(t) {
            let at = start..(start + t).min(positions);
            let n = at.len();
            let dy = View::new(&dy[at.start..], (m, n), (positions, 1));
            // The patches as [n, K]: position-major reads of the [K, n] column matrix.
            let patches = if g.pointwise() {
                View::new(&x[at.start..], (n, k), (1, positions))
            } else {
                cols.resize(k * n, 0.0);
                zeropoint_core::kernel::dispatch(
                    #[inline(always)]
                    || gather(x, g, at.clone(), cols),
                );
                View::new(cols, (n, k), (1, n))
            };
            product((dw, k), dy, patches, true);
            let Some(dx) = dx.as_deref_mut() else {
                continue;
            };
            if g.pointwise() {
                // Each patch value is its own input element: ∂cols is ∂X's tile.
                product((&mut dx[at.start..], positions), wt, dy, false);
            } else {
                dcols.resize(k * n, 0.0);
                product((dcols, n), wt, dy, false);
                zeropoint_core::kernel::dispatch(
                    #[inline(always)]
                    || scatter(dcols, g, at.clone(), dx),
                );
            }
        }
    }
}

/// A matrix stored in a slice: `shape` (rows, columns) with `strides` (between rows, between
/// columns).
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    shape: (usize, usize),
    strides: (usize, usize),
}

impl<'a> View<'a> {
    fn new(data: &'a [f32], shape: (usize, usize), strides: (usize, usize)) -> View<'a> {
        assert!(
            reach(shape, strides) <= data.len(),
            "matrix view out of bounds"
        );
        View {
            data,
            shape,
            strides,
        }
    }
}

/// Elements from a matrix's first to its last, inclusive.
fn reach((rows, cols): (usize, usize), (rs, cs): (usize, usize)) -> usize {
    if rows == 0 || cols == 0 {
        return 0;
    }
    (rows - 1) * rs + (cols - 1) * cs + 1
}

/// out = a · b, or out + a · b with `accumulate`; `out`'s rows are `out.1` apart. On this
/// thread: the backward pass spreads its groups over the threads.
fn product((out, out_rs): (&mut [f32], usize), a: View, b: View, accumulate: bool) {
    let ((m, k), (k2, n)) = (a.shape, b.shape);
    assert!(k == k2, "matrix product of [{m}, {k}] and [{k2}, {n}]");
    assert!(
        reach((m, n), (out_rs, 1)) <= out.len(),
        "matrix product output out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: every element the strides reach lies inside its slice (checked by `View::new`
    // and the assert above), and `out` is borrowed mutably.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.strides.1 as isize,
            a.strides.0 as isize,
            b.data.as_ptr(),
            b.strides.1 as isize,
            b.strides.0 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Where a depthwise convolution's taps fall on its input, which has `pad` zeros on every side.
#[derive(Clone, Copy, Debug)]
pub(super) struct Depthwise {
    pub kernel: (usize, usize),
    pub strides: (usize, usize),
    pub dilation: usize,
    pub pad: usize,
    pub output: (usize, usize),
}

/// `x` [N, C, H, W] convolved with one kernel `w` [C, 1, kh, kw] per channel.
pub(super) fn depthwise(x: &Tensor, w: &Tensor, g: Depthwise) -> R<Tensor> {
    c(x.contiguous()?.apply_op2(&w.contiguous()?, g))
}

impl Depthwise {
    fn taps(&self) -> usize {
        self.kernel.0 * self.kernel.1
    }

    /// Each plane is copied once, padded and split by phase ([`split_plane`]), into a buffer of
    /// the thread's; no padded copy of the whole input is made. [`depthwise_plane`] then reads
    /// every tap as one contiguous run per block of output rows, at any stride.
    fn forward(
        &self,
        x: &[f32],
        w: &[f32],
        (n, ch, h, wd): (usize, usize, usize, usize),
    ) -> Vec<f32> {
        let (oh, ow) = self.output;
        if oh * ow == 0 {
            return Vec::new();
        }
        let (y, _) = par_zeroed(
            (n * ch * oh * ow, oh * ow, n * ch),
            || (Vec::new(), Vec::new()),
            |(split, wide), p, out| {
                let src = &x[p * h * wd..(p + 1) * h * wd];
                let sub = split_plane(src, (h, wd), self.pad, self.strides, split);
                let taps = &w[(p % ch) * self.taps()..(p % ch + 1) * self.taps()];
                zeropoint_core::kernel::dispatch(
                    #[inline(always)]
                    || self.plane(split, sub, taps, wide, out),
                )
            },
        );
        y
    }

    /// One image plane of the forward pass, from its [`split_plane`] of `sub` = (rows, run)
    /// sub-planes. Output (r, q) of tap (i, j) reads padded (r·sh + i·d, q·sw + j·d): row
    /// r + ⌊i·d / sh⌋, column q + ⌊j·d / sw⌋ of sub-plane (i·d mod sh, j·d mod sw). The output
    /// is computed `run` columns wide, so that a block of output rows reads each tap as one
    /// contiguous run of its sub-plane (the columns past `ow` read the next row and are
    /// dropped), then cropped into `out`. Taps are added in order from 0: the same bits as one
    /// output at a time.
    #[inline(always)]
    fn plane(
        &self,
        split: &[f32],
        (rows, run): (usize, usize),
        taps: &[f32],
        wide: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let ((kh, kw), (sh, sw), d, (oh, ow)) =
            (self.kernel, self.strides, self.dilation, self.output);
        // About 16 KB of wide output per block: it stays in the L1 cache across the taps.
        let block = (4096 / run.max(1)).clamp(1, oh);
        for r0 in (0..oh).step_by(block) {
            let b = block.min(oh - r0);
            wide.clear();
            wide.resize(b * run, 0.0);
            for i in 0..kh {
                let (phase_r, row) = ((i * d) % sh, r0 + (i * d) / sh);
                for (j, &t) in taps[i * kw..(i + 1) * kw].iter().enumerate() {
                    let (phase_c, col) = ((j * d) % sw, (j * d) / sw);
                    let at = ((phase_r * sw + phase_c) * rows + row) * run + col;
                    for (v, &x) in wide.iter_mut().zip(&split[at..at + b * run]) {
                        *v += t * x;
                    }
                }
            }
            for (o, w) in out[r0 * ow..(r0 + b) * ow]
                .chunks_mut(ow)
                .zip(wide.chunks(run))
            {
                o.copy_from_slice(&w[..ow]);
            }
        }
    }

    /// ∂X (when `want_dx`, else empty) and ∂W, given ∂Y. Each image plane's share of ∂W is
    /// kept apart and the planes of a channel are added in image order: the same bits at any
    /// thread count.
    fn backward(
        &self,
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        (ch, h, wd): (usize, usize, usize),
        want_dx: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        let (plane, out_plane, taps) = (h * wd, self.output.0 * self.output.1, self.taps());
        let planes = x.len() / plane.max(1);
        let dx_len = if want_dx { x.len() } else { 0 };
        let (dx, shares) = par_zeroed(
            (dx_len, plane.max(1), planes),
            || (Vec::new(), Vec::new(), Vec::new()),
            |scratch, p, dx| {
                let x = &x[p * plane..(p + 1) * plane];
                let dy = &dy[p * out_plane..(p + 1) * out_plane];
                let k = &w[(p % ch) * taps..(p % ch + 1) * taps];
                zeropoint_core::kernel::dispatch(
                    #[inline(always)]
                    || self.plane_backward((x, (h, wd)), k, dy, want_dx.then_some(dx), scratch),
                )
            },
        );
        let mut dw = vec![0f64; ch * taps];
        for (p, share) in shares.iter().enumerate() {
            let c = p % ch;
            for (d, v) in dw[c * taps..(c + 1) * taps].iter_mut().zip(share) {
                *d += v;
            }
        }
        (dx, dw.into_iter().map(|v| v as f32).collect())
    }

    /// One image plane's backward pass in [`Depthwise::plane`]'s layout: ∂Y is laid out
    /// `run` columns wide with zeros past `ow`, so that each tap's share of ∂W is a dot
    /// product of it with the same contiguous runs of the split input the forward pass read,
    /// and ∂X gathers t·∂Y along those runs into a split-layout buffer, then is copied back out
    /// of it (the zero columns add nothing). Returns the plane's ∂W share, summed in f64 per
    /// block of rows.
    #[inline(always)]
    fn plane_backward(
        &self,
        (x, (h, wd)): (&[f32], (usize, usize)),
        taps: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        (split, wide, dsplit): &mut (Vec<f32>, Vec<f32>, Vec<f32>),
    ) -> Vec<f64> {
        let ((kh, kw), (sh, sw), d, (oh, ow)) =
            (self.kernel, self.strides, self.dilation, self.output);
        let (rows, run) = split_plane(x, (h, wd), self.pad, self.strides, split);
        let mut dw = vec![0f64; taps.len()];
        dsplit.clear();
        if dx.is_some() {
            dsplit.resize(split.len(), 0.0);
        }
        let block = (4096 / run.max(1)).clamp(1, oh.max(1));
        for r0 in (0..oh).step_by(block) {
            let b = block.min(oh - r0);
            wide.clear();
            wide.resize(b * run, 0.0);
            for (w, g) in wide
                .chunks_mut(run)
                .zip(dy[r0 * ow..(r0 + b) * ow].chunks(ow.max(1)))
            {
                w[..ow].copy_from_slice(g);
            }
            for i in 0..kh {
                let (phase_r, row) = ((i * d) % sh, r0 + (i * d) / sh);
                for j in 0..kw {
                    let (phase_c, col) = ((j * d) % sw, (j * d) / sw);
                    let at = ((phase_r * sw + phase_c) * rows + row) * run + col;
                    let tap = i * kw + j;
                    dw[tap] += f64::from(dot(wide, &split[at..at + b * run]));
                    if dx.is_some() {
                        let t = taps[tap];
                        for (o, &g) in dsplit[at..at + b * run].iter_mut().zip(wide.iter()) {
                            *o += t * g;
                        }
                    }
                }
            }
        }
        if let Some(dx) = dx {
            unsplit_plane(dsplit, (h, wd), self.pad, self.strides, (rows, run), dx);
        }
        dw
    }
}

/// The inverse of [`split_plane`]: copies the unpadded plane [h, wd] out of its split layout
/// `buf` (sub-planes of `rows` × `run` by phase modulo the strides) into `dst`.
fn unsplit_plane(
    buf: &[f32],
    (h, wd): (usize, usize),
    pad: usize,
    (sh, sw): (usize, usize),
    (rows, run): (usize, usize),
    dst: &mut [f32],
) {
    let sub = rows * run;
    for (r, row) in dst.chunks_exact_mut(wd.max(1)).take(h).enumerate() {
        let pr = r + pad;
        let src = &buf[((pr % sh) * sw * rows + pr / sh) * run..];
        match sw {
            1 => row.copy_from_slice(&src[pad..pad + wd]),
            _ => {
                for (x, v) in row.iter_mut().enumerate() {
                    let q = x + pad;
                    *v = src[(q % sw) * sub + q / sw];
                }
            }
        }
    }
}

/// Σ a·b in sixteen lanes of partial sums, added in a fixed order at the end (a single running
/// sum would go one element at a time): the same bits whatever the vector width.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (xs, ys) = (a.chunks_exact(16), b.chunks_exact(16));
    let (tail_x, tail_y) = (xs.remainder(), ys.remainder());
    for (x, y) in xs.zip(ys) {
        for l in 0..16 {
            lanes[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in tail_x.iter().zip(tail_y).enumerate() {
        lanes[l] += x * y;
    }
    lanes.iter().sum()
}

/// Copies one image plane `src` [h, wd] into `buf` with `pad` zeros on every side, split by
/// phase modulo the strides into sh·sw sub-planes of `rows` × `run`: sub-plane (a, b) holds the
/// padded rows a, a + sh, ... and in each the columns b, b + sw, ... Returns (rows, run). A
/// slack row after the last sub-plane keeps wide reads past its end in the buffer.
///
/// `buf` is empty or holds the previous plane of the same op (the same geometry): a plane
/// writes the same cells as the one before it, so the zeros around them are written once per
/// buffer, not once per plane (zero-filling each plane's buffer was half of this copy's time).
fn split_plane(
    src: &[f32],
    (h, wd): (usize, usize),
    pad: usize,
    (sh, sw): (usize, usize),
    buf: &mut Vec<f32>,
) -> (usize, usize) {
    let (rows, run) = ((h + 2 * pad).div_ceil(sh), (wd + 2 * pad).div_ceil(sw));
    let sub = rows * run;
    let len = sh * sw * sub + 2 * run + wd + 2 * pad;
    if buf.len() != len {
        buf.clear();
        buf.resize(len, 0.0);
    }
    if wd == 0 {
        return (rows, run);
    }
    for (r, row) in src.chunks_exact(wd).enumerate() {
        let pr = r + pad;
        // Padded column q of this row goes to sub-plane column phase q % sw at q / sw.
        let dst = &mut buf[((pr % sh) * sw * rows + pr / sh) * run..];
        match sw {
            1 => dst[pad..pad + wd].copy_from_slice(row),
            2 => {
                // Even and odd columns swap sub-planes when the pad is odd.
                let (even, odd) = dst.split_at_mut(sub);
                let (first, second) = if pad.is_multiple_of(2) {
                    (&mut even[pad / 2..run], &mut odd[pad / 2..run])
                } else {
                    (&mut odd[pad / 2..run], &mut even[pad / 2 + 1..run])
                };
                let pairs = row.chunks_exact(2);
                if let [last] = pairs.remainder() {
                    first[wd / 2] = *last;
                }
                for ((a, b), pair) in first.iter_mut().zip(second.iter_mut()).zip(pairs) {
                    *a = pair[0];
                    *b = pair[1];
                }
            }
            _ => {
                for (x, &v) in row.iter().enumerate() {
                    let q = x + pad;
                    dst[(q % sw) * sub + q / sw] = v;
                }
            }
        }
    }
    (rows, run)
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, ch, h, wd) = lx.shape().dims4()?;
        let (x, w) = (f32s(x, lx)?, f32s(w, lw)?);
        if w.len() != ch * self.taps() {
            candle_core::bail!(
                "Conv: a depthwise kernel of {} values for {ch} channels",
                w.len()
            );
        }
        let y = self.forward(x, w, (n, ch, h, wd));
        let (oh, ow) = self.output;
        Ok((CpuStorage::F32(y), Shape::from((n, ch, oh, ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, ch, h, wd) = x.dims4()?;
        let want_dx = x.track_op();
        let (dx, dw) = with_f32s([x, w, dy], |[x, w, dy]| {
            self.backward(x, w, dy, (ch, h, wd), want_dx)
        })?;
        Ok((gradient(x, dx)?, gradient(w, dw)?))
    }
}

/// `t`'s gradient `values` if `t` takes one.
fn gradient(t: &Tensor, values: Vec<f32>) -> candle_core::Result<Option<Tensor>> {
    t.track_op()
        .then(|| Tensor::from_vec(values, t.shape(), t.device()))
        .transpose()
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (f32s(x, lx)?, f32s(w, lw)?, f32s(b, lb)?);
        let m = w.len() / self.g.k().max(1);
        let images = x.len() / self.plane().max(1);
        let y = conv_gemm::conv(x, w, self.bias.then_some(b), m, (self.g, self.sums));
        let (oh, ow) = self.g.output;
        Ok((CpuStorage::F32(y), Shape::from((images, m, oh, ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want_dx = x.track_op();
        let [dx, dw, db] = with_f32s([x, w, dy], |[x, w, dy]| self.backward(x, w, dy, want_dx))?;
        Ok((gradient(x, dx)?, gradient(w, dw)?, gradient(b, db)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both gradients of Σ ∂Y·Y by the convolution's definition, one patch value at a time, in
    /// f64: ∂W[o, c, i, j] = Σ ∂Y[n, o, r, q] · X[n, c, r·sh + i·d − pad, q·sw + j·d − pad], and
    /// ∂X the same products added onto X's element.
    fn direct(x: &[f32], w: &[f32], dy: &[f32], m: usize, g: Geometry) -> (Vec<f64>, Vec<f64>) {
        let (ch, h, wd) = g.input;
        let ((kh, kw), (sh, sw), d, (oh, ow)) = (g.kernel, g.strides, g.dilation, g.output);
        let images = x.len() / (ch * h * wd);
        let (mut dx, mut dw) = (vec![0f64; x.len()], vec![0f64; w.len()]);
        for n in 0..images {
            for o in 0..m {
                for r in 0..oh {
                    for q in 0..ow {
                        let gy = f64::from(dy[((n * m + o) * oh + r) * ow + q]);
                        for c in 0..ch {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let yy = (r * sh + i * d) as i64 - g.pad as i64;
                                    let xx = (q * sw + j * d) as i64 - g.pad as i64;
                                    if yy < 0 || xx < 0 || yy >= h as i64 || xx >= wd as i64 {
                                        continue;
                                    }
                                    let xi = ((n * ch + c) * h + yy as usize) * wd + xx as usize;
                                    let wi = ((o * ch + c) * kh + i) * kw + j;
                                    dw[wi] += gy * f64::from(x[xi]);
                                    dx[xi] += gy * f64::from(w[wi]);
                                }
                            }
                        }
                    }
                }
            }
        }
        (dx, dw)
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 + seed) % 101) as f32 / 50.0 - 1.0)
            .collect()
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(1f64, |a, b| a.max(b.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(*a) - b).abs() <= 1e-5 * scale,
                "{what}: element {i}: {a} vs {b}"
            );
        }
    }

    /// ∂X and ∂W against the definition: padding, strides, dilation, pointwise kernels, more
    /// images than a group, and outputs wider than a tile.
    #[test]
    fn gradients_follow_the_definition() {
        // (input C, H, W), pad, kernel, strides, dilation, images
        for (input, pad, kernel, strides, dilation, images) in [
            ((3, 9, 11), 1, (3, 3), (1, 1), 1, 2),
            ((2, 9, 11), 3, (3, 2), (2, 1), 2, 5),
            ((4, 7, 7), 0, (1, 1), (1, 1), 1, 3),
            ((2, 6, 8), 1, (1, 1), (2, 3), 1, 1),
            ((1, 1, 200), 0, (1, 16), (1, 5), 1, 2),
            ((2, 5, 5), 4, (3, 3), (3, 3), 1, 9),
            ((3, 40, 40), 1, (3, 3), (1, 1), 1, 2),
        ] {
            let (ch, h, wd) = input;
            let g = Geometry::of(input, pad, kernel, strides, dilation);
            let (oh, ow) = g.output;
            let m = 5;
            let x = values(images * ch * h * wd, 1);
            let w = values(m * g.k(), 7);
            let dy = values(images * m * oh * ow, 3);
            let (want_dx, want_dw) = direct(&x, &w, &dy, m, g);
            let conv = Conv {
                g,
                bias: true,
                sums: Sums::Fast,
            };
            let [dx, dw, db] = conv.backward(&x, &w, &dy, true);
            let at = format!("{input:?} pad {pad} {kernel:?} {strides:?} dilation {dilation}");
            close(&dx, &want_dx, &format!("∂X {at}"));
            close(&dw, &want_dw, &format!("∂W {at}"));
            let want_db: Vec<f64> = (0..m)
                .map(|o| {
                    let plane = oh * ow;
                    (0..images)
                        .flat_map(|n| &dy[(n * m + o) * plane..(n * m + o + 1) * plane])
                        .map(|&v| f64::from(v))
                        .sum()
                })
                .collect();
            close(&db, &want_db, &format!("∂b {at}"));
            let [none, dw_only, _] = conv.backward(&x, &w, &dy, false);
            assert!(none.is_empty());
            assert_eq!(dw_only, dw, "∂W without ∂X {at}");
        }
    }

    /// The groups are fixed by the shapes: one thread or three give the same bits.
    #[test]
    fn the_thread_count_does_not_change_the_bits() {
        let g = Geometry::of((16, 14, 14), 1, (3, 3), (1, 1), 1);
        let images = 11;
        let x = values(images * 16 * 14 * 14, 3);
        let w = values(8 * g.k(), 5);
        let dy = values(images * 8 * 14 * 14, 9);
        let on = |threads| {
            crate::ops::on_threads(threads, || {
                Conv {
                    g,
                    bias: true,
                    sums: Sums::Fast,
                }
                .backward(&x, &w, &dy, true)
            })
        };
        let one = on(1);
        assert!(one[1].iter().any(|&v| v != 0.0));
        assert_eq!(one, on(3));
    }

    /// The bias op adds what candle's broadcast addition adds, and its gradients are the
    /// incoming gradient and its per-channel sums.
    #[test]
    fn the_bias_is_added_per_channel_with_its_gradient() {
        let dev = candle_core::Device::Cpu;
        let y = candle_core::Var::from_vec(values(2 * 3 * 4 * 5, 1), (2, 3, 4, 5), &dev).unwrap();
        let b = candle_core::Var::from_vec(vec![0.5f32, -1.25, 2.0], 3, &dev).unwrap();
        let got = add_bias(y.as_tensor(), b.as_tensor()).unwrap();
        let want = y
            .as_tensor()
            .broadcast_add(&b.as_tensor().reshape((1, 3, 1, 1)).unwrap())
            .unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&got), flat(&want));
        let r = Tensor::from_vec(values(120, 5), (2, 3, 4, 5), &dev).unwrap();
        let grads = (&got * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(flat(grads.get(y.as_tensor()).unwrap()), flat(&r));
        let rv = flat(&r);
        let db = flat(grads.get(b.as_tensor()).unwrap());
        for (m, d) in db.iter().enumerate() {
            let want: f64 = (0..120)
                .filter(|e| (e / 20) % 3 == m)
                .map(|e| f64::from(rv[e]))
                .sum();
            assert!(
                (f64::from(*d) - want).abs() < 1e-5,
                "∂b[{m}]: {d} vs {want}"
            );
        }
    }

    /// Through candle: the op's output is the convolution plus the bias, and backward() hands
    /// each of x, w and b its gradient.
    #[test]
    fn the_op_runs_through_candles_backward() {
        let dev = candle_core::Device::Cpu;
        let g = Geometry::of((2, 6, 7), 1, (3, 3), (2, 1), 1);
        let (images, m) = (3, 4);
        let (x, w, b) = (
            values(images * 2 * 6 * 7, 1),
            values(m * g.k(), 2),
            values(m, 3),
        );
        let var = |v: &[f32], shape: &[usize]| {
            candle_core::Var::from_vec(v.to_vec(), shape, &dev).unwrap()
        };
        let (xv, wv, bv) = (
            var(&x, &[images, 2, 6, 7]),
            var(&w, &[m, 2, 3, 3]),
            var(&b, &[m]),
        );
        let y = conv(
            xv.as_tensor(),
            wv.as_tensor(),
            Some(bv.as_tensor()),
            (g, Sums::Products),
        )
        .unwrap();
        let plane = 3 * 7;
        let mut want = conv_gemm::conv(&x, &w, None, m, (g, Sums::Products));
        for (i, v) in want.iter_mut().enumerate() {
            *v += b[(i / plane) % m];
        }
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&y), want);
        let dy = Tensor::from_vec(values(want.len(), 4), y.shape(), &dev).unwrap();
        let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let [dx, dw, db] = Conv {
            g,
            bias: true,
            sums: Sums::Fast,
        }
        .backward(&x, &w, &flat(&dy), true);
        assert_eq!(flat(grads.get(xv.as_tensor()).unwrap()), dx);
        assert_eq!(flat(grads.get(wv.as_tensor()).unwrap()), dw);
        assert_eq!(flat(grads.get(bv.as_tensor()).unwrap()), db);
    }

    /// The depthwise op against the convolution's definition (a depthwise convolution is one
    /// group per channel: each channel is a one-channel convolution of its own plane):
    /// forward, ∂X and ∂W, with padding (even and odd), strides (equal, unequal, above 2),
    /// dilation and more images than threads.
    #[test]
    fn depthwise_follows_the_definition() {
        for (kernel, strides, dilation, pad, (h, wd)) in [
            ((3, 3), (1, 1), 1, 0, (9, 10)),
            ((3, 3), (2, 2), 1, 1, (9, 10)),
            ((3, 3), (2, 2), 1, 1, (8, 11)),
            ((5, 5), (2, 2), 1, 2, (13, 12)),
            ((5, 5), (2, 2), 1, 3, (7, 9)),
            ((3, 2), (1, 1), 2, 1, (8, 9)),
            ((3, 3), (1, 2), 1, 1, (6, 7)),
            ((3, 3), (3, 3), 2, 2, (11, 13)),
            ((2, 2), (2, 1), 1, 0, (1, 1)),
            // More output rows than one block of the backward pass.
            ((3, 3), (1, 1), 1, 1, (70, 70)),
            ((3, 3), (2, 2), 1, 1, (131, 129)),
        ] {
            let (images, ch) = (3, 4);
            let out = |len: usize, k: usize, s: usize| {
                (len + 2 * pad + 1 - ((k - 1) * dilation + 1)).div_ceil(s)
            };
            let g = Depthwise {
                kernel,
                strides,
                dilation,
                pad,
                output: (out(h, kernel.0, strides.0), out(wd, kernel.1, strides.1)),
            };
            let one = Geometry {
                input: (1, h, wd),
                pad,
                kernel,
                strides,
                dilation,
                output: g.output,
            };
            let out_plane = g.output.0 * g.output.1;
            let x = values(images * ch * h * wd, 1);
            let w = values(ch * g.taps(), 2);
            let dy = values(images * ch * out_plane, 3);
            let y = g.forward(&x, &w, (images, ch, h, wd));
            let (dx, dw) = g.backward(&x, &w, &dy, (ch, h, wd), true);
            let mut want_dw = vec![0f64; w.len()];
            for p in 0..images * ch {
                let c = p % ch;
                let xp = &x[p * h * wd..(p + 1) * h * wd];
                let wp = &w[c * g.taps()..(c + 1) * g.taps()];
                let dyp = &dy[p * out_plane..(p + 1) * out_plane];
                let at = format!(
                    "{kernel:?} strides {strides:?} dilation {dilation} pad {pad} plane {p}"
                );
                let want_y: Vec<f64> = conv_gemm::conv(xp, wp, None, 1, (one, Sums::Products))
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect();
                close(
                    &y[p * out_plane..(p + 1) * out_plane],
                    &want_y,
                    &format!("Y {at}"),
                );
                let (want_dx, dwp) = direct(xp, wp, dyp, 1, one);
                close(
                    &dx[p * h * wd..(p + 1) * h * wd],
                    &want_dx,
                    &format!("∂X {at}"),
                );
                for (d, v) in want_dw[c * g.taps()..].iter_mut().zip(dwp) {
                    *d += v;
                }
            }
            close(
                &dw,
                &want_dw,
                &format!("∂W {kernel:?} strides {strides:?} pad {pad}"),
            );
            let (none, dw_only) = g.backward(&x, &w, &dy, (ch, h, wd), false);
            assert!(none.is_empty());
            assert_eq!(dw_only, dw);
        }
    }
}
