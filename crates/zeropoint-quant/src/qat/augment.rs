//! Image augmentation for training: a random crop of the zero-padded image (shift by up to
//! `crop` pixels each way, the gap filled with zeros) and a random horizontal flip, the usual
//! pair for small image classifiers (e.g. torchvision's `RandomCrop(padding=p)` and
//! `RandomHorizontalFlip`). Each sample's draw comes from (seed, epoch, sample), so a run is
//! reproducible at any thread count. The zeros are zeros of the model's input, after any
//! normalization the data went through.

use candle_core::Tensor;
use zeropoint_onnx::DType;

use crate::compare::Batch;
use crate::error::{Error, Result};
use crate::qat::loss::{candle_error, f32s};
use crate::qat::seeded::SplitMix64;

/// Which augmentations a training run applies; the default is none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Augment {
    /// Shift each image by up to this many pixels along height and width (0: no crop).
    pub crop: usize,
    /// Mirror half of the images left to right.
    pub flip: bool,
}

/// One image's draw: its shift along height and width and whether it is mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Draw {
    pub dy: isize,
    pub dx: isize,
    pub flip: bool,
}

impl Augment {
    /// Parses "flip", "crop=P" or both, comma-separated ("none" for none).
    pub fn parse(spec: &str) -> std::result::Result<Augment, String> {
        let mut out = Augment::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                None if part == "flip" => out.flip = true,
                None if part == "none" => {}
                Some(("crop", p)) => {
                    out.crop = p
                        .parse()
                        .map_err(|_| format!("augmentation '{part}': crop takes a pixel count"))?;
                }
                _ => return Err(format!("augmentation '{part}' is not flip or crop=P")),
            }
        }
        Ok(out)
    }

    pub fn is_off(&self) -> bool {
        self.crop == 0 && !self.flip
    }

    /// The draw of sample `sample` in epoch `epoch`.
    pub(crate) fn draw(&self, seed: u64, epoch: usize, sample: usize) -> Draw {
        let mixed = seed
            ^ (epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
            ^ (sample as u64).wrapping_mul(0x8CB9_2BA7_2F3D_8DD7);
        let mut rng = SplitMix64::new(mixed);
        let span = 2 * self.crop + 1;
        let dy = rng.below(span) as isize - self.crop as isize;
        let dx = rng.below(span) as isize - self.crop as isize;
        let flip = self.flip && rng.next_u64() & 1 == 1;
        Draw { dy, dx, flip }
    }

    /// `batch` (one sample) with every float image input [N, C, H, W] augmented by `draw`.
    /// An input of another rank or type is refused: augmentation is for image models.
    pub(crate) fn apply(
        &self,
        batch: &Batch,
        draw: Draw,
        source: &std::path::Path,
    ) -> Result<Batch> {
        let mut out = Batch::new();
        for (name, v) in batch {
            let dims = v.tensor.dims().to_vec();
            if dims.len() != 4 || v.dtype != DType::F32 {
                return Err(Error::new(
                    source,
                    format!(
                        "--augment needs float image inputs [N, C, H, W]; input '{name}' is {:?} {dims:?}",
                        v.dtype
                    ),
                ));
            }
            let y = shifted(
                &f32s(&v.tensor)?,
                [dims[0] * dims[1], dims[2], dims[3]],
                draw,
            );
            let t = Tensor::from_vec(y, dims, &candle_core::Device::Cpu).map_err(candle_error)?;
            out.insert(name.clone(), zeropoint_engine::Value::new(t, DType::F32));
        }
        Ok(out)
    }
}

/// Planes [P, H, W] with out[y][x] = in[y + dy][x' + dx], x' = W-1-x when flipped, else x;
/// zero where that falls outside the image.
pub(crate) fn shifted(x: &[f32], [planes, h, w]: [usize; 3], d: Draw) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for p in 0..planes {
        let (src, dst) = (&x[p * h * w..][..h * w], &mut out[p * h * w..][..h * w]);
        for y in 0..h {
            let sy = y as isize + d.dy;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            let row = &src[sy as usize * w..][..w];
            for (xo, o) in dst[y * w..][..w].iter_mut().enumerate() {
                let xc = if d.flip { w - 1 - xo } else { xo };
                let sx = xc as isize + d.dx;
                if (0..w as isize).contains(&sx) {
                    *o = row[sx as usize];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let a = Augment::parse("flip,crop=4").unwrap();
        assert_eq!(
            a,
            Augment {
                crop: 4,
                flip: true
            }
        );
        assert!(Augment::parse("none").unwrap().is_off());
        assert!(Augment::parse("rotate").unwrap_err().contains("rotate"));
        assert!(Augment::parse("crop=x")
            .unwrap_err()
            .contains("pixel count"));
    }

    /// The shifted plane, written out as padding with zeros and taking a window of the padded
    /// image at (p + dy, p + dx), then mirroring it, as torchvision does.
    #[test]
    fn shift_and_flip_match_pad_then_crop() {
        let (h, w, p) = (5usize, 6usize, 2usize);
        let x: Vec<f32> = (0..h * w).map(|i| i as f32 + 1.0).collect();
        let mut padded = vec![0f32; (h + 2 * p) * (w + 2 * p)];
        for y in 0..h {
            for c in 0..w {
                padded[(y + p) * (w + 2 * p) + c + p] = x[y * w + c];
            }
        }
        for dy in -2..=2isize {
            for dx in -2..=2isize {
                for flip in [false, true] {
                    let got = shifted(&x, [1, h, w], Draw { dy, dx, flip });
                    let (oy, ox) = ((p as isize + dy) as usize, (p as isize + dx) as usize);
                    for y in 0..h {
                        for c in 0..w {
                            let window = padded[(oy + y) * (w + 2 * p) + ox + c];
                            let at = if flip { w - 1 - c } else { c };
                            assert_eq!(got[y * w + at], window, "dy {dy} dx {dx} flip {flip}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn draws_cover_the_range_and_are_fixed_by_the_seed() {
        let a = Augment {
            crop: 3,
            flip: true,
        };
        let draws: Vec<Draw> = (0..2000).map(|i| a.draw(5, 1, i)).collect();
        for s in -3..=3 {
            assert!(draws.iter().any(|d| d.dy == s) && draws.iter().any(|d| d.dx == s));
        }
        assert!(draws.iter().all(|d| d.dy.abs() <= 3 && d.dx.abs() <= 3));
        let flips = draws.iter().filter(|d| d.flip).count();
        assert!((900..1100).contains(&flips), "{flips} flips of 2000");
        assert_eq!(a.draw(5, 1, 17), draws[17]);
        assert_ne!(
            (0..50).map(|i| a.draw(5, 2, i)).collect::<Vec<_>>(),
            draws[..50]
        );
        let none = Augment::default().draw(5, 1, 3);
        assert_eq!(
            none,
            Draw {
                dy: 0,
                dx: 0,
                flip: false
            }
        );
    }
}
