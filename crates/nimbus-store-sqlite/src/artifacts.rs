//! Content-addressed code artifacts: `artifacts/<sha256>/` holds an immutable copy of a
//! function's code directory. A deployment runs from these copies, so editing the source after
//! a deploy never changes what runs.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nimbus_core::registry::ARTIFACT_SKIP as SKIP;
use sha2::{Digest, Sha256};
use walkdir::WalkDir;

use crate::{Result, StoreError};

#[derive(Clone)]
pub struct ArtifactStore {
    root: PathBuf,
}

/// Every entry of `dir` in name order, following the links that stay inside `dir` (they are
/// stored as what they point at). A link that leads out of `dir`, or to nothing, ends the walk
/// with an error naming it, before anything it points at is read: an artifact holds only what is
/// inside the code directory, whatever a tar or an app directory on disk links to.
fn files(dir: &Path) -> Result<impl Iterator<Item = Result<walkdir::DirEntry>> + '_> {
    let root = dir.canonicalize().map_err(|e| StoreError::Other(format!("cannot read {}: {e}", dir.display())))?;
    let walk = WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !SKIP.iter().any(|s| e.file_name() == *s));
    Ok(walk.map(move |entry| match entry {
        Ok(e) if e.depth() > 0 && e.path_is_symlink() => inside(dir, &root, e.path()).map(|()| e),
        Ok(e) => Ok(e),
        Err(e) => Err(match e.path().filter(|p| p.is_symlink()) {
            Some(link) => link_error(dir, link, "which does not exist or loops"),
            None => StoreError::Other(format!("cannot read {}: {e}", dir.display())),
        }),
    }))
}

/// A link found in `dir` must resolve to a path under `root` (`dir`, canonical).
fn inside(dir: &Path, root: &Path, link: &Path) -> Result<()> {
    match link.canonicalize() {
        Ok(real) if real.starts_with(root) => Ok(()),
        Ok(_) => Err(link_error(dir, link, "outside the code directory")),
        Err(_) => Err(link_error(dir, link, "which does not exist or loops")),
    }
}

fn link_error(dir: &Path, link: &Path, why: &str) -> StoreError {
    let rel = link.strip_prefix(dir).unwrap_or(link);
    let target = std::fs::read_link(link).map(|t| t.display().to_string()).unwrap_or_default();
    StoreError::Other(format!(
        "the link \"{}\" in {} points to \"{target}\", {why}; nimbus stores only what is inside a function's code directory",
        rel.display(),
        dir.display()
    ))
}

/// The digest of a directory tree: relative paths, executable bits and contents, in sorted order.
pub fn digest_dir(dir: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    for entry in files(dir)? {
        let entry = entry?;
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

/// Copy what [`files`] walks (directories and files; links inside `dir` as their targets),
/// with the modes a sandboxed function (another user than nimbus) can read.
fn copy_tree(dir: &Path, to: &Path) -> Result<()> {
    for entry in files(dir)? {
        let entry = entry?;
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let target = to.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
        } else if entry.file_type().is_file() {
            std::fs::copy(entry.path(), &target)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(code_mode(&entry)?))?;
        }
    }
    std::fs::create_dir_all(to)?;
    Ok(())
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
        if let Err(e) = copy_tree(dir, &tmp) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// `outside/secret`, and `app/code` with `index.js` and `lib/util.js`.
    fn layout() -> (tempfile::TempDir, PathBuf, ArtifactStore) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), "token").unwrap();
        let code = dir.path().join("app/code");
        std::fs::create_dir_all(code.join("lib")).unwrap();
        std::fs::write(code.join("index.js"), "a").unwrap();
        std::fs::write(code.join("lib/util.js"), "b").unwrap();
        let store = ArtifactStore::open(&dir.path().join("artifacts")).unwrap();
        (dir, code, store)
    }

    #[test]
    fn links_inside_are_stored_as_their_targets() {
        let (_dir, code, store) = layout();
        let plain = store.put_dir(&code).unwrap().0;
        symlink("lib/util.js", code.join("util.js")).unwrap();
        symlink("lib", code.join("lib2")).unwrap();
        let (digest, path) = store.put_dir(&code).unwrap();
        assert_ne!(digest, plain);
        assert_eq!(std::fs::read_to_string(path.join("util.js")).unwrap(), "b");
        assert!(!path.join("util.js").is_symlink(), "stored as a file");
        assert_eq!(std::fs::read_to_string(path.join("lib2/util.js")).unwrap(), "b");
    }

    #[test]
    fn links_out_of_the_directory_are_refused_by_name() {
        let cases: &[(&str, &str, &str)] = &[
            ("secret", "../../outside/secret", "outside the code directory"),
            ("abs", "/etc/hostname", "outside the code directory"),
            ("up", "..", "outside the code directory"),
            ("lib/deep", "../../../outside", "outside the code directory"),
            ("dangling", "nowhere", "does not exist or loops"),
            ("loop", "loop", "does not exist or loops"),
        ];
        for (link, target, why) in cases {
            let (dir, code, store) = layout();
            symlink(target, code.join(link)).unwrap();
            let e = store.put_dir(&code).unwrap_err().to_string();
            assert!(e.contains(&format!("\"{link}\"")) && e.contains(why), "{link} -> {target}: {e}");
            let stored: Vec<_> = std::fs::read_dir(dir.path().join("artifacts")).unwrap().collect();
            assert!(stored.is_empty(), "{link} -> {target}: nothing is stored");
        }
    }
}
