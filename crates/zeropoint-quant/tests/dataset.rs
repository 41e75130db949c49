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
