//! The keys only `runtime = "wasm"` functions take, and the outbound allow-list (which wasm
//! introduced and process runtimes now share).

use nimbus_core::outbound::OutboundPattern;
use nimbus_core::WasmOptions;
use toml::de::{DeTable, DeValue};

use crate::ctx::{Ctx, FunctionLocations, Value};

pub(crate) fn options(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    field: &str,
    loc: &mut FunctionLocations,
) -> Option<WasmOptions> {
    let f = |k: &str| format!("{field}.{k}");
    // Every key is read even after a problem, so that all problems are reported at once.
    let mut ok = true;
    let mut opts = WasmOptions::default();
    if let Some(cv) = t.get("component") {
        loc.component = Some(cv.span().start);
        match component(cx, cv, &f("component")) {
            Some(c) => opts.component = c,
            None => ok = false,
        }
    }
    if let Some(rv) = t.get("instance_reuse") {
        match rv.get_ref() {
            DeValue::Boolean(b) => opts.instance_reuse = *b,
            other => {
                cx.err(rv.span(), &f("instance_reuse"), format!("expected true or false, found {}", other.type_str()));
                ok = false;
            }
        }
    }
    ok.then_some(opts)
}

/// The component file, relative to the code directory and inside it.
fn component(cx: &mut Ctx<'_>, cv: &Value<'_>, field: &str) -> Option<String> {
    let c = cx.string(cv, field)?;
    if !c.is_empty() && !std::path::Path::new(&c).is_absolute() && !c.split(['/', '\\']).any(|p| p == "..") {
        return Some(c);
    }
    cx.err(
        cv.span(),
        field,
        format!("\"{c}\" must be a file inside the code directory, relative to it, without \"..\""),
    );
    None
}

/// Every pattern is checked, so that all bad ones are reported at once; `None` if any is bad.
/// `allowed_outbound_hosts` (any runtime): `scheme://host[:port]` patterns.
pub(crate) fn allowed_outbound_hosts(cx: &mut Ctx<'_>, hv: &Value<'_>, field: &str) -> Option<Vec<String>> {
    let DeValue::Array(list) = hv.get_ref() else {
        cx.err(
            hv.span(),
            field,
            format!("expected a list like [\"https://api.example.com\"], found {}", hv.get_ref().type_str()),
        );
        return None;
    };
    let mut ok = true;
    let mut hosts = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let Some(s) = cx.string(item, &field) else {
            ok = false;
            continue;
        };
        match OutboundPattern::parse(&s) {
            Ok(_) => hosts.push(s),
            Err(e) => {
                cx.err(item.span(), &field, e);
                ok = false;
            }
        }
    }
    ok.then_some(hosts)
}
