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

/// The image files of a folder, in name order. A file whose real path (links resolved) leaves the
/// folder, or that is not a regular file, is refused: a folder from elsewhere cannot make
/// zeropoint read other files, or block on a FIFO.
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
    let real_dir = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, "list", e))?;
    for f in &files {
        let real = std::fs::canonicalize(f).map_err(|e| Error::io(f, "read", e))?;
        if !real.starts_with(&real_dir) {
            return Err(Error::new(
                f,
                format!(
                    "resolves to {}, outside the folder {}",
                    real.display(),
                    real_dir.display()
                ),
            ));
        }
        if !std::fs::metadata(&real).is_ok_and(|m| m.is_file()) {
            return Err(Error::new(f, "not a regular file"));
        }
    }
    Ok(files)
}

/// Decodes the image file at `path`.
fn decode(path: &Path) -> Result<image::DynamicImage> {
    let file = zeropoint_onnx::limits::open_regular(path)?;
    decode_from(std::io::BufReader::new(file), path)
}

/// Decodes an image held in memory; `path` names it in errors.
pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<image::DynamicImage> {
    decode_from(std::io::Cursor::new(bytes), path)
}

/// Decodes an image whose dimensions and decoded size are checked against the memory limit
/// before any pixel is decoded.
fn decode_from(
    reader: impl std::io::BufRead + std::io::Seek,
    path: &Path,
) -> Result<image::DynamicImage> {
    let mut reader = image::ImageReader::new(reader)
        .with_guessed_format()
        .map_err(|e| Error::io(path, "read", e))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(zeropoint_onnx::limits::max_bytes());
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| Error::at(path, "cannot decode image", e))
}

/// How decoded pixels become an input: channels and (height, width) the model takes, the image
/// steps, and `(pixel · scale − mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target<'a> {
    pub channels: usize,
    pub size: (usize, usize),
    pub prep: &'a ImagePrep,
    pub scale: f32,
    pub mean: &'a [f32],
    pub std: &'a [f32],
}

/// One image file as `channels` planes (or interleaved, NHWC) of normalized f32.
pub fn load(path: &Path, target: &Target) -> Result<Vec<f32>> {
    to_input(decode(path)?, path, target)
}

/// A decoded image (from `path`, for messages) resized, cropped and normalized as `target` says.
pub fn to_input(img: image::DynamicImage, path: &Path, target: &Target) -> Result<Vec<f32>> {
    let Target {
        channels,
        size,
        prep,
        scale,
        mean,
        std,
    } = *target;
    let img = match prep.resize {
        Some(short) => {
            let (w, h) = (img.width(), img.height());
            let k = short as f64 / w.min(h) as f64;
            let (nw, nh) = ((w as f64 * k).round() as u32, (h as f64 * k).round() as u32);
            // Up to 16 bytes a pixel (four float channels) while resampling.
            let bytes = u128::from(nw) * u128::from(nh) * 16;
            zeropoint_onnx::limits::check(bytes, &format!("resizing to {nw}x{nh}"))
                .map_err(|m| Error::new(path, m))?;
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
