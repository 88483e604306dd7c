//! An uploaded app archive (`POST /v1/deployments`) is untrusted input: every entry is checked
//! against the upload rules before anything is written, then the archive is unpacked.
//!
//! The rules (each refusal names the entry and says why):
//! - paths are relative and stay inside the app directory: no absolute path, no `..`, at most
//!   [`MAX_PATH_BYTES`] in all and [`MAX_NAME_BYTES`] per component;
//! - only files, directories, symlinks and hard links: no device files or FIFOs, nor entry
//!   types this reader does not know (the `tar` crate would write those as plain files);
//! - a symlink's target, resolved in the archive's final tree the way the kernel would (through
//!   the archive's other symlinks, `..` of a linked directory included), stays inside the app
//!   directory; absolute targets are refused. Links that stay inside are kept (node_modules
//!   uses them); a dangling link inside is kept too (it reaches nothing);
//! - a hard link names a file earlier in the archive;
//! - no entry lies below a symlink or a file of the archive, and no path appears twice (a
//!   directory may be repeated), so the unpacked tree is exactly the tree that was checked;
//! - at most [`MAX_ENTRIES`] entries and [`MAX_UNPACKED_BYTES`] unpacked (sparse files count
//!   at their apparent size).
//!
//! The `tar` crate's own `unpack` is not relied on for these: it strips a leading `/` instead
//! of refusing it, silently skips entries with `..`, and creates symlinks to anywhere (it only
//! checks that the *parent* of each entry it writes is inside the target). Unpacking keeps its
//! behaviour for the archives these rules accept, except that set-user-ID, set-group-ID and
//! sticky bits are dropped (code is run by functions, never with the privileges of its owner).

use std::collections::HashMap;
use std::fmt;
use std::io::Cursor;
use std::path::Path;

use tar::EntryType;

/// More entries than this (headers included) refuse the upload.
pub const MAX_ENTRIES: usize = 100_000;
/// The most an upload may unpack to, summing every entry's apparent size.
pub const MAX_UNPACKED_BYTES: u64 = 1 << 30;
/// The longest entry path, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// The longest component of a path, in bytes (Linux's `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// Symlinks followed while resolving one link, as the kernel's limit (`ELOOP`).
const MAX_LINK_HOPS: usize = 40;
/// Path components walked while resolving one link, so that resolution stays cheap.
const MAX_RESOLVE_STEPS: usize = 16 * 1024;

/// Why an upload was not unpacked: always the upload's fault (a 400).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the upload is not a valid tar archive of an app directory: {0}")]
    Malformed(#[source] std::io::Error),
    #[error("the upload was refused: entry {entry:?} {reason}")]
    Refused { entry: String, reason: Refusal },
    #[error("the upload was refused: it has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error(
        "the upload was refused: it unpacks to more than {} MiB (passed at entry {entry:?}; sparse files count at their full size)",
        MAX_UNPACKED_BYTES >> 20
    )]
    TooLarge { entry: String },
}

/// What is wrong with one entry; [`UploadError::Refused`] names the entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("has an absolute path; entries must be relative to the app directory")]
    AbsolutePath,
    #[error("has a \"..\" component; entries must stay inside the app directory")]
    ParentDir,
    #[error("has an empty name")]
    EmptyName,
    #[error("has a path longer than {MAX_PATH_BYTES} bytes")]
    PathTooLong,
    #[error("has a path component longer than {MAX_NAME_BYTES} bytes")]
    NameTooLong,
    #[error("is a {0}; an app may hold only files, directories and links")]
    SpecialFile(FileKind),
    #[error("is a symlink with an empty target")]
    EmptyLinkTarget,
    #[error("is a symlink to {target:?}, which is outside the app directory")]
    SymlinkOutside { target: String },
    #[error("is a symlink to {target:?}, which cannot be resolved (a loop, or more than {MAX_LINK_HOPS} links deep)")]
    SymlinkLoop { target: String },
    #[error("is a hard link to {target:?}, which is not a file earlier in the archive")]
    HardLinkTarget { target: String },
    #[error("lies below {parent:?}, which the archive makes a {kind}, not a directory")]
    UnderNonDirectory { parent: String, kind: NodeKind },
    #[error("is listed twice (or both as a directory and as something else)")]
    Duplicate,
}

/// The entry types an upload may not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    CharDevice,
    BlockDevice,
    Fifo,
    /// A type byte this reader does not know.
    Unknown(u8),
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileKind::CharDevice => f.write_str("character device"),
            FileKind::BlockDevice => f.write_str("block device"),
            FileKind::Fifo => f.write_str("FIFO"),
            FileKind::Unknown(b) => write!(f, "entry of unknown type {:?}", char::from(*b)),
        }
    }
}

/// What a path of the archive's tree is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    File,
    Symlink,
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeKind::File => "file",
            NodeKind::Symlink => "symlink",
        })
    }
}

/// Check `archive` against the upload rules, then unpack it into `target` (an empty directory).
/// Nothing is written when the archive is refused.
pub fn unpack(archive: &[u8], target: &Path) -> Result<(), UploadError> {
    check(archive)?;
    let mut ar = tar::Archive::new(Cursor::new(archive));
    ar.set_preserve_permissions(true);
    ar.set_mask(0o7000);
    ar.unpack(target).map_err(UploadError::Malformed)
}

/// Check `archive` against the upload rules without writing anything.
pub fn check(archive: &[u8]) -> Result<(), UploadError> {
    let mut ar = tar::Archive::new(Cursor::new(archive));
    let mut tree = Tree::default();
    let mut unpacked: u64 = 0;
    for (i, entry) in ar.entries().map_err(UploadError::Malformed)?.enumerate() {
        let entry = entry.map_err(UploadError::Malformed)?;
        if i >= MAX_ENTRIES {
            return Err(UploadError::TooManyEntries);
        }
        let raw_path = entry.path_bytes();
        let shown = || String::from_utf8_lossy(&raw_path).into_owned();
        unpacked = unpacked.saturating_add(entry.size());
        if unpacked > MAX_UNPACKED_BYTES {
            return Err(UploadError::TooLarge { entry: shown() });
        }
        let refused = |reason| UploadError::Refused { entry: shown(), reason };
        let Some(node) = classify(&entry).map_err(refused)? else { continue };
        let path = normalize(&raw_path).map_err(refused)?;
        tree.add(path, node).map_err(refused)?;
    }
    tree.check_symlinks()
}

/// An entry as the tree records it; `None` for the headers `unpack` skips.
fn classify<R: std::io::Read>(entry: &tar::Entry<'_, R>) -> Result<Option<Node>, Refusal> {
    let kind = entry.header().entry_type();
    let link = || entry.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default();
    Ok(Some(match kind {
        EntryType::Directory => Node::Dir,
        EntryType::Symlink => Node::Symlink(link()),
        EntryType::Link => Node::HardLink(link()),
        // Old (pre-POSIX) headers mark a directory with a trailing slash, and `unpack` agrees.
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
            if entry.header().as_ustar().is_none() && entry.path_bytes().ends_with(b"/") =>
        {
            Node::Dir
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Node::File,
        EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink => {
            return Ok(None)
        }
        EntryType::Char => return Err(Refusal::SpecialFile(FileKind::CharDevice)),
        EntryType::Block => return Err(Refusal::SpecialFile(FileKind::BlockDevice)),
        EntryType::Fifo => return Err(Refusal::SpecialFile(FileKind::Fifo)),
        other => return Err(Refusal::SpecialFile(FileKind::Unknown(other.as_byte()))),
    }))
}

/// The path's components as `unpack` would write them (`.` and empty components dropped),
/// refusing what could leave the target directory or exceed the length limits.
fn normalize(raw: &[u8]) -> Result<Vec<Vec<u8>>, Refusal> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(Refusal::PathTooLong);
    }
    if raw.starts_with(b"/") {
        return Err(Refusal::AbsolutePath);
    }
    let mut out = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(Refusal::ParentDir),
            name if name.len() > MAX_NAME_BYTES => return Err(Refusal::NameTooLong),
            name => out.push(name.to_vec()),
        }
    }
    Ok(out)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File,
    Symlink(Vec<u8>),
    HardLink(Vec<u8>),
}

/// The tree the archive unpacks to, keyed by `/`-joined normalized path (the root is `""`).
#[derive(Default)]
struct Tree {
    nodes: HashMap<Vec<u8>, Node>,
    /// Symlink paths (as components) in archive order, for messages in a stable order.
    symlinks: Vec<Vec<Vec<u8>>>,
}

fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.join(&b'/')
}

fn shown(parts: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&join(parts)).into_owned()
}

impl Tree {
    /// Record one entry: its parents become directories, and it must not clash with what the
    /// archive already put at its path.
    fn add(&mut self, path: Vec<Vec<u8>>, node: Node) -> Result<(), Refusal> {
        if path.is_empty() {
            // `.` or `./`: the app directory itself.
            return if node == Node::Dir { Ok(()) } else { Err(Refusal::EmptyName) };
        }
        for depth in 1..path.len() {
            let parent = path.get(..depth).unwrap_or_default();
            match self.nodes.entry(join(parent)).or_insert(Node::Dir) {
                Node::Dir => {}
                Node::File | Node::HardLink(_) => {
                    return Err(Refusal::UnderNonDirectory { parent: shown(parent), kind: NodeKind::File })
                }
                Node::Symlink(_) => {
                    return Err(Refusal::UnderNonDirectory { parent: shown(parent), kind: NodeKind::Symlink })
                }
            }
        }
        let node = match node {
            Node::HardLink(target) => self.hard_link(target)?,
            Node::Symlink(target) if target.is_empty() => return Err(Refusal::EmptyLinkTarget),
            other => other,
        };
        let key = join(&path);
        match self.nodes.get(&key) {
            None => {}
            Some(Node::Dir) if node == Node::Dir => return Ok(()),
            Some(_) => return Err(Refusal::Duplicate),
        }
        if matches!(node, Node::Symlink(_)) {
            self.symlinks.push(path);
        }
        self.nodes.insert(key, node);
        Ok(())
    }

    /// A hard link must name a file (or a hard link to one) listed earlier.
    fn hard_link(&self, target: Vec<u8>) -> Result<Node, Refusal> {
        let refused = || Refusal::HardLinkTarget { target: String::from_utf8_lossy(&target).into_owned() };
        let parts = normalize(&target).map_err(|_| refused())?;
        match self.nodes.get(&join(&parts)) {
            Some(Node::File | Node::HardLink(_)) if !parts.is_empty() => Ok(Node::HardLink(target)),
            _ => Err(refused()),
        }
    }

    /// Resolve every symlink in the final tree; each must stay inside the root.
    fn check_symlinks(&self) -> Result<(), UploadError> {
        for path in &self.symlinks {
            let Some(Node::Symlink(target)) = self.nodes.get(&join(path)) else { continue };
            let parent = path.get(..path.len().saturating_sub(1)).unwrap_or_default().to_vec();
            let mut walk = Resolve { at: parent, hops: 0, steps: 0 };
            if let Err(why) = walk.follow(self, target) {
                let target = String::from_utf8_lossy(target).into_owned();
                let reason = match why {
                    Escape::Outside => Refusal::SymlinkOutside { target },
                    Escape::TooDeep => Refusal::SymlinkLoop { target },
                };
                return Err(UploadError::Refused { entry: shown(path), reason });
            }
        }
        Ok(())
    }
}

/// Why a symlink failed to resolve inside the root.
enum Escape {
    Outside,
    TooDeep,
}

/// One symlink being resolved: `at` is the real (symlink-free) directory reached so far.
struct Resolve {
    at: Vec<Vec<u8>>,
    hops: usize,
    steps: usize,
}

impl Resolve {
    /// Walk `target` from `at`, as the kernel would: `..` leaves the directory actually
    /// reached, and a component that is a symlink is replaced by where it points. Names the
    /// archive does not hold are taken as directories; the kernel would stop there instead.
    fn follow(&mut self, tree: &Tree, target: &[u8]) -> Result<(), Escape> {
        if target.starts_with(b"/") {
            return Err(Escape::Outside);
        }
        for part in target.split(|b| *b == b'/') {
            self.steps += 1;
            if self.steps > MAX_RESOLVE_STEPS {
                return Err(Escape::TooDeep);
            }
            match part {
                b"" | b"." => {}
                b".." => {
                    self.at.pop().ok_or(Escape::Outside)?;
                }
                name => {
                    self.at.push(name.to_vec());
                    if let Some(Node::Symlink(next)) = tree.nodes.get(&join(&self.at)) {
                        self.hops += 1;
                        if self.hops > MAX_LINK_HOPS {
                            return Err(Escape::TooDeep);
                        }
                        self.at.pop();
                        self.follow(tree, next)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(entries: &[(&str, Node)]) -> Result<(), UploadError> {
        let mut t = Tree::default();
        for (path, node) in entries {
            let parts = normalize(path.as_bytes()).unwrap();
            t.add(parts, node.clone()).map_err(|reason| UploadError::Refused { entry: path.to_string(), reason })?;
        }
        t.check_symlinks()
    }

    fn link(t: &str) -> Node {
        Node::Symlink(t.as_bytes().to_vec())
    }

    #[test]
    fn symlinks_resolve_through_each_other() {
        let ok = [
            vec![("a/b", Node::File), ("l", link("a/b"))],
            vec![("a/up", link("..")), ("x", link("a/up/a/b"))],
            vec![("dangling", link("nowhere/at/all"))],
            vec![("node_modules/.bin/tool", link("../pkg/bin/tool")), ("node_modules/pkg/bin/tool", Node::File)],
        ];
        for entries in ok {
            assert!(tree(&entries).is_ok(), "{entries:?}");
        }
        let outside = [
            vec![("l", link("/etc/passwd"))],
            vec![("a/l", link("../../x"))],
            // `a/up` is the root, so `a/up/..` is above it, though `a/up/..` reads as `a`.
            vec![("a/up", link("..")), ("x", link("a/up/../secret"))],
            // The link it goes through comes later in the archive.
            vec![("x", link("a/up/../secret")), ("a/up", link(".."))],
        ];
        for entries in outside {
            let e = tree(&entries).unwrap_err();
            assert!(matches!(e, UploadError::Refused { reason: Refusal::SymlinkOutside { .. }, .. }), "{e}");
        }
        let e = tree(&[("a", link("b")), ("b", link("a"))]).unwrap_err();
        assert!(matches!(e, UploadError::Refused { reason: Refusal::SymlinkLoop { .. }, .. }), "{e}");
    }

    #[test]
    fn tree_clashes() {
        let cases: [(Vec<(&str, Node)>, Refusal); 4] = [
            (
                vec![("l", link("d")), ("l/f", Node::File)],
                Refusal::UnderNonDirectory { parent: "l".into(), kind: NodeKind::Symlink },
            ),
            (
                vec![("f", Node::File), ("f/g", Node::File)],
                Refusal::UnderNonDirectory { parent: "f".into(), kind: NodeKind::File },
            ),
            (vec![("f", Node::File), ("./f", Node::File)], Refusal::Duplicate),
            (vec![("d/f", Node::File), ("d", link("/"))], Refusal::Duplicate),
        ];
        for (entries, want) in cases {
            match tree(&entries) {
                Err(UploadError::Refused { reason, .. }) => assert_eq!(reason, want),
                other => panic!("{entries:?}: {other:?}"),
            }
        }
        assert!(tree(&[("d", Node::Dir), ("d/f", Node::File), ("d/", Node::Dir)]).is_ok());
    }
}
