//! Weight-only quantization, as transformers are deployed on CPUs and GPUs: the weights of MatMul
//! and Gemm layers stored in 2 to 8 bits, in blocks along the reduction axis, dequantized on
//! the fly by the runtime; activations stay float, so no calibration of activation ranges is
//! needed and the model shrinks by ~4x (8 bits) to ~7x (4 bits).
//!
//! ```text
//! sites     graph            → the MatMul/Gemm layers with a constant 2-D weight   (here)
//! hessian   graph, data      → 2XᵀX and mean |x| of each layer's input             hessian.rs
//! awq       graph, stats     → weights scaled per input channel, 1/s folded before  awq.rs
//! quantize  weight [, H]     → codes, scales, zeros per block:                     blocks.rs
//!           round to nearest (min-max or MSE ranges), GPTQ, HQQ                    gptq.rs, hqq.rs
//! export    graph, codes     → MatMulNBits (com.microsoft) or blocked DequantizeLinear
//!                                                                                  nbits_export.rs
//! ```

pub mod awq;
pub mod blocks;
pub mod gptq;
pub mod hessian;
pub mod hqq;
pub mod nbits_export;
pub mod sequential;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use zeropoint_core::Scheme;
use zeropoint_graph::{Graph, Op, ValueInfo};
use zeropoint_onnx::ModelProto;

use crate::dataset::{batch_for, Dataset, Preprocess};
use crate::error::{Error, Result};
pub use crate::linear_layers::{sites, transpose, weight_kn, Site};
use crate::prepare::prepare;
use crate::settings::{Preset, Settings};
use blocks::{BlockScheme, BlockWeights};

/// How each weight's codes are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Round to nearest on each block's range.
    Rtn,
    /// GPTQ's error compensation with the inputs' Hessian (needs calibration data).
    Gptq(gptq::Options),
    /// HQQ's data-free zero-point fit (asymmetric only).
    Hqq(hqq::Options),
}

/// How the quantized layers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// ONNX Runtime's fused `com.microsoft.MatMulNBits` (2, 4 or 8 bits, blocks of a power of two
    /// ≥ 16).
    #[default]
    MatMulNBits,
    /// Integer weights with a blocked DequantizeLinear (opset 21) before the unchanged layer: any
    /// runtime that implements the standard runs it.
    Qdq,
}

/// What a weight-only run needs besides the model.
#[derive(Debug, Clone)]
pub struct Options {
    pub scheme: BlockScheme,
    pub method: Method,
    pub format: Format,
    /// MatMulNBits' `accuracy_level`: the precision ONNX Runtime computes in (0: its default,
    /// 1: fp32, 2: fp16, 3: bf16, 4: int8 inputs quantized per block at run time).
    pub accuracy_level: Option<i64>,
    /// AWQ's per-channel scaling before the weights are quantized (needs calibration data).
    pub awq: Option<awq::Options>,
    /// Node names or operator types kept float.
    pub exclude: Vec<String>,
    /// Bits of embedding tables (Gather), in the weights' blocks.
    pub embedding_bits: u32,
    /// Calibration data (GPTQ needs it; with the other methods it only feeds the report).
    pub data: Vec<String>,
    pub preprocess: Preprocess,
    pub samples: Option<usize>,
    /// Samples per batch and thread while collecting the Hessians; None for
    /// [`default_batch`]'s.
    pub batch: Option<usize>,
    /// GPTQ in the paper's order: each layer's Hessian from the inputs of the model with the
    /// layers before it quantized (sequential.rs), not of the float model.
    pub sequential: bool,
}

/// What was done to one layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Layer {
    pub name: String,
    pub weight: String,
    pub k: usize,
    pub n: usize,
    /// SQNR of the dequantized weight against the float one.
    pub weight_sqnr_db: f64,
    /// SQNR of the layer's output on the calibration inputs, from their Hessian:
    /// tr(WᵀHW) / tr(ΔᵀHΔ). None without calibration data.
    pub output_sqnr_db: Option<f64>,
}

/// Everything a weight-only run produced.
pub struct Outcome {
    pub model: ModelProto,
    /// The float model's size on disk, side files included.
    pub stored_bytes: u64,
    pub layers: Vec<Layer>,
    /// What AWQ scaled, per group of layers sharing an input.
    pub awq: Vec<awq::Scaled>,
    /// Blocks AWQ's clipping search clipped, of the blocks it searched.
    pub clipped_blocks: [usize; 2],
    /// Bytes of the quantized layers' float weights, and of their codes, scales and zeros.
    pub float_bytes: usize,
    pub quantized_bytes: usize,
    pub calibration_samples: usize,
    pub seconds: f64,
}

/// Quantizes the weights of the model at `path`. `progress(stage, done, total)` reports the
/// calibration pass and the layers.
pub fn quantize(
    path: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Outcome> {
    let t = Instant::now();
    check(path, opts)?;
    let prepared = prepare(path, &export_settings(opts))?;
    let mut graph = prepared.graph;
    let mut sites = sites(&graph, &opts.exclude);
    if sites.is_empty() {
        return Err(Error::new(
            path,
            "no MatMul or Gemm with a constant 2-D weight to quantize",
        ));
    }
    let graph_inputs = graph.inputs.clone();
    let open_data = || -> Result<Dataset> {
        Ok(Dataset::open(&opts.data, &graph_inputs, &opts.preprocess)?.at_most(opts.samples))
    };
    let batch = match opts.batch {
        Some(b) => b,
        None if opts.data.is_empty() => 1,
        None => default_batch(&graph.inputs, &open_data()?),
    };
    let batch = batch_for(&graph.inputs, batch);
    // Sequential GPTQ takes each layer's Hessian from the partially quantized model
    // (sequential.rs); the float model's statistics are then needed only by AWQ.
    let sequential =
        opts.sequential && matches!(opts.method, Method::Gptq(_)) && !opts.data.is_empty();
    let (mut stats, mut samples) = if opts.data.is_empty() || (sequential && opts.awq.is_none()) {
        (HashMap::new(), 0)
    } else {
        let mut data = open_data()?;
        let inputs: Vec<(String, usize)> = (sites.iter())
            .filter(|s| s.op != Op::Gather)
            .map(|s| (s.input.clone(), s.k))
            .collect();
        let h = hessian::collect(&mut graph, &inputs, &mut data, batch, &mut |d, n| {
            progress("calibrating", d, n)
        })?;
        (h, data.consumed())
    };
    let awq = match opts.awq {
        Some(a) => {
            let report = awq::awq(&mut graph, &sites, &mut stats, opts.scheme, &a)?;
            // AWQ may insert nodes and rewire inputs: the sites are found again.
            sites = self::sites(&graph, &opts.exclude);
            report
        }
        None => Vec::new(),
    };
    let (quantized, layers, clipped_blocks) = if sequential {
        let mut data = open_data()?;
        let done = sequential::quantize(&mut graph, &sites, opts, (&mut data, batch), progress)?;
        samples = data.consumed();
        done
    } else {
        quantize_sites(&graph, &sites, opts, &mut stats, progress)?
    };
    progress("quantizing", sites.len(), sites.len());
    let float_bytes = quantized.values().map(|q| q.k * q.n * 4).sum();
    let quantized_bytes = quantized.values().map(nbits_export::bytes).sum();
    let graph = nbits_export::rewrite(graph, &sites, quantized, opts.format, opts.accuracy_level)?;
    let model = nbits_export::to_model(graph, &prepared.base)?;
    Ok(Outcome {
        model,
        stored_bytes: prepared.stored_bytes,
        layers,
        awq,
        clipped_blocks,
        float_bytes,
        quantized_bytes,
        calibration_samples: samples,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// The quantized weights by name, the report's layers, and the blocks AWQ's clipping search
/// clipped of those it searched.
type Quantized = (HashMap<String, BlockWeights>, Vec<Layer>, [usize; 2]);

/// Token positions per calibration batch by default.
const TOKENS_PER_BATCH: usize = 256;

/// Samples per batch when none is asked for. Token ids (an integer input) are batched by about
/// [`TOKENS_PER_BATCH`] positions: each position is a row for every layer, so a longer batch
/// only takes memory (stories15M's GPTQ, 256-token windows: 4.9 s and 188 MB a window at a time,
/// 7.4 s and 355 MB 32 at a time), and a shorter one runs the layers on too few rows (MiniLM,
/// 65-token sentences: 12.2 s one at a time, 9.8 s four at a time). Other data: 32 samples.
pub(crate) fn default_batch(inputs: &[ValueInfo], data: &Dataset) -> usize {
    let shapes = data.sample_shapes();
    let integer = |i: &&ValueInfo| i.dtype.is_some_and(|d| !d.is_float());
    let tokens = (inputs.iter().filter(integer))
        .filter_map(|i| shapes.get(&i.name))
        .map(|s| s.iter().product::<usize>())
        .max();
    match tokens {
        Some(t) if t > 0 => TOKENS_PER_BATCH.div_ceil(t).min(32),
        _ => 32,
    }
}

/// Each site's weight quantized with its input's Hessian (of the float model) from `stats`,
/// which are dropped once the last site reading them is done: the largest layers, an LM head
/// last in the graph and the embedding table, are then not quantized beside every other
/// layer's Hessian (41 of the 98 MB of stories15M's weights). The report keeps the sites' order.
fn quantize_sites(
    graph: &Graph,
    sites: &[Site],
    opts: &Options,
    stats: &mut HashMap<String, hessian::Stats>,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Quantized> {
    let mut quantized = HashMap::new();
    let mut lines = vec![None; sites.len()];
    let mut clipped_blocks = [0usize; 2];
    let order = hessians_first(sites);
    let last: HashMap<&str, usize> = (order.iter().enumerate())
        .map(|(step, &i)| (sites[i].input.as_str(), step))
        .collect();
    for (step, &i) in order.iter().enumerate() {
        progress("quantizing", step, sites.len());
        let site = &sites[i];
        // The whole [K, K] matrix for this layer only: the others stay packed.
        let h = stats.get(&site.input).map(hessian::Stats::full);
        let (line, _) = quantize_once(
            graph,
            (site, &weight_kn(graph, site)?),
            opts,
            h.as_ref(),
            (&mut quantized, &mut clipped_blocks),
        )?;
        lines[i] = Some(line);
        if last[site.input.as_str()] == step {
            stats.remove(&site.input);
        }
    }
    Ok((
        quantized,
        lines.into_iter().flatten().collect(),
        clipped_blocks,
    ))
}

/// The sites' indices, embedding tables (Gather, which take no Hessian) last. A table whose
/// weight another site reads too keeps its place: the first site reading a weight quantizes it.
fn hessians_first(sites: &[Site]) -> Vec<usize> {
    let readers = |w: &str| sites.iter().filter(|s| s.weight == w).count();
    let late = |s: &Site| s.op == Op::Gather && readers(&s.weight) == 1;
    let (tables, layers): (Vec<usize>, Vec<usize>) =
        (0..sites.len()).partition(|&i| late(&sites[i]));
    layers.into_iter().chain(tables).collect()
}

/// `site`'s float weight `w` ([K, N]) quantized with Hessian `h` into `quantized`, unless a site
/// sharing the weight came first (a weight is quantized once), AWQ's clipped blocks counted into
/// `clipped`: the site's report line, and whether the weight was quantized now.
fn quantize_once(
    graph: &Graph,
    (site, w): (&Site, &[f32]),
    opts: &Options,
    h: Option<&Vec<f64>>,
    (quantized, clipped_blocks): (&mut HashMap<String, BlockWeights>, &mut [usize; 2]),
) -> Result<(Layer, bool)> {
    let now = !quantized.contains_key(&site.weight);
    if now {
        let clipped = clip_site(graph, site, w, opts, h)?;
        if let Some(c) = &clipped {
            clipped_blocks[0] += c.clipped;
            clipped_blocks[1] += c.groups;
        }
        let w = clipped.as_ref().map_or(w, |c| &c.w[..]);
        let q = quantize_site(graph, site, w, opts, h)?;
        quantized.insert(site.weight.clone(), q);
    }
    Ok((layer(site, w, &quantized[&site.weight], h), now))
}

/// Refuses option combinations that cannot work, before the model is read.
fn check(path: &Path, opts: &Options) -> Result<()> {
    let s = &opts.scheme;
    let refuse = |m: String| Err(Error::new(path, m));
    if !(2..=8).contains(&s.bits) {
        return refuse(format!(
            "weight-only quantization takes 2 to 8 bits, not {}",
            s.bits
        ));
    }
    if s.block < 2 {
        return refuse(format!(
            "blocks of {} weights are too small: use 16 to 256",
            s.block
        ));
    }
    if !(2..=8).contains(&opts.embedding_bits) {
        return refuse(format!(
            "embedding tables take 2 to 8 bits, not {}",
            opts.embedding_bits
        ));
    }
    if opts.format == Format::MatMulNBits {
        for (bits, what) in [
            (s.bits, "weights"),
            (opts.embedding_bits, "embedding tables"),
        ] {
            if ![2, 4, 8].contains(&bits) {
                return refuse(format!(
                    "MatMulNBits and GatherBlockQuantized run 2, 4 or 8 bits, not {bits} ({what}): use --format qdq"
                ));
            }
        }
        if !(s.block >= 16 && s.block.is_power_of_two()) {
            return refuse(format!(
                "MatMulNBits takes blocks of a power of two from 16, not {}: use --format qdq",
                s.block
            ));
        }
    }
    if opts.awq.is_some() && opts.data.is_empty() {
        return refuse("AWQ needs calibration data (--calib): it scales channels by their activations' magnitude".into());
    }
    match opts.method {
        Method::Gptq(_) if opts.data.is_empty() => {
            refuse("GPTQ needs calibration data (--calib): it compensates each rounding error with the inputs' statistics".into())
        }
        Method::Hqq(_) if s.symmetric => {
            refuse("HQQ optimizes the zero-point: it needs asymmetric weights (int4,asym)".into())
        }
        _ => Ok(()),
    }
}

/// Settings whose export opset is the one the format needs (21 for blocked DequantizeLinear).
fn export_settings(opts: &Options) -> Settings {
    let mut s = Settings::preset(Preset::W8A8);
    if opts.format == Format::Qdq {
        s.weights = Scheme::new(opts.scheme.bits).per_block(0, opts.scheme.block);
    }
    s
}

/// The site's weight clipped by AWQ's clipping search, where it runs: with AWQ's `clip`, before
/// rounding to nearest (before GPTQ the clipped weights would become GPTQ's target, and HQQ
/// optimizes its own ranges), on the layers [`awq::clippable`] allows.
fn clip_site(
    graph: &Graph,
    site: &Site,
    w: &[f32],
    opts: &Options,
    h: Option<&Vec<f64>>,
) -> Result<Option<zeropoint_core::awq::Clipped>> {
    let on = opts.awq.is_some_and(|a| a.clip) && opts.method == Method::Rtn;
    let Some(h) = h.filter(|_| on && awq::clippable(site, opts.scheme.block)) else {
        return Ok(None);
    };
    awq::clip(w, site, h, opts.scheme)
        .map(Some)
        .map_err(|m| Error::new(&graph.source, format!("node '{}': {m}", site.name)))
}

/// One site's weight quantized with the chosen method.
fn quantize_site(
    graph: &Graph,
    site: &Site,
    w: &[f32],
    opts: &Options,
    h: Option<&Vec<f64>>,
) -> Result<BlockWeights> {
    let mut s = opts.scheme;
    let mut method = opts.method;
    if site.op == Op::Gather {
        s.bits = opts.embedding_bits;
        // A lookup has no inputs to compensate over: GPTQ's tables are rounded to nearest.
        if matches!(method, Method::Gptq(_)) {
            method = Method::Rtn;
        }
    }
    let q = match method {
        Method::Rtn => blocks::rtn(w, site.k, site.n, s),
        Method::Hqq(o) => hqq::hqq(w, site.k, site.n, s, &o),
        Method::Gptq(o) => {
            let h = h.ok_or_else(|| {
                Error::new(
                    &graph.source,
                    format!(
                        "node '{}': its input '{}' was never computed",
                        site.name, site.input
                    ),
                )
            })?;
            gptq::gptq(w, h, site.k, site.n, s, &o)
                .map_err(|m| Error::new(&graph.source, format!("node '{}': {m}", site.name)))?
        }
    };
    // Blocked DequantizeLinear, 8-bit MatMulNBits and GatherBlockQuantized store integer zeros.
    let integral = opts.format == Format::Qdq || s.bits == 8 || site.op == Op::Gather;
    Ok(if integral && !q.integral_zeros() {
        hqq::round_zeros(q, w)
    } else {
        q
    })
}

/// The report line of one quantized layer.
fn layer(site: &Site, w: &[f32], q: &BlockWeights, h: Option<&Vec<f64>>) -> Layer {
    Layer {
        name: site.name.clone(),
        weight: site.weight.clone(),
        k: site.k,
        n: site.n,
        weight_sqnr_db: q.sqnr_db(w),
        output_sqnr_db: h.map(|h| hessian::output_sqnr_db(h, w, q)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 4 × 4 layer (a table stored transposed) for the tests of the site order.
    pub(crate) fn site_of(node: usize, op: Op, weight: &str, input: &str) -> Site {
        Site {
            node,
            name: format!("n{node}"),
            transposed: op == Op::Gather,
            op,
            weight: weight.into(),
            input: input.into(),
            k: 4,
            n: 4,
        }
    }

    fn site(node: usize, op: Op, weight: &str) -> Site {
        site_of(node, op, weight, &format!("x{node}"))
    }

    #[test]
    fn token_ids_are_batched_by_positions_and_other_data_by_32() {
        use std::sync::Arc;
        use zeropoint_graph::graph::Dim;
        use zeropoint_onnx::{DType, RawTensor};
        let batch = |dtype: DType, seq: usize| {
            let input = ValueInfo {
                name: "ids".into(),
                dtype: Some(dtype),
                shape: Some(vec![Dim::Sym("batch".into()), Dim::Sym("seq".into())]),
            };
            let t = match dtype {
                DType::F32 => RawTensor::from_f32s("ids", &[3, seq], &vec![1.0; 3 * seq]),
                _ => RawTensor::from_i64s("ids", &[3, seq], &vec![1; 3 * seq], dtype),
            };
            let inputs = [input];
            let data = Dataset::from_arrays(vec![("ids".into(), Arc::new(t))], &inputs).unwrap();
            default_batch(&inputs, &data)
        };
        assert_eq!(batch(DType::I64, 256), 1);
        assert_eq!(batch(DType::I64, 65), 4);
        assert_eq!(batch(DType::I64, 300), 1);
        assert_eq!(batch(DType::I64, 4), 32);
        assert_eq!(batch(DType::F32, 65), 32);
    }

    #[test]
    fn tables_go_last_unless_a_layer_shares_their_weight() {
        let sites = [
            site(0, Op::Gather, "embed"),
            site(1, Op::MatMul, "wq"),
            site(2, Op::Gather, "tied"),
            site(3, Op::MatMul, "tied"),
            site(4, Op::Gather, "positions"),
        ];
        assert_eq!(hessians_first(&sites), [1, 2, 3, 0, 4]);
    }
}
