//! No code: this package holds `tests/tidy.rs`, which checks the repository's own rules (the
//! crate dependency edges ARCHITECTURE.md allows, file headers, citations, function length) so
//! they cannot silently go false. Run it with `cargo test -p nimbus-tidy`.
