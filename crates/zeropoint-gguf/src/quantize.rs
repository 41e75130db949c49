//! The `llama-quantize` job: every tensor of a GGUF file converted to the type the preset's rules
//! give it, metadata carried over with llama.cpp's two additions, tensors in llama.cpp's order,
//! written atomically and one slab of rows at a time.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use zeropoint_core::ggml::{self, GgmlType};

use crate::error::{Error, Result};
use crate::imatrix::Imatrix;
use crate::input::Input;
use crate::preset::{self, Counters, ModelFacts, Preset};
use crate::read::Header;
use crate::value::Value;
use crate::write::{self, NewTensor};

/// ggml's `GGML_QNT_VERSION`, stored as `general.quantization_version`.
pub const QUANTIZATION_VERSION: u32 = 2;

/// Keys llama-quantize drops: it writes one file, not shards.
const SPLIT_KEYS: [&str; 3] = ["split.no", "split.count", "split.tensors.count"];

/// Rows are converted in slabs of about this many elements, which bounds the memory a tensor
/// takes whatever its size.
const SLAB_ELEMENTS: u64 = 1 << 24;

#[derive(Debug, Clone)]
pub struct Options {
    /// Calibration text for GPTQ and AWQ inside the ggml formats (llama models): `None`
    /// quantizes as llama-quantize does.
    pub calibration: Option<Calibration>,
    pub preset: Preset,
    /// An importance matrix (llama-quantize's `--imatrix`) and the file name to record for it.
    pub imatrix: Option<(Imatrix, String)>,
    /// Every quantizable tensor gets the preset's default type (llama-quantize's `--pure`).
    pub pure: bool,
    /// Allow converting tensors that are already quantized (llama-quantize's
    /// `--allow-requantize`): they are dequantized first, which compounds the error.
    pub allow_requantize: bool,
}

/// What the calibration text is used for: token sequences (each from position 0, BOS first
/// where the vocabulary adds one), GPTQ's dampening of the Hessian (a fraction of its mean
/// diagonal), and the methods. The linear layers of the transformer blocks are rescaled by AWQ
/// (if `awq`), then quantized by GPTQ (if `gptq`) or else clipped by AWQ's clipping search (if
/// `awq` and `clip`; not the query and key projections, as in AWQ's reference code) and rounded
/// to nearest weighted by their input's mean square on the text. (Clipping before GPTQ made the
/// clipped weights GPTQ's target, and the test model's files worse.)
#[derive(Debug, Clone)]
pub struct Calibration {
    pub chunks: Vec<Vec<u32>>,
    pub damp: f64,
    /// The calibration text's name, recorded in the output's metadata.
    pub dataset: String,
    pub gptq: bool,
    /// GPTQ's act-order (ggml::gptq): on by default. It lowered the KL divergence from the
    /// float model in 15 of 18 preset/method pairs over two models (docs/gguf.md).
    pub act_order: bool,
    pub awq: bool,
    pub clip: bool,
}

impl Calibration {
    /// The text file at `path`, as [`from_text`](Calibration::from_text) takes it, with the
    /// file's name recorded as the dataset. Errors name the file.
    pub fn from_file(
        header: &Header,
        path: &Path,
        ctx: Option<usize>,
        n: usize,
        damp: f64,
    ) -> Result<Calibration, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read as UTF-8 text: {e}", path.display()))?;
        let mut c = Calibration::from_text(header, &text, ctx, n, damp)
            .map_err(|m| format!("{}: {m}", path.display()))?;
        c.dataset = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        Ok(c)
    }

    /// `text` tokenized with the model's own vocabulary and cut into `n` chunks of `ctx` tokens
    /// (fewer if the text is short; an error if it has not one chunk), for GPTQ alone. Without
    /// `ctx`, chunks of 512 tokens, or of the model's context if that is shorter: positions past
    /// the context a model was trained on give activations it never produces in use.
    pub fn from_text(
        header: &Header,
        text: &str,
        ctx: Option<usize>,
        n: usize,
        damp: f64,
    ) -> Result<Calibration, String> {
        let trained = context_length(header);
        let ctx = ctx.unwrap_or(trained.as_ref().map_or(512, |t| t.1.min(512)));
        if ctx < 2 {
            return Err(format!("calibration windows of {ctx} tokens are too short"));
        }
        if let Some((key, t)) = trained.filter(|t| ctx > t.1) {
            return Err(format!(
                "calibration windows of {ctx} tokens are longer than the model's context of {t} ({key})"
            ));
        }
        let vocab = crate::vocab::Vocab::from_header(header)?;
        let tokens = vocab.encode(text);
        if tokens.len() < ctx {
            return Err(format!(
                "the calibration text has {} tokens, fewer than one chunk of {ctx}",
                tokens.len()
            ));
        }
        let chunks = tokens
            .chunks_exact(ctx)
            .take(n)
            .map(|c| {
                let mut c = c.to_vec();
                if let Some(bos) = vocab.bos() {
                    c[0] = bos;
                }
                c
            })
            .collect();
        Ok(Calibration {
            chunks,
            damp,
            dataset: String::new(),
            gptq: true,
            act_order: true,
            awq: false,
            clip: true,
        })
    }

    /// Whether AWQ's clipping search runs: with AWQ, and before weighted rounding only.
    pub fn clips(&self) -> bool {
        self.awq && self.clip && !self.gptq
    }
}

/// One output tensor and where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    /// Its index in the input file.
    pub input: usize,
    pub name: String,
    pub dims: Vec<u64>,
    pub from: GgmlType,
    pub to: GgmlType,
}

/// What the output will hold, decided before any data is touched.
#[derive(Debug, Clone)]
pub struct Plan {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<PlannedTensor>,
}

impl Plan {
    /// Bytes of tensor data in the output (without padding).
    pub fn data_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| crate::read::data_size(&t.dims, t.to))
            .sum()
    }
}

fn new_tensor(t: &PlannedTensor) -> NewTensor {
    NewTensor {
        name: t.name.clone(),
        dims: t.dims.clone(),
        ty: t.to,
    }
}

/// The model facts the rules need, from `general.architecture` and `{arch}.*` hyperparameters.
pub fn model_facts(header: &Header) -> Result<ModelFacts, String> {
    let arch = header
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or("no general.architecture string in the metadata")?
        .to_string();
    let number = |key: &str| -> Option<u64> {
        match header.get(&format!("{arch}.{key}"))? {
            // Per-layer arrays (some architectures vary heads by layer): llama.cpp's rules
            // read layer 0.
            Value::Array(_, items) => items.first().and_then(Value::as_u64),
            v => v.as_u64(),
        }
    };
    let n_layer =
        number("block_count").ok_or(format!("no {arch}.block_count in the metadata"))? as u32;
    let n_head = number("attention.head_count").unwrap_or(0) as u32;
    let n_head_kv = number("attention.head_count_kv").map_or(n_head, |v| v as u32);
    let n_gqa = n_head.checked_div(n_head_kv).unwrap_or(0);
    let n_expert = number("expert_count").unwrap_or(0) as u32;
    let is_70b = match arch.as_str() {
        "llama" => n_layer == 80 && n_head != n_head_kv,
        "qwen2" | "deci" | "olmo" => n_layer == 80,
        "jais2" => n_layer == 68,
        _ => false,
    };
    Ok(ModelFacts {
        arch,
        n_layer,
        n_gqa,
        n_expert,
        is_70b,
    })
}

/// Decides every output tensor's type and the output metadata. Errors are one line without the
/// file name.
pub fn plan(header: &Header, opts: &Options) -> Result<Plan, String> {
    let facts = model_facts(header)?;
    let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
    let order = preset::llama_order(&names);
    let mut counters = Counters::new(order.iter().map(|&i| names[i]));
    let imatrix = opts.imatrix.as_ref().map(|(m, _)| m);
    let rules = preset::Rules {
        preset: opts.preset,
        pure: opts.pure,
        has_imatrix: imatrix.is_some(),
        model: facts,
    };
    let mut tensors = Vec::with_capacity(order.len());
    for i in order {
        let t = &header.tensors[i];
        let to = if preset::allows_quantization(&t.name, &t.dims) {
            let to = rules.tensor_type(&mut counters, &t.name, &t.dims)?;
            if preset::requires_imatrix(opts.preset, &t.name, to)
                && importance(imatrix, &t.name, &t.dims)?.is_none()
            {
                return Err(format!(
                    "{} needs an importance matrix for tensor '{}' ({to}): pass --imatrix",
                    opts.preset.name(),
                    t.name
                ));
            }
            to
        } else {
            t.ty
        };
        check_conversion(&t.name, t.ty, to, opts.allow_requantize)?;
        tensors.push(PlannedTensor {
            input: i,
            name: t.name.clone(),
            dims: ggml_dims(&t.dims),
            from: t.ty,
            to,
        });
    }
    let mut metadata: Vec<(String, Value)> = header
        .metadata
        .iter()
        .filter(|(k, _)| !SPLIT_KEYS.contains(&k.as_str()))
        .filter(|(k, _)| k != "general.quantization_version" && k != "general.file_type")
        .cloned()
        .collect();
    metadata.push((
        "general.quantization_version".into(),
        Value::U32(QUANTIZATION_VERSION),
    ));
    metadata.push(("general.file_type".into(), Value::U32(opts.preset.ftype())));
    if let Some((m, file)) = &opts.imatrix {
        record_imatrix(&mut metadata, m, file);
    }
    if let Some(c) = &opts.calibration {
        record_calibration(&mut metadata, c);
    }
    Ok(Plan { metadata, tensors })
}

/// `quantize.gptq.*` and `quantize.awq.*` (or `quantize.calibration.*` for weighted rounding
/// alone): the calibration text's name and token count, and GPTQ's dampening.
fn record_calibration(metadata: &mut Vec<(String, Value)>, c: &Calibration) {
    let tokens = c.chunks.iter().map(Vec::len).sum::<usize>() as u32;
    let methods = [
        ("gptq", c.gptq),
        ("awq", c.awq),
        ("calibration", !c.gptq && !c.awq),
    ];
    for (method, _) in methods.into_iter().filter(|m| m.1) {
        let dataset = Value::String(c.dataset.clone().into_bytes());
        metadata.push((format!("quantize.{method}.dataset"), dataset));
        metadata.push((format!("quantize.{method}.tokens"), Value::U32(tokens)));
        if method == "gptq" {
            metadata.push(("quantize.gptq.damp".into(), Value::F32(c.damp as f32)));
            let act_order = Value::Bool(c.act_order);
            metadata.push(("quantize.gptq.act_order".into(), act_order));
        }
    }
}

/// The context the model was trained on, and the key that says it (`{arch}.context_length`).
fn context_length(header: &Header) -> Option<(String, usize)> {
    let arch = header.get("general.architecture")?.as_str()?;
    let key = format!("{arch}.context_length");
    let n = header.get(&key)?.as_u64()?;
    Some((key, usize::try_from(n).ok()?))
}

/// The keys llama-quantize records for an importance matrix (each set as gguf does: removed,
/// then appended); strings are cut to 127 bytes as llama.cpp's override buffer cuts them.
fn record_imatrix(metadata: &mut Vec<(String, Value)>, m: &Imatrix, file: &str) {
    let cut = |s: &str| s.as_bytes()[..s.len().min(127)].to_vec();
    let mut set = |key: &str, v: Value| {
        metadata.retain(|(k, _)| k != key);
        metadata.push((key.to_string(), v));
    };
    set("quantize.imatrix.file", Value::String(cut(file)));
    if let Some(first) = m.datasets.first() {
        set("quantize.imatrix.dataset", Value::String(cut(first)));
    }
    set(
        "quantize.imatrix.entries_count",
        Value::U32(m.entries.len() as u32),
    );
    if m.chunk_count > 0 {
        set("quantize.imatrix.chunks_count", Value::U32(m.chunk_count));
    }
}

/// The importance vector(s) for a tensor: `ne0` values per matrix. A token embedding whose
/// entry has the wrong size gets none (llama.cpp ignores it); any other tensor is an error.
fn importance<'a>(
    m: Option<&'a Imatrix>,
    name: &str,
    dims: &[u64],
) -> Result<Option<&'a [f32]>, String> {
    let Some(values) = m.and_then(|m| m.entries.get(name)) else {
        return Ok(None);
    };
    let want = dims[0] * dims.get(2).copied().unwrap_or(1);
    if values.len() as u64 == want {
        Ok(Some(values))
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        Ok(None)
    } else {
        Err(format!(
            "the importance matrix has {} values for tensor '{name}', which needs {want}",
            values.len()
        ))
    }
}

/// The dims llama.cpp writes: `ggml_n_dims` of them, trailing 1s dropped (at least one kept).
fn ggml_dims(dims: &[u64]) -> Vec<u64> {
    let n = dims.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
    let mut out = dims[..n.min(dims.len())].to_vec();
    if out.is_empty() {
        out.push(1);
    }
    out
}

fn check_conversion(
    name: &str,
    from: GgmlType,
    to: GgmlType,
    requantize: bool,
) -> Result<(), String> {
    if from == to {
        return Ok(());
    }
    let float = matches!(from, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
    if !float && !requantize {
        return Err(format!(
            "tensor '{name}' is already {from}; converting it to {to} needs --allow-requantize"
        ));
    }
    if !from.can_dequantize() {
        return Err(format!(
            "tensor '{name}': zeropoint cannot read {from} tensors"
        ));
    }
    if !to.can_quantize() {
        return Err(format!(
            "tensor '{name}': zeropoint cannot write {to} tensors"
        ));
    }
    Ok(())
}

/// The model at `path`: a Hugging Face checkpoint (a folder, or its config.json), converted as
/// it is read, else a GGUF file.
pub fn open_input(path: &Path, checkpoint: &crate::hf::Options) -> Result<Box<dyn Input>> {
    Ok(if crate::hf::is_checkpoint(path) {
        Box::new(crate::hf::Checkpoint::open(path, checkpoint)?)
    } else {
        Box::new(crate::read::GgufFile::open(path)?)
    })
}

/// Quantizes `input` into `output` and returns the plan it followed (with AWQ, its metadata
/// then also holds `quantize.awq.alphas`: the α chosen for each group of matrices searched, in
/// the order of the layers: q/k/v, down, gate/up; 0 where scaling did not help; and, with the
/// clipping search, `quantize.awq.clipped_groups`: weight groups clipped, of those searched). `on_layer(done, layers)`
/// is called after each layer of GPTQ's calibration, `on_tensor` after each tensor is written
/// (for progress bars).
pub fn quantize(
    input: &dyn Input,
    output: &Path,
    opts: &Options,
    mut on_layer: impl FnMut(usize, usize),
    mut on_tensor: impl FnMut(&PlannedTensor),
) -> Result<Plan> {
    refuse_overwrite(input.path(), output)?;
    let mut plan = plan(input.header(), opts).map_err(|m| Error::invalid(input.path(), m))?;
    let imatrix = opts.imatrix.as_ref().map(|(m, _)| m);
    let calibrated = match &opts.calibration {
        Some(c) => {
            let done = calibrated(input, &plan, c, &mut on_layer)?;
            if c.awq {
                let alphas = done.alphas.into_iter().map(Value::F32).collect();
                let key = "quantize.awq.alphas".to_string();
                plan.metadata
                    .push((key, Value::Array(Value::F32(0.0).type_id(), alphas)));
            }
            if c.clips() {
                let counts = done.clipped.into_iter().map(Value::U64).collect();
                let key = "quantize.awq.clipped_groups".to_string();
                plan.metadata
                    .push((key, Value::Array(Value::U64(0).type_id(), counts)));
            }
            done.bytes
        }
        None => HashMap::new(),
    };
    let new: Vec<NewTensor> = plan.tensors.iter().map(new_tensor).collect();
    write::write(output, &plan.metadata, &new, |i, out| {
        let t = &plan.tensors[i];
        match calibrated.get(&t.name) {
            Some(bytes) => out.write_all(bytes)?,
            None => convert(input, t, imatrix, out)?,
        }
        on_tensor(t);
        Ok(())
    })?;
    Ok(plan)
}

/// What calibration wrote: each calibrated tensor's bytes by name, AWQ's α per group, and how
/// many weight groups its clipping search clipped, of how many searched.
struct Calibrated {
    bytes: HashMap<String, Vec<u8>>,
    alphas: Vec<f32>,
    clipped: [u64; 2],
}

/// AWQ and GPTQ (or weighted rounding) over the model's layers in order, each calibrated on what
/// the quantized layers before it produce: the bytes of every linear layer of the transformer
/// blocks, and of the normalization weights AWQ rescaled; and the α AWQ chose for each group. Tensors whose type GPTQ cannot write,
/// or whose rows are not whole blocks of it, are rounded weighted by their input's mean square
/// (their Hessian's diagonal), and that is what the later layers see.
fn calibrated(
    input: &dyn Input,
    plan: &Plan,
    c: &Calibration,
    on_layer: &mut dyn FnMut(usize, usize),
) -> Result<Calibrated> {
    let mut done: HashMap<String, Vec<u8>> = HashMap::new();
    let mut alphas = Vec::new();
    let mut clipped = [0u64; 2];
    let n_layer = crate::llama::Hparams::from_header(input.header())
        .map_err(|m| Error::invalid(input.path(), m))?
        .n_layer;
    let planned = |name: &str| plan.tensors.iter().find(|t| t.name == name);
    let mut quantize = |name: &str, w: &[f32], rows: usize, cols: usize, h: &[f64]| {
        let Some(t) = planned(name) else {
            return Ok(w.to_vec());
        };
        let fail = |m: String| format!("tensor '{name}': {m}");
        let clip = c.clips() && clippable(name, t.to, cols);
        let w = if clip {
            let importance = hessian_importance(h, cols);
            let found = crate::awq::clip(t.to, w, cols, h, &importance).map_err(fail)?;
            clipped[0] += found.clipped as u64;
            clipped[1] += found.groups as u64;
            std::borrow::Cow::Owned(found.w)
        } else {
            std::borrow::Cow::Borrowed(w)
        };
        let bytes = quantize_calibrated(t.to, (&w, rows, cols), h, c).map_err(fail)?;
        let back = ggml::dequantize_rows(t.to, &bytes, cols).map_err(|e| fail(e.to_string()))?;
        done.insert(name.to_string(), bytes);
        Ok(back)
    };
    let mut awq = |matrices: &[(&str, &[f32])], cols: usize, abs_mean: &[f64], h: &[f64]| {
        let mut found = Vec::new();
        for (name, w) in matrices {
            match planned(name) {
                Some(t) if is_block_format(t.to) && cols.is_multiple_of(t.to.block_size()) => {
                    found.push(crate::awq::Matrix { ty: t.to, w })
                }
                _ => return Ok(None),
            }
        }
        let best = crate::awq::search(&found, cols, abs_mean, h)?;
        alphas.push(best.alpha as f32);
        Ok((best.alpha > 0.0).then_some(best.scales))
    };
    let awq: Option<&mut crate::llama::ScaleFn> = if c.awq { Some(&mut awq) } else { None };
    let norms = crate::llama::calibrate(input, &c.chunks, &mut quantize, awq, |l| {
        on_layer(l + 1, n_layer)
    })
    .map_err(|m| Error::invalid(input.path(), m))?;
    for (name, v) in norms {
        let t = planned(&name).expect("the model's own tensor");
        let bytes = ggml::quantize_rows(t.to, &v, v.len())
            .map_err(|e| Error::tensor(input.path(), &name, e.to_string()))?;
        done.insert(name, bytes);
    }
    Ok(Calibrated {
        bytes: done,
        alphas,
        clipped,
    })
}

/// Whether AWQ's clipping search runs on tensor `name`: a block format, whole groups, and not
/// the query or key projection (their error passes through the attention scores' product, which
/// the search's per-layer error does not see; AWQ's reference code skips them too).
fn clippable(name: &str, ty: GgmlType, cols: usize) -> bool {
    let qk = [".attn_q.", ".attn_k.", ".attn_qkv."];
    is_block_format(ty)
        && cols.is_multiple_of(crate::awq::CLIP_GROUP)
        && cols.is_multiple_of(ty.block_size())
        && !qk.iter().any(|p| name.contains(p))
}

fn is_block_format(ty: GgmlType) -> bool {
    !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// One calibrated matrix in its planned type: GPTQ where asked and possible, else rounding
/// weighted by the Hessian's diagonal (a float type is a plain conversion: AWQ may have
/// rescaled the weights, so they are written, not copied).
fn quantize_calibrated(
    ty: GgmlType,
    (w, rows, cols): (&[f32], usize, usize),
    h: &[f64],
    c: &Calibration,
) -> Result<Vec<u8>, String> {
    let whole_blocks = cols.is_multiple_of(ty.block_size());
    if c.gptq && ggml::gptq::code_bits(ty).is_some() && whole_blocks {
        let opts = ggml::gptq::Options {
            damp: c.damp,
            act_order: c.act_order,
        };
        return ggml::gptq::gptq_rows(ty, (w, rows, cols), h, opts);
    }
    ggml::quantize_rows_weighted(ty, w, cols, &hessian_importance(h, cols))
        .map_err(|e| e.to_string())
}

/// The importance a calibrated matrix is rounded with: its input's mean square per column, the
/// Hessian's diagonal (what llama-imatrix measures).
fn hessian_importance(h: &[f64], cols: usize) -> Vec<f32> {
    (0..cols).map(|j| h[j * cols + j] as f32).collect()
}

/// Writes one tensor in its new type, a slab of rows at a time (experts one after another, each
/// with its own importance vector).
fn convert(
    input: &dyn Input,
    t: &PlannedTensor,
    imatrix: Option<&Imatrix>,
    out: &mut dyn Write,
) -> Result<()> {
    let bytes = input.data(t.input)?;
    if t.from == t.to {
        return Ok(out.write_all(&bytes)?);
    }
    let fail = |m: String| Error::tensor(input.path(), &t.name, m);
    let importance = importance(imatrix, &t.name, &t.dims).map_err(fail)?;
    let row = t.dims.first().copied().unwrap_or(1) as usize;
    let row_bytes = t
        .from
        .row_size(row)
        .expect("checked when the file was read");
    let n_mat = t.dims.get(2).copied().unwrap_or(1).max(1) as usize;
    let rows_per_slab = (SLAB_ELEMENTS as usize / row.max(1)).max(1);
    let mat_bytes = bytes.len() / n_mat;
    for (m, mat) in bytes.chunks(mat_bytes.max(1)).enumerate() {
        let qw = importance.map(|v| &v[m * row..(m + 1) * row]);
        for (s, chunk) in mat.chunks(rows_per_slab * row_bytes.max(1)).enumerate() {
            let first = m * mat_bytes / row_bytes.max(1) * row + s * rows_per_slab * row;
            let located = |e: ggml::GgmlError| match e {
                ggml::GgmlError::NonFinite { index, value } => fail(format!(
                    "element {} is {value}: ggml's quantizers need finite values",
                    first + index
                )),
                other => fail(other.to_string()),
            };
            let x = ggml::dequantize_rows(t.from, chunk, row).map_err(located)?;
            let q = match qw {
                Some(qw) => ggml::quantize_rows_weighted(t.to, &x, row, qw),
                None => ggml::quantize_rows(t.to, &x, row),
            }
            .map_err(located)?;
            out.write_all(&q)?;
        }
    }
    Ok(())
}

fn refuse_overwrite(input: &Path, output: &Path) -> Result<()> {
    let same = match (input.canonicalize(), output.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(Error::invalid(
            output,
            "is the input file; zeropoint never overwrites its input",
        ));
    }
    Ok(())
}
