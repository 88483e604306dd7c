//! `[functions.NAME.grants]`: what a function may use of nimbus beyond its own code. Today the
//! functions it may invoke; storage and queues add their own keys to the same table.

use nimbus_core::Grants;
use toml::de::DeValue;

use crate::ctx::{Ctx, Value};

pub(crate) const KEYS: &[&str] = &["functions"];

/// A function named in a grant, checked once every function has been read:
/// (name, where it was written, its field path).
pub(crate) type NameRef = (String, std::ops::Range<usize>, String);

/// Read the table. The names it grants are returned (even when something else in the table
/// is wrong) for the caller to check they exist once every function is read.
pub(crate) fn check(cx: &mut Ctx<'_>, v: &Value<'_>, field: &str) -> (Option<Grants>, Vec<NameRef>) {
    let mut refs = Vec::new();
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(v.span(), field, format!("expected a table (`[{field}]`), found {}", v.get_ref().type_str()));
        return (None, refs);
    };
    let before = cx.error_count();
    cx.unknown_keys(t, KEYS, field, "grants");
    let mut grants = Grants::default();
    let Some(fv) = t.get("functions") else { return ((cx.error_count() == before).then_some(grants), refs) };
    let ffield = format!("{field}.functions");
    let DeValue::Array(list) = fv.get_ref() else {
        cx.err(
            fv.span(),
            &ffield,
            format!("expected a list of function names like [\"audit\"], found {}", fv.get_ref().type_str()),
        );
        return (None, refs);
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
    ((cx.error_count() == before).then_some(grants), refs)
}
