//! Quantization-aware training (QAT) on ONNX graphs: the model runs in zeropoint's executor with
//! fake-quantized weights and activations whose scales (and activation zero-points) are learned
//! with the weights, starting from the PTQ result, and is exported as a QDQ model that computes
//! what was trained.

pub mod augment;
mod batch_norm;
pub mod checkpoint;
pub mod fake_quant;
mod hard_swish;
pub mod loss;
pub mod model;
pub mod optim;
pub mod options;
mod seeded;
pub mod train;
