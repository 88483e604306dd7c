//! Clocks and ids, defined once: wall-clock milliseconds, request ids and trace ids.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A time-ordered (v7) UUID, the id of a request or an async event. Time order keeps the
/// records' request-id index appending to one page instead of touching a random page per
/// invocation (v4 ids cost ~5 page writes and ~2.6 page reads per record). The random part
/// comes from the thread-local userspace RNG: `Uuid::new_v4` asks the kernel (`getrandom`) on
/// every call.
pub fn new_request_id() -> String {
    uuid::Builder::from_unix_timestamp_millis(now_ms(), &rand::random()).into_uuid().to_string()
}

/// An X-Ray style trace id (`Root=1-<epoch seconds, hex>-<96 random bits>;Sampled=0`), which
/// the Lambda runtime clients copy into `_X_AMZN_TRACE_ID`.
pub fn new_trace_id() -> String {
    let secs = now_ms() / 1000;
    let [a, b]: [u64; 2] = rand::random();
    format!("Root=1-{secs:08x}-{:08x}{:016x};Sampled=0", a as u32, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_time_ordered_uuids() {
        let a = new_request_id();
        let b = new_request_id();
        let (ua, ub) = (uuid::Uuid::parse_str(&a).unwrap(), uuid::Uuid::parse_str(&b).unwrap());
        assert_eq!(ua.get_version_num(), 7);
        assert_ne!(a, b);
        // The timestamp prefix never goes backwards.
        assert!(ua.get_timestamp().unwrap().to_unix() <= ub.get_timestamp().unwrap().to_unix());
    }

    #[test]
    fn trace_ids_have_the_x_ray_shape() {
        let t = new_trace_id();
        let root = t.strip_prefix("Root=1-").and_then(|r| r.strip_suffix(";Sampled=0")).unwrap();
        let (secs, random) = root.split_once('-').unwrap();
        assert_eq!((secs.len(), random.len()), (8, 24), "{t}");
        assert!(root.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{t}");
    }
}
