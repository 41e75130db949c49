//! A Hugging Face checkpoint's tokenizer as llama.cpp's metadata (`tokenizer.ggml.*`,
//! `tokenizer.chat_template`), as `convert_hf_to_gguf.py` writes it for Llama models: the
//! SentencePiece `tokenizer.model` (llama.cpp's "llama" tokenizer) when the folder has one,
//! otherwise the byte-level BPE of `tokenizer.json` ("gpt2"); special tokens from
//! `tokenizer_config.json`, `tokenizer.json`'s added tokens and `config.json` (gguf-py's
//! `SpecialVocab`).
//!
//! One thing is decided differently: the converter names a BPE pre-tokenizer by hashing what the
//! Hugging Face tokenizer makes of a test string, which needs the `transformers` library; here it
//! is recognised from the pre-tokenizer's description in `tokenizer.json` (the regular
//! expressions llama.cpp implements), and a tokenizer that is not recognised is refused with the
//! option to name it.

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::json::read_optional;
use crate::value::{Value, TYPE_STRING};

/// gguf's token types (`gguf.TokenType`, SentencePiece's numbering).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

const TYPE_I32: u32 = 5;
const TYPE_F32: u32 = 6;

/// The special tokens gguf-py looks up, and the key each is stored under.
const SPECIAL: [(&str, &str); 7] = [
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    ("sep", "tokenizer.ggml.seperator_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"),
    ("cls", "tokenizer.ggml.cls_token_id"),
    ("mask", "tokenizer.ggml.mask_token_id"),
];

/// Hugging Face's split patterns and llama.cpp's names for them (`tokenizer.ggml.pre`).
const SPLIT_PATTERNS: [(&str, &str); 2] = [
    (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        "llama-bpe",
    ),
    (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        "qwen2",
    ),
];

/// The tokenizer metadata of the checkpoint in `dir`, whose `config.json` is `config`. Its
/// `vocab_size` is the embedding's rows, which may outnumber the tokenizer's tokens (the rest
/// become `[PAD<i>]`).
pub fn metadata(dir: &Path, config: &Json, pre: Option<&str>) -> Result<Vec<(String, Value)>> {
    let vocab_size = config["vocab_size"].as_u64().map(|n| n as usize);
    let mut m = Vec::new();
    let tokenizer_config = read_optional(&dir.join("tokenizer_config.json"))?;
    let tokenizer_json = read_optional(&dir.join("tokenizer.json"))?;
    if let Some(b) = tokenizer_config
        .as_ref()
        .and_then(|c| c["add_prefix_space"].as_bool())
    {
        m.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(b)));
    }
    let sp_model = dir.join("tokenizer.model");
    let special_n_vocab;
    if sp_model.is_file() {
        let v = sentencepiece_vocab(&sp_model, vocab_size, tokenizer_config.as_ref(), dir)?;
        special_n_vocab = Some(v.tokens.len());
        m.push(string("tokenizer.ggml.model", "llama"));
        m.push(string("tokenizer.ggml.pre", "default"));
        m.push(strings("tokenizer.ggml.tokens", v.tokens));
        let scores = v.scores.into_iter().map(Value::F32).collect();
        m.push((
            "tokenizer.ggml.scores".into(),
            Value::Array(TYPE_F32, scores),
        ));
        m.push(types(v.types));
    } else {
        let path = dir.join("tokenizer.json");
        let json = tokenizer_json
            .as_ref()
            .ok_or_else(|| Error::invalid(dir, "has neither tokenizer.model nor tokenizer.json"))?;
        let v = bpe_vocab(&path, json, vocab_size)?;
        let pre = match pre {
            Some(p) => p.to_string(),
            None => pre_tokenizer(&json["pre_tokenizer"]).map(str::to_string).ok_or_else(|| {
                Error::invalid(
                    &path,
                    format!(
                        "zeropoint does not know llama.cpp's name for this pre-tokenizer ({}): \
                         pass --tokenizer-pre NAME, the tokenizer.ggml.pre that \
                         convert_hf_to_gguf.py gives this model (llama-bpe, qwen2, smollm, gpt2, ...)",
                        describe(&json["pre_tokenizer"])
                    ),
                )
            })?,
        };
        special_n_vocab = None;
        m.push(string("tokenizer.ggml.model", "gpt2"));
        m.push(string("tokenizer.ggml.pre", &pre));
        m.push(strings("tokenizer.ggml.tokens", v.tokens));
        m.push(types(v.types));
        m.push(strings("tokenizer.ggml.merges", merges(&path, json)?));
    }
    special_vocab(
        &mut m,
        dir,
        config,
        tokenizer_json.as_ref(),
        tokenizer_config,
        special_n_vocab,
    )?;
    Ok(m)
}

fn string(key: &str, v: &str) -> (String, Value) {
    (key.to_string(), Value::String(v.as_bytes().to_vec()))
}

fn strings(key: &str, items: Vec<String>) -> (String, Value) {
    let items = items
        .into_iter()
        .map(|s| Value::String(s.into_bytes()))
        .collect();
    (key.to_string(), Value::Array(TYPE_STRING, items))
}

fn types(types: Vec<i32>) -> (String, Value) {
    let items = types.into_iter().map(Value::I32).collect();
    (
        "tokenizer.ggml.token_type".into(),
        Value::Array(TYPE_I32, items),
    )
}

struct Vocab {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
}

/// gguf-py's `does_token_look_special`: added tokens some models forget to mark special.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Added tokens that are not special: llama.cpp expects their spaces pre-normalized.
fn user_defined(t: &str) -> String {
    t.replace('\u{2581}', " ")
}

/// `get_vocab_base`: the model's vocabulary and added tokens by id, gaps as `[PAD<i>]`.
fn bpe_vocab(path: &Path, json: &Json, vocab_size: Option<usize>) -> Result<Vocab> {
    let bad = |m: String| Error::invalid(path, m);
    let model = &json["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(bad(format!(
            "model type {} is not byte-level BPE, and there is no tokenizer.model",
            model["type"]
        )));
    }
    if model["byte_fallback"].as_bool() == Some(true) {
        return Err(bad(
            "is a SentencePiece-style BPE (byte_fallback) without its tokenizer.model, which \
             zeropoint does not convert yet: add the tokenizer.model"
                .into(),
        ));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not an object".into()))?;
    let mut by_id: Vec<(usize, String, Option<&Json>)> = Vec::with_capacity(vocab.len());
    for (token, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| bad(format!("token {token:?} has no integer id")))?;
        by_id.push((id as usize, token.clone(), None));
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
            return Err(bad(format!(
                "an added token lacks an id or content: {added}"
            )));
        };
        by_id.retain(|(i, t, _)| *i != id as usize && t != content);
        by_id.push((id as usize, content.to_string(), Some(added)));
    }
    let max_id = by_id.iter().map(|(i, _, _)| *i).max().unwrap_or(0);
    let n = vocab_size.unwrap_or(max_id + 1);
    if max_id >= n {
        return Err(bad(format!(
            "token id {max_id} is past vocab_size = {n} in config.json"
        )));
    }
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; n];
    for (id, token, added) in by_id {
        let entry = match added {
            None => (token, NORMAL),
            Some(a) if a["special"].as_bool() == Some(true) || looks_special(&token) => {
                (token, CONTROL)
            }
            Some(_) => (user_defined(&token), USER_DEFINED),
        };
        tokens[id] = Some(entry);
    }
    let (tokens, types) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED)))
        .unzip();
    Ok(Vocab {
        tokens,
        scores: Vec::new(),
        types,
    })
}

/// `tokenizer.json`'s merges as llama.cpp stores them: "left right", a space inside a part
/// written as U+0120 (the pair form of transformers ≥ 4.45 allows spaces).
fn merges(path: &Path, json: &Json) -> Result<Vec<String>> {
    let bad = || Error::invalid(path, "model.merges is neither strings nor pairs of strings");
    let Some(list) = json["model"]["merges"].as_array() else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) if pair.len() == 2 => {
                let part = |p: &Json| p.as_str().map(|s| s.replace(' ', "\u{0120}"));
                Ok(format!(
                    "{} {}",
                    part(&pair[0]).ok_or_else(bad)?,
                    part(&pair[1]).ok_or_else(bad)?
                ))
            }
            _ => Err(bad()),
        })
        .collect()
}

/// llama.cpp's name for a `tokenizer.json` pre-tokenizer, when it is one zeropoint knows.
fn pre_tokenizer(pre: &Json) -> Option<&'static str> {
    let byte_level = |p: &Json, regex: bool| {
        p["type"] == "ByteLevel" && p["use_regex"].as_bool().unwrap_or(true) == regex
    };
    if byte_level(pre, true) {
        return Some("gpt2");
    }
    let [first, second] = pre["pretokenizers"].as_array()?.as_slice() else {
        return None;
    };
    if pre["type"] != "Sequence" {
        return None;
    }
    if first["type"] == "Digits" && first["individual_digits"] == true && byte_level(second, true) {
        // StarCoder's and SmolLM's: llama.cpp tokenizes both alike.
        return Some("smollm");
    }
    if first["type"] == "Split" && byte_level(second, false) {
        let regex = first["pattern"]["Regex"].as_str()?;
        return SPLIT_PATTERNS
            .iter()
            .find(|(p, _)| *p == regex)
            .map(|(_, name)| *name);
    }
    None
}

/// A short description of a pre-tokenizer for an error message.
fn describe(pre: &Json) -> String {
    let one = |p: &Json| match p["type"].as_str() {
        Some("Split") => format!("Split {}", p["pattern"]),
        Some(t) => t.to_string(),
        None => p.to_string(),
    };
    match pre["pretokenizers"].as_array() {
        Some(list) => list.iter().map(one).collect::<Vec<_>>().join(" + "),
        None if pre.is_null() => "none".into(),
        None => one(pre),
    }
}

/// `_create_vocab_sentencepiece`: the model's pieces, then `added_tokens.json` and
/// `tokenizer_config.json`'s `added_tokens_decoder` over them.
fn sentencepiece_vocab(
    path: &Path,
    vocab_size: Option<usize>,
    tokenizer_config: Option<&Json>,
    dir: &Path,
) -> Result<Vocab> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        action: "read",
        source,
    })?;
    let pieces = sentencepiece_pieces(&bytes).map_err(|m| Error::invalid(path, m))?;
    let n = vocab_size.unwrap_or(pieces.len());
    let mut v = Vocab {
        tokens: (0..n).map(|i| format!("[PAD{i}]")).collect(),
        scores: vec![-10000.0; n],
        types: vec![UNUSED; n],
    };
    for (id, (piece, score, ty)) in pieces.into_iter().enumerate().take(n) {
        v.tokens[id] = piece;
        v.scores[id] = score;
        // SentencePiece's IsUnknown/IsControl/IsUnused/IsByte; anything else is normal.
        v.types[id] = match ty {
            2 => UNKNOWN,
            3 => CONTROL,
            5 => UNUSED,
            6 => BYTE,
            _ => NORMAL,
        };
    }
    let added = dir.join("added_tokens.json");
    if let Some(json) = read_optional(&added)? {
        for (token, id) in json.as_object().into_iter().flatten() {
            let Some(id) = id.as_u64().map(|i| i as usize).filter(|&i| i < n) else {
                continue;
            };
            v.tokens[id] = token.clone();
            v.scores[id] = -1000.0;
            v.types[id] = USER_DEFINED;
        }
    }
    let decoder = tokenizer_config.and_then(|c| c["added_tokens_decoder"].as_object());
    for (id, data) in decoder.into_iter().flatten() {
        let (Ok(id), Some(content)) = (id.parse::<usize>(), data["content"].as_str()) else {
            continue;
        };
        if id >= n {
            continue;
        }
        if data["special"].as_bool() == Some(true) || looks_special(content) {
            v.types[id] = CONTROL;
            v.tokens[id] = content.to_string();
        } else {
            v.types[id] = USER_DEFINED;
            v.tokens[id] = user_defined(content);
        }
        v.scores[id] = -1000.0;
    }
    Ok(v)
}

/// The pieces of a SentencePiece `ModelProto` (field 1, repeated): text, score and type.
fn sentencepiece_pieces(bytes: &[u8]) -> Result<Vec<(String, f32, u64)>, String> {
    let mut pieces = Vec::new();
    for field in proto_fields(bytes)? {
        if let (1, Wire::Bytes(msg)) = field {
            let (mut text, mut score, mut ty) = (None, 0.0f32, 1u64);
            for f in proto_fields(msg)? {
                match f {
                    (1, Wire::Bytes(s)) => {
                        text = Some(
                            String::from_utf8(s.to_vec())
                                .map_err(|_| format!("piece {} is not UTF-8", pieces.len()))?,
                        )
                    }
                    (2, Wire::Fixed32(v)) => score = f32::from_bits(v),
                    (3, Wire::Varint(v)) => ty = v,
                    _ => {}
                }
            }
            let text = text.ok_or_else(|| format!("piece {} has no text", pieces.len()))?;
            pieces.push((text, score, ty));
        }
    }
    if pieces.is_empty() {
        return Err("not a SentencePiece model: it has no pieces".into());
    }
    Ok(pieces)
}

enum Wire<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// The (field number, value) pairs of one protobuf message, every length checked.
fn proto_fields(mut b: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, String> {
    fn varint(b: &mut &[u8]) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first().ok_or("truncated protobuf varint")?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("malformed protobuf varint".into())
    }
    fn take<'a>(b: &mut &'a [u8], n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= b.len())
            .ok_or("truncated protobuf field")?;
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let value = match key & 7 {
            0 => Wire::Varint(varint(&mut b)?),
            1 => {
                take(&mut b, 8)?;
                Wire::Fixed64
            }
            2 => {
                let n = varint(&mut b)?;
                Wire::Bytes(take(&mut b, n)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(take(&mut b, 4)?.try_into().unwrap())),
            w => return Err(format!("protobuf wire type {w} is not supported")),
        };
        out.push((key >> 3, value));
    }
    Ok(out)
}

/// gguf-py's `SpecialVocab`: merges were added by the caller; this adds the special token ids,
/// whether to add BOS/EOS, and the chat template.
fn special_vocab(
    m: &mut Vec<(String, Value)>,
    dir: &Path,
    config: &Json,
    tokenizer_json: Option<&Json>,
    tokenizer_config: Option<Json>,
    n_vocab: Option<usize>,
) -> Result<()> {
    let tc = tokenizer_config.unwrap_or_default();
    let content = |typ: &str| -> Option<String> {
        match &tc[format!("{typ}_token")] {
            Json::String(s) => Some(s.clone()),
            Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
            _ => None,
        }
    };
    let mut add = post_processor_flags(tokenizer_json, &content);
    let added_tokens: Vec<&Json> = tokenizer_json
        .and_then(|t| t["added_tokens"].as_array())
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let mut ids: Vec<(&str, u64)> = Vec::new();
    let set_id = |ids: &mut Vec<(&str, u64)>, typ, id: u64| {
        if n_vocab.is_none_or(|n| id < n as u64) && !ids.iter().any(|(t, _)| *t == typ) {
            ids.push((typ, id));
        }
    };
    for (typ, _) in SPECIAL {
        if let Some(b) = tc[format!("add_{typ}_token")].as_bool() {
            set_flag(&mut add, typ, b, false);
        }
        if let Some(c) = content(typ) {
            let id = added_tokens
                .iter()
                .find(|t| t["content"].as_str() == Some(&c))
                .and_then(|t| t["id"].as_u64());
            if let Some(id) = id {
                set_id(&mut ids, typ, id);
            }
        }
    }
    for (typ, _) in SPECIAL {
        if let Some(id) = config[format!("{typ}_token_id")].as_u64() {
            set_id(&mut ids, typ, id);
        }
    }
    for (typ, id) in ids {
        let key = SPECIAL
            .iter()
            .find(|(t, _)| *t == typ)
            .map(|(_, k)| *k)
            .unwrap_or_default();
        m.push((key.to_string(), Value::U32(id as u32)));
    }
    for (typ, b) in add {
        if matches!(typ, "bos" | "eos" | "sep") {
            m.push((format!("tokenizer.ggml.add_{typ}_token"), Value::Bool(b)));
        }
    }
    if let Some(template) = chat_template(dir, &tc)? {
        m.push(string("tokenizer.chat_template", &template));
    }
    Ok(())
}

/// Sets flag `typ` unless it is set already (or always, with `overwrite`).
fn set_flag(flags: &mut Vec<(&'static str, bool)>, typ: &'static str, v: bool, overwrite: bool) {
    match flags.iter_mut().find(|(t, _)| *t == typ) {
        Some(entry) if overwrite => entry.1 = v,
        Some(_) => {}
        None => flags.push((typ, v)),
    }
}

/// Whether to add BOS/EOS, as gguf-py reads `tokenizer.json`'s post-processor: ByteLevel adds
/// neither (unless the config says otherwise); TemplateProcessing's crude reading is that a
/// leading special token that is the BOS means "add BOS", a trailing one that is the EOS "add
/// EOS".
fn post_processor_flags(
    tokenizer_json: Option<&Json>,
    content: &dyn Fn(&str) -> Option<String>,
) -> Vec<(&'static str, bool)> {
    let mut add = Vec::new();
    let Some(post) = tokenizer_json
        .map(|t| &t["post_processor"])
        .filter(|p| p.is_object())
    else {
        return add;
    };
    let processors: Vec<&Json> = match post["processors"].as_array() {
        Some(list) => list.iter().collect(),
        None => vec![post],
    };
    for p in processors {
        match p["type"].as_str() {
            Some("ByteLevel") => {
                set_flag(&mut add, "bos", false, false);
                set_flag(&mut add, "eos", false, false);
            }
            Some("TemplateProcessing") => {
                let single = p["single"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                if single.len() > 1 {
                    let special = |t: &Json| t["SpecialToken"]["id"].as_str().map(str::to_string);
                    if let Some(first) = special(&single[0]) {
                        let is_bos = Some(&first) == content("bos").as_ref();
                        set_flag(&mut add, "bos", is_bos, true);
                    }
                    if let Some(last) = special(&single[single.len() - 1]) {
                        let is_eos = Some(&last) == content("eos").as_ref();
                        set_flag(&mut add, "eos", is_eos, true);
                    }
                }
            }
            _ => {}
        }
    }
    add
}

/// `tokenizer_config.json`'s `chat_template`, else `chat_template.jinja` or
/// `chat_template.json`. A list of named templates is not carried over.
fn chat_template(dir: &Path, tc: &Json) -> Result<Option<String>> {
    if let Some(t) = tc["chat_template"].as_str() {
        return Ok(Some(t.to_string()));
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|source| Error::Io {
                path: jinja,
                action: "read",
                source,
            });
    }
    Ok(read_optional(&dir.join("chat_template.json"))?
        .and_then(|j| j["chat_template"].as_str().map(str::to_string)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pre_tokenizers_are_recognised_by_structure() {
        let smol = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]});
        assert_eq!(pre_tokenizer(&smol), Some("smollm"));
        let gpt2 = json!({"type": "ByteLevel", "add_prefix_space": false});
        assert_eq!(pre_tokenizer(&gpt2), Some("gpt2"));
        let llama3 = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": SPLIT_PATTERNS[0].0}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
        assert_eq!(pre_tokenizer(&llama3), Some("llama-bpe"));
        let other = json!({"type": "Whitespace"});
        assert_eq!(pre_tokenizer(&other), None);
        assert_eq!(describe(&other), "Whitespace");
    }

    #[test]
    fn bos_and_eos_flags_from_the_post_processor() {
        let content = |typ: &str| (typ == "bos").then(|| "<|begin_of_text|>".to_string());
        // Llama 3: a template that puts the BOS first.
        let llama3 = json!({"post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel"},
            {"type": "TemplateProcessing", "single": [
                {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}}]}]}});
        assert_eq!(
            post_processor_flags(Some(&llama3), &content),
            [("bos", true), ("eos", false)]
        );
        let gpt2 = json!({"post_processor": {"type": "ByteLevel"}});
        assert_eq!(
            post_processor_flags(Some(&gpt2), &content),
            [("bos", false), ("eos", false)]
        );
        assert!(post_processor_flags(None, &content).is_empty());
    }

    #[test]
    fn merges_in_both_forms() {
        let j = json!({"model": {"merges": ["a b", ["c d", "e"]]}});
        assert_eq!(
            merges(Path::new("t.json"), &j).unwrap(),
            ["a b", "c\u{120}d e"]
        );
        let bad = json!({"model": {"merges": [1]}});
        assert!(merges(Path::new("t.json"), &bad).is_err());
    }

    #[test]
    fn truncated_sentencepiece_is_refused() {
        // One piece "ab" (score 0.5, type CONTROL), then the same cut short.
        let mut piece = vec![0x0a, 2, b'a', b'b', 0x15];
        piece.extend(0.5f32.to_le_bytes());
        piece.extend([0x18, 3]);
        let mut model = vec![0x0a, piece.len() as u8];
        model.extend(&piece);
        let pieces = sentencepiece_pieces(&model).unwrap();
        assert_eq!(pieces, vec![("ab".to_string(), 0.5, 3)]);
        let err = sentencepiece_pieces(&model[..model.len() - 3]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
    }
}
