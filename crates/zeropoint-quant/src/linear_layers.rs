//! The layers whose weight is a constant 2-D matrix, as weight-only, dynamic and SmoothQuant
//! quantization see them: the weight read as `[K, N]` (inputs × outputs) whatever its stored
//! layout.

use rayon::prelude::*;
use std::borrow::Cow;
use std::path::Path;
use zeropoint_graph::{Graph, Node, Op};

use crate::error::{Error, Result};

/// One layer whose weight is quantized.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// The node's index in the canonical graph.
    pub node: usize,
    pub name: String,
    pub op: Op,
    pub weight: String,
    /// The input the weight multiplies (a Gather's indices).
    pub input: String,
    /// The blocked axis' length: the layer's inputs (a table's row length).
    pub k: usize,
    /// The outputs (a table's rows).
    pub n: usize,
    /// The weight stored `[N, K]`: a Gemm's with transB = 1, a Gather's table.
    pub transposed: bool,
}

/// The layers weight-only quantization applies to, minus the excluded nodes:
/// - MatMul with a constant 2-D right-hand side;
/// - Gemm computing A·B (+ C) with a constant B (transA = 0, alpha = 1, and beta = 1 with a 1-D
///   C, which becomes MatMulNBits' bias);
/// - Gather of rows (axis 0) of a constant 2-D table: an embedding, blocked along its rows.
pub fn sites(graph: &Graph, exclude: &[String]) -> Vec<Site> {
    let excluded = |n: &Node| exclude.iter().any(|e| *e == n.name || e == n.op.as_str());
    (graph.nodes.iter().enumerate())
        .filter(|(_, n)| !excluded(n))
        .filter_map(|(i, n)| site(graph, i, n))
        .collect()
}

/// The site of node `i`, if weight-only quantization applies to it.
fn site(graph: &Graph, i: usize, n: &Node) -> Option<Site> {
    let int = |a: &str, d: i64| n.attribute(a).and_then(|a| a.i).unwrap_or(d);
    let float = |a: &str| n.attribute(a).and_then(|a| a.f).unwrap_or(1.0);
    let (weight, input) = match n.op {
        Op::Gather => (n.inputs.first()?, n.inputs.get(1)?),
        _ => (n.inputs.get(1)?, n.inputs.first()?),
    };
    let w = graph.float_initializer(weight)?;
    if w.shape.len() != 2 || graph.initializer(input).is_some() {
        return None;
    }
    let transposed = match n.op {
        Op::MatMul => false,
        Op::Gather if int("axis", 0) == 0 => true,
        Op::Gemm => {
            let transposed = int("transB", 0) != 0;
            // N: the columns of B, or its rows when transposed.
            let outputs = w.shape[usize::from(!transposed)];
            let bias_ok = match n.inputs.get(2).filter(|c| !c.is_empty()) {
                None => true,
                Some(c) => {
                    float("beta") == 1.0
                        && graph
                            .float_initializer(c)
                            .is_some_and(|c| c.shape == [outputs])
                }
            };
            if int("transA", 0) != 0 || float("alpha") != 1.0 || !bias_ok {
                return None;
            }
            transposed
        }
        _ => return None,
    };
    let (k, nn) = if transposed {
        (w.shape[1], w.shape[0])
    } else {
        (w.shape[0], w.shape[1])
    };
    Some(Site {
        node: i,
        name: n.name.clone(),
        op: n.op.clone(),
        weight: w.name.clone(),
        input: input.clone(),
        k,
        n: nn,
        transposed,
    })
}

/// The site's weight as `[K, N]` floats, borrowed from the graph where it is stored so (an LM
/// head's copy was a third of quantizing a small LLM's peak memory).
pub fn weight_kn<'g>(graph: &'g Graph, site: &Site) -> Result<Cow<'g, [f32]>> {
    let t = graph.float_initializer(&site.weight).ok_or_else(|| {
        Error::new(
            &graph.source,
            format!("weight '{}' is missing", site.weight),
        )
    })?;
    in_kn_layout(&graph.source, site, t.f32s())
}

/// `site`'s weight `w`, as stored, in the [K, N] layout, refused (naming the model at `source`)
/// if a value is not finite.
pub fn in_kn_layout<'w>(source: &Path, site: &Site, w: Cow<'w, [f32]>) -> Result<Cow<'w, [f32]>> {
    if let Some(bad) = w.iter().position(|v| !v.is_finite()) {
        return Err(Error::new(
            source,
            format!(
                "weight '{}' has a non-finite value at index {bad}",
                site.weight
            ),
        ));
    }
    Ok(if site.transposed {
        Cow::Owned(transpose(&w, site.n, site.k))
    } else {
        w
    })
}

/// `[rows, cols]` → `[cols, rows]`.
pub fn transpose<T: Copy + Send + Sync>(x: &[T], rows: usize, cols: usize) -> Vec<T> {
    (0..rows * cols)
        .into_par_iter()
        .map(|i| x[(i % rows) * cols + i / rows])
        .collect()
}
