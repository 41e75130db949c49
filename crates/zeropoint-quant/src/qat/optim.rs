//! The optimizers QAT trains with, on candle variables: SGD with momentum, Adam and AdamW
//! (decoupled weight decay), and the learning-rate schedule (linear warm-up, then cosine decay
//! to zero).

use candle_core::{DType, Result, Tensor, Var};
use zeropoint_core::kernel::par_zeroed;
use zeropoint_engine::value::with_f32_slices;

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    Sgd {
        momentum: f64,
    },
    Adam,
    /// Adam with weight decay applied to the weights directly (Loshchilov & Hutter 2019).
    AdamW {
        decay: f64,
    },
}

/// One trained variable, its learning-rate factor, whether weight decay applies, and its
/// optimizer state.
struct Slot {
    var: Var,
    lr_factor: f64,
    decays: bool,
    m: Tensor,
    v: Tensor,
}

/// An optimizer over a set of variables.
pub struct Optimizer {
    rule: Rule,
    slots: Vec<Slot>,
    step: usize,
}

impl Optimizer {
    pub fn new(rule: Rule) -> Optimizer {
        Optimizer {
            rule,
            slots: Vec::new(),
            step: 0,
        }
    }

    /// Adds `var`, trained at `lr_factor` times the learning rate; `decays`: weight decay
    /// applies (weights, not scales).
    pub fn add(&mut self, var: &Var, lr_factor: f64, decays: bool) -> Result<()> {
        self.slots.push(Slot {
            var: var.clone(),
            lr_factor,
            decays,
            m: var.as_tensor().zeros_like()?,
            v: var.as_tensor().zeros_like()?,
        });
        Ok(())
    }

    /// The steps taken and each variable's moments, in the order they were added (what a
    /// checkpoint saves).
    pub fn state(&self) -> (usize, Vec<(&Tensor, &Tensor)>) {
        let moments = self.slots.iter().map(|s| (&s.m, &s.v)).collect();
        (self.step, moments)
    }

    /// Restores a [`Optimizer::state`]: `moments` in the order the variables were added, each
    /// shaped like its variable.
    pub fn set_state(&mut self, step: usize, moments: Vec<(Tensor, Tensor)>) -> Result<()> {
        if moments.len() != self.slots.len() {
            candle_core::bail!(
                "{} optimizer moments for {} variables",
                moments.len(),
                self.slots.len()
            );
        }
        for (slot, (m, v)) in self.slots.iter_mut().zip(moments) {
            slot.m = m.reshape(slot.var.shape())?;
            slot.v = v.reshape(slot.var.shape())?;
        }
        self.step = step;
        Ok(())
    }

    /// One update at learning rate `lr` from the gradients of the last backward pass; variables
    /// without a gradient are left alone.
    pub fn step(&mut self, grads: &candle_core::backprop::GradStore, lr: f64) -> Result<()> {
        use rayon::prelude::*;
        self.step += 1;
        let (rule, t) = (self.rule, self.step as i32);
        self.slots.par_iter_mut().try_for_each(|slot| {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                return Ok(());
            };
            // A gradient carries the operations that made it: the moments kept across steps
            // must not, or each step's graph stays alive (19 MB a step on the MNIST CNN).
            let g = &g.detach();
            let lr = lr * slot.lr_factor;
            let decay = match rule {
                Rule::AdamW { decay } if slot.decays => Some(decay),
                _ => None,
            };
            let p = slot.var.as_tensor();
            let f32s = [p, g, &slot.m, &slot.v]
                .iter()
                .all(|t| t.dtype() == DType::F32);
            let u = Update { rule, lr, decay, t };
            let next = match f32s {
                true => slot.fused(g, u)?,
                false => slot.tensors(g, u)?,
            };
            slot.var.set(&next)
        })
    }
}

/// What one step applies to every variable.
#[derive(Clone, Copy)]
struct Update {
    rule: Rule,
    lr: f64,
    /// AdamW's decay, where it applies to the variable.
    decay: Option<f64>,
    /// The step's number, from 1.
    t: i32,
}

/// Adam's β1, β2 and ε.
const ADAM: (f64, f64, f64) = (0.9, 0.999, 1e-8);

impl Slot {
    /// The update as candle tensor expressions (any float type); sets the moments and returns
    /// the variable's next value.
    fn tensors(&mut self, g: &Tensor, u: Update) -> Result<Tensor> {
        let p = self.var.as_tensor();
        Ok(match u.rule {
            Rule::Sgd { momentum } => {
                self.m = ((&self.m * momentum)? + g)?;
                (p - (&self.m * u.lr)?)?
            }
            Rule::Adam | Rule::AdamW { .. } => {
                let (b1, b2, eps) = ADAM;
                self.m = ((&self.m * b1)? + (g * (1.0 - b1))?)?;
                self.v = ((&self.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                let m_hat = (&self.m / (1.0 - b1.powi(u.t)))?;
                let v_hat = (&self.v / (1.0 - b2.powi(u.t)))?;
                let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
                let decayed = match u.decay {
                    Some(decay) => (p * (1.0 - u.lr * decay))?,
                    None => p.clone(),
                };
                (decayed - (update * u.lr)?)?
            }
        })
    }

    /// [`Slot::tensors`] for float32, in parallel passes over the elements with the same
    /// arithmetic, so the same bits: candle's `tensor · c` and `tensor / c` are its affine
    /// x·a + b with a and b cast to f32 (b = 0 keeps −0 from surviving), then the element-wise
    /// operators. The tensor form took a dozen single-threaded passes per variable, a sixth
    /// of the main thread's time in a PP-LCNet training step.
    fn fused(&mut self, g: &Tensor, u: Update) -> Result<Tensor> {
        let affine = |x: f32, a: f64| x * a as f32 + 0.0;
        let p = self.var.as_tensor();
        let (m, v, next) = with_f32_slices([p, g, &self.m, &self.v], |[p, g, m, v]| {
            let n = p.len();
            match u.rule {
                Rule::Sgd { momentum } => {
                    let m = fill(n, |i| affine(m[i], momentum) + g[i]);
                    let next = fill(n, |i| p[i] - affine(m[i], u.lr));
                    (m, None, next)
                }
                Rule::Adam | Rule::AdamW { .. } => {
                    let (b1, b2, eps) = ADAM;
                    let (c1, c2) = (1.0 / (1.0 - b1.powi(u.t)), 1.0 / (1.0 - b2.powi(u.t)));
                    let m = fill(n, |i| affine(m[i], b1) + affine(g[i], 1.0 - b1));
                    let v = fill(n, |i| affine(v[i], b2) + affine(g[i] * g[i], 1.0 - b2));
                    let next = fill(n, |i| {
                        let update = affine(m[i], c1) / (affine(v[i], c2).sqrt() + eps as f32);
                        let decayed = match u.decay {
                            Some(decay) => affine(p[i], 1.0 - u.lr * decay),
                            None => p[i],
                        };
                        decayed - affine(update, u.lr)
                    });
                    (m, Some(v), next)
                }
            }
        })?;
        let shape = p.shape();
        self.m = Tensor::from_vec(m, shape, p.device())?;
        if let Some(v) = v {
            self.v = Tensor::from_vec(v, shape, p.device())?;
        }
        Tensor::from_vec(next, shape, p.device())
    }
}

/// `f(i)` for i in 0..n, in parallel chunks.
fn fill(n: usize, f: impl Fn(usize) -> f32 + Sync + Send) -> Vec<f32> {
    const CHUNK: usize = 1 << 14;
    let tasks = n.div_ceil(CHUNK);
    let (out, _) = par_zeroed(
        (n, CHUNK, tasks),
        || (),
        |_, k, out| {
            for (i, o) in out.iter_mut().enumerate() {
                *o = f(k * CHUNK + i);
            }
        },
    );
    out
}

/// The learning rate at `step` of `total`: linear warm-up over `warmup` steps to `base`, then
/// cosine decay to 0.
pub fn learning_rate(base: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let done = (step - warmup) as f64 / span;
    base * 0.5 * (1.0 + (std::f64::consts::PI * done.min(1.0)).cos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Adam's first steps against the update written out by hand, and AdamW's decay.
    #[test]
    fn adam_and_adamw_follow_their_formulas() {
        let dev = Device::Cpu;
        for rule in [Rule::Adam, Rule::AdamW { decay: 0.1 }] {
            let x = Var::new(&[1.0f64, -2.0], &dev).unwrap();
            let mut opt = Optimizer::new(rule);
            opt.add(&x, 1.0, true).unwrap();
            let (mut m, mut v, mut p) = ([0f64; 2], [0f64; 2], [1.0f64, -2.0]);
            for t in 1..=3 {
                // loss Σ x³: gradient 3x².
                let grads = x
                    .as_tensor()
                    .powf(3.0)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                opt.step(&grads, 0.05).unwrap();
                for i in 0..2 {
                    let g = 3.0 * p[i] * p[i];
                    m[i] = 0.9 * m[i] + 0.1 * g;
                    v[i] = 0.999 * v[i] + 0.001 * g * g;
                    let mh = m[i] / (1.0 - 0.9f64.powi(t));
                    let vh = v[i] / (1.0 - 0.999f64.powi(t));
                    if let Rule::AdamW { decay } = rule {
                        p[i] *= 1.0 - 0.05 * decay;
                    }
                    p[i] -= 0.05 * mh / (vh.sqrt() + 1e-8);
                }
            }
            let got: Vec<f64> = x.as_tensor().to_vec1().unwrap();
            for i in 0..2 {
                assert!((got[i] - p[i]).abs() < 1e-12, "{rule:?}: {got:?} vs {p:?}");
            }
        }
    }

    /// The float32 update in one pass gives the tensor expressions' bits, for SGD, Adam and
    /// AdamW with and without decay, over steps whose gradients include ±0, tiny and huge
    /// values, across more than one parallel chunk.
    #[test]
    fn the_fused_update_is_the_tensor_update() {
        let dev = Device::Cpu;
        let n = 40_000;
        let values = |seed: f32| -> Vec<f32> {
            (0..n)
                .map(|i| match i % 97 {
                    0 => 0.0,
                    1 => -0.0,
                    2 => 1e-30,
                    3 => 3e7,
                    _ => ((i as f32) * 0.61 + seed).sin() * 0.3,
                })
                .collect()
        };
        let rules = [
            (Rule::Sgd { momentum: 0.9 }, false),
            (Rule::Adam, false),
            (Rule::AdamW { decay: 0.05 }, true),
            (Rule::AdamW { decay: 0.05 }, false),
        ];
        let bits = |t: &Tensor| -> Vec<u32> {
            let v: Vec<f32> = t.to_vec1().unwrap();
            v.iter().map(|v| v.to_bits()).collect()
        };
        for (rule, decays) in rules {
            let slot = || {
                let var = Var::from_vec(values(0.5), n, &dev).unwrap();
                let mut opt = Optimizer::new(rule);
                opt.add(&var, 0.5, decays).unwrap();
                opt.slots.pop().unwrap()
            };
            let (mut a, mut b) = (slot(), slot());
            for t in 1..=3 {
                let g = Tensor::from_vec(values(t as f32), n, &dev).unwrap();
                let decay = match rule {
                    Rule::AdamW { decay } if decays => Some(decay),
                    _ => None,
                };
                let u = Update {
                    rule,
                    lr: 0.01,
                    decay,
                    t,
                };
                let (next_a, next_b) = (a.fused(&g, u).unwrap(), b.tensors(&g, u).unwrap());
                assert_eq!(bits(&next_a), bits(&next_b), "{rule:?} step {t}");
                assert_eq!(bits(&a.m), bits(&b.m), "{rule:?} step {t}");
                assert_eq!(bits(&a.v), bits(&b.v), "{rule:?} step {t}");
                a.var.set(&next_a).unwrap();
                b.var.set(&next_b).unwrap();
            }
        }
    }

    #[test]
    fn warm_up_then_cosine() {
        assert_eq!(learning_rate(1.0, 0, 100, 10), 0.1);
        assert_eq!(learning_rate(1.0, 9, 100, 10), 1.0);
        assert!((learning_rate(1.0, 10, 100, 10) - 1.0).abs() < 1e-12);
        assert!((learning_rate(1.0, 55, 100, 10) - 0.5).abs() < 1e-12);
        assert!(learning_rate(1.0, 100, 100, 10).abs() < 1e-12);
    }
}
