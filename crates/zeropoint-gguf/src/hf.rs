//! Hugging Face checkpoints of Llama-family models as input: a folder with `config.json`, the
//! weights in `model.safetensors` (or the shards `model.safetensors.index.json` lists) and the
//! tokenizer files. It becomes what llama.cpp's `convert_hf_to_gguf.py` would write for the
//! `llama` architecture (hyperparameters, tokenizer, tensor names, the rotary permutation of the
//! query and key rows) without an intermediate file: [`crate::quantize`] reads each tensor
//! straight from the memory-mapped safetensors.
//!
//! 1-D tensors (norms, biases) are handed over as F32, as the converter always writes them; the
//! others keep the checkpoint's F32, F16 or BF16, which ggml stores with the same bytes.

use std::borrow::Cow;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use zeropoint_core::ggml::{self, GgmlType};
use zeropoint_onnx::safetensors;
use zeropoint_onnx::tensor::DType;

use crate::error::{Error, Result};
use crate::input::Input;
use crate::json::read_json;
use crate::read::{Header, TensorInfo, DEFAULT_ALIGNMENT};
use crate::tokenizer;
use crate::value::Value;

/// The `architectures` that map onto llama.cpp's `llama` (dense models only).
const LLAMA_ARCHITECTURES: [&str; 3] =
    ["LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM"];

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// llama.cpp's name for the BPE pre-tokenizer (`tokenizer.ggml.pre`), for tokenizers whose
    /// pre-tokenizer [`tokenizer`] does not recognise.
    pub tokenizer_pre: Option<String>,
}

/// An opened checkpoint: the GGUF header it becomes and where each tensor's bytes come from.
pub struct Checkpoint {
    dir: PathBuf,
    header: Header,
    shards: Vec<(PathBuf, memmap2::Mmap)>,
    sources: Vec<Source>,
}

enum Source {
    Stored {
        shard: usize,
        range: Range<usize>,
        dtype: DType,
        /// Heads whose rows are reordered from Hugging Face's rotary layout to ggml's.
        rope_heads: Option<usize>,
    },
    Computed(Vec<u8>),
}

/// The facts of `config.json` the conversion uses.
struct Config {
    n_layer: usize,
    n_head: usize,
    n_head_kv: usize,
    vocab_size: Option<usize>,
    json: Json,
}

/// True when `path` looks like a Hugging Face checkpoint (a folder with a `config.json`, or that
/// file itself) rather than a GGUF file.
pub fn is_checkpoint(path: &Path) -> bool {
    path.is_dir() || path.file_name().is_some_and(|n| n == "config.json")
}

impl Checkpoint {
    pub fn open(path: &Path, opts: &Options) -> Result<Checkpoint> {
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        let config = read_config(&dir.join("config.json"))?;
        let shards = map_shards(&dir)?;
        let mut header = Header {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
            alignment: DEFAULT_ALIGNMENT,
            data_offset: 0,
        };
        let mut sources = Vec::new();
        for (s, (file, map)) in shards.iter().enumerate() {
            for e in safetensors::index(map, file)? {
                let Some(name) = gguf_name(&e.name, config.n_layer)
                    .map_err(|m| Error::tensor(file, &e.name, m))?
                else {
                    continue;
                };
                let (info, source) = tensor(file, s, e, name, &config)?;
                header.tensors.push(info);
                sources.push(source);
            }
        }
        if let Some((info, data)) = rope_freqs(&config.json)? {
            header.tensors.push(info);
            sources.push(Source::Computed(data));
        }
        check_names(&dir, &header.tensors)?;
        header.metadata = metadata(&dir, &config, opts)?;
        Ok(Checkpoint {
            dir,
            header,
            shards,
            sources,
        })
    }
}

impl Input for Checkpoint {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn header(&self) -> &Header {
        &self.header
    }

    fn data(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        let (shard, range, dtype, rope_heads) = match &self.sources[i] {
            Source::Computed(bytes) => return Ok(Cow::Borrowed(bytes)),
            Source::Stored {
                shard,
                range,
                dtype,
                rope_heads,
            } => (*shard, range.clone(), *dtype, *rope_heads),
        };
        let t = &self.header.tensors[i];
        let mut bytes = Cow::Borrowed(&self.shards[shard].1[range]);
        if let Some(heads) = rope_heads {
            // Rows in Hugging Face's sense (the outer axis): single elements for a bias.
            let rows = *t.dims.last().expect("indexed tensors have dims") as usize;
            bytes = Cow::Owned(unrotate_rows(&bytes, heads, bytes.len() / rows));
        }
        let stored = ggml_type(dtype).expect("checked when the tensor was indexed");
        if stored != t.ty {
            // A 1-D tensor widened to F32.
            let x = ggml::dequantize_rows(stored, &bytes, t.row_len() as usize)
                .map_err(|e| Error::tensor(&self.shards[shard].0, &t.name, e.to_string()))?;
            bytes = Cow::Owned(x.iter().flat_map(|v| v.to_le_bytes()).collect());
        }
        Ok(bytes)
    }
}

fn read_config(path: &Path) -> Result<Config> {
    let json = read_json(path)?;
    let bad = |m: String| Error::invalid(path, m);
    let arch = json["architectures"][0].as_str().unwrap_or_default();
    if !LLAMA_ARCHITECTURES.contains(&arch) {
        return Err(bad(format!(
            "architecture '{arch}' is not supported: zeropoint converts {} checkpoints (llama.cpp's \
             'llama'); convert others with convert_hf_to_gguf.py and pass the GGUF file",
            LLAMA_ARCHITECTURES.join(", ")
        )));
    }
    for moe in ["num_local_experts", "num_experts"] {
        if json[moe].as_u64().is_some_and(|n| n > 0) {
            return Err(bad(format!(
                "'{moe}' says this is a mixture of experts, which zeropoint does not convert yet"
            )));
        }
    }
    let count = |key: &str| -> Result<usize> {
        json[key]
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| bad(format!("'{key}' is missing or not a positive integer")))
    };
    let n_layer = count("num_hidden_layers")?;
    let n_head = count("num_attention_heads")?;
    let n_head_kv = if json["num_key_value_heads"].is_null() {
        n_head
    } else {
        count("num_key_value_heads")?
    };
    count("hidden_size")?;
    if !n_head.is_multiple_of(n_head_kv) {
        return Err(bad(format!(
            "{n_head} attention heads cannot share {n_head_kv} key/value heads evenly"
        )));
    }
    Ok(Config {
        n_layer,
        n_head,
        n_head_kv,
        vocab_size: json["vocab_size"].as_u64().map(|n| n as usize),
        json,
    })
}

/// Memory-maps `model.safetensors`, or every shard `model.safetensors.index.json` names (each
/// once, in the order of first mention).
fn map_shards(dir: &Path) -> Result<Vec<(PathBuf, memmap2::Mmap)>> {
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index.is_file() {
        let json = read_json(&index)?;
        let map = json["weight_map"]
            .as_object()
            .ok_or_else(|| Error::invalid(&index, "has no 'weight_map' object"))?;
        let mut files: Vec<PathBuf> = Vec::new();
        for (tensor, file) in map {
            let file = file
                .as_str()
                .filter(|f| !f.contains(['/', '\\']))
                .ok_or_else(|| {
                    Error::invalid(
                        &index,
                        format!("tensor '{tensor}': not a file name in this folder"),
                    )
                })?;
            let file = dir.join(file);
            if !files.contains(&file) {
                files.push(file);
            }
        }
        files
    } else if dir.join("model.safetensors").is_file() {
        vec![dir.join("model.safetensors")]
    } else {
        return Err(Error::invalid(
            dir,
            "has neither model.safetensors nor model.safetensors.index.json \
             (PyTorch .bin checkpoints are not read: save the model with safetensors)",
        ));
    };
    files
        .into_iter()
        .map(|path| {
            let io = |action, source| Error::Io {
                path: path.clone(),
                action,
                source,
            };
            let file = File::open(&path).map_err(|e| io("open", e))?;
            // SAFETY: read-only map; see `GgufFile::open`.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io("map", e))?;
            Ok((path, map))
        })
        .collect()
}

/// llama.cpp's name for a Hugging Face tensor of a Llama model, `None` for tensors the
/// converter drops (precomputed rotary frequencies).
fn gguf_name(name: &str, n_layer: usize) -> Result<Option<String>, String> {
    if name.ends_with(".rotary_emb.inv_freq") {
        return Ok(None);
    }
    let fixed = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Ok(Some(n.to_string()));
    }
    let unknown = || "has no place in llama.cpp's llama architecture".to_string();
    let rest = name.strip_prefix("model.layers.").ok_or_else(unknown)?;
    let (layer, rest) = rest.split_once('.').ok_or_else(unknown)?;
    let layer: usize = layer.parse().map_err(|_| unknown())?;
    if layer >= n_layer {
        return Err(format!(
            "layer {layer} is past num_hidden_layers = {n_layer} in config.json"
        ));
    }
    let (module, kind) = rest.rsplit_once('.').ok_or_else(unknown)?;
    let gguf = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return Err(unknown()),
    };
    if kind != "weight" && kind != "bias" {
        return Err(unknown());
    }
    Ok(Some(format!("blk.{layer}.{gguf}.{kind}")))
}

fn ggml_type(dtype: DType) -> Option<GgmlType> {
    match dtype {
        DType::F32 => Some(GgmlType::F32),
        DType::F16 => Some(GgmlType::F16),
        DType::BF16 => Some(GgmlType::BF16),
        _ => None,
    }
}

/// The header entry and data source of one checkpoint tensor.
fn tensor(
    file: &Path,
    shard: usize,
    e: safetensors::Entry,
    name: String,
    config: &Config,
) -> Result<(TensorInfo, Source)> {
    let bad = |m: String| Error::tensor(file, &e.name, m);
    let stored = ggml_type(e.dtype).ok_or_else(|| {
        bad(format!(
            "is {}; only F32, F16 and BF16 weights convert",
            e.dtype
        ))
    })?;
    if e.shape.is_empty() || e.shape.len() > 2 || e.shape.contains(&0) {
        return Err(bad(format!(
            "has shape {:?}; llama weights have 1 or 2 non-empty axes",
            e.shape
        )));
    }
    let rows = e.shape[0];
    let rope_heads = if name.contains(".attn_q.") {
        Some(config.n_head)
    } else if name.contains(".attn_k.") {
        Some(config.n_head_kv)
    } else {
        None
    };
    if let Some(heads) = rope_heads {
        if !rows.is_multiple_of(2 * heads) {
            return Err(bad(format!(
                "{rows} rows do not split into {heads} heads of an even size"
            )));
        }
    }
    let dims: Vec<u64> = e.shape.iter().rev().map(|&d| d as u64).collect();
    let ty = if dims.len() == 1 {
        GgmlType::F32
    } else {
        stored
    };
    if ty.row_size(dims[0] as usize).is_none() {
        return Err(bad(format!("cannot be stored as {ty}")));
    }
    let info = TensorInfo {
        name,
        dims,
        ty,
        offset: 0,
    };
    let source = Source::Stored {
        shard,
        range: e.range,
        dtype: e.dtype,
        rope_heads,
    };
    Ok((info, source))
}

/// Reorders query/key rows from Hugging Face's rotary layout (each head's first half of
/// dimensions, then its second half) to ggml's interleaved pairs: the converter's `permute`,
/// `reshape(heads, 2, dim/2, ...).swapaxes(1, 2)`.
fn unrotate_rows(bytes: &[u8], heads: usize, row_bytes: usize) -> Vec<u8> {
    let rows = bytes.len() / row_bytes;
    let half = rows / heads / 2;
    let mut out = Vec::with_capacity(bytes.len());
    for h in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                let r = (h * 2 + t) * half + j;
                out.extend_from_slice(&bytes[r * row_bytes..(r + 1) * row_bytes]);
            }
        }
    }
    out
}

/// Two tensors may not share a name, and every tensor llama.cpp's llama loader requires must be
/// there.
fn check_names(dir: &Path, tensors: &[TensorInfo]) -> Result<()> {
    let mut names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::invalid(
            dir,
            format!("two checkpoint tensors both become '{}'", w[0]),
        ));
    }
    for required in ["token_embd.weight", "output_norm.weight"] {
        if names.binary_search(&required).is_err() {
            return Err(Error::invalid(
                dir,
                format!("the checkpoint has no tensor that becomes '{required}'"),
            ));
        }
    }
    Ok(())
}

/// `rope_parameters` (transformers 5) or `rope_scaling`, with the converter's fallbacks.
fn rope_params(json: &Json) -> (Option<&str>, &Json) {
    let p = if json["rope_parameters"].is_object() {
        &json["rope_parameters"]
    } else {
        &json["rope_scaling"]
    };
    let ty = p["rope_type"].as_str().or_else(|| p["type"].as_str());
    (ty, p)
}

fn rope_theta(json: &Json) -> Option<f64> {
    json["rope_theta"]
        .as_f64()
        .or_else(|| rope_params(json).1["rope_theta"].as_f64())
}

fn head_dim(json: &Json) -> usize {
    json["head_dim"].as_u64().map_or_else(
        || {
            let hidden = json["hidden_size"].as_u64().unwrap_or(0);
            let heads = json["num_attention_heads"].as_u64().unwrap_or(1).max(1);
            (hidden / heads) as usize
        },
        |d| d as usize,
    )
}

/// Llama 3's frequency factors, computed in f32 as the converter's torch code does.
fn rope_freqs(json: &Json) -> Result<Option<(TensorInfo, Vec<u8>)>> {
    let (ty, p) = rope_params(json);
    if !ty.is_some_and(|t| t.eq_ignore_ascii_case("llama3")) {
        return Ok(None);
    }
    let base = rope_theta(json).unwrap_or(10000.0) as f32;
    let dim = head_dim(json);
    let get = |k: &str, d: f64| p[k].as_f64().unwrap_or(d) as f32;
    let factor = get("factor", 8.0);
    let low = get("low_freq_factor", 1.0);
    let high = get("high_freq_factor", 4.0);
    let old_ctx = get("original_max_position_embeddings", 8192.0);
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    let factors: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0 / base.powf(i as f32 / dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect();
    let info = TensorInfo {
        name: "rope_freqs.weight".into(),
        dims: vec![factors.len() as u64],
        ty: GgmlType::F32,
        offset: 0,
    };
    Ok(Some((
        info,
        factors.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )))
}

/// The converter's metadata for a llama model: `general.*`, the hyperparameters, the tokenizer.
fn metadata(dir: &Path, config: &Config, opts: &Options) -> Result<Vec<(String, Value)>> {
    let json = &config.json;
    let config_path = dir.join("config.json");
    let mut m: Vec<(String, Value)> = Vec::new();
    let mut put = |k: &str, v: Value| m.push((k.to_string(), v));
    let string = |s: &str| Value::String(s.as_bytes().to_vec());
    let u32_of = |key: &str| json[key].as_u64().map(|n| Value::U32(n as u32));
    put("general.architecture", string("llama"));
    put("general.type", string("model"));
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    if !name.is_empty() {
        put("general.name", string(&name));
    }
    put("llama.block_count", Value::U32(config.n_layer as u32));
    for (key, hf) in [
        ("llama.context_length", "max_position_embeddings"),
        ("llama.embedding_length", "hidden_size"),
        ("llama.feed_forward_length", "intermediate_size"),
        ("llama.attention.head_count", "num_attention_heads"),
        ("llama.attention.head_count_kv", "num_key_value_heads"),
    ] {
        if let Some(v) = u32_of(hf) {
            put(key, v);
        }
    }
    let (rope_type, rope) = rope_params(json);
    match rope_type {
        None | Some("default") | Some("llama3") | Some("Llama3") => {}
        Some("linear") => {
            if let Some(f) = rope["factor"].as_f64() {
                put("llama.rope.scaling.type", string("linear"));
                put("llama.rope.scaling.factor", Value::F32(f as f32));
            }
        }
        Some(other) => {
            return Err(Error::invalid(
                &config_path,
                format!("rope type '{other}' is not supported (default, linear and llama3 are)"),
            ))
        }
    }
    if let Some(theta) = rope_theta(json) {
        put("llama.rope.freq_base", Value::F32(theta as f32));
    }
    if let Some(eps) = json["rms_norm_eps"].as_f64() {
        put(
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(eps as f32),
        );
    }
    if let Some(d) = u32_of("head_dim") {
        put("llama.attention.key_length", d.clone());
        put("llama.attention.value_length", d);
    }
    if let Some(v) = config.vocab_size {
        put("llama.vocab_size", Value::U32(v as u32));
    }
    put(
        "llama.rope.dimension_count",
        Value::U32(head_dim(json) as u32),
    );
    m.extend(tokenizer::metadata(
        dir,
        json,
        opts.tokenizer_pre.as_deref(),
    )?);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_cpp() {
        let n = |s| gguf_name(s, 4);
        assert_eq!(
            n("model.embed_tokens.weight").unwrap().unwrap(),
            "token_embd.weight"
        );
        assert_eq!(
            n("model.layers.3.self_attn.k_proj.bias").unwrap().unwrap(),
            "blk.3.attn_k.bias"
        );
        assert_eq!(
            n("model.layers.0.mlp.down_proj.weight").unwrap().unwrap(),
            "blk.0.ffn_down.weight"
        );
        assert_eq!(
            n("model.layers.1.self_attn.rotary_emb.inv_freq").unwrap(),
            None
        );
        assert!(n("model.layers.4.mlp.up_proj.weight")
            .unwrap_err()
            .contains("past num_hidden_layers"));
        assert!(n("vision_tower.x.weight").unwrap_err().contains("no place"));
    }

    #[test]
    fn unrotation_matches_the_converters_permute() {
        // 2 heads of dimension 4, one byte per row: HF row order per head is [x0 x1 | y0 y1],
        // ggml's is [x0 y0 x1 y1].
        let rows: Vec<u8> = (0..8).collect();
        assert_eq!(unrotate_rows(&rows, 2, 1), vec![0, 2, 1, 3, 4, 6, 5, 7]);
        // Rows of 3 bytes move as a whole.
        let rows: Vec<u8> = (0..12).collect();
        assert_eq!(
            unrotate_rows(&rows, 1, 3),
            vec![0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11]
        );
    }
}
