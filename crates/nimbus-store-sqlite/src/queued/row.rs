//! A row of records in format 2: what the record writer stores of a window's records, in under
//! half the bytes of format 1 (postcard), every field read back exactly as it was recorded.
//!
//! SQLite's share of the writer's CPU follows the pages a row fills: each is written to the WAL,
//! copied into the database at the checkpoint and synced there. A warm record took ~100 bytes
//! in format 1, most of them on the request id as 36 characters of text, the instance id as
//! 16, the durations as 8-byte floats and the function's name in every record; it takes ~39
//! here. Format 2 keeps each of these in a compact form when that form converts back to
//! exactly the same value, and as it was otherwise.
//!
//! A row: its format byte ([`FORMAT`]), the number of records (varint), the function's name,
//! the first record's start (varint), then each record:
//!
//! | field | encoding |
//! |---|---|
//! | flags | one byte: [`COLD`], [`UUID`], [`INSTANCE`], [`HEX_INSTANCE`], [`RESPONSE`], [`LOG`], [`FRAME`], [`RARE`] |
//! | request id | 16 bytes with [`UUID`] (a lowercase hyphenated UUID), else a string |
//! | version | string |
//! | trigger, status | varint: the variant's position (postcard's, pinned by a test) |
//! | start | zigzag varint: ms after the row's first start (wrapping) |
//! | duration, queue | [`Writer::ms`] |
//! | billed ms, memory, max memory | varint |
//! | instance id (with [`INSTANCE`]) | 8 bytes with [`HEX_INSTANCE`] (16 lowercase hex digits), else a string |
//! | response (with [`RESPONSE`]) | [`Writer::ms`] |
//! | log (with [`LOG`]) | string |
//! | log frame (with [`FRAME`]) | varint |
//! | with [`RARE`]: init, instance start, runtime init; error type, message | each an option byte, then [`Writer::ms`] or a string |
//!
//! A string is its length (varint) and its UTF-8 bytes; a varint is LEB128, as postcard's.

use nimbus_core::{InvocationRecord, InvocationStatus, Trigger};
use serde::de::DeserializeOwned;

use super::View;

/// The first byte of a row in this format.
pub(crate) const FORMAT: u8 = 2;

const COLD: u8 = 1;
const UUID: u8 = 1 << 1;
const INSTANCE: u8 = 1 << 2;
const HEX_INSTANCE: u8 = 1 << 3;
const RESPONSE: u8 = 1 << 4;
const LOG: u8 = 1 << 5;
const FRAME: u8 = 1 << 6;
const RARE: u8 = 1 << 7;

/// A record as a row stores it: the record, its log and its log's frame.
pub(crate) type Stored = (InvocationRecord, String, Option<usize>);

/// Where a UUID's text has hyphens.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

/// Where its 32 hex digits are.
#[allow(clippy::indexing_slicing)] // evaluated while compiling: an index out of range fails the build
const UUID_DIGITS: [usize; 32] = {
    let (mut out, mut i, mut at) = ([0; 32], 0, 0);
    while i < 32 {
        if at == 8 || at == 13 || at == 18 || at == 23 {
            at += 1;
        }
        out[i] = at;
        (i, at) = (i + 1, at + 1);
    }
    out
};

/// Each byte's value as a lowercase hex digit, or 0xFF. Uppercase is not a digit here, so a
/// compact id converts back to exactly its text.
#[allow(clippy::indexing_slicing)] // evaluated while compiling: an index out of range fails the build
const HEX: [u8; 256] = {
    let mut t = [0xFF; 256];
    let mut i = 0;
    while i < 16 {
        t[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    t
};

fn hex(b: u8) -> u8 {
    HEX.get(usize::from(b)).copied().unwrap_or(0xFF)
}

/// The 16 bytes of `s` if it is a UUID in lowercase hyphenated form (which [`uuid_text`] gives
/// back byte for byte). A table, not `uuid`'s parser: that one takes uppercase and other forms
/// too, and this runs for every record the writer stores.
fn uuid_bytes(s: &[u8]) -> Option<[u8; 16]> {
    let s: &[u8; 36] = s.try_into().ok()?;
    if HYPHENS.iter().any(|&i| s.get(i) != Some(&b'-')) {
        return None;
    }
    let (mut out, mut bad) = ([0u8; 16], 0u8);
    for (byte, at) in out.iter_mut().zip(UUID_DIGITS.chunks_exact(2)) {
        let digit = |i: usize| at.get(i).and_then(|&at| s.get(at)).map_or(0xFF, |&b| hex(b));
        let (hi, lo) = (digit(0), digit(1));
        bad |= hi | lo;
        *byte = hi << 4 | (lo & 0xF);
    }
    (bad < 16).then_some(out)
}

fn uuid_text(bytes: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*bytes).hyphenated().to_string()
}

/// An instance id of 16 lowercase hex digits (how the pool names instances) as its number.
fn hex_u64(s: &[u8]) -> Option<u64> {
    let s: &[u8; 16] = s.try_into().ok()?;
    let (n, bad) = s.iter().fold((0u64, 0u8), |(n, bad), &b| {
        let d = hex(b);
        (n << 4 | u64::from(d & 0xF), bad | d)
    });
    (bad < 16).then_some(n)
}

/// Bytes appended to a row.
pub(super) struct Writer<'b>(pub(super) &'b mut Vec<u8>);

impl Writer<'_> {
    pub(super) fn varint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.0.push((n & 0x7F) as u8 | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
    }

    fn str(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    /// A duration in ms. Measured durations are whole nanoseconds (`ns / 1e6`, which the
    /// scheduler computes so): those are `ns << 1` as a varint, 3 to 5 bytes. Any other value
    /// (a fraction of a nanosecond, negative, not finite) is a 1 and its 8 bytes.
    fn ms(&mut self, x: f64) {
        // Any rounding will do: the check below decides. (`round` is a call into libm.)
        let ns = (x * 1e6 + 0.5) as u64;
        if x.is_sign_positive() && ns < 1 << 53 && ns as f64 / 1e6 == x {
            self.varint(ns << 1);
        } else {
            self.varint(1);
            self.0.extend_from_slice(&x.to_le_bytes());
        }
    }

    fn option<T>(&mut self, v: Option<T>, some: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.0.push(0),
            Some(x) => {
                self.0.push(1);
                some(self, x);
            }
        }
    }
}

/// A row's head: how many records follow, their function, the first one's start.
pub(super) fn encode_head(count: usize, function: &str, first_start: u64, out: &mut Vec<u8>) {
    out.push(FORMAT);
    let mut w = Writer(out);
    w.varint(count as u64);
    w.str(function);
    w.varint(first_start);
}

/// Append `v` to a row whose first record started at `first_start`.
pub(super) fn encode(v: &View<'_>, first_start: u64, out: &mut Vec<u8>) {
    let (q, rare) = (v.q, v.q.rare.as_deref());
    let uuid = uuid_bytes(q.request_id.as_bytes());
    let instance = q.instance_id.as_ref();
    let hex_instance = instance.and_then(|i| hex_u64(i.as_bytes()));
    let flag = |on: bool, bit: u8| if on { bit } else { 0 };
    let flags = flag(q.cold, COLD)
        | flag(uuid.is_some(), UUID)
        | flag(instance.is_some(), INSTANCE)
        | flag(hex_instance.is_some(), HEX_INSTANCE)
        | flag(q.response_ms.is_some(), RESPONSE)
        | flag(!q.log.is_empty(), LOG)
        | flag(q.log_frame.is_some(), FRAME)
        | flag(rare.is_some(), RARE);
    out.push(flags);
    let mut w = Writer(out);
    match uuid {
        Some(bytes) => w.0.extend_from_slice(&bytes),
        None => w.str(q.request_id.as_str()),
    }
    w.str(&v.names.version);
    w.varint(q.trigger as u64);
    w.varint(q.status as u64);
    let delta = q.start_ms.wrapping_sub(first_start) as i64;
    w.varint(((delta << 1) ^ (delta >> 63)) as u64);
    w.ms(q.duration_ms);
    w.ms(q.queue_ms);
    w.varint(q.billed_ms);
    w.varint(q.memory_mb.into());
    w.varint(q.max_memory_mb.into());
    match (hex_instance, instance) {
        (Some(n), _) => w.0.extend_from_slice(&n.to_be_bytes()),
        (None, Some(s)) => w.str(s.as_str()),
        (None, None) => {}
    }
    if let Some(r) = q.response_ms {
        w.ms(r);
    }
    if !q.log.is_empty() {
        w.str(&q.log);
    }
    if let Some(n) = q.log_frame {
        w.varint(n as u64);
    }
    if let Some(r) = rare {
        for x in [r.init_ms, r.instance_start_ms, r.runtime_init_ms] {
            w.option(x, Writer::ms);
        }
        for s in [&r.error_type, &r.error_message] {
            w.option(s.as_deref(), Writer::str);
        }
    }
}

/// Bytes read from a row; every read fails with what it found short or wrong.
struct Reader<'b>(&'b [u8]);

impl<'b> Reader<'b> {
    fn bytes(&mut self, n: usize) -> Result<&'b [u8], String> {
        let (head, rest) = self.0.split_at_checked(n).ok_or("the row ends inside a record")?;
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.bytes(1)?.first().copied().unwrap_or_default())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        self.bytes(N)?.try_into().map_err(|_| "the row ends inside a record".to_string())
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7F) << shift;
            if b < 0x80 {
                return Ok(n);
            }
        }
        Err("a number in the row is longer than 64 bits".into())
    }

    fn usize(&mut self) -> Result<usize, String> {
        usize::try_from(self.varint()?).map_err(|e| e.to_string())
    }

    fn str(&mut self) -> Result<String, String> {
        let n = self.usize()?;
        String::from_utf8(self.bytes(n)?.to_vec()).map_err(|e| e.to_string())
    }

    fn ms(&mut self) -> Result<f64, String> {
        match self.varint()? {
            1 => Ok(f64::from_le_bytes(self.array()?)),
            n if n & 1 == 0 => Ok((n >> 1) as f64 / 1e6),
            n => Err(format!("a duration in the row has the unknown tag {n}")),
        }
    }

    fn option<T>(&mut self, some: impl FnOnce(&mut Self) -> Result<T, String>) -> Result<Option<T>, String> {
        match self.byte()? {
            0 => Ok(None),
            1 => some(self).map(Some),
            b => Err(format!("an option in the row has the unknown tag {b}")),
        }
    }

    /// An enum's variant from its position, as postcard numbers them.
    fn variant<T: DeserializeOwned>(&mut self) -> Result<T, String> {
        let unknown = |e: &dyn std::fmt::Display| format!("an unknown trigger or status in the row ({e})");
        // Positions below 128 are their own one-byte varint; the enums have a handful.
        let position = u8::try_from(self.varint()?).ok().filter(|n| *n < 0x80);
        let position = position.ok_or_else(|| unknown(&"position out of range"))?;
        postcard::from_bytes(&[position]).map_err(|e| unknown(&e))
    }
}

/// The records of a row in this format (without its format byte).
pub(crate) fn decode(data: &[u8]) -> Result<Vec<Stored>, String> {
    let mut r = Reader(data);
    let count = r.usize()?;
    let function = r.str()?;
    let first_start = r.varint()?;
    // Every record takes at least a dozen bytes, so a corrupt count cannot reserve much.
    let mut out = Vec::with_capacity(count.min(data.len() / 12 + 1));
    for _ in 0..count {
        out.push(decode_record(&mut r, &function, first_start)?);
    }
    Ok(out)
}

fn decode_record(r: &mut Reader<'_>, function: &str, first_start: u64) -> Result<Stored, String> {
    let flags = r.byte()?;
    let request_id = if flags & UUID != 0 { uuid_text(&r.array()?) } else { r.str()? };
    let version = r.str()?;
    let (trigger, status): (Trigger, InvocationStatus) = (r.variant()?, r.variant()?);
    let zigzag = r.varint()?;
    let start_ms = first_start.wrapping_add(((zigzag >> 1) as i64 ^ -((zigzag & 1) as i64)) as u64);
    let (duration_ms, queue_ms) = (r.ms()?, r.ms()?);
    let billed_ms = r.varint()?;
    let number = |n: u64| u32::try_from(n).map_err(|e| e.to_string());
    let (memory_mb, max_memory_mb) = (number(r.varint()?)?, number(r.varint()?)?);
    let instance_id = match (flags & INSTANCE != 0, flags & HEX_INSTANCE != 0) {
        (false, _) => None,
        (true, true) => Some(format!("{:016x}", u64::from_be_bytes(r.array()?))),
        (true, false) => Some(r.str()?),
    };
    let response_ms = if flags & RESPONSE != 0 { Some(r.ms()?) } else { None };
    let log = if flags & LOG != 0 { r.str()? } else { String::new() };
    let log_frame = if flags & FRAME != 0 { Some(r.usize()?) } else { None };
    let mut rec = InvocationRecord {
        request_id,
        function: function.to_string(),
        version,
        trigger,
        start_ms,
        duration_ms,
        billed_ms,
        memory_mb,
        max_memory_mb,
        cold: flags & COLD != 0,
        init_ms: None,
        instance_start_ms: None,
        runtime_init_ms: None,
        queue_ms,
        status,
        error_type: None,
        error_message: None,
        instance_id,
        log: String::new(),
        response_ms,
        log_frame: None,
    };
    if flags & RARE != 0 {
        (rec.init_ms, rec.instance_start_ms, rec.runtime_init_ms) =
            (r.option(Reader::ms)?, r.option(Reader::ms)?, r.option(Reader::ms)?);
        (rec.error_type, rec.error_message) = (r.option(Reader::str)?, r.option(Reader::str)?);
    }
    Ok((rec, log, log_frame))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn compact_forms_are_taken_only_when_they_convert_back_exactly() {
        let id = "0190a5b2-7c3d-7e8f-9a0b-1c2d3e4f5a6b";
        assert_eq!(uuid_text(&uuid_bytes(id.as_bytes()).unwrap()), id);
        for other in [
            "0190A5B2-7C3D-7E8F-9A0B-1C2D3E4F5A6B",
            "0190a5b27c3d7e8f9a0b1c2d3e4f5a6b",
            "0190a5b2-7c3d-7e8f-9a0b-1c2d3e4f5a6",
            "0190a5b2-7c3d-7e8f-9a0b-1c2d3e4f5a6bc",
            "0190a5b2_7c3d-7e8f-9a0b-1c2d3e4f5a6b",
            "0190a5b2-7c3d-7e8f-9a0b-1c2d3e4f5a6g",
        ] {
            assert_eq!(uuid_bytes(other.as_bytes()), None, "{other}");
        }
        assert_eq!(hex_u64(b"00ff0123456789ab"), Some(0x00ff_0123_4567_89ab));
        for other in ["00FF0123456789AB", "ff0123456789ab", "i", "00ff0123456789abc"] {
            assert_eq!(hex_u64(other.as_bytes()), None, "{other}");
        }
    }

    /// Durations come back bit for bit: measured ones (whole nanoseconds) in a few bytes,
    /// anything else as its 8 bytes.
    #[test]
    fn durations_read_back_exactly_and_measured_ones_are_short() {
        let measured = std::time::Duration::from_nanos(12_345).as_nanos() as f64 / 1e6;
        let short = [0.0, 2.0, 0.25, 12.345, measured, 86_400_000.0];
        let raw = [0.1 + 0.2, 1.0 / 3.0, -0.0, -1.5, f64::INFINITY, f64::MAX, 1e-12, 9.007_199_254_740_993e9];
        for (x, is_short) in short.iter().map(|x| (x, true)).chain(raw.iter().map(|x| (x, false))) {
            let mut out = Vec::new();
            Writer(&mut out).ms(*x);
            let back = Reader(&out).ms().unwrap();
            assert_eq!(back.to_bits(), x.to_bits(), "{x} came back as {back}");
            assert_eq!(out.len() < 9, is_short, "{x} took {} bytes", out.len());
        }
        let mut out = Vec::new();
        Writer(&mut out).ms(measured);
        assert_eq!(out.len(), 3, "a measured 12 µs takes three bytes");
        let mut nan = Vec::new();
        Writer(&mut nan).ms(f64::NAN);
        assert!(Reader(&nan).ms().unwrap().is_nan());
    }

    #[test]
    fn a_cut_or_corrupt_row_is_an_error_not_a_panic() {
        let mut row = Vec::new();
        encode_head(3, "f", 10, &mut row);
        assert!(decode(&row[1..]).unwrap_err().contains("ends inside a record"));
        assert!(decode(&[0xFF; 12]).is_err());
        let mut bad_tag = Vec::new();
        Writer(&mut bad_tag).varint(3);
        assert!(Reader(&bad_tag).ms().unwrap_err().contains("unknown tag 3"));
    }
}
