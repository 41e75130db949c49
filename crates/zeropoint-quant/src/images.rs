//! A folder of images as model inputs: decoded (PNG, JPEG), resized so that the shorter side
//! has a given length, center-cropped, channels in RGB or BGR order, scaled and normalized per
//! channel, laid out NCHW or NHWC. Files are taken in name order, one batch at a time.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;

use crate::error::{Error, Result};

/// Channel layout of the model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// How images become input tensors: resize, crop, channel order, then
/// `(pixel · scale − mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePrep {
    /// Resize so that the shorter side is this long (Lanczos), before cropping.
    pub resize: Option<u32>,
    /// Center crop (height, width); without it the image must already have the model's size.
    pub crop: Option<(u32, u32)>,
    pub layout: Layout,
    /// Channels in BGR order (OpenCV-trained models) instead of RGB.
    pub bgr: bool,
}

impl Default for ImagePrep {
    fn default() -> Self {
        ImagePrep {
            resize: None,
            crop: None,
            layout: Layout::Nchw,
            bgr: false,
        }
    }
}

/// The image files of a folder, in name order.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "list", e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let ext = p
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase());
            matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// One image as `channels` planes (or interleaved, NHWC) of normalized f32, `size` = (h, w).
pub fn load(
    path: &Path,
    channels: usize,
    size: (usize, usize),
    prep: &ImagePrep,
    scale: f32,
    mean: &[f32],
    std: &[f32],
) -> Result<Vec<f32>> {
    let img = image::open(path).map_err(|e| Error::at(path, "cannot decode image", e))?;
    let img = match prep.resize {
        Some(short) => {
            let (w, h) = (img.width(), img.height());
            let k = short as f64 / w.min(h) as f64;
            let (nw, nh) = ((w as f64 * k).round() as u32, (h as f64 * k).round() as u32);
            img.resize_exact(nw.max(1), nh.max(1), FilterType::Lanczos3)
        }
        None => img,
    };
    let (ch, cw) = prep.crop.map_or((size.0 as u32, size.1 as u32), |c| c);
    if img.width() < cw || img.height() < ch {
        return Err(Error::new(
            path,
            format!(
                "image is {}x{} after resizing, smaller than the {cw}x{ch} the model takes",
                img.width(),
                img.height()
            ),
        ));
    }
    let img = img.crop_imm((img.width() - cw) / 2, (img.height() - ch) / 2, cw, ch);
    if (ch as usize, cw as usize) != size {
        return Err(Error::new(
            path,
            format!(
                "image is {cw}x{ch} (width x height) after cropping; the model takes {}x{}",
                size.1, size.0
            ),
        ));
    }
    let rgb = img.to_rgb8();
    let gray = img.to_luma8();
    let (h, w) = size;
    let at = |i: usize| if i < mean.len() { i } else { 0 };
    let mut out = vec![0f32; channels * h * w];
    for y in 0..h {
        for x in 0..w {
            for c in 0..channels {
                let v = if channels == 1 {
                    gray.get_pixel(x as u32, y as u32)[0]
                } else {
                    let src = if prep.bgr { 2 - c.min(2) } else { c.min(2) };
                    rgb.get_pixel(x as u32, y as u32)[src]
                };
                let v = (f32::from(v) * scale - mean[at(c)]) / std[at(c)];
                let idx = match prep.layout {
                    Layout::Nchw => (c * h + y) * w + x,
                    Layout::Nhwc => (y * w + x) * channels + c,
                };
                out[idx] = v;
            }
        }
    }
    Ok(out)
}
