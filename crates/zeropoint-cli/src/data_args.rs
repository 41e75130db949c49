//! The flags that say how data files become model inputs, shared by `quantize` and `eval`.

use anyhow::{bail, Result};
use clap::{Args as ClapArgs, ValueEnum};
use zeropoint_quant::dataset::Preprocess;
use zeropoint_quant::images::{ImagePrep, Layout};

#[derive(ClapArgs, Debug, Clone)]
pub struct DataArgs {
    /// Pixels (idx bytes, image channels) are multiplied by this first.
    #[arg(long, default_value_t = 1.0 / 255.0)]
    pub scale: f32,
    /// Then the mean is subtracted: one value, or one per channel ("0.485,0.456,0.406").
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0",
        allow_negative_numbers = true
    )]
    pub mean: Vec<f32>,
    /// And the result divided by std: one value or one per channel.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub std: Vec<f32>,
    /// Image folders: resize so that the shorter side has this length (Lanczos).
    #[arg(long, value_name = "PIXELS")]
    pub resize: Option<u32>,
    /// Image folders: center crop, HxW or N (square).
    #[arg(long, value_name = "HxW", value_parser = parse_crop)]
    pub crop: Option<(u32, u32)>,
    /// Image folders: the model's channel layout.
    #[arg(long, value_enum, default_value = "nchw", ignore_case = true)]
    pub layout: LayoutArg,
    /// Image folders: channels in BGR order instead of RGB.
    #[arg(long)]
    pub bgr: bool,
}

/// Channel layouts by name.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutArg {
    /// Channels first: [N, C, H, W].
    Nchw,
    /// Channels last: [N, H, W, C].
    Nhwc,
}

fn parse_crop(s: &str) -> std::result::Result<(u32, u32), String> {
    let parse = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("'{s}' is not HxW or N"))
    };
    match s.split_once(['x', 'X']) {
        Some((h, w)) => Ok((parse(h)?, parse(w)?)),
        None => parse(s).map(|n| (n, n)),
    }
}

impl DataArgs {
    pub fn preprocess(&self) -> Result<Preprocess> {
        if self.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            bail!("--std must be finite and nonzero");
        }
        let layout = match self.layout {
            LayoutArg::Nchw => Layout::Nchw,
            LayoutArg::Nhwc => Layout::Nhwc,
        };
        Ok(Preprocess {
            scale: self.scale,
            mean: self.mean.clone(),
            std: self.std.clone(),
            image: ImagePrep {
                resize: self.resize,
                crop: self.crop,
                layout,
                bgr: self.bgr,
            },
        })
    }
}
