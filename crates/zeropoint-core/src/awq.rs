//! AWQ's per-input-channel scales (Lin et al. 2023, arXiv 2306.00978, §3.2), shared by the ONNX
//! weight-only path and the GGUF one:
//!
//! ```text
//! s = s_x^α / √(max s_x^α · min s_x^α)
//! ```
//!
//! with s_x the mean |x_k| of input channel k on calibration data and α searched on a grid. A
//! layer's weights are scaled up by s along their input channels and its input down by s, which
//! leaves the float layer unchanged and rounds the weights of busy channels more finely.

/// s = s_x^α normalized so that max·min = 1 (the reference implementation's normalization).
pub fn scales(abs_mean: &[f64], alpha: f64) -> Vec<f32> {
    let s: Vec<f64> = abs_mean.iter().map(|m| m.max(1e-8).powf(alpha)).collect();
    let (lo, hi) = s
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let norm = (lo * hi).sqrt();
    s.iter().map(|v| (v / norm) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_are_normalized_to_unit_geometric_range() {
        let s = scales(&[0.5, 2.0, 8.0], 0.5);
        let (lo, hi) = (s[0], s[2]);
        assert!((lo * hi - 1.0).abs() < 1e-6, "{s:?}");
        assert!((s[1] / s[0] - 2.0).abs() < 1e-6);
        assert_eq!(scales(&[0.5, 2.0, 8.0], 0.0), vec![1.0; 3]);
    }
}
