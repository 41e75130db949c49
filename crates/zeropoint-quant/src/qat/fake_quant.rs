//! Fake quantization with learnable parameters, with the gradients of quantization-aware
//! training:
//!
//! ```text
//! u  = x/s                                  codes before rounding, z = round(zero-point)
//! x̂  = s·round(u)                           inside the grid, qmin ≤ round(u) + z ≤ qmax
//!    = s·(qmin − z) or s·(qmax − z)          outside it (clipped)
//! ```
//!
//! - ∂x̂/∂x: 1 inside the grid, 0 outside (the straight-through estimator with clipping, white
//!   paper §5.1);
//! - ∂x̂/∂s: round(u) − u inside, qmin − z or qmax − z outside (LSQ, Esser et al. 2019), scaled
//!   by g = 1/√(N·Qp) with N the elements per scale and Qp the grid's positive extent;
//! - ∂x̂/∂z: 0 inside, −s outside (LSQ+, Bhalgat et al. 2020, for asymmetric activations).
//!
//! Rounding is half to even, as ONNX's QuantizeLinear rounds, so the codes trained are the codes
//! exported, ties included. A value exactly on the grid's edge (every ReLU zero on an unsigned
//! grid) is inside and passes its gradient.
//!
//! The whole quantizer is one candle custom op: the forward pass reads x once and writes x̂, the
//! backward pass reads x and the incoming gradient once and writes ∂x while it sums ∂s and ∂z.
//! Written as candle expressions it took some fifteen tensor-sized passes each way, the largest
//! cost of a training step. The sums run in fixed chunks added in order, so the gradients are the
//! same bits at any thread count.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use zeropoint_core::kernel::dispatch;
use zeropoint_engine::value::{storage_f32s, with_f32_slices};

/// One quantizer's learnable parameters as tensors: scale and zero-point, one each per tensor
/// or per channel (shaped to broadcast against the quantized value), and its grid.
pub struct Quantizer<'a> {
    pub scale: &'a Tensor,
    /// None for a symmetric grid (zero-point 0, not learned).
    pub zero_point: Option<&'a Tensor>,
    pub qmin: f64,
    pub qmax: f64,
    /// LSQ's gradient scale for `scale` (1 for the plain gradient).
    pub grad_scale: f64,
}

/// `x` (float32) fake-quantized with `q` (see the module's documentation for the gradients).
pub fn fake_quant(x: &Tensor, q: &Quantizer) -> Result<Tensor> {
    let zero = zero_point(q)?;
    let op = FakeQuant::new(x.dims(), q)?;
    x.contiguous()?.apply_op3(q.scale, &zero, op)
}

/// A quantizer's zero-point as a tensor: its own, or zeros for a symmetric grid.
pub(super) fn zero_point(q: &Quantizer) -> Result<Tensor> {
    match q.zero_point {
        Some(z) => Ok(z.clone()),
        None => q.scale.zeros_like(),
    }
}

/// LSQ's gradient scale g = 1/√(N·Qp): N the elements sharing one scale, Qp the largest
/// positive code (for an unsigned grid, its top).
pub fn lsq_grad_scale(elements_per_scale: usize, qmax: f64) -> f64 {
    1.0 / ((elements_per_scale.max(1) as f64) * qmax.max(1.0)).sqrt()
}

/// Which scale each element of a contiguous tensor takes: element e belongs to channel
/// (e / inner) mod count.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Channels {
    count: usize,
    inner: usize,
}

impl Channels {
    /// The channels of a value shaped `x` under a scale shaped `scale` (which broadcasts
    /// against it, aligned on the right): one scale, or one per index of a single axis.
    fn of(x: &[usize], scale: &[usize]) -> Result<Channels> {
        let count: usize = scale.iter().product();
        if count == 1 {
            return Ok(Channels { count: 1, inner: 1 });
        }
        let offset = x.len().checked_sub(scale.len());
        let axes: Vec<usize> = (0..scale.len()).filter(|&a| scale[a] != 1).collect();
        match (offset, axes.as_slice()) {
            (Some(offset), &[a]) if x[offset + a] == scale[a] => Ok(Channels {
                count,
                inner: x[offset + a + 1..].iter().product(),
            }),
            _ => candle_core::bail!(
                "fake quantization: a scale shaped {scale:?} does not give one scale per channel of a value shaped {x:?}"
            ),
        }
    }

    /// Calls `f(channel, range)` for each run of elements `start..end` that share a channel,
    /// the range relative to `start`.
    #[inline(always)]
    fn runs(&self, start: usize, end: usize, mut f: impl FnMut(usize, std::ops::Range<usize>)) {
        if self.count == 1 {
            return f(0, 0..end - start);
        }
        let mut e = start;
        while e < end {
            let next = ((e / self.inner + 1) * self.inner).min(end);
            f((e / self.inner) % self.count, e - start..next - start);
            e = next;
        }
    }
}

/// Elements per task, and per partial sum of ∂s and ∂z: fixed, so that the sums are added in
/// the same order whatever the thread count.
pub(super) const CHUNK: usize = 1 << 14;

/// 1.5 · 2^23: adding it to |u| < 2^22 and subtracting it again rounds u half to even in the
/// default rounding mode (larger |u| is far outside any grid and clipped either way).
const MAGIC: f32 = 12_582_912.0;

#[inline(always)]
fn round_even(u: f32) -> f32 {
    (u + MAGIC) - MAGIC
}

/// The candle op: arguments x, scale and zero-point (both shaped to broadcast against x).
pub(super) struct FakeQuant {
    channels: Channels,
    qmin: f32,
    qmax: f32,
    grad_scale: f64,
}

impl FakeQuant {
    /// The op for a value shaped `x` under quantizer `q`.
    pub(super) fn new(x: &[usize], q: &Quantizer) -> Result<FakeQuant> {
        Ok(FakeQuant {
            channels: Channels::of(x, q.scale.dims())?,
            qmin: q.qmin as f32,
            qmax: q.qmax as f32,
            grad_scale: q.grad_scale,
        })
    }

    /// The grid's bounds in rounded-code units for zero-point `z`: [qmin − round(z), qmax − round(z)].
    #[inline(always)]
    pub(super) fn bounds(&self, z: f32) -> (f32, f32) {
        let z = z.round();
        (self.qmin - z, self.qmax - z)
    }

    /// Calls `f(channel, range, scale, bounds)` for each run of chunk `k` (`len` elements)
    /// that shares one scale, compiled with AVX2 where the CPU has it.
    #[inline(always)]
    pub(super) fn chunk_runs(
        &self,
        (k, len): (usize, usize),
        (s, z): (&[f32], &[f32]),
        mut f: impl FnMut(usize, std::ops::Range<usize>, f32, (f32, f32)),
    ) {
        dispatch(
            #[inline(always)]
            || {
                self.channels.runs(
                    k * CHUNK,
                    k * CHUNK + len,
                    #[inline(always)]
                    |c, at| f(c, at, s[c], self.bounds(z[c])),
                )
            },
        )
    }

    /// x̂, written into a buffer that is not zeroed first (each chunk's runs cover it).
    fn forward(&self, x: &[f32], s: &[f32], z: &[f32]) -> Vec<f32> {
        self.map_runs(
            (x, s, z),
            #[inline(always)]
            |y, x, s, bounds| {
                for (y, &x) in y.iter_mut().zip(x) {
                    y.write(quantized(x, s, bounds));
                }
            },
        )
    }

    /// A buffer like x, filled in parallel chunks by `f(out, x, s, bounds)` for each run of
    /// elements that share a scale; not zeroed first, `f` writes every element of its run.
    #[inline(always)]
    pub(super) fn map_runs(
        &self,
        (x, s, z): (&[f32], &[f32], &[f32]),
        f: impl Fn(&mut [MaybeUninit<f32>], &[f32], f32, (f32, f32)) + Sync,
    ) -> Vec<f32> {
        let mut y = Vec::with_capacity(x.len());
        y.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(k, (y, x))| {
                self.chunk_runs(
                    (k, x.len()),
                    (s, z),
                    #[inline(always)]
                    |_, at, s, bounds| f(&mut y[at.clone()], &x[at], s, bounds),
                )
            });
        // SAFETY: the chunks cover the x.len() elements, each chunk's runs cover its elements
        // (Channels::runs walks from its start to its end), and `f` writes each of a run's.
        unsafe { y.set_len(x.len()) };
        y
    }

    /// ∂x, and the unscaled sums that make ∂s and ∂z, per channel: Σ g·t (t the ∂x̂/∂s of
    /// each element) and Σ g over clipped elements.
    fn backward(
        &self,
        x: &[f32],
        s: &[f32],
        z: &[f32],
        g: &[f32],
    ) -> (Vec<f32>, Vec<f64>, Vec<f64>) {
        self.backward_runs(
            (x, s, z, g),
            #[inline(always)]
            |dx, x, g, s, bounds| Self::element_sums((x, g, dx), s, bounds),
        )
    }

    /// ∂x in parallel chunks, and per channel the two sums of ∂s and ∂z: `f(dx, x, ∂y, s,
    /// bounds)` writes ∂x of a run of elements that share a scale and returns the run's sums.
    /// Each chunk's runs add into its own sums, and the chunks' sums are added in order: the
    /// same bits at any thread count.
    #[inline(always)]
    pub(super) fn backward_runs(
        &self,
        (x, s, z, g): (&[f32], &[f32], &[f32], &[f32]),
        f: impl Fn(&mut [MaybeUninit<f32>], &[f32], &[f32], f32, (f32, f32)) -> (f64, f64) + Sync,
    ) -> (Vec<f32>, Vec<f64>, Vec<f64>) {
        let count = self.channels.count;
        let mut dx = Vec::with_capacity(x.len());
        let partial: Vec<Vec<(f64, f64)>> = dx.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .enumerate()
            .map(|(k, (dx, (x, g)))| {
                let mut sums = vec![(0f64, 0f64); count];
                self.chunk_runs(
                    (k, x.len()),
                    (s, z),
                    #[inline(always)]
                    |c, at, s, bounds| {
                        let (ds, clipped) =
                            f(&mut dx[at.clone()], &x[at.clone()], &g[at], s, bounds);
                        sums[c].0 += ds;
                        sums[c].1 += clipped;
                    },
                );
                sums
            })
            .collect();
        // SAFETY: the chunks cover the x.len() elements, and each chunk's runs write all of
        // its elements (`f` writes each element of its run).
        unsafe { dx.set_len(x.len()) };
        let (mut ds, mut dz) = (vec![0f64; count], vec![0f64; count]);
        for sums in partial {
            for (c, (a, b)) in sums.into_iter().enumerate() {
                ds[c] += a;
                dz[c] += b;
            }
        }
        (dx, ds, dz)
    }

    /// The backward pass of a candle op on x, this quantizer's scale and zero-point: `backward`
    /// gives ∂x and the sums [`FakeQuant::backward`] gives from (x, s, z, ∂y); returned as
    /// candle wants them (None for what is not tracked), with ∂s = g_LSQ·Σ g·t and
    /// ∂z = −s·Σ g over clipped elements.
    pub(super) fn gradients(
        &self,
        (x, s, z, grad): (&Tensor, &Tensor, &Tensor, &Tensor),
        backward: impl Fn(&[f32], &[f32], &[f32], &[f32]) -> (Vec<f32>, Vec<f64>, Vec<f64>),
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (sv, zv) = (values(s)?, values(z)?);
        let (dx, ds, dz) = with_f32_slices([x, grad], |[x, g]| backward(x, &sv, &zv, g))?;
        let ds: Vec<f32> = ds.iter().map(|d| (d * self.grad_scale) as f32).collect();
        let dz: Vec<f32> = dz
            .iter()
            .zip(&sv)
            .map(|(d, s)| (-d * f64::from(*s)) as f32)
            .collect();
        let dev = x.device();
        Ok((
            x.track_op()
                .then(|| Tensor::from_vec(dx, x.shape(), dev))
                .transpose()?,
            s.track_op()
                .then(|| Tensor::from_vec(ds, s.shape(), dev))
                .transpose()?,
            z.track_op()
                .then(|| Tensor::from_vec(dz, z.shape(), dev))
                .transpose()?,
        ))
    }

    /// One run of elements sharing scale `s` and bounds: writes ∂x and returns Σ g·t and the
    /// Σ g of clipped elements ([`one`] for each). Eight lanes of partial sums, added in a fixed
    /// order, let the loop run eight elements at a time; the lanes are the same with and
    /// without AVX2, so are the bits.
    #[inline(always)]
    pub(super) fn element_sums(
        (x, g, dx): (&[f32], &[f32], &mut [MaybeUninit<f32>]),
        s: f32,
        bounds: (f32, f32),
    ) -> (f64, f64) {
        let body = x.len() / 8 * 8;
        let (mut ds, mut clipped) = lanes((&x[..body], &g[..body], &mut dx[..body]), s, bounds);
        for (l, e) in (body..x.len()).enumerate() {
            let (d, t, c) = one(x[e], g[e], s, bounds);
            dx[e].write(d);
            ds[l] += t;
            clipped[l] += c;
        }
        let sum = |v: [f32; 8]| v.iter().map(|&v| f64::from(v)).sum::<f64>();
        (sum(ds), sum(clipped))
    }
}

/// [`FakeQuant::element_sums`]'s eight lanes over a run whose length is a multiple of eight.
/// Written with `if … else if` per element the compiler left it scalar, with jumps: three
/// times the forward pass's time, a fifth of a training step on PP-LCNet.
#[inline(always)]
fn lanes(
    (x, g, dx): (&[f32], &[f32], &mut [MaybeUninit<f32>]),
    s: f32,
    bounds: (f32, f32),
) -> ([f32; 8], [f32; 8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { lanes_avx2((x, g, dx), s, bounds) };
    }
    lanes_scalar((x, g, dx), s, bounds)
}

/// [`lanes`] element by element.
fn lanes_scalar(
    (x, g, dx): (&[f32], &[f32], &mut [MaybeUninit<f32>]),
    s: f32,
    bounds: (f32, f32),
) -> ([f32; 8], [f32; 8]) {
    let (mut ds, mut clipped) = ([0f32; 8], [0f32; 8]);
    for ((x, g), dx) in x
        .chunks_exact(8)
        .zip(g.chunks_exact(8))
        .zip(dx.chunks_exact_mut(8))
    {
        for l in 0..8 {
            let (d, t, c) = one(x[l], g[l], s, bounds);
            dx[l].write(d);
            ds[l] += t;
            clipped[l] += c;
        }
    }
    (ds, clipped)
}

/// [`lanes`] with AVX2: [`one`] on eight elements at once, the same operations in the same
/// order (no fused multiply-add), so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lanes_avx2(
    (x, g, dx): (&[f32], &[f32], &mut [MaybeUninit<f32>]),
    s: f32,
    (lo, hi): (f32, f32),
) -> ([f32; 8], [f32; 8]) {
    use std::arch::x86_64::*;
    assert!(x.len().is_multiple_of(8) && g.len() == x.len() && dx.len() == x.len());
    let (s, lo, hi, magic) = (
        _mm256_set1_ps(s),
        _mm256_set1_ps(lo),
        _mm256_set1_ps(hi),
        _mm256_set1_ps(MAGIC),
    );
    let (mut ds, mut clipped) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for i in (0..x.len()).step_by(8) {
        // SAFETY: i + 8 ≤ len for all three slices (asserted above); unaligned loads and stores.
        let (xv, gv) = unsafe {
            (
                _mm256_loadu_ps(x.as_ptr().add(i)),
                _mm256_loadu_ps(g.as_ptr().add(i)),
            )
        };
        let u = _mm256_div_ps(xv, s);
        let r = _mm256_sub_ps(_mm256_add_ps(u, magic), magic);
        let low = _mm256_cmp_ps::<_CMP_LT_OQ>(r, lo);
        let out = _mm256_or_ps(low, _mm256_cmp_ps::<_CMP_GT_OQ>(r, hi));
        let edge = _mm256_blendv_ps(hi, lo, low);
        let t = _mm256_blendv_ps(_mm256_sub_ps(r, u), edge, out);
        // SAFETY: as for the loads.
        unsafe { _mm256_storeu_ps(dx.as_mut_ptr().add(i).cast(), _mm256_andnot_ps(out, gv)) };
        ds = _mm256_add_ps(ds, _mm256_mul_ps(gv, t));
        clipped = _mm256_add_ps(clipped, _mm256_and_ps(out, gv));
    }
    let (mut a, mut b) = ([0f32; 8], [0f32; 8]);
    // SAFETY: each array holds eight floats.
    unsafe {
        _mm256_storeu_ps(a.as_mut_ptr(), ds);
        _mm256_storeu_ps(b.as_mut_ptr(), clipped);
    }
    (a, b)
}

/// One element fake-quantized: s·clamp(round(x/s), lo, hi).
#[inline(always)]
pub(super) fn quantized(x: f32, s: f32, (lo, hi): (f32, f32)) -> f32 {
    let r = round_even(x / s);
    let r = if r < lo { lo } else { r };
    (if r > hi { hi } else { r }) * s
}

/// One element's backward pass: ∂x, g·t (t its ∂x̂/∂s before the gradient scale) and g again
/// if it is clipped (for ∂z), for incoming gradient g, scale s and bounds [lo, hi].
#[inline(always)]
fn one(x: f32, g: f32, s: f32, (lo, hi): (f32, f32)) -> (f32, f32, f32) {
    let u = x / s;
    let r = round_even(u);
    let (low, high) = (r < lo, r > hi);
    let t = if low {
        lo
    } else if high {
        hi
    } else {
        r - u
    };
    let out = low || high;
    (if out { 0.0 } else { g }, g * t, if out { g } else { 0.0 })
}

/// A custom op's float32 arguments as slices.
pub(super) fn f32_storages<'a, const N: usize>(
    args: [(&'a CpuStorage, &'a Layout); N],
) -> Result<[&'a [f32]; N]> {
    let mut out = [&[][..]; N];
    for (o, (storage, layout)) in out.iter_mut().zip(args) {
        *o = storage_f32s(storage, layout)?;
    }
    Ok(out)
}

/// The contiguous float32 elements of a tensor.
fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

impl CustomOp3 for FakeQuant {
    fn name(&self) -> &'static str {
        "fake-quant"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        s: &CpuStorage,
        ls: &Layout,
        z: &CpuStorage,
        lz: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [x, s, z] = f32_storages([(x, lx), (s, ls), (z, lz)])?;
        if s.len() != self.channels.count || z.len() != self.channels.count {
            candle_core::bail!("fake quantization: scale and zero-point differ in size");
        }
        Ok((CpuStorage::F32(self.forward(x, s, z)), lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        s: &Tensor,
        z: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.gradients((x, s, z, grad), |x, s, z, g| self.backward(x, s, z, g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The forward pass and every gradient, against the formulas written out element by
    /// element in f64 (an independent implementation), on values inside, on the edges of and
    /// outside an asymmetric 4-bit grid, per channel.
    #[test]
    fn forward_and_gradients_follow_lsq_and_ste() {
        let x: Vec<f32> = vec![
            -1.3, -0.2, -0.75, 0.26, 0.9, 1.7, -0.05, 0.31, 0.55, 2.4, -3.0, 0.77,
        ];
        let (scale, zero) = ([0.25f32, 0.2], [3.0f32, 7.6]);
        let (qmin, qmax, g) = (0.0, 15.0, 0.37);
        let dev = Device::Cpu;
        let xv = Var::from_vec(x.clone(), (2, 6), &dev).unwrap();
        let sv = Var::from_vec(scale.to_vec(), (2, 1), &dev).unwrap();
        let zv = Var::from_vec(zero.to_vec(), (2, 1), &dev).unwrap();
        let q = Quantizer {
            scale: sv.as_tensor(),
            zero_point: Some(zv.as_tensor()),
            qmin,
            qmax,
            grad_scale: g,
        };
        let y = fake_quant(xv.as_tensor(), &q).unwrap();
        // Loss Σ w·x̂ with distinct weights, so each element's gradient is visible.
        let w: Vec<f32> = (0..12).map(|i| 1.0 + 0.25 * i as f32).collect();
        let wt = Tensor::from_vec(w.clone(), (2, 6), &dev).unwrap();
        let grads = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
        let got = |t: &Tensor| -> Vec<f32> {
            grads
                .get(t)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (gx, gs, gz) = (
            got(xv.as_tensor()),
            got(sv.as_tensor()),
            got(zv.as_tensor()),
        );
        let yv: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let (mut want_s, mut want_z) = ([0f64; 2], [0f64; 2]);
        for (e, &xe) in x.iter().enumerate() {
            let c = e / 6;
            let (s, z) = (f64::from(scale[c]), f64::from(zero[c]).round());
            let v = f64::from(xe) / s + z;
            let r = v.round();
            let (value, dx, ds, dz) = if r < qmin {
                ((qmin - z) * s, 0.0, qmin - z, -s)
            } else if r > qmax {
                ((qmax - z) * s, 0.0, qmax - z, -s)
            } else {
                ((r - z) * s, 1.0, r - v, 0.0)
            };
            let we = f64::from(w[e]);
            assert!((f64::from(yv[e]) - value).abs() < 1e-5, "x̂[{e}]");
            assert!((f64::from(gx[e]) - we * dx).abs() < 1e-5, "∂x[{e}]");
            want_s[c] += we * ds * g;
            want_z[c] += we * dz;
        }
        for c in 0..2 {
            assert!((f64::from(gs[c]) - want_s[c]).abs() < 1e-4, "∂s[{c}]");
            assert!((f64::from(gz[c]) - want_z[c]).abs() < 1e-4, "∂z[{c}]");
        }
        // A value exactly on the grid's lowest code (x = −z·s, like a ReLU's zeros on an
        // unsigned grid) passes its whole gradient.
        assert_eq!(gx[2], w[2], "a value on qmin's code keeps its gradient");
    }

    /// ∂x̂/∂s against central finite differences where the codes do not change (away from
    /// rounding boundaries the LSQ gradient is the true derivative).
    #[test]
    fn scale_gradient_matches_finite_differences_between_code_changes() {
        let dev = Device::Cpu;
        let x: Vec<f32> = vec![0.42, -0.81, 1.33, 2.9, -3.7, 0.05];
        fn quantizer(scale: &Tensor) -> Quantizer<'_> {
            Quantizer {
                scale,
                zero_point: None,
                qmin: -8.0,
                qmax: 7.0,
                grad_scale: 1.0,
            }
        }
        let xt = Tensor::new(x.as_slice(), &dev).unwrap();
        let f = |s: f32| -> f64 {
            let st = Tensor::new(&[s], &dev).unwrap();
            let y: Vec<f32> = fake_quant(&xt, &quantizer(&st)).unwrap().to_vec1().unwrap();
            y.iter().map(|&v| f64::from(v)).sum()
        };
        let s0 = 0.3f32;
        let sv = Var::new(&[s0], &dev).unwrap();
        let grads = fake_quant(&xt, &quantizer(sv.as_tensor()))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g: Vec<f32> = grads.get(sv.as_tensor()).unwrap().to_vec1().unwrap();
        // The codes are piecewise constant in s (none changes within ±h here): the true
        // derivative of Σ s·code is Σ codes, which the LSQ gradient equals plus Σ (−x/s) of
        // the inside values.
        let h = 1e-3;
        let numeric = (f(s0 + h) - f(s0 - h)) / (2.0 * f64::from(h));
        let inside: f64 = x
            .iter()
            .map(|&v| f64::from(v) / f64::from(s0))
            .filter(|u| (-8.0..=7.0).contains(&u.round()))
            .sum();
        assert!(
            (f64::from(g[0]) - (numeric - inside)).abs() < 1e-3,
            "{} vs {}",
            g[0],
            numeric - inside
        );
    }

    /// The forward pass is the PTQ kernel's fake quantization, which is ONNX's QuantizeLinear
    /// and DequantizeLinear: ties round to even, per channel, with a zero-point.
    #[test]
    fn forward_is_the_exported_quantization_ties_included() {
        use zeropoint_core::{Granularity, Grid, QParams};
        let dev = Device::Cpu;
        // Ties (±0.5, ±2.5 codes), values in and out of the grid, on two channels of 5.
        let x: Vec<f32> = vec![0.05, -0.25, 0.25, 0.35, 9.0, -0.05, 0.5, -0.5, 0.7, -9.0];
        let (scale, zero) = ([0.1f32, 0.2], [3i32, -2]);
        let grid = Grid { qmin: -8, qmax: 7 };
        let params = QParams::new(
            Granularity::PerAxis { axis: 0 },
            grid,
            scale.to_vec(),
            zero.to_vec(),
        )
        .unwrap();
        let want = zeropoint_core::fake_quant(&x, &[2, 5], &params).unwrap();
        let st = Tensor::new(&scale, &dev).unwrap().reshape((2, 1)).unwrap();
        let zt = Tensor::new(&[3f32, -2.0], &dev)
            .unwrap()
            .reshape((2, 1))
            .unwrap();
        let xt = Tensor::from_vec(x, (2, 5), &dev).unwrap();
        let q = Quantizer {
            scale: &st,
            zero_point: Some(&zt),
            qmin: -8.0,
            qmax: 7.0,
            grad_scale: 1.0,
        };
        let got: Vec<f32> = fake_quant(&xt, &q)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, want);
    }

    /// Values larger than one chunk, per channel: the same bits forward and backward on one
    /// thread or three.
    #[test]
    fn the_thread_count_does_not_change_the_bits() {
        let dev = Device::Cpu;
        let n = 7 * (3 * CHUNK / 7 + 50);
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
            .collect();
        let run = || {
            let xv = Var::from_vec(x.clone(), (n / 7, 7), &dev).unwrap();
            let sv =
                Var::from_vec(vec![0.3f32, 0.5, 0.2, 0.7, 0.1, 0.4, 0.6], (1, 7), &dev).unwrap();
            let zv = Var::from_vec(vec![1.2f32; 7], (1, 7), &dev).unwrap();
            let q = Quantizer {
                scale: sv.as_tensor(),
                zero_point: Some(zv.as_tensor()),
                qmin: -8.0,
                qmax: 7.0,
                grad_scale: 0.01,
            };
            let y = fake_quant(xv.as_tensor(), &q).unwrap();
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
            [
                &y,
                grads.get(xv.as_tensor()).unwrap(),
                grads.get(sv.as_tensor()).unwrap(),
                grads.get(zv.as_tensor()).unwrap(),
            ]
            .map(flat)
        };
        let on = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(run)
        };
        let one = on(1);
        assert!(one[2].iter().all(|&d| d != 0.0) && one[3].iter().all(|&d| d != 0.0));
        assert_eq!(one, on(3));
    }

    /// A scale that is neither one value nor one per index of a single axis is refused.
    /// The AVX2 lanes give the scalar lanes' bits: ∂x and both sums, on values inside, on
    /// the edges of, outside and far outside a signed grid, ties included.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_lanes_are_the_scalar_lanes() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let s = 0.25f32;
        let x: Vec<f32> = (0..4096)
            .map(|i| match i % 7 {
                0 => (i as f32 - 2048.0) * 0.125, // ties and exact codes
                1 => 2.0 + i as f32 * 1e-3,       // beyond the top
                2 => -3e7,                        // far outside
                3 => -8.0 * s,                    // the grid's edges
                4 => 7.0 * s,
                _ => ((i * 7919) % 1000) as f32 * 0.003 - 1.5,
            })
            .collect();
        let g: Vec<f32> = (0..4096)
            .map(|i| ((i * 31) % 17) as f32 * 0.1 - 0.8)
            .collect();
        let bits = |v: &[MaybeUninit<f32>]| -> Vec<u32> {
            // SAFETY: both lane functions write every element.
            v.iter()
                .map(|d| unsafe { d.assume_init() }.to_bits())
                .collect()
        };
        let (mut a, mut b) = (
            vec![MaybeUninit::uninit(); 4096],
            vec![MaybeUninit::uninit(); 4096],
        );
        let scalar = lanes_scalar((&x, &g, &mut a), s, (-8.0, 7.0));
        // SAFETY: AVX2 is checked above.
        let avx2 = unsafe { lanes_avx2((&x, &g, &mut b), s, (-8.0, 7.0)) };
        assert_eq!(bits(&a), bits(&b));
        assert_eq!(scalar.0.map(f32::to_bits), avx2.0.map(f32::to_bits));
        assert_eq!(scalar.1.map(f32::to_bits), avx2.1.map(f32::to_bits));
        assert!(
            scalar.1.iter().any(|&c| c != 0.0),
            "some elements are clipped"
        );
    }

    #[test]
    fn a_scale_of_another_shape_is_refused() {
        assert_eq!(
            Channels::of(&[4, 3, 2], &[3, 1]).unwrap(),
            Channels { count: 3, inner: 2 }
        );
        assert_eq!(
            Channels::of(&[4, 3, 2], &[1]).unwrap(),
            Channels { count: 1, inner: 1 }
        );
        assert!(Channels::of(&[4, 3, 2], &[4, 3, 1]).is_err());
        assert!(Channels::of(&[4, 3, 2], &[5, 1, 1]).is_err());
        assert!(Channels::of(&[3], &[3, 1]).is_err());
    }
}
