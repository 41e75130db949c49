//! GGUF read/write: lossless round trips, and one-line refusals of broken files.

use std::path::Path;

use zeropoint_core::ggml::GgmlType;
use zeropoint_gguf::read::{parse_header, GgufFile};
use zeropoint_gguf::value::Value;
use zeropoint_gguf::write::{encode_header, write, NewTensor};

fn every_value() -> Vec<(String, Value)> {
    vec![
        (
            "general.architecture".into(),
            Value::String(b"llama".to_vec()),
        ),
        ("u8".into(), Value::U8(200)),
        ("i8".into(), Value::I8(-3)),
        ("u16".into(), Value::U16(65000)),
        ("i16".into(), Value::I16(-30000)),
        ("u32".into(), Value::U32(4_000_000_000)),
        ("i32".into(), Value::I32(-2_000_000_000)),
        ("f32".into(), Value::F32(-0.0)),
        ("bool".into(), Value::Bool(true)),
        ("u64".into(), Value::U64(u64::MAX)),
        ("i64".into(), Value::I64(i64::MIN)),
        ("f64".into(), Value::F64(std::f64::consts::PI)),
        ("bytes".into(), Value::String(vec![0xff, 0x00, b'a'])),
        (
            "strings".into(),
            Value::Array(
                8,
                vec![Value::String(b"<0x0A>".to_vec()), Value::String(vec![])],
            ),
        ),
        (
            "floats".into(),
            Value::Array(6, vec![Value::F32(1.5), Value::F32(f32::NAN)]),
        ),
        ("empty".into(), Value::Array(4, vec![])),
    ]
}

fn tensors() -> Vec<NewTensor> {
    vec![
        NewTensor {
            name: "a.weight".into(),
            dims: vec![64, 3],
            ty: GgmlType::F32,
        },
        NewTensor {
            name: "b".into(),
            dims: vec![7],
            ty: GgmlType::F16,
        },
        NewTensor {
            name: "c.weight".into(),
            dims: vec![256, 2],
            ty: GgmlType::Q4_K,
        },
        NewTensor {
            name: "scalar".into(),
            dims: vec![],
            ty: GgmlType::I32,
        },
    ]
}

fn write_sample(path: &Path) {
    let ts = tensors();
    write(path, &every_value(), &ts, |i, out| {
        let n = ts[i].byte_size_of() as usize;
        Ok(out.write_all(&(0..n).map(|k| (k * 7 + i) as u8).collect::<Vec<_>>())?)
    })
    .unwrap();
}

#[test]
fn a_file_reads_back_as_written_and_rewrites_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    write_sample(&a);
    let f = GgufFile::open(&a).unwrap();
    assert_eq!(f.header.version, 3);
    assert_eq!(f.header.tensors.len(), 4);
    assert_eq!(f.header.data_offset % 32, 0);
    let meta: Vec<_> = f
        .header
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), format!("{v:?}")))
        .collect();
    let want: Vec<_> = every_value()
        .iter()
        .map(|(k, v)| (k.clone(), format!("{v:?}")))
        .collect();
    assert_eq!(meta, want, "NaN compared through Debug");
    assert_eq!(f.data(2).len(), 2 * 144);
    assert_eq!(f.data(1)[..3], [1, 8, 15]);
    let ts: Vec<NewTensor> = f
        .header
        .tensors
        .iter()
        .map(|t| NewTensor {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
        })
        .collect();
    write(&b, &f.header.metadata, &ts, |i, out| {
        Ok(out.write_all(f.data(i))?)
    })
    .unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn every_truncation_is_refused_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.gguf");
    write_sample(&a);
    let bytes = std::fs::read(&a).unwrap();
    let h = parse_header(&bytes).unwrap();
    let last = h.tensors.last().unwrap();
    // The final padding is not needed: a file is whole once the last tensor's data is there.
    let end = (h.data_offset + last.offset + last.byte_size()) as usize;
    assert!(parse_header(&bytes[..end]).is_ok());
    for n in 0..end {
        let e = parse_header(&bytes[..n]).expect_err("a truncated file must be refused");
        assert!(!e.contains('\n'), "{e}");
    }
}

fn header_with(meta: Vec<(String, Value)>, ts: &[NewTensor]) -> Vec<u8> {
    encode_header(&meta, ts).0
}

#[test]
fn malformed_headers_get_one_line_reasons() {
    let ok = header_with(vec![("k".into(), Value::U8(1))], &[]);
    assert!(parse_header(&ok).is_ok());
    let mut bad = ok.clone();
    bad[0] = b'X';
    assert!(parse_header(&bad).unwrap_err().contains("magic"));
    let mut v1 = ok.clone();
    v1[4] = 1;
    assert_eq!(
        parse_header(&v1).unwrap_err(),
        "GGUF version 1 is not supported (only 2 and 3 are)"
    );
    let dup = header_with(
        vec![("k".into(), Value::U8(1)), ("k".into(), Value::U8(2))],
        &[],
    );
    assert_eq!(parse_header(&dup).unwrap_err(), "duplicate key 'k'");
    let align = header_with(vec![("general.alignment".into(), Value::U32(48))], &[]);
    assert_eq!(
        parse_header(&align).unwrap_err(),
        "general.alignment 48 is not a power of 2"
    );
    let t = NewTensor {
        name: "w".into(),
        dims: vec![100, 2],
        ty: GgmlType::Q4_0,
    };
    let rows = header_with(vec![], std::slice::from_ref(&t));
    assert_eq!(
        parse_header(&rows).unwrap_err(),
        "tensor 'w': 100 elements per row is not a multiple of Q4_0's block size 32"
    );
    let big = NewTensor {
        name: "w".into(),
        dims: vec![32, 4],
        ty: GgmlType::Q4_0,
    };
    let short = header_with(vec![], &[big]);
    assert!(parse_header(&short)
        .unwrap_err()
        .starts_with("truncated: tensor 'w' ends at byte"));
    let mut ty = header_with(
        vec![],
        &[NewTensor {
            name: "w".into(),
            dims: vec![4],
            ty: GgmlType::F32,
        }],
    );
    // The only tensor's info ends after magic, version, counts (24 bytes), name (8 + 1), n_dims (4),
    // one dim (8) and the type id (4); the offset follows.
    let info_end = 24 + 9 + 4 + 8 + 4;
    ty[info_end - 4..info_end].copy_from_slice(&77u32.to_le_bytes());
    assert_eq!(
        parse_header(&ty).unwrap_err(),
        "tensor 'w': invalid ggml type 77"
    );
}

#[test]
fn an_output_is_never_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.gguf");
    let ts = tensors();
    let r = write(&a, &every_value(), &ts, |_, out| {
        out.write_all(&[1, 2, 3]).unwrap();
        Ok(())
    });
    assert!(r
        .unwrap_err()
        .to_string()
        .contains("tensor 'a.weight': 3 bytes written, 768 expected"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file, no temporary left"
    );
}
