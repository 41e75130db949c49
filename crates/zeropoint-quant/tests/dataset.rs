//! Calibration data: an .npz read batch by batch gives the same samples whether its members are
//! stored (numpy's savez, read with seeks) or compressed (savez_compressed, decompressed once).

use std::io::Write;
use std::path::Path;

use zeropoint_graph::{Dim, ValueInfo};
use zeropoint_onnx::{npy, DType};
use zeropoint_quant::dataset::{Dataset, Preprocess};

fn write_npz(path: &Path, method: zip::CompressionMethod, members: &[(&str, Vec<u8>)]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in members {
        zip.start_file(format!("{name}.npy"), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn stored_and_compressed_npz_give_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<i64> = (0..7 * 5).collect();
    let x: Vec<f32> = (0..7 * 3).map(|i| i as f32 * 0.5).collect();
    let members = [
        ("ids", npy::to_bytes(&[7, 5], &ids)),
        ("x", npy::to_bytes(&[7, 3], &x)),
    ];
    let inputs = [
        ValueInfo {
            name: "ids".into(),
            dtype: Some(DType::I64),
            shape: Some(vec![Dim::Sym("N".into()), Dim::Fixed(5)]),
        },
        ValueInfo {
            name: "x".into(),
            dtype: Some(DType::F32),
            shape: Some(vec![Dim::Sym("N".into()), Dim::Fixed(3)]),
        },
    ];
    let mut batches = Vec::new();
    for (file, method) in [
        ("stored.npz", zip::CompressionMethod::Stored),
        ("deflated.npz", zip::CompressionMethod::Deflated),
    ] {
        let path = dir.path().join(file);
        write_npz(&path, method, &members);
        let spec = [path.display().to_string()];
        let mut data = Dataset::open(&spec, &inputs, &Preprocess::default()).unwrap();
        assert_eq!(data.len, 7);
        let mut seen = Vec::new();
        while let Some(b) = data.next_batch(3).unwrap() {
            seen.push((b["ids"].to_i64s().unwrap(), b["x"].to_f32s().unwrap()));
        }
        assert_eq!(seen.len(), 3, "{file}: batches of 3, 3 and 1");
        batches.push(seen);
    }
    assert_eq!(batches[0], batches[1]);
    assert_eq!(batches[0][2], (ids[30..].to_vec(), x[18..].to_vec()));
}

/// A recurrent state [2, N, 4] takes its samples along axis 1, and a scalar input (a sample
/// rate) is one value shared by every batch, as silero-vad's inputs are.
#[test]
fn samples_along_a_later_axis_and_shared_scalars() {
    let dir = tempfile::tempdir().unwrap();
    let x: Vec<f32> = (0..5 * 3).map(|i| i as f32).collect();
    let state: Vec<f32> = (0..2 * 5 * 4).map(|i| i as f32 * 0.25).collect();
    let path = dir.path().join("calib.npz");
    let members = [
        ("x", npy::to_bytes(&[5, 3], &x)),
        ("state", npy::to_bytes(&[2, 5, 4], &state)),
        ("sr", npy::to_bytes::<i64>(&[], &[16000])),
    ];
    write_npz(&path, zip::CompressionMethod::Stored, &members);
    let n = || Dim::Sym("N".into());
    let inputs = [
        info("x", DType::F32, vec![n(), Dim::Fixed(3)]),
        info("state", DType::F32, vec![Dim::Fixed(2), n(), Dim::Fixed(4)]),
        info("sr", DType::I64, vec![]),
    ];
    let spec = [path.display().to_string()];
    let mut data = Dataset::open(&spec, &inputs, &Preprocess::default()).unwrap();
    assert_eq!(data.len, 5);
    assert_eq!(data.sample_shapes()["state"], [2, 1, 4]);
    assert_eq!(data.sample_shapes()["sr"], Vec::<usize>::new());
    data.next_batch(3).unwrap().unwrap();
    let b = data.next_batch(3).unwrap().unwrap();
    assert_eq!(b["x"].shape(), [2, 3]);
    assert_eq!(b["state"].shape(), [2, 2, 4]);
    // Samples 3 and 4 of each of the two state rows.
    let want: Vec<f32> = [12..20, 32..40]
        .into_iter()
        .flatten()
        .map(|i| state[i])
        .collect();
    assert_eq!(b["state"].to_f32s().unwrap(), want);
    assert_eq!(b["sr"].shape(), [] as [usize; 0]);
    assert_eq!(b["sr"].to_i64s().unwrap(), [16000]);
    assert_eq!(data.consumed(), 5);
}

/// A model without a batch axis (a sequence [T, 6] and a state [1, 1, 4], as silero-vad's
/// sequence model) takes whole samples stacked on a first axis of their own, one a run; data
/// that stacks one input's samples and not another's is refused.
#[test]
fn whole_samples_stacked_on_an_axis_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let x: Vec<f32> = (0..3 * 5 * 6).map(|i| i as f32).collect();
    let h: Vec<f32> = (0..3 * 4).map(|i| i as f32 * 0.5).collect();
    let mut inputs = sequence_inputs();
    inputs.push(info("sr", DType::I64, vec![]));
    let path = dir.path().join("calib.npz");
    let members = [
        ("x", npy::to_bytes(&[3, 5, 6], &x)),
        ("h", npy::to_bytes(&[3, 1, 1, 4], &h)),
        ("sr", npy::to_bytes::<i64>(&[], &[16000])),
    ];
    write_npz(&path, zip::CompressionMethod::Stored, &members);
    let spec = [path.display().to_string()];
    let mut data = Dataset::open(&spec, &inputs, &Preprocess::default()).unwrap();
    assert!(data.stacked());
    assert_eq!(data.len, 3);
    assert_eq!(data.sample_shapes()["x"], [5, 6]);
    assert_eq!(data.sample_shapes()["h"], [1, 1, 4]);
    data.next_batch(8).unwrap().unwrap();
    // A batch of 8 asked, one sample given: the second, without the stacking axis.
    let b = data.next_batch(8).unwrap().unwrap();
    assert_eq!(b["x"].shape(), [5, 6]);
    assert_eq!(b["x"].to_f32s().unwrap(), x[30..60]);
    assert_eq!(b["h"].shape(), [1, 1, 4]);
    assert_eq!(b["h"].to_f32s().unwrap(), h[4..8]);
    assert_eq!(b["sr"].to_i64s().unwrap(), [16000]);
    assert_eq!(data.consumed(), 2);
    data.next_batch(8).unwrap().unwrap();
    assert!(data.next_batch(8).unwrap().is_none());
    // A model with a fixed batch takes whole stacked inputs: none of the 3 is dropped.
    let mut data = Dataset::open(&spec, &inputs, &Preprocess::default()).unwrap();
    data.whole_batches(2, &path).unwrap();
    assert_eq!(data.len, 3);

    // What opening data whose `x` and `h` have these shapes says.
    let refusal = |x_shape: &[usize], h_shape: &[usize]| {
        let members = [
            ("x", npy::to_bytes(x_shape, &x[..x_shape.iter().product()])),
            ("h", npy::to_bytes(h_shape, &h[..h_shape.iter().product()])),
            ("sr", npy::to_bytes::<i64>(&[], &[16000])),
        ];
        write_npz(&path, zip::CompressionMethod::Stored, &members);
        let opened = Dataset::open(&spec, &inputs, &Preprocess::default());
        opened.err().unwrap().to_string()
    };
    // The state given as one sample, not stacked: which input is which, and what to do.
    let e = refusal(&[3, 5, 6], &[1, 1, 4]);
    assert!(
        e.ends_with("the samples of 'x' are stacked on a first axis of their own (one axis more than the input declares), those of 'h' are not: stack every input's samples the same way"),
        "{e}"
    );
    // Neither stacked, each array of its input's own shape: the sequence's 5 steps and the
    // state's one sample disagree, so the arrays are read as `zeropoint run` reads them, one
    // whole sample.
    let members = [
        ("x", npy::to_bytes(&[5, 6], &x[..30])),
        ("h", npy::to_bytes(&[1, 1, 4], &h[..4])),
        ("sr", npy::to_bytes::<i64>(&[], &[16000])),
    ];
    write_npz(&path, zip::CompressionMethod::Stored, &members);
    let mut data = Dataset::open(&spec, &inputs, &Preprocess::default()).unwrap();
    assert!(data.whole && data.stacked());
    assert_eq!(data.len, 1);
    let b = data.next_batch(8).unwrap().unwrap();
    assert_eq!(b["x"].shape(), [5, 6]);
    assert_eq!(b["x"].to_f32s().unwrap(), x[..30]);
    assert_eq!(b["h"].to_f32s().unwrap(), h[..4]);
    assert_eq!(b["sr"].to_i64s().unwrap(), [16000]);
    // A sequence of undeclared shape: no whole reading can be checked, and the error says how
    // to give whole samples.
    let mut undeclared = inputs.clone();
    undeclared[0].shape = None;
    let members = [
        ("x", npy::to_bytes(&[5, 6], &x[..30])),
        ("h", npy::to_bytes(&[1, 1, 4], &h[..4])),
        ("sr", npy::to_bytes::<i64>(&[], &[16000])),
    ];
    write_npz(&path, zip::CompressionMethod::Stored, &members);
    let opened = Dataset::open(&spec, &undeclared, &Preprocess::default());
    let e = opened.err().unwrap().to_string();
    assert!(
        e.contains("input 'h' [1, 1, 4] has no free axis for samples: to give whole samples, stack each input's on a new first axis, e.g. [N, 1, 1, 4]"),
        "{e}"
    );
}

/// A per-sample array given for a scalar input is refused, saying what the input wants.
#[test]
fn a_scalar_input_refuses_per_sample_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sr.npy");
    std::fs::write(&path, npy::to_bytes::<i64>(&[3], &[1, 2, 3])).unwrap();
    let inputs = [info("sr", DType::I64, vec![])];
    let spec = [path.display().to_string()];
    let e = Dataset::open(&spec, &inputs, &Preprocess::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("input 'sr' has shape []; the data has samples of shape [3]"),
        "{e}"
    );
}

/// A model without a batch axis: a sequence [T, 6] beside its state [1, 1, 4].
fn sequence_inputs() -> Vec<ValueInfo> {
    let state = vec![Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(4)];
    vec![
        info("x", DType::F32, vec![Dim::Sym("T".into()), Dim::Fixed(6)]),
        info("h", DType::F32, state),
    ]
}

/// A graph network's inputs: nodes [n, 3] and edges [2, e].
fn graph_inputs() -> Vec<ValueInfo> {
    vec![
        info(
            "nodes",
            DType::F32,
            vec![Dim::Sym("n".into()), Dim::Fixed(3)],
        ),
        info(
            "edges",
            DType::I64,
            vec![Dim::Fixed(2), Dim::Sym("e".into())],
        ),
    ]
}

fn info(name: &str, dtype: DType, shape: Vec<Dim>) -> ValueInfo {
    ValueInfo {
        name: name.into(),
        dtype: Some(dtype),
        shape: Some(shape),
    }
}

#[test]
fn a_fixed_leading_dimension_is_the_batch() {
    use zeropoint_quant::dataset::{batch_for, unit_batch};
    // A model whose input is one [3, 7] matrix takes its data three rows at a time.
    let matrix = [info("m", DType::F32, vec![Dim::Fixed(3), Dim::Fixed(7)])];
    assert_eq!((unit_batch(&matrix), batch_for(&matrix, 32)), (3, 3));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.npy");
    std::fs::write(&path, npy::to_bytes::<f32>(&[10, 7], &[0.0; 70])).unwrap();
    let spec = [path.display().to_string()];
    let mut data = Dataset::open(&spec, &matrix, &Preprocess::default()).unwrap();
    data.whole_batches(3, &path).unwrap();
    assert_eq!(data.len, 9, "the last row is not a whole batch");
    let batch = data.next_batch(3).unwrap().unwrap();
    assert_eq!(batch["m"].shape(), [3, 7]);
    let mut short = Dataset::open(&spec, &matrix, &Preprocess::default()).unwrap();
    short.truncate(2);
    let e = short.whole_batches(3, &path).unwrap_err().to_string();
    assert!(
        e.contains("2 samples, but the model takes batches of exactly 3"),
        "{e}"
    );
    // A free batch, a batch of one, and a state [2, N, 8] whose batch is not the first axis.
    let free = [info(
        "x",
        DType::F32,
        vec![Dim::Sym("N".into()), Dim::Fixed(4)],
    )];
    let one = [info("x", DType::F32, vec![Dim::Fixed(1), Dim::Fixed(4)])];
    let state = [info(
        "h",
        DType::F32,
        vec![Dim::Fixed(2), Dim::Sym("N".into()), Dim::Fixed(8)],
    )];
    assert_eq!((unit_batch(&free), batch_for(&free, 32)), (1, 32));
    assert_eq!((unit_batch(&one), batch_for(&one, 32)), (1, 1));
    assert_eq!((unit_batch(&state), batch_for(&state, 32)), (1, 32));
}

/// A graph network's inputs (node features [nodes, 3], edges [2, edges]) count their first free
/// axes differently: arrays of the inputs' own shapes are one whole graph, one sample, as
/// stacked ones are; arrays that fit no reading are refused, and the refusal says that such
/// axes are not samples and how to give them.
#[test]
fn a_graphs_nodes_and_edges_are_not_samples() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("graph.npz");
    let nodes: Vec<f32> = (0..4 * 3).map(|i| i as f32).collect();
    let edges: Vec<i64> = vec![0, 1, 2, 3, 1, 2, 3, 0, 0, 2, 1, 3];
    let mut inputs = graph_inputs();
    let spec = [path.display().to_string()];
    let open = |nodes_shape: &[usize], edges_shape: &[usize], inputs: &[ValueInfo]| {
        let members = [
            ("nodes", npy::to_bytes(nodes_shape, &nodes)),
            ("edges", npy::to_bytes(edges_shape, &edges)),
        ];
        write_npz(&path, zip::CompressionMethod::Stored, &members);
        Dataset::open(&spec, inputs, &Preprocess::default())
    };
    let whole = open(&[4, 3], &[2, 6], &inputs).unwrap();
    assert!(whole.whole);
    assert_eq!(whole.len, 1);
    assert_eq!(whole.sample_shapes()["edges"], [2, 6]);
    // Edges without the axis their samples lie along: refused (this indexed past the shape).
    let e = open(&[4, 3], &[12], &inputs).err().unwrap().to_string();
    assert!(
        e.contains("input 'edges' [2, e] takes its samples along axis 1, which data of shape [12] does not have"),
        "{e}"
    );
    let data = open(&[1, 4, 3], &[1, 2, 6], &inputs).unwrap();
    assert!(!data.whole);
    assert_eq!(data.len, 1);
    assert_eq!(data.sample_shapes()["edges"], [2, 6]);
    // Edges of undeclared shape: no whole reading can be checked, and the refusal says how to
    // give whole samples.
    inputs[1].shape = None;
    let e = open(&[4, 3], &[2, 6], &inputs).err().unwrap().to_string();
    assert!(
        e.contains("2 samples of 'edges', but 4 of the other inputs (if the first axes are not samples, as a graph network's nodes and edges are not: stack each input's samples on a new first axis"),
        "{e}"
    );
}

/// A model without a batch axis whose first axis is free ([T, 4]) given one sequence, from a
/// file or in memory: read whole, it is one sample stacked on an axis of its own, unless its
/// arrays hold more than the limit or have not the declared shape.
#[test]
fn a_sequence_read_whole_is_one_stacked_sample() {
    let dir = tempfile::tempdir().unwrap();
    let x: Vec<f32> = (0..6 * 4).map(|i| i as f32 * 0.25).collect();
    let inputs = [info(
        "x",
        DType::F32,
        vec![Dim::Sym("T".into()), Dim::Fixed(4)],
    )];
    let path = dir.path().join("seq.npy");
    std::fs::write(&path, npy::to_bytes(&[6, 4], &x)).unwrap();
    let spec = [path.display().to_string()];
    let prep = Preprocess::default();
    let read = |arrays| Dataset::read_whole(&spec, arrays, &inputs, &prep, 6 * 4 * 4).unwrap();

    let from_file = read(Vec::new()).unwrap();
    let (name, array) = &from_file[0];
    assert_eq!(
        (name.as_str(), array.shape.as_slice()),
        ("x", &[1, 6, 4][..])
    );
    assert_eq!(array.f32s(), x);
    // In memory, the same; as a dataset, one sample of the whole sequence.
    let memory = zeropoint_onnx::RawTensor::from_f32s("x", &[6, 4], &x);
    let in_memory = read(vec![("x".into(), std::sync::Arc::new(memory))]).unwrap();
    assert_eq!(in_memory[0].1.data, array.data);
    let mut data = Dataset::from_arrays(in_memory, &inputs).unwrap();
    assert_eq!(data.len, 1);
    let b = data.next_batch(8).unwrap().unwrap();
    assert_eq!(b["x"].shape(), [6, 4]);
    assert!(data.next_batch(8).unwrap().is_none());

    // One byte over the limit: nothing is read.
    let over = Dataset::read_whole(&spec, Vec::new(), &inputs, &prep, 6 * 4 * 4 - 1).unwrap();
    assert!(over.is_none());
    // Stacked already, one axis more than declared: no whole reading.
    std::fs::write(&path, npy::to_bytes(&[1, 6, 4], &x)).unwrap();
    assert!(read(Vec::new()).is_none());

    // Beside a sample rate every sample shares, which counts once against the limit.
    let mut with_rate = inputs.to_vec();
    with_rate.push(info("sr", DType::I64, vec![]));
    let npz = dir.path().join("seq.npz");
    let members = [
        ("x", npy::to_bytes(&[6, 4], &x)),
        ("sr", npy::to_bytes::<i64>(&[], &[16000])),
    ];
    write_npz(&npz, zip::CompressionMethod::Stored, &members);
    let spec = [npz.display().to_string()];
    let limit = 6 * 4 * 4 + 8;
    let whole = Dataset::read_whole(&spec, Vec::new(), &with_rate, &prep, limit).unwrap();
    let mut data = Dataset::from_arrays(whole.unwrap(), &with_rate).unwrap();
    let b = data.next_batch(8).unwrap().unwrap();
    assert_eq!(b["x"].shape(), [6, 4]);
    assert_eq!(b["sr"].to_i64s().unwrap(), [16000]);
}

/// A folder of files, each one whole sample (a graph network's nodes [nodes, 3] and edges
/// [2, edges], one molecule a file), is read one file a sample, each array whole; a folder of
/// files that each stack whole samples on an axis of their own is read one stacked sample a run.
#[test]
fn a_folder_of_whole_or_stacked_samples() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = graph_inputs();
    let graphs = [(4, 6), (7, 5)];
    for (i, &(n, e)) in graphs.iter().enumerate() {
        let nodes: Vec<f32> = (0..n * 3).map(|v| (v + 100 * i) as f32).collect();
        let edges: Vec<i64> = (0..2 * e).map(|v| (v % n) as i64).collect();
        let members = [
            ("nodes", npy::to_bytes(&[n, 3], &nodes)),
            ("edges", npy::to_bytes(&[2, e], &edges)),
        ];
        let path = dir.path().join(format!("g{i}.npz"));
        write_npz(&path, zip::CompressionMethod::Deflated, &members);
    }
    let spec = [dir.path().display().to_string()];
    let mut data = Dataset::open(&spec, &inputs, &Preprocess::default()).unwrap();
    assert!(data.whole && data.stacked());
    assert_eq!(data.len, 2);
    for (i, &(n, e)) in graphs.iter().enumerate() {
        // A batch of 8 asked, one graph given: the file's arrays as they are.
        let b = data.next_batch(8).unwrap().unwrap();
        assert_eq!(b["nodes"].shape(), [n, 3]);
        assert_eq!(b["nodes"].to_f32s().unwrap()[0], (100 * i) as f32);
        assert_eq!(b["edges"].shape(), [2, e]);
    }
    assert!(data.next_batch(8).unwrap().is_none());

    // Files of sequences [k, T, 6] beside states [k, 1, 1, 4]: k whole samples each.
    let stacked = tempfile::tempdir().unwrap();
    let inputs = sequence_inputs();
    for (i, (k, t)) in [(2usize, 5usize), (1, 3)].into_iter().enumerate() {
        let x: Vec<f32> = (0..k * t * 6).map(|v| (v + 1000 * i) as f32).collect();
        let h: Vec<f32> = (0..k * 4).map(|v| v as f32).collect();
        let members = [
            ("x", npy::to_bytes(&[k, t, 6], &x)),
            ("h", npy::to_bytes(&[k, 1, 1, 4], &h)),
        ];
        let path = stacked.path().join(format!("s{i}.npz"));
        write_npz(&path, zip::CompressionMethod::Stored, &members);
    }
    let spec = [stacked.path().display().to_string()];
    let mut data = Dataset::open(&spec, &inputs, &Preprocess::default()).unwrap();
    assert!(!data.whole && data.stacked());
    assert_eq!(data.len, 3);
    let shapes: Vec<(Vec<usize>, Vec<usize>, f32)> = std::iter::from_fn(|| {
        let b = data.next_batch(8).unwrap()?;
        let first = b["x"].to_f32s().unwrap()[0];
        Some((b["x"].shape().to_vec(), b["h"].shape().to_vec(), first))
    })
    .collect();
    let expected = [
        (vec![5, 6], vec![1, 1, 4], 0.0),
        (vec![5, 6], vec![1, 1, 4], 30.0),
        (vec![3, 6], vec![1, 1, 4], 1000.0),
    ];
    assert_eq!(shapes, expected);
}

/// numpy writes a transposed array in Fortran order, and some data is big-endian: such arrays,
/// in a `.npy` file or an `.npz` (stored or compressed), are read whole and reordered, as
/// `zeropoint run` reads them, and give the same batches as the C-order array.
#[test]
fn fortran_ordered_and_big_endian_arrays_give_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (rows, cols) = (3, 4);
    let x: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 2.0).collect();
    let c_order = npy::to_bytes(&[rows, cols], &x);
    let header_len = c_order.len() - x.len() * 4;
    let retyped = |from: &str, to: &str, data: Vec<u8>| {
        // Magic and lengths, then the header's text.
        let text = String::from_utf8(c_order[10..header_len].to_vec()).unwrap();
        let mut bytes = c_order[..10].to_vec();
        bytes.extend(text.replace(from, to).into_bytes());
        assert_eq!(bytes.len(), header_len);
        bytes.extend(data);
        bytes
    };
    let column_major = (0..cols).flat_map(|c| (0..rows).map(move |r| r * cols + c));
    let fortran = column_major.flat_map(|i| x[i].to_le_bytes()).collect();
    let fortran = retyped("'fortran_order': False", "'fortran_order': True ", fortran);
    let big_endian = x.iter().flat_map(|v| v.to_be_bytes()).collect();
    let big_endian = retyped("'<f4'", "'>f4'", big_endian);
    let inputs = [info(
        "x",
        DType::F32,
        vec![Dim::Sym("N".into()), Dim::Fixed(cols)],
    )];
    let batches = |spec: &Path| {
        let spec = [spec.display().to_string()];
        let mut data = Dataset::open(&spec, &inputs, &Preprocess::default()).unwrap();
        let mut rows = Vec::new();
        while let Some(b) = data.next_batch(2).unwrap() {
            rows.push(b["x"].to_f32s().unwrap());
        }
        rows
    };
    let plain = dir.path().join("x.npy");
    std::fs::write(&plain, &c_order).unwrap();
    let want = batches(&plain);
    assert_eq!(want.concat(), x);
    for (what, bytes) in [("fortran", &fortran), ("big-endian", &big_endian)] {
        let npy_path = dir.path().join(format!("{what}.npy"));
        std::fs::write(&npy_path, bytes).unwrap();
        assert_eq!(batches(&npy_path), want, "{what} .npy");
        for method in [
            zip::CompressionMethod::Stored,
            zip::CompressionMethod::Deflated,
        ] {
            let npz_path = dir.path().join(format!("{what}.npz"));
            write_npz(&npz_path, method, &[("x", bytes.clone())]);
            assert_eq!(batches(&npz_path), want, "{what} .npz, {method:?}");
        }
    }
}
