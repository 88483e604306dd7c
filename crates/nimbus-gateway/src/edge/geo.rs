//! Where a request comes from: the client address looked up in a MaxMind DB (GeoLite2 or
//! GeoIP2, City or Country; `nimbus up --geoip PATH`).
//!
//! Each request to a route carries the answer as headers (a Country DB fills only the
//! country); headers of these names that arrive with the request are removed first, with or
//! without a DB, so a client can never claim a place. The event's `requestContext.geo` is
//! built from the same headers (see `event.rs`).
//!
//! | header | value |
//! |---|---|
//! | `x-nimbus-country` | ISO 3166-1 alpha-2 (`DE`) |
//! | `x-nimbus-region` | ISO 3166-2 subdivision code, without the country (`BE`) |
//! | `x-nimbus-city` | English name, percent-encoded UTF-8 (`S%C3%A3o%20Paulo`) |
//! | `x-nimbus-latitude`, `x-nimbus-longitude` | decimal degrees |
//!
//! The DB is read into memory once at start; a lookup walks its tree (no I/O, no allocation
//! but the header values).

use std::net::IpAddr;
use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue};
use maxminddb::geoip2;

pub(crate) const COUNTRY: &str = "x-nimbus-country";
pub(crate) const REGION: &str = "x-nimbus-region";
pub(crate) const CITY: &str = "x-nimbus-city";
pub(crate) const LATITUDE: &str = "x-nimbus-latitude";
pub(crate) const LONGITUDE: &str = "x-nimbus-longitude";
/// Every geo header, as names (a `&str` would be parsed on every use).
const NAMES: [HeaderName; 5] = [
    HeaderName::from_static(COUNTRY),
    HeaderName::from_static(REGION),
    HeaderName::from_static(CITY),
    HeaderName::from_static(LATITUDE),
    HeaderName::from_static(LONGITUDE),
];

/// A MaxMind DB, loaded.
pub struct GeoIp {
    reader: maxminddb::Reader<Vec<u8>>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp").field("database_type", &self.reader.metadata().database_type).finish()
    }
}

impl GeoIp {
    /// Load the DB at `path`; an error is a sentence naming the file and what to do.
    pub fn open(path: &Path) -> Result<GeoIp, String> {
        let shown = path.display();
        let reader = maxminddb::Reader::open_readfile(path).map_err(|e| {
            format!(
                "cannot load the geo database {shown}: {e}; pass --geoip a GeoLite2/GeoIP2 City or Country .mmdb file"
            )
        })?;
        let kind = reader.metadata().database_type.clone();
        if !(kind.contains("City") || kind.contains("Country")) {
            return Err(format!(
                "the geo database {shown} is a \"{kind}\" database; pass --geoip a GeoLite2/GeoIP2 City or Country .mmdb file"
            ));
        }
        Ok(GeoIp { reader })
    }

    /// What the DB knows about `ip`, as header values (none when it knows nothing).
    pub(crate) fn lookup(&self, ip: IpAddr) -> Vec<(&'static str, HeaderValue)> {
        let record = self.reader.lookup(ip).ok().and_then(|r| r.decode::<geoip2::City<'_>>().ok().flatten());
        let Some(city) = record else { return Vec::new() };
        let mut out = Vec::new();
        let mut put = |name, value: Option<String>| {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                out.push((name, v));
            }
        };
        put(COUNTRY, city.country.iso_code.map(str::to_owned));
        put(REGION, city.subdivisions.first().and_then(|s| s.iso_code).map(str::to_owned));
        let name = city.city.names.english;
        put(
            CITY,
            name.map(|n| percent_encoding::utf8_percent_encode(n, percent_encoding::NON_ALPHANUMERIC).to_string()),
        );
        put(LATITUDE, city.location.latitude.map(|l| l.to_string()));
        put(LONGITUDE, city.location.longitude.map(|l| l.to_string()));
        out
    }
}

/// Remove the geo headers a request arrived with, then add what the DB says about `client`.
pub(crate) fn annotate(geoip: Option<&GeoIp>, headers: &mut HeaderMap, client: IpAddr) {
    // A scan of the names is cheaper than five removals (each a hash) when, as almost always,
    // the client sent none of them.
    if headers.keys().any(|k| k.as_str().starts_with("x-nimbus-")) {
        for name in NAMES {
            headers.remove(name);
        }
    }
    if let Some(db) = geoip {
        for (name, value) in db.lookup(client) {
            headers.insert(name, value);
        }
    }
}
