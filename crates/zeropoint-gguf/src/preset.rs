//! Which type each tensor gets: llama.cpp's file types ("presets": Q4_K_M, Q3_K_S, ...) and the
//! rules of `llama-quantize` that pick a type per tensor (`tensor_allows_quantization`,
//! `llama_tensor_get_type_impl`, `tensor_type_fallback` in `src/llama-quant.cpp`), for the
//! presets zeropoint writes. The rules are reproduced as they are, quirks included, because the
//! point is the same file as llama.cpp's; where they are odd, a comment says so.

use zeropoint_core::ggml::GgmlType;

/// A llama.cpp file type (`enum llama_ftype`) that zeropoint can write.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q2_K_S,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

/// name, `llama_ftype` id, default tensor type.
const PRESETS: [(Preset, &str, u32, GgmlType); 18] = {
    use GgmlType as T;
    [
        (Preset::F32, "F32", 0, T::F32),
        (Preset::F16, "F16", 1, T::F16),
        (Preset::BF16, "BF16", 32, T::BF16),
        (Preset::Q4_0, "Q4_0", 2, T::Q4_0),
        (Preset::Q4_1, "Q4_1", 3, T::Q4_1),
        (Preset::Q5_0, "Q5_0", 8, T::Q5_0),
        (Preset::Q5_1, "Q5_1", 9, T::Q5_1),
        (Preset::Q8_0, "Q8_0", 7, T::Q8_0),
        (Preset::Q2_K, "Q2_K", 10, T::Q2_K),
        (Preset::Q2_K_S, "Q2_K_S", 21, T::Q2_K),
        (Preset::Q3_K_S, "Q3_K_S", 11, T::Q3_K),
        (Preset::Q3_K_M, "Q3_K_M", 12, T::Q3_K),
        (Preset::Q3_K_L, "Q3_K_L", 13, T::Q3_K),
        (Preset::Q4_K_S, "Q4_K_S", 14, T::Q4_K),
        (Preset::Q4_K_M, "Q4_K_M", 15, T::Q4_K),
        (Preset::Q5_K_S, "Q5_K_S", 16, T::Q5_K),
        (Preset::Q5_K_M, "Q5_K_M", 17, T::Q5_K),
        (Preset::Q6_K, "Q6_K", 18, T::Q6_K),
    ]
};

impl Preset {
    fn row(self) -> &'static (Preset, &'static str, u32, GgmlType) {
        PRESETS
            .iter()
            .find(|p| p.0 == self)
            .expect("every preset is listed")
    }

    /// The preset named `name`, case-insensitive; `Q4_K` and friends mean their `_M` variant,
    /// `Q3_K` its `_M`, as llama-quantize reads them.
    pub fn from_name(name: &str) -> Option<Preset> {
        let name = name.to_ascii_uppercase();
        let name = match name.as_str() {
            "Q3_K" | "Q4_K" | "Q5_K" => format!("{name}_M"),
            _ => name,
        };
        PRESETS.iter().find(|p| p.1 == name).map(|p| p.0)
    }

    pub fn names() -> Vec<&'static str> {
        PRESETS.iter().map(|p| p.1).collect()
    }

    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// The value llama.cpp stores in `general.file_type`.
    pub fn ftype(self) -> u32 {
        self.row().2
    }

    pub fn default_type(self) -> GgmlType {
        self.row().3
    }
}

/// What the rules need to know about the model, from its metadata.
#[derive(Debug, Clone, Default)]
pub struct ModelFacts {
    pub arch: String,
    pub n_layer: u32,
    /// Attention heads per KV head (1 without grouped-query attention).
    pub n_gqa: u32,
    pub n_expert: u32,
    /// llama.cpp's `LLM_TYPE_70B`, which gives attn_v more bits.
    pub is_70b: bool,
}

/// The broad roles of `tensor_get_category`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnKvB,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    use Category::*;
    let table = [
        ("attn_qkv.weight", AttnQkv),
        ("attn_kv_b.weight", AttnKvB),
        ("attn_v.weight", AttnV),
        ("attn_k.weight", AttnK),
        ("attn_q.weight", AttnQ),
        ("attn_output.weight", AttnOutput),
        ("ffn_up", FfnUp),
        ("ffn_gate", FfnGate),
        ("ffn_down", FfnDown),
    ];
    match name {
        "output.weight" => Output,
        "token_embd.weight" | "per_layer_token_embd.weight" => TokenEmbd,
        _ => table
            .iter()
            .find(|(k, _)| name.contains(k))
            .map_or(Other, |(_, c)| *c),
    }
}

fn is_attn_v(c: Category) -> bool {
    matches!(c, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
}

/// Name parts that keep a weight as it is (`tensor_allows_quantization`).
const KEEP: [&str; 32] = [
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
];

/// Whether llama-quantize would quantize this tensor at all. `dims` are ggml's `ne`.
pub fn allows_quantization(name: &str, dims: &[u64]) -> bool {
    // ggml_n_dims: trailing 1s do not count.
    let n_dims = dims.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1);
    if n_dims < 2 {
        return false;
    }
    // llama.cpp tests `rfind("weight") == size() - 6`, which a 5-byte name also passes.
    let weight = name.ends_with("weight") || name.len() == 5;
    weight
        && !KEEP.iter().any(|k| name.contains(k))
        && ![".patch_merger", "a.rvq.codebook", "mm.a.code_embd"]
            .iter()
            .any(|k| name.contains(k))
        && name != "position_embd.weight"
        && name != "token_types.weight"
}

/// Running counts of the layer-dependent rules, advanced as llama.cpp advances them: once per
/// quantized tensor of the kind, in llama.cpp's tensor order (see [`llama_order`]).
#[derive(Debug, Default)]
pub struct Counters {
    n_attention_wv: i32,
    has_tied_embeddings: bool,
    i_attention_wv: i32,
    i_ffn_down: i32,
    i_ffn_gate: i32,
    i_ffn_up: i32,
}

impl Counters {
    /// Counts over every tensor name, before any type is chosen (`init_quantize_state_counters`).
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Counters {
        let mut c = Counters {
            has_tied_embeddings: true,
            ..Counters::default()
        };
        for name in names {
            let cat = category(name);
            c.n_attention_wv += is_attn_v(cat) as i32;
            c.has_tied_embeddings &= cat != Category::Output;
        }
        c
    }
}

/// `use_more_bits`: the first and last eighth of the layers, and every third one between.
fn use_more_bits(i: i32, n: i32) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// Everything that decides the types: the preset, its options and the model.
#[derive(Debug, Clone)]
pub struct Rules {
    pub preset: Preset,
    /// Every quantizable tensor gets the preset's default type.
    pub pure: bool,
    /// An importance matrix is given (two rules depend on it).
    pub has_imatrix: bool,
    pub model: ModelFacts,
}

impl Rules {
    /// The type for one tensor that [`allows_quantization`], as `llama_tensor_get_type` picks
    /// it without per-tensor overrides.
    pub fn tensor_type(
        &self,
        counters: &mut Counters,
        name: &str,
        dims: &[u64],
    ) -> Result<GgmlType, String> {
        let default = self.preset.default_type();
        if !is_quantized(default) {
            return Ok(default);
        }
        let chosen = if self.pure {
            default
        } else {
            mixture(self, counters, name, dims)?
        };
        Ok(fallback(chosen, dims[0]))
    }
}

/// Whether a tensor of type `to` in this preset cannot be written without an importance matrix
/// (`tensor_requires_imatrix`: only Q2_K_S's Q2_K tensors among zeropoint's presets, the token
/// embedding and the output excepted).
pub fn requires_imatrix(preset: Preset, name: &str, to: GgmlType) -> bool {
    let exempt = matches!(category(name), Category::TokenEmbd | Category::Output);
    preset == Preset::Q2_K_S && to == GgmlType::Q2_K && !exempt
}

fn is_quantized(t: GgmlType) -> bool {
    !matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// Layer index and count for the ffn rules: the running counter, or with experts the `blk.N.`
/// of the name (experts are not stored in layer order).
fn layer_info(model: &ModelFacts, i: i32, name: &str) -> Result<(i32, i32), String> {
    let n = model.n_layer as i32;
    if model.n_expert <= 1 {
        return Ok((i, n));
    }
    let layer = block_number(name)
        .ok_or_else(|| format!("cannot find the layer of expert tensor '{name}'"))?
        as i32;
    if layer < 0 || layer >= n {
        return Err(format!(
            "tensor '{name}' is in layer {layer} but the model has {n}"
        ));
    }
    Ok((layer, n))
}

/// `llama_tensor_get_type_impl` for the K-quant and legacy presets.
fn mixture(r: &Rules, c: &mut Counters, name: &str, dims: &[u64]) -> Result<GgmlType, String> {
    use GgmlType::*;
    use Preset as P;
    let (p, m, has_imatrix) = (r.preset, &r.model, r.has_imatrix);
    let falcon = m.arch == "falcon";
    let mut t = p.default_type();
    match category(name) {
        Category::Output | Category::TokenEmbd
            if category(name) == Category::Output || c.has_tied_embeddings =>
        {
            if falcon || !dims[0].is_multiple_of(t.block_size() as u64) {
                t = Q8_0;
            } else if t != Q8_0 {
                t = Q6_K;
            }
        }
        Category::TokenEmbd => {}
        cat if is_attn_v(cat) => {
            let (i, n) = (c.i_attention_wv, c.n_attention_wv);
            match p {
                P::Q2_K => t = if m.n_gqa >= 4 { Q4_K } else { Q3_K },
                P::Q2_K_S if m.n_gqa >= 4 => t = Q4_K,
                P::Q3_K_M => t = if i < 2 { Q5_K } else { Q4_K },
                P::Q3_K_L => t = Q5_K,
                P::Q4_K_M | P::Q5_K_M if use_more_bits(i, n) => t = Q6_K,
                P::Q4_K_S if i < 4 => t = Q5_K,
                _ => {}
            }
            if m.is_70b && matches!(t, Q3_K | Q4_K) {
                t = Q5_K;
            }
            if m.n_expert == 8 {
                t = Q8_0;
            }
            c.i_attention_wv += 1;
        }
        Category::AttnK if m.n_expert == 8 => t = Q8_0,
        Category::FfnDown => {
            let (i, n) = layer_info(m, c.i_ffn_down, name)?;
            t = ffn_down(p, falcon, has_imatrix, i, n, t);
            c.i_ffn_down += 1;
        }
        Category::AttnOutput => t = attn_output(p, m, falcon, t),
        Category::FfnGate => {
            layer_info(m, c.i_ffn_gate, name)?;
            c.i_ffn_gate += 1;
        }
        Category::FfnUp => {
            layer_info(m, c.i_ffn_up, name)?;
            c.i_ffn_up += 1;
        }
        _ => {}
    }
    Ok(t)
}

fn ffn_down(p: Preset, falcon: bool, has_imatrix: bool, i: i32, n: i32, t: GgmlType) -> GgmlType {
    use GgmlType::*;
    use Preset as P;
    match p {
        P::Q2_K => Q3_K,
        P::Q2_K_S if i < n / 8 => Q4_K,
        P::Q2_K_S => t,
        P::Q3_K_M if i < n / 16 => Q5_K,
        P::Q3_K_M if !falcon || use_more_bits(i, n) => Q4_K,
        P::Q3_K_M => Q3_K,
        P::Q3_K_L if falcon => Q4_K,
        P::Q3_K_L => Q5_K,
        P::Q4_K_M if falcon && i < n / 16 => Q6_K,
        P::Q4_K_M if falcon && use_more_bits(i, n) => Q5_K,
        P::Q4_K_M if falcon => Q4_K,
        P::Q4_K_M | P::Q5_K_M if use_more_bits(i, n) => Q6_K,
        P::Q4_K_S if !falcon && i < n / 8 => Q5_K,
        // With an importance matrix, llama.cpp guards the first ffn_down layers of Q4_0 / Q5_0.
        P::Q4_0 if has_imatrix && i < n / 8 => Q4_1,
        P::Q5_0 if has_imatrix && i < n / 8 => Q5_1,
        _ => t,
    }
}

fn attn_output(p: Preset, m: &ModelFacts, falcon: bool, t: GgmlType) -> GgmlType {
    use GgmlType::*;
    use Preset as P;
    match (falcon, m.n_expert == 8, p) {
        (false, true, P::Q2_K | P::Q3_K_S | P::Q3_K_M | P::Q4_K_S | P::Q4_K_M) => Q5_K,
        (false, false, P::Q2_K) => Q3_K,
        (false, false, P::Q3_K_M) => Q4_K,
        (false, false, P::Q3_K_L) => Q5_K,
        (true, _, P::Q3_K_L) => Q4_K,
        _ => t,
    }
}

/// `tensor_type_fallback`: a row that is not a whole number of blocks takes a type with smaller
/// blocks, or F16 when even 32 does not divide it.
fn fallback(t: GgmlType, row: u64) -> GgmlType {
    use GgmlType::*;
    if row.is_multiple_of(t.block_size() as u64) {
        return t;
    }
    let smaller = match t {
        Q2_K | Q3_K => Q4_0,
        Q4_K => Q5_0,
        Q5_K => Q5_1,
        Q6_K => Q8_0,
        other => other,
    };
    if row.is_multiple_of(smaller.block_size() as u64) {
        smaller
    } else {
        F16
    }
}

/// The order llama.cpp's loader keeps tensors in (`weight_name_comparer`): by the N of `blk.N.`
/// (tensors outside blocks first), then by name. llama-quantize writes them in this order.
pub fn llama_order(names: &[&str]) -> Vec<usize> {
    let layer = |n: &str| block_number(n).unwrap_or(-1);
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| (layer(names[a]), names[a]).cmp(&(layer(names[b]), names[b])));
    order
}

/// The N of a `blk.N.` name as `sscanf(name, "blk.%d.")` reads it: leading spaces, a sign and
/// the digits after `blk.`, whatever follows them.
fn block_number(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("blk.")?.trim_start();
    let sign_len = rest.starts_with(['+', '-']) as usize;
    let digits = rest[sign_len..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    rest[..sign_len + digits].parse::<i32>().ok().map(i64::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_m_gives_attn_v_and_ffn_down_more_bits_in_the_first_last_and_every_third_layer() {
        let picks: Vec<bool> = (0..32).map(|i| use_more_bits(i, 32)).collect();
        let more: Vec<i32> = (0..32).filter(|&i| picks[i as usize]).collect();
        assert_eq!(
            more,
            vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
    }

    #[test]
    fn norms_biases_and_vectors_stay_as_they_are() {
        assert!(allows_quantization("blk.0.attn_q.weight", &[256, 256]));
        assert!(!allows_quantization("blk.0.attn_norm.weight", &[256]));
        assert!(!allows_quantization("blk.0.attn_q.bias", &[256, 256]));
        assert!(!allows_quantization("blk.0.ffn_gate_inp.weight", &[256, 8]));
        assert!(!allows_quantization("blk.0.attn_q.weight", &[256, 1, 1]));
        assert!(!allows_quantization("position_embd.weight", &[256, 512]));
    }

    #[test]
    fn rows_that_blocks_do_not_divide_fall_back() {
        assert_eq!(fallback(GgmlType::Q4_K, 576), GgmlType::Q5_0);
        assert_eq!(fallback(GgmlType::Q6_K, 576), GgmlType::Q8_0);
        assert_eq!(fallback(GgmlType::Q3_K, 100), GgmlType::F16);
        assert_eq!(fallback(GgmlType::Q4_K, 512), GgmlType::Q4_K);
    }

    #[test]
    fn tensors_are_ordered_by_layer_then_name() {
        let names = [
            "blk.10.attn_q.weight",
            "output.weight",
            "blk.2.ffn_up.weight",
            "blk.2.attn_k.weight",
            "token_embd.weight",
        ];
        let order: Vec<&str> = llama_order(&names).into_iter().map(|i| names[i]).collect();
        assert_eq!(
            order,
            [
                "output.weight",
                "token_embd.weight",
                "blk.2.attn_k.weight",
                "blk.2.ffn_up.weight",
                "blk.10.attn_q.weight"
            ]
        );
    }

    #[test]
    fn presets_carry_llama_cpp_file_type_ids() {
        assert_eq!(Preset::from_name("q4_k_m").map(Preset::ftype), Some(15));
        assert_eq!(Preset::from_name("Q4_K"), Some(Preset::Q4_K_M));
        assert_eq!(Preset::from_name("Q8_0").map(Preset::ftype), Some(7));
        assert_eq!(Preset::from_name("IQ2_XXS"), None);
    }
}
