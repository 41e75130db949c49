//! Decoding a model file one initializer at a time.
//!
//! Decoding a whole file holds its bytes and the decoded model at once: twice the weights. Here
//! the file is read field by field: each initializer's bytes are read and decoded on their own,
//! everything else (nodes, inputs, metadata) is gathered and decoded as usual, so that the peak is
//! the decoded model plus its largest initializer (stories15M, 98 MB of weights: about 140 MB
//! resident after loading, against 274 MB decoding the whole file). The result is the model whole-file decoding gives; a file this reader does not take in
//! one pass (malformed, or with its graph given twice, which protobuf merges) returns `None`, and
//! the caller decodes the whole file, whose errors are then the usual ones. One difference:
//! prost's limit on nesting (100 messages deep) counts from the graph here, one level lower.

use std::io::Read;

use prost::bytes::Bytes;
use prost::Message;

use crate::proto::{GraphProto, ModelProto, TensorProto};

/// `ModelProto.graph` and `GraphProto.initializer` in onnx.proto.
const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;

/// Protobuf's wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

/// The model in `r`, `len` bytes long, or None where the file must be decoded whole.
pub fn decode(r: impl Read, len: u64) -> Option<ModelProto> {
    let mut input = Input { r, left: len };
    let mut model_rest = Vec::new();
    let mut graph = None;
    while input.left > 0 {
        let key = input.varint()?;
        if key == MODEL_GRAPH << 3 | LEN && graph.is_none() {
            let n = input.varint()?;
            input.left = input.left.checked_sub(n)?;
            let mut inside = Input {
                r: &mut input.r,
                left: n,
            };
            graph = Some(read_graph(&mut inside)?);
        } else if key >> 3 == MODEL_GRAPH {
            return None;
        } else {
            input.copy_field(key, &mut model_rest)?;
        }
    }
    let mut model = ModelProto::decode(Bytes::from(model_rest)).ok()?;
    model.graph = graph;
    Some(model)
}

/// A graph of `input`'s remaining bytes, its initializers decoded one by one.
fn read_graph<R: Read>(input: &mut Input<R>) -> Option<GraphProto> {
    let mut rest = Vec::new();
    let mut initializers = Vec::new();
    while input.left > 0 {
        let key = input.varint()?;
        if key == GRAPH_INITIALIZER << 3 | LEN {
            let n = input.varint()?;
            let bytes = input.bytes(n)?;
            initializers.push(TensorProto::decode(Bytes::from(bytes)).ok()?);
        } else {
            input.copy_field(key, &mut rest)?;
        }
    }
    let mut graph = GraphProto::decode(Bytes::from(rest)).ok()?;
    graph.initializer = initializers;
    Some(graph)
}

/// A reader that knows how many bytes its scope has left.
struct Input<R> {
    r: R,
    left: u64,
}

impl<R: Read> Input<R> {
    fn byte(&mut self) -> Option<u8> {
        let mut b = [0u8];
        self.left = self.left.checked_sub(1)?;
        self.r.read_exact(&mut b).ok()?;
        Some(b[0])
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            // The tenth byte holds the 64th bit alone: more overflows (prost refuses it too).
            if i == 9 && b > 1 {
                return None;
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    /// The next `n` bytes, refused before allocating if the scope does not hold them.
    fn bytes(&mut self, n: u64) -> Option<Vec<u8>> {
        self.left = self.left.checked_sub(n)?;
        let mut v = vec![0u8; usize::try_from(n).ok()?];
        self.r.read_exact(&mut v).ok()?;
        Some(v)
    }

    /// Appends the field of `key` (its key, then its value as read) to `out`.
    fn copy_field(&mut self, key: u64, out: &mut Vec<u8>) -> Option<()> {
        put_varint(key, out);
        match key & 7 {
            VARINT => put_varint(self.varint()?, out),
            FIXED64 => out.extend(self.bytes(8)?),
            FIXED32 => out.extend(self.bytes(4)?),
            LEN => {
                let n = self.varint()?;
                put_varint(n, out);
                out.extend(self.bytes(n)?);
            }
            // Groups (deprecated, never in ONNX) and invalid wire types.
            _ => return None,
        }
        Some(())
    }
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{NodeProto, OperatorSetIdProto};

    fn tensor(name: &str, n: usize) -> TensorProto {
        TensorProto {
            name: Some(name.into()),
            dims: vec![n as i64],
            data_type: Some(1),
            raw_data: Some((0..n * 4).map(|i| i as u8).collect()),
            ..Default::default()
        }
    }

    fn model() -> ModelProto {
        ModelProto {
            ir_version: Some(8),
            producer_name: Some("test".into()),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(GraphProto {
                name: Some("g".into()),
                node: vec![NodeProto {
                    op_type: Some("Add".into()),
                    input: vec!["x".into(), "a".into()],
                    output: vec!["y".into()],
                    ..Default::default()
                }],
                initializer: vec![tensor("a", 3), tensor("b", 300), tensor("c", 0)],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn piecewise(bytes: &[u8]) -> Option<ModelProto> {
        decode(bytes, bytes.len() as u64)
    }

    #[test]
    fn a_model_decodes_as_it_does_whole() {
        let m = model();
        let bytes = m.encode_to_vec();
        assert_eq!(piecewise(&bytes), Some(m.clone()));
        // Fields in another order than prost writes them: initializers between nodes, the
        // graph before the opsets, and a field onnx.proto does not have (dropped by both).
        let g = m.graph.clone().unwrap();
        let mut graph_bytes = Vec::new();
        for t in &g.initializer[..2] {
            graph_bytes.extend(
                GraphProto {
                    initializer: vec![t.clone()],
                    ..Default::default()
                }
                .encode_to_vec(),
            );
        }
        graph_bytes.extend(
            GraphProto {
                node: g.node.clone(),
                name: g.name.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        graph_bytes.extend(
            GraphProto {
                initializer: vec![g.initializer[2].clone()],
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let mut file = Vec::new();
        put_varint(MODEL_GRAPH << 3 | LEN, &mut file);
        put_varint(graph_bytes.len() as u64, &mut file);
        file.extend(&graph_bytes);
        put_varint(999 << 3 | VARINT, &mut file);
        put_varint(12345, &mut file);
        file.extend(
            ModelProto {
                graph: None,
                ..m.clone()
            }
            .encode_to_vec(),
        );
        let whole = ModelProto::decode(file.as_slice()).unwrap();
        assert_eq!(whole, m);
        assert_eq!(piecewise(&file), Some(whole));
    }

    #[test]
    fn what_it_cannot_take_in_one_pass_is_left_to_whole_decoding() {
        let bytes = model().encode_to_vec();
        // Every prefix of the file: what it decodes, whole decoding decodes the same; a cut
        // inside a field (most of them) it leaves to whole decoding.
        let mut refused = 0;
        for cut in 0..bytes.len() {
            match piecewise(&bytes[..cut]) {
                Some(m) => assert_eq!(Ok(m), ModelProto::decode(&bytes[..cut]), "cut at {cut}"),
                None => refused += 1,
            }
        }
        assert!(
            refused > bytes.len() * 9 / 10,
            "{refused} of {}",
            bytes.len()
        );
        // A length past the end.
        assert_eq!(decode(&bytes[..], bytes.len() as u64 + 5), None);
        // A varint of more than 64 bits (fuzz: onnx_load, 1.5M executions into its first run).
        let mut wide = vec![0x08];
        wide.extend([0xff; 9]);
        wide.push(0x31);
        wide.extend(&bytes);
        assert!(ModelProto::decode(wide.as_slice()).is_err());
        assert_eq!(piecewise(&wide), None);
        // The graph twice: protobuf merges the two.
        let mut twice = bytes.clone();
        twice.extend(
            ModelProto {
                graph: model().graph,
                ..Default::default()
            }
            .encode_to_vec(),
        );
        assert_eq!(piecewise(&twice), None);
        assert!(ModelProto::decode(twice.as_slice()).is_ok());
    }
}
