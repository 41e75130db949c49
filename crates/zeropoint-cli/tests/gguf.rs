//! `zeropoint gguf` against the real client: llama.cpp's own `llama-quantize`, built from the
//! source the llama-cpp-python sdist ships (scripts/build-llama-cpp, cached). Every preset must
//! give a byte-identical file.

#[path = "../../../tests/support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{repo_root, Rng};
use zeropoint_core::ggml::{self, GgmlType};
use zeropoint_gguf::read::GgufFile;
use zeropoint_gguf::value::Value;
use zeropoint_gguf::write::{write, NewTensor};

const ZEROPOINT: &str = env!("CARGO_BIN_EXE_zeropoint");

/// The shape of a synthetic llama-architecture model.
struct Llama {
    layers: u64,
    embd: u64,
    ff: u64,
    vocab: u64,
    heads: u64,
    kv_heads: u64,
    /// Whether output.weight exists (else the embedding is tied to the output).
    untied: bool,
    ty: GgmlType,
}

/// Writes a llama-architecture GGUF with random weights (normal, with a few large outliers per
/// row as trained weights have), tensors in convert_hf_to_gguf's order.
fn write_llama(path: &Path, m: &Llama, seed: u64) {
    let head_dim = m.embd / m.heads;
    let kv = head_dim * m.kv_heads;
    let s = |v: &str| Value::String(v.as_bytes().to_vec());
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s("llama")),
        ("general.name".into(), s("zeropoint synthetic llama")),
        ("llama.block_count".into(), Value::U32(m.layers as u32)),
        ("llama.context_length".into(), Value::U32(512)),
        ("llama.embedding_length".into(), Value::U32(m.embd as u32)),
        ("llama.feed_forward_length".into(), Value::U32(m.ff as u32)),
        (
            "llama.attention.head_count".into(),
            Value::U32(m.heads as u32),
        ),
        (
            "llama.attention.head_count_kv".into(),
            Value::U32(m.kv_heads as u32),
        ),
        ("llama.rope.freq_base".into(), Value::F32(10000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        (
            "llama.rope.dimension_count".into(),
            Value::U32(head_dim as u32),
        ),
        ("llama.vocab_size".into(), Value::U32(m.vocab as u32)),
        (
            "general.file_type".into(),
            Value::U32(if m.ty == GgmlType::F16 { 1 } else { 0 }),
        ),
    ];
    let mut tensors = vec![("token_embd.weight".to_string(), vec![m.embd, m.vocab])];
    for i in 0..m.layers {
        for (name, dims) in [
            ("attn_norm", vec![m.embd]),
            ("attn_q", vec![m.embd, m.embd]),
            ("attn_k", vec![m.embd, kv]),
            ("attn_v", vec![m.embd, kv]),
            ("attn_output", vec![m.embd, m.embd]),
            ("ffn_norm", vec![m.embd]),
            ("ffn_gate", vec![m.embd, m.ff]),
            ("ffn_up", vec![m.embd, m.ff]),
            ("ffn_down", vec![m.ff, m.embd]),
        ] {
            tensors.push((format!("blk.{i}.{name}.weight"), dims));
        }
    }
    tensors.push(("output_norm.weight".into(), vec![m.embd]));
    if m.untied {
        tensors.push(("output.weight".into(), vec![m.embd, m.vocab]));
    }
    let new: Vec<NewTensor> = tensors
        .iter()
        .map(|(name, dims)| NewTensor {
            name: name.clone(),
            dims: dims.clone(),
            ty: if dims.len() == 1 { GgmlType::F32 } else { m.ty },
        })
        .collect();
    let mut rng = Rng::new(seed);
    write(path, &meta, &new, |i, out| {
        let t = &new[i];
        let n: u64 = t.dims.iter().product();
        let x: Vec<f32> = (0..n)
            .map(|k| {
                if t.dims.len() == 1 {
                    1.0 + 0.1 * rng.normal()
                } else if k % 211 == 0 {
                    0.4 * rng.normal()
                } else {
                    0.02 * rng.normal()
                }
            })
            .collect();
        let bytes = ggml::quantize_rows(t.ty, &x, t.dims[0] as usize).unwrap();
        Ok(out.write_all(&bytes)?)
    })
    .unwrap();
}

/// llama.cpp's tools, built once and cached (scripts/build-llama-cpp prints their folder).
fn llama_cpp() -> PathBuf {
    let out = Command::new(repo_root().join("scripts/build-llama-cpp"))
        .output()
        .expect("cannot run scripts/build-llama-cpp");
    assert!(
        out.status.success(),
        "scripts/build-llama-cpp failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(bin.lines().last().expect("the bin folder").trim())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("cannot start the command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Where two GGUF files first differ, by tensor: the proof a failure needs.
fn first_difference(a: &Path, b: &Path) -> String {
    let (fa, fb) = (GgufFile::open(a).unwrap(), GgufFile::open(b).unwrap());
    if fa.header.metadata != fb.header.metadata {
        return format!(
            "metadata differs:\n{:?}\n{:?}",
            fa.header.metadata, fb.header.metadata
        );
    }
    for (i, (ta, tb)) in fa.header.tensors.iter().zip(&fb.header.tensors).enumerate() {
        if ta != tb {
            return format!("tensor {i}: {ta:?} vs {tb:?}");
        }
        if fa.data(i) != fb.data(i) {
            let at = fa
                .data(i)
                .iter()
                .zip(fb.data(i))
                .position(|(x, y)| x != y)
                .unwrap();
            return format!(
                "tensor '{}' ({}): data differs at byte {at}",
                ta.name, ta.ty
            );
        }
    }
    "same header and data; the padding differs".into()
}

/// Writes an importance matrix as llama-imatrix does (GGUF, `NAME.in_sum2` [ne0, 1] and
/// `NAME.counts` [1, 1]) for every 2-D weight of `model`, with random positive sums. The token
/// embedding's entry has the wrong length, which llama-quantize ignores rather than refuses.
fn write_imatrix(model: &Path, path: &Path, seed: u64) {
    let f = GgufFile::open(model).unwrap();
    let mut new = Vec::new();
    for t in f.header.tensors.iter().filter(|t| t.dims.len() == 2) {
        let ne0 = if t.name == "token_embd.weight" {
            t.dims[0] / 2
        } else {
            t.dims[0]
        };
        new.push(NewTensor {
            name: format!("{}.in_sum2", t.name),
            dims: vec![ne0, 1],
            ty: GgmlType::F32,
        });
        new.push(NewTensor {
            name: format!("{}.counts", t.name),
            dims: vec![1, 1],
            ty: GgmlType::F32,
        });
    }
    let meta = vec![
        (
            "general.type".to_string(),
            Value::String(b"imatrix".to_vec()),
        ),
        (
            "imatrix.datasets".to_string(),
            Value::Array(8, vec![Value::String(b"synthetic.txt".to_vec())]),
        ),
        ("imatrix.chunk_count".to_string(), Value::U32(12)),
        ("imatrix.chunk_size".to_string(), Value::U32(512)),
    ];
    let mut rng = Rng::new(seed);
    write(path, &meta, &new, |i, out| {
        let t = &new[i];
        let x: Vec<f32> = if t.name.ends_with(".counts") {
            vec![6144.4]
        } else {
            // Squared activations summed over 6144 tokens: a few columns matter far more.
            (0..t.dims[0])
                .map(|k| 6144.0 * (0.05 + rng.uniform()) * if k % 37 == 0 { 40.0 } else { 1.0 })
                .collect()
        };
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(out.write_all(&bytes)?)
    })
    .unwrap();
}

const PRESETS: [&str; 16] = [
    "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S",
    "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "F16", "BF16",
];

fn compare_all(model: &Path, dir: &Path, bin: &Path, pure: bool) {
    compare(model, dir, bin, pure, None, &PRESETS);
}

/// Runs both tools on `model` for each preset and asserts byte-identity.
fn compare(
    model: &Path,
    dir: &Path,
    bin: &Path,
    pure: bool,
    imatrix: Option<&Path>,
    presets: &[&str],
) {
    std::fs::create_dir_all(dir).unwrap();
    let mut failures = Vec::new();
    for &preset in presets {
        let ours = dir.join(format!("zp-{preset}.gguf"));
        let theirs = dir.join(format!("llama-{preset}.gguf"));
        let mut zp = Command::new(ZEROPOINT);
        zp.arg("gguf")
            .arg(model)
            .arg("-o")
            .arg(&ours)
            .args(["--type", preset]);
        let mut lq = Command::new(bin.join("llama-quantize"));
        if pure {
            zp.arg("--pure");
            lq.arg("--pure");
        }
        if let Some(m) = imatrix {
            zp.arg("--imatrix").arg(m);
            lq.arg("--imatrix").arg(m);
        }
        run(&mut zp);
        run(lq.arg(model).arg(&theirs).arg(preset).arg("2"));
        if std::fs::read(&ours).unwrap() != std::fs::read(&theirs).unwrap() {
            failures.push(format!("{preset}: {}", first_difference(&ours, &theirs)));
        }
    }
    assert!(
        failures.is_empty(),
        "not byte-identical to llama-quantize:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_preset_is_byte_identical_to_llama_quantize() {
    let bin = llama_cpp();
    let dir = tempfile::tempdir().unwrap();
    // ZEROPOINT_KEEP=FOLDER keeps the models and both tools' outputs there, to look into.
    let keep = std::env::var_os("ZEROPOINT_KEEP").map(PathBuf::from);
    let dir = keep.as_deref().unwrap_or(dir.path());
    // Untied output, F32 weights, a feed-forward width (352) that 256-blocks do not divide, so
    // that the fallback types are exercised.
    let untied = Llama {
        layers: 8,
        embd: 256,
        ff: 352,
        vocab: 320,
        heads: 4,
        kv_heads: 2,
        untied: true,
        ty: GgmlType::F32,
    };
    let a = dir.join("untied-f32.gguf");
    write_llama(&a, &untied, 1);
    compare_all(&a, &dir.join("untied"), &bin, false);
    compare_all(&a, &dir.join("untied-pure"), &bin, true);
    // Tied embedding, F16 weights, grouped-query attention with 4 heads per KV head.
    let tied = Llama {
        layers: 16,
        embd: 512,
        ff: 768,
        vocab: 256,
        heads: 8,
        kv_heads: 2,
        untied: false,
        ty: GgmlType::F16,
    };
    let b = dir.join("tied-f16.gguf");
    write_llama(&b, &tied, 2);
    compare_all(&b, &dir.join("tied"), &bin, false);
}

#[test]
fn importance_weighted_quantization_is_byte_identical_to_llama_quantize() {
    let bin = llama_cpp();
    let dir = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("ZEROPOINT_KEEP").map(PathBuf::from);
    let dir = keep.as_deref().unwrap_or(dir.path()).join("imatrix");
    std::fs::create_dir_all(&dir).unwrap();
    let m = Llama {
        layers: 8,
        embd: 256,
        ff: 512,
        vocab: 320,
        heads: 4,
        kv_heads: 1,
        untied: true,
        ty: GgmlType::F16,
    };
    let model = dir.join("model.gguf");
    write_llama(&model, &m, 3);
    let imatrix = dir.join("imatrix.gguf");
    write_imatrix(&model, &imatrix, 4);
    let presets = [
        "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K_S", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K",
        "Q8_0",
    ];
    compare(&model, &dir, &bin, false, Some(&imatrix), &presets);
    // Q2_K_S cannot be written without an importance matrix: both tools refuse.
    let refused = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{cmd:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let zp = refused(
        Command::new(ZEROPOINT)
            .arg("gguf")
            .arg(&model)
            .arg("-o")
            .arg(dir.join("x.gguf"))
            .args(["--type", "Q2_K_S"]),
    );
    assert!(
        zp.contains("Q2_K_S needs an importance matrix for tensor 'blk.0.attn_k.weight'"),
        "{zp}"
    );
    let lq = refused(
        Command::new(bin.join("llama-quantize"))
            .arg(&model)
            .arg(dir.join("y.gguf"))
            .arg("Q2_K_S"),
    );
    assert!(lq.contains("requires an importance matrix"), "{lq}");
    compare(
        &model,
        &dir.join("pure"),
        &bin,
        true,
        Some(&imatrix),
        &["Q3_K_S", "Q4_K_S", "Q5_K_S"],
    );
}

/// Washington's addresses of the given years, one after the other.
fn sotu(years: &[&str]) -> String {
    years
        .iter()
        .map(|y| {
            let path = repo_root().join(format!("tests/data/sotu/{y}_george_washington_n.txt"));
            std::fs::read_to_string(path).unwrap()
        })
        .collect()
}

/// One Hugging Face checkpoint case: tokenizer kind, weight dtype, shards, tied embedding.
const CHECKPOINTS: [(&str, &str, &str, bool); 3] = [
    ("smollm", "BF16", "2", false),
    ("llama-bpe", "F16", "1", true),
    ("sentencepiece", "F32", "1", false),
];

/// A Hugging Face checkpoint converted by `zeropoint gguf` must be the model the checkpoint
/// means: llama.cpp tokenizes text as the Hugging Face tokenizer does, and its log-probabilities
/// (F32 weights and KV cache, no flash attention) match a NumPy forward pass of the checkpoint
/// written from transformers' Llama (tests/python/hf_llama.py). Quantizing the checkpoint
/// directly gives the bytes llama-quantize gives for the converted F32 file.
#[test]
fn hugging_face_checkpoints_run_in_llama_cpp_as_in_transformers() {
    let bin = llama_cpp();
    let dir = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("ZEROPOINT_KEEP").map(PathBuf::from);
    let dir = keep.as_deref().unwrap_or(dir.path()).join("hf");
    std::fs::create_dir_all(&dir).unwrap();
    // Fixed public-domain text (tests/data/sotu): the checkpoints' tokenizers are trained on the
    // 1790-1793 addresses, the evaluation text is 1794-1795's.
    let text = dir.join("text.txt");
    std::fs::write(&text, sotu(&["1794", "1795"])).unwrap();
    let script = repo_root().join("tests/python/hf_llama.py");
    for (tokenizer, dtype, shards, tied) in CHECKPOINTS {
        let model = dir.join(tokenizer);
        let mut make = Command::new(support::python());
        make.arg(&script).arg("make").arg(&model);
        make.args([
            "--tokenizer",
            tokenizer,
            "--dtype",
            dtype,
            "--shards",
            shards,
        ]);
        if tied {
            make.arg("--tied");
        }
        run(&mut make);
        let f32_file = dir.join(format!("{tokenizer}-F32.gguf"));
        run(Command::new(ZEROPOINT)
            .arg("gguf")
            .arg(&model)
            .arg("-o")
            .arg(&f32_file)
            .args(["--type", "F32"]));
        let logits = dir.join(format!("{tokenizer}.logits"));
        save_log_probs(&bin, &f32_file, &text, &logits, SMALL_WINDOWS);
        let report = run(Command::new(support::python())
            .arg(&script)
            .arg("check")
            .arg(&model)
            .arg(&logits)
            .arg(&text));
        println!("{tokenizer} ({dtype}): {report}");
        same_tokens_and_log_probs_as_llama_cpp(&f32_file, &text, &logits);
        let ours = dir.join(format!("{tokenizer}-zp-Q4_K_M.gguf"));
        let theirs = dir.join(format!("{tokenizer}-llama-Q4_K_M.gguf"));
        run(Command::new(ZEROPOINT)
            .arg("gguf")
            .arg(&model)
            .arg("-o")
            .arg(&ours)
            .args(["--type", "Q4_K_M"]));
        run(Command::new(bin.join("llama-quantize"))
            .arg(&f32_file)
            .arg(&theirs)
            .args(["Q4_K_M", "2"]));
        assert!(
            std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
            "{tokenizer}: direct Q4_K_M differs from llama-quantize of the F32 conversion: {}",
            first_difference(&ours, &theirs)
        );
    }
    broken_checkpoints_are_refused(&dir.join("smollm"), &dir);
    calibrated_files_are_closer_to_the_float_model(&bin, &dir, &text);
}

/// `--calib` (GPTQ inside ggml's formats, AWQ's scales then GPTQ, AWQ's scales then weighted
/// rounding) gives files llama.cpp runs, closer to the float model than plain rounding at the
/// same size: llama-perplexity's mean KL divergence from the F32
/// model's distribution on text that was not the calibration text. The model's attention is
/// milder than the conversion tests' (whose sharp attention amplifies any change chaotically, so
/// that no per-layer criterion predicts the output). The bytes do not depend on the thread count.
fn calibrated_files_are_closer_to_the_float_model(bin: &Path, dir: &Path, text: &Path) {
    let checkpoint = dir.join("mild");
    run(Command::new(support::python())
        .arg(repo_root().join("tests/python/hf_llama.py"))
        .arg("make")
        .arg(&checkpoint)
        .args(["--tokenizer", "smollm", "--qk-std", "0.1"]));
    let model = dir.join("mild-F32.gguf");
    run(Command::new(ZEROPOINT)
        .arg("gguf")
        .arg(&checkpoint)
        .arg("-o")
        .arg(&model)
        .args(["--type", "F32"]));
    let base = dir.join("mild.logits");
    save_log_probs(bin, &model, text, &base, SMALL_WINDOWS);
    let calib = dir.join("calib.txt");
    std::fs::write(&calib, sotu(&["1790", "1791", "1792", "1793"])).unwrap();
    // Too little text for one window: one line, exit status 1, nothing written.
    let short = dir.join("short.txt");
    std::fs::write(&short, "Fellow citizens").unwrap();
    let short = short.to_str().unwrap();
    let output = dir.join("refused.gguf");
    refused(
        &model,
        &output,
        &["--calib", short],
        "fewer than one chunk of 512",
    );
    // Act-order is GPTQ's: with weighted rounding, asking for it or against it is refused, in
    // one line.
    for flag in ["--act-order", "--no-act-order"] {
        let rtn_act = ["--calib", calib.to_str().unwrap(), "--method", "rtn", flag];
        refused(&model, &output, &rtn_act, "--no-act-order are GPTQ's");
    }
    let kld = |file: &Path| -> f64 {
        let saved = file.with_extension("logits");
        save_log_probs(bin, file, text, &saved, SMALL_WINDOWS);
        mean_kl_divergence(&base, &saved)
    };
    for preset in ["Q4_0", "Q4_K_M", "Q3_K_M"] {
        let zp = |out: &Path, flags: &[&str], threads: &str| {
            let mut cmd = Command::new(ZEROPOINT);
            cmd.arg("gguf")
                .arg(&model)
                .arg("-o")
                .arg(out)
                .args(["--type", preset]);
            if !flags.is_empty() {
                cmd.arg("--calib").arg(&calib).args(["--calib-ctx", "64"]);
            }
            run(cmd.args(flags).env("RAYON_NUM_THREADS", threads))
        };
        let plain = dir.join(format!("plain-{preset}.gguf"));
        zp(&plain, &[], "2");
        let k_plain = kld(&plain);
        let types = |f: &Path| -> Vec<(String, GgmlType)> {
            let h = GgufFile::open(f).unwrap().header;
            h.tensors.into_iter().map(|t| (t.name, t.ty)).collect()
        };
        // GPTQ (its act-order by default), also without act-order; AWQ's scales then GPTQ; AWQ's
        // scales, its clipping search, then rounding weighted by the calibration; the same
        // without clipping.
        let methods: [(&str, &[&str]); 5] = [
            ("GPTQ", &["--method", "gptq"]),
            ("GPTQ-in-order", &["--no-act-order"]),
            ("AWQ+GPTQ", &["--awq"]),
            ("AWQ", &["--awq", "--method", "rtn"]),
            ("AWQ-noclip", &["--awq", "--method", "rtn", "--no-awq-clip"]),
        ];
        for (method, flags) in methods {
            let out = dir.join(format!("{method}-{preset}.gguf"));
            let printed = zp(&out, flags, "2");
            let one_thread = dir.join(format!("{method}-{preset}-1.gguf"));
            zp(&one_thread, flags, "1");
            assert!(
                std::fs::read(&out).unwrap() == std::fs::read(&one_thread).unwrap(),
                "{preset}: {method}'s bytes depend on the thread count"
            );
            assert_eq!(
                types(&plain),
                types(&out),
                "{preset}: the same tensor types"
            );
            let k = kld(&out);
            println!("{preset}: mean KL divergence from F32: plain {k_plain:.5}, {method} {k:.5}");
            assert!(k < k_plain, "{preset}: {method} {k} vs plain {k_plain}");
            let meta = GgufFile::open(&out).unwrap().header;
            let gptq = method.contains("GPTQ");
            assert_eq!(
                meta.get("quantize.gptq.act_order"),
                gptq.then_some(&Value::Bool(!method.ends_with("in-order"))),
                "{method}: quantize.gptq.act_order"
            );
            let awq = meta.get("quantize.awq.dataset").and_then(Value::as_str);
            assert_eq!(
                awq,
                method.starts_with("AWQ").then_some("calib.txt"),
                "{method}"
            );
            // AWQ records the α of every group it searched (q/k/v, down, gate/up per layer) and
            // says how many it rescaled.
            if let Some(Value::Array(_, alphas)) = meta.get("quantize.awq.alphas") {
                let layers = meta
                    .get("llama.block_count")
                    .and_then(Value::as_u64)
                    .unwrap();
                assert_eq!(alphas.len() as u64, 3 * layers, "{method}");
                let rescaled = (alphas.iter())
                    .filter(|a| matches!(a, Value::F32(a) if (0.05..0.96).contains(a)))
                    .count();
                let line = format!("AWQ: {rescaled} of {} groups rescaled", alphas.len());
                assert!(rescaled > 0 && printed.contains(&line), "{line}\n{printed}");
            } else {
                assert!(!method.starts_with("AWQ"), "{method}: no alphas recorded");
            }
            // The clipping search clips some of the groups it searches (not the query and key
            // projections) and says so.
            match meta.get("quantize.awq.clipped_groups") {
                Some(Value::Array(_, counts)) => {
                    assert_eq!(method, "AWQ");
                    let [Value::U64(clipped), Value::U64(groups)] = counts.as_slice() else {
                        panic!("{counts:?}")
                    };
                    assert!(0 < *clipped && clipped < groups, "{clipped} of {groups}");
                    let line = format!("AWQ: {clipped} of {groups} weight groups clipped");
                    assert!(printed.contains(&line), "{line}\n{printed}");
                }
                _ => assert_ne!(method, "AWQ", "no clipping recorded"),
            }
        }
    }
}

/// stories15M, llama2.c's TinyStories model (scripts/fetch-stories15m, which scripts/fetch-assets
/// runs): a trained float model with Llama 2's 32 000-token SentencePiece vocabulary, where the
/// other tests' models are random. Its GGUF is what the checkpoint means (llama.cpp's
/// log-probabilities match llama2.c's forward pass in NumPy, `scripts/llama2c.py --verify`);
/// zeropoint tokenizes and runs it as llama.cpp does; every preset, plain and with
/// llama-imatrix's importance matrix, is byte-identical to llama-quantize's; and GPTQ, alone and
/// after AWQ's scales, brings Q4_0 and Q4_K_M closer to the float model than llama-quantize with
/// that importance matrix at the same size, issue 15's goal, on a real model. The text
/// (tests/data/stories15m) was sampled from the model: it reads other English at a perplexity in
/// the thousands.
#[test]
fn stories15m_is_byte_identical_and_gptq_beats_the_importance_matrix() {
    let model = repo_root().join(".cache/stories15m/stories15M-f32.gguf");
    assert!(
        model.exists(),
        "{} is missing: run scripts/fetch-assets (scripts/test does)",
        model.display()
    );
    let bin = llama_cpp();
    let dir = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("ZEROPOINT_KEEP").map(PathBuf::from);
    let dir = keep.as_deref().unwrap_or(dir.path()).join("stories15m");
    std::fs::create_dir_all(&dir).unwrap();
    let data = repo_root().join("tests/data/stories15m");
    let (calib, text) = (data.join("calib.txt"), data.join("eval.txt"));
    // 8 windows of 256 tokens, the model's context.
    let save_logits = |file: &Path, saved: &Path| {
        save_log_probs(&bin, file, &text, saved, ("256", "8", "2"));
    };
    let base = dir.join("float.logits");
    save_logits(&model, &base);
    let report = run(Command::new(support::python())
        .arg(repo_root().join("scripts/llama2c.py"))
        .arg(model.with_file_name("model.bin"))
        .arg(model.with_file_name("tokenizer.bin"))
        .arg("--verify")
        .arg(&base));
    println!("stories15M against llama2.c: {report}");
    same_tokens_and_log_probs_as_llama_cpp(&model, &text, &base);

    let imatrix = dir.join("imatrix.gguf");
    run(Command::new(bin.join("llama-imatrix"))
        .arg("-m")
        .arg(&model)
        .arg("-f")
        .arg(&calib)
        .arg("-o")
        .arg(&imatrix)
        .args(["-c", "256", "-b", "256", "--chunks", "32", "-t", "2"]));
    compare(&model, &dir.join("plain"), &bin, false, None, &PRESETS);
    compare(
        &model,
        &dir.join("imatrix"),
        &bin,
        false,
        Some(&imatrix),
        &PRESETS,
    );

    let kld = |file: &Path| -> f64 {
        let saved = file.with_extension("logits");
        save_logits(file, &saved);
        mean_kl_divergence(&base, &saved)
    };
    // Calibration windows default to the model's context (256 here, not 512); longer ones are
    // refused.
    let too_long = ["--calib", calib.to_str().unwrap(), "--calib-ctx", "512"];
    let output = dir.join("refused.gguf");
    refused(
        &model,
        &output,
        &too_long,
        "longer than the model's context of 256",
    );
    for preset in ["Q4_0", "Q4_K_M"] {
        let k_theirs = kld(&dir.join(format!("imatrix/llama-{preset}.gguf")));
        for (method, flags) in [("GPTQ", &[][..]), ("AWQ+GPTQ", &["--awq"][..])] {
            let out = dir.join(format!("{method}-{preset}.gguf"));
            run(Command::new(ZEROPOINT)
                .arg("gguf")
                .arg(&model)
                .arg("-o")
                .arg(&out)
                .args(["--type", preset, "--calib"])
                .arg(&calib)
                .args(flags));
            let meta = GgufFile::open(&out).unwrap().header;
            let tokens = meta.get("quantize.gptq.tokens").and_then(Value::as_u64);
            assert_eq!(tokens, Some(32 * 256), "{method}: 32 windows of 256 tokens");
            let k = kld(&out);
            println!("{preset}: mean KL divergence from F32: llama-quantize + imatrix {k_theirs:.5}, {method} {k:.5}");
            assert!(
                k < k_theirs,
                "{preset}: {method} {k} vs llama-quantize + imatrix {k_theirs}"
            );
        }
    }
}

/// What zeropoint's GPTQ calibration runs on the model matches llama.cpp: the tokens its
/// tokenizer gives the text (`vocab::Vocab`, from the GGUF's metadata) are those at the start of
/// a `--kl-divergence-base` file, and the log-probabilities of its own llama forward pass
/// (`llama::log_probs`) those llama.cpp stored, within their 16-bit resolution.
fn same_tokens_and_log_probs_as_llama_cpp(model: &Path, text: &Path, logits: &Path) {
    let f = GgufFile::open(model).unwrap();
    let vocab = zeropoint_gguf::vocab::Vocab::from_header(&f.header).unwrap();
    let mut ours: Vec<u32> = vocab.bos().into_iter().collect();
    ours.extend(vocab.encode(&std::fs::read_to_string(text).unwrap()));
    let saved = Saved::read(logits);
    let (n_ctx, theirs) = (saved.n_ctx, &saved.tokens);
    let at = ours.iter().zip(theirs).position(|(a, b)| a != b);
    assert!(
        at.is_none() && ours.len() >= theirs.len(),
        "{}: tokens differ from llama.cpp's at {at:?}",
        model.display()
    );
    // The first chunk's scored positions (the second half), BOS first as llama.cpp ran it.
    let mut seq = theirs[..n_ctx].to_vec();
    if let Some(bos) = vocab.bos() {
        seq[0] = bos;
    }
    let ours = zeropoint_gguf::llama::log_probs(&f, &seq).unwrap();
    let mut worst = 0f32;
    for (row, (scale, min, codes)) in ours[n_ctx / 2..n_ctx - 1].iter().zip(&saved.rows) {
        for (&lp, &q) in row.iter().zip(codes) {
            if q > 0 {
                worst = worst.max((min + scale * f32::from(q) - lp).abs());
            }
        }
    }
    assert!(
        worst < 2e-3,
        "{}: log-probabilities differ by {worst}",
        model.display()
    );
}

/// The small test models' evaluation: 4 windows of 64 tokens, on one thread.
const SMALL_WINDOWS: (&str, &str, &str) = ("64", "4", "1");

/// llama-perplexity's log-probabilities of `model` on `text`, saved to `saved`
/// (`--kl-divergence-base`): `chunks` windows of `ctx` tokens on `threads` threads, with an F32 KV
/// cache and no flash attention. Measures are taken from this file, not from the printed summary,
/// which can lose its last lines at exit (a race in llama.cpp's logger thread, seen on a loaded
/// machine).
fn save_log_probs(
    bin: &Path,
    model: &Path,
    text: &Path,
    saved: &Path,
    (ctx, chunks, threads): (&str, &str, &str),
) {
    run(Command::new(bin.join("llama-perplexity"))
        .arg("-m")
        .arg(model)
        .arg("-f")
        .arg(text)
        .args(["-c", ctx, "-b", ctx, "--chunks", chunks, "-t", threads])
        .args(["-ctk", "f32", "-ctv", "f32", "-fa", "off"])
        .arg("--kl-divergence-base")
        .arg(saved));
}

/// A `llama-perplexity --kl-divergence-base` file: the tokens it ran, and for every scored
/// position llama.cpp's 16-bit encoding of the log-probabilities (a scale, a minimum and a code
/// per token; code 0 stands for "at or below the minimum").
struct Saved {
    n_ctx: usize,
    tokens: Vec<u32>,
    rows: Vec<(f32, f32, Vec<u16>)>,
}

impl Saved {
    fn read(path: &Path) -> Saved {
        let bytes = std::fs::read(path).unwrap();
        let int = |i: usize| i32::from_le_bytes(bytes[8 + 4 * i..12 + 4 * i].try_into().unwrap());
        let (n_ctx, n_vocab, n_chunk) = (int(0) as usize, int(1) as usize, int(2) as usize);
        let tokens = (0..n_ctx * n_chunk).map(|i| int(3 + i) as u32).collect();
        let nv = 2 * n_vocab.div_ceil(2) + 4;
        let start = 20 + 4 * n_ctx * n_chunk;
        let f32_at = |at: usize| f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let rows = (0..n_chunk * (n_ctx - 1 - n_ctx / 2))
            .map(|r| {
                let at = start + 2 * nv * r;
                let codes = (0..n_vocab)
                    .map(|v| u16::from_le_bytes([bytes[at + 8 + 2 * v], bytes[at + 9 + 2 * v]]))
                    .collect();
                (f32_at(at), f32_at(at + 4), codes)
            })
            .collect();
        Saved {
            n_ctx,
            tokens,
            rows,
        }
    }

    /// The log-probabilities of every scored position.
    fn log_probs(&self) -> Vec<Vec<f32>> {
        let decode = |(scale, min, codes): &(f32, f32, Vec<u16>)| {
            codes.iter().map(|&q| min + scale * f32::from(q)).collect()
        };
        self.rows.iter().map(decode).collect()
    }
}

/// Mean over positions of KL(P‖Q), P the distribution saved in `base`, Q in `other`.
fn mean_kl_divergence(base: &Path, other: &Path) -> f64 {
    let (p, q) = (
        Saved::read(base).log_probs(),
        Saved::read(other).log_probs(),
    );
    assert_eq!(p.len(), q.len());
    let total: f64 = p
        .iter()
        .zip(&q)
        .map(|(p, q)| {
            p.iter()
                .zip(q)
                .map(|(&lp, &lq)| f64::from(lp).exp() * f64::from(lp - lq))
                .sum::<f64>()
        })
        .sum();
    total / p.len() as f64
}

/// Each way a checkpoint folder can be wrong gives one line naming the file and the problem.
fn broken_checkpoints_are_refused(good: &Path, dir: &Path) {
    let copy = |name: &str| {
        let to = dir.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(good).unwrap() {
            let from = entry.unwrap().path();
            std::fs::copy(&from, to.join(from.file_name().unwrap())).unwrap();
        }
        to
    };
    let edit_json = |path: &Path, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    let shard = "model-00002-of-00002.safetensors";
    let cases: Vec<(PathBuf, &str)> = vec![
        {
            let d = copy("no-config");
            std::fs::remove_file(d.join("config.json")).unwrap();
            (d, "config.json: cannot read")
        },
        {
            let d = copy("mixtral");
            edit_json(&d.join("config.json"), &|v| {
                v["architectures"] = serde_json::json!(["MixtralForCausalLM"])
            });
            (d, "architecture 'MixtralForCausalLM' is not supported")
        },
        {
            let d = copy("truncated");
            let bytes = std::fs::read(d.join(shard)).unwrap();
            std::fs::write(d.join(shard), &bytes[..bytes.len() - 100]).unwrap();
            (d, "fall outside the")
        },
        {
            let d = copy("unknown-pre");
            edit_json(&d.join("tokenizer.json"), &|v| {
                v["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"})
            });
            (d, "pass --tokenizer-pre NAME")
        },
        {
            let d = copy("layers");
            edit_json(&d.join("config.json"), &|v| {
                v["num_hidden_layers"] = serde_json::json!(1)
            });
            (d, "layer 1 is past num_hidden_layers = 1")
        },
    ];
    for (model, expected) in cases {
        refused(&model, &dir.join("broken.gguf"), &[], expected);
    }
}

/// `zeropoint gguf INPUT -o OUTPUT FLAGS` exits with status 1, says one line holding `expected`
/// and writes nothing.
fn refused(input: &Path, output: &Path, flags: &[&str], expected: &str) {
    let out = Command::new(ZEROPOINT)
        .arg("gguf")
        .arg(input)
        .arg("-o")
        .arg(output)
        .args(flags)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}: {err}", input.display());
    assert!(
        err.contains(expected) && err.trim().lines().count() == 1,
        "{}: expected one line with {expected:?}, got {err}",
        input.display()
    );
    assert!(!output.exists(), "{}", output.display());
}
