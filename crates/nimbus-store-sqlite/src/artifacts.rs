//! Content-addressed code artifacts: `artifacts/<sha256>/` holds an immutable copy of a
//! function's code directory. A deployment runs from these copies, so editing the source after
//! a deploy never changes what runs.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use walkdir::WalkDir;

use crate::{Result, StoreError};

/// Directories never part of an artifact: nimbus state, VCS metadata, bytecode caches.
const SKIP: &[&str] = &[".nimbus", ".git", "__pycache__"];

#[derive(Clone)]
pub struct ArtifactStore {
    root: PathBuf,
}

fn files(dir: &Path) -> impl Iterator<Item = walkdir::Result<walkdir::DirEntry>> {
    WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !SKIP.iter().any(|s| e.file_name() == *s))
}

/// The digest of a directory tree: relative paths, executable bits and contents, in sorted order.
pub fn digest_dir(dir: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    for entry in files(dir) {
        let entry = entry.map_err(|e| StoreError::Other(format!("cannot read {}: {e}", dir.display())))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let meta = entry.metadata().map_err(|e| StoreError::Other(e.to_string()))?;
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0, u8::from(meta.permissions().mode() & 0o111 != 0)]);
        h.update(meta.len().to_le_bytes());
        let mut f = std::fs::File::open(entry.path())?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(buf.get(..n).unwrap_or_default());
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// The mode of a copied code file: readable by everyone (a sandboxed function runs as another
/// user than nimbus), executable by everyone when the source was executable by anyone — as
/// Lambda expects of deployment packages. The digest already covers the executable bit only.
fn code_mode(entry: &walkdir::DirEntry) -> std::io::Result<u32> {
    let mode = entry.metadata().map_err(std::io::Error::other)?.permissions().mode();
    Ok(if mode & 0o111 != 0 { 0o755 } else { 0o644 })
}

impl ArtifactStore {
    pub fn open(root: &Path) -> Result<ArtifactStore> {
        std::fs::create_dir_all(root)?;
        // Half-written copies from a crash are garbage.
        for e in std::fs::read_dir(root)?.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(ArtifactStore { root: root.to_owned() })
    }

    pub fn path(&self, digest: &str) -> PathBuf {
        self.root.join(digest)
    }

    /// Copy `dir` into the store (if that content is not there yet); returns digest and path.
    pub fn put_dir(&self, dir: &Path) -> Result<(String, PathBuf)> {
        let digest = digest_dir(dir)?;
        let dest = self.path(&digest);
        if dest.is_dir() {
            return Ok((digest, dest));
        }
        let tmp = self.root.join(format!(".tmp-{digest}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        for entry in files(dir) {
            let entry = entry.map_err(|e| StoreError::Other(format!("cannot read {}: {e}", dir.display())))?;
            let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
            let target = tmp.join(rel);
            if entry.file_type().is_dir() {
                std::fs::create_dir_all(&target)?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
            } else if entry.file_type().is_file() {
                std::fs::copy(entry.path(), &target)?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(code_mode(&entry)?))?;
            }
        }
        std::fs::create_dir_all(&tmp)?;
        // Rename is atomic: readers see no artifact or a complete one.
        if let Err(e) = std::fs::rename(&tmp, &dest) {
            let _ = std::fs::remove_dir_all(&tmp);
            if !dest.is_dir() {
                return Err(e.into());
            }
        }
        Ok((digest, dest))
    }
}
