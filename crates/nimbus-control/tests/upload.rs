//! Property tests of the upload rules (`nimbus_control::upload`): random app trees built with
//! the `tar` crate's `Builder` in memory unpack byte for byte; the same trees with one hostile
//! entry of each kind are refused naming that entry and the rule; mutated and random archives
//! never panic; and whatever the archive, nothing outside the target directory changes (a
//! sentinel tree beside it, holding an `admin.token`, is compared before and after).
//!
//! Failures proptest finds are kept in `upload.proptest-regressions` beside this file and
//! replayed first on every run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nimbus_control::upload::{self, FileKind, NodeKind, Refusal, UploadError};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, RngSeed};
use tar::{Builder, EntryType, Header};

/// Explicit case counts and a fixed seed: the same cases on every run, in CI and locally.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        rng_seed: RngSeed::Fixed(0x6e69_6d62_7573),
        ..ProptestConfig::default()
    }
}

// ---- the model of a benign app tree ----

#[derive(Clone, Debug)]
enum Item {
    Dir(String),
    File { path: String, data: Vec<u8>, exec: bool },
    Symlink { path: String, target: String },
    HardLink { path: String, target: String },
}

/// Raw material for a tree: files (components, contents, executable), symlinks (directory
/// index, target index, name), hard links (file index, name), and whether directories are
/// listed before or after their contents (or not at all).
type Raw = (Vec<(Vec<String>, Vec<u8>, bool)>, Vec<(usize, usize, String)>, Vec<(usize, String)>, u8);

/// Names as apps have them: ASCII, dots, dashes, spaces and some non-ASCII letters (never `~`,
/// which marks the hostile entries, and never `.` or `..`).
fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            8 => prop::sample::select(('a'..='z').chain('0'..='9').chain("._- ".chars()).collect::<Vec<_>>()),
            1 => prop::sample::select(vec!['é', 'ü', 'ß', '日', '本', 'Ж', '🦀', '\u{301}']),
        ],
        1..10,
    )
    .prop_map(|c| c.into_iter().collect::<String>())
    .prop_filter("not . or ..", |n| n != "." && n != "..")
}

fn raw_tree() -> impl Strategy<Value = Raw> {
    (
        prop::collection::vec(
            (prop::collection::vec(name(), 1..4), prop::collection::vec(any::<u8>(), 0..300), any::<bool>()),
            1..12,
        ),
        prop::collection::vec((any::<usize>(), any::<usize>(), name()), 0..5),
        prop::collection::vec((any::<usize>(), name()), 0..3),
        0u8..3,
    )
}

/// A consistent tree from the raw material: paths that clash with earlier ones are dropped;
/// every symlink points at something of the tree (or at a missing name) by a relative path.
fn model(raw: &Raw) -> Vec<Item> {
    let (files, links, hard, dirs_at) = raw;
    let mut taken: BTreeMap<Vec<String>, bool> = BTreeMap::new(); // path -> is a directory
    let mut items = Vec::new();
    for (parts, data, exec) in files {
        let clash = taken.contains_key(parts) || (1..parts.len()).any(|i| taken.get(&parts[..i]) == Some(&false));
        if clash {
            continue;
        }
        for i in 1..parts.len() {
            taken.insert(parts[..i].to_vec(), true);
        }
        taken.insert(parts.clone(), false);
        items.push(Item::File { path: parts.join("/"), data: data.clone(), exec: *exec });
    }
    let dirs: Vec<Vec<String>> =
        std::iter::once(Vec::new()).chain(taken.iter().filter(|(_, d)| **d).map(|(p, _)| p.clone())).collect();
    let mut nodes: Vec<Vec<String>> = dirs.iter().chain(taken.keys()).cloned().collect();
    nodes.push(vec!["missing".to_owned()]);
    for (d, t, n) in links {
        let at = &dirs[d % dirs.len()];
        let path: Vec<String> = at.iter().cloned().chain([n.clone()]).collect();
        if taken.contains_key(&path) {
            continue;
        }
        let to = &nodes[t % nodes.len()];
        let mut target: Vec<String> = vec!["..".to_owned(); at.len()];
        target.extend(to.iter().cloned());
        let target = if target.is_empty() { ".".to_owned() } else { target.join("/") };
        taken.insert(path.clone(), false);
        nodes.push(path.clone());
        items.push(Item::Symlink { path: path.join("/"), target });
    }
    let regular: Vec<String> =
        items.iter().filter_map(|i| if let Item::File { path, .. } = i { Some(path.clone()) } else { None }).collect();
    for (f, n) in hard {
        let path = vec![format!("hard-{n}")];
        if regular.is_empty() || taken.contains_key(&path) {
            continue;
        }
        taken.insert(path.clone(), false);
        items.push(Item::HardLink { path: path.join("/"), target: regular[f % regular.len()].clone() });
    }
    let listed = dirs.iter().skip(1).map(|d| Item::Dir(d.join("/")));
    match dirs_at {
        0 => listed.chain(items).collect(),
        1 => items.into_iter().chain(listed).collect(),
        _ => items,
    }
}

fn header(kind: EntryType, size: u64, mode: u32) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    h
}

/// Append the benign items with the Builder's own API (long names become GNU long-name
/// entries), or as `tar -C APP -cf - .` writes them: every path under `./`.
fn append(b: &mut Builder<Vec<u8>>, items: &[Item], dot: bool) {
    if dot {
        return append_dotted(b, items);
    }
    for item in items {
        match item {
            Item::Dir(p) => b.append_data(&mut header(EntryType::Directory, 0, 0o755), p, std::io::empty()).unwrap(),
            Item::File { path, data, exec } => {
                let mode = if *exec { 0o755 } else { 0o644 };
                b.append_data(&mut header(EntryType::Regular, data.len() as u64, mode), path, &data[..]).unwrap()
            }
            Item::Symlink { path, target } => {
                b.append_link(&mut header(EntryType::Symlink, 0, 0o777), path, target).unwrap()
            }
            Item::HardLink { path, target } => {
                b.append_link(&mut header(EntryType::Link, 0, 0o644), path, target).unwrap()
            }
        }
    }
}

fn append_dotted(b: &mut Builder<Vec<u8>>, items: &[Item]) {
    for item in items {
        let (kind, path, link, data, mode) = match item {
            Item::Dir(p) => (EntryType::Directory, p, "", &[][..], 0o755),
            Item::File { path, data, exec } => {
                (EntryType::Regular, path, "", &data[..], if *exec { 0o755 } else { 0o644 })
            }
            Item::Symlink { path, target } => (EntryType::Symlink, path, target.as_str(), &[][..], 0o777),
            Item::HardLink { path, target } => (EntryType::Link, path, target.as_str(), &[][..], 0o644),
        };
        let link = if kind == EntryType::Link { format!("./{link}") } else { link.to_owned() };
        append_raw_mode(b, kind, format!("./{path}").as_bytes(), link.as_bytes(), data, mode);
    }
}

/// An entry written byte for byte, as a hostile client would: no checks on the path or link.
fn append_raw(b: &mut Builder<Vec<u8>>, kind: EntryType, path: &[u8], link: &[u8], data: &[u8]) {
    append_raw_mode(b, kind, path, link, data, 0o644);
}

fn append_raw_mode(b: &mut Builder<Vec<u8>>, kind: EntryType, path: &[u8], link: &[u8], data: &[u8], mode: u32) {
    for (long, bytes) in [(EntryType::GNULongName, path), (EntryType::GNULongLink, link)] {
        if bytes.len() >= 100 {
            let mut h = header(long, bytes.len() as u64 + 1, 0o644);
            h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            h.set_cksum();
            b.append(&h, &[bytes, &[0]].concat()[..]).unwrap();
        }
    }
    let mut h = header(kind, data.len() as u64, mode);
    let n = path.len().min(99);
    h.as_old_mut().name[..n].copy_from_slice(&path[..n]);
    let n = link.len().min(99);
    h.as_old_mut().linkname[..n].copy_from_slice(&link[..n]);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

// ---- the directory the upload lands in, and the sentinel beside it ----

/// `root/sentinel/…` (with `admin.token`) and the empty target `root/data/uploads/upload-1`.
struct Place {
    root: tempfile::TempDir,
    target: PathBuf,
}

impl Place {
    fn new() -> Place {
        // On a tmpfs when there is one: each case makes and removes a tree, which costs ~20 ms
        // of directory operations on this machine's disk and nothing in memory.
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
        std::fs::create_dir_all(root.path().join("sentinel/nested")).unwrap();
        std::fs::write(root.path().join("sentinel/admin.token"), "the admin token").unwrap();
        std::fs::write(root.path().join("sentinel/nested/f"), "x").unwrap();
        std::os::unix::fs::symlink("../admin.token", root.path().join("sentinel/nested/l")).unwrap();
        let target = root.path().join("data/uploads/upload-1");
        std::fs::create_dir_all(&target).unwrap();
        Place { root, target }
    }

    fn sentinel(&self) -> String {
        self.root.path().join("sentinel/admin.token").display().to_string()
    }

    /// Everything under the root except the target: path -> kind and content.
    fn outside(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let walk = walkdir::WalkDir::new(self.root.path()).into_iter().filter_entry(|e| e.path() != self.target);
        for e in walk {
            let e = e.unwrap();
            let meta = e.path().symlink_metadata().unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(e.path()).unwrap().display())
            } else if meta.is_file() {
                format!("file {:o} {:?}", meta.permissions().mode(), std::fs::read(e.path()).unwrap())
            } else {
                format!("dir {:o}", meta.permissions().mode())
            };
            out.insert(e.path().to_owned(), what);
        }
        out
    }

    /// Unpack, and check that nothing outside the target changed and that no link in the
    /// target resolves outside it.
    fn unpack(&self, archive: &[u8]) -> Result<(), UploadError> {
        let before = self.outside();
        let result = upload::unpack(archive, &self.target);
        assert_eq!(before, self.outside(), "something outside the target changed");
        let canonical = self.target.canonicalize().unwrap();
        for e in walkdir::WalkDir::new(&self.target).into_iter().map(Result::unwrap) {
            if e.path_is_symlink() {
                if let Ok(real) = e.path().canonicalize() {
                    assert!(real.starts_with(&canonical), "{} resolves to {}", e.path().display(), real.display());
                }
            }
        }
        // A malformed archive may fail half-way through unpacking; a refusal writes nothing.
        if result.as_ref().is_err_and(|e| !matches!(e, UploadError::Malformed(_))) {
            assert_eq!(std::fs::read_dir(&self.target).unwrap().count(), 0, "a refused upload wrote nothing");
        }
        result
    }
}

/// The target as the model describes it: each path and what it is.
fn on_disk(target: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(target).min_depth(1) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(target).unwrap().to_string_lossy().into_owned();
        let meta = e.path().symlink_metadata().unwrap();
        let what = if meta.file_type().is_symlink() {
            format!("link {}", std::fs::read_link(e.path()).unwrap().display())
        } else if meta.is_file() {
            format!("file {} {:?}", meta.permissions().mode() & 0o111 != 0, std::fs::read(e.path()).unwrap())
        } else {
            "dir".to_owned()
        };
        out.insert(rel, what);
    }
    out
}

fn expected(items: &[Item]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let files: BTreeMap<&str, (&Vec<u8>, bool)> = items
        .iter()
        .filter_map(
            |i| if let Item::File { path, data, exec } = i { Some((path.as_str(), (data, *exec))) } else { None },
        )
        .collect();
    for item in items {
        let (path, what) = match item {
            Item::Dir(p) => (p.clone(), "dir".to_owned()),
            Item::File { path, data, exec } => (path.clone(), format!("file {exec} {data:?}")),
            Item::Symlink { path, target } => (path.clone(), format!("link {target}")),
            Item::HardLink { path, target } => {
                let (data, exec) = files[target.as_str()];
                (path.clone(), format!("file {exec} {data:?}"))
            }
        };
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            out.insert(parts[..i].join("/"), "dir".to_owned());
        }
        out.insert(path, what);
    }
    out
}

fn archive(items: &[Item], hostile: Option<(usize, &Hostile, &Place)>, dot: bool) -> Vec<u8> {
    let mut b = Builder::new(Vec::new());
    if dot {
        append_raw_mode(&mut b, EntryType::Directory, b"./", b"", b"", 0o755);
    }
    let at = hostile.map_or(usize::MAX, |(i, _, _)| i % (items.len() + 1));
    for (i, item) in items.iter().enumerate() {
        if i == at {
            hostile.unwrap().1.append(&mut b, hostile.unwrap().2);
        }
        append(&mut b, std::slice::from_ref(item), dot);
    }
    if at == items.len() {
        hostile.unwrap().1.append(&mut b, hostile.unwrap().2);
    }
    b.into_inner().unwrap()
}

// ---- hostile entries ----

#[derive(Clone, Debug)]
enum Hostile {
    AbsolutePath,
    ParentDir(u8),
    SymlinkAbsolute,
    SymlinkUp(u8),
    /// `~d/e/f/up -> ../../..` (the root: allowed), then `~x -> ~d/e/f/up/../../../…`.
    SymlinkChain,
    HardLinkOutside,
    HardLinkMissing,
    HardLinkToDir,
    Device(u8),
    LongName,
    LongPath,
    UnderSymlink,
    Duplicate,
}

fn hostile() -> impl Strategy<Value = Hostile> {
    prop_oneof![
        Just(Hostile::AbsolutePath),
        (0u8..4).prop_map(Hostile::ParentDir),
        Just(Hostile::SymlinkAbsolute),
        (1u8..5).prop_map(Hostile::SymlinkUp),
        Just(Hostile::SymlinkChain),
        Just(Hostile::HardLinkOutside),
        Just(Hostile::HardLinkMissing),
        Just(Hostile::HardLinkToDir),
        prop::sample::select(vec![b'3', b'4', b'6', b'V', b'M', b'D', b'Z']).prop_map(Hostile::Device),
        Just(Hostile::LongName),
        Just(Hostile::LongPath),
        Just(Hostile::UnderSymlink),
        Just(Hostile::Duplicate),
    ]
}

impl Hostile {
    fn append(&self, b: &mut Builder<Vec<u8>>, place: &Place) {
        let sentinel = place.sentinel();
        let file =
            |b: &mut Builder<Vec<u8>>, path: &str| append_raw(b, EntryType::Regular, path.as_bytes(), b"", b"pwned");
        let link = |b: &mut Builder<Vec<u8>>, path: &str, to: &str| {
            append_raw(b, EntryType::Symlink, path.as_bytes(), to.as_bytes(), b"")
        };
        match self {
            Hostile::AbsolutePath => file(b, &format!("{}/~abs", place.root.path().join("sentinel").display())),
            Hostile::ParentDir(n) => {
                file(b, &format!("{}~up/../../{}sentinel/~pwned", "a/".repeat(*n as usize), "../".repeat(3)))
            }
            Hostile::SymlinkAbsolute => link(b, "~secret", &sentinel),
            Hostile::SymlinkUp(n) => {
                link(b, "~d/~secret", &format!("{}sentinel/admin.token", "../".repeat(*n as usize + 1)))
            }
            Hostile::SymlinkChain => {
                // Read as text, `~d/e/f/up/../../../sentinel` is `~d/sentinel`, inside; but
                // `~d/e/f/up` is the root, so it is really three levels above the root.
                link(b, "~d/e/f/up", "../../..");
                link(b, "~x", "~d/e/f/up/../../../sentinel/admin.token");
            }
            Hostile::HardLinkOutside => append_raw(b, EntryType::Link, b"~hard", sentinel.as_bytes(), b""),
            Hostile::HardLinkMissing => append_raw(b, EntryType::Link, b"~hard", b"~nothing", b""),
            Hostile::HardLinkToDir => {
                append_raw(b, EntryType::Directory, b"~dir", b"", b"");
                append_raw(b, EntryType::Link, b"~hard", b"~dir", b"");
            }
            Hostile::Device(kind) => append_raw(b, EntryType::new(*kind), b"~dev", b"", b""),
            Hostile::LongName => file(b, &format!("~{}", "n".repeat(300))),
            Hostile::LongPath => file(b, &format!("~{}", "p".repeat(200) + "/").repeat(25)),
            Hostile::UnderSymlink => {
                link(b, "~l", ".");
                file(b, "~l/f");
            }
            Hostile::Duplicate => {
                file(b, "~twice");
                link(b, "~twice", "~elsewhere");
            }
        }
    }

    /// The entry that must be named, and whether the refusal is the right one.
    fn refused_as(&self, entry: &str, reason: &Refusal) -> bool {
        let outside = |r: &Refusal| matches!(r, Refusal::SymlinkOutside { .. });
        let hard = |r: &Refusal| matches!(r, Refusal::HardLinkTarget { .. });
        match self {
            Hostile::AbsolutePath => entry.ends_with("/~abs") && *reason == Refusal::AbsolutePath,
            Hostile::ParentDir(_) => entry.ends_with("~pwned") && *reason == Refusal::ParentDir,
            Hostile::SymlinkAbsolute => entry == "~secret" && outside(reason),
            Hostile::SymlinkUp(_) => entry == "~d/~secret" && outside(reason),
            Hostile::SymlinkChain => entry == "~x" && outside(reason),
            Hostile::HardLinkOutside | Hostile::HardLinkMissing | Hostile::HardLinkToDir => {
                entry == "~hard" && hard(reason)
            }
            Hostile::Device(k) => {
                let kind = match k {
                    b'3' => FileKind::CharDevice,
                    b'4' => FileKind::BlockDevice,
                    b'6' => FileKind::Fifo,
                    other => FileKind::Unknown(*other),
                };
                entry == "~dev" && *reason == Refusal::SpecialFile(kind)
            }
            Hostile::LongName => entry.starts_with("~nnn") && *reason == Refusal::NameTooLong,
            Hostile::LongPath => entry.starts_with("~ppp") && *reason == Refusal::PathTooLong,
            Hostile::UnderSymlink => {
                entry == "~l/f"
                    && *reason == Refusal::UnderNonDirectory { parent: "~l".into(), kind: NodeKind::Symlink }
            }
            Hostile::Duplicate => entry == "~twice" && *reason == Refusal::Duplicate,
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// A benign tree unpacks exactly: every file byte for byte with its executable bit, every
    /// symlink with its target, hard links as their file, and nothing else.
    #[test]
    fn benign_trees_unpack_byte_for_byte(raw in raw_tree(), dot in any::<bool>()) {
        let items = model(&raw);
        let place = Place::new();
        let result = place.unpack(&archive(&items, None, dot));
        prop_assert!(result.is_ok(), "{:?}", result);
        prop_assert_eq!(on_disk(&place.target), expected(&items));
    }

    /// One hostile entry anywhere in a benign tree: refused, naming that entry and the rule;
    /// nothing is written and nothing outside changes.
    #[test]
    fn hostile_entries_are_refused_by_name(raw in raw_tree(), bad in hostile(), at in any::<usize>()) {
        let items = model(&raw);
        let place = Place::new();
        match place.unpack(&archive(&items, Some((at, &bad, &place)), false)) {
            Err(UploadError::Refused { entry, reason }) => {
                prop_assert!(bad.refused_as(&entry, &reason), "{:?}: refused {:?} for {:?}", bad, entry, reason);
                let message = UploadError::Refused { entry: entry.clone(), reason }.to_string();
                prop_assert!(message.contains(&format!("{entry:?}")), "the message names the entry: {}", message);
            }
            other => prop_assert!(false, "{:?} was not refused: {:?}", bad, other),
        }
    }

    /// A benign archive with bytes overwritten: unpacked or refused, never a panic, never a
    /// write or a link outside the target.
    #[test]
    fn mutated_archives_stay_inside(
        raw in raw_tree(),
        bad in prop::option::of(hostile()),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let items = model(&raw);
        let place = Place::new();
        let mut bytes = archive(&items, bad.as_ref().map(|b| (0, b, &place)), false);
        for (at, byte) in edits {
            let i = at % bytes.len();
            bytes[i] = byte;
        }
        let _ = place.unpack(&bytes);
    }

    /// Arbitrary bytes (often with a valid first header): never a panic, nothing outside.
    #[test]
    fn random_bytes_stay_inside(tail in prop::collection::vec(any::<u8>(), 0..3000), headed in any::<bool>()) {
        let place = Place::new();
        let mut bytes = Vec::new();
        if headed {
            let mut h = header(EntryType::Symlink, 0, 0o777);
            h.set_path("x").unwrap();
            h.set_link_name("../../../sentinel/admin.token").unwrap();
            h.set_cksum();
            bytes.extend_from_slice(h.as_bytes());
        }
        bytes.extend_from_slice(&tail);
        let _ = place.unpack(&bytes);
    }
}

/// A sparse file counts at its apparent size: 2 GiB described by 512 bytes is refused, 1 MiB
/// unpacks to a 1 MiB file.
#[test]
fn sparse_files_count_at_their_apparent_size() {
    fn sparse(real: u64) -> Vec<u8> {
        let mut h = header(EntryType::GNUSparse, 512, 0o644);
        h.set_path("big").unwrap();
        let gnu = h.as_gnu_mut().unwrap();
        let offset = real - 512;
        gnu.sparse[0].offset = *b"00000000000\0";
        gnu.sparse[0].offset[..11].copy_from_slice(format!("{offset:011o}").as_bytes());
        gnu.sparse[0].numbytes[..11].copy_from_slice(format!("{:011o}", 512).as_bytes());
        gnu.realsize[..11].copy_from_slice(format!("{real:011o}").as_bytes());
        h.set_cksum();
        let mut b = Builder::new(Vec::new());
        b.append(&h, &[7u8; 512][..]).unwrap();
        b.into_inner().unwrap()
    }
    let place = Place::new();
    match place.unpack(&sparse(2 << 30)) {
        Err(UploadError::TooLarge { entry }) => assert_eq!(entry, "big"),
        other => panic!("{other:?}"),
    }
    place.unpack(&sparse(1 << 20)).unwrap();
    assert_eq!(std::fs::metadata(place.target.join("big")).unwrap().len(), 1 << 20);
}

/// More than 100,000 entries are refused (checked without unpacking).
#[test]
fn too_many_entries_are_refused() {
    let mut b = Builder::new(Vec::new());
    for i in 0..=upload::MAX_ENTRIES {
        let mut h = header(EntryType::Regular, 0, 0o644);
        h.set_path(format!("f{i}")).unwrap();
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }
    let e = upload::check(&b.into_inner().unwrap()).unwrap_err();
    assert!(matches!(e, UploadError::TooManyEntries), "{e}");
    assert_eq!(e.to_string(), "the upload was refused: it has more than 100000 entries");
}

/// The entries that leaked before the rules, as plain tests: each named in the message.
#[test]
fn the_admin_token_cannot_be_linked_in() {
    let place = Place::new();
    for (path, target) in [
        ("app/functions/f/secret", place.sentinel()),
        ("app/functions/f/secret", "../../../../../sentinel/admin.token".to_owned()),
    ] {
        let mut b = Builder::new(Vec::new());
        append_raw(&mut b, EntryType::Symlink, path.as_bytes(), target.as_bytes(), b"");
        let e = place.unpack(&b.into_inner().unwrap()).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("the upload was refused: entry \"{path}\" is a symlink to {target:?}, which is outside the app directory")
        );
    }
}

/// Setuid, setgid and sticky bits are dropped; the rest of the mode is kept.
#[test]
fn privilege_bits_are_dropped() {
    let mut b = Builder::new(Vec::new());
    let mut h = header(EntryType::Regular, 2, 0o6755);
    b.append_data(&mut h, "bootstrap", &b"#!"[..]).unwrap();
    let place = Place::new();
    place.unpack(&b.into_inner().unwrap()).unwrap();
    let mode = std::fs::metadata(place.target.join("bootstrap")).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o755);
}
