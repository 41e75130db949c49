//! BatchNorm with batch statistics during QAT (`--batchnorm batch`; Jacob et al. 2018, §3.2, the
//! white paper's alternative to static folding, §5.2), with the statistics re-estimated on the
//! training data and folded into the layer at export.
//!
//! Canonicalization folded each BatchNormalization into the layer before it: W_f = W·k and
//! b_f = (b − μ)·k + β, with k = γ/√(σ²+ε) per output channel. Training keeps W_f as the
//! trained, fake-quantized weight, so that its codes are the ones the export writes, and runs
//! the layer with a zero bias: z = layer(x, Q(W_f)). t = z/k is the layer's own output before
//! the normalization, which is then normalized with the batch's mean and variance over every
//! axis but the channel one: y = γ·(t − μ_B)/√(σ_B²+ε) + β, with γ and β trained (the layer's
//! bias cancels in t − μ_B). The running statistics follow the batches with momentum 0.1 and
//! serve validation. Before export they are re-estimated: the mean and variance of t over all
//! the training samples, with the final weights, batches normalized by their own statistics
//! (as PyTorch re-estimates in training mode). The export is then the layer
//! y = r·z + β − μ·γ/√(σ²+ε), r = γ/(k·√(σ²+ε)): weight W_f·r with weight scale s·r, the same
//! codes, and that bias. Per-channel weight grids are needed for r to be a scale.

use candle_core::{Tensor, Var};
use zeropoint_core::Granularity;
use zeropoint_graph::graph::Graph;

use crate::calibrated::Calibrated;
use crate::error::{Error, Result};
use crate::qat::loss::{candle_error, f32s};
use crate::qat::model::var_of;

/// The running statistics' momentum, PyTorch's default.
const MOMENTUM: f64 = 0.1;

/// How a forward pass normalizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Batch statistics, reported so the running ones can follow them (a training step).
    Train,
    /// The running statistics (validation).
    Infer,
    /// Batch statistics, reported for the re-estimation; nothing is updated.
    Estimate,
}

/// One batch's statistics of t at one normalization, per channel: Σt, Σt² and the count.
pub(crate) struct Moments {
    pub(crate) norm: usize,
    sum: Vec<f64>,
    squares: Vec<f64>,
    count: usize,
}

/// A folded BatchNormalization that training normalizes with batch statistics.
pub(crate) struct KeptNorm {
    /// The layer's output, once the BatchNormalization's.
    pub(crate) value: String,
    pub(crate) weight: String,
    /// The folded bias, fed as zeros while training.
    pub(crate) bias: String,
    /// The weight's output-channel axis.
    axis: usize,
    /// k of the fold, per channel.
    k: Tensor,
    /// γ's sign at the start; training keeps it.
    sign: Vec<f32>,
    channels: usize,
    pub(crate) gamma: Var,
    pub(crate) beta: Var,
    pub(crate) mean: Var,
    pub(crate) var: Var,
    eps: f64,
}

/// The folded BatchNormalizations of `c`'s graph, with their running statistics recovered
/// from the folded layer (so that CLE's rescaling and bias changes are included).
pub(crate) fn kept_norms(c: &Calibrated) -> Result<Vec<KeptNorm>> {
    let g = &c.graph;
    let producers = g.producers();
    let mut out = Vec::new();
    for s in &c.canonical.batch_norm_stats {
        // A BatchNormalization inside a subgraph is not trained with batch statistics.
        let Some(&p) = producers.get(s.value.as_str()) else {
            continue;
        };
        let node = &g.nodes[p];
        let (Some(weight), Some(bias)) = (node.inputs.get(1), node.inputs.get(2)) else {
            continue;
        };
        let axis = zeropoint_graph::canonicalize::weight_output_axis(node);
        check_grid(c, weight, axis)?;
        out.push(kept(g, s, (weight, bias), axis)?);
    }
    Ok(out)
}

/// The export rescales each output channel's grid: the weight must have one per channel.
fn check_grid(c: &Calibrated, weight: &str, axis: usize) -> Result<()> {
    let Some(w) = c.params.weights.iter().find(|w| w.name == weight) else {
        return Ok(());
    };
    match w.qparams.granularity {
        Granularity::PerAxis { axis: a } if a == axis => Ok(()),
        _ => Err(Error::new(
            &c.graph.source,
            format!(
                "--batchnorm batch: weight '{weight}' needs a per-channel grid along its output channels \
                 (the export folds the statistics into each channel's scale); use per-channel weights"
            ),
        )),
    }
}

fn kept(
    g: &Graph,
    s: &zeropoint_graph::canonicalize::BatchNormStats,
    (weight, bias): (&String, &String),
    axis: usize,
) -> Result<KeptNorm> {
    let b = g
        .initializer(bias)
        .ok_or_else(|| Error::new(&g.source, format!("the folded bias '{bias}' is missing")))?
        .to_f64s();
    let n = s.gamma.len();
    if b.len() != n || s.beta.len() != n || s.variance.len() != n {
        return Err(Error::new(
            &g.source,
            format!(
                "the BatchNormalization before '{}' has {n} channels, its layer's bias {}",
                s.value,
                b.len()
            ),
        ));
    }
    let mut gamma = s.gamma.clone();
    for v in &mut gamma {
        if v.abs() < 1e-6 {
            *v = 1e-6f64.copysign(*v);
        }
    }
    let sd: Vec<f64> = s.variance.iter().map(|v| (v + s.epsilon).sqrt()).collect();
    let k: Vec<f32> = (0..n).map(|c| (gamma[c] / sd[c]) as f32).collect();
    // b_f = β − μ·γ/√(σ²+ε): the mean of t that keeps the folded layer's output.
    let mean: Vec<f32> = (0..n)
        .map(|c| ((s.beta[c] - b[c]) * sd[c] / gamma[c]) as f32)
        .collect();
    let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    Ok(KeptNorm {
        value: s.value.clone(),
        weight: weight.clone(),
        bias: bias.clone(),
        axis,
        k: Tensor::from_vec(k, n, &candle_core::Device::Cpu).map_err(candle_error)?,
        sign: gamma.iter().map(|g| g.signum() as f32).collect(),
        channels: n,
        gamma: var_of(&f(&gamma), &[n])?,
        beta: var_of(&f(&s.beta), &[n])?,
        mean: var_of(&mean, &[n])?,
        var: var_of(&f(&s.variance), &[n])?,
        eps: s.epsilon,
    })
}

impl KeptNorm {
    /// The normalized output of the layer's product `z` (its bias zero), [N, C, ...], and in
    /// `Train` and `Estimate` modes the batch's moments of t.
    pub(crate) fn apply(&self, z: &Tensor, mode: Mode) -> Result<(Tensor, Option<Moments>)> {
        self.normalized(z, mode).map_err(|e| {
            Error::Environment(format!("training: BatchNorm at '{}': {e}", self.value))
        })
    }

    fn normalized(&self, z: &Tensor, mode: Mode) -> candle_core::Result<(Tensor, Option<Moments>)> {
        let dims = z.dims();
        if dims.len() < 2 || dims[1] != self.channels {
            candle_core::bail!(
                "output {dims:?} has not {} channels on axis 1",
                self.channels
            );
        }
        let mut shape = vec![1; dims.len()];
        shape[1] = self.channels;
        let b = |t: &Tensor| t.reshape(shape.as_slice());
        let t = z.broadcast_div(&b(&self.k)?)?;
        let (mean, var, moments) = match mode {
            Mode::Infer => (
                self.mean.as_tensor().clone(),
                self.var.as_tensor().clone(),
                None,
            ),
            Mode::Train | Mode::Estimate => {
                let rows = t.transpose(0, 1)?.flatten_from(1)?;
                if rows.dim(1)? < 2 {
                    candle_core::bail!(
                        "batch statistics need more than one value per channel: raise --batch-size"
                    );
                }
                let mean = rows.mean_keepdim(1)?;
                let var = rows.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
                let m = moments(&rows.detach())?;
                (mean.flatten_all()?, var.flatten_all()?, Some(m))
            }
        };
        let y = t
            .broadcast_sub(&b(&mean)?)?
            .broadcast_div(&b(&(var + self.eps)?.sqrt()?)?)?
            .broadcast_mul(&b(self.gamma.as_tensor())?)?
            .broadcast_add(&b(self.beta.as_tensor())?)?;
        Ok((y, moments))
    }

    /// The running statistics one momentum step towards a training batch's (unbiased variance,
    /// as PyTorch keeps it).
    pub(crate) fn follow(&self, m: &Moments) -> Result<()> {
        let (mean, var) = m.mean_var(true);
        let step = |v: &Var, batch: &[f32]| -> Result<()> {
            let old = f32s(v.as_tensor())?;
            let new: Vec<f32> = old
                .iter()
                .zip(batch)
                .map(|(o, b)| ((1.0 - MOMENTUM) * f64::from(*o) + MOMENTUM * f64::from(*b)) as f32)
                .collect();
            self.set_channels(v, new).map_err(candle_error)
        };
        step(&self.mean, &mean)?;
        step(&self.var, &var)
    }

    /// Sets the running statistics to the population's of the summed `m`.
    pub(crate) fn set_estimate(&self, m: &Moments) -> Result<()> {
        let (mean, var) = m.mean_var(false);
        self.set_channels(&self.mean, mean).map_err(candle_error)?;
        self.set_channels(&self.var, var).map_err(candle_error)
    }

    /// Sets one of the per-channel variables (γ, β, the running statistics) to `values`.
    fn set_channels(&self, var: &Var, values: Vec<f32>) -> candle_core::Result<()> {
        var.set(&Tensor::from_vec(
            values,
            self.channels,
            &candle_core::Device::Cpu,
        )?)
    }

    /// γ keeps its sign and stays away from zero, so that the export's scales stay positive.
    pub(crate) fn keep_in_range(&self) -> candle_core::Result<()> {
        let g = self.gamma.as_tensor().to_vec1::<f32>()?;
        let kept: Vec<f32> = g
            .iter()
            .zip(&self.sign)
            .map(|(v, s)| s * (v * s).max(1e-6))
            .collect();
        self.set_channels(&self.gamma, kept)
    }

    /// The export's fold: per channel, the factor r on the weight and its scale, and the bias.
    pub(crate) fn fold(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let (g, b, m, v, k) = (
            f32s(self.gamma.as_tensor())?,
            f32s(self.beta.as_tensor())?,
            f32s(self.mean.as_tensor())?,
            f32s(self.var.as_tensor())?,
            f32s(&self.k)?,
        );
        let mut r = Vec::with_capacity(self.channels);
        let mut bias = Vec::with_capacity(self.channels);
        for c in 0..self.channels {
            let a = f64::from(g[c]) / (f64::from(v[c]) + self.eps).sqrt();
            r.push((a / f64::from(k[c])) as f32);
            bias.push((f64::from(b[c]) - f64::from(m[c]) * a) as f32);
        }
        Ok((r, bias))
    }

    /// `values` of the weight (shaped `shape`) times r along its output-channel axis.
    pub(crate) fn scaled_weight(&self, values: &[f32], shape: &[usize], r: &[f32]) -> Vec<f32> {
        let inner: usize = shape[self.axis + 1..].iter().product();
        values
            .iter()
            .enumerate()
            .map(|(i, x)| x * r[(i / inner.max(1)) % self.channels])
            .collect()
    }

    pub(crate) fn zeros(&self) -> Result<Tensor> {
        Tensor::zeros(
            self.channels,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .map_err(candle_error)
    }
}

/// Σt, Σt² per channel of `rows` [C, M].
fn moments(rows: &Tensor) -> candle_core::Result<Moments> {
    let (c, m) = rows.dims2()?;
    let v = rows.flatten_all()?.to_vec1::<f32>()?;
    let mut sum = vec![0f64; c];
    let mut squares = vec![0f64; c];
    for (ch, row) in v.chunks(m.max(1)).enumerate() {
        for &x in row {
            sum[ch] += f64::from(x);
            squares[ch] += f64::from(x) * f64::from(x);
        }
    }
    Ok(Moments {
        norm: 0,
        sum,
        squares,
        count: m,
    })
}

impl Moments {
    /// These moments, marked as normalization `norm`'s.
    pub(crate) fn of(self, norm: usize) -> Moments {
        Moments { norm, ..self }
    }

    /// Adds another batch's moments of the same normalization.
    pub(crate) fn add(&mut self, other: &Moments) {
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.squares.iter_mut().zip(&other.squares) {
            *a += b;
        }
        self.count += other.count;
    }

    /// Mean and variance per channel (unbiased when asked).
    fn mean_var(&self, unbiased: bool) -> (Vec<f32>, Vec<f32>) {
        let n = self.count.max(1) as f64;
        let bessel = if unbiased && self.count > 1 {
            n / (n - 1.0)
        } else {
            1.0
        };
        self.sum
            .iter()
            .zip(&self.squares)
            .map(|(s, q)| {
                let mean = s / n;
                (
                    (mean) as f32,
                    (((q / n) - mean * mean).max(0.0) * bessel) as f32,
                )
            })
            .unzip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(channels: usize) -> KeptNorm {
        let v = |x: Vec<f32>| var_of(&x, &[channels]).unwrap();
        KeptNorm {
            value: "y".into(),
            weight: "w".into(),
            bias: "b".into(),
            axis: 0,
            k: Tensor::new(&[2.0f32, -0.5][..channels], &candle_core::Device::Cpu).unwrap(),
            sign: vec![1.0, -1.0],
            channels,
            gamma: v(vec![1.5, -0.8]),
            beta: v(vec![0.3, -0.2]),
            mean: v(vec![0.1, 0.4]),
            var: v(vec![2.0, 0.5]),
            eps: 1e-3,
        }
    }

    /// Batch normalization written out in f64 for an [N, C, L] input.
    #[test]
    fn train_mode_normalizes_with_the_batch_statistics() {
        let n = norm(2);
        let z: Vec<f32> = (0..2 * 2 * 3)
            .map(|i| ((i * 7 % 11) as f32) * 0.3 - 1.0)
            .collect();
        let zt = Tensor::from_vec(z.clone(), (2, 2, 3), &candle_core::Device::Cpu).unwrap();
        let (y, m) = n.apply(&zt, Mode::Train).unwrap();
        let y = f32s(&y).unwrap();
        let (k, gamma, beta) = ([2.0f64, -0.5], [1.5f64, -0.8], [0.3f64, -0.2]);
        for c in 0..2 {
            let t: Vec<f64> = (0..2)
                .flat_map(|b| (0..3).map(move |l| (b, l)))
                .map(|(b, l)| f64::from(z[b * 6 + c * 3 + l]) / k[c])
                .collect();
            let mean = t.iter().sum::<f64>() / 6.0;
            let var = t.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 6.0;
            for (i, (b, l)) in (0..2).flat_map(|b| (0..3).map(move |l| (b, l))).enumerate() {
                let want = gamma[c] * (t[i] - mean) / (var + 1e-3).sqrt() + beta[c];
                let got = f64::from(y[b * 6 + c * 3 + l]);
                assert!((got - want).abs() < 1e-4, "channel {c}: {got} vs {want}");
            }
        }
        // The running statistics move a tenth of the way to the batch's (unbiased variance).
        let m = m.unwrap();
        n.follow(&m).unwrap();
        let (mean, var) = m.mean_var(true);
        let rm = f32s(n.mean.as_tensor()).unwrap();
        let rv = f32s(n.var.as_tensor()).unwrap();
        assert!((rm[0] - (0.9 * 0.1 + 0.1 * mean[0])).abs() < 1e-6);
        assert!((rv[1] - (0.9 * 0.5 + 0.1 * var[1])).abs() < 1e-6);
    }

    /// The export's fold computes what inference mode computes: r·z + bias.
    #[test]
    fn the_fold_equals_inference_mode() {
        let n = norm(2);
        let z = Tensor::new(&[[1.0f32, -2.0], [0.5, 3.0]], &candle_core::Device::Cpu).unwrap();
        let (y, m) = n.apply(&z, Mode::Infer).unwrap();
        assert!(m.is_none());
        let y = f32s(&y).unwrap();
        let (r, bias) = n.fold().unwrap();
        let z = [1.0f32, -2.0, 0.5, 3.0];
        for i in 0..4 {
            let c = i % 2;
            assert!((y[i] - (r[c] * z[i] + bias[c])).abs() < 1e-5, "{i}");
        }
        assert!(
            r.iter().all(|&r| r > 0.0),
            "γ and k share their sign: r > 0"
        );
        let w = n.scaled_weight(&[1.0, 2.0, 3.0, 4.0], &[2, 2], &r);
        assert_eq!(w, vec![r[0], 2.0 * r[0], 3.0 * r[1], 4.0 * r[1]]);
    }

    #[test]
    fn population_moments_add_up() {
        let rows = Tensor::new(
            &[[1.0f32, 2.0, 3.0], [0.0, 0.0, 6.0]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let mut a = moments(&rows.narrow(1, 0, 2).unwrap().contiguous().unwrap()).unwrap();
        a.add(&moments(&rows.narrow(1, 2, 1).unwrap().contiguous().unwrap()).unwrap());
        let (mean, var) = a.mean_var(false);
        assert_eq!(mean, vec![2.0, 2.0]);
        assert!((var[0] - 2.0 / 3.0).abs() < 1e-6 && (var[1] - 8.0).abs() < 1e-6);
    }
}
