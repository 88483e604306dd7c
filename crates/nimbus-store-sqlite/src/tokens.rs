//! API tokens in the registry database: one row per token with the SHA-256 of its secret
//! (never the secret), its scope, functions, expiry and revocation time. Revoked rows are kept,
//! so an id never names two tokens and the audit log's ids keep meaning something.

use nimbus_core::{Scope, TokenDigest, TokenRecord};
use rusqlite::{params, OptionalExtension};

use crate::{Result, Store, StoreError};

const COLUMNS: &str = "id, name, scope, functions, sha256, created_ms, expires_ms, revoked_ms";

impl Store {
    /// Insert a new token; an id or digest already stored is [`StoreError::Duplicate`].
    pub fn add_token(&self, t: &TokenRecord) -> Result<()> {
        let functions = serde_json::to_string(&t.functions).map_err(|e| StoreError::Other(e.to_string()))?;
        let r = self.conn().execute(
            &format!("INSERT INTO tokens({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
            params![
                t.id,
                t.name,
                t.scope.as_str(),
                functions,
                t.digest.as_bytes().as_slice(),
                t.created_ms,
                t.expires_ms,
                t.revoked_ms
            ],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, Some(msg))) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(StoreError::Duplicate(if msg.contains("sha256") { "digest" } else { "id" }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every token, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM tokens ORDER BY created_ms, rowid"))?;
        let rows = stmt.query_map([], row_to_token)?.collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Mark an unrevoked token revoked; `None` if there is none with that id.
    pub fn revoke_token(&self, id: &str, at_ms: u64) -> Result<Option<TokenRecord>> {
        let conn = self.conn();
        let changed =
            conn.execute("UPDATE tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL", params![id, at_ms])?;
        if changed == 0 {
            return Ok(None);
        }
        Ok(conn.query_row(&format!("SELECT {COLUMNS} FROM tokens WHERE id = ?1"), [id], row_to_token).optional()?)
    }

    pub fn token_by_digest(&self, digest: &TokenDigest) -> Result<Option<TokenRecord>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM tokens WHERE sha256 = ?1"),
                [digest.as_bytes().as_slice()],
                row_to_token,
            )
            .optional()?)
    }
}

fn row_to_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let bad =
        |i: usize, what: String| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, what.into());
    let scope: String = r.get(2)?;
    let functions: String = r.get(3)?;
    let sha: Vec<u8> = r.get(4)?;
    Ok(TokenRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        scope: Scope::parse(&scope)
            .ok_or_else(|| bad(2, format!("unknown scope {scope:?} (written by a newer nimbus?)")))?,
        functions: serde_json::from_str(&functions).map_err(|e| bad(3, format!("bad function list: {e}")))?,
        digest: TokenDigest::from_bytes(sha.try_into().map_err(|_| bad(4, "a digest that is not 32 bytes".into()))?),
        created_ms: r.get(5)?,
        expires_ms: r.get(6)?,
        revoked_ms: r.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str, secret: &str, scope: Scope) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            name: Some(format!("note {id}")),
            scope,
            functions: vec!["a".into(), "b".into()],
            digest: TokenDigest::of(secret),
            created_ms: 5,
            expires_ms: Some(99),
            revoked_ms: None,
        }
    }

    #[test]
    fn tokens_are_stored_by_digest_revoked_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.add_token(&token("tok_1", "secret-one", Scope::Invoke)).unwrap();
            s.add_token(&token("tok_2", "secret-two", Scope::Read)).unwrap();
            assert!(matches!(s.add_token(&token("tok_1", "other", Scope::Read)), Err(StoreError::Duplicate("id"))));
            assert!(matches!(
                s.add_token(&token("tok_3", "secret-one", Scope::Read)),
                Err(StoreError::Duplicate("digest"))
            ));
            let revoked = s.revoke_token("tok_2", 50).unwrap().unwrap();
            assert_eq!(revoked.revoked_ms, Some(50));
            assert_eq!(s.revoke_token("tok_2", 60).unwrap(), None, "revoking twice finds nothing to revoke");
            assert_eq!(s.revoke_token("tok_9", 60).unwrap(), None);
        }
        let s = Store::open(dir.path()).unwrap();
        let all = s.tokens().unwrap();
        assert_eq!(
            all,
            vec![
                token("tok_1", "secret-one", Scope::Invoke),
                TokenRecord { revoked_ms: Some(50), ..token("tok_2", "secret-two", Scope::Read) }
            ]
        );
        let found = s.token_by_digest(&TokenDigest::of("secret-one")).unwrap().unwrap();
        assert_eq!(found.id, "tok_1");
        assert_eq!(s.token_by_digest(&TokenDigest::of("nope")).unwrap(), None);
        // The secret is nowhere in the database file.
        let bytes = std::fs::read(dir.path().join("nimbus.db")).unwrap();
        let wal = std::fs::read(dir.path().join("nimbus.db-wal")).unwrap_or_default();
        for b in [bytes, wal] {
            assert!(!b.windows(10).any(|w| w == b"secret-one"));
        }
    }
}
