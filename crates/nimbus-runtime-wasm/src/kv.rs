//! `wasi:keyvalue@0.2.0-draft` for wasm functions (`store`, `atomics`, `batch`: the draft
//! wasmtime and wasmCloud implement), backed by nimbus's [`KvStore`], so a component reads and
//! writes the same namespaces as process functions and `/v1/kv`.
//!
//! Grants are checked here, the store never checks them: `store.open(NAME)` succeeds only for a
//! namespace in the function's `[functions.F.grants] kv`; each call on the bucket then needs
//! [`Op::Read`] (get, exists, list-keys, get-many) or [`Op::Write`] (set, delete, increment,
//! set-many, delete-many). A refusal is `error::access-denied` for the guest and a `[nimbus]`
//! line in the invocation's log saying what to add to nimbus.toml.
//!
//! The WIT is vendored in `wit/keyvalue` (see its README). Its `list-keys` cursor is a number
//! while the store's is a key, so a store remembers the cursors it handed out (the last
//! [`MAX_CURSORS`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use nimbus_core::function::{Access, Op};
use nimbus_core::kv::{check_key, check_value, KvError, KvStore, MAX_LIST_LIMIT};
use nimbus_core::FunctionVersion;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::log::LogPipe;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/keyvalue",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: { "wasi:keyvalue/store.bucket": super::Bucket },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};
use store::{Error, KeyResponse};

/// `list-keys` cursors a store remembers; an older one is refused with a clear error.
pub(crate) const MAX_CURSORS: usize = 64;
/// Most keys one batch call takes.
pub(crate) const MAX_BATCH_KEYS: usize = 1000;
/// Most value bytes one `get-many` returns (the guest has to hold them all at once).
pub(crate) const MAX_BATCH_BYTES: usize = 16 << 20;

/// What a call gives the guest: a trap (`Err`), or the WIT's result.
type Outcome<T> = wasmtime::Result<Result<T, Error>>;

/// An open bucket: a namespace the function is granted, and what the grant allows (`pub` for
/// the generated bindings; the module is private).
pub struct Bucket {
    ns: String,
    access: Access,
}

/// The KV state of one wasm store.
pub(crate) struct KvCtx {
    store: Arc<dyn KvStore>,
    function: Arc<FunctionVersion>,
    log: LogPipe,
    cursors: Cursors,
}

/// The cursors `list-keys` handed out: number → (namespace, the store's cursor).
#[derive(Default)]
struct Cursors {
    by_number: BTreeMap<u64, (String, String)>,
    last: u64,
}

impl Cursors {
    /// A number for the store's cursor `after` in `ns`, forgetting the oldest past the bound.
    fn remember(&mut self, ns: String, after: String) -> u64 {
        self.last += 1;
        self.by_number.insert(self.last, (ns, after));
        while self.by_number.len() > MAX_CURSORS {
            self.by_number.pop_first();
        }
        self.last
    }

    /// The store's cursor behind `n`, if `list-keys` handed it out for `ns`.
    fn recall(&self, ns: &str, n: u64) -> Result<String, Error> {
        match self.by_number.get(&n) {
            Some((cns, after)) if cns == ns => Ok(after.clone()),
            _ => Err(Error::Other(format!(
                "cursor {n} is not one list-keys returned for \"{ns}\" (the last {MAX_CURSORS} are kept); \
                 start again with no cursor"
            ))),
        }
    }
}

impl KvCtx {
    pub fn new(store: Arc<dyn KvStore>, function: Arc<FunctionVersion>, log: LogPipe) -> KvCtx {
        KvCtx { store, function, log, cursors: Cursors::default() }
    }

    /// Refuse an operation the grant does not cover, and say so in the log.
    fn deny(&self, call: &str, ns: &str, op: Op) -> Error {
        let f = &self.function.spec.name;
        let (needs, suggest) = match op {
            Op::Read => ("read", "read-write"),
            Op::Write => ("write", "read-write"),
        };
        let granted = match self.function.spec.grants.kv.get(ns) {
            Some(a) => format!("is granted only \"{}\" on it", a.as_str()),
            None => "has no grant on it".to_owned(),
        };
        self.log.note(&format!(
            "wasi:keyvalue {call} on KV namespace \"{ns}\" denied: it needs {needs} access and function \"{f}\" \
             {granted}; grant it in nimbus.toml: [functions.{f}.grants] kv = {{ {ns} = \"{suggest}\" }}"
        ));
        Error::AccessDenied
    }

    /// The WIT error for a store failure; what the guest cannot see in it goes to the log.
    fn failed(&self, call: &str, e: KvError) -> Error {
        match e {
            KvError::NoSuchNamespace(_) => {
                self.log.note(&format!("wasi:keyvalue {call}: {e}"));
                Error::NoSuchStore
            }
            KvError::Backend { .. } => {
                self.log.note(&format!("wasi:keyvalue {call}: {e}"));
                Error::Other(e.to_string())
            }
            e => Error::Other(e.to_string()),
        }
    }
}

/// What the bindings work on: the store's resource table (open buckets live there) and its KV
/// state, borrowed from whatever the store holds, as `wasmtime_wasi`'s `WasiCtxView` is.
pub(crate) struct KvView<'a> {
    pub table: &'a mut ResourceTable,
    pub kv: &'a mut KvCtx,
}

/// The bindings' [`HasData`]: a store's data lends them a [`KvView`].
struct KvData;

impl HasData for KvData {
    type Data<'a> = KvView<'a>;
}

/// Link `wasi:keyvalue` (store, atomics, batch) into `linker`; `view` lends the calls their
/// [`KvView`] of the store's data.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KvView<'_>,
) -> wasmtime::Result<()> {
    bindings::Imports::add_to_linker::<T, KvData>(linker, view)
}

impl KvView<'_> {
    /// The namespace of `bucket` if its grant allows `op`; else the refusal.
    fn granted(&self, bucket: &Resource<Bucket>, op: Op, call: &str) -> Outcome<String> {
        let b = self.table.get(bucket)?;
        if b.access.allows(op) {
            Ok(Ok(b.ns.clone()))
        } else {
            Ok(Err(self.kv.deny(call, &b.ns, op)))
        }
    }
}

/// Return the refusal from the enclosing host function, or go on with the value.
macro_rules! check {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(refused) => return Ok(Err(refused)),
        }
    };
}

impl store::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> Outcome<Resource<Bucket>> {
        let Some(access) = self.kv.function.spec.grants.kv.get(&identifier).copied() else {
            // Whether or not the namespace exists: a function learns nothing about ungranted ones.
            return Ok(Err(self.kv.deny("open", &identifier, Op::Read)));
        };
        Ok(Ok(self.table.push(Bucket { ns: identifier, access })?))
    }
}

impl store::HostBucket for KvView<'_> {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<Option<Vec<u8>>> {
        let ns = check!(self.granted(&bucket, Op::Read, "get")?);
        check!(check_key(&key).map_err(|e| self.kv.failed("get", e)));
        let got = self.kv.store.get(&ns, &key).await;
        Ok(got.map(|e| e.map(|e| e.value.to_vec())).map_err(|e| self.kv.failed("get", e)))
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> Outcome<()> {
        let ns = check!(self.granted(&bucket, Op::Write, "set")?);
        check!(check_key(&key).and_then(|()| check_value(&value)).map_err(|e| self.kv.failed("set", e)));
        let put = self.kv.store.put(&ns, &key, Bytes::from(value), None).await;
        Ok(put.map(|_| ()).map_err(|e| self.kv.failed("set", e)))
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<()> {
        let ns = check!(self.granted(&bucket, Op::Write, "delete")?);
        check!(check_key(&key).map_err(|e| self.kv.failed("delete", e)));
        let deleted = self.kv.store.delete(&ns, &key).await;
        Ok(deleted.map(|_| ()).map_err(|e| self.kv.failed("delete", e)))
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<bool> {
        let ns = check!(self.granted(&bucket, Op::Read, "exists")?);
        check!(check_key(&key).map_err(|e| self.kv.failed("exists", e)));
        let got = self.kv.store.get(&ns, &key).await;
        Ok(got.map(|e| e.is_some()).map_err(|e| self.kv.failed("exists", e)))
    }

    async fn list_keys(&mut self, bucket: Resource<Bucket>, cursor: Option<u64>) -> Outcome<KeyResponse> {
        let ns = check!(self.granted(&bucket, Op::Read, "list-keys")?);
        let after = match cursor {
            Some(n) => Some(check!(self.kv.cursors.recall(&ns, n))),
            None => None,
        };
        let page = check!(self
            .kv
            .store
            .list(&ns, "", after.as_deref(), MAX_LIST_LIMIT)
            .await
            .map_err(|e| self.kv.failed("list-keys", e)));
        let cursor = page.cursor.map(|c| self.kv.cursors.remember(ns, c));
        Ok(Ok(KeyResponse { keys: page.keys.into_iter().map(|k| k.name).collect(), cursor }))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(&mut self, bucket: Resource<Bucket>, key: String, delta: u64) -> Outcome<u64> {
        let ns = check!(self.granted(&bucket, Op::Write, "increment")?);
        check!(check_key(&key).map_err(|e| self.kv.failed("increment", e)));
        let Ok(by) = i64::try_from(delta) else {
            return Ok(Err(Error::Other(format!("increment by {delta} is too large; the most is {}", i64::MAX))));
        };
        let sum =
            check!(self.kv.store.increment(&ns, &key, by, None).await.map_err(|e| self.kv.failed("increment", e)));
        // The draft's values are unsigned; a key set to a negative number by another client
        // cannot be shown as one.
        Ok(u64::try_from(sum).map_err(|_| {
            Error::Other(format!("the value of \"{key}\" is {sum}, below 0, which atomics.increment cannot return"))
        }))
    }
}

/// A batch's size, checked before any key is touched.
fn check_batch(call: &str, n: usize) -> Result<(), Error> {
    if n > MAX_BATCH_KEYS {
        return Err(Error::Other(format!("{call} takes at most {MAX_BATCH_KEYS} keys, not {n}; split the batch")));
    }
    Ok(())
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Outcome<Vec<Option<(String, Vec<u8>)>>> {
        let ns = check!(self.granted(&bucket, Op::Read, "get-many")?);
        check!(check_batch("get-many", keys.len()));
        check!(keys.iter().try_for_each(|k| check_key(k)).map_err(|e| self.kv.failed("get-many", e)));
        let mut out = Vec::with_capacity(keys.len());
        let mut bytes = 0;
        for key in keys {
            let got = check!(self.kv.store.get(&ns, &key).await.map_err(|e| self.kv.failed("get-many", e)));
            bytes += got.as_ref().map_or(0, |e| e.value.len());
            if bytes > MAX_BATCH_BYTES {
                return Ok(Err(Error::Other(format!(
                    "get-many: the values come to more than {} MiB; get fewer keys at a time",
                    MAX_BATCH_BYTES >> 20
                ))));
            }
            out.push(got.map(|e| (key, e.value.to_vec())));
        }
        Ok(Ok(out))
    }

    async fn set_many(&mut self, bucket: Resource<Bucket>, key_values: Vec<(String, Vec<u8>)>) -> Outcome<()> {
        let ns = check!(self.granted(&bucket, Op::Write, "set-many")?);
        check!(check_batch("set-many", key_values.len()));
        check!(key_values
            .iter()
            .try_for_each(|(k, v)| check_key(k).and_then(|()| check_value(v)))
            .map_err(|e| self.kv.failed("set-many", e)));
        for (key, value) in key_values {
            check!(self
                .kv
                .store
                .put(&ns, &key, Bytes::from(value), None)
                .await
                .map_err(|e| self.kv.failed("set-many", e)));
        }
        Ok(Ok(()))
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Outcome<()> {
        let ns = check!(self.granted(&bucket, Op::Write, "delete-many")?);
        check!(check_batch("delete-many", keys.len()));
        check!(keys.iter().try_for_each(|k| check_key(k)).map_err(|e| self.kv.failed("delete-many", e)));
        for key in keys {
            check!(self.kv.store.delete(&ns, &key).await.map_err(|e| self.kv.failed("delete-many", e)));
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::{Cursors, Error, MAX_CURSORS};

    #[test]
    fn a_cursor_is_known_only_for_its_namespace_and_while_it_is_recent() {
        let mut c = Cursors::default();
        let first = c.remember("a".into(), "key-1".into());
        assert!(matches!(c.recall("a", first), Ok(k) if k == "key-1"));
        let Err(Error::Other(text)) = c.recall("b", first) else { panic!("another namespace's cursor was accepted") };
        assert!(text.contains("cursor 1 is not one list-keys returned for \"b\""), "{text}");
        assert!(c.recall("a", 999).is_err(), "a number never handed out");
        for n in 0..MAX_CURSORS {
            c.remember("a".into(), format!("k{n}"));
        }
        assert!(c.recall("a", first).is_err(), "the oldest is forgotten past the bound");
        assert_eq!(c.by_number.len(), MAX_CURSORS);
        assert!(matches!(c.recall("a", c.last), Ok(k) if k == format!("k{}", MAX_CURSORS - 1)));
    }
}
