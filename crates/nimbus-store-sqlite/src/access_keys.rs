//! Managed AWS access keys in the registry database: one row per key with its secret (SigV4
//! needs it in clear to verify a signature; the database file is mode 0600, see
//! [`crate::Store::open`]), name, grants (JSON), expiry and revocation time. Revoked rows are
//! kept, so an id never names two keys and the audit log's ids keep meaning something.

use std::collections::BTreeMap;

use nimbus_core::{AccessKeyRecord, Grants};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::{Result, Store, StoreError};

const COLUMNS: &str = "id, secret, name, grants, created_ms, expires_ms, revoked_ms";

/// The stored form of a key's grants: `{"buckets": {"b": "read"}, "kv": {…}, "functions": […]}`.
#[derive(Serialize, Deserialize, Default)]
struct StoredGrants {
    #[serde(default)]
    buckets: BTreeMap<String, String>,
    #[serde(default)]
    kv: BTreeMap<String, String>,
    #[serde(default)]
    functions: Vec<String>,
}

fn grants_json(g: &Grants) -> Result<String> {
    let words = |m: &BTreeMap<String, nimbus_core::Access>| {
        m.iter().map(|(k, a)| (k.clone(), a.as_str().to_owned())).collect::<BTreeMap<_, _>>()
    };
    let stored = StoredGrants { buckets: words(&g.buckets), kv: words(&g.kv), functions: g.functions.clone() };
    serde_json::to_string(&stored).map_err(|e| StoreError::Other(e.to_string()))
}

fn grants_of(json: &str) -> std::result::Result<Grants, String> {
    let stored: StoredGrants = serde_json::from_str(json).map_err(|e| format!("bad grants: {e}"))?;
    let access = |m: BTreeMap<String, String>| {
        m.into_iter()
            .map(|(k, w)| {
                let a = nimbus_core::Access::parse(&w)
                    .ok_or_else(|| format!("unknown access {w:?} (written by a newer nimbus?)"))?;
                Ok((k, a))
            })
            .collect::<std::result::Result<BTreeMap<_, _>, String>>()
    };
    Ok(Grants {
        functions: stored.functions,
        buckets: access(stored.buckets)?,
        kv: access(stored.kv)?,
        ..Grants::default()
    })
}

impl Store {
    /// Insert a new key; an id already stored is [`StoreError::Duplicate`].
    pub fn add_access_key(&self, k: &AccessKeyRecord) -> Result<()> {
        let grants = grants_json(&k.grants)?;
        let r = self.conn().execute(
            &format!("INSERT INTO access_keys({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![k.id, k.secret, k.name, grants, k.created_ms, k.expires_ms, k.revoked_ms],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(StoreError::Duplicate("id"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every key, oldest first.
    pub fn access_keys(&self) -> Result<Vec<AccessKeyRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM access_keys ORDER BY created_ms, rowid"))?;
        let rows = stmt.query_map([], row_to_key)?.collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Mark an unrevoked key revoked; `None` if there is none with that id.
    pub fn revoke_access_key(&self, id: &str, at_ms: u64) -> Result<Option<AccessKeyRecord>> {
        let conn = self.conn();
        let changed = conn.execute(
            "UPDATE access_keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
            params![id, at_ms],
        )?;
        if changed == 0 {
            return Ok(None);
        }
        Ok(conn.query_row(&format!("SELECT {COLUMNS} FROM access_keys WHERE id = ?1"), [id], row_to_key).optional()?)
    }
}

fn row_to_key(r: &rusqlite::Row<'_>) -> rusqlite::Result<AccessKeyRecord> {
    let grants: String = r.get(3)?;
    Ok(AccessKeyRecord {
        id: r.get(0)?,
        secret: r.get(1)?,
        name: r.get(2)?,
        grants: grants_of(&grants)
            .map_err(|m| rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, m.into()))?,
        created_ms: r.get(4)?,
        expires_ms: r.get(5)?,
        revoked_ms: r.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_core::Access;

    fn key(id: &str) -> AccessKeyRecord {
        AccessKeyRecord {
            id: id.into(),
            secret: format!("secret-of-{id}"),
            name: format!("note {id}"),
            grants: Grants {
                functions: vec!["f".into()],
                buckets: BTreeMap::from([("photos".into(), Access::Read), ("logs".into(), Access::ReadWrite)]),
                kv: BTreeMap::from([("cache".into(), Access::Write)]),
                ..Grants::default()
            },
            created_ms: 5,
            expires_ms: Some(99),
            revoked_ms: None,
        }
    }

    #[test]
    fn keys_keep_their_grants_are_revoked_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.add_access_key(&key("NIMK1")).unwrap();
            s.add_access_key(&AccessKeyRecord { expires_ms: None, grants: Grants::default(), ..key("NIMK2") }).unwrap();
            assert!(matches!(s.add_access_key(&key("NIMK1")), Err(StoreError::Duplicate("id"))));
            let revoked = s.revoke_access_key("NIMK2", 50).unwrap().unwrap();
            assert_eq!(revoked.revoked_ms, Some(50));
            assert_eq!(s.revoke_access_key("NIMK2", 60).unwrap(), None, "revoking twice finds nothing to revoke");
            assert_eq!(s.revoke_access_key("NIMK9", 60).unwrap(), None);
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.access_keys().unwrap(),
            vec![
                key("NIMK1"),
                AccessKeyRecord { expires_ms: None, grants: Grants::default(), revoked_ms: Some(50), ..key("NIMK2") }
            ]
        );
    }

    #[cfg(unix)]
    #[test]
    fn every_database_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.add_access_key(&key("NIMK1")).unwrap();
        let (_kv, _messages, _queue) = (s.kv().unwrap(), s.messages().unwrap(), s.queue(false).unwrap());
        let _objects = crate::ObjectDb::open(dir.path()).unwrap();
        for name in ["nimbus.db", "nimbus.db-wal", "kv.db", "messages.db", "queue.db", "objects.db"] {
            let mode = std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
    }

    #[test]
    fn unknown_access_words_are_an_error_not_a_grant() {
        assert!(grants_of(r#"{"buckets":{"b":"admin"}}"#).unwrap_err().contains("\"admin\""));
        assert_eq!(grants_of("{}").unwrap(), Grants::default());
    }
}
