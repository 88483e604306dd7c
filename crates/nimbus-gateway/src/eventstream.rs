//! AWS event-stream framing (`application/vnd.amazon.eventstream`), as
//! `InvokeWithResponseStream` answers: each message is a prelude (total length, headers
//! length, CRC-32 of the two), string headers, the payload, and a CRC-32 of all before it.
//! Only the encoder nimbus needs: `PayloadChunk` and `InvokeComplete` events.

use bytes::{BufMut, Bytes, BytesMut};

/// Header value type 7: a string.
const STRING: u8 = 7;

/// One event-stream message with string headers.
pub(crate) fn message(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let mut h = BytesMut::new();
    for (name, value) in headers {
        h.put_u8(u8::try_from(name.len()).unwrap_or(u8::MAX));
        h.put_slice(name.as_bytes().get(..usize::from(u8::MAX)).unwrap_or(name.as_bytes()));
        h.put_u8(STRING);
        h.put_u16(u16::try_from(value.len()).unwrap_or(u16::MAX));
        h.put_slice(value.as_bytes().get(..usize::from(u16::MAX)).unwrap_or(value.as_bytes()));
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut m = BytesMut::with_capacity(total);
    m.put_u32(u32::try_from(total).unwrap_or(u32::MAX));
    m.put_u32(u32::try_from(h.len()).unwrap_or(u32::MAX));
    let prelude_crc = crc32fast::hash(&m);
    m.put_u32(prelude_crc);
    m.put_slice(&h);
    m.put_slice(payload);
    let crc = crc32fast::hash(&m);
    m.put_u32(crc);
    m.freeze()
}

/// A `PayloadChunk` event: a piece of the function's response.
pub(crate) fn payload_chunk(payload: &[u8]) -> Bytes {
    message(
        &[(":event-type", "PayloadChunk"), (":content-type", "application/octet-stream"), (":message-type", "event")],
        payload,
    )
}

/// The `InvokeComplete` event that ends the stream: an error code and details when the
/// invocation failed, the base64 log tail when asked for (`LogType: Tail`).
pub(crate) fn invoke_complete(error: Option<(&str, &str)>, log_result: Option<&str>) -> Bytes {
    let mut body = serde_json::Map::new();
    if let Some((code, details)) = error {
        body.insert("ErrorCode".into(), code.into());
        body.insert("ErrorDetails".into(), details.into());
    }
    if let Some(log) = log_result {
        body.insert("LogResult".into(), log.into());
    }
    let payload = serde_json::Value::Object(body).to_string();
    message(
        &[(":event-type", "InvokeComplete"), (":content-type", "application/json"), (":message-type", "event")],
        payload.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message from the event-stream specification's test suite shape: no headers, a payload.
    #[test]
    fn prelude_and_checksums_frame_the_message() {
        let m = message(&[], b"{'foo':'bar'}");
        assert_eq!(m.len(), 12 + 13 + 4);
        assert_eq!(&m[..8], &[0, 0, 0, 29, 0, 0, 0, 0]);
        assert_eq!(u32::from_be_bytes([m[8], m[9], m[10], m[11]]), crc32fast::hash(&m[..8]));
        let n = m.len();
        assert_eq!(u32::from_be_bytes([m[n - 4], m[n - 3], m[n - 2], m[n - 1]]), crc32fast::hash(&m[..n - 4]));
        // The spec's vector for this message: prelude CRC 0xfd528c5a, message CRC 0xc3655688.
        assert_eq!(&m[8..12], &[0xfd, 0x52, 0x8c, 0x5a]);
    }

    #[test]
    fn headers_are_length_prefixed_strings() {
        let m = payload_chunk(b"hi");
        let headers_len = u32::from_be_bytes([m[4], m[5], m[6], m[7]]) as usize;
        let h = &m[12..12 + headers_len];
        assert_eq!(h[0] as usize, ":event-type".len());
        assert_eq!(&h[1..12], b":event-type");
        assert_eq!(h[12], 7);
        assert_eq!(u16::from_be_bytes([h[13], h[14]]), 12);
        assert_eq!(&h[15..27], b"PayloadChunk");
        assert_eq!(&m[12 + headers_len..m.len() - 4], b"hi");
    }
}
