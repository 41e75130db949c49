//! Fake quantization with learnable parameters, as candle tensor expressions whose gradients are
//! those of quantization-aware training:
//!
//! ```text
//! v  = x/s + round(z)                      codes before rounding
//! x̂  = s·(round(v) − round(z))             inside the grid, qmin ≤ round(v) ≤ qmax
//!    = s·(qmin − round(z)) or s·(qmax − round(z))   outside it (clipped)
//! ```
//!
//! - ∂x̂/∂x: 1 inside the grid, 0 outside (the straight-through estimator with clipping, white
//!   paper §5.1);
//! - ∂x̂/∂s: round(v) − v inside, qmin − z or qmax − z outside (LSQ, Esser et al. 2019), scaled
//!   by g = 1/√(N·Qp) with N the elements per scale and Qp the grid's positive extent;
//! - ∂x̂/∂z: 0 inside, −s outside (LSQ+, Bhalgat et al. 2020, for asymmetric activations).
//!
//! Rounding passes gradients straight through by the `x + (round(x) − x).detach()` trick, and the
//! clipping is a selection on the detached codes (candle's `clamp` would halve the gradient of a
//! value exactly on the grid's edge, which every ReLU zero is). candle rounds half away from
//! zero where ONNX rounds half to even: they differ only on exact ties.

use candle_core::{Result, Tensor};

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

/// `x` with the same value and its gradient multiplied by `g`.
fn scale_gradient(x: &Tensor, g: f64) -> Result<Tensor> {
    let scaled = x.affine(g, 0.0)?;
    (x - &scaled)?.detach().add(&scaled)
}

/// `x` rounded, with the gradient passing straight through.
fn round_ste(x: &Tensor) -> Result<Tensor> {
    (x.round()? - x)?.detach().add(x)
}

/// `x` fake-quantized with `q` (see the module's documentation for the gradients).
pub fn fake_quant(x: &Tensor, q: &Quantizer) -> Result<Tensor> {
    let s = scale_gradient(q.scale, q.grad_scale)?;
    let z = match q.zero_point {
        Some(z) => round_ste(z)?,
        None => s.zeros_like()?,
    };
    let v = x.broadcast_div(&s)?.broadcast_add(&z)?;
    let codes = v.round()?.detach();
    let below = codes.lt(q.qmin)?;
    let above = codes.gt(q.qmax)?;
    let inside = round_ste(&v)?.broadcast_sub(&z)?.broadcast_mul(&s)?;
    let edge = |limit: f64| {
        z.affine(-1.0, limit)?
            .broadcast_mul(&s)?
            .broadcast_as(x.shape())
    };
    let clipped_high = above.where_cond(&edge(q.qmax)?, &inside)?;
    below.where_cond(&edge(q.qmin)?, &clipped_high)
}

/// LSQ's gradient scale g = 1/√(N·Qp): N the elements sharing one scale, Qp the largest
/// positive code (for an unsigned grid, its top).
pub fn lsq_grad_scale(elements_per_scale: usize, qmax: f64) -> f64 {
    1.0 / ((elements_per_scale.max(1) as f64) * qmax.max(1.0)).sqrt()
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
        let x: Vec<f64> = vec![0.42, -0.81, 1.33, 2.9, -3.7, 0.05];
        let f = |s: f64| -> f64 {
            let st = Tensor::new(&[s], &dev).unwrap();
            let xt = Tensor::new(x.as_slice(), &dev).unwrap();
            let q = Quantizer {
                scale: &st,
                zero_point: None,
                qmin: -8.0,
                qmax: 7.0,
                grad_scale: 1.0,
            };
            let y: Vec<f64> = fake_quant(&xt, &q).unwrap().to_vec1().unwrap();
            y.iter().sum()
        };
        let s0 = 0.3;
        let sv = Var::new(&[s0], &dev).unwrap();
        let xt = Tensor::new(x.as_slice(), &dev).unwrap();
        let q = Quantizer {
            scale: sv.as_tensor(),
            zero_point: None,
            qmin: -8.0,
            qmax: 7.0,
            grad_scale: 1.0,
        };
        let grads = fake_quant(&xt, &q)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g: Vec<f64> = grads.get(sv.as_tensor()).unwrap().to_vec1().unwrap();
        // The codes are piecewise constant in s: the true derivative of Σ s·(code − z) is Σ
        // codes, which the LSQ gradient equals plus Σ (−x/s) of the inside values.
        let h = 1e-7;
        let numeric = (f(s0 + h) - f(s0 - h)) / (2.0 * h);
        let inside: f64 = x
            .iter()
            .filter(|&&v| (-8.0..=7.0).contains(&(v / s0).round()))
            .map(|&v| v / s0)
            .sum();
        assert!(
            (g[0] - (numeric - inside)).abs() < 1e-6,
            "{} vs {}",
            g[0],
            numeric - inside
        );
    }
}
