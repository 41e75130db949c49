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

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};

use rayon::prelude::*;
use zeropoint_engine::exec::Paused;
use zeropoint_engine::{Executor, Value};
use zeropoint_onnx::{tensor_proto, RawTensor};

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

    /// Writes sample `i`'s two runs over its file, a value at a time: memory holds one value's
    /// bytes beside the runs, not the whole file (at 1024×1024 inputs a run's live values are
    /// hundreds of megabytes, and every thread saves one).
    fn save(&self, i: usize, float: &Paused, sim: &Paused) -> Result<()> {
        let path = self.path(i);
        let write = |e| write_error(&path, e);
        let mut file = BufWriter::new(File::create(&path).map_err(write)?);
        for run in [float, sim] {
            encode_run(run, &mut file).map_err(write)?;
        }
        file.flush().map_err(write)
    }

    /// Reads sample `i`'s two runs back.
    fn load(&self, i: usize) -> Result<(Paused, Paused)> {
        let path = self.path(i);
        let file = File::open(&path).map_err(|e| Error::io(&path, "read", e))?;
        let size = file.metadata().map_or(0, |m| m.len() as usize);
        let mut file = BufReader::new(file);
        let float = decode_run(&mut file, size, &path)?;
        let sim = decode_run(&mut file, size, &path)?;
        Ok((float, sim))
    }
}

/// The error of writing a paused run: where the disk is full, what fills it and what to do.
fn write_error(path: &Path, e: std::io::Error) -> Error {
    if e.kind() != std::io::ErrorKind::StorageFull {
        return Error::io(path, "write", e);
    }
    Error::new(
        path,
        "the disk is full: AdaRound and bias correction keep every sample's activations in the \
         temporary folder between layers; point TMPDIR at a larger disk, or pass fewer \
         --adaround-samples / --bias-correction-samples",
    )
}

/// A run as its node index and its values in name order (the same bytes for the same run),
/// each as its name, ONNX element type, shape and raw little-endian data, every length and
/// number a little-endian u64.
fn encode_run(run: &Paused, out: &mut impl Write) -> std::io::Result<()> {
    let word = |out: &mut dyn Write, n: usize| out.write_all(&(n as u64).to_le_bytes());
    word(out, run.next)?;
    word(out, run.values.len())?;
    let mut names: Vec<&String> = run.values.keys().collect();
    names.sort();
    for name in names {
        let raw = run.values[name]
            .to_raw(name)
            .map_err(std::io::Error::other)?;
        word(out, name.len())?;
        out.write_all(name.as_bytes())?;
        word(out, tensor_proto::onnx_code(raw.dtype) as usize)?;
        word(out, raw.shape.len())?;
        for &d in &raw.shape {
            word(out, d)?;
        }
        word(out, raw.data.len())?;
        out.write_all(&raw.data)?;
    }
    Ok(())
}

/// The next run [`encode_run`] wrote to `input`, a file of `size` bytes at `path`.
fn decode_run(input: &mut impl Read, size: usize, path: &Path) -> Result<Paused> {
    let corrupt = |what: &str| Error::new(path, format!("the file of a paused run {what}"));
    let word = |input: &mut dyn Read| -> Result<usize> {
        let mut b = [0u8; 8];
        input
            .read_exact(&mut b)
            .map_err(|_| corrupt("is cut short"))?;
        usize::try_from(u64::from_le_bytes(b)).map_err(|_| corrupt("is damaged"))
    };
    // A length is checked against the file's size before anything is allocated.
    let bytes = |input: &mut dyn Read, n: usize| -> Result<Vec<u8>> {
        if n > size {
            return Err(corrupt("is damaged"));
        }
        let mut v = vec![0u8; n];
        input
            .read_exact(&mut v)
            .map_err(|_| corrupt("is cut short"))?;
        Ok(v)
    };
    let next = word(input)?;
    let count = word(input)?;
    let mut values = std::collections::HashMap::new();
    for _ in 0..count {
        let name_len = word(input)?;
        let name = String::from_utf8(bytes(input, name_len)?).map_err(|_| corrupt("is damaged"))?;
        let code = i32::try_from(word(input)?).map_err(|_| corrupt("is damaged"))?;
        let dtype = tensor_proto::dtype_of(code).ok_or_else(|| corrupt("is damaged"))?;
        let rank = word(input)?;
        // No tensor has more axes; a larger rank is a damaged file, not one to read on.
        if rank > 64 {
            return Err(corrupt("is damaged"));
        }
        let shape = (0..rank).map(|_| word(input)).collect::<Result<Vec<_>>>()?;
        let data_len = word(input)?;
        let raw = RawTensor {
            name,
            shape,
            dtype,
            data: bytes(input, data_len)?,
        };
        values.insert(raw.name.clone(), Value::from_raw(&raw)?);
    }
    Ok(Paused { next, values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeropoint_onnx::DType;

    /// A full disk is named as such, with what to do; other write errors keep their cause.
    #[test]
    fn a_full_disk_says_what_fills_it() {
        let path = Path::new("/tmp/zeropoint-runs-x/3.runs");
        let full = write_error(path, std::io::ErrorKind::StorageFull.into()).to_string();
        assert!(full.contains("3.runs: the disk is full"), "{full}");
        assert!(
            full.contains("TMPDIR") && full.contains("--adaround-samples"),
            "{full}"
        );
        let denied = write_error(path, std::io::ErrorKind::PermissionDenied.into()).to_string();
        assert!(denied.contains("3.runs: cannot write"), "{denied}");
    }

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
        let back = decode_run(&mut bytes.as_slice(), bytes.len(), path).unwrap();
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
        let e = decode_run(&mut &cut[..], cut.len(), path)
            .err()
            .expect("a cut file is refused");
        assert!(
            e.to_string()
                .contains("7.runs: the file of a paused run is cut short"),
            "{e}"
        );
        // A damaged length is refused before it is allocated, and so is a rank no tensor has.
        let refused = |at: usize, value: u64, what: &str| {
            let mut damaged = bytes.clone();
            damaged[at..at + 8].copy_from_slice(&value.to_le_bytes());
            let e = decode_run(&mut damaged.as_slice(), damaged.len(), path)
                .err()
                .unwrap_or_else(|| panic!("{what} is refused"));
            assert!(
                e.to_string()
                    .contains("7.runs: the file of a paused run is damaged"),
                "{what}: {e}"
            );
        };
        // The first value's name length (after the node index and the count).
        refused(16, 1 << 62, "a name length of 2^62");
        // The first value's ("bytes") rank.
        refused(16 + 8 + "bytes".len() + 8, 65, "a rank of 65");
    }
}
