//! `zeropoint gguf IN -o OUT.gguf --type Q4_K_M`: llama-quantize's job. Every tensor gets the
//! type llama.cpp's rules give it for the preset, in ggml's block formats, byte-identical to
//! llama-quantize (with or without an importance matrix). IN is a GGUF file or a Hugging Face
//! checkpoint folder of a Llama-family model (convert_hf_to_gguf.py's job done on the way).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use zeropoint_core::ggml::GgmlType;
use zeropoint_gguf::hf;
use zeropoint_gguf::imatrix::Imatrix;
use zeropoint_gguf::input::Input;
use zeropoint_gguf::preset::Preset;
use zeropoint_gguf::quantize::{self, Calibration, Options, Plan};
use zeropoint_gguf::value::Value;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The GGUF file to quantize (F32, F16 or BF16 weights), or a Hugging Face checkpoint folder
    /// of a Llama-family model (config.json, *.safetensors, tokenizer files).
    pub input: PathBuf,
    /// Where to write the quantized GGUF file.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// llama.cpp file type: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q2_K_S (needs --imatrix), Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S,
    /// Q4_K_M, Q5_K_S, Q5_K_M, Q6_K, F16, BF16 or F32.
    #[arg(long = "type", short = 't', default_value = "Q4_K_M")]
    pub preset: String,
    /// An importance matrix from llama-imatrix (GGUF): rounding weighted by how much each
    /// column's activations matter, as llama-quantize --imatrix does.
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// Give every quantizable tensor the preset's base type (llama-quantize's --pure).
    #[arg(long)]
    pub pure: bool,
    /// Convert tensors that are already quantized (their error compounds).
    #[arg(long)]
    pub allow_requantize: bool,
    /// Calibration text (UTF-8): quantize the transformer blocks' linear layers with GPTQ inside
    /// the preset's formats (see --method, --awq), layer after layer on this text's activations,
    /// instead of rounding each weight to nearest. The file still runs in any llama.cpp build.
    #[arg(long, value_name = "FILE.txt")]
    pub calib: Option<PathBuf>,
    /// With --calib: gptq (GPTQ's error-compensating updates) or rtn (round to nearest,
    /// weighted by each input's mean square on the calibration text).
    #[arg(long, value_enum, default_value_t = CalibMethod::Gptq, requires = "calib")]
    pub method: CalibMethod,
    /// With --calib: AWQ's activation-aware channel scales before the method, searched per
    /// layer on the calibration text and folded into the RMSNorm weights and the up projection.
    #[arg(long, requires = "calib")]
    pub awq: bool,
    /// With --awq --method rtn: skip AWQ's clipping search (each 32-weight group clipped to the
    /// ratio of its largest weight in 1, 0.95, ..., 0.55 with the least output error on the
    /// calibration text; GPTQ does without it).
    #[arg(long, requires = "awq")]
    pub no_awq_clip: bool,
    /// Chunks of --calib-ctx tokens of the calibration text to use (at most).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub calib_chunks: usize,
    /// Tokens per calibration chunk (each starts at position 0, BOS first) [default: 512, or the
    /// model's context if shorter]. More than the model's context is refused.
    #[arg(long, value_name = "N")]
    pub calib_ctx: Option<usize>,
    /// GPTQ's dampening of the Hessian, a fraction of its mean diagonal.
    #[arg(long, default_value_t = 0.01, value_name = "F")]
    pub gptq_damp: f64,
    /// With --method gptq: quantize each matrix's inputs in their order, not by decreasing mean
    /// square on the calibration text (GPTQ's act-order, the default: each block's scales are
    /// then fixed when the first of its inputs is reached, from the block as updated so far).
    #[arg(long, requires = "calib")]
    pub no_act_order: bool,
    /// GPTQ's act-order, the default (kept for scripts written when it was not).
    #[arg(long, requires = "calib", conflicts_with = "no_act_order", hide = true)]
    pub act_order: bool,
    /// For a checkpoint whose BPE pre-tokenizer zeropoint does not recognise: llama.cpp's name
    /// for it (tokenizer.ggml.pre, e.g. llama-bpe, qwen2, smollm).
    #[arg(long, value_name = "NAME")]
    pub tokenizer_pre: Option<String>,
    /// List each tensor's type instead of a summary.
    #[arg(long)]
    pub verbose: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalibMethod {
    Gptq,
    Rtn,
}

pub fn run(args: &Args) -> Result<()> {
    crate::output::check_output(&args.input, &args.output)?;
    let Some(preset) = Preset::from_name(&args.preset) else {
        bail!(
            "unknown type '{}': choose one of {}",
            args.preset,
            Preset::names().join(", ")
        );
    };
    let imatrix = match &args.imatrix {
        Some(path) => Some((Imatrix::read(path)?, path.to_string_lossy().into_owned())),
        None => None,
    };
    if args.tokenizer_pre.is_some() && !hf::is_checkpoint(&args.input) {
        bail!("--tokenizer-pre applies to Hugging Face checkpoints, not GGUF files");
    }
    let checkpoint = hf::Options {
        tokenizer_pre: args.tokenizer_pre.clone(),
    };
    let input = quantize::open_input(&args.input, &checkpoint)?;
    let calibration = match &args.calib {
        Some(path) => Some(calibration(args, path, input.as_ref())?),
        None => None,
    };
    let opts = Options {
        calibration,
        preset,
        imatrix,
        pure: args.pure,
        allow_requantize: args.allow_requantize,
    };
    let total = input.header().tensors.len();
    let mut bar = crate::progress::bar();
    let mut done = 0;
    let start = Instant::now();
    let mut layers_bar = crate::progress::bar();
    let on_layer = |done, layers| layers_bar("calibrate\tlayer", done, layers);
    let plan = quantize::quantize(input.as_ref(), &args.output, &opts, on_layer, |t| {
        done += 1;
        bar(&format!("quantize\t{}", t.name), done, total);
    })?;
    let seconds = start.elapsed().as_secs_f64();
    print_summary(input.as_ref(), &plan, args.verbose);
    print_awq(&plan);
    println!(
        "wrote {} ({}) in {seconds:.1} s",
        args.output.display(),
        preset.name()
    );
    Ok(())
}

/// The calibration text tokenized with the model's vocabulary, in chunks.
fn calibration(args: &Args, path: &std::path::Path, input: &dyn Input) -> Result<Calibration> {
    if !(args.gptq_damp.is_finite() && args.gptq_damp > 0.0) {
        bail!("--gptq-damp must be a positive number");
    }
    if args.calib_chunks == 0 {
        bail!("--calib-chunks must be at least 1");
    }
    if (args.act_order || args.no_act_order) && args.method != CalibMethod::Gptq {
        bail!("--act-order and --no-act-order are GPTQ's: they need --method gptq");
    }
    let mut g = Calibration::from_file(
        input.header(),
        path,
        args.calib_ctx,
        args.calib_chunks,
        args.gptq_damp,
    )
    .map_err(anyhow::Error::msg)?;
    g.gptq = args.method == CalibMethod::Gptq;
    g.act_order = !args.no_act_order;
    g.awq = args.awq;
    g.clip = !args.no_awq_clip;
    Ok(g)
}

/// How many groups of matrices AWQ rescaled and with which α (from the output's metadata).
fn print_awq(plan: &Plan) {
    let Some((_, Value::Array(_, items))) =
        (plan.metadata.iter()).find(|(k, _)| k == "quantize.awq.alphas")
    else {
        return;
    };
    let mut alphas: Vec<f32> = (items.iter())
        .filter_map(|v| match v {
            Value::F32(a) => Some(*a),
            _ => None,
        })
        .collect();
    alphas.sort_by(f32::total_cmp);
    let scaled: Vec<f32> = alphas.iter().copied().filter(|&a| a > 0.0).collect();
    match (scaled.first(), scaled.last()) {
        (Some(lo), Some(hi)) => println!(
            "AWQ: {} of {} groups rescaled, alpha {lo:.2}-{hi:.2} (median {:.2})",
            scaled.len(),
            alphas.len(),
            scaled[scaled.len() / 2]
        ),
        _ => println!("AWQ: none of {} groups rescaled", alphas.len()),
    }
    if let Some((_, Value::Array(_, counts))) =
        (plan.metadata.iter()).find(|(k, _)| k == "quantize.awq.clipped_groups")
    {
        if let [Value::U64(clipped), Value::U64(groups)] = counts.as_slice() {
            let percent = 100.0 * *clipped as f64 / (*groups).max(1) as f64;
            println!("AWQ: {clipped} of {groups} weight groups clipped ({percent:.1}%)");
        }
    }
}

fn print_summary(input: &dyn Input, plan: &Plan, verbose: bool) {
    if verbose {
        for t in &plan.tensors {
            println!(
                "{:<40} {:>8} -> {:<6} {:?}",
                t.name,
                t.from.name(),
                t.to.name(),
                t.dims
            );
        }
    }
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    for t in &plan.tensors {
        match counts.iter_mut().find(|(ty, _)| *ty == t.to) {
            Some((_, n)) => *n += 1,
            None => counts.push((t.to, 1)),
        }
    }
    let types: Vec<String> = counts.iter().map(|(t, n)| format!("{n} {t}")).collect();
    let before: u64 = input.header().tensors.iter().map(|t| t.byte_size()).sum();
    let elements: u64 = plan
        .tensors
        .iter()
        .map(|t| t.dims.iter().product::<u64>())
        .sum();
    let after = plan.data_bytes();
    println!(
        "{} tensors: {}; {:.1} MB -> {:.1} MB, {:.2} bits per weight",
        plan.tensors.len(),
        types.join(", "),
        before as f64 / 1e6,
        after as f64 / 1e6,
        after as f64 * 8.0 / elements.max(1) as f64
    );
}
