//! A deployment's static files (`[static]`): stored with the deployment, one content-addressed
//! artifact per file, so a rollback serves the old files again and a file a deploy does not
//! change is not stored twice.
//!
//! A deploy walks the static directory in name order and stores each file as an artifact
//! holding one file named [`BLOB`]; the deployment records the path → digest, size,
//! modification time and content type list ([`AssetManifest`]). The gateway serves from the
//! [`Assets`] index built from it: everything a response needs (the ETag from the digest, the
//! type, whether the name is content-hashed) is decided here, once per deploy, never per
//! request.
//!
//! Not served: names starting with `.` (except `.well-known`), and what the artifact store
//! never stores (`.nimbus`, `.git`, `__pycache__`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use nimbus_core::Registry;

/// Files up to this size are kept in memory once read ([`ServedFile::cached`])…
pub const CACHED_FILE_MAX: u64 = 1 << 20;
/// …while a deployment's kept files total at most this much; larger files and those past the
/// budget are read from the artifact store each time.
pub const CACHE_BUDGET: u64 = 32 << 20;

/// The one file inside an asset's artifact directory.
pub const BLOB: &str = "blob";

/// One stored file of `[static] dir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssetFile {
    /// Relative to the static directory, `/`-separated (`assets/app.3f9a1c2b.js`).
    pub path: String,
    /// The artifact that holds it.
    pub digest: String,
    pub size: u64,
    /// Modification time at deploy, in seconds since the epoch (`Last-Modified`).
    pub mtime: u64,
    pub content_type: String,
}

/// What a deployment records about its static files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssetManifest {
    pub spa_fallback: Option<String>,
    /// In path order.
    pub files: Vec<AssetFile>,
}

/// A file as the gateway serves it.
#[derive(Clone, Debug)]
pub struct ServedFile {
    /// Where its bytes are (inside the artifact store).
    pub path: PathBuf,
    pub size: u64,
    pub mtime: u64,
    pub content_type: String,
    /// The strong ETag, quotes included.
    pub etag: String,
    /// A content-hashed name (`app.3f9a1c2b.js`): cached for a year, `immutable`.
    pub immutable: bool,
    /// The bytes, once read, when the file is small and the deployment's budget allows.
    pub cached: OnceLock<Bytes>,
}

/// The static files of one deployment, by path relative to the static directory.
#[derive(Debug, Default)]
pub struct Assets {
    pub files: HashMap<String, ServedFile>,
    pub spa_fallback: Option<String>,
    /// What the deployment recorded (to tell two deployments' files apart).
    pub manifest: AssetManifest,
    /// What is left of [`CACHE_BUDGET`].
    budget: AtomicU64,
}

impl Assets {
    pub(crate) fn new(registry: &dyn Registry, m: &AssetManifest) -> Assets {
        let files = m
            .files
            .iter()
            .map(|f| {
                let served = ServedFile {
                    path: registry.artifact_path(&f.digest).join(BLOB),
                    size: f.size,
                    mtime: f.mtime,
                    content_type: f.content_type.clone(),
                    etag: format!("\"{}\"", f.digest.get(..32).unwrap_or(&f.digest)),
                    immutable: content_hashed(&f.path),
                    cached: OnceLock::new(),
                };
                (f.path.clone(), served)
            })
            .collect();
        let budget = AtomicU64::new(CACHE_BUDGET);
        Assets { files, spa_fallback: m.spa_fallback.clone(), manifest: m.clone(), budget }
    }

    /// Take `size` bytes of the memory budget for a file to keep, if it is small and the budget
    /// has room.
    pub fn reserve(&self, size: u64) -> bool {
        size <= CACHED_FILE_MAX
            && self.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(size)).is_ok()
    }
}

/// Every file to store under `dir`, in path order: (relative path, absolute path).
pub(crate) fn walk(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_owned())];
    while let Some((prefix, at)) = stack.pop() {
        for entry in std::fs::read_dir(&at)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if (name.starts_with('.') && name != ".well-known")
                || nimbus_core::registry::ARTIFACT_SKIP.contains(&name.as_str())
            {
                continue;
            }
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let meta = std::fs::metadata(entry.path())?;
            if meta.is_dir() {
                stack.push((rel, entry.path()));
            } else if meta.is_file() {
                out.push((rel, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Store one file as an artifact (a directory holding it as [`BLOB`]); returns its record.
pub(crate) async fn store(registry: &dyn Registry, rel: String, file: &Path) -> std::io::Result<AssetFile> {
    let meta = std::fs::metadata(file)?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
    let tmp = tempfile::tempdir()?;
    let blob = tmp.path().join(BLOB);
    if std::fs::hard_link(file, &blob).is_err() {
        std::fs::copy(file, &blob)?;
    }
    let digest = registry.put_artifact(tmp.path()).await.map_err(std::io::Error::other)?;
    let content_type = content_type(&rel);
    Ok(AssetFile { path: rel, digest, size: meta.len(), mtime, content_type })
}

/// The content type by extension (text types in UTF-8); a precompressed sibling (`app.js.br`)
/// keeps its own (`application/x-brotli`) since it is also a file of its own.
fn content_type(path: &str) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let text = mime.type_() == mime_guess::mime::TEXT
        || matches!(mime.subtype().as_str(), "javascript" | "json" | "xml" | "manifest+json");
    if text && mime.get_param("charset").is_none() {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    }
}

/// Whether a file name carries a content hash, as bundlers write them: a part of the name
/// after the first, split at `.`, `-` or `_`, of 8 to 64 letters and digits with at least one
/// of each (`app.3f9a1c2b.js`, `index-BfT3x9Qa.js`, `chunk_5f2b9c1d.css`).
pub fn content_hashed(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    stem.split(['.', '-', '_']).skip(1).any(|part| {
        (8..=64).contains(&part.len())
            && part.chars().all(|c| c.is_ascii_alphanumeric())
            && part.chars().any(|c| c.is_ascii_digit())
            && part.chars().any(|c| c.is_ascii_alphabetic())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_names_are_told_from_plain_ones() {
        for hashed in ["app.3f9a1c2b.js", "assets/index-BfT3x9Qa.js", "chunk_5f2b9c1d.css", "a.3f9a1c2b.min.js"] {
            assert!(content_hashed(hashed), "{hashed}");
        }
        for plain in ["index.html", "app.js", "polyfills.js", "report-20240101.pdf", "3f9a1c2b.js", "my-longname.css"] {
            assert!(!content_hashed(plain), "{plain}");
        }
    }

    #[test]
    fn types_come_from_extensions() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("a/app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("logo.png"), "image/png");
        assert_eq!(content_type("data.bin"), "application/octet-stream");
    }
}
