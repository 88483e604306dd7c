//! Managed AWS access keys as the AWS port sees them: an in-memory map by key id, loaded from
//! the registry at start and replaced (one pointer swap) after every create and revoke, so a
//! new key works from the next request, a revoked one fails from the next request, and the
//! port never reads the store. Expired keys stay in the map (listed as expired); the port
//! compares the expiry with its clock per request.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use nimbus_core::access_keys::mint_access_key;
use nimbus_core::{Access, AccessKeyRecord, Grants, RegistryError};

/// Longest key name accepted.
pub const MAX_NAME: usize = 200;
/// Most buckets, namespaces or functions one key may name (each).
pub const MAX_GRANTS: usize = 100;

/// Every stored key by id (revoked ones too, so listings show them).
#[derive(Default)]
pub struct KeySet {
    by_id: HashMap<String, Arc<AccessKeyRecord>>,
}

impl KeySet {
    pub fn from_records(records: Vec<AccessKeyRecord>) -> KeySet {
        KeySet { by_id: records.into_iter().map(|r| (r.id.clone(), Arc::new(r))).collect() }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<AccessKeyRecord>> {
        self.by_id.get(id)
    }

    /// Every key, oldest first.
    pub fn list(&self) -> Vec<Arc<AccessKeyRecord>> {
        let mut all: Vec<Arc<AccessKeyRecord>> = self.by_id.values().cloned().collect();
        all.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        all
    }

    /// This set with `key` added or replaced (a revoked key replaces its active self).
    pub fn with(&self, key: Arc<AccessKeyRecord>) -> KeySet {
        let mut by_id = self.by_id.clone();
        by_id.insert(key.id.clone(), key);
        KeySet { by_id }
    }
}

/// What a new key is for (already parsed from the wire).
#[derive(Clone, Debug, Default)]
pub struct AccessKeySpec {
    pub name: String,
    pub grants: Grants,
    pub expires_ms: Option<u64>,
}

/// A key just created: the only time its secret is handed out.
pub struct CreatedAccessKey {
    pub key: Arc<AccessKeyRecord>,
    /// Things worth saying that did not stop the creation (a bucket no deployment declares).
    pub warnings: Vec<String>,
}

/// Why a key was not created or revoked.
#[derive(Debug, thiserror::Error)]
pub enum AccessKeyError {
    /// The request is wrong; the message says how.
    #[error("{0}")]
    Invalid(String),
    #[error("there is no active access key {0}; `nimbus keys ls` lists them")]
    NoSuchKey(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// What the deployments declare, for warnings about names nothing declares (yet).
pub struct Known<'a> {
    pub function: &'a dyn Fn(&str) -> bool,
    pub bucket: &'a dyn Fn(&str) -> bool,
    pub namespace: &'a dyn Fn(&str) -> bool,
}

/// Check a spec's names and make the key for it at `now_ms`.
pub fn mint(
    spec: AccessKeySpec,
    now_ms: u64,
    known: &Known<'_>,
) -> Result<(AccessKeyRecord, Vec<String>), AccessKeyError> {
    let invalid = |m: String| Err(AccessKeyError::Invalid(m));
    let name = spec.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return invalid(format!(
            "give the key a name (one line of at most {MAX_NAME} characters) saying whose it is or what for"
        ));
    }
    let g = &spec.grants;
    if g.buckets.is_empty() && g.kv.is_empty() && g.functions.is_empty() {
        return invalid(
            "a key without grants could do nothing: give it buckets (\"photos\": \"read\"), kv namespaces or \
             functions"
                .to_owned(),
        );
    }
    if [g.buckets.len(), g.kv.len(), g.functions.len()].iter().any(|n| *n > MAX_GRANTS) {
        return invalid(format!(
            "a key names at most {MAX_GRANTS} buckets, {MAX_GRANTS} namespaces and {MAX_GRANTS} functions"
        ));
    }
    check_names(g)?;
    if spec.expires_ms.is_some_and(|e| e <= now_ms) {
        return invalid("the expiry is in the past; give a duration like \"30d\" or a later time".to_owned());
    }
    let mut grants = spec.grants;
    grants.functions.sort();
    grants.functions.dedup();
    let warnings = warnings(&grants, known);
    let (id, secret) = mint_access_key();
    let record =
        AccessKeyRecord { id, secret, name, grants, created_ms: now_ms, expires_ms: spec.expires_ms, revoked_ms: None };
    Ok((record, warnings))
}

/// Every bucket name an S3 bucket can have, every namespace and function name the manifest accepts.
fn check_names(g: &Grants) -> Result<(), AccessKeyError> {
    for b in g.buckets.keys() {
        if let Some(problem) = nimbus_manifest::resources::bucket_name_problem(b) {
            return Err(AccessKeyError::Invalid(format!("{b:?} is not a valid bucket name: {problem}")));
        }
    }
    for ns in g.kv.keys() {
        if !nimbus_manifest::resources::valid_namespace(ns) {
            return Err(AccessKeyError::Invalid(format!(
                "{ns:?} is not a KV namespace name (1-64 letters, digits, '-' and '_')"
            )));
        }
    }
    if let Some(bad) = g.functions.iter().find(|f| f.trim().is_empty() || f.trim() != f.as_str()) {
        return Err(AccessKeyError::Invalid(format!("{bad:?} is not a function name")));
    }
    Ok(())
}

fn warnings(g: &Grants, known: &Known<'_>) -> Vec<String> {
    let says =
        |what: &str, n: &str| format!("no deployment declares {what} {n:?} (yet); the key works on it once it exists");
    let mut out = Vec::new();
    out.extend(g.buckets.keys().filter(|b| !(known.bucket)(b)).map(|b| says("bucket", b)));
    out.extend(g.kv.keys().filter(|n| !(known.namespace)(n)).map(|n| says("KV namespace", n)));
    out.extend(g.functions.iter().filter(|f| !(known.function)(f)).map(|f| says("function", f)));
    out
}

/// A grant map as the wire and the CLI write it (`{"photos": "read"}`), with unknown access
/// words named. `what` is "bucket" or "KV namespace".
pub fn parse_access(what: &str, map: BTreeMap<String, String>) -> Result<BTreeMap<String, Access>, String> {
    map.into_iter()
        .map(|(name, word)| match Access::parse(word.trim()) {
            Some(a) => Ok((name, a)),
            None => {
                Err(format!("the access for {what} {name:?} is {word:?}; write \"read\", \"write\" or \"read-write\""))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(buckets: &[(&str, Access)]) -> AccessKeySpec {
        let buckets = buckets.iter().map(|(b, a)| ((*b).to_owned(), *a)).collect();
        AccessKeySpec { name: "ci".into(), grants: Grants { buckets, ..Grants::default() }, expires_ms: None }
    }

    fn known() -> Known<'static> {
        Known { function: &|f| f == "a", bucket: &|b| b == "photos", namespace: &|_| true }
    }

    #[test]
    fn specs_are_checked_with_reasons() {
        let err = |s: AccessKeySpec| match mint(s, 100, &known()) {
            Err(AccessKeyError::Invalid(m)) => m,
            other => panic!("expected a refusal, got {:?}", other.map(|(r, _)| r)),
        };
        assert!(err(spec(&[])).contains("without grants"));
        assert!(err(AccessKeySpec { name: " ".into(), ..spec(&[("photos", Access::Read)]) }).contains("name"));
        assert!(err(spec(&[("Bad_Name", Access::Read)])).contains("not a valid bucket name"));
        let mut bad_ns = spec(&[]);
        bad_ns.grants.kv.insert("a b".into(), Access::Read);
        assert!(err(bad_ns).contains("not a KV namespace name"));
        let mut bad_fn = spec(&[]);
        bad_fn.grants.functions.push(" f".into());
        assert!(err(bad_fn).contains("not a function name"));
        assert!(err(AccessKeySpec { expires_ms: Some(100), ..spec(&[("photos", Access::Read)]) }).contains("past"));

        let mut ok = spec(&[("photos", Access::Read), ("other", Access::Write)]);
        ok.grants.functions = vec!["b".into(), "a".into(), "b".into()];
        ok.expires_ms = Some(200);
        let (r, warnings) = mint(ok, 100, &known()).unwrap();
        assert!(r.id.starts_with("NIMK") && r.secret.len() == 40, "{r:?}");
        assert_eq!(r.grants.functions, ["a", "b"]);
        assert_eq!((r.created_ms, r.expires_ms, r.revoked_ms), (100, Some(200), None));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("bucket \"other\"") && warnings[1].contains("function \"b\""), "{warnings:?}");
    }

    #[test]
    fn access_words_are_the_manifests() {
        let parsed = parse_access("bucket", BTreeMap::from([("b".into(), "read-write".into())])).unwrap();
        assert_eq!(parsed.get("b"), Some(&Access::ReadWrite));
        let e = parse_access("bucket", BTreeMap::from([("b".into(), "rw".into())])).unwrap_err();
        assert!(e.contains("bucket \"b\" is \"rw\"") && e.contains("\"read-write\""), "{e}");
    }

    #[test]
    fn the_set_replaces_a_key_with_its_revoked_self() {
        let (r, _) = mint(spec(&[("photos", Access::Read)]), 1, &known()).unwrap();
        let set = KeySet::from_records(vec![r.clone()]);
        let revoked = Arc::new(AccessKeyRecord { revoked_ms: Some(2), ..r.clone() });
        let after = set.with(revoked);
        assert_eq!(after.get(&r.id).unwrap().revoked_ms, Some(2));
        assert_eq!(set.get(&r.id).unwrap().revoked_ms, None, "the old set is unchanged");
        assert_eq!(after.list().len(), 1);
    }
}
