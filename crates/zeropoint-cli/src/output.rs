//! Where a command may write: never over its input, never into a folder that does not exist;
//! and writing a model there.

use anyhow::{bail, Result};
use std::path::Path;
use zeropoint_onnx::proto::ModelProto;

/// Never over the input (nor the side file a model over 2 GB gets); the parent folder must
/// exist.
pub fn check_output(model: &Path, output: &Path) -> Result<()> {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned());
    let side = output.with_file_name(format!("{}.data", name.unwrap_or_default()));
    // The side file's folder is the output's; only an existing file can be the input.
    for target in [Some(output), Some(side.as_path()).filter(|s| s.exists())]
        .into_iter()
        .flatten()
    {
        if let Some(problem) = zeropoint_onnx::atomic::output_problem(model, target) {
            bail!("{}: {problem}", target.display());
        }
    }
    Ok(())
}

/// Writes `model` to `output`, with its tensors' data in `<output>.data` if it is over
/// protobuf's 2 GB limit (`model::save_owned`); returns its size on disk, side file included.
pub fn save_model(model: ModelProto, output: &Path) -> Result<u64> {
    Ok(zeropoint_onnx::model::save_owned(model, output)?)
}
