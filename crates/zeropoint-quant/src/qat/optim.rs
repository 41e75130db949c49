//! The optimizers QAT trains with, on candle variables: SGD with momentum, Adam and AdamW
//! (decoupled weight decay), and the learning-rate schedule (linear warm-up, then cosine decay
//! to zero).

use candle_core::{Result, Tensor, Var};

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
        self.step += 1;
        let t = self.step as i32;
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            // A gradient carries the operations that made it: the moments kept across steps
            // must not, or each step's graph stays alive (19 MB a step on the MNIST CNN).
            let g = &g.detach();
            let lr = lr * slot.lr_factor;
            let p = slot.var.as_tensor();
            let next = match self.rule {
                Rule::Sgd { momentum } => {
                    slot.m = ((&slot.m * momentum)? + g)?;
                    (p - (&slot.m * lr)?)?
                }
                Rule::Adam | Rule::AdamW { .. } => {
                    let (b1, b2, eps) = (0.9, 0.999, 1e-8);
                    slot.m = ((&slot.m * b1)? + (g * (1.0 - b1))?)?;
                    slot.v = ((&slot.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                    let m_hat = (&slot.m / (1.0 - b1.powi(t)))?;
                    let v_hat = (&slot.v / (1.0 - b2.powi(t)))?;
                    let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
                    let decayed = match self.rule {
                        Rule::AdamW { decay } if slot.decays => (p * (1.0 - lr * decay))?,
                        _ => p.clone(),
                    };
                    (decayed - (update * lr)?)?
                }
            };
            slot.var.set(&next)?;
        }
        Ok(())
    }
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

    #[test]
    fn warm_up_then_cosine() {
        assert_eq!(learning_rate(1.0, 0, 100, 10), 0.1);
        assert_eq!(learning_rate(1.0, 9, 100, 10), 1.0);
        assert!((learning_rate(1.0, 10, 100, 10) - 1.0).abs() < 1e-12);
        assert!((learning_rate(1.0, 55, 100, 10) - 0.5).abs() < 1e-12);
        assert!(learning_rate(1.0, 100, 100, 10).abs() < 1e-12);
    }
}
