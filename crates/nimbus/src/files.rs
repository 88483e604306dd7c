//! Files nimbus writes for users and itself (the admin token, the server URL, the development
//! certificate): written whole through a temporary file, with the mode they must have.

use std::path::Path;

use anyhow::{Context, Result};

/// Write a file only its owner can read (mode 0600), whole or not at all.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    write_file(path, text, 0o600)
}

/// Write a file with `mode`, through a temporary file renamed into place.
pub fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    // A leftover temporary file would keep its old mode.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
