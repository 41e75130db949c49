//! Where a command may write: never over its input, never into a folder that does not exist.

use anyhow::{bail, Result};

/// Never over the input; the parent folder must exist.
pub fn check_output(model: &std::path::Path, output: &std::path::Path) -> Result<()> {
    let same = match (model.canonicalize(), output.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => model == output,
    };
    if same {
        bail!(
            "{}: the output would overwrite the input model; choose another path",
            output.display()
        );
    }
    if output.is_dir() {
        bail!("{}: is a folder; give the file to write", output.display());
    }
    let parent = output.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent.filter(|d| !d.is_dir()) {
        bail!(
            "{}: the output folder {} does not exist",
            output.display(),
            dir.display()
        );
    }
    Ok(())
}
