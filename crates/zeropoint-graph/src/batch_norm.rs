//! What an inference BatchNormalization says of its output, kept when canonicalization folds it
//! into the layer before it or writes it as a depthwise Conv ([`crate::scale_shift`]), for the
//! algorithms that use it: high-bias absorption, analytic bias correction, QAT with batch
//! statistics.

/// A folded BatchNormalization's output per channel is distributed with mean β and standard
/// deviation |γ| (it normalizes, then scales by γ and shifts by β). The value is now the output
/// of the layer it was folded into (or of the depthwise Conv it became).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormStats {
    pub value: String,
    pub beta: Vec<f64>,
    pub gamma: Vec<f64>,
    /// The running variance σ² and ε it normalized with (QAT with batch statistics starts
    /// from them).
    pub variance: Vec<f64>,
    pub epsilon: f64,
}
