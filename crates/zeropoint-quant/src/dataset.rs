//! Model inputs for calibration and evaluation, streamed batch by batch: memory holds one batch,
//! however many samples the files have.
//!
//! Sources, one per model input (by input name, or in the model's input order):
//! - `.npy`: batch-first arrays, read with seeks;
//! - `.npz`: one member per input, named after it; stored (uncompressed, numpy's `savez`)
//!   members are read with seeks like `.npy`, compressed ones are decompressed once;
//! - MNIST-style idx files (`.idx`, `-ubyte`, optionally `.gz`): unsigned bytes, decoded and
//!   preprocessed as `(x·scale − mean) / std` into float32 [N, 1, H, W];
//! - a folder of PNG/JPEG images ([`crate::images`]): resized, cropped, normalized per channel,
//!   in the layout and size the model input declares;
//! - a folder of `.npz` (or, for one input, `.npy`) files, in name order: each file a batch of
//!   its own, whose sizes may differ from file to file (text lines of any width, audio of any
//!   length) where the model's free dimensions allow it. A batch never spans two files.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeropoint_engine::Value;
use zeropoint_graph::graph::dims_fit;
use zeropoint_graph::{Dim, ValueInfo};
use zeropoint_onnx::{element_count, npy, npz, DType, RawTensor};

use crate::error::{Error, Result};
use crate::idx;
use crate::images::{self, ImagePrep, Layout};

/// Turning pixels (idx bytes, image channels) into model inputs: `(x·scale − mean[c]) / std[c]`
/// (one value applies to every channel), after the image steps of `image`.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    pub scale: f32,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub image: ImagePrep,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            scale: 1.0 / 255.0,
            mean: vec![0.0],
            std: vec![1.0],
            image: ImagePrep::default(),
        }
    }
}

/// The samples of every model input, read in step.
pub struct Dataset {
    /// Samples in the dataset (the same for every input).
    pub len: usize,
    streams: Vec<(String, Stream)>,
    next: usize,
    /// Whether the data was read as one whole sample, each array a whole input
    /// ([`Dataset::open`]).
    pub whole: bool,
}

enum Stream {
    /// Rows of a C-order array at a byte offset of a file.
    Array {
        path: PathBuf,
        reader: BufReader<File>,
        start: u64,
        dtype: DType,
        sample: Vec<usize>,
    },
    /// Rows of a C-order array decompressed as they are read (a compressed `.npz` member):
    /// memory holds one batch, however large the archive.
    Inflating {
        path: PathBuf,
        reader: Box<dyn Read>,
        dtype: DType,
        sample: Vec<usize>,
    },
    /// Image files, decoded one batch at a time.
    Images {
        dir: PathBuf,
        files: Vec<PathBuf>,
        /// [N, C, H, W] or [N, H, W, C].
        sample: Vec<usize>,
        prep: Preprocess,
    },
    /// One array per file of a folder (the member `member` of each `.npz`, or each `.npy`),
    /// read one file at a time: sample sizes may differ between files.
    Files {
        dir: PathBuf,
        member: Option<String>,
        files: Vec<PathBuf>,
        /// Per file: its samples' shape (batch first) and element type. A file that is one
        /// whole sample ([`whole_files`]) has a first axis of one added here, not in the file.
        shapes: Vec<(Vec<usize>, DType)>,
        /// Along the first axis ([`Batch::Axis`] 0), or stacked on an axis of their own, one
        /// a run ([`Batch::Stacked`]).
        batch: Batch,
        /// Whether each file is one whole sample, its arrays the inputs' whole values.
        whole: bool,
        /// The file being read and its stream.
        open: Option<(usize, Box<Stream>)>,
    },
    /// An array in memory (a caller's own data: a notebook, a fuzzer; or data whose batch is
    /// not its first axis, read whole).
    Memory {
        path: PathBuf,
        /// Shared, so that every pass over the data reads the caller's array without a copy.
        array: Arc<RawTensor>,
        batch: Batch,
    },
    /// An idx file of unsigned bytes, read forward.
    Idx {
        path: PathBuf,
        reader: Box<dyn Read>,
        sample: Vec<usize>,
        prep: Preprocess,
    },
}

/// Where an input's samples lie in its array.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Batch {
    /// Along this axis (0 but for inputs like a recurrent state [2, batch, 128]).
    Axis(usize),
    /// Nowhere: the input is a scalar (a sample rate, a threshold), the same for every sample.
    Shared,
    /// Along a first axis the model's input does not have: the data has one more axis than
    /// the input declares, and each sample is a whole input (a model without a batch axis: a
    /// sequence [T, 576] with a state [1, 1, 128]). Each run takes one sample.
    Stacked,
}

/// Where the samples of an input declared `info` lie: a scalar is shared; the batch is the first
/// axis, unless that axis is fixed above 1 and a later one is free (a state [2, batch, 128]).
fn batch_of_input(info: &ValueInfo) -> Batch {
    let Some(shape) = &info.shape else {
        return Batch::Axis(0);
    };
    match shape.first() {
        None => Batch::Shared,
        Some(Dim::Fixed(n)) if *n > 1 => shape
            .iter()
            .position(|d| matches!(d, Dim::Sym(_)))
            .map_or(Batch::Axis(0), Batch::Axis),
        Some(_) => Batch::Axis(0),
    }
}

/// Data in memory: one batch-first array per model input, by input name, shared so that every
/// pass over the data reads the caller's arrays without a copy.
pub type Arrays = Vec<(String, Arc<RawTensor>)>;

impl Dataset {
    /// Opens the data for the model inputs `inputs`: each spec is `NAME=FILE` or `FILE`; a
    /// `.npz` spec provides every input it has a member for; unnamed `.npy`/idx specs are matched
    /// to the inputs in order.
    pub fn open(specs: &[String], inputs: &[ValueInfo], prep: &Preprocess) -> Result<Dataset> {
        let mut streams = open_streams(specs, inputs, prep)?;
        let whole = whole_files(&mut streams, inputs);
        arrange(&mut streams, inputs)?;
        let first = Path::new(specs.first().map_or("", String::as_str));
        let len = match common_length(&streams, inputs, first) {
            Ok(len) => len,
            Err(e) if counts_disagree(&streams, inputs) => {
                return one_whole_sample(streams, inputs).unwrap_or(Err(e))
            }
            Err(e) => return Err(e),
        };
        Ok(Dataset {
            len,
            streams,
            next: 0,
            whole,
        })
    }

    /// The data of `specs` ([`open`](Dataset::open)), or, when `arrays` holds any, those arrays
    /// ([`from_arrays`](Dataset::from_arrays)).
    pub fn from_specs_or_arrays(
        specs: &[String],
        arrays: Arrays,
        inputs: &[ValueInfo],
        prep: &Preprocess,
    ) -> Result<Dataset> {
        if arrays.is_empty() {
            Dataset::open(specs, inputs, prep)
        } else {
            Dataset::from_arrays(arrays, inputs)
        }
    }

    /// Data already in memory: one batch-first array per model input, by input name. Errors
    /// name the array as `<memory>/NAME`.
    pub fn from_arrays(arrays: Arrays, inputs: &[ValueInfo]) -> Result<Dataset> {
        let streams = memory_streams(arrays, inputs)?;
        let len = common_length(&streams, inputs, Path::new("<memory>"))?;
        Ok(Dataset {
            len,
            streams,
            next: 0,
            whole: false,
        })
    }

    /// The arrays of `specs` (or `arrays`) read as `zeropoint run` reads them, each a whole
    /// input, stacked on a new first axis as one sample: the data of a model without a batch
    /// axis whose first axis is free ([frames, bins]), which would otherwise be read as frames.
    /// None where an array has not exactly the shape its input declares, or where the arrays
    /// hold more than `limit` bytes (nothing is read then).
    pub fn read_whole(
        specs: &[String],
        arrays: Arrays,
        inputs: &[ValueInfo],
        prep: &Preprocess,
        limit: usize,
    ) -> Result<Option<Arrays>> {
        let streams = if arrays.is_empty() {
            let mut streams = open_streams(specs, inputs, prep)?;
            arrange(&mut streams, inputs)?;
            streams
        } else {
            memory_streams(arrays, inputs)?
        };
        let bytes = streams.iter().try_fold(0usize, |sum, (_, s)| {
            let (one, dtype) = s.one_sample();
            // A value every sample shares (a sample rate) is held once.
            let held = if s.batch() == Batch::Shared {
                1
            } else {
                s.samples()
            };
            element_count(&one)?
                .checked_mul(held)?
                .checked_mul(dtype.size())?
                .checked_add(sum)
        });
        if bytes.is_none_or(|b| b > limit) {
            return Ok(None);
        }
        whole_arrays(streams, inputs).transpose()
    }

    /// The next `n` samples (fewer at the end), or None when all were read.
    pub fn next_batch(&mut self, n: usize) -> Result<Option<HashMap<String, Value>>> {
        // Samples stacked on an axis the model does not have cannot share a run.
        let n = if self.stacked() { n.min(1) } else { n };
        let n = self
            .streams
            .iter()
            .map(|(_, s)| s.contiguous(self.next))
            .fold(n.min(self.len - self.next), usize::min);
        if n == 0 {
            return Ok(None);
        }
        let mut batch = HashMap::new();
        for (name, stream) in &mut self.streams {
            let raw = stream.read(self.next, n)?;
            let v = Value::from_raw(&raw).map_err(|e| Error::at(stream.path(), "batch", e))?;
            batch.insert(name.clone(), v);
        }
        self.next += n;
        Ok(Some(batch))
    }

    /// Whether the samples are stacked on an axis of their own ([`Batch::Stacked`]): each batch
    /// is then one sample.
    pub fn stacked(&self) -> bool {
        self.streams
            .iter()
            .any(|(_, s)| s.batch() == Batch::Stacked)
    }

    /// How many samples the batches read so far held.
    pub fn consumed(&self) -> usize {
        self.next
    }

    /// The shape of one sample (a batch of 1) of every input the data provides.
    pub fn sample_shapes(&self) -> HashMap<String, Vec<usize>> {
        self.streams
            .iter()
            .map(|(name, stream)| (name.clone(), stream.one_sample().0))
            .collect()
    }

    /// Refuses data whose single sample is over the memory limit, before anything is read or
    /// run on it (the message says how to lower the batch, which cannot help here).
    pub fn check_one_sample(&self) -> Result<()> {
        for (_, stream) in &self.streams {
            let (one, dtype) = stream.one_sample();
            let elements = element_count(&one).unwrap_or(usize::MAX);
            batch_bytes(stream.path(), elements, dtype.size().max(4), 1)?;
        }
        Ok(())
    }

    /// Limits the dataset to its first `n` samples.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// The dataset limited to its first `n` samples when `n` is given (`--samples`).
    pub fn at_most(mut self, n: Option<usize>) -> Dataset {
        if let Some(n) = n {
            self.truncate(n);
        }
        self
    }

    /// Passes over the next `n` samples without reading them.
    pub fn skip(&mut self, n: usize) {
        self.next = (self.next + n).min(self.len);
    }

    /// Drops the samples after the last whole batch of a model that takes batches of exactly
    /// `unit` ([`unit_batch`]); refuses data that has not one. Stacked samples are whole
    /// inputs each, batch and all: nothing is dropped.
    pub fn whole_batches(&mut self, unit: usize, path: &Path) -> Result<()> {
        if self.stacked() {
            return Ok(());
        }
        if unit > 1 && self.len < unit {
            return Err(Error::new(
                path,
                format!(
                    "{} samples, but the model takes batches of exactly {unit}",
                    self.len
                ),
            ));
        }
        self.len -= self.len % unit.max(1);
        Ok(())
    }
}

/// A stream per model input the specs provide data for.
fn open_streams(
    specs: &[String],
    inputs: &[ValueInfo],
    prep: &Preprocess,
) -> Result<Vec<(String, Stream)>> {
    let mut streams: Vec<(String, Stream)> = Vec::new();
    let mut positional = inputs.iter();
    // The input a spec is for: the one it names, else the next in the model's order.
    let mut input_for = |name: Option<String>, path: &Path, what: &str| -> Result<String> {
        match name {
            Some(n) => Ok(n),
            None => positional
                .next()
                .map(|i| i.name.clone())
                .ok_or_else(|| Error::new(path, format!("more data {what} than model inputs"))),
        }
    };
    for spec in specs {
        let (name, path) = match spec.split_once('=') {
            Some((n, f)) if !n.is_empty() => (Some(n.to_string()), PathBuf::from(f)),
            _ => (None, PathBuf::from(spec)),
        };
        if path.is_dir() && is_array_folder(&path)? {
            for (member, files) in array_folder(&path)? {
                let input = match member {
                    Some(m) => m,
                    None => input_for(name.clone(), &path, "sources")?,
                };
                streams.push((input, files));
            }
        } else if path.is_dir() {
            let name = input_for(name, &path, "sources")?;
            let info = inputs.iter().find(|i| i.name == name);
            streams.push((name.clone(), open_images(&path, info, prep)?));
        } else if is_npz(&path) {
            streams.extend(open_npz(&path)?);
        } else {
            let name = input_for(name, &path, "files")?;
            let stream = if is_idx(&path) {
                open_idx(&path, prep)?
            } else {
                open_npy(&path)?
            };
            streams.push((name, stream));
        }
    }
    Ok(streams)
}

/// The number of samples, checking that every stream is a model input that fits it, that they
/// all have as many samples, and that every input has data. `first` (the first spec) is named
/// when data is missing.
fn common_length(
    streams: &[(String, Stream)],
    inputs: &[ValueInfo],
    first: &Path,
) -> Result<usize> {
    let mut len = None;
    let stacked = streams.iter().find(|(_, s)| s.batch() == Batch::Stacked);
    for (name, s) in streams {
        let shared = s.batch() == Batch::Shared;
        if let (Some((whole, _)), Batch::Axis(_)) = (stacked, s.batch()) {
            return Err(Error::new(
                s.path(),
                format!(
                    "the samples of '{whole}' are stacked on a first axis of their own (one axis more than the input declares), those of '{name}' are not: stack every input's samples the same way"
                ),
            ));
        }
        let info = inputs.iter().find(|i| &i.name == name).ok_or_else(|| {
            let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
            Error::new(
                s.path(),
                format!(
                    "'{name}' is not a model input (the inputs: {})",
                    names.join(", ")
                ),
            )
        })?;
        s.check(info)?;
        let n = s.samples();
        if !shared && *len.get_or_insert(n) != n {
            return Err(Error::new(
                s.path(),
                format!(
                    "{n} samples of '{name}', but {} of the other inputs{}",
                    len.unwrap_or(0),
                    stacking_hint(inputs)
                ),
            ));
        }
    }
    if let Some(missing) = inputs
        .iter()
        .find(|i| !streams.iter().any(|(n, _)| *n == i.name))
    {
        return Err(Error::new(
            first,
            format!("no data for model input '{}'", missing.name),
        ));
    }
    match len.unwrap_or(0) {
        0 => Err(Error::new(first, "the dataset is empty (0 samples)")),
        n => Ok(n),
    }
}

impl Stream {
    fn path(&self) -> &Path {
        match self {
            Stream::Array { path, .. }
            | Stream::Idx { path, .. }
            | Stream::Memory { path, .. }
            | Stream::Inflating { path, .. } => path,
            Stream::Images { dir, .. } | Stream::Files { dir, .. } => dir,
        }
    }

    fn sample_shape(&self) -> (&[usize], DType) {
        match self {
            Stream::Array { sample, dtype, .. } | Stream::Inflating { sample, dtype, .. } => {
                (sample, *dtype)
            }
            Stream::Idx { sample, .. } | Stream::Images { sample, .. } => (sample, DType::F32),
            Stream::Memory { array, .. } => (&array.shape, array.dtype),
            Stream::Files { shapes, .. } => (&shapes[0].0, shapes[0].1),
        }
    }

    /// The shape of a batch of one sample, and the element type.
    fn one_sample(&self) -> (Vec<usize>, DType) {
        let (shape, dtype) = self.sample_shape();
        let mut one = shape.to_vec();
        match self.batch() {
            Batch::Axis(k) => one[k] = 1,
            Batch::Stacked => drop(one.remove(0)),
            Batch::Shared => {}
        }
        (one, dtype)
    }

    fn batch(&self) -> Batch {
        match self {
            Stream::Memory { batch, .. } | Stream::Files { batch, .. } => *batch,
            _ => Batch::Axis(0),
        }
    }

    fn samples(&self) -> usize {
        match self {
            Stream::Array { sample, .. }
            | Stream::Inflating { sample, .. }
            | Stream::Idx { sample, .. }
            | Stream::Images { sample, .. } => sample[0],
            Stream::Memory { array, batch, .. } => match batch {
                Batch::Axis(k) => array.shape[*k],
                Batch::Stacked => array.shape[0],
                Batch::Shared => usize::MAX,
            },
            Stream::Files { shapes, .. } => shapes.iter().map(|(s, _)| s[0]).sum(),
        }
    }

    /// How many samples from `from` on can be read as one batch: to the end of the file for a
    /// folder of files, else all.
    fn contiguous(&self, from: usize) -> usize {
        let Stream::Files { shapes, .. } = self else {
            return usize::MAX;
        };
        let mut start = 0;
        for (shape, _) in shapes {
            if from < start + shape[0] {
                return start + shape[0] - from;
            }
            start += shape[0];
        }
        0
    }

    /// The data fits the declared input: element type, and every fixed dimension but the batch
    /// (in every file of a folder).
    fn check(&self, info: &ValueInfo) -> Result<()> {
        if let Stream::Files {
            files,
            shapes,
            batch,
            ..
        } = self
        {
            for (file, (shape, dtype)) in files.iter().zip(shapes) {
                check_fits(file, info, shape, *batch, *dtype)?;
            }
            return Ok(());
        }
        let (shape, dtype) = self.sample_shape();
        check_fits(self.path(), info, shape, self.batch(), dtype)
    }

    /// Samples `from .. from + n`, as a batch-first tensor (streams that read forward are read
    /// in order: `from` is where the last batch ended).
    fn read(&mut self, from: usize, n: usize) -> Result<RawTensor> {
        let (one, dtype) = self.one_sample();
        let elements = element_count(&one).unwrap_or(usize::MAX);
        // A folder's files check their own batches.
        if !matches!(self, Stream::Files { .. }) {
            batch_bytes(self.path(), elements, dtype.size().max(4), n)?;
        }
        match self {
            Stream::Files {
                files,
                shapes,
                member,
                open,
                batch,
                whole,
                ..
            } => {
                let at = (member.as_deref(), open);
                let mut sample = read_from_files(files, shapes, at, from, n, *whole)?;
                // One sample, without the stacking axis (next_batch asks for one).
                if *batch == Batch::Stacked && !*whole {
                    sample.shape.remove(0);
                }
                Ok(sample)
            }
            Stream::Array {
                path,
                reader,
                start,
                dtype,
                sample,
            } => {
                let row: usize = sample[1..].iter().product::<usize>() * dtype.size();
                let mut data = vec![0u8; row * n];
                reader
                    .seek(SeekFrom::Start(*start + (row * from) as u64))
                    .and_then(|_| reader.read_exact(&mut data))
                    .map_err(|e| Error::io(path, "read", e))?;
                Ok(batch_of(sample, n, *dtype, data))
            }
            Stream::Memory { array, batch, .. } => Ok(match *batch {
                Batch::Axis(k) => take_along(array, k, from, n),
                Batch::Stacked => {
                    // One sample, without the stacking axis (next_batch asks for one).
                    let mut one = take_along(array, 0, from, 1);
                    one.shape.remove(0);
                    one
                }
                Batch::Shared => RawTensor::clone(array),
            }),
            Stream::Inflating {
                path,
                reader,
                dtype,
                sample,
            } => {
                let row: usize = sample[1..].iter().product::<usize>() * dtype.size();
                let mut data = vec![0u8; row * n];
                reader
                    .read_exact(&mut data)
                    .map_err(|e| Error::io(path, "decompress", e))?;
                Ok(batch_of(sample, n, *dtype, data))
            }
            Stream::Images {
                files,
                sample,
                prep,
                ..
            } => read_images(&files[from..from + n], sample, prep),
            Stream::Idx {
                path,
                reader,
                sample,
                prep,
            } => {
                let row: usize = sample[1..].iter().product();
                let mut bytes = vec![0u8; row * n];
                reader
                    .read_exact(&mut bytes)
                    .map_err(|e| Error::io(path, "read", e))?;
                let data = bytes
                    .iter()
                    .flat_map(|&b| {
                        ((b as f32 * prep.scale - prep.mean[0]) / prep.std[0]).to_le_bytes()
                    })
                    .collect();
                Ok(batch_of(sample, n, DType::F32, data))
            }
        }
    }
}

/// The images `files`, decoded into a batch of `sample`'s shape (its first axis aside).
fn read_images(files: &[PathBuf], sample: &[usize], prep: &Preprocess) -> Result<RawTensor> {
    let (channels, size) = match prep.image.layout {
        Layout::Nchw => (sample[1], (sample[2], sample[3])),
        Layout::Nhwc => (sample[3], (sample[1], sample[2])),
    };
    let target = images::Target {
        channels,
        size,
        prep: &prep.image,
        scale: prep.scale,
        mean: &prep.mean,
        std: &prep.std,
    };
    let mut data = Vec::new();
    for f in files {
        let x = images::load(f, &target)?;
        data.extend(x.iter().flat_map(|v| v.to_le_bytes()));
    }
    Ok(batch_of(sample, files.len(), DType::F32, data))
}

/// Refuses a batch of `n` samples of `elements` values of `size` bytes (in memory: decoded
/// samples are float32) over the memory limit, before it is allocated.
fn batch_bytes(path: &Path, elements: usize, size: usize, n: usize) -> Result<()> {
    let bytes = (elements as u128)
        .saturating_mul(size as u128)
        .saturating_mul(n as u128);
    let samples = if n == 1 { "sample" } else { "samples" };
    zeropoint_onnx::limits::check(bytes, &format!("a batch of {n} {samples}"))
        .map_err(|m| Error::new(path, format!("{m}; lower --batch or --samples")))
}

/// The streams of arrays in memory, one batch-first array per model input, by input name. Errors
/// name the array as `<memory>/NAME`.
fn memory_streams(arrays: Arrays, inputs: &[ValueInfo]) -> Result<Vec<(String, Stream)>> {
    arrays
        .into_iter()
        .map(|(name, array)| {
            let path = Path::new("<memory>").join(&name);
            let bytes = element_count(&array.shape).and_then(|n| n.checked_mul(array.dtype.size()));
            if bytes != Some(array.data.len()) {
                return Err(Error::new(
                    &path,
                    format!(
                        "{} bytes do not hold a {} array of shape {:?}",
                        array.data.len(),
                        array.dtype,
                        array.shape
                    ),
                ));
            }
            let batch = inputs
                .iter()
                .find(|i| i.name == name)
                .map_or(Batch::Axis(0), |info| batch_of_data(info, &array.shape));
            if array.shape.is_empty() && batch != Batch::Shared {
                return Err(Error::new(
                    &path,
                    "a batch-first array needs at least one axis",
                ));
            }
            Ok((name, Stream::Memory { path, array, batch }))
        })
        .collect()
}

/// Whether inputs whose data fits them count different numbers of samples (the only refusal
/// [`one_whole_sample`] may replace: an empty or ill-fitting set keeps its own).
fn counts_disagree(streams: &[(String, Stream)], inputs: &[ValueInfo]) -> bool {
    let mut counts = HashSet::new();
    for (name, s) in streams {
        let Some(info) = inputs.iter().find(|i| &i.name == name) else {
            return false;
        };
        if s.check(info).is_err() {
            return false;
        }
        if s.batch() != Batch::Shared {
            counts.insert(s.samples());
        }
    }
    counts.len() > 1
}

/// Data whose inputs disagree on their number of samples, read as `zeropoint run` reads it: one
/// sample, each array a whole input (a graph network's nodes and edges, a sequence beside its
/// state), from the streams [`Dataset::open`] opened and arranged (nothing read yet but the
/// arrays [`arrange`] holds whole). None unless every array has exactly the shape its input
/// declares; then the refusal stands, with its hint.
fn one_whole_sample(
    streams: Vec<(String, Stream)>,
    inputs: &[ValueInfo],
) -> Option<Result<Dataset>> {
    let arrays = match whole_arrays(streams, inputs)? {
        Ok(arrays) => arrays,
        Err(e) => return Some(Err(e)),
    };
    Some(Dataset::from_arrays(arrays, inputs).map(|d| Dataset { whole: true, ..d }))
}

/// Every array of `streams` read whole, with a new first axis of one (a scalar as it is): one
/// sample stacked ([`Batch::Stacked`]). None unless every array has exactly the shape its input
/// declares.
fn whole_arrays(streams: Vec<(String, Stream)>, inputs: &[ValueInfo]) -> Option<Result<Arrays>> {
    let mut arrays = Vec::new();
    for (name, mut stream) in streams {
        let declared = inputs.iter().find(|i| i.name == name)?.shape.as_ref()?;
        let mut whole = match stream {
            Stream::Array { .. } | Stream::Inflating { .. } => {
                let n = stream.samples();
                match stream.read(0, n) {
                    Ok(whole) => whole,
                    Err(e) => return Some(Err(e)),
                }
            }
            Stream::Memory { array, .. } => Arc::unwrap_or_clone(array),
            _ => return None,
        };
        // A scalar (a sample rate) is read as one value.
        if declared.is_empty() && whole.len() == 1 {
            whole.shape.clear();
        }
        if whole.shape.len() != declared.len() || !dims_fit(declared, &whole.shape) {
            return None;
        }
        // Stacked on an axis of its own; a scalar is shared as it is.
        if !declared.is_empty() {
            whole.shape.insert(0, 1);
        }
        arrays.push((name, Arc::new(whole)));
    }
    Some(Ok(arrays))
}

/// Marks a folder of files that are each one whole sample, as `zeropoint run` reads a file (a
/// graph network's nodes and edges, one molecule a file): every array has exactly the shape its
/// input declares, and the first axes do not count samples: a file's arrays count differently
/// there, or an input's samples would not lie there (edges [2, edges]). False, and nothing
/// changed, where the data is not such a folder.
fn whole_files(streams: &mut [(String, Stream)], inputs: &[ValueInfo]) -> bool {
    let mut not_samples = false;
    let mut firsts: Vec<HashSet<usize>> = Vec::new();
    for (name, stream) in streams.iter() {
        let Stream::Files { shapes, .. } = stream else {
            return false;
        };
        let Some(info) = inputs.iter().find(|i| &i.name == name) else {
            return false;
        };
        let declared = info.shape.as_deref().unwrap_or_default();
        if declared.is_empty() || !shapes.iter().all(|(s, _)| dims_fit(declared, s)) {
            return false;
        }
        not_samples |= batch_of_input(info) != Batch::Axis(0);
        firsts.resize(firsts.len().max(shapes.len()), HashSet::new());
        for (counts, (shape, _)) in firsts.iter_mut().zip(shapes) {
            counts.insert(shape[0]);
        }
    }
    if !(not_samples || firsts.iter().any(|counts| counts.len() > 1)) {
        return false;
    }
    for (_, stream) in streams.iter_mut() {
        if let Stream::Files {
            shapes,
            batch,
            whole,
            ..
        } = stream
        {
            shapes.iter_mut().for_each(|(shape, _)| shape.insert(0, 1));
            (*batch, *whole) = (Batch::Stacked, true);
        }
    }
    true
}

/// Reads whole, into memory, the data of inputs whose samples do not lie along the first axis
/// (see [`batch_of_input`]): a recurrent state [2, N, 128], a scalar shared by every sample, and
/// samples stacked on an axis of their own ([`Batch::Stacked`]).
fn arrange(streams: &mut [(String, Stream)], inputs: &[ValueInfo]) -> Result<()> {
    for (name, stream) in streams.iter_mut() {
        let Some(info) = inputs.iter().find(|i| &i.name == name) else {
            continue; // common_length names it
        };
        let batch = batch_of_data(info, stream.sample_shape().0);
        if batch == Batch::Axis(0) || batch == stream.batch() {
            continue;
        }
        // A folder's files each hold samples stacked on an axis of their own: read file by file.
        if let (Stream::Files { batch: b, .. }, Batch::Stacked) = (&mut *stream, batch) {
            *b = batch;
            continue;
        }
        if matches!(
            stream,
            Stream::Files { .. } | Stream::Images { .. } | Stream::Idx { .. }
        ) {
            return Err(Error::new(
                stream.path(),
                format!(
                    "input '{name}' ({}) does not take its samples along its first axis: give it as one array (.npy or an .npz member)",
                    info.shape_text()
                ),
            ));
        }
        let path = stream.path().to_path_buf();
        let mut array = stream.read(0, stream.samples())?;
        if batch == Batch::Shared && array.len() == 1 {
            array.shape.clear();
        }
        *stream = Stream::Memory {
            path,
            array: Arc::new(array),
            batch,
        };
    }
    Ok(())
}

/// For data whose inputs disagree on their number of samples, the way to give whole samples:
/// where an input has no free axis to batch along (a state [1, 1, 128]), and where every input
/// has one (a graph network's nodes and edges).
fn stacking_hint(inputs: &[ValueInfo]) -> String {
    let fixed = inputs.iter().find(|i| match (batch_of_input(i), &i.shape) {
        (Batch::Axis(k), Some(shape)) => matches!(shape.get(k), Some(Dim::Fixed(_))),
        _ => false,
    });
    match fixed {
        Some(i) => format!(
            " (input '{}' {} has no free axis for samples: to give whole samples, stack each input's on a new first axis, e.g. [N, {}])",
            i.name,
            i.shape_text(),
            i.shape_text().trim_matches(|c| c == '[' || c == ']')
        ),
        // Every input's first axis is free, yet they count differently: not samples, as a
        // graph's nodes and edges are not.
        None => " (if the first axes are not samples, as a graph network's nodes and edges are not: stack each input's samples on a new first axis, one axis more than the input declares)".into(),
    }
}

/// Where the samples lie in data of `shape` for the input declared `info`: stacked on a first
/// axis of their own where the data has one axis more than the declared shape (not for a scalar
/// input, whose one value every sample shares), else as [`batch_of_input`] says.
fn batch_of_data(info: &ValueInfo, shape: &[usize]) -> Batch {
    let stacked = info
        .shape
        .as_ref()
        .is_some_and(|decl| !decl.is_empty() && shape.len() == decl.len() + 1);
    if stacked {
        Batch::Stacked
    } else {
        batch_of_input(info)
    }
}

/// Samples `from .. from + n` along `axis` of `array`.
fn take_along(array: &RawTensor, axis: usize, from: usize, n: usize) -> RawTensor {
    let size = array.dtype.size();
    let outer: usize = array.shape[..axis].iter().product();
    let inner: usize = array.shape[axis + 1..].iter().product::<usize>() * size;
    let len = array.shape[axis];
    let mut data = Vec::with_capacity(outer * n * inner);
    for o in 0..outer {
        let start = (o * len + from) * inner;
        data.extend_from_slice(&array.data[start..start + n * inner]);
    }
    let mut shape = array.shape.clone();
    shape[axis] = n;
    RawTensor {
        name: String::new(),
        dtype: array.dtype,
        shape,
        data,
    }
}

/// `n` samples of shape `sample[1..]` as one tensor.
fn batch_of(sample: &[usize], n: usize, dtype: DType, data: Vec<u8>) -> RawTensor {
    let mut shape = sample.to_vec();
    shape[0] = n;
    RawTensor {
        name: String::new(),
        shape,
        dtype,
        data,
    }
}

fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

fn is_npz(path: &Path) -> bool {
    extension(path) == "npz"
}

/// idx files: `*.idx`, `*-ubyte`, `*.idx3-ubyte`..., optionally gzip-compressed.
fn is_idx(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    name.ends_with("ubyte") || name.ends_with(".idx")
}

/// The dtype and shape of the `.npy` image `reader` is at, and the bytes its header took; None
/// for an array whose rows do not lie one after the other as little-endian values (numpy's
/// Fortran order, as `savez` writes a transposed array, or a big-endian type), which
/// [`whole_array`] reads instead.
fn npy_header(
    reader: &mut impl Read,
    path: &Path,
    name: &str,
) -> Result<Option<(DType, Vec<usize>, u64)>> {
    let h = npy::read_header(reader, path, name)?;
    if h.fortran_order && h.shape.len() > 1 || !h.little_endian {
        return Ok(None);
    }
    // A scalar reads as one element: the input it is for decides whether that is one sample or
    // a value shared by all (`arrange`).
    let shape = if h.shape.is_empty() { vec![1] } else { h.shape };
    Ok(Some((h.dtype, shape, h.data_offset as u64)))
}

/// The `.npy` image `image` (`size` bytes, read by `read`) whole in memory, reordered as
/// `zeropoint run` reads it: for an array that cannot be read row by row ([`npy_header`]).
fn whole_array(
    path: &Path,
    name: &str,
    size: u64,
    read: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Stream> {
    let what = format!("tensor '{name}' (Fortran-ordered or big-endian: read whole)");
    zeropoint_onnx::limits::check(u128::from(size), &what).map_err(|m| Error::new(path, m))?;
    let mut array = npy::parse_raw(&read()?, path, name)?;
    if array.shape.is_empty() {
        array.shape.push(1);
    }
    Ok(Stream::Memory {
        path: path.to_path_buf(),
        array: Arc::new(array),
        batch: Batch::Axis(0),
    })
}

/// The `.npy` image at `base` of the file `reader` reads, as rows read with seeks (None where
/// it cannot be, [`npy_header`]).
fn array_stream(
    path: &Path,
    mut reader: BufReader<File>,
    base: u64,
    name: &str,
) -> Result<Option<Stream>> {
    reader
        .seek(SeekFrom::Start(base))
        .map_err(|e| Error::io(path, "read", e))?;
    let Some((dtype, sample, header)) = npy_header(&mut reader, path, name)? else {
        return Ok(None);
    };
    let start = base + header;
    let need = element_count(&sample).and_then(|n| n.checked_mul(dtype.size()));
    let size = reader.get_ref().metadata().map(|m| m.len()).unwrap_or(0);
    if need.is_none_or(|need| start + need as u64 > size) {
        return Err(Error::new(
            path,
            format!("truncated: shape {sample:?} of {dtype} does not fit the file"),
        ));
    }
    Ok(Some(Stream::Array {
        path: path.to_path_buf(),
        reader,
        start,
        dtype,
        sample,
    }))
}

fn open_npy(path: &Path) -> Result<Stream> {
    let file = zeropoint_onnx::limits::open_regular(path)?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let size = file.metadata().map_or(0, |m| m.len());
    match array_stream(path, BufReader::new(file), 0, &name)? {
        Some(stream) => Ok(stream),
        None => whole_array(path, &name, size, || {
            std::fs::read(path).map_err(|e| Error::io(path, "read", e))
        }),
    }
}

/// Every member of an `.npz`: stored ones read with seeks, compressed ones decompressed as they
/// are read.
fn open_npz(path: &Path) -> Result<Vec<(String, Stream)>> {
    let mut out = Vec::new();
    for member in npz::members(path)? {
        let stream = match member.stored_at() {
            Some(start) => {
                let file = zeropoint_onnx::limits::open_regular(path)?;
                array_stream(path, BufReader::new(file), start, &member.name)?
            }
            None => inflating_stream(path, &member)?,
        };
        let stream = match stream {
            Some(stream) => stream,
            None => whole_array(path, &member.name, member.size, || {
                let mut bytes = Vec::new();
                // No more than the archive declares (and the limit allowed): not a bomb.
                let mut reader = member.open(path)?.take(member.size);
                reader
                    .read_to_end(&mut bytes)
                    .map_err(|e| Error::io(path, "read", e))?;
                Ok(bytes)
            })?,
        };
        out.push((member.name, stream));
    }
    Ok(out)
}

/// A compressed member as rows decompressed on the fly. The archive's word for the member's size
/// must be the header's: a member that would decompress to more than its array is refused here,
/// before any data is read.
fn inflating_stream(path: &Path, member: &npz::Member) -> Result<Option<Stream>> {
    let mut reader = member.open(path)?;
    let Some((dtype, sample, header)) = npy_header(&mut reader, path, &member.name)? else {
        return Ok(None);
    };
    let data = element_count(&sample).and_then(|n| n.checked_mul(dtype.size()));
    if data.and_then(|d| (d as u64).checked_add(header)) != Some(member.size) {
        return Err(Error::new(
            path,
            format!(
                "tensor '{}': the archive says the member holds {} bytes, its .npy header {sample:?} of {dtype}",
                member.name, member.size
            ),
        ));
    }
    Ok(Some(Stream::Inflating {
        path: path.to_path_buf(),
        reader,
        dtype,
        sample,
    }))
}

/// A folder of images for the input `info`, whose declared shape gives channels and size (or
/// the crop does).
fn open_images(dir: &Path, info: Option<&ValueInfo>, prep: &Preprocess) -> Result<Stream> {
    let files = images::list(dir)?;
    let fixed = |d: Option<&Dim>| match d {
        Some(Dim::Fixed(n)) => Some(*n),
        _ => None,
    };
    let shape = info.and_then(|i| i.shape.clone()).unwrap_or_default();
    if shape.len() != 4 {
        return Err(Error::new(
            dir,
            "image folders feed 4-D image inputs ([N, C, H, W] or [N, H, W, C])",
        ));
    }
    let (c_at, hw_at) = match prep.image.layout {
        Layout::Nchw => (1, [2, 3]),
        Layout::Nhwc => (3, [1, 2]),
    };
    let channels = fixed(shape.get(c_at)).unwrap_or(3);
    let crop = prep.image.crop.map(|(h, w)| (h as usize, w as usize));
    let (h, w) = match (fixed(shape.get(hw_at[0])), fixed(shape.get(hw_at[1])), crop) {
        (Some(h), Some(w), _) => (h, w),
        (_, _, Some(c)) => c,
        _ => {
            return Err(Error::new(
                dir,
                "the model input has no fixed image size: give --crop HxW",
            ))
        }
    };
    if !matches!(channels, 1 | 3) {
        return Err(Error::new(
            dir,
            format!("the model takes {channels} channels; images give 1 or 3"),
        ));
    }
    let sample = match prep.image.layout {
        Layout::Nchw => vec![files.len(), channels, h, w],
        Layout::Nhwc => vec![files.len(), h, w, channels],
    };
    Ok(Stream::Images {
        dir: dir.to_path_buf(),
        files,
        sample,
        prep: prep.clone(),
    })
}

/// An idx file of images [N, H, W], read forward as [N, 1, H, W].
fn open_idx(path: &Path, prep: &Preprocess) -> Result<Stream> {
    let (reader, dims) = idx::open(path)?;
    // Images [N, H, W] become [N, 1, H, W]; labels [N] are not model inputs.
    if dims.len() != 3 {
        return Err(Error::new(
            path,
            format!("idx images must be [N, H, W], this has shape {dims:?}"),
        ));
    }
    let sample = vec![dims[0], 1, dims[1], dims[2]];
    Ok(Stream::Idx {
        path: path.to_path_buf(),
        reader,
        sample,
        prep: prep.clone(),
    })
}

/// The samples one batch of the model must hold exactly, when an input fixes it: the first
/// dimension of an input whose samples lie along it, declared fixed (1 for a model exported with
/// a batch of one, 3 for one whose input is a [3, 7] matrix). None when every batch size goes.
pub fn fixed_batch(inputs: &[ValueInfo]) -> Option<usize> {
    inputs
        .iter()
        .find_map(|i| match (i.shape.as_deref(), batch_of_input(i)) {
            (Some([Dim::Fixed(n), ..]), Batch::Axis(0)) => Some(*n),
            _ => None,
        })
}

/// The samples per batch for a model with these inputs: the batch an input fixes (see
/// [`fixed_batch`]), else `wanted`.
pub fn batch_for(inputs: &[ValueInfo], wanted: usize) -> usize {
    fixed_batch(inputs).unwrap_or(wanted).max(1)
}

/// The smallest batch the model takes: one sample, or the batch an input fixes.
pub fn unit_batch(inputs: &[ValueInfo]) -> usize {
    fixed_batch(inputs).unwrap_or(1).max(1)
}

/// The labels of an idx1 file ([N] unsigned bytes, optionally gzip-compressed) or a 1-D `.npy`
/// of integers.
pub fn read_labels(path: &Path) -> Result<Vec<i64>> {
    if extension(path) == "npy" {
        let t = npy::read(path)?;
        if t.shape.len() != 1 || t.dtype.is_float() {
            return Err(Error::new(path, "labels must be a 1-D integer array"));
        }
        return Ok(t.values.iter().map(|&v| v as i64).collect());
    }
    idx::read_labels(path)
}

/// `shape` (batch first) and `dtype` of data from `path` fit the declared input: element type,
/// and every fixed dimension but the batch.
fn check_fits(
    path: &Path,
    info: &ValueInfo,
    shape: &[usize],
    batch: Batch,
    dtype: DType,
) -> Result<()> {
    let mut per_sample = shape.to_vec();
    match batch {
        Batch::Axis(k) if k >= shape.len() => {
            return Err(Error::new(
                path,
                format!(
                    "input '{}' {} takes its samples along axis {k}, which data of shape {shape:?} does not have",
                    info.name,
                    info.shape_text()
                ),
            ))
        }
        Batch::Axis(k) => drop(per_sample.remove(k)),
        Batch::Stacked => drop(per_sample.remove(0)),
        Batch::Shared => {}
    }
    if let Some(want) = info.dtype.filter(|&d| d != dtype) {
        return Err(Error::new(
            path,
            format!("input '{}' must be {want}, the data is {dtype}", info.name),
        ));
    }
    // The batch dimension is the data's to choose.
    let fits = |decl: &Vec<Dim>| {
        let mut decl = decl.clone();
        match batch {
            Batch::Axis(k) if k < decl.len() => drop(decl.remove(k)),
            Batch::Axis(_) => return false,
            Batch::Shared | Batch::Stacked => {}
        }
        dims_fit(&decl, &per_sample)
    };
    if info.shape.as_ref().is_some_and(|decl| !fits(decl)) {
        let along = match batch {
            Batch::Axis(k) => format!(", samples along axis {k}"),
            Batch::Stacked => ", samples stacked on a first axis of their own".into(),
            Batch::Shared => String::new(),
        };
        return Err(Error::new(
            path,
            format!(
                "input '{}' has shape {}{along}; the data has samples of shape {per_sample:?}",
                info.name,
                info.shape_text()
            ),
        ));
    }
    Ok(())
}

/// Whether a folder holds `.npz` or `.npy` files (else it is taken for an image folder).
fn is_array_folder(dir: &Path) -> Result<bool> {
    Ok(!array_files(dir)?.is_empty())
}

/// The `.npz` and `.npy` files of a folder, in name order.
fn array_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "list", e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, "list", e))?.path();
        if is_npz(&path) || extension(&path) == "npy" {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A folder of arrays as streams, one file per batch: for `.npz` files one stream per member
/// (named after it, so every file must have the same members), for `.npy` files one stream
/// for the input the spec names (None here).
fn array_folder(dir: &Path) -> Result<Vec<(Option<String>, Stream)>> {
    let files = array_files(dir)?;
    let npz = files.iter().filter(|f| is_npz(f)).count();
    if npz != 0 && npz != files.len() {
        return Err(Error::new(
            dir,
            "the folder mixes .npz and .npy files: use one kind",
        ));
    }
    let members: Vec<Option<String>> = if npz > 0 {
        npz::members(&files[0])?
            .into_iter()
            .map(|m| Some(m.name))
            .collect()
    } else {
        vec![None]
    };
    let mut out = Vec::new();
    for member in members {
        let shapes = files
            .iter()
            .map(|f| {
                let stream = open_file(f, member.as_deref())?;
                let (shape, dtype) = stream.sample_shape();
                Ok((shape.to_vec(), dtype))
            })
            .collect::<Result<Vec<_>>>()?;
        let stream = Stream::Files {
            dir: dir.to_path_buf(),
            member: member.clone(),
            files: files.clone(),
            shapes,
            open: None,
            batch: Batch::Axis(0),
            whole: false,
        };
        out.push((member, stream));
    }
    Ok(out)
}

/// The array `member` of an `.npz` file, or the `.npy` file itself.
fn open_file(path: &Path, member: Option<&str>) -> Result<Stream> {
    let Some(member) = member else {
        return open_npy(path);
    };
    open_npz(path)?
        .into_iter()
        .find(|(name, _)| name == member)
        .map(|(_, s)| s)
        .ok_or_else(|| {
            Error::new(
                path,
                format!("has no array '{member}' (the folder's first file has)"),
            )
        })
}

/// Samples `from .. from + n` of a folder of files, from the one file that holds them all
/// ([`Stream::contiguous`]), which stays open for the next batch; of a folder of `whole` files,
/// sample `from` is the whole array of file `from`.
fn read_from_files(
    files: &[PathBuf],
    shapes: &[(Vec<usize>, DType)],
    (member, open): (Option<&str>, &mut Option<(usize, Box<Stream>)>),
    from: usize,
    n: usize,
    whole: bool,
) -> Result<RawTensor> {
    if whole {
        let mut stream = open_file(&files[from], member)?;
        let n = stream.samples();
        return stream.read(0, n);
    }
    let (mut i, mut start) = (0, 0);
    while from >= start + shapes[i].0[0] {
        start += shapes[i].0[0];
        i += 1;
    }
    if open.as_ref().is_none_or(|(j, _)| *j != i) {
        *open = Some((i, Box::new(open_file(&files[i], member)?)));
    }
    let (_, stream) = open.as_mut().expect("opened above");
    stream.read(from - start, n)
}
