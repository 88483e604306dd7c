//! `[functions.NAME.grants]`: what a function may use of nimbus beyond its own code: the
//! functions it may invoke, the buckets and KV namespaces it may read or write, and the queues
//! it may send to or receive from.

use nimbus_core::{Access, Grants, QueueAccess};
use toml::de::DeValue;

use crate::ctx::{Ctx, Value};

pub(crate) const KEYS: &[&str] = &["functions", "buckets", "kv", "queues"];

/// A name a grant refers to, checked once every function and resource has been read:
/// (name, where it was written, its field path).
pub(crate) type NameRef = (String, std::ops::Range<usize>, String);

/// The names a grants table refers to, by kind.
#[derive(Default)]
pub(crate) struct GrantRefs {
    pub functions: Vec<NameRef>,
    pub buckets: Vec<NameRef>,
    pub kv: Vec<NameRef>,
    pub queues: Vec<NameRef>,
}

/// Read the table. The names it grants are returned (even when something else in the table
/// is wrong) for the caller to check they exist once everything is read.
pub(crate) fn check(cx: &mut Ctx<'_>, v: &Value<'_>, field: &str, refs: &mut GrantRefs) -> Option<Grants> {
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(v.span(), field, format!("expected a table (`[{field}]`), found {}", v.get_ref().type_str()));
        return None;
    };
    let before = cx.error_count();
    cx.unknown_keys(t, KEYS, field, "grants");
    let mut grants = Grants::default();
    if let Some(fv) = t.get("functions") {
        functions(cx, fv, &format!("{field}.functions"), &mut grants, &mut refs.functions);
    }
    if let Some(bv) = t.get("buckets") {
        grants.buckets = accesses(cx, bv, &format!("{field}.buckets"), STORAGE, &mut refs.buckets);
    }
    if let Some(kv) = t.get("kv") {
        grants.kv = accesses(cx, kv, &format!("{field}.kv"), KV, &mut refs.kv);
    }
    if let Some(qv) = t.get("queues") {
        grants.queues = accesses(cx, qv, &format!("{field}.queues"), QUEUES, &mut refs.queues);
    }
    (cx.error_count() == before).then_some(grants)
}

fn functions(cx: &mut Ctx<'_>, fv: &Value<'_>, ffield: &str, grants: &mut Grants, refs: &mut Vec<NameRef>) {
    let DeValue::Array(list) = fv.get_ref() else {
        cx.err(
            fv.span(),
            ffield,
            format!("expected a list of function names like [\"audit\"], found {}", fv.get_ref().type_str()),
        );
        return;
    };
    for (i, item) in list.iter().enumerate() {
        let item_field = format!("{ffield}[{i}]");
        match cx.string(item, &item_field) {
            Some(name) if grants.functions.contains(&name) => {
                cx.err(item.span(), &item_field, format!("\"{name}\" is granted twice; list it once"));
            }
            Some(name) => {
                refs.push((name.clone(), item.span(), item_field));
                grants.functions.push(name);
            }
            None => {}
        }
    }
}

/// How one kind of grant is spelled: an example entry and the words it takes, for messages,
/// and the reader of a word.
struct Words<A> {
    example: &'static str,
    words: &'static str,
    parse: fn(&str) -> Option<A>,
}

const STORAGE: Words<Access> =
    Words { example: "images = \"read-write\"", words: "\"read\", \"write\" or \"read-write\"", parse: Access::parse };
const KV: Words<Access> = Words { example: "sessions = \"read-write\"", ..STORAGE };
const QUEUES: Words<QueueAccess> = Words {
    example: "orders = \"send-receive\"",
    words: "\"send\", \"receive\" or \"send-receive\"",
    parse: QueueAccess::parse,
};

/// `{ NAME = WORD, … }`, with the words of `w` (`"read"`, `"write"`, `"read-write"` for storage).
fn accesses<A>(
    cx: &mut Ctx<'_>,
    v: &Value<'_>,
    field: &str,
    w: Words<A>,
    refs: &mut Vec<NameRef>,
) -> std::collections::BTreeMap<String, A> {
    let mut out = std::collections::BTreeMap::new();
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(v.span(), field, format!("expected a table like {{ {} }}, found {}", w.example, v.get_ref().type_str()));
        return out;
    };
    for (key, av) in t.iter() {
        let name: &str = key.get_ref().as_ref();
        let item_field = format!("{field}.{name}");
        refs.push((name.to_owned(), key.span(), item_field.clone()));
        let Some(s) = cx.string(av, &item_field) else { continue };
        match (w.parse)(&s) {
            Some(a) => {
                out.insert(name.to_owned(), a);
            }
            None => cx.err(av.span(), &item_field, format!("unknown access \"{s}\"; use {}", w.words)),
        }
    }
    out
}
