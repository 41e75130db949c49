//! The flags that choose how a model is quantized (presets, schemes, range estimators, the PTQ
//! algorithms, mixed precision), shared by `quantize`, `analyze` and `train`.

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, ValueEnum};
use zeropoint_core::{Granularity, Scheme};
use zeropoint_quant::ptq::Options;
use zeropoint_quant::settings::{
    check_pair_limit, reduced_range, BiasCorrection, Preset, Settings, Target,
};

use crate::data_args::DataArgs;
use crate::range_args::RangeMethod;

/// The presets by name.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresetArg {
    /// int8 weights, uint8 activations.
    W8a8,
    /// int4 weights (embedding tables int8), uint8 activations.
    W4a8,
    /// int8 weights, uint16 activations.
    W8a16,
    /// int4 weights, uint16 activations.
    W4a16,
}

impl PresetArg {
    fn preset(self) -> Preset {
        match self {
            PresetArg::W8a8 => Preset::W8A8,
            PresetArg::W4a8 => Preset::W4A8,
            PresetArg::W8a16 => Preset::W8A16,
            PresetArg::W4a16 => Preset::W4A16,
        }
    }
}

/// `--recipe`'s variants.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipe {
    /// The white paper's standard PTQ pipeline.
    Standard,
}

/// `--bias-correction`'s variants.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasCorrectionArg {
    Empirical,
    Analytic,
    AnalyticMeans,
}

/// `--adaround-inputs`' variants.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdaRoundInputs {
    Quantized,
    WeightsOnly,
}

/// `--adaround-loss`' variants.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdaRoundLoss {
    Activation,
    Linear,
}

/// `--weight-range`: an estimator, or ranges fitted to the layers' outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightRange {
    Output,
    Method(RangeMethod),
}

impl WeightRange {
    /// The estimator, for the modes that take only estimators (`mode` names the mode).
    pub fn estimator(range: Option<WeightRange>, mode: &str) -> Result<RangeMethod> {
        match range {
            None => Ok(RangeMethod::Minmax),
            Some(WeightRange::Method(m)) => Ok(m),
            Some(WeightRange::Output) => bail!(
                "--weight-range output fits weight ranges on the layers' quantized inputs, which {mode} does not have: static quantization only"
            ),
        }
    }
}

fn parse_weight_range(s: &str) -> std::result::Result<WeightRange, String> {
    if s.eq_ignore_ascii_case("output") {
        return Ok(WeightRange::Output);
    }
    RangeMethod::from_str(s, true).map(WeightRange::Method)
}

/// `--activation-range`: an estimator, or the choice among them on held-out samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationRange {
    Auto,
    Method(RangeMethod),
}

impl ActivationRange {
    /// The observers' estimator: MSE for `auto`, whose histograms answer every candidate.
    pub fn method(self) -> zeropoint_core::observer::Method {
        match self {
            ActivationRange::Auto => RangeMethod::Mse.method(),
            ActivationRange::Method(m) => m.method(),
        }
    }
}

fn parse_activation_range(s: &str) -> std::result::Result<ActivationRange, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(ActivationRange::Auto);
    }
    RangeMethod::from_str(s, true).map(ActivationRange::Method)
}

/// The choices of a quantization run, shared with the main job.
#[derive(ClapArgs, Debug, Clone)]
pub struct QuantArgs {
    /// The schemes of weights and activations.
    #[arg(long, value_enum, default_value = "w8a8")]
    pub preset: PresetArg,
    /// Weight scheme, overriding the preset: int8|int4|..., then ",sym"/",asym" and
    /// ",per-channel"/",per-tensor"/",per-block=N", e.g. "int8,sym,per-channel".
    #[arg(long)]
    pub weights: Option<String>,
    /// Activation scheme, overriding the preset: uint8|int8|uint16|int16, then ",asym"/",sym";
    /// or "float": weights only, for any layer (Conv included), activations and biases float,
    /// e.g. with --weights int4 --adaround.
    #[arg(long)]
    pub activations: Option<String>,
    /// 7-bit weights instead of 8 (ONNX Runtime's reduce_range). ONNX Runtime's int8 Conv and
    /// MatMul kernels on x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) add pairs
    /// of uint8·int8 products in 16 bits, which 8-bit weights can overflow; 7-bit ones cannot.
    #[arg(long, conflicts_with = "limit_pairs")]
    pub reduce_range: bool,
    /// 8-bit weights that ONNX Runtime's int8 kernels on x86 CPUs without VNNI cannot overflow
    /// either: each channel's scale grows only as far as its largest same-sign pair of weights
    /// that the kernels add in 16 bits needs (|q_a + q_b| ≤ 128), at most to the 7-bit step of
    /// --reduce-range (docs/ptq.md). Static quantization only.
    #[arg(long)]
    pub limit_pairs: bool,
    /// Range estimator for weights: minmax, ema, percentile, abs-percentile, mse, entropy,
    /// cross-entropy, or output: each layer's range clipped to the fraction of min-max that
    /// best keeps the layer's output, ‖Ŵx̃ − Wx‖² on --weight-range-samples calibration samples
    /// with every earlier layer quantized (one per tensor or per output channel; static
    /// quantization) [default: minmax; mse with --recipe standard].
    #[arg(long, value_parser = parse_weight_range, value_name = "METHOD")]
    pub weight_range: Option<WeightRange>,
    /// Calibration samples --weight-range output fits on (their activations wait on disk between
    /// layers, as AdaRound's do).
    #[arg(long, default_value_t = zeropoint_quant::settings::OUTPUT_RANGE_SAMPLES)]
    pub weight_range_samples: usize,
    /// Range estimator for activations: minmax, ema, percentile, abs-percentile, mse, entropy,
    /// cross-entropy, or auto: MSE, min-max or percentile, whichever gives the simulated model
    /// the best output on the last quarter of the calibration samples, fitted on the rest (MSE
    /// unless another is more than 1 dB better; at least 4 samples).
    #[arg(long, default_value = "mse", value_parser = parse_activation_range, value_name = "METHOD")]
    pub activation_range: ActivationRange,
    /// Keep these nodes float: node names or operator types (repeatable).
    #[arg(long, value_name = "NAME|OP")]
    pub exclude: Vec<String>,
    /// Quantize the logits of detection and segmentation heads too: a convolution whose output
    /// reaches only Sigmoid, Softmax or the graph's outputs stays float by default, because a
    /// range fitted to the bulk of its map clips the few large values that are the detections.
    /// For runtimes that want every convolution's output in integers.
    #[arg(long)]
    pub quantize_logits: bool,
    /// Use at most this many calibration samples.
    #[arg(long)]
    pub samples: Option<usize>,
    /// Samples per calibration batch and thread, at most: fewer where a batch's activations
    /// would pass 32 MB, one for a model whose inputs declare a batch of one [default: 32; with
    /// --mode weight-only, token ids go in batches of about 256 positions: one 256-token window,
    /// four 65-token sentences]
    #[arg(long)]
    pub batch: Option<usize>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Samples on which the simulated model is compared with the float one, layer by layer (0:
    /// no report) [default: a quarter of the calibration samples, at least 4, at most 8].
    #[arg(long)]
    pub report_samples: Option<usize>,
    /// The white paper's standard PTQ pipeline (Nagel et al. 2021, §4.7, Fig. 9): BatchNorm
    /// folding, cross-layer equalization with high-bias absorption where it applies, MSE weight
    /// ranges, AdaRound, MSE activation ranges: --cle --weight-range mse --adaround.
    /// --weight-range and --adaround=ITERS override; --bias-correction replaces AdaRound.
    #[arg(long, value_enum)]
    pub recipe: Option<Recipe>,
    /// Cross-layer equalization before quantizing (Nagel et al. 2019): rescales the channels of
    /// consecutive layers so that per-tensor weight grids fit every channel, and absorbs high
    /// biases into the next layer where BatchNorm statistics or the calibration data say how
    /// high (docs/algorithms.md).
    #[arg(long)]
    pub cle: bool,
    /// SmoothQuant before quantizing (Xiao et al. 2022): moves the outlier channels of MatMul
    /// and Gemm inputs into their weights, s_j = max|X_j|^α / max|W_j|^(1−α); "auto" searches
    /// α per layer on the calibration data, a number in [0, 1] fixes it. Static and dynamic
    /// (`--mode dynamic --calib DATA --smoothquant`) quantization (docs/transformers.md).
    #[arg(long, value_name = "auto|ALPHA", num_args = 0..=1, default_missing_value = "auto")]
    pub smoothquant: Option<String>,
    /// With --cle: replace each ReLU6 between two layers by a ReLU so that they can be
    /// equalized (the paper's choice; changes the float model where an activation exceeds 6).
    #[arg(long)]
    pub cle_relu6: bool,
    /// With --cle: do not absorb high biases.
    #[arg(long)]
    pub no_bias_absorption: bool,
    /// Bias correction (Nagel et al. 2019). empirical (the default): each quantized layer's mean
    /// output error per channel, measured on calibration samples with the layers before it
    /// quantized and corrected, is subtracted from its bias (a MatMul's: the constant of the Add
    /// that follows it). analytic: the error the quantized weights cause on the mean input that
    /// the preceding BatchNorm's statistics give (for a layer reading the model's input, the
    /// calibration data's mean), without running the model; Conv and Gemm only.
    /// analytic-means: the same, and where no BatchNorm gives the mean input (after a max pool,
    /// a dense layer), the float model's mean on the calibration data (one float pass).
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "empirical")]
    pub bias_correction: Option<BiasCorrectionArg>,
    /// AdaRound (Nagel et al. 2020): learn each weight's rounding, up or down, layer by layer on
    /// calibration samples, with ITERS Adam steps per layer [default: 1000].
    #[arg(long, value_name = "ITERS", num_args = 0..=1, default_missing_value = "1000")]
    pub adaround: Option<usize>,
    /// Calibration samples AdaRound fits each layer on (their activations wait on disk between
    /// layers: memory does not grow with them).
    #[arg(long, default_value_t = 16)]
    pub adaround_samples: usize,
    /// AdaRound's Adam learning rate.
    #[arg(long, default_value_t = 1e-2)]
    pub adaround_lr: f64,
    /// The model AdaRound takes each layer's input from: the quantized one, activation
    /// quantizers included (as deployed), or the one with only its weights quantized (as AIMET
    /// does). The float model gives the targets either way.
    #[arg(long, value_enum, default_value_t = AdaRoundInputs::Quantized)]
    pub adaround_inputs: AdaRoundInputs,
    /// What AdaRound reconstructs of a layer with a Relu or Clip fused into it: its product W·x,
    /// or its output after its bias and that activation (the paper's eq. 25; better on
    /// ResNet-18 at W4A8, worse on smaller models: docs/algorithms.md).
    #[arg(long, value_enum, default_value_t = AdaRoundLoss::Linear)]
    pub adaround_loss: AdaRoundLoss,
    /// Round the weights AdaRound's fit leaves undecided (0 < h < 1) at h = ½, as the paper
    /// does, instead of settling each on the layer's reconstruction error (zeropoint's default;
    /// docs/algorithms.md, "Settling").
    #[arg(long)]
    pub no_adaround_settle: bool,
    /// Calibration samples empirical bias correction measures on (their activations wait on
    /// disk between layers: memory does not grow with them).
    #[arg(long, default_value_t = zeropoint_quant::settings::BIAS_CORRECTION_SAMPLES)]
    pub bias_correction_samples: usize,
    /// Mixed precision: raise the quantizers that buy the most output SQNR per byte (activations
    /// to 16 bits, layers kept float), one at a time, until the simulated model's output SQNR
    /// against float reaches DB on calibration samples. Exports at opset 21.
    #[arg(long, value_name = "DB")]
    pub target_sqnr: Option<f64>,
    /// Mixed precision, like --target-sqnr, to a top-1 agreement with the float model (a
    /// fraction, 0.99, or a percentage, 99%) on the first output's class scores.
    #[arg(long, value_name = "P")]
    pub target_agreement: Option<String>,
    /// Quantize this activation with BITS bits instead of the scheme's, e.g. relu_5=16
    /// (repeatable; `analyze` names the activations that need it).
    #[arg(long, value_name = "VALUE=BITS")]
    pub activation_bits: Vec<String>,
    /// Calibration samples the mixed-precision target is measured on.
    #[arg(long, default_value_t = 32)]
    pub target_samples: usize,
}

impl QuantArgs {
    /// `--batch` as given (each mode has its own default), refused if 0.
    pub fn batch(&self) -> Result<Option<usize>> {
        if self.batch == Some(0) {
            bail!("--batch must be at least 1");
        }
        Ok(self.batch)
    }

    /// What default output names say about the scheme: "int8" for the default preset, the
    /// preset's name for the others, "qdq" when schemes are given explicitly.
    pub fn tag(&self) -> &str {
        match (&self.weights, &self.activations, self.preset) {
            (None, None, PresetArg::W8a8) => "int8",
            (None, None, preset) => preset.preset().name(),
            _ => "qdq",
        }
    }

    pub fn options(&self, data: Vec<String>) -> Result<Options> {
        let preset = self.preset.preset();
        let weights = self.reduced(match &self.weights {
            Some(spec) => parse_scheme(spec, true)?,
            None => preset.weights(),
        })?;
        let float_activations = self.float_activations()?;
        let activations = match &self.activations {
            Some(spec) if !float_activations => parse_scheme(spec, false)?,
            _ => preset.activations(),
        };
        if activations.granularity != Granularity::PerTensor {
            bail!("activations are quantized per tensor");
        }
        if self.limit_pairs {
            check_pair_limit(&weights).map_err(|m| anyhow::anyhow!("--{m}"))?;
            if self.weight_range == Some(WeightRange::Output) {
                bail!("--weight-range output does not go with --limit-pairs: the fitted ranges do not keep the pair limit");
            }
        }
        let batch = self.batch()?.unwrap_or(32);
        let standard = self.recipe == Some(Recipe::Standard);
        if (self.cle_relu6 || self.no_bias_absorption) && !(self.cle || standard) {
            bail!("--cle-relu6 and --no-bias-absorption go with --cle (or --recipe standard)");
        }
        let recipe_adaround = standard && self.bias_correction.is_none();
        let adaround = self.adaround.or(recipe_adaround.then_some(1000));
        if adaround.is_some() && self.bias_correction.is_some() {
            bail!("--adaround and --bias-correction do not go together: AdaRound learns the rounding that bias correction would compensate");
        }
        if adaround == Some(0) {
            bail!("--adaround needs at least 1 iteration");
        }
        if !(self.adaround_lr.is_finite() && self.adaround_lr > 0.0) {
            bail!("--adaround-lr must be a positive number");
        }
        let bias_correction = self.bias_correction;
        let target = self.target()?;
        Ok(Options {
            settings: Settings {
                weights,
                weight_method: match self.weight_range {
                    Some(WeightRange::Method(m)) => m,
                    Some(WeightRange::Output) => RangeMethod::Minmax,
                    None if standard => RangeMethod::Mse,
                    None => RangeMethod::Minmax,
                }
                .method(),
                output_weight_ranges: (self.weight_range == Some(WeightRange::Output))
                    .then_some(self.weight_range_samples.max(1)),
                activations,
                activation_method: self.activation_range.method(),
                choose_activation_range: self.activation_range == ActivationRange::Auto,
                batch,
                equalize: (self.cle || standard).then_some(zeropoint_quant::equalize::Options {
                    relu6_as_relu: self.cle_relu6,
                    absorb_high_bias: !self.no_bias_absorption,
                }),
                smooth_quant: self.smooth_quant()?,
                bias_correction: bias_correction.map(|b| match b {
                    BiasCorrectionArg::Empirical => BiasCorrection::Empirical {
                        samples: self.bias_correction_samples,
                    },
                    BiasCorrectionArg::Analytic => BiasCorrection::Analytic {
                        measured_means: false,
                    },
                    BiasCorrectionArg::AnalyticMeans => BiasCorrection::Analytic {
                        measured_means: true,
                    },
                }),
                adaround: adaround.map(|iterations| zeropoint_quant::adaround::Options {
                    iterations,
                    samples: self.adaround_samples.max(1),
                    learning_rate: self.adaround_lr,
                    quantized_inputs: self.adaround_inputs == AdaRoundInputs::Quantized,
                    through_activation: self.adaround_loss == AdaRoundLoss::Activation,
                    settle: !self.no_adaround_settle,
                    ..Default::default()
                }),
                activation_bits: self.activation_bits()?,
                target,
                limit_pairs: self.limit_pairs,
                quantize_logits: self.quantize_logits,
                float_activations,
            },
            exclude: self.exclude.clone(),
            data,
            arrays: Vec::new(),
            preprocess: self.data.preprocess()?,
            samples: self.samples,
            report_samples: self.report_samples,
        })
    }
}

impl QuantArgs {
    /// Whether `--activations float` asks for weights only, refused with the options that
    /// act on activation quantizers.
    fn float_activations(&self) -> Result<bool> {
        if self.activations.as_deref() != Some("float") {
            return Ok(false);
        }
        let clashes = [
            ("--target-sqnr", self.target_sqnr.is_some()),
            ("--target-agreement", self.target_agreement.is_some()),
            ("--activation-bits", !self.activation_bits.is_empty()),
            ("--smoothquant", self.smoothquant.is_some()),
            ("--limit-pairs", self.limit_pairs),
            ("--quantize-logits", self.quantize_logits),
        ];
        if let Some((flag, _)) = clashes.iter().find(|(_, given)| *given) {
            bail!(
                "--activations float quantizes weights only; {flag} acts on activation quantizers"
            );
        }
        Ok(true)
    }

    /// `weights` in 7 bits with --reduce-range, which only 8-bit weights take.
    pub fn reduced(&self, weights: Scheme) -> Result<Scheme> {
        if !self.reduce_range {
            return Ok(weights);
        }
        reduced_range(weights).map_err(|m| anyhow::anyhow!("--{m}"))
    }

    /// SmoothQuant's options, if asked for.
    pub fn smooth_quant(&self) -> Result<Option<zeropoint_quant::smooth_quant::Options>> {
        use zeropoint_quant::smooth_quant::{Alpha, Options};
        let alpha = match self.smoothquant.as_deref() {
            None => return Ok(None),
            Some("auto") => Alpha::Search,
            Some(a) => match a.parse::<f64>() {
                Ok(a) if (0.0..=1.0).contains(&a) => Alpha::Fixed(a),
                _ => bail!("--smoothquant takes \"auto\" or an α in [0, 1], not '{a}'"),
            },
        };
        Ok(Some(Options { alpha }))
    }

    /// The mixed-precision target, if one is asked for.
    fn target(&self) -> Result<Option<Target>> {
        if self.target_sqnr.is_none() && self.target_agreement.is_none() {
            return Ok(None);
        }
        if self.target_sqnr.is_some_and(|d| !d.is_finite()) {
            bail!("--target-sqnr must be a number of dB");
        }
        let agreement = match self.target_agreement.as_deref() {
            Some(p) => Some(parse_fraction(p)?),
            None => None,
        };
        if self.target_samples == 0 {
            bail!("--target-samples must be at least 1");
        }
        Ok(Some(Target {
            sqnr_db: self.target_sqnr,
            agreement,
            samples: self.target_samples,
        }))
    }
}

impl QuantArgs {
    /// `--activation-bits` as (value, bits).
    fn activation_bits(&self) -> Result<Vec<(String, u32)>> {
        self.activation_bits
            .iter()
            .map(|spec| {
                let parsed = spec
                    .rsplit_once('=')
                    .and_then(|(v, b)| Some((v.to_string(), b.parse::<u32>().ok()?)));
                match parsed {
                    Some((v, b)) if (2..=16).contains(&b) && !v.is_empty() => Ok((v, b)),
                    _ => bail!("--activation-bits '{spec}' is not VALUE=BITS with 2 to 16 bits"),
                }
            })
            .collect()
    }
}

/// "0.99" or "99%" → 0.99.
fn parse_fraction(p: &str) -> Result<f64> {
    let (number, scale) = match p.trim().strip_suffix('%') {
        Some(n) => (n, 100.0),
        None => (p.trim(), 1.0),
    };
    let v: f64 = number
        .parse()
        .with_context(|| format!("--target-agreement '{p}' is not a fraction like 0.99 or 99%"))?;
    let v = v / scale;
    if !(0.0..=1.0).contains(&v) {
        bail!("--target-agreement '{p}' is not between 0 and 1 (0% and 100%)");
    }
    Ok(v)
}

/// "int8,sym,per-channel" → a scheme (see [`zeropoint_quant::settings::parse_scheme`]).
pub fn parse_scheme(spec: &str, weight: bool) -> Result<Scheme> {
    zeropoint_quant::settings::parse_scheme(spec, weight).map_err(anyhow::Error::msg)
}
