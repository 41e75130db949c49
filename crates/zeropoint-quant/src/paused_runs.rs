//! Every calibration sample's float and simulated runs, stepped together from node to node, with
//! their live values kept on disk between steps.
//!
//! AdaRound must see a layer's inputs over all samples before any sample may go past the layer.
//! Holding every sample's activations in memory while it learns grows with the samples: 1024
//! samples of a 224×224 ResNet need gigabytes. Here memory holds the runs of the samples being
//! stepped (about one per thread) and the disk holds the others, one file per sample in the
//! system's temporary folder (`TMPDIR`), removed when done. The operating system's file cache
//! keeps them in memory where it has room, and that memory is not the process's.

use std::path::{Path, PathBuf};

use prost::Message;
use rayon::prelude::*;
use zeropoint_engine::exec::Paused;
use zeropoint_engine::{Executor, Value};
use zeropoint_onnx::{tensor_proto, TensorProto};

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::simulate::Simulation;

/// The paused runs, all before the same node.
pub struct PausedRuns {
    dir: tempfile::TempDir,
    samples: usize,
}

impl PausedRuns {
    /// Starts every sample's float run (of `float`) and simulated run (of `sim`, the same
    /// graph), before the first node: one per batch of the model's smallest batch size in
    /// `data`, read one at a time.
    pub fn start(float: &Executor, sim: &Simulation, mut data: Dataset) -> Result<PausedRuns> {
        let dir = tempfile::Builder::new()
            .prefix("zeropoint-runs-")
            .tempdir()
            .map_err(|e| Error::io(&std::env::temp_dir(), "make a folder in", e))?;
        let mut runs = PausedRuns { dir, samples: 0 };
        let unit = crate::dataset::unit_batch(&float.graph().inputs);
        while let Some(b) = data.next_batch(unit)? {
            let f = float.start(b.clone(), &mut |_, v| Ok(v))?;
            runs.save(runs.samples, &f, &sim.start(b)?)?;
            runs.samples += 1;
        }
        Ok(runs)
    }

    /// How many samples' runs there are.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Runs every sample on up to node `until` (not included), and returns what `look` makes of
    /// each sample's float and simulated values there, in sample order. The simulated runs
    /// pass every value through its quantizer; the float runs change nothing.
    pub fn step<T: Send>(
        &mut self,
        float: &Executor,
        sim: &Simulation,
        until: usize,
        look: impl Fn(&Paused, &Paused) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        let out = (0..self.samples)
            .into_par_iter()
            .map(|i| {
                let (f, q) = self.load(i)?;
                let f = float.resume(f, until, &mut |_, v| Ok(v))?;
                let q = sim.resume(q, until)?;
                let seen = look(&f, &q)?;
                self.save(i, &f, &q)?;
                Ok(seen)
            })
            .collect::<Result<Vec<T>>>()?;
        Ok(out)
    }

    fn path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{i}.runs"))
    }

    /// Writes sample `i`'s two runs over its file.
    fn save(&self, i: usize, float: &Paused, sim: &Paused) -> Result<()> {
        let mut bytes = Vec::new();
        for run in [float, sim] {
            encode_run(run, &mut bytes)?;
        }
        let path = self.path(i);
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, "write", e))
    }

    /// Reads sample `i`'s two runs back.
    fn load(&self, i: usize) -> Result<(Paused, Paused)> {
        let path = self.path(i);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, "read", e))?;
        let mut rest = bytes.as_slice();
        let float = decode_run(&mut rest, &path)?;
        let sim = decode_run(&mut rest, &path)?;
        Ok((float, sim))
    }
}

/// A run as its node index and its values, each a length-delimited `TensorProto`.
fn encode_run(run: &Paused, out: &mut Vec<u8>) -> Result<()> {
    out.extend_from_slice(&(run.next as u64).to_le_bytes());
    out.extend_from_slice(&(run.values.len() as u64).to_le_bytes());
    // In name order: the same bytes for the same run.
    let mut names: Vec<&String> = run.values.keys().collect();
    names.sort();
    for name in names {
        let t = tensor_proto::from_raw(run.values[name].to_raw(name)?);
        t.encode_length_delimited(out)
            .map_err(|e| Error::Environment(format!("encoding '{name}': {e}")))?;
    }
    Ok(())
}

/// The run [`encode_run`] wrote at the start of `bytes`, which move past it.
fn decode_run(bytes: &mut &[u8], path: &Path) -> Result<Paused> {
    let corrupt = || Error::new(path, "the file of a paused run is cut short");
    let mut word = || -> Result<u64> {
        let (head, rest) = bytes.split_first_chunk::<8>().ok_or_else(corrupt)?;
        *bytes = rest;
        Ok(u64::from_le_bytes(*head))
    };
    let next = word()? as usize;
    let count = word()? as usize;
    let mut values = std::collections::HashMap::with_capacity(count);
    for _ in 0..count {
        let t = TensorProto::decode_length_delimited(&mut *bytes)
            .map_err(|e| Error::at(path, "a paused run's value", e))?;
        let raw = tensor_proto::to_raw(&t, path)?;
        values.insert(raw.name.clone(), Value::from_raw(&raw)?);
    }
    Ok(Paused { next, values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeropoint_onnx::DType;

    /// A paused run's values come back from its file as they were, of every element type a run
    /// holds, and a file cut short is an error that names it.
    #[test]
    fn a_paused_run_survives_its_file() {
        let mut values = std::collections::HashMap::new();
        let floats: Vec<f32> = vec![1.5, -0.0, f32::INFINITY, 3.25e-40, -7.0, 0.1];
        values.insert("x".into(), Value::from_f32_vec(floats, &[2, 3]).unwrap());
        values.insert("shape".into(), Value::from_i64s(&[1, -1, i64::MAX]));
        for (name, dtype) in [
            ("mask", DType::Bool),
            ("codes", DType::I4),
            ("bytes", DType::U8),
        ] {
            let v = Value::from_ints(vec![0, 1, 1, 0, 1, 1], &[6], dtype).unwrap();
            values.insert(name.into(), v);
        }
        values.insert(
            "empty".into(),
            Value::from_f32_vec(Vec::new(), &[0, 4]).unwrap(),
        );
        let run = Paused { next: 17, values };
        let mut bytes = Vec::new();
        encode_run(&run, &mut bytes).unwrap();
        let path = Path::new("7.runs");
        let back = decode_run(&mut bytes.as_slice(), path).unwrap();
        assert_eq!(back.next, 17);
        assert_eq!(back.values.len(), run.values.len());
        for (name, v) in &run.values {
            let (a, b) = (
                v.to_raw(name).unwrap(),
                back.values[name].to_raw(name).unwrap(),
            );
            assert_eq!(
                (a.dtype, &a.shape, &a.data),
                (b.dtype, &b.shape, &b.data),
                "{name}"
            );
        }
        let cut = &bytes[..bytes.len() - 3];
        let e = decode_run(&mut &cut[..], path)
            .err()
            .expect("a cut file is refused");
        assert!(e.to_string().contains("7.runs"), "{e}");
    }
}
