//! Text to token ids with a GGUF file's own vocabulary, as llama.cpp tokenizes it (`llama-vocab.cpp`),
//! for calibration text: llama.cpp's "gpt2" byte-level BPE (its pre-tokenizer's regular expressions,
//! then merges by rank) and its "llama" SentencePiece tokenizer (merges by score, byte fallback).
//!
//! Special and user-defined tokens written in the text are not recognised (llama-perplexity and
//! llama-imatrix do not parse special tokens either).

use std::collections::{BinaryHeap, HashMap};

use fancy_regex::Regex;

use crate::read::Header;
use crate::value::Value;

/// llama.cpp's pre-tokenizer expressions, applied one after the other (`unicode_regex_split`).
fn pre_tokenizer(name: &str) -> Option<(&'static [&'static str], bool)> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    // (expressions, ignore_merges)
    Some(match name {
        "gpt2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" => (&[GPT2], false),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva" => {
            (&[r"\p{N}", GPT2], false)
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => (&[LLAMA3], true),
        "qwen2" | "stablelm2" | "hunyuan" | "solar-open" => (&[QWEN2], false),
        _ => return None,
    })
}

enum Kind {
    /// Byte-level BPE: merge ranks by pair, the pre-tokenizer, whether whole words in the
    /// vocabulary skip the merges.
    Bpe {
        ranks: HashMap<(String, String), usize>,
        pre: Vec<Regex>,
        ignore_merges: bool,
    },
    /// SentencePiece: scores by token, whether a space is put before the text.
    Spm {
        scores: Vec<f32>,
        space_prefix: bool,
    },
}

pub struct Vocab {
    ids: HashMap<String, u32>,
    kind: Kind,
    bos: Option<u32>,
}

impl Vocab {
    /// The tokenizer the metadata describes. Errors are one line without the file name.
    pub fn from_header(h: &Header) -> Result<Vocab, String> {
        let model = h
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .ok_or("no tokenizer.ggml.model in the metadata: cannot tokenize calibration text")?;
        let tokens = strings(h, "tokenizer.ggml.tokens")?;
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let flag = |key: &str| match h.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        };
        let (kind, default_bos) = match model {
            "gpt2" => {
                let pre_name = h
                    .get("tokenizer.ggml.pre")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let (exprs, ignore_merges) = pre_tokenizer(pre_name).ok_or_else(|| {
                    format!("zeropoint cannot tokenize text for the pre-tokenizer '{pre_name}'")
                })?;
                let pre = exprs
                    .iter()
                    .map(|e| Regex::new(e).map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?;
                let mut ranks = HashMap::new();
                for (rank, m) in strings(h, "tokenizer.ggml.merges")?.into_iter().enumerate() {
                    let (a, b) = m
                        .split_once(' ')
                        .ok_or_else(|| format!("merge {rank} ({m:?}) is not two tokens"))?;
                    ranks.entry((a.to_string(), b.to_string())).or_insert(rank);
                }
                let bos = matches!(pre_name, "llama3" | "llama-v3" | "llama-bpe" | "falcon3");
                (
                    Kind::Bpe {
                        ranks,
                        pre,
                        ignore_merges,
                    },
                    bos,
                )
            }
            "llama" => {
                let scores = match h.get("tokenizer.ggml.scores") {
                    Some(Value::Array(_, v)) => v
                        .iter()
                        .map(|s| match s {
                            Value::F32(f) => *f,
                            _ => 0.0,
                        })
                        .collect(),
                    _ => vec![0.0; tokens.len()],
                };
                let space_prefix = flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                (
                    Kind::Spm {
                        scores,
                        space_prefix,
                    },
                    true,
                )
            }
            other => {
                return Err(format!(
                    "zeropoint cannot tokenize text for '{other}' tokenizers"
                ))
            }
        };
        let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(default_bos);
        let bos = h
            .get("tokenizer.ggml.bos_token_id")
            .and_then(Value::as_u64)
            .filter(|_| add_bos)
            .map(|b| b as u32);
        Ok(Vocab { ids, kind, bos })
    }

    /// The token to put first in every sequence, when the vocabulary adds one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The ids of `text`, without BOS.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match &self.kind {
            Kind::Bpe {
                ranks,
                pre,
                ignore_merges,
            } => {
                let mut out = Vec::new();
                for word in split(text, pre) {
                    self.bpe_word(&word, ranks, *ignore_merges, &mut out);
                }
                out
            }
            Kind::Spm {
                scores,
                space_prefix,
            } => self.spm(text, scores, *space_prefix),
        }
    }

    fn bpe_word(
        &self,
        word: &str,
        ranks: &HashMap<(String, String), usize>,
        ignore_merges: bool,
        out: &mut Vec<u32>,
    ) {
        let mapped: String = word.bytes().map(byte_char).collect();
        if ignore_merges {
            if let Some(&id) = self.ids.get(&mapped) {
                out.push(id);
                return;
            }
        }
        let mut symbols: Vec<String> = mapped.chars().map(String::from).collect();
        loop {
            // The lowest-ranked adjacent pair, the leftmost on a tie.
            let best = (0..symbols.len().saturating_sub(1))
                .filter_map(|i| {
                    ranks
                        .get(&(symbols[i].clone(), symbols[i + 1].clone()))
                        .map(|&r| (r, i))
                })
                .min();
            let Some((_, i)) = best else { break };
            let right = symbols.remove(i + 1);
            symbols[i].push_str(&right);
        }
        for s in symbols {
            match self.ids.get(&s) {
                Some(&id) => out.push(id),
                // A symbol outside the vocabulary: its characters one by one, as llama.cpp does.
                None => out.extend(s.chars().filter_map(|c| self.ids.get(&c.to_string()))),
            }
        }
    }

    /// llama.cpp's `llm_tokenizer_spm_session`: adjacent symbols merged best score first (the
    /// leftmost on a tie) while their concatenation is a token; what remains unknown falls back
    /// to byte tokens `<0xXX>`.
    fn spm(&self, text: &str, scores: &[f32], space_prefix: bool) -> Vec<u32> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut escaped = String::with_capacity(text.len() + 3);
        if space_prefix {
            escaped.push('\u{2581}');
        }
        escaped.extend(text.chars().map(|c| if c == ' ' { '\u{2581}' } else { c }));
        // Symbols as byte ranges of `escaped`, linked left and right.
        let mut start: Vec<usize> = escaped.char_indices().map(|(i, _)| i).collect();
        let n = start.len();
        start.push(escaped.len());
        let mut len: Vec<usize> = (0..n).map(|i| start[i + 1] - start[i]).collect();
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut next: Vec<Option<usize>> = (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect();
        let mut heap = BinaryHeap::new();
        let bigram = |l: usize, r: usize, len: &[usize]| -> Option<Bigram> {
            let s = &escaped[start[l]..start[r] + len[r]];
            let id = *self.ids.get(s)? as usize;
            Some(Bigram {
                score: scores.get(id).copied().unwrap_or(0.0),
                left: l,
                right: r,
                size: s.len(),
            })
        };
        for i in 1..n {
            heap.extend(bigram(i - 1, i, &len));
        }
        while let Some(b) = heap.pop() {
            if len[b.left] == 0 || len[b.right] == 0 || len[b.left] + len[b.right] != b.size {
                continue;
            }
            len[b.left] += len[b.right];
            len[b.right] = 0;
            next[b.left] = next[b.right];
            if let Some(r) = next[b.right] {
                prev[r] = Some(b.left);
            }
            if let Some(p) = prev[b.left] {
                heap.extend(bigram(p, b.left, &len));
            }
            if let Some(r) = next[b.left] {
                heap.extend(bigram(b.left, r, &len));
            }
        }
        let mut out = Vec::new();
        let mut at = Some(0);
        while let Some(i) = at {
            let s = &escaped[start[i]..start[i] + len[i]];
            match self.ids.get(s) {
                Some(&id) => out.push(id),
                None => out.extend(
                    s.bytes()
                        .filter_map(|b| self.ids.get(&format!("<0x{b:02X}>")).copied()),
                ),
            }
            at = next[i];
        }
        out
    }
}

/// A candidate merge; the heap pops the best score first, then the leftmost.
#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

fn strings(h: &Header, key: &str) -> Result<Vec<String>, String> {
    match h.get(key) {
        Some(Value::Array(_, items)) => Ok(items
            .iter()
            .map(|v| match v {
                Value::String(s) => String::from_utf8_lossy(s).into_owned(),
                _ => String::new(),
            })
            .collect()),
        _ => Err(format!("no {key} array in the metadata")),
    }
}

/// Each expression splits every piece further; the text between matches stays a piece.
fn split(text: &str, exprs: &[Regex]) -> Vec<String> {
    let mut words = vec![text.to_string()];
    for re in exprs {
        let mut next = Vec::with_capacity(words.len());
        for w in &words {
            let mut at = 0;
            for m in re.find_iter(w).flatten() {
                if m.start() > at {
                    next.push(w[at..m.start()].to_string());
                }
                if m.end() > m.start() {
                    next.push(m.as_str().to_string());
                }
                at = m.end();
            }
            if at < w.len() {
                next.push(w[at..].to_string());
            }
        }
        words = next;
    }
    words
}

/// GPT-2's byte-to-character map: printable bytes stand for themselves, the others for the
/// characters from U+0100 on.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, 33..=126 | 161..=172 | 174..=255);
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).expect("in range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_byte_map() {
        assert_eq!(byte_char(b' '), '\u{120}');
        assert_eq!(byte_char(b'\n'), '\u{10a}');
        assert_eq!(byte_char(b'a'), 'a');
        assert_eq!(byte_char(0), '\u{100}');
    }

    #[test]
    fn splits_keep_the_text_between_matches() {
        let (exprs, _) = pre_tokenizer("smollm").unwrap();
        let re: Vec<Regex> = exprs.iter().map(|e| Regex::new(e).unwrap()).collect();
        assert_eq!(split("ab 12 c!", &re), ["ab", " ", "1", "2", " c", "!"]);
    }
}
