//! What a quantizer is: bit-width, signed or unsigned grid, symmetric or asymmetric, narrow range,
//! power-of-two scales, and the granularity at which parameters are shared.

use std::fmt;

use crate::error::{Error, Result};

/// How many elements share one scale and zero-point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Granularity {
    /// One scale and zero-point for the whole tensor.
    #[default]
    PerTensor,
    /// One pair per index along `axis` (per-channel), as ONNX QuantizeLinear's 1-D scale.
    PerAxis { axis: usize },
    /// One pair per `block` consecutive elements along `axis`, as ONNX blocked quantization
    /// (opset 21 `block_size`) and GGUF blocks. The last block of a row may be shorter.
    PerBlock { axis: usize, block: usize },
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Granularity::PerTensor => write!(f, "per-tensor"),
            Granularity::PerAxis { axis } => write!(f, "per-axis (axis {axis})"),
            Granularity::PerBlock { axis, block } => {
                write!(f, "per-block (axis {axis}, block {block})")
            }
        }
    }
}

/// The integer grid [qmin, qmax] that codes live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub qmin: i32,
    pub qmax: i32,
}

impl Grid {
    /// Number of distinct codes on the grid.
    pub fn levels(&self) -> u32 {
        (self.qmax - self.qmin) as u32 + 1
    }
}

impl fmt::Display for Grid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}]", self.qmin, self.qmax)
    }
}

/// A complete description of a uniform affine quantizer, minus the parameters themselves.
///
/// The defaults of [`Scheme::new`] are the white paper's recommendation for weights: signed,
/// symmetric, full range, per-tensor. Use the builder methods to change one thing at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    /// Bit-width, 2..=16.
    pub bits: u32,
    /// Signed grid [-2^(b-1), 2^(b-1)-1] or unsigned [0, 2^b-1].
    pub signed: bool,
    /// Zero-point fixed at 0 (symmetric) or chosen to use the whole grid (asymmetric).
    pub symmetric: bool,
    /// Drop the most negative code of a signed grid ([-127, 127] at 8 bits), or code 0 of an
    /// unsigned one, so that the grid is symmetric around 0.
    pub narrow: bool,
    /// Round scales up to a power of two (s = 2^-k), for shift-only hardware.
    pub pow2_scale: bool,
    pub granularity: Granularity,
}

impl Scheme {
    /// A signed, symmetric, full-range, per-tensor scheme of `bits` bits.
    pub fn new(bits: u32) -> Self {
        Scheme {
            bits,
            signed: true,
            symmetric: true,
            narrow: false,
            pow2_scale: false,
            granularity: Granularity::PerTensor,
        }
    }

    /// The common activation scheme: unsigned, asymmetric, per-tensor.
    pub fn asymmetric_unsigned(bits: u32) -> Self {
        Scheme::new(bits).signed(false).symmetric(false)
    }

    pub fn signed(mut self, signed: bool) -> Self {
        self.signed = signed;
        self
    }

    pub fn symmetric(mut self, symmetric: bool) -> Self {
        self.symmetric = symmetric;
        self
    }

    pub fn narrow(mut self, narrow: bool) -> Self {
        self.narrow = narrow;
        self
    }

    pub fn pow2_scale(mut self, pow2: bool) -> Self {
        self.pow2_scale = pow2;
        self
    }

    pub fn granularity(mut self, granularity: Granularity) -> Self {
        self.granularity = granularity;
        self
    }

    pub fn per_axis(self, axis: usize) -> Self {
        self.granularity(Granularity::PerAxis { axis })
    }

    pub fn per_block(self, axis: usize, block: usize) -> Self {
        self.granularity(Granularity::PerBlock { axis, block })
    }

    /// Checks the combination is meaningful; every function taking a scheme calls this.
    pub fn validate(&self) -> Result<()> {
        if !(2..=16).contains(&self.bits) {
            return Err(Error::Bits(self.bits));
        }
        if self.narrow && self.symmetric && !self.signed {
            // Code 0 would be gone, and with z = 0 real 0 would no longer be representable.
            return Err(Error::Scheme(
                "narrow range with an unsigned symmetric grid would make 0 unrepresentable".into(),
            ));
        }
        if let Granularity::PerBlock { block: 0, .. } = self.granularity {
            return Err(Error::BlockSize);
        }
        Ok(())
    }

    /// The integer grid this scheme quantizes onto.
    pub fn grid(&self) -> Grid {
        let (qmin, qmax) = if self.signed {
            (-(1i32 << (self.bits - 1)), (1i32 << (self.bits - 1)) - 1)
        } else {
            (0, (1i32 << self.bits) - 1)
        };
        let qmin = if self.narrow { qmin + 1 } else { qmin };
        Grid { qmin, qmax }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{} {} {}{}{}",
            if self.signed { "int" } else { "uint" },
            self.bits,
            if self.symmetric {
                "symmetric"
            } else {
                "asymmetric"
            },
            self.granularity,
            if self.narrow { ", narrow" } else { "" },
            if self.pow2_scale { ", pow2 scale" } else { "" },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_follow_the_bit_width() {
        assert_eq!(
            Scheme::new(8).grid(),
            Grid {
                qmin: -128,
                qmax: 127
            }
        );
        assert_eq!(
            Scheme::new(8).narrow(true).grid(),
            Grid {
                qmin: -127,
                qmax: 127
            }
        );
        assert_eq!(
            Scheme::new(4).signed(false).grid(),
            Grid { qmin: 0, qmax: 15 }
        );
        assert_eq!(Scheme::new(2).grid(), Grid { qmin: -2, qmax: 1 });
        assert_eq!(
            Scheme::new(16).signed(false).grid(),
            Grid {
                qmin: 0,
                qmax: 65535
            }
        );
        assert_eq!(Scheme::new(8).grid().levels(), 256);
    }

    #[test]
    fn invalid_schemes_are_refused() {
        assert_eq!(Scheme::new(1).validate(), Err(Error::Bits(1)));
        assert_eq!(Scheme::new(17).validate(), Err(Error::Bits(17)));
        assert!(Scheme::new(8)
            .signed(false)
            .narrow(true)
            .validate()
            .is_err());
        assert!(Scheme::asymmetric_unsigned(8)
            .narrow(true)
            .validate()
            .is_ok());
        assert_eq!(
            Scheme::new(8).per_block(0, 0).validate(),
            Err(Error::BlockSize)
        );
    }
}
