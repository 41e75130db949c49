//! How the elements of a row-major tensor map onto its quantization parameters.
//!
//! The parameters of every granularity are laid out as ONNX lays out QuantizeLinear's `y_scale`:
//! a scalar for per-tensor, a vector of `shape[axis]` for per-axis, and for per-block a tensor of
//! the input's shape with `shape[axis]` replaced by `ceil(shape[axis] / block)`.
//!
//! Kernels walk a tensor as a sequence of [`Segment`]s: contiguous runs of elements that either
//! share one parameter (the fast case: per-tensor, per-channel along a leading axis, blocks along the
//! last axis) or step through consecutive parameters one element at a time (per-channel along the
//! last axis, blocks along a leading axis). Both kinds vectorize.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::scheme::Granularity;

/// How to find the parameters of the elements of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Every element of the run uses parameter `p`.
    Uniform(usize),
    /// Element `start + k` of the run uses parameter `p + k`.
    PerElement(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Tensor,
    /// Per-axis: `dim` channels, each a run of `inner` elements.
    Axis {
        dim: usize,
        inner: usize,
    },
    /// Per-block along the last (contiguous) axis of length `dim`.
    BlockRow {
        dim: usize,
        block: usize,
        blocks: usize,
    },
    /// Per-block along a leading axis: `inner` elements after it.
    BlockInner {
        dim: usize,
        inner: usize,
        block: usize,
        blocks: usize,
    },
}

/// The mapping from element index to parameter index for one tensor shape and granularity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    len: usize,
    kind: Kind,
    param_shape: Vec<usize>,
}

impl Layout {
    /// Checks `granularity` against `shape` (axis in range, block at least 1).
    pub fn new(shape: &[usize], granularity: Granularity) -> Result<Layout> {
        let len = shape.iter().product();
        let split = |axis: usize| -> Result<(usize, usize)> {
            if axis >= shape.len() {
                return Err(Error::Axis {
                    axis,
                    rank: shape.len(),
                });
            }
            Ok((shape[axis], shape[axis + 1..].iter().product()))
        };
        let (kind, param_shape) = match granularity {
            Granularity::PerTensor => (Kind::Tensor, vec![]),
            Granularity::PerAxis { axis } => {
                let (dim, inner) = split(axis)?;
                (Kind::Axis { dim, inner }, vec![dim])
            }
            Granularity::PerBlock { axis, block } => {
                if block == 0 {
                    return Err(Error::BlockSize);
                }
                let (dim, inner) = split(axis)?;
                let blocks = dim.div_ceil(block);
                let mut param_shape = shape.to_vec();
                param_shape[axis] = blocks;
                let kind = if inner == 1 {
                    Kind::BlockRow { dim, block, blocks }
                } else {
                    Kind::BlockInner {
                        dim,
                        inner,
                        block,
                        blocks,
                    }
                };
                (kind, param_shape)
            }
        };
        Ok(Layout {
            len,
            kind,
            param_shape,
        })
    }

    /// Number of elements of the tensor.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Shape of the scale / zero-point tensors, in ONNX's layout.
    pub fn param_shape(&self) -> &[usize] {
        &self.param_shape
    }

    /// Number of scale / zero-point pairs.
    pub fn num_params(&self) -> usize {
        self.param_shape.iter().product()
    }

    /// The run starting at element `i`: where it ends (exclusive) and how its parameters are found.
    #[inline]
    pub fn segment(&self, i: usize) -> (usize, Segment) {
        match self.kind {
            Kind::Tensor => (self.len, Segment::Uniform(0)),
            Kind::Axis { dim, inner: 1 } => {
                let row = i / dim;
                ((row + 1) * dim, Segment::PerElement(i - row * dim))
            }
            Kind::Axis { dim, inner } => {
                let run = i / inner;
                ((run + 1) * inner, Segment::Uniform(run % dim))
            }
            Kind::BlockRow { dim, block, blocks } => {
                let row = i / dim;
                let b = (i - row * dim) / block;
                let end = row * dim + ((b + 1) * block).min(dim);
                (end, Segment::Uniform(row * blocks + b))
            }
            Kind::BlockInner {
                dim,
                inner,
                block,
                blocks,
            } => {
                let run = i / inner;
                let (outer, c) = (run / dim, run % dim);
                let j = i - run * inner;
                let p = (outer * blocks + c / block) * inner + j;
                ((run + 1) * inner, Segment::PerElement(p))
            }
        }
    }

    /// Calls `f` for each run that intersects `range`, clipped to it.
    #[inline(always)]
    pub fn for_each_segment(&self, range: Range<usize>, mut f: impl FnMut(Range<usize>, Segment)) {
        let mut i = range.start;
        if let Kind::BlockRow { dim, block, blocks } = self.kind {
            // Short runs: step from block to block instead of dividing for each one.
            let mut row = i / dim;
            let mut b = (i - row * dim) / block;
            while i < range.end {
                let end = (row * dim + ((b + 1) * block).min(dim)).min(range.end);
                f(i..end, Segment::Uniform(row * blocks + b));
                i = end;
                b += 1;
                if b == blocks {
                    b = 0;
                    row += 1;
                }
            }
            return;
        }
        while i < range.end {
            let (end, seg) = self.segment(i);
            let end = end.min(range.end);
            f(i..end, seg);
            i = end;
        }
    }

    /// Parameter index of element `i` (the slow, obvious way; used by tests and reports).
    pub fn param_index(&self, i: usize) -> usize {
        match self.segment(i).1 {
            Segment::Uniform(p) | Segment::PerElement(p) => p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameter index from first principles: the multi-index with the axis coordinate replaced.
    fn naive_index(shape: &[usize], g: Granularity, i: usize) -> usize {
        let mut idx = vec![0; shape.len()];
        let mut rest = i;
        for d in (0..shape.len()).rev() {
            idx[d] = rest % shape[d];
            rest /= shape[d];
        }
        match g {
            Granularity::PerTensor => 0,
            Granularity::PerAxis { axis } => idx[axis],
            Granularity::PerBlock { axis, block } => {
                let mut pshape = shape.to_vec();
                pshape[axis] = shape[axis].div_ceil(block);
                idx[axis] /= block;
                idx.iter().zip(&pshape).fold(0, |acc, (&k, &n)| acc * n + k)
            }
        }
    }

    #[test]
    fn segments_agree_with_the_naive_mapping() {
        let shapes: &[&[usize]] = &[&[7], &[3, 5], &[2, 3, 4], &[4, 1, 6], &[5, 7]];
        for shape in shapes {
            let mut grans = vec![Granularity::PerTensor];
            for axis in 0..shape.len() {
                grans.push(Granularity::PerAxis { axis });
                for block in [1, 2, 3, 8] {
                    grans.push(Granularity::PerBlock { axis, block });
                }
            }
            for g in grans {
                let layout = Layout::new(shape, g).unwrap();
                let mut seen = 0;
                layout.for_each_segment(0..layout.len(), |r, seg| {
                    assert_eq!(r.start, seen);
                    seen = r.end;
                    for (k, i) in r.enumerate() {
                        let p = match seg {
                            Segment::Uniform(p) => p,
                            Segment::PerElement(p) => p + k,
                        };
                        assert_eq!(p, naive_index(shape, g, i), "{shape:?} {g} elem {i}");
                        assert!(p < layout.num_params());
                    }
                });
                assert_eq!(seen, layout.len());
            }
        }
    }

    #[test]
    fn param_shapes_follow_onnx() {
        let l = Layout::new(&[4, 6], Granularity::PerBlock { axis: 1, block: 4 }).unwrap();
        assert_eq!(l.param_shape(), &[4, 2]);
        let l = Layout::new(&[4, 6], Granularity::PerAxis { axis: 1 }).unwrap();
        assert_eq!(l.param_shape(), &[6]);
        let l = Layout::new(&[4, 6], Granularity::PerTensor).unwrap();
        assert_eq!(l.num_params(), 1);
        assert_eq!(
            Layout::new(&[4, 6], Granularity::PerAxis { axis: 2 }),
            Err(Error::Axis { axis: 2, rank: 2 })
        );
    }
}
