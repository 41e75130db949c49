//! How a model is quantized: the schemes of weights and activations, how their ranges are
//! estimated, and the presets that name the usual choices.

use zeropoint_core::observer::Method;
use zeropoint_core::{Granularity, Scheme};

/// How weights and activations are quantized and their ranges estimated.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Weight scheme; its granularity's axis is replaced by each layer's channel axis.
    pub weights: Scheme,
    pub weight_method: Method,
    /// Weight ranges fitted to each layer's output on this many calibration samples
    /// (`--weight-range output`, crate::output_ranges), starting from `weight_method`'s
    /// (min-max); None: the estimator's ranges stay.
    pub output_weight_ranges: Option<usize>,
    /// Activation scheme (per-tensor).
    pub activations: Scheme,
    pub activation_method: Method,
    /// Choose the activation range estimator on held-out calibration samples
    /// (`--activation-range auto`, crate::range_choice); `activation_method` is then MSE, whose
    /// histograms answer every candidate.
    pub choose_activation_range: bool,
    /// Samples per calibration batch, at most (`calibrate::batch_within_budget` may take fewer).
    pub batch: usize,
    /// Cross-layer equalization (and high-bias absorption) before quantizers are placed.
    pub equalize: Option<crate::equalize::Options>,
    /// SmoothQuant of the MatMul and Gemm inputs before quantizers are placed.
    pub smooth_quant: Option<SmoothQuant>,
    /// Bias correction after the ranges are set.
    pub bias_correction: Option<BiasCorrection>,
    /// AdaRound of the weights after the ranges are set (instead of bias correction).
    pub adaround: Option<AdaRoundOptions>,
    /// Activations quantized with another bit-width than `activations` has (mixed precision):
    /// value name, bits.
    pub activation_bits: Vec<(String, u32)>,
    /// Mixed precision to a target: the most sensitive quantizers raised to 16 bits or kept
    /// float until the simulated model meets it (crate::mixed_precision).
    pub target: Option<Target>,
    /// Lower the 8-bit weight codes that ONNX Runtime's int8 kernels on x86 CPUs without VNNI
    /// could overflow, pair by pair (crate::pair_limit).
    pub limit_pairs: bool,
    /// Quantize the logits of detection and segmentation heads too (placement keeps them float
    /// by default): for runtimes that want every convolution's output in integers.
    pub quantize_logits: bool,
    /// Activations stay float (`--activations float`): only weights are quantized, the export
    /// dequantizes them in front of float layers, and the calibration data serves AdaRound,
    /// bias correction and the report only. `activations` is then unused.
    pub float_activations: bool,
}

/// What `--target-sqnr` and `--target-agreement` ask of the simulated model, measured against
/// the float model on calibration samples.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Target {
    /// Output SQNR in dB (the mean over the graph's float outputs).
    pub sqnr_db: Option<f64>,
    /// Top-1 agreement with the float model (argmax over the first output's last axis), 0..=1.
    pub agreement: Option<f64>,
    /// Calibration samples the target is measured on.
    pub samples: usize,
}

/// How SmoothQuant's α is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SmoothAlpha {
    /// The same α for every layer (the paper's 0.5 for most models).
    Fixed(f64),
    /// Per layer input, the α of the grid with the least output error.
    Search,
}

/// SmoothQuant's options (crate::smooth_quant).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmoothQuant {
    pub alpha: SmoothAlpha,
}

impl Default for SmoothQuant {
    fn default() -> SmoothQuant {
        SmoothQuant {
            alpha: SmoothAlpha::Search,
        }
    }
}

/// Calibration samples `--weight-range output` fits each layer's range on, by default. With 16,
/// the ranges fitted the samples more than the data: on the MNIST CNN at W4A8 they scored 29.9 dB
/// on those samples and 25.7 on held-out ones; 64 give 26.7 held out, at 1.5× the time
/// (docs/algorithms.md).
pub const OUTPUT_RANGE_SAMPLES: usize = 64;

/// Calibration samples empirical bias correction measures on, by default.
pub const BIAS_CORRECTION_SAMPLES: usize = 16;

/// How biases are corrected for the mean shift quantized weights cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasCorrection {
    /// Measured on this many calibration samples (one batch).
    Empirical { samples: usize },
    /// (W̃ − W)·E[x], E[x] from the BatchNorm statistics before each layer (and the calibration
    /// data's mean for a layer reading the model's input), without running the model; with
    /// `measured_means`, the float model's mean on the calibration data where no BatchNorm
    /// gives E[x] (one float pass).
    Analytic { measured_means: bool },
}

impl Default for Settings {
    /// [`Preset::W8A8`]: int8 symmetric per-channel weights with min-max ranges, uint8
    /// asymmetric per-tensor activations with MSE ranges.
    fn default() -> Self {
        Settings::preset(Preset::W8A8)
    }
}

impl Settings {
    /// A preset's schemes with the default range estimators (min-max for weights, MSE for
    /// activations) and batch size.
    pub fn preset(preset: Preset) -> Settings {
        Settings {
            weights: preset.weights(),
            weight_method: Method::MinMax,
            output_weight_ranges: None,
            activations: preset.activations(),
            activation_method: Method::Mse { norm: 2.0 },
            choose_activation_range: false,
            batch: 32,
            equalize: None,
            smooth_quant: None,
            bias_correction: None,
            adaround: None,
            activation_bits: Vec::new(),
            target: None,
            limit_pairs: false,
            quantize_logits: false,
            float_activations: false,
        }
    }

    /// Whether a step after range setting changes the graph's weights or biases (AdaRound,
    /// bias correction, the pair limit): the float graph is then kept as the reference.
    pub fn changes_weights(&self) -> bool {
        self.adaround.is_some() || self.bias_correction.is_some() || self.limit_pairs
    }

    /// The scheme of activation `value`: the activation scheme, at the bit-width
    /// `activation_bits` gives it if any.
    pub fn activation_scheme(&self, value: &str) -> Scheme {
        match self.activation_bits.iter().find(|(v, _)| v == value) {
            Some(&(_, bits)) => Scheme {
                bits,
                ..self.activations
            },
            None => self.activations,
        }
    }
}

/// The usual schemes by name: weights symmetric signed per output channel, activations
/// asymmetric unsigned per tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// int8 weights, uint8 activations.
    W8A8,
    /// int4 weights (embedding tables keep int8), uint8 activations.
    W4A8,
    /// int8 weights, uint16 activations.
    W8A16,
    /// int4 weights, uint16 activations.
    W4A16,
}

impl Preset {
    fn bits(self) -> (u32, u32) {
        match self {
            Preset::W8A8 => (8, 8),
            Preset::W4A8 => (4, 8),
            Preset::W8A16 => (8, 16),
            Preset::W4A16 => (4, 16),
        }
    }

    /// The weight scheme: symmetric, signed, per output channel.
    pub fn weights(self) -> Scheme {
        Scheme::new(self.bits().0).per_axis(0)
    }

    /// The activation scheme: asymmetric, unsigned, per tensor.
    pub fn activations(self) -> Scheme {
        Scheme::asymmetric_unsigned(self.bits().1)
    }

    /// Every preset, in the order the CLI lists them.
    pub const ALL: [Preset; 4] = [Preset::W8A8, Preset::W4A8, Preset::W8A16, Preset::W4A16];

    /// The preset named `name` ("w8a8", ...; any case).
    pub fn parse(name: &str) -> Option<Preset> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// "w8a8", "w4a8", ...
    pub fn name(self) -> &'static str {
        match self {
            Preset::W8A8 => "w8a8",
            Preset::W4A8 => "w4a8",
            Preset::W8A16 => "w8a16",
            Preset::W4A16 => "w4a16",
        }
    }
}

/// AdaRound's knobs (defaults as in the paper and AIMET, but fewer iterations).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaRoundOptions {
    /// Adam steps per layer (and per group).
    pub iterations: usize,
    /// Calibration samples whose inputs each layer is fitted on.
    pub samples: usize,
    /// Columns (output positions) per step.
    pub batch: usize,
    /// Columns kept per layer, over all samples.
    pub max_columns: usize,
    pub learning_rate: f64,
    /// λ, the rounding regularizer's weight.
    pub regularization: f64,
    /// β from .0 to .1 after the warm start.
    pub beta: (f64, f64),
    /// Fraction of the iterations without the regularizer.
    pub warm_start: f64,
    /// Whether a layer's input x̃ is taken from the quantized model with its activation
    /// quantizers (as deployed), or with its weights quantized only (as AIMET does).
    pub quantized_inputs: bool,
    /// Whether a layer with a Relu or Clip fused into it is fitted on its outputs after them,
    /// bias included (the paper's eq. 25), or on its products W·x.
    pub through_activation: bool,
    /// Whether weights the fit leaves undecided are settled on the reconstruction error
    /// (crate::adaround::settle) instead of rounded at h = ½, with the loss the layer was
    /// fitted on (through its activation where `through_activation` applies).
    pub settle: bool,
}

impl Default for AdaRoundOptions {
    fn default() -> Self {
        AdaRoundOptions {
            iterations: 1000,
            samples: 16,
            batch: 256,
            max_columns: 8192,
            learning_rate: 1e-2,
            regularization: 0.01,
            beta: (20.0, 2.0),
            warm_start: 0.2,
            quantized_inputs: true,
            through_activation: false,
            settle: true,
        }
    }
}

/// "int8,sym,per-channel" → a scheme: the type (int8, uint8, int4, ...), then any of "sym" /
/// "asym", "per-tensor" / "per-channel" / "per-block=N" and "narrow". Weights default to
/// symmetric per output channel (axis 0; blocks along axis 1, the input), activations to
/// asymmetric per tensor. The error is a one-line message about the spec.
pub fn parse_scheme(spec: &str, weight: bool) -> std::result::Result<Scheme, String> {
    let mut parts = spec.split(',').map(str::trim);
    let ty = parts.next().unwrap_or("");
    let (signed, bits) = match ty.strip_prefix("uint") {
        Some(b) => (false, b),
        None => (true, ty.strip_prefix("int").unwrap_or("")),
    };
    let bits: u32 = bits
        .parse()
        .map_err(|_| format!("'{ty}' is not a type like int8, uint8, int4"))?;
    let mut scheme = Scheme::new(bits).signed(signed).symmetric(weight);
    if weight {
        scheme = scheme.per_axis(0);
    }
    for p in parts {
        scheme = match p {
            "sym" | "symmetric" => scheme.symmetric(true),
            "asym" | "asymmetric" => scheme.symmetric(false),
            "per-tensor" => scheme.granularity(Granularity::PerTensor),
            "per-channel" => scheme.per_axis(0),
            "narrow" => scheme.narrow(true),
            other => match other.strip_prefix("per-block=").map(str::parse::<usize>) {
                Some(Ok(block)) if block > 0 => scheme.per_block(1, block),
                _ => return Err(format!("unknown scheme option '{other}' in '{spec}'")),
            },
        };
    }
    scheme.validate().map_err(|e| format!("'{spec}': {e}"))?;
    Ok(scheme)
}

/// ONNX Runtime's `reduce_range`: 8-bit `weights` in 7 bits. Other widths are refused.
pub fn reduced_range(mut weights: Scheme) -> std::result::Result<Scheme, String> {
    if weights.bits != 8 {
        return Err(format!(
            "reduce-range makes 8-bit weights 7-bit; these weights are {}-bit",
            weights.bits
        ));
    }
    weights.bits = 7;
    Ok(weights)
}

/// The pair limit (crate::pair_limit) is for 8-bit signed symmetric weights only.
pub fn check_pair_limit(weights: &Scheme) -> std::result::Result<(), String> {
    if weights.bits == 8 && weights.signed && weights.symmetric {
        return Ok(());
    }
    let kind = if weights.signed && weights.symmetric {
        ""
    } else {
        ", not signed symmetric"
    };
    Err(format!(
        "limit-pairs is for 8-bit signed symmetric weights (int8,sym); these are {}-bit{kind}",
        weights.bits
    ))
}
