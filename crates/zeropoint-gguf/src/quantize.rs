//! The `llama-quantize` job: every tensor of a GGUF file converted to the type the preset's rules
//! give it, metadata carried over with llama.cpp's two additions, tensors in llama.cpp's order,
//! written atomically and one slab of rows at a time.

use std::io::Write;
use std::path::Path;

use zeropoint_core::ggml::{self, GgmlType};

use crate::error::{Error, Result};
use crate::preset::{self, Counters, ModelFacts, Preset};
use crate::read::{GgufFile, Header};
use crate::value::Value;
use crate::write::{self, NewTensor};

/// ggml's `GGML_QNT_VERSION`, stored as `general.quantization_version`.
pub const QUANTIZATION_VERSION: u32 = 2;

/// Keys llama-quantize drops: it writes one file, not shards.
const SPLIT_KEYS: [&str; 3] = ["split.no", "split.count", "split.tensors.count"];

/// Rows are converted in slabs of about this many elements, which bounds the memory a tensor
/// takes whatever its size.
const SLAB_ELEMENTS: u64 = 1 << 24;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub preset: Preset,
    /// Every quantizable tensor gets the preset's default type (llama-quantize's `--pure`).
    pub pure: bool,
    /// Allow converting tensors that are already quantized (llama-quantize's
    /// `--allow-requantize`): they are dequantized first, which compounds the error.
    pub allow_requantize: bool,
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
            .map(|t| new_tensor(t).byte_size_of())
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
    let mut tensors = Vec::with_capacity(order.len());
    for i in order {
        let t = &header.tensors[i];
        let to = if preset::allows_quantization(&t.name, &t.dims) {
            preset::tensor_type(
                opts.preset,
                opts.pure,
                &facts,
                &mut counters,
                &t.name,
                &t.dims,
            )?
        } else {
            t.ty
        };
        check_conversion(&t.name, t.ty, to, opts.allow_requantize)?;
        tensors.push(PlannedTensor {
            input: i,
            name: t.name.clone(),
            dims: t.dims.clone(),
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
    Ok(Plan { metadata, tensors })
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

/// Quantizes `input` into `output` and returns the plan it followed. `on_tensor` is called after
/// each tensor is written (for a progress bar).
pub fn quantize(
    input: &GgufFile,
    output: &Path,
    opts: &Options,
    mut on_tensor: impl FnMut(&PlannedTensor),
) -> Result<Plan> {
    refuse_overwrite(&input.path, output)?;
    let plan = plan(&input.header, opts).map_err(|m| Error::invalid(&input.path, m))?;
    let new: Vec<NewTensor> = plan.tensors.iter().map(new_tensor).collect();
    write::write(output, &plan.metadata, &new, |i, out| {
        let t = &plan.tensors[i];
        convert(input, t, out)?;
        on_tensor(t);
        Ok(())
    })?;
    Ok(plan)
}

/// Writes one tensor in its new type, a slab of rows at a time.
fn convert(input: &GgufFile, t: &PlannedTensor, out: &mut dyn Write) -> Result<()> {
    let bytes = input.data(t.input);
    let io = |e| Error::Io {
        path: input.path.clone(),
        action: "write the output",
        source: e,
    };
    if t.from == t.to {
        return out.write_all(bytes).map_err(io);
    }
    let row = t.dims.first().copied().unwrap_or(1) as usize;
    let row_bytes = t
        .from
        .row_size(row)
        .expect("checked when the file was read");
    let rows_per_slab = (SLAB_ELEMENTS as usize / row.max(1)).max(1);
    let fail = |slab: usize, e: ggml::GgmlError| {
        let message = match e {
            ggml::GgmlError::NonFinite { index, value } => {
                format!(
                    "element {} is {value}: ggml's quantizers need finite values",
                    slab * rows_per_slab * row + index
                )
            }
            other => other.to_string(),
        };
        Error::tensor(&input.path, &t.name, message)
    };
    for (s, chunk) in bytes.chunks(rows_per_slab * row_bytes.max(1)).enumerate() {
        let x = ggml::dequantize_rows(t.from, chunk, row).map_err(|e| fail(s, e))?;
        let q = ggml::quantize_rows(t.to, &x, row).map_err(|e| fail(s, e))?;
        out.write_all(&q).map_err(io)?;
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
