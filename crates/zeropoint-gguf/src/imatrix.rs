//! Importance matrices as `llama-imatrix` writes them (GGUF: `NAME.in_sum2` and `NAME.counts`
//! per weight, `imatrix.*` metadata), read and normalized as `llama-quantize` reads them: each
//! column's importance is its summed squared activation divided by the number of tokens seen.

use std::collections::BTreeMap;
use std::path::Path;

use zeropoint_core::ggml::{self, GgmlType};

use crate::error::{Error, Result};
use crate::read::GgufFile;
use crate::value::Value;

#[derive(Debug, Clone, Default)]
pub struct Imatrix {
    /// Per weight name: `ne0` importances per matrix (experts have several, one after another).
    pub entries: BTreeMap<String, Vec<f32>>,
    pub datasets: Vec<String>,
    pub chunk_count: u32,
}

impl Imatrix {
    pub fn read(path: &Path) -> Result<Imatrix> {
        let file = GgufFile::open(path)?;
        let h = &file.header;
        let bad = |m: String| Error::invalid(path, m);
        let keys = [
            "imatrix.datasets",
            "imatrix.chunk_count",
            "imatrix.chunk_size",
        ];
        if let Some(k) = keys.iter().find(|k| h.get(k).is_none()) {
            return Err(bad(format!(
                "not an importance matrix: no '{k}' key (llama-quantize refuses it too)"
            )));
        }
        let datasets = match h.get("imatrix.datasets") {
            Some(Value::Array(_, items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        let chunk_count = h
            .get("imatrix.chunk_count")
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32;
        let mut sums = BTreeMap::new();
        let mut counts = BTreeMap::new();
        for (i, t) in h.tensors.iter().enumerate() {
            let (map, name) = match (
                t.name.strip_suffix(".in_sum2"),
                t.name.strip_suffix(".counts"),
            ) {
                (Some(n), _) => (&mut sums, n),
                (_, Some(n)) => (&mut counts, n),
                _ => continue,
            };
            if t.ty != GgmlType::F32 {
                return Err(Error::tensor(
                    path,
                    &t.name,
                    format!("is {}, an importance matrix holds F32", t.ty),
                ));
            }
            let values = ggml::dequantize_rows(GgmlType::F32, file.data(i), t.row_len() as usize)
                .map_err(|e| Error::tensor(path, &t.name, e.to_string()))?;
            map.insert(name.to_string(), values);
        }
        let mut entries = BTreeMap::new();
        for (name, sum) in sums {
            let count = counts
                .remove(&name)
                .ok_or_else(|| bad(format!("'{name}.in_sum2' has no '{name}.counts'")))?;
            entries.insert(
                name.clone(),
                normalize(&sum, &count).map_err(|m| Error::tensor(path, &name, m))?,
            );
        }
        if let Some(name) = counts.keys().next() {
            return Err(bad(format!("'{name}.counts' has no '{name}.in_sum2'")));
        }
        if entries.is_empty() {
            return Err(bad("the importance matrix holds no entries".into()));
        }
        Ok(Imatrix {
            entries,
            datasets,
            chunk_count,
        })
    }
}

/// Sums over tokens divided by the (rounded) token count of each matrix; a matrix no token
/// reached gets importance 1 everywhere.
fn normalize(sums: &[f32], counts: &[f32]) -> Result<Vec<f32>, String> {
    if counts.is_empty() || !sums.len().is_multiple_of(counts.len()) {
        return Err(format!(
            "{} sums do not split into {} matrices",
            sums.len(),
            counts.len()
        ));
    }
    let ne0 = sums.len() / counts.len();
    let mut out = Vec::with_capacity(sums.len());
    for (row, &count) in sums.chunks(ne0).zip(counts) {
        let count = count.round() as i64 as f32;
        if count > 0.0 {
            out.extend(row.iter().map(|s| s / count));
        } else {
            out.extend(std::iter::repeat_n(1.0, ne0));
        }
    }
    Ok(out)
}
