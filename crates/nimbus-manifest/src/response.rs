//! The response keys of a function: `response_mode` and `max_stream_bytes`.

use nimbus_core::{ResponseMode, DEFAULT_MAX_STREAM_BYTES};

use crate::ctx::{Ctx, Value};

/// Largest `max_stream_bytes` nimbus takes (1 GiB).
const MAX_STREAM_BYTES_LIMIT: u32 = 1 << 30;

/// `response_mode` (default buffered) and `max_stream_bytes` (default 20 MB, streaming only).
pub(crate) fn response_keys(
    cx: &mut Ctx<'_>,
    mode: Option<&Value<'_>>,
    cap: Option<&Value<'_>>,
    field: &str,
) -> Option<(ResponseMode, u64)> {
    let mode_field = format!("{field}.response_mode");
    let parsed = match mode {
        None => Some(ResponseMode::Buffered),
        Some(v) => {
            let s = cx.string(v, &mode_field)?;
            let m = ResponseMode::parse(&s);
            if m.is_none() {
                cx.err(
                    v.span(),
                    &mode_field,
                    format!("unknown response mode \"{s}\"; use \"buffered\" (the default) or \"streaming\""),
                );
            }
            m
        }
    };
    let cap_field = format!("{field}.max_stream_bytes");
    let bytes = match cap {
        None => Some(DEFAULT_MAX_STREAM_BYTES),
        Some(v) if parsed == Some(ResponseMode::Buffered) => {
            cx.err(
                v.span(),
                &cap_field,
                "only streamed responses take a cap (buffered ones stop at 6 MB); add `response_mode = \"streaming\"` or remove the key",
            );
            None
        }
        Some(v) => cx.u32(v, &cap_field, 1, MAX_STREAM_BYTES_LIMIT).map(u64::from),
    };
    Some((parsed?, bytes?))
}
