//! llama.cpp's `llama` graph in f32, run for what quantization needs from a model: the inputs of
//! every linear layer on calibration text. RMSNorm, rotary embeddings on adjacent pairs (ggml's
//! layout of the query and key rows), grouped-query causal attention, SwiGLU.
//!
//! [`calibrate`] runs layer after layer over all the calibration chunks at once and hands each
//! linear layer's weight and Hessian H = Σ x xᵀ to a callback that returns the weight to use from
//! then on: the quantized one, so that every layer is calibrated on the inputs the quantized
//! layers before it produce (GPTQ's sequential mode).

use std::collections::HashMap;

use rayon::prelude::*;
use zeropoint_core::ggml;

use crate::input::Input;
use crate::matmul::{product, Strided};
use crate::read::{Header, TensorInfo};
use crate::value::Value;

/// The hyperparameters of a llama model.
#[derive(Debug, Clone)]
pub struct Hparams {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_rot: usize,
    pub eps: f32,
    pub rope_base: f32,
    /// 1 / linear rope scaling factor.
    pub rope_scale: f32,
}

impl Hparams {
    pub fn from_header(h: &Header) -> Result<Hparams, String> {
        let arch = h
            .get("general.architecture")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if arch != "llama" {
            return Err(format!(
                "calibration runs llama models only; this one is '{arch}'"
            ));
        }
        let int = |k: &str| h.get(&format!("llama.{k}")).and_then(Value::as_u64);
        let float = |k: &str| match h.get(&format!("llama.{k}")) {
            Some(Value::F32(v)) => Some(*v),
            _ => None,
        };
        let need = |k: &str| {
            int(k)
                .map(|v| v as usize)
                .ok_or(format!("no llama.{k} in the metadata"))
        };
        let n_embd = need("embedding_length")?;
        let n_head = need("attention.head_count")?;
        let n_head_kv = int("attention.head_count_kv").map_or(n_head, |v| v as usize);
        let head_dim = int("attention.key_length").map_or(n_embd / n_head.max(1), |v| v as usize);
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 || head_dim % 2 != 0 {
            return Err(format!(
                "{n_head} heads, {n_head_kv} key/value heads of dimension {head_dim}: not a llama attention"
            ));
        }
        let scaling = h
            .get("llama.rope.scaling.type")
            .and_then(Value::as_str)
            .unwrap_or("none");
        let rope_scale = match scaling {
            "none" => 1.0,
            "linear" => 1.0 / float("rope.scaling.factor").unwrap_or(1.0),
            other => {
                return Err(format!(
                    "rope scaling '{other}' is not supported for calibration"
                ))
            }
        };
        let n_rot = int("rope.dimension_count").map_or(head_dim, |v| v as usize);
        if n_rot > head_dim || !n_rot.is_multiple_of(2) {
            return Err(format!(
                "llama.rope.dimension_count {n_rot} does not fit heads of dimension {head_dim}"
            ));
        }
        Ok(Hparams {
            n_layer: need("block_count")?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_rot,
            eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_base: float("rope.freq_base").unwrap_or(10000.0),
            rope_scale,
        })
    }
}

/// The model's tensors by name, dequantized to f32 on request.
struct Tensors<'a> {
    input: &'a dyn Input,
    index: HashMap<&'a str, usize>,
    /// Tensors AWQ rescaled, read instead of the input's.
    rescaled: HashMap<String, Vec<f32>>,
}

impl<'a> Tensors<'a> {
    fn new(input: &'a dyn Input) -> Tensors<'a> {
        let index = input
            .header()
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        Tensors {
            input,
            index,
            rescaled: HashMap::new(),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// A tensor's index and header entry.
    fn info(&self, name: &str) -> Result<(usize, &TensorInfo), String> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| format!("the model has no tensor '{name}'"))?;
        Ok((i, &self.input.header().tensors[i]))
    }

    /// A tensor's values (as rescaled, if it was) and ggml dims.
    fn get(&self, name: &str) -> Result<(Vec<f32>, Vec<u64>), String> {
        let (i, t) = self.info(name)?;
        if let Some(x) = self.rescaled.get(name) {
            return Ok((x.clone(), t.dims.clone()));
        }
        let bytes = self.input.data(i).map_err(|e| e.to_string())?;
        let x = ggml::dequantize_rows(t.ty, &bytes, t.row_len() as usize)
            .map_err(|e| format!("tensor '{name}': {e}"))?;
        Ok((x, t.dims.clone()))
    }

    /// A matrix `[out][inp]` with the expected input width.
    fn matrix(&self, name: &str, inp: usize) -> Result<(Vec<f32>, usize), String> {
        let (x, dims) = self.get(name)?;
        if dims.len() != 2 || dims[0] as usize != inp {
            return Err(format!(
                "tensor '{name}' has dims {dims:?}; {inp} inputs expected"
            ));
        }
        Ok((x, dims[1] as usize))
    }

    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, String> {
        let (x, _) = self.get(name)?;
        if x.len() != n {
            return Err(format!(
                "tensor '{name}' has {} values; {n} expected",
                x.len()
            ));
        }
        Ok(x)
    }
}

/// The callback of [`calibrate`]: tensor name, weight `[rows][cols]`, rows, cols, Hessian
/// `[cols][cols]` (Σ x xᵀ over every calibration token); returns the weight to continue with.
pub type QuantizeFn<'f> =
    dyn FnMut(&str, &[f32], usize, usize, &[f64]) -> Result<Vec<f32>, String> + 'f;

/// The AWQ callback of [`calibrate`]: the matrices that read one input (name and weight
/// `[rows][cols]`), `cols`, the input's mean |x| per channel and its Hessian; returns scales s
/// (the matrices' columns are multiplied by s, the input divided by it), or None to leave them.
pub type ScaleFn<'f> =
    dyn FnMut(&[(&str, &[f32])], usize, &[f64], &[f64]) -> Result<Option<Vec<f32>>, String> + 'f;

/// The normalization weights AWQ divided by its scales, which the output must hold instead of
/// the input's (the rescaled matrices reach the output through the quantize callback).
pub type Rescaled = Vec<(String, Vec<f32>)>;

/// Runs every layer of the model on the calibration `chunks` (token ids, each a sequence from
/// position 0) and calls `quantize` for each linear layer in order: attention q, k, v (one
/// Hessian), output, then the feed-forward gate and up (one Hessian) and down. With `awq`, each
/// layer's q/k/v, gate/up and down are first rescaled by the scales it returns (computed on the
/// activations of the model quantized so far), the 1/s folded into the RMSNorm weights and the
/// up projection's rows. `on_layer` is called after each layer.
pub fn calibrate<'f>(
    input: &dyn Input,
    chunks: &[Vec<u32>],
    quantize: &mut QuantizeFn<'f>,
    awq: Option<&mut ScaleFn<'f>>,
    on_layer: impl FnMut(usize),
) -> Result<Rescaled, String> {
    let mut t = Tensors::new(input);
    run(&mut t, chunks, quantize, awq, on_layer)?;
    let mut norms: Rescaled = (t.rescaled.into_iter())
        .filter(|(name, _)| name.ends_with("_norm.weight"))
        .collect();
    norms.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(norms)
}

/// What every block of a pass shares.
struct Pass<'c, 'f> {
    hp: &'c Hparams,
    freqs: &'c [f32],
    /// Tokens per chunk.
    lens: &'c [usize],
    quantize: &'c mut QuantizeFn<'f>,
    awq: Option<&'c mut ScaleFn<'f>>,
}

/// The layers on `chunks`; returns the last layer's output (`tokens × n_embd`).
fn run<'f>(
    t: &mut Tensors,
    chunks: &[Vec<u32>],
    quantize: &mut QuantizeFn<'f>,
    awq: Option<&mut ScaleFn<'f>>,
    mut on_layer: impl FnMut(usize),
) -> Result<Vec<f32>, String> {
    let hp = Hparams::from_header(t.input.header())?;
    let d = hp.n_embd;
    let (embd, vocab) = t.matrix("token_embd.weight", d)?;
    let mut x: Vec<f32> = Vec::new();
    for chunk in chunks {
        for &tok in chunk {
            let tok = tok as usize;
            if tok >= vocab {
                return Err(format!("token {tok} is past the embedding's {vocab} rows"));
            }
            x.extend_from_slice(&embd[tok * d..(tok + 1) * d]);
        }
    }
    drop(embd);
    let lens: Vec<usize> = chunks.iter().map(Vec::len).collect();
    let freqs = rope_freqs(&hp, t)?;
    let mut pass = Pass {
        hp: &hp,
        freqs: &freqs,
        lens: &lens,
        quantize,
        awq,
    };
    for l in 0..hp.n_layer {
        attention_block(t, &mut pass, l, &mut x)?;
        feed_forward_block(t, &mut pass, l, &mut x)?;
        on_layer(l);
    }
    Ok(x)
}

/// x += attention(rms_norm(x)) for layer `l`.
fn attention_block(t: &mut Tensors, p: &mut Pass, l: usize, x: &mut [f32]) -> Result<(), String> {
    let (hp, d) = (p.hp, p.hp.n_embd);
    let name = |s: &str| format!("blk.{l}.{s}.weight");
    let norm = name("attn_norm");
    let qkv = [name("attn_q"), name("attn_k"), name("attn_v")];
    let mut normed = normed_input(t, p, &norm, x)?;
    if let Some(scale) = p.awq.as_deref_mut() {
        if rescale(t, scale, &qkv, Fold::Norm(&norm), (&normed.0, d, &normed.1))? {
            normed = normed_input(t, p, &norm, x)?;
        }
    }
    let (h, hq) = normed;
    let (qw, kw) = (hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim);
    let q = layer(t, p.quantize, &qkv[0], &h, d, qw, &hq)?;
    let k = layer(t, p.quantize, &qkv[1], &h, d, kw, &hq)?;
    let v = layer(t, p.quantize, &qkv[2], &h, d, kw, &hq)?;
    let att = attention(hp, p.freqs, q, k, &v, p.lens);
    let ho = gram(&att, qw, p.lens);
    let o = layer(t, p.quantize, &name("attn_output"), &att, qw, d, &ho)?;
    x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
    Ok(())
}

/// x += down(silu(gate(h)) · up(h)), h = rms_norm(x), for layer `l`. With AWQ the down
/// projection is rescaled first, on the float feed-forward's activations: its 1/s goes into the
/// up projection's rows, which the gate/up search then sees as they will be.
fn feed_forward_block(
    t: &mut Tensors,
    p: &mut Pass,
    l: usize,
    x: &mut [f32],
) -> Result<(), String> {
    let d = p.hp.n_embd;
    let name = |s: &str| format!("blk.{l}.{s}.weight");
    let (norm, gate, up, down) = (
        name("ffn_norm"),
        name("ffn_gate"),
        name("ffn_up"),
        name("ffn_down"),
    );
    // The width from the header; `layer` reads (and checks) the weight itself.
    let ff = t.info(&gate)?.1.dims.get(1).copied().unwrap_or(0) as usize;
    let mut normed = normed_input(t, p, &norm, x)?;
    if let Some(scale) = p.awq.as_deref_mut() {
        let h = &normed.0;
        if !t.has(&up.replace(".weight", ".bias")) {
            let g = linear(h, &t.matrix(&gate, d)?.0, d, ff);
            let a = swiglu(&g, &linear(h, &t.matrix(&up, d)?.0, d, ff));
            let ha = gram(&a, ff, p.lens);
            rescale(
                t,
                scale,
                std::slice::from_ref(&down),
                Fold::Rows(&up),
                (&a, ff, &ha),
            )?;
        }
        let gate_up = [gate.clone(), up.clone()];
        if rescale(t, scale, &gate_up, Fold::Norm(&norm), (h, d, &normed.1))? {
            normed = normed_input(t, p, &norm, x)?;
        }
    }
    let (h, hf) = normed;
    let g = layer(t, p.quantize, &gate, &h, d, ff, &hf)?;
    let u = layer(t, p.quantize, &up, &h, d, ff, &hf)?;
    let a = swiglu(&g, &u);
    let hd = gram(&a, ff, p.lens);
    let out = layer(t, p.quantize, &down, &a, ff, d, &hd)?;
    x.iter_mut().zip(&out).for_each(|(a, b)| *a += b);
    Ok(())
}

fn swiglu(g: &[f32], u: &[f32]) -> Vec<f32> {
    g.iter()
        .zip(u)
        .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
        .collect()
}

/// Where AWQ's 1/s goes: a normalization weight, or the rows of the matrix that produces the
/// input.
enum Fold<'a> {
    Norm(&'a str),
    Rows(&'a str),
}

/// rms_norm(x) with the normalization weight `norm` (as rescaled, if it was), and its Hessian.
fn normed_input(
    t: &Tensors,
    p: &Pass,
    norm: &str,
    x: &[f32],
) -> Result<(Vec<f32>, Vec<f64>), String> {
    let d = p.hp.n_embd;
    let h = rms_norm(x, &t.vector(norm, d)?, p.hp.eps);
    let hh = gram(&h, d, p.lens);
    Ok((h, hh))
}

/// Asks `scale` for the scales of the matrices `names` (which read `x`, `tokens × cols`, with
/// Hessian `h`) and, if it returns some, multiplies their columns by s and folds 1/s; returns
/// whether it did.
fn rescale(
    t: &mut Tensors,
    scale: &mut ScaleFn,
    names: &[String],
    fold: Fold,
    (x, cols, h): (&[f32], usize, &[f64]),
) -> Result<bool, String> {
    let weights: Vec<Vec<f32>> = (names.iter())
        .map(|n| t.matrix(n, cols).map(|(w, _)| w))
        .collect::<Result<_, _>>()?;
    let mut abs_mean = vec![0f64; cols];
    for row in x.chunks_exact(cols) {
        abs_mean
            .iter_mut()
            .zip(row)
            .for_each(|(m, v)| *m += f64::from(v.abs()));
    }
    let tokens = (x.len() / cols).max(1) as f64;
    abs_mean.iter_mut().for_each(|m| *m /= tokens);
    let named: Vec<(&str, &[f32])> = (names.iter().zip(&weights))
        .map(|(n, w)| (n.as_str(), w.as_slice()))
        .collect();
    let Some(s) = scale(&named, cols, &abs_mean, h)? else {
        return Ok(false);
    };
    for (n, mut w) in names.iter().zip(weights) {
        w.chunks_exact_mut(cols)
            .for_each(|r| r.iter_mut().zip(&s).for_each(|(v, s)| *v *= s));
        t.rescaled.insert(n.clone(), w);
    }
    let (name, folded) = match fold {
        Fold::Norm(n) => {
            let mut v = t.vector(n, cols)?;
            v.iter_mut().zip(&s).for_each(|(v, s)| *v /= s);
            (n, v)
        }
        Fold::Rows(n) => {
            let (mut w, dims) = t.get(n)?;
            if dims.len() != 2 || dims[1] as usize != cols {
                return Err(format!(
                    "tensor '{n}' has dims {dims:?}; {cols} outputs expected"
                ));
            }
            let inp = dims[0] as usize;
            (w.chunks_exact_mut(inp).zip(&s)).for_each(|(r, s)| r.iter_mut().for_each(|v| *v /= s));
            (n, w)
        }
    };
    t.rescaled.insert(name.to_string(), folded);
    Ok(true)
}

/// One linear layer: its weight through `quantize`, then applied to `x` (`tokens × inp`).
fn layer(
    t: &Tensors,
    quantize: &mut QuantizeFn,
    name: &str,
    x: &[f32],
    inp: usize,
    out: usize,
    h: &[f64],
) -> Result<Vec<f32>, String> {
    let (w, rows) = t.matrix(name, inp)?;
    if rows != out {
        return Err(format!(
            "tensor '{name}' has {rows} outputs; {out} expected"
        ));
    }
    let w = quantize(name, &w, rows, inp, h)?;
    let mut y = linear(x, &w, inp, out);
    let bias = name.replace(".weight", ".bias");
    if t.has(&bias) {
        let b = t.vector(&bias, out)?;
        y.chunks_exact_mut(out)
            .for_each(|r| r.iter_mut().zip(&b).for_each(|(y, b)| *y += b));
    }
    Ok(y)
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
        let mean = x.iter().map(|v| f64::from(v * v)).sum::<f64>() / d as f64;
        let scale = 1.0 / (mean as f32 + eps).sqrt();
        y.iter_mut()
            .zip(x)
            .zip(w)
            .for_each(|((y, x), w)| *y = x * scale * w);
    });
    y
}

/// `y = x · wᵀ` for `x` (`tokens × inp`) and `w` (`out × inp`, a ggml matrix's rows).
fn linear(x: &[f32], w: &[f32], inp: usize, out: usize) -> Vec<f32> {
    let m = x.len() / inp;
    let mut y = vec![0f32; m * out];
    let x = Strided::rows(x, inp);
    let wt = Strided::transposed(w, inp);
    product((m, out, inp), &mut y, out, x, wt, 1.0, true);
    y
}

/// Σ x xᵀ over the rows of `x` (`tokens × n`), each chunk's sum in f32, the total in f64.
fn gram(x: &[f32], n: usize, lens: &[usize]) -> Vec<f64> {
    let mut total = vec![0f64; n * n];
    let mut start = 0;
    let mut g = vec![0f32; n * n];
    for &len in lens {
        let rows = &x[start * n..(start + len) * n];
        start += len;
        let xt = Strided::transposed(rows, n);
        let x = Strided::rows(rows, n);
        product((n, n, len), &mut g, n, xt, x, 1.0, true);
        total
            .iter_mut()
            .zip(&g)
            .for_each(|(t, g)| *t += f64::from(*g));
    }
    total
}

/// The rotation frequency of each pair: base^(−2i/n_rot), divided by `rope_freqs` where the
/// model has them (Llama 3), times the linear scaling.
fn rope_freqs(hp: &Hparams, t: &Tensors) -> Result<Vec<f32>, String> {
    let factors = if t.has("rope_freqs.weight") {
        Some(t.vector("rope_freqs.weight", hp.n_rot / 2)?)
    } else {
        None
    };
    Ok((0..hp.n_rot / 2)
        .map(|i| {
            let f = hp.rope_base.powf(-2.0 * i as f32 / hp.n_rot as f32) * hp.rope_scale;
            f / factors.as_ref().map_or(1.0, |v| v[i])
        })
        .collect())
}

/// Rotates adjacent pairs (ggml's `rope` mode 0) of the first `n_rot` dimensions of each head.
fn rope(x: &mut [f32], width: usize, head_dim: usize, freqs: &[f32], lens: &[usize]) {
    let mut start = 0;
    for &len in lens {
        for p in 0..len {
            let row = &mut x[(start + p) * width..(start + p + 1) * width];
            for head in row.chunks_exact_mut(head_dim) {
                for (i, f) in freqs.iter().enumerate() {
                    let (s, c) = (p as f32 * f).sin_cos();
                    let (a, b) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = a * c - b * s;
                    head[2 * i + 1] = a * s + b * c;
                }
            }
        }
        start += len;
    }
}

/// Causal grouped-query attention over each chunk: `tokens × (n_head · head_dim)`.
fn attention(
    hp: &Hparams,
    freqs: &[f32],
    mut q: Vec<f32>,
    mut k: Vec<f32>,
    v: &[f32],
    lens: &[usize],
) -> Vec<f32> {
    let (hd, qw, kw) = (
        hp.head_dim,
        hp.n_head * hp.head_dim,
        hp.n_head_kv * hp.head_dim,
    );
    rope(&mut q, qw, hd, freqs, lens);
    rope(&mut k, kw, hd, freqs, lens);
    let scale = 1.0 / (hd as f32).sqrt();
    let group = hp.n_head / hp.n_head_kv;
    let mut out = vec![0f32; q.len()];
    let mut start = 0;
    for &len in lens {
        let heads: Vec<Vec<f32>> = (0..hp.n_head)
            .into_par_iter()
            .map(|head| {
                let kv = head / group;
                let qh = &q[start * qw + head * hd..];
                let kh = &k[start * kw + kv * hd..];
                let vh = &v[start * kw + kv * hd..];
                let mut s = vec![0f32; len * len];
                let qs = Strided::rows(qh, qw);
                let ks = Strided::transposed(kh, kw);
                product((len, len, hd), &mut s, len, qs, ks, scale, false);
                for (i, row) in s.chunks_exact_mut(len).enumerate() {
                    let max = row[..=i].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    let mut sum = 0.0;
                    for v in &mut row[..=i] {
                        *v = (*v - max).exp();
                        sum += *v;
                    }
                    row[..=i].iter_mut().for_each(|v| *v /= sum);
                    row[i + 1..].fill(0.0);
                }
                let mut o = vec![0f32; len * hd];
                let ps = Strided::rows(&s, len);
                let vs = Strided::rows(vh, kw);
                product((len, hd, len), &mut o, hd, ps, vs, 1.0, false);
                o
            })
            .collect();
        for (head, o) in heads.iter().enumerate() {
            for p in 0..len {
                out[(start + p) * qw + head * hd..(start + p) * qw + (head + 1) * hd]
                    .copy_from_slice(&o[p * hd..(p + 1) * hd]);
            }
        }
        start += len;
    }
    out
}

/// The model's log-probabilities of each next token (`len - 1` rows of `vocab`) for one
/// sequence, with the weights as they are: for checking this forward pass against llama.cpp.
pub fn log_probs(input: &dyn Input, tokens: &[u32]) -> Result<Vec<Vec<f32>>, String> {
    let mut same = |_: &str, w: &[f32], _: usize, _: usize, _: &[f64]| Ok(w.to_vec());
    let hp = Hparams::from_header(input.header())?;
    let mut t = Tensors::new(input);
    let hidden = run(&mut t, &[tokens.to_vec()], &mut same, None, |_| {})?;
    let norm = t.vector("output_norm.weight", hp.n_embd)?;
    let x = rms_norm(&hidden, &norm, hp.eps);
    let head = if t.has("output.weight") {
        "output.weight"
    } else {
        "token_embd.weight"
    };
    let (w, vocab) = t.matrix(head, hp.n_embd)?;
    let logits = linear(&x, &w, hp.n_embd, vocab);
    Ok(logits
        .chunks_exact(vocab)
        .map(|row| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let lse = row
                .iter()
                .map(|&v| f64::from(v - max).exp())
                .sum::<f64>()
                .ln() as f32;
            row.iter().map(|&v| v - max - lse).collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::TensorInfo;
    use crate::uniform;

    fn header(pairs: &[(&str, Value)]) -> Header {
        Header {
            version: 3,
            metadata: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            tensors: Vec::new(),
            alignment: 32,
            data_offset: 0,
        }
    }

    #[test]
    fn hyperparameters_that_do_not_fit_are_refused() {
        let arch = |a: &str| ("general.architecture", Value::String(a.as_bytes().to_vec()));
        let base = [
            arch("llama"),
            ("llama.block_count", Value::U32(2)),
            ("llama.embedding_length", Value::U32(64)),
            ("llama.attention.head_count", Value::U32(4)),
            ("llama.attention.head_count_kv", Value::U32(2)),
        ];
        let hp = Hparams::from_header(&header(&base)).unwrap();
        assert_eq!((hp.head_dim, hp.n_rot, hp.n_head_kv), (16, 16, 2));
        let mut qwen = base.clone();
        qwen[0] = arch("qwen2");
        let e = Hparams::from_header(&header(&qwen)).unwrap_err();
        assert!(e.contains("llama models only"), "{e}");
        let mut wide = base.to_vec();
        wide.push(("llama.rope.dimension_count", Value::U32(32)));
        let e = Hparams::from_header(&header(&wide)).unwrap_err();
        assert!(e.contains("does not fit heads of dimension 16"), "{e}");
        let mut uneven = base.to_vec();
        uneven[4] = ("llama.attention.head_count_kv", Value::U32(3));
        let e = Hparams::from_header(&header(&uneven)).unwrap_err();
        assert!(e.contains("not a llama attention"), "{e}");
    }

    /// A two-layer llama with random F32 weights, in memory.
    struct Memory {
        header: Header,
        data: Vec<Vec<u8>>,
    }

    impl Input for Memory {
        fn path(&self) -> &std::path::Path {
            std::path::Path::new("memory")
        }

        fn header(&self) -> &Header {
            &self.header
        }

        fn data(&self, i: usize) -> crate::Result<std::borrow::Cow<'_, [u8]>> {
            Ok(std::borrow::Cow::Borrowed(&self.data[i]))
        }
    }

    fn tiny_llama() -> Memory {
        let (d, ff, vocab) = (64u64, 96u64, 50u64);
        let mut h = header(&[
            ("general.architecture", Value::String(b"llama".to_vec())),
            ("llama.block_count", Value::U32(2)),
            ("llama.embedding_length", Value::U32(d as u32)),
            ("llama.attention.head_count", Value::U32(4)),
            ("llama.attention.head_count_kv", Value::U32(2)),
        ]);
        let mut shapes = vec![("token_embd.weight".to_string(), vec![d, vocab])];
        for l in 0..2 {
            let t = |s: &str, dims: Vec<u64>| (format!("blk.{l}.{s}.weight"), dims);
            shapes.extend([
                t("attn_norm", vec![d]),
                t("attn_q", vec![d, d]),
                t("attn_k", vec![d, d / 2]),
                t("attn_v", vec![d, d / 2]),
                t("attn_output", vec![d, d]),
                t("ffn_norm", vec![d]),
                t("ffn_gate", vec![d, ff]),
                t("ffn_up", vec![d, ff]),
                t("ffn_down", vec![ff, d]),
            ]);
        }
        let mut next = uniform(17);
        let mut data = Vec::new();
        for (name, dims) in shapes {
            let n: u64 = dims.iter().product();
            let norm = name.contains("_norm");
            let values = (0..n).map(|_| if norm { 1.0 + next() } else { next() * 0.5 });
            data.push(values.flat_map(f32::to_le_bytes).collect());
            let ty = ggml::GgmlType::F32;
            h.tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset: 0,
            });
        }
        Memory { header: h, data }
    }

    /// Any positive AWQ scales, folded as `calibrate` folds them, leave the float model's output
    /// as it was (up to float rounding), and every RMSNorm weight comes back rescaled.
    #[test]
    fn awq_scales_leave_the_float_model_unchanged() {
        let model = tiny_llama();
        let chunks = vec![(0..24).map(|i| (i * 7 % 50) as u32).collect::<Vec<_>>(); 2];
        let mut same = |_: &str, w: &[f32], _: usize, _: usize, _: &[f64]| Ok(w.to_vec());
        let plain = run(&mut Tensors::new(&model), &chunks, &mut same, None, |_| {}).unwrap();
        let mut next = uniform(5);
        let asked = std::cell::RefCell::new(Vec::new());
        let mut scale = |m: &[(&str, &[f32])], cols: usize, abs_mean: &[f64], h: &[f64]| {
            assert!(abs_mean.len() == cols && h.len() == cols * cols);
            asked.borrow_mut().push(
                m.iter()
                    .map(|(n, _)| n.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
            Ok(Some((0..cols).map(|_| 1.5 + 2.0 * next()).collect()))
        };
        let mut t = Tensors::new(&model);
        let scaled = run(&mut t, &chunks, &mut same, Some(&mut scale), |_| {}).unwrap();
        let worst = (plain.iter().zip(&scaled))
            .map(|(a, b)| (a - b).abs() / (1.0 + a.abs()))
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "{worst}");
        assert_eq!(
            asked.borrow()[..3],
            [
                "blk.0.attn_q.weight,blk.0.attn_k.weight,blk.0.attn_v.weight",
                "blk.0.ffn_down.weight",
                "blk.0.ffn_gate.weight,blk.0.ffn_up.weight"
            ]
        );
        let norms = calibrate(&model, &chunks, &mut same, Some(&mut scale), |_| {}).unwrap();
        let names: Vec<&str> = norms.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "blk.0.attn_norm.weight",
                "blk.0.ffn_norm.weight",
                "blk.1.attn_norm.weight",
                "blk.1.ffn_norm.weight"
            ]
        );
        assert!(
            norms[0].1
                != t.input
                    .data(1)
                    .map(|b| b
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect::<Vec<_>>())
                    .unwrap()
        );
    }
}
