//! The keys only `runtime = "wasm"` functions take.

use nimbus_core::outbound::OutboundPattern;
use nimbus_core::WasmOptions;
use toml::de::{DeTable, DeValue};

use crate::ctx::{Ctx, FunctionLocations};

pub(crate) fn options(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    field: &str,
    loc: &mut FunctionLocations,
) -> Option<WasmOptions> {
    let f = |k: &str| format!("{field}.{k}");
    let mut ok = true;
    let mut opts = WasmOptions::default();
    if let Some(cv) = t.get("component") {
        loc.component = Some(cv.span().start);
        match cx.string(cv, &f("component")) {
            Some(c)
                if !c.is_empty()
                    && !std::path::Path::new(&c).is_absolute()
                    && !c.split(['/', '\\']).any(|p| p == "..") =>
            {
                opts.component = c
            }
            Some(c) => {
                cx.err(
                    cv.span(),
                    &f("component"),
                    format!("\"{c}\" must be a file inside the code directory, relative to it, without \"..\""),
                );
                ok = false;
            }
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
    if let Some(cv) = t.get("cpu_ms") {
        match cx.u32(cv, &f("cpu_ms"), 1, 15 * 60 * 1000) {
            Some(n) => opts.cpu_ms = Some(n),
            None => ok = false,
        }
    }
    if let Some(hv) = t.get("allowed_outbound_hosts") {
        match hv.get_ref() {
            DeValue::Array(list) => {
                for (i, item) in list.iter().enumerate() {
                    let field = format!("{}[{i}]", f("allowed_outbound_hosts"));
                    let Some(s) = cx.string(item, &field) else {
                        ok = false;
                        continue;
                    };
                    match OutboundPattern::parse(&s) {
                        Ok(_) => opts.allowed_outbound_hosts.push(s),
                        Err(e) => {
                            cx.err(item.span(), &field, e);
                            ok = false;
                        }
                    }
                }
            }
            other => {
                cx.err(
                    hv.span(),
                    &f("allowed_outbound_hosts"),
                    format!("expected a list like [\"https://api.example.com\"], found {}", other.type_str()),
                );
                ok = false;
            }
        }
    }
    ok.then_some(opts)
}
