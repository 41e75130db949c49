//! Element-wise operators: arithmetic with numpy broadcasting, comparisons and logic (bool
//! results carried as u8 0/1), unary math, activations, Where and Cast.
//!
//! Activations with a kink are written as relu-based sums (leaky = relu(x) + a·(x − relu(x)))
//! rather than selects: exact in floating point, and differentiable by candle.

use std::mem::MaybeUninit;

use candle_core::{DType as CDType, Device, Tensor};

use super::blockwise::{arith, Arith};
use super::{broadcast_pair, broadcast_shape, c, dtype_code, like, one, scalar, Cx, Error, R};
use crate::value::{carrier, Value};
use zeropoint_graph::Op;
use zeropoint_onnx::DType;

/// max(x, 0), NaN kept as ONNX Runtime keeps it (candle's turns it into 0, hiding a broken
/// input behind a plausible activation). Where a float32 gradient is needed it is a candle op
/// whose backward pass is one select, ∂x = ∂y where x ≥ 0 (as candle's own); candle's takes
/// four tensor-sized passes.
fn relu(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.dtype() != CDType::F32 {
        return x.relu();
    }
    if !x.track_op() {
        let y = crate::value::with_f32_slice(x, |v| par_map(v, rectified))
            .map_err(candle_core::Error::msg)?;
        return Tensor::from_vec(y, x.dims(), x.device());
    }
    x.contiguous()?.apply_op1(Relu)
}

/// One value of [`relu`]: 0 below and at zero, the value itself above and where it is NaN.
#[inline(always)]
fn rectified(v: f32) -> f32 {
    if v > 0.0 || v.is_nan() {
        v
    } else {
        0.0
    }
}

struct Relu;

/// A custom op's forward pass that maps each float32 element alone.
fn map_f32s(
    x: &candle_core::CpuStorage,
    l: &candle_core::Layout,
    f: impl Fn(f32) -> f32,
) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
    let y = crate::value::storage_f32s(x, l)?
        .iter()
        .map(|&v| f(v))
        .collect();
    Ok((candle_core::CpuStorage::F32(y), l.shape().clone()))
}

impl candle_core::CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        map_f32s(x, l, rectified)
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = crate::value::with_f32_slices([x, dy], |[x, dy]| {
            x.iter()
                .zip(dy)
                .map(|(&x, &g)| if x >= 0.0 { g } else { 0.0 })
                .collect::<Vec<f32>>()
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// atan(x) (candle has no kernel for it), differentiable: ∂x = ∂y / (1 + x²). Other float
/// types go through float32.
fn atan(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.dtype() != CDType::F32 {
        return atan(&x.to_dtype(CDType::F32)?)?.to_dtype(x.dtype());
    }
    x.contiguous()?.apply_op1(Atan)
}

struct Atan;

impl candle_core::CustomOp1 for Atan {
    fn name(&self) -> &'static str {
        "atan"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        map_f32s(x, l, f32::atan)
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(dy.div(&x.sqr()?.affine(1.0, 1.0)?)?))
    }
}

/// min(max(x·a + b, lo), hi) over float32 in one pass: HardSigmoid (a, b; bounds 0 and 1),
/// HardSwish's half of it, and Clip (no affine). The same bits as candle's affine, maximum and
/// minimum, forward and backward: ∂x = ∂y·a inside the bounds, half of that on a bound (where
/// candle splits the tie between the operands), 0 outside. candle's backward of the three takes
/// a dozen tensor-sized passes (masks, casts, divisions, a gradient for each bound): two fifths
/// of a PP-LCNet training step.
#[derive(Clone, Copy)]
struct Clamp {
    affine: Option<(f32, f32)>,
    lo: Option<f32>,
    hi: Option<f32>,
}

impl Clamp {
    /// The forward pass, vectorized: a missing bound is an infinite one, which no value (not
    /// even ±∞ or NaN) crosses, so the result is the same.
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let bound = self.bound();
        match self.affine {
            Some((a, b)) => par_map(x, move |v| bound(v * a + b)),
            // Not x·1 + 0, which would turn −0 into +0.
            None => par_map(x, bound),
        }
    }

    /// The clamp to the bounds, with the bounds' presence decided outside the loops that
    /// call it (a missing bound is an infinite one).
    #[inline(always)]
    fn bound(&self) -> impl Fn(f32) -> f32 + Copy + Sync {
        let lo = self.lo.unwrap_or(f32::NEG_INFINITY);
        let hi = self.hi.unwrap_or(f32::INFINITY);
        #[inline(always)]
        move |u: f32| {
            let v = if u < lo { lo } else { u };
            if v > hi {
                hi
            } else {
                v
            }
        }
    }

    /// ∂x for ∂y = `dy`, with candle's arithmetic: each bound's mask times the gradient,
    /// divided by 1 + the other operand's mask; the affine's gradient is g·a + 0. One loop per
    /// combination of stages, so that each vectorizes (a missing bound is skipped, not made
    /// infinite: at x = ±∞ or NaN that would split or drop the gradient where candle does not).
    fn backward(&self, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let (a, b) = self.affine.unwrap_or((1.0, 0.0));
        let (lo, hi) = (self.lo.unwrap_or(0.0), self.hi.unwrap_or(0.0));
        let p = (a, b, lo, hi);
        match (self.affine.is_some(), self.lo.is_some(), self.hi.is_some()) {
            (true, true, true) => par_map2(x, dy, clamp_grad::<true, true, true>(p)),
            (true, true, false) => par_map2(x, dy, clamp_grad::<true, true, false>(p)),
            (true, false, true) => par_map2(x, dy, clamp_grad::<true, false, true>(p)),
            (true, false, false) => par_map2(x, dy, clamp_grad::<true, false, false>(p)),
            (false, true, true) => par_map2(x, dy, clamp_grad::<false, true, true>(p)),
            (false, true, false) => par_map2(x, dy, clamp_grad::<false, true, false>(p)),
            (false, false, true) => par_map2(x, dy, clamp_grad::<false, false, true>(p)),
            (false, false, false) => dy.to_vec(),
        }
    }
}

/// [`Clamp::backward`]'s ∂x of one element (x, ∂y) with its stages fixed: `AFFINE` (x·a + b),
/// `LO` (maximum with lo), `HI` (minimum with hi).
#[inline(always)]
fn clamp_grad<const AFFINE: bool, const LO: bool, const HI: bool>(
    (a, b, lo, hi): (f32, f32, f32, f32),
) -> impl Fn(f32, f32) -> f32 + Sync {
    let mask = |t: bool| if t { 1f32 } else { 0f32 };
    // The gradient of the kept operand of a maximum or minimum that gave `node`.
    let split = move |node: f32, kept: f32, bound: f32, g: f32| {
        mask(node == kept) * g / (mask(node == bound) + 1.0)
    };
    #[inline(always)]
    move |x: f32, g: f32| {
        let u = if AFFINE { x * a + b } else { x };
        let v = if LO && u < lo { lo } else { u };
        let mut g = g;
        if HI {
            let w = if v > hi { hi } else { v };
            g = split(w, v, hi, g);
        }
        if LO {
            g = split(v, u, lo, g);
        }
        if AFFINE {
            g * a + 0.0
        } else {
            g
        }
    }
}

impl candle_core::CustomOp1 for Clamp {
    fn name(&self) -> &'static str {
        "clamp"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let y = self.forward(crate::value::storage_f32s(x, l)?);
        Ok((candle_core::CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = crate::value::with_f32_slices([x, dy], |[x, dy]| self.backward(x, dy))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// [`Clamp`] of a float32 `x`.
fn clamp(x: &Tensor, op: Clamp) -> R<Tensor> {
    c(x.contiguous()?.apply_op1(op))
}

pub fn binary(cx: &Cx) -> R<Vec<Value>> {
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    let (x, y) = (&a.tensor, &b.tensor);
    let op = &cx.node.op;
    let bool_out = |t: Tensor| one(Value::new(t, DType::Bool));
    if !matches!(op, Op::Pow) && x.dtype() != y.dtype() {
        return Err(Error::Op(format!(
            "operands have different types {} and {}",
            a.dtype, b.dtype
        )));
    }
    let arith = |op: Arith| one(like(c(arith(x, y, op))?, a));
    match op {
        Op::Add => arith(Arith::Add),
        Op::Sub => arith(Arith::Sub),
        Op::Mul => arith(Arith::Mul),
        Op::Div if super::is_int(y) && b.to_i64s()?.contains(&0) => {
            // candle panics there; ONNX leaves it undefined.
            Err("integer division by zero".into())
        }
        Op::Div => arith(Arith::Div),
        Op::Pow => one(like(pow(x, b)?, a)),
        Op::Equal => bool_out(c(x.broadcast_eq(y))?),
        Op::Less => bool_out(c(x.broadcast_lt(y))?),
        Op::Greater => bool_out(c(x.broadcast_gt(y))?),
        Op::LessOrEqual => bool_out(c(x.broadcast_le(y))?),
        Op::GreaterOrEqual => bool_out(c(x.broadcast_ge(y))?),
        Op::And => bool_out(c(x.broadcast_mul(y))?),
        Op::Or => bool_out(c(x.broadcast_maximum(y))?),
        Op::Xor => bool_out(c(x.broadcast_ne(y))?),
        _ => Err(Error::Op(format!("{op} is not a binary operator"))),
    }
}

/// x^y. A constant exponent uses powf (correct for negative bases with integral exponents);
/// an elementwise one uses exp(y·ln x), as defined for positive bases.
fn pow(x: &Tensor, y: &Value) -> R<Tensor> {
    let ys = y.to_f64s()?;
    if let Some(&e) = ys.first().filter(|&&e| ys.iter().all(|&v| v == e)) {
        let out_shape = broadcast_shape(x.dims(), y.shape())?;
        let r = match e {
            1.0 => x.clone(),
            // candle's sqr and sqrt are float-only (they panic on integers).
            2.0 if !super::is_int(x) => c(x.sqr())?,
            0.5 if !super::is_int(x) => c(x.sqrt())?,
            _ if super::is_int(x) => {
                let v: Vec<i64> = c(x.flatten_all()?.to_vec1::<i64>())?;
                let v: Vec<i64> = v.iter().map(|&b| (b as f64).powf(e) as i64).collect();
                c(Tensor::from_vec(v, x.dims(), x.device()))?
            }
            _ => c(x.powf(e))?,
        };
        return c(r.broadcast_as(out_shape.as_slice()));
    }
    if ys.iter().all(|e| e.fract() == 0.0) || super::is_int(x) {
        // Integral exponents are defined for negative bases too: compute them exactly. Integer
        // bases take fractional exponents here as well (candle has no log of integers).
        let (xb, yb) = broadcast_pair(x, &y.tensor.to_dtype(candle_core::DType::F64)?)?;
        let xs = xb
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let es = yb.flatten_all()?.to_vec1::<f64>()?;
        let r: Vec<f64> = xs
            .iter()
            .zip(&es)
            .map(|(b, e)| {
                if e.fract() == 0.0 {
                    b.powi(*e as i32)
                } else {
                    b.powf(*e)
                }
            })
            .collect();
        return c(Tensor::from_vec(r, xb.dims(), x.device())?.to_dtype(x.dtype()));
    }
    let yt = c(y.tensor.to_dtype(x.dtype()))?;
    let (xb, yb) = broadcast_pair(x, &yt)?;
    c(xb.log().and_then(|l| l.mul(&yb)).and_then(|t| t.exp()))
}

pub fn variadic(cx: &Cx) -> R<Vec<Value>> {
    let first = cx.input(0)?;
    let mut acc = first.tensor.clone();
    for v in cx.inputs[1..].iter().flatten() {
        acc = c(match &cx.node.op {
            Op::Max => acc.broadcast_maximum(&v.tensor),
            Op::Min => acc.broadcast_minimum(&v.tensor),
            _ => acc.broadcast_add(&v.tensor),
        })?;
    }
    if cx.node.op == Op::Mean {
        acc = c(acc.affine(1.0 / cx.inputs.iter().flatten().count() as f64, 0.0))?;
    }
    one(like(acc, first))
}

pub fn unary(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let x = &v.tensor;
    let t = c(match &cx.node.op {
        // candle's unary kernels are float-only: integers go through exact arithmetic.
        Op::Neg => x.zeros_like().and_then(|z| z.sub(x)),
        Op::Abs if super::is_int(x) => x.zeros_like().and_then(|z| x.maximum(&z.sub(x)?)),
        Op::Sign if super::is_int(x) => {
            let z = x.zeros_like()?;
            x.gt(&z)?
                .to_dtype(x.dtype())?
                .sub(&x.lt(&z)?.to_dtype(x.dtype())?)
        }
        Op::Abs => x.abs(),
        Op::Sign => x.sign(),
        Op::Not => x.ones_like().and_then(|o| o.sub(x)),
        Op::Relu if super::is_int(x) => x.maximum(&x.zeros_like()?),
        op => {
            let x = cx.float(0)?;
            match op {
                Op::Relu => relu(x),
                Op::Sigmoid => sigmoid(x),
                Op::Tanh => x.tanh(),
                Op::Exp => x.exp(),
                Op::Log => x.log(),
                Op::Sqrt => x.sqrt(),
                Op::Erf => x.erf(),
                Op::Reciprocal => x.recip(),
                Op::Floor => x.floor(),
                Op::Ceil => x.ceil(),
                Op::Sin => x.sin(),
                Op::Cos => x.cos(),
                Op::Atan => atan(x),
                // log(1 + e^x), computed as relu(x) + log(1 + e^-|x|) to avoid overflow.
                _ => x
                    .abs()
                    .and_then(|a| a.neg()?.exp()?.affine(1.0, 1.0)?.log())
                    .and_then(|l| x.relu()?.add(&l)),
            }
        }
    })?;
    one(like(t, v))
}

/// IsNaN, and IsInf with its `detect_negative` / `detect_positive` switches: a bool per element.
pub fn is_special(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let (neg, pos) = (
        cx.int("detect_negative", 1)? != 0,
        cx.int("detect_positive", 1)? != 0,
    );
    let nan = cx.node.op == Op::IsNaN;
    let flags = v
        .to_f32s()?
        .iter()
        .map(|x| {
            let hit = if nan {
                x.is_nan()
            } else {
                x.is_infinite() && if *x > 0.0 { pos } else { neg }
            };
            i64::from(hit)
        })
        .collect();
    one(Value::from_ints(
        flags,
        v.shape(),
        zeropoint_onnx::DType::Bool,
    )?)
}

fn sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.dtype() == CDType::F32 && !x.track_op() {
        return sigmoid_f32(x);
    }
    x.neg()?.exp()?.affine(1.0, 1.0)?.recip()
}

/// Sigmoid of a float32 tensor in one parallel, vectorized pass: candle's four single-threaded
/// passes through libm's `exp` took a fifth of a YOLO's run time (its SiLUs).
fn sigmoid_f32(x: &Tensor) -> candle_core::Result<Tensor> {
    let y = crate::value::with_f32_slice(x, |v| par_map(v, logistic))
        .map_err(candle_core::Error::msg)?;
    Tensor::from_vec(y, x.dims(), x.device())
}

/// The float32 Sigmoid of one value, the one formula both [`sigmoid_f32`] and
/// [`sigmoid_and_product`] compute (the fused SiLU gives the same bits as the two ops).
#[inline(always)]
fn logistic(v: f32) -> f32 {
    1.0 / (exp_f32(-v) + 1.0)
}

/// Sigmoid(x) and x · Sigmoid(x) of float32 `x` in one pass: a SiLU written as Sigmoid → Mul,
/// with the arithmetic of the two ops (the same bits). The Mul then reads nothing: on
/// YOLO-style detectors the pair was a fifth of a run (isbnx-yolo26n: 10.1 + 7.3 ms of 81).
pub(crate) fn sigmoid_and_product(x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    use rayon::prelude::*;
    let n = x.len();
    let mut s: Vec<f32> = Vec::with_capacity(n);
    let mut y: Vec<f32> = Vec::with_capacity(n);
    (s.spare_capacity_mut()[..n].par_chunks_mut(PAR_CHUNK))
        .zip(y.spare_capacity_mut()[..n].par_chunks_mut(PAR_CHUNK))
        .enumerate()
        .for_each(|(i, (s, y))| {
            zeropoint_core::kernel::dispatch(
                #[inline(always)]
                || {
                    let x = &x[i * PAR_CHUNK..i * PAR_CHUNK + s.len()];
                    for ((s, y), &v) in s.iter_mut().zip(y.iter_mut()).zip(x) {
                        let sv = logistic(v);
                        s.write(sv);
                        y.write(v * sv);
                    }
                },
            )
        });
    // SAFETY: the chunks cover the n elements of both, and each writes all of its elements.
    unsafe {
        s.set_len(n);
        y.set_len(n);
    }
    (s, y)
}

/// Elements per task of [`par_map`] and [`par_map2`].
const PAR_CHUNK: usize = 1 << 14;

/// `f` of each element, in parallel chunks compiled wide ([`zeropoint_core::kernel::dispatch`]):
/// the element-wise custom ops' loop.
fn par_map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    filled(
        x.len(),
        #[inline(always)]
        |out, at| {
            let x = &x[at..at + out.len()];
            for (o, &v) in out.iter_mut().zip(x) {
                o.write(f(v));
            }
        },
    )
}

/// [`par_map`] of two operands of one length.
fn par_map2(x: &[f32], w: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    filled(
        x.len().min(w.len()),
        #[inline(always)]
        |out, at| {
            let (x, w) = (&x[at..at + out.len()], &w[at..at + out.len()]);
            for ((o, &a), &b) in out.iter_mut().zip(x).zip(w) {
                o.write(f(a, b));
            }
        },
    )
}

/// `n` values, each chunk written by `fill(chunk, its offset)` in parallel, compiled wide. The
/// buffer is not zeroed first: these ops are bound by memory traffic, and a zero-filled output
/// was a third more of it (Sigmoid of ddddocr-det's 9.5M activations, 5.5 ms a run).
pub(super) fn filled(n: usize, fill: impl Fn(&mut [MaybeUninit<f32>], usize) + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    let mut y: Vec<f32> = Vec::with_capacity(n);
    y.spare_capacity_mut()[..n]
        .par_chunks_mut(PAR_CHUNK)
        .enumerate()
        .for_each(|(i, out)| {
            zeropoint_core::kernel::dispatch(
                #[inline(always)]
                || fill(out, i * PAR_CHUNK),
            )
        });
    // SAFETY: the chunks cover the n elements, and `fill` writes every element of its chunk.
    unsafe { y.set_len(n) };
    y
}

/// e^x within 2 ulp, in operations that vectorize (libm's `expf` is a call per element): x =
/// n·ln 2 + r with |r| ≤ ln 2 / 2, e^r by its Taylor series to r⁷ (truncation below 1e-8) in
/// fused multiply-adds (half the operations of separate ones: a SiLU in cache 28 → 18 µs for
/// 65K values), 2^n written into the exponent bits. Inputs are clamped to [−87.3, 88.3], where
/// 2^n stays a normal float: results below 1.2e-38 or above 2.4e38 saturate there instead of
/// reaching 0 or infinity, which no sigmoid or softmax can tell apart. NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    // ln 2 split so that n·LN2_HI is exact (Cody and Waite).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2^23 rounds to an integer (ties to even) and leaves it in the low mantissa
    // bits: no float-to-int conversion, which would not vectorize.
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_54, 88.376_26);
    let t = x.mul_add(std::f32::consts::LOG2_E, SHIFTER);
    let n = t - SHIFTER;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p: f32 = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p.mul_add(r, c);
    }
    let two_n = t
        .to_bits()
        .wrapping_sub(SHIFTER.to_bits())
        .wrapping_add(127)
        << 23;
    p * f32::from_bits(two_n)
}

pub fn activation(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let x = cx.float(0)?;
    let t = match &cx.node.op {
        Op::LeakyRelu => leaky(x, cx.float_attr("alpha", 0.01)? as f64)?,
        Op::HardSigmoid => hard_sigmoid(
            x,
            cx.float_attr("alpha", 0.2)? as f64,
            cx.float_attr("beta", 0.5)? as f64,
        )?,
        Op::HardSwish => hard_swish(x)?,
        Op::Gelu => match cx.string("approximate", "none")?.as_str() {
            "none" => c(x.gelu_erf())?,
            "tanh" => c(x.gelu())?,
            a => return Err(Error::Op(format!("approximate='{a}' is not a Gelu mode"))),
        },
        Op::Elu => elu(x, cx.float_attr("alpha", 1.0)? as f64)?,
        _ => {
            let alpha = cx.float_attr("alpha", 1.673_263_2)? as f64;
            let gamma = cx.float_attr("gamma", 1.050_701)? as f64;
            c(elu(x, alpha)?.affine(gamma, 0.0))?
        }
    };
    one(like(t, v))
}

/// x where x ≥ 0, alpha·x below. Float32 without gradients selects per value, so that +∞
/// stays +∞ and NaN NaN, as in ONNX Runtime (x − relu(x) is ∞ − ∞ at +∞).
fn leaky(x: &Tensor, alpha: f64) -> R<Tensor> {
    if x.dtype() == CDType::F32 && !x.track_op() {
        let a = alpha as f32;
        let y = crate::value::with_f32_slice(x, |v| {
            par_map(v, move |v| if v < 0.0 { v * a } else { v })
        })?;
        return c(Tensor::from_vec(y, x.dims(), x.device()));
    }
    let r = c(x.relu())?;
    c(x.sub(&r)?.affine(alpha, 0.0)?.add(&r))
}

/// x · HardSigmoid(x). Without gradients it is one pass with the same arithmetic, where the
/// clamp and the product took a pass over memory each (PP-LCNet's HardSwishes at batch 8:
/// 12.4 → 7.6-8.1 ms a run).
fn hard_swish(x: &Tensor) -> R<Tensor> {
    let (alpha, beta) = (1.0 / 6.0, 0.5);
    if x.dtype() != CDType::F32 || x.track_op() {
        return c(arith(x, &hard_sigmoid(x, alpha, beta)?, Arith::Mul));
    }
    let op = hard_sigmoid_clamp(alpha, beta);
    let ((a, b), bound) = (op.affine.unwrap_or((1.0, 0.0)), op.bound());
    let y = crate::value::with_f32_slice(x, |v| par_map(v, move |v| v * bound(v * a + b)))?;
    c(Tensor::from_vec(y, x.dims(), x.device()))
}

fn hard_sigmoid(x: &Tensor, alpha: f64, beta: f64) -> R<Tensor> {
    if x.dtype() != CDType::F32 {
        return c(x.affine(alpha, beta)?.clamp(0f32, 1f32));
    }
    clamp(x, hard_sigmoid_clamp(alpha, beta))
}

/// HardSigmoid element by element, with the engine's arithmetic: for a trainer that fuses the
/// op into one of its own and keeps its bits.
#[derive(Clone, Copy)]
pub struct HardSigmoid(Clamp);

impl HardSigmoid {
    /// The HardSigmoid of node `cx` (its α and β).
    pub fn of(cx: &Cx) -> R<HardSigmoid> {
        let (alpha, beta) = (cx.float_attr("alpha", 0.2)?, cx.float_attr("beta", 0.5)?);
        Ok(HardSigmoid(hard_sigmoid_clamp(
            f64::from(alpha),
            f64::from(beta),
        )))
    }

    /// min(max(x·α + β, 0), 1).
    #[inline(always)]
    pub fn value(&self, x: f32) -> f32 {
        let (a, b) = self.0.affine.unwrap_or((1.0, 0.0));
        self.0.bound()(x * a + b)
    }

    /// ∂x for ∂y = `g`, with candle's split of the gradient on a bound.
    #[inline(always)]
    pub fn grad(&self, x: f32, g: f32) -> f32 {
        let (a, b) = self.0.affine.unwrap_or((1.0, 0.0));
        clamp_grad::<true, true, true>((a, b, 0.0, 1.0))(x, g)
    }
}

/// HardSigmoid as a [`Clamp`]: min(max(x·α + β, 0), 1).
fn hard_sigmoid_clamp(alpha: f64, beta: f64) -> Clamp {
    Clamp {
        affine: Some((alpha as f32, beta as f32)),
        lo: Some(0.0),
        hi: Some(1.0),
    }
}

fn elu(x: &Tensor, alpha: f64) -> R<Tensor> {
    let neg = c(x.minimum(0f32)?.exp()?.affine(alpha, -alpha))?;
    c(x.relu()?.add(&neg))
}

pub fn clip(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let mut t = v.tensor.clone();
    let (lo, hi) = if cx.opset < 11 {
        (
            Some(cx.float_attr("min", f32::MIN)? as f64),
            Some(cx.float_attr("max", f32::MAX)? as f64),
        )
    } else {
        let get = |i| -> R<Option<f64>> {
            cx.opt(i)
                .map(|b| b.to_f64s().map(|s| s.first().copied()))
                .transpose()
                .map(Option::flatten)
        };
        (get(1)?, get(2)?)
    };
    if t.dtype() == CDType::F32 {
        let op = Clamp {
            affine: None,
            lo: lo.map(|l| l as f32),
            hi: hi.map(|h| h as f32),
        };
        return one(like(clamp(&t, op)?, v));
    }
    if let Some(lo) = lo {
        t = c(t.maximum(&scalar(lo, &t)?.broadcast_as(t.dims())?))?;
    }
    if let Some(hi) = hi {
        t = c(t.minimum(&scalar(hi, &t)?.broadcast_as(t.dims())?))?;
    }
    one(like(t, v))
}

pub fn prelu(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let x = cx.float(0)?;
    let slope = cx.float(1)?;
    if !x.track_op() && !slope.track_op() {
        // A select, as LeakyRelu's: x − relu(x) is ∞ − ∞ at +∞.
        let negative = c(x.lt(&x.zeros_like()?))?;
        let scaled = c(x.broadcast_mul(slope))?;
        return one(like(c(negative.where_cond(&scaled, x))?, v));
    }
    let r = c(x.relu())?;
    one(like(c(x.sub(&r)?.broadcast_mul(slope)?.add(&r))?, v))
}

pub fn where_op(cx: &Cx) -> R<Vec<Value>> {
    let (cond, a, b) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let s = broadcast_shape(cond.shape(), a.shape())?;
    let s = broadcast_shape(&s, b.shape())?;
    let s = s.as_slice();
    let t = c(cond
        .tensor
        .broadcast_as(s)?
        .where_cond(&a.tensor.broadcast_as(s)?, &b.tensor.broadcast_as(s)?))?;
    one(like(t, a))
}

/// Trilu: the upper (or, with `upper` 0, the lower) triangle of the last two axes, the
/// diagonal moved by k (input 1, default 0) — element (i, j) is kept where j − i ≥ k (upper) or
/// j − i ≤ k (lower) — and zeros elsewhere. Exporters write causal attention masks this way.
pub fn trilu(cx: &Cx) -> R<Vec<Value>> {
    let x = cx.input(0)?;
    let k = match cx.opt(1) {
        Some(v) => (v.to_i64s()?.first().copied())
            .ok_or_else(|| Error::Op("k is empty, not a scalar".into()))?,
        None => 0,
    };
    let upper = cx.int("upper", 1)? != 0;
    let shape = x.shape();
    let rank = shape.len();
    if rank < 2 {
        return Err(Error::Op(format!(
            "Trilu needs at least 2 axes, the input has {rank}"
        )));
    }
    if shape.contains(&0) {
        return one(x.clone());
    }
    let (rows, cols) = (shape[rank - 2], shape[rank - 1]);
    let keep: Vec<u8> = (0..rows * cols)
        .map(|i| {
            let offset = (i % cols) as i64 - (i / cols) as i64;
            u8::from(if upper { offset >= k } else { offset <= k })
        })
        .collect();
    let mask = c(Tensor::from_vec(keep, (rows, cols), &Device::Cpu))?;
    let zeros = c(x.tensor.zeros_like())?;
    let t = c(mask.broadcast_as(shape)?.where_cond(&x.tensor, &zeros))?;
    one(like(t, x))
}

pub fn cast(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?;
    let to = dtype_code(cx.int("to", 0)?)?;
    if to.packing().is_some() {
        return Err(Error::Op(format!("Cast to {to} is not supported")));
    }
    one(cast_value(v, to)?)
}

/// Converts a value to another element type as ONNX Cast does: floats truncate toward zero when
/// cast to integers, anything nonzero is true, integers wrap to narrower types.
pub fn cast_value(v: &Value, to: DType) -> R<Value> {
    let x = &v.tensor;
    let t = match to {
        DType::Bool => c(x.ne(&c(x.zeros_like())?))?,
        DType::U8 if v.dtype.is_float() || v.dtype == DType::Bool => c(x.to_dtype(CDType::U8))?,
        d if d.is_float() => c(x.to_dtype(carrier(d)))?,
        DType::I64 => c(x.to_dtype(CDType::I64))?,
        d => {
            let wide = c(x.to_dtype(CDType::I64)?.flatten_all()?.to_vec1::<i64>())?;
            let wrap = |x: i64| -> i64 {
                match d {
                    DType::I32 => x as i32 as i64,
                    DType::I16 => x as i16 as i64,
                    DType::I8 => x as i8 as i64,
                    DType::U32 => x as u32 as i64,
                    DType::U16 => x as u16 as i64,
                    _ => x,
                }
            };
            if d == DType::U8 {
                let b: Vec<u8> = wide.iter().map(|&x| x as u8).collect();
                c(Tensor::from_vec(b, x.dims(), x.device()))?
            } else {
                let w: Vec<i64> = wide.into_iter().map(wrap).collect();
                c(Tensor::from_vec(w, x.dims(), x.device()))?
            }
        }
    };
    Ok(Value::new(t, to))
}

pub fn identity(cx: &Cx) -> R<Vec<Value>> {
    one(cx.input(0)?.clone())
}

/// Inference-mode dropout: the input unchanged, and an all-true mask if asked for.
pub fn dropout(cx: &Cx) -> R<Vec<Value>> {
    let v = cx.input(0)?.clone();
    let mask = Value::new(c(v.tensor.ones_like()?.to_dtype(CDType::U8))?, DType::Bool);
    Ok(vec![v, mask])
}

/// Mod: the remainder with the divisor's sign (Python's `%`, integers only) or, with fmod=1, the
/// dividend's (C's `fmod`, the only one the spec defines for floats).
pub fn modulo(cx: &Cx) -> R<Vec<Value>> {
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    if a.dtype != b.dtype {
        return Err(Error::Op(format!(
            "operands have different types {} and {}",
            a.dtype, b.dtype
        )));
    }
    let fmod = cx.int("fmod", 0)? != 0;
    let (x, y) = broadcast_pair(&a.tensor, &b.tensor)?;
    let shape = x.dims().to_vec();
    let out = if a.dtype.is_float() {
        if !fmod {
            return Err("fmod=0 is not defined for floating-point operands".into());
        }
        let f64s = |t: &Tensor| c(t.to_dtype(CDType::F64)?.flatten_all()?.to_vec1::<f64>());
        let r: Vec<f64> = f64s(&x)?
            .iter()
            .zip(f64s(&y)?)
            .map(|(p, q)| p % q)
            .collect();
        c(Tensor::from_vec(r, shape, x.device())?.to_dtype(x.dtype()))?
    } else {
        let i64s = |t: &Tensor| c(t.to_dtype(CDType::I64)?.flatten_all()?.to_vec1::<i64>());
        let r = i64s(&x)?
            .iter()
            .zip(i64s(&y)?)
            .map(|(&p, q)| {
                let r = p
                    .checked_rem(q)
                    .ok_or("integer modulo by zero (or of the minimum by -1)")?;
                Ok(if !fmod && r != 0 && (r < 0) != (q < 0) {
                    r + q
                } else {
                    r
                })
            })
            .collect::<R<Vec<i64>>>()?;
        c(Tensor::from_vec(r, shape, x.device())?.to_dtype(x.dtype()))?
    };
    one(like(out, a))
}

#[cfg(test)]
mod tests {
    use super::{exp_f32, Clamp};
    use candle_core::{Device, Tensor, Var};

    /// The fused clamp gives candle's own bits, forward and backward, on the bounds, off them,
    /// at ±∞ and NaN: for HardSigmoid's affine clamp and for Clip with one or both bounds.
    #[test]
    fn clamp_matches_candle_forward_and_backward() {
        let mut x: Vec<f32> = (0..4000).map(|i| (i as f32 - 2000.0) / 333.0).collect();
        x.extend([
            -3.0,
            3.0,
            0.0,
            -0.0,
            6.0,
            1.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        let g: Vec<f32> = (0..x.len()).map(|i| ((i * 37) % 11) as f32 - 5.5).collect();
        let dev = Device::Cpu;
        let gt = Tensor::from_slice(&g, x.len(), &dev).unwrap();
        let ops = [
            Clamp {
                affine: Some((1.0 / 6.0, 0.5)),
                lo: Some(0.0),
                hi: Some(1.0),
            },
            Clamp {
                affine: None,
                lo: Some(0.0),
                hi: Some(6.0),
            },
            Clamp {
                affine: None,
                lo: None,
                hi: Some(1.0),
            },
            Clamp {
                affine: None,
                lo: Some(-0.5),
                hi: None,
            },
            Clamp {
                affine: Some((0.2, 0.5)),
                lo: None,
                hi: None,
            },
        ];
        let bits = |t: &Tensor| -> Vec<u32> {
            t.to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        for op in ops {
            let candle = |x: &Tensor| -> candle_core::Result<Tensor> {
                let mut t = match op.affine {
                    Some((a, b)) => x.affine(f64::from(a), f64::from(b))?,
                    None => x.clone(),
                };
                if let Some(lo) = op.lo {
                    t = t.maximum(lo)?;
                }
                if let Some(hi) = op.hi {
                    t = t.minimum(hi)?;
                }
                Ok(t)
            };
            let fused = |x: &Tensor| x.apply_op1(op);
            let mut got = Vec::new();
            for f in [
                &candle as &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
                &fused,
            ] {
                let v = Var::from_slice(&x, x.len(), &dev).unwrap();
                let y = f(v.as_tensor()).unwrap();
                let grads = y.mul(&gt).unwrap().sum_all().unwrap().backward().unwrap();
                got.push((bits(&y), bits(grads.get(v.as_tensor()).unwrap())));
            }
            assert!(got[0].0 == got[1].0, "forward differs");
            assert!(got[0].1 == got[1].1, "backward differs");
        }
    }

    /// Within 2 ulp of the f64 exponential over the whole clamped range, and NaN kept.
    #[test]
    fn exp_f32_is_within_two_ulp() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.3f32 + 175.6 * (i as f32 / 200_000.0);
            let exact = f64::from(x).exp();
            let got = f64::from(exp_f32(x));
            let ulp = f64::from(f32::EPSILON) * exact;
            worst = worst.max((got - exact).abs() / ulp);
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) < 1.2e-38 && exp_f32(1000.0) > 2.4e38);
    }
}
