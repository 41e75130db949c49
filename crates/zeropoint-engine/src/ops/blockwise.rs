//! Float32 arithmetic where one operand holds one value per block of the other's trailing
//! elements, repeated along its leading axes: a per-channel shift or scale (`[1, C, 1, 1]` or
//! `[C, 1, 1]` against `[N, C, H, W]`), a convolution's bias, a squeeze-excitation gate
//! (`[N, C, 1, 1]`), and operands of one shape (blocks of one element).
//!
//! candle walks such a broadcast one element at a time with index counters, and its gradient
//! of one multiplies full-size views and sums them on one thread. Here the forward pass is a
//! vectorized pass per block (the same operation on the same pairs, so the same bits), and for
//! training Add, Sub and Mul are a candle op ([`tracked`]) whose backward pass is one parallel
//! pass per operand: ∂x = ∂z (·y), ∂y = the sums over each of its blocks of ∂z (·x). Each sum
//! adds its blocks in order, each block summed in f64, so the bits do not depend on the
//! thread count.

use candle_core::{CpuStorage, CustomOp2, DType as CDType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::elementwise::filled;
use crate::value::{storage_f32s as f32s, with_f32_slices as with_f32s};

/// How `y` broadcasts against `x`: each of y's `m` values covers `block` consecutive elements
/// of x, and the m blocks repeat along x's leading axes.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Blocks {
    block: usize,
    m: usize,
}

impl Blocks {
    /// None where `yd` is not of that form against `xd` (a gap, a trailing broadcast axis, more
    /// axes than x). A scalar is one block of all of x.
    fn of(xd: &[usize], yd: &[usize]) -> Option<Blocks> {
        if yd.len() > xd.len() {
            return None;
        }
        // y's dimensions aligned right, as broadcasting does: 1 outside axes [j, k), equal to
        // x's inside.
        let pad = xd.len() - yd.len();
        let ydim = |i: usize| if i < pad { 1 } else { yd[i - pad] };
        let k = (0..xd.len())
            .rev()
            .find(|&i| ydim(i) != 1)
            .map_or(0, |i| i + 1);
        let j = (0..k).find(|&i| ydim(i) != 1).unwrap_or(k);
        if (j..k).any(|i| ydim(i) != xd[i]) {
            return None;
        }
        let block = xd[k..].iter().product();
        let m = xd[j..k].iter().product();
        (block > 0 && m > 0).then_some(Blocks { block, m })
    }
}

/// `f(x, y)` of each element of `xs` with its block's value of `ys`, in parallel. Blocks of one
/// element pair runs of x with runs of y.
#[inline(always)]
fn map<Y: Copy + Sync>(
    xs: &[f32],
    ys: &[Y],
    b: Blocks,
    f: impl Fn(f32, Y) -> f32 + Sync + Copy,
) -> Vec<f32> {
    let Blocks { block, m } = b;
    filled(
        xs.len(),
        #[inline(always)]
        |out, at| {
            let mut done = 0;
            while done < out.len() {
                let i = at + done;
                let out = &mut out[done..];
                done += if block == 1 {
                    let take = (m - i % m).min(out.len());
                    let (xs, ys) = (&xs[i..i + take], &ys[i % m..i % m + take]);
                    for ((o, &a), &v) in out[..take].iter_mut().zip(xs).zip(ys) {
                        o.write(f(a, v));
                    }
                    take
                } else {
                    let take = (block - i % block).min(out.len());
                    let v = ys[i / block % m];
                    for (o, &a) in out[..take].iter_mut().zip(&xs[i..i + take]) {
                        o.write(f(a, v));
                    }
                    take
                };
            }
        },
    )
}

// The operators as functions that are always inlined, so that they are compiled wide inside
// [`zeropoint_core::kernel::dispatch`] with the loop (a closure may be outlined).
#[inline(always)]
fn add(a: f32, b: f32) -> f32 {
    a + b
}
#[inline(always)]
fn sub(a: f32, b: f32) -> f32 {
    a - b
}
#[inline(always)]
fn mul(a: f32, b: f32) -> f32 {
    a * b
}
#[inline(always)]
fn div(a: f32, b: f32) -> f32 {
    a / b
}

/// [`map`] with the operator of `arith`, each one compiled into its own loop.
fn map_arith(xs: &[f32], ys: &[f32], b: Blocks, arith: Arith) -> Vec<f32> {
    match arith {
        Arith::Add => map(xs, ys, b, add),
        Arith::Sub => map(xs, ys, b, sub),
        Arith::Mul => map(xs, ys, b, mul),
        Arith::Div => map(xs, ys, b, div),
    }
}

/// Per value of y, the sum of `g` (times `x` where given) over its blocks: each block summed in
/// f64, the blocks added in order, y's values in parallel.
fn block_sums(g: &[f32], x: Option<&[f32]>, b: Blocks) -> Vec<f32> {
    let Blocks { block, m } = b;
    let repeats = g.len() / (block * m).max(1);
    if let (1, 1, Some(x)) = (block, repeats, x) {
        return map_arith(g, x, b, Arith::Mul);
    }
    (0..m)
        .into_par_iter()
        .map(|v| {
            let mut sum = 0f64;
            for r in 0..repeats {
                let at = (r * m + v) * block;
                let g = &g[at..at + block];
                sum += match x {
                    Some(x) => g
                        .iter()
                        .zip(&x[at..at + block])
                        .map(|(&g, &x)| f64::from(g * x))
                        .sum::<f64>(),
                    None => g.iter().map(|&g| f64::from(g)).sum::<f64>(),
                };
            }
            sum as f32
        })
        .collect()
}

/// `x op y` with numpy broadcasting: this module's passes where the operands have their form
/// (with gradients where one carries them), else candle's broadcasting operator.
pub(super) fn arith(x: &Tensor, y: &Tensor, op: Arith) -> candle_core::Result<Tensor> {
    let t = match x.track_op() || y.track_op() {
        true => tracked(x, y, op),
        false => blockwise(x, y, op),
    };
    t.unwrap_or_else(|| match op {
        Arith::Add => x.broadcast_add(y),
        Arith::Sub => x.broadcast_sub(y),
        Arith::Mul => x.broadcast_mul(y),
        Arith::Div => x.broadcast_div(y),
    })
}

/// `x op y` in block form for inference: None where the operands are not of that form or
/// carry gradients. Operands of one shape and scalars take it too: candle's passes over them
/// are vectorized but run on one thread (the CLI gives candle one), which left the other core
/// idle during every HardSwish product of a calibration run or a distillation teacher.
fn blockwise(x: &Tensor, y: &Tensor, op: Arith) -> Option<candle_core::Result<Tensor>> {
    let f32s = x.dtype() == CDType::F32 && y.dtype() == CDType::F32;
    if !f32s || x.track_op() || y.track_op() {
        return None;
    }
    let b = Blocks::of(x.dims(), y.dims())?;
    let out = with_f32s([x, y], |[xs, ys]| map_arith(xs, ys, b, op));
    Some(out.and_then(|v| Tensor::from_vec(v, x.dims(), x.device())))
}

/// x·a + b per block (a BatchNormalization folded into one scale and shift per channel, `a`
/// and `b` of one shape), in one pass: the bits of a Mul then an Add (Rust does not fuse the
/// two into an FMA), reading and writing memory once. None where the operands are not of block
/// form or carry gradients.
pub(super) fn affine(x: &Tensor, a: &Tensor, b: &Tensor) -> Option<candle_core::Result<Tensor>> {
    let f32s = [x, a, b]
        .iter()
        .all(|t| t.dtype() == CDType::F32 && !t.track_op());
    if !f32s || a.dims() != b.dims() {
        return None;
    }
    let blocks = Blocks::of(x.dims(), a.dims())?;
    let out = with_f32s([x, a, b], |[xs, a, b]| {
        let ab: Vec<(f32, f32)> = a.iter().copied().zip(b.iter().copied()).collect();
        map(xs, &ab, blocks, scale_shift)
    });
    Some(out.and_then(|v| Tensor::from_vec(v, x.dims(), x.device())))
}

#[inline(always)]
fn scale_shift(x: f32, (a, b): (f32, f32)) -> f32 {
    x * a + b
}

/// The operators of this module; all but Div with a backward pass of their own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

/// `x op y` of float32 operands in block form (either one the larger, for Add and Mul) as a
/// candle op with the backward pass of this module. None where they are not of that form.
fn tracked(x: &Tensor, y: &Tensor, arith: Arith) -> Option<candle_core::Result<Tensor>> {
    if x.dtype() != CDType::F32 || y.dtype() != CDType::F32 || arith == Arith::Div {
        return None;
    }
    let (x, y, b) = match Blocks::of(x.dims(), y.dims()) {
        Some(b) => (x, y, b),
        None if arith != Arith::Sub => (y, x, Blocks::of(y.dims(), x.dims())?),
        None => return None,
    };
    let op = Grad { arith, blocks: b };
    Some(
        x.contiguous()
            .and_then(|x| x.apply_op2(&y.contiguous()?, op)),
    )
}

/// The candle op of [`tracked`].
struct Grad {
    arith: Arith,
    blocks: Blocks,
}

impl CustomOp2 for Grad {
    fn name(&self) -> &'static str {
        "blockwise"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        y: &CpuStorage,
        ly: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (xs, ys) = (f32s(x, lx)?, f32s(y, ly)?);
        if ys.len() != self.blocks.m {
            candle_core::bail!(
                "blockwise: {} values for {} blocks",
                ys.len(),
                self.blocks.m
            );
        }
        let z = map_arith(xs, ys, self.blocks, self.arith);
        Ok((CpuStorage::F32(z), lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        y: &Tensor,
        _z: &Tensor,
        dz: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let b = self.blocks;
        let (dx, dy) = match self.arith {
            Arith::Div => candle_core::bail!("blockwise: Div is not built with gradients"),
            Arith::Add | Arith::Sub => {
                let dy = y
                    .track_op()
                    .then(|| with_f32s([dz], |[g]| block_sums(g, None, b)));
                (x.track_op().then(|| Ok(dz.clone())), dy)
            }
            Arith::Mul => {
                let dx = x.track_op().then(|| {
                    let v = with_f32s([dz, y], |[g, ys]| map_arith(g, ys, b, Arith::Mul))?;
                    Tensor::from_vec(v, x.shape(), x.device())
                });
                let dy = y
                    .track_op()
                    .then(|| with_f32s([dz, x], |[g, xs]| block_sums(g, Some(xs), b)));
                (dx, dy)
            }
        };
        let dy = dy.map(|v| {
            let v = v?;
            let v = match self.arith {
                Arith::Sub => v.into_iter().map(|v| -v).collect(),
                _ => v,
            };
            Tensor::from_vec(v, y.shape(), y.device())
        });
        Ok((dx.transpose()?, dy.transpose()?))
    }
}

#[cfg(test)]
mod tests {
    use super::{affine, blockwise, tracked, Arith};
    use candle_core::{Device, Tensor, Var};

    fn tensor(dims: &[usize], seed: f32) -> Tensor {
        let n = dims.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (i as f32 * 0.37 + seed).sin() * 3.0)
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// The one-pass scale and shift gives candle's multiply then add, bit for bit: channel
    /// planes (NCHW against [1, C, 1, 1]), one value per element of a row ([N, C] against
    /// [1, C]), and planes longer than a parallel chunk.
    #[test]
    fn affine_is_a_multiply_then_an_add() {
        for (x, ab) in [
            (vec![2, 3, 5, 7], vec![1, 3, 1, 1]),
            (vec![4, 6], vec![1, 6]),
            (vec![1, 2, 150, 150], vec![1, 2, 1, 1]),
        ] {
            let (x, a, b) = (tensor(&x, 0.1), tensor(&ab, 0.7), tensor(&ab, 1.3));
            let want = x.broadcast_mul(&a).unwrap().broadcast_add(&b).unwrap();
            let got = affine(&x, &a, &b).unwrap().unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                v.iter().map(|f| f.to_bits()).collect()
            };
            assert_eq!(bits(&got), bits(&want), "{:?}", x.dims());
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        values(t).iter().map(|v| v.to_bits()).collect()
    }

    /// The block-wise pass gives candle's bits for the four operators on the shapes it takes
    /// (per channel, per sample and channel, rank-padded, the same shape, per trailing element,
    /// scalars, a transposed operand) and declines the others (a gap, a mismatched axis, more
    /// axes than x).
    #[test]
    fn blockwise_matches_candle_broadcasting() {
        let x = tensor(&[2, 3, 5, 7], 0.1);
        let transposed = x.transpose(2, 3).unwrap();
        let blocks = [
            &[1, 3, 1, 1][..],
            &[2, 3, 1, 1],
            &[3, 1, 1],
            &[2, 3, 5, 1],
            &[1, 3, 5, 1],
            &[2, 1, 1, 1],
            &[2, 3, 5, 7],
            &[1, 1, 1, 7],
            &[7],
            &[1],
            &[],
        ];
        let others = [
            &[1, 3, 1, 7][..],
            &[2, 1, 5, 1],
            &[3, 5, 1, 1],
            &[1, 2, 3, 5, 7],
        ];
        type Candle = fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;
        let ops: [(Arith, Candle); 4] = [
            (Arith::Add, |x, y| x.broadcast_add(y)),
            (Arith::Sub, |x, y| x.broadcast_sub(y)),
            (Arith::Mul, |x, y| x.broadcast_mul(y)),
            (Arith::Div, |x, y| x.broadcast_div(y)),
        ];
        for (f, candle) in ops {
            for dims in blocks {
                let y = tensor(dims, 0.7);
                let ours = blockwise(&x, &y, f).expect("a block form").unwrap();
                assert_eq!(ours.dims(), x.dims());
                assert_eq!(bits(&ours), bits(&candle(&x, &y).unwrap()), "{dims:?}");
            }
            let y = tensor(&[1, 3, 1, 1], 0.2);
            let ours = blockwise(&transposed, &y, f)
                .expect("a block form")
                .unwrap();
            assert_eq!(bits(&ours), bits(&candle(&transposed, &y).unwrap()));
            for dims in others {
                assert!(blockwise(&x, &tensor(dims, 0.3), f).is_none(), "{dims:?}");
            }
        }
    }

    /// Add, Sub and Mul with gradients give candle's values and gradients: the same bits
    /// forward and for the larger operand, the block sums within float rounding of candle's
    /// (which sums in f32). Either operand may be the smaller one of Add and Mul; Sub takes a
    /// smaller right operand only, and shapes of no block form are declined.
    #[test]
    fn tracked_gradients_match_candle() {
        type Candle = fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;
        let ops: [(Arith, Candle); 3] = [
            (Arith::Add, |x, y| x.broadcast_add(y)),
            (Arith::Sub, |x, y| x.broadcast_sub(y)),
            (Arith::Mul, |x, y| x.broadcast_mul(y)),
        ];
        let big = [2, 3, 5, 7];
        let smalls = [
            &[2, 3, 1, 1][..],
            &[1, 3, 1, 1],
            &[3, 1, 1],
            &[2, 3, 5, 7],
            &[7],
        ];
        for (arith, candle) in ops {
            for small in smalls {
                for swap in [false, true] {
                    let x = Var::from_tensor(&tensor(&big, 0.1)).unwrap();
                    let y = Var::from_tensor(&tensor(small, 0.7)).unwrap();
                    let (a, b) = if swap { (&y, &x) } else { (&x, &y) };
                    let Some(ours) = tracked(a, b, arith) else {
                        assert!(
                            swap && arith == Arith::Sub && small != &big[..],
                            "{small:?}"
                        );
                        continue;
                    };
                    let ours = ours.unwrap();
                    let reference = candle(a, b).unwrap();
                    assert_eq!(bits(&ours), bits(&reference), "{arith:?} {small:?} {swap}");
                    // A loss that weighs every output differently.
                    let w = tensor(ours.dims(), 2.3);
                    let grads =
                        |z: &Tensor| (z * &w).unwrap().sum_all().unwrap().backward().unwrap();
                    let (g_ours, g_ref) = (grads(&ours), grads(&reference));
                    let dx = |g: &candle_core::backprop::GradStore| g.get(&x).unwrap().clone();
                    assert_eq!(bits(&dx(&g_ours)), bits(&dx(&g_ref)), "{arith:?} {small:?}");
                    let (dy, dy_ref) = (g_ours.get(&y).unwrap(), g_ref.get(&y).unwrap());
                    assert_eq!(dy.dims(), y.dims());
                    for (u, v) in values(dy).iter().zip(values(dy_ref)) {
                        assert!(
                            (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                            "{arith:?} {small:?}: {u} vs {v}"
                        );
                    }
                }
            }
        }
        let (x, y) = (
            Var::from_tensor(&tensor(&big, 0.1)).unwrap(),
            tensor(&[1, 3, 1, 7], 0.2),
        );
        assert!(tracked(&x, &y, Arith::Mul).is_none());
    }
}
