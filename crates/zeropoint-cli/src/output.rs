//! Where a command may write: never over its input, never into a folder that does not exist.

use anyhow::{bail, Result};

/// Never over the input; the parent folder must exist.
pub fn check_output(model: &std::path::Path, output: &std::path::Path) -> Result<()> {
    if let Some(problem) = zeropoint_onnx::atomic::output_problem(model, output) {
        bail!("{}: {problem}", output.display());
    }
    Ok(())
}
