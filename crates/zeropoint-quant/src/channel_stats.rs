//! The float model's statistics per channel of chosen values on calibration data: mean,
//! standard deviation and minimum, from one float pass with every sample summed in order.
//!
//! Where a graph no longer has a BatchNorm to say how a layer's output is distributed (a model
//! exported with its BatchNorms folded), these are what the data says instead: analytic bias
//! correction takes E[x] from them (`--bias-correction analytic-means`), high-bias absorption
//! takes its c from them (`equalize`).

use std::collections::HashMap;

use zeropoint_core::kernel::first_non_finite;
use zeropoint_engine::Executor;
use zeropoint_graph::Graph;
use zeropoint_onnx::DType;

use crate::dataset::Dataset;
use crate::error::Result;

/// Sums per channel of one value over every sample and position.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    /// The elements summed per channel.
    pub count: f64,
    pub sum: Vec<f64>,
    pub sum_of_squares: Vec<f64>,
    pub min: Vec<f64>,
}

impl ChannelStats {
    pub(crate) fn new(channels: usize) -> ChannelStats {
        ChannelStats {
            count: 0.0,
            sum: vec![0.0; channels],
            sum_of_squares: vec![0.0; channels],
            min: vec![f64::INFINITY; channels],
        }
    }

    pub fn mean(&self) -> Vec<f64> {
        self.sum.iter().map(|s| s / self.count).collect()
    }

    /// The population standard deviation per channel.
    pub fn std(&self) -> Vec<f64> {
        (self.sum.iter().zip(&self.sum_of_squares))
            .map(|(s, q)| {
                let mean = s / self.count;
                (q / self.count - mean * mean).max(0.0).sqrt()
            })
            .collect()
    }

    /// Adds each element of `x` (row-major, of `shape`) to its channel's sums: its index along
    /// `axis`.
    pub(crate) fn add(&mut self, x: &[f32], shape: &[usize], axis: usize) {
        let inner: usize = shape[axis + 1..].iter().product();
        let channels = shape[axis];
        for (i, &v) in x.iter().enumerate() {
            let c = (i / inner.max(1)) % channels;
            let v = f64::from(v);
            self.sum[c] += v;
            self.sum_of_squares[c] += v * v;
            self.min[c] = self.min[c].min(v);
        }
        self.count += (x.len() / channels) as f64;
    }
}

/// The float model's [`ChannelStats`] of each value of `values` on `data`, in order, one sample
/// at a time (or the batch the model's inputs fix). With each value its channel axis, negative counting from the last (ONNX's
/// convention: -1 for a MatMul's output). Samples whose value has another channel count than
/// the first's, and empty ones, are left out; a value never computed is absent. A NaN or ±Inf
/// among the values stops the pass: the data is wrong.
pub fn measure(
    graph: &Graph,
    values: &HashMap<String, i64>,
    mut data: Dataset,
) -> Result<HashMap<String, ChannelStats>> {
    let exec = Executor::new(graph)?;
    let mut stats: HashMap<String, ChannelStats> = HashMap::new();
    let unit = crate::dataset::unit_batch(&graph.inputs);
    let inputs: Vec<&str> = graph.inputs.iter().map(|i| i.name.as_str()).collect();
    while let Some(batch) = data.next_batch(unit)? {
        exec.run_with(batch, &mut |name, v| {
            // The data itself: a ReLU would turn a NaN into 0 before any measured value.
            if inputs.contains(&name) && v.dtype == DType::F32 {
                if let Some(bad) = v.with_f32s(first_non_finite)? {
                    return Err(format!("non-finite value ({bad}): check the data").into());
                }
            }
            let Some(&axis) = values.get(name) else {
                return Ok(v);
            };
            let shape = v.shape().to_vec();
            let rank = shape.len() as i64;
            let axis = if axis < 0 { axis + rank } else { axis };
            if !(0..rank).contains(&axis) || shape.contains(&0) {
                return Ok(v);
            }
            let axis = axis as usize;
            let s =
                (stats.entry(name.to_string())).or_insert_with(|| ChannelStats::new(shape[axis]));
            if s.sum.len() != shape[axis] {
                return Ok(v);
            }
            let bad = v.with_f32s(|x| {
                let bad = first_non_finite(x);
                if bad.is_none() {
                    s.add(x, &shape, axis);
                }
                bad
            })?;
            match bad {
                Some(bad) => Err(format!("non-finite value ({bad}): check the data").into()),
                None => Ok(v),
            }
        })?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::ChannelStats;

    #[test]
    fn sums_follow_the_channel_axis() {
        // [2, 3, 2]: channel axis 1, two positions per channel and sample.
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut s = ChannelStats::new(3);
        s.add(&x, &[2, 3, 2], 1);
        assert_eq!(s.count, 4.0);
        // Channel 0 holds 0, 1, 6, 7.
        assert_eq!(s.mean()[0], 3.5);
        assert_eq!(s.min, vec![0.0, 2.0, 4.0]);
        let var: f64 = [0.0f64, 1.0, 6.0, 7.0]
            .iter()
            .map(|v| (v - 3.5).powi(2))
            .sum::<f64>()
            / 4.0;
        assert!((s.std()[0] - var.sqrt()).abs() < 1e-12);
        // The last axis as the channel axis (a MatMul's output).
        let mut s = ChannelStats::new(2);
        s.add(&x, &[2, 3, 2], 2);
        assert_eq!(s.count, 6.0);
        assert_eq!(s.mean(), vec![5.0, 6.0]);
    }
}
