//! Who may use the private API and what they did with it: API keys, the audit log, and
//! tracking links withdrawn per shipment. Plain autocommit statements: each is one row,
//! written outside any ingest transaction.

use super::db::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, StoreError};

/// How often a key's `last_used_ms` is written at most, so a busy order system does not
/// turn every request into a write.
const TOUCH_EVERY_MS: i64 = 60_000;

/// One API key as stored: never the token, only its public id and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// The operator's name for it (`shopify-orders`).
    pub name: String,
    /// The token's public id (the part after `dsk_`, before the secret).
    pub key_id: String,
    /// SHA-256 of the whole token.
    pub digest: Vec<u8>,
    /// Granted scopes, space separated as written by `access::Scope`.
    pub scopes: String,
    /// Created, ms since the Unix epoch.
    pub created_ms: i64,
    /// Last used (to a minute), if ever.
    pub last_used_ms: Option<i64>,
    /// Revoked, if it was.
    pub revoked_ms: Option<i64>,
}

/// One audit log line: a write through the private API, or a refused attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// The key's name; `None` when no valid key was shown.
    pub key_name: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// What it was about: `shipment <tracking>` or `route <fleet>/<device>/<route id>`.
    pub subject: Option<String>,
    /// HTTP status answered.
    pub status: u16,
    /// `ok`, or why not (`forbidden`, `unprocessable`, ...).
    pub outcome: String,
}

impl Store {
    /// Stores a new key. A name in use, even by a revoked key, is refused: the audit log
    /// names keys, so a name must mean one key forever.
    pub fn create_api_key(
        &mut self,
        name: &str,
        key_id: &str,
        digest: &[u8],
        scopes: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let inserted = self.conn.execute(
            "INSERT INTO api_keys (name, key_id, digest, scopes, created_ms) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            params![name, key_id, digest, scopes, now_ms],
        )?;
        if inserted == 0 {
            return Err(StoreError::Exists(format!("API key named {name:?}")));
        }
        Ok(())
    }

    /// Every key, newest first.
    pub fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, key_id, digest, scopes, created_ms, last_used_ms, revoked_ms
             FROM api_keys ORDER BY created_ms DESC, name",
        )?;
        let rows = stmt.query_map(super::db::params![], api_key_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The key with this public id.
    pub fn api_key_by_id(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT name, key_id, digest, scopes, created_ms, last_used_ms, revoked_ms
                 FROM api_keys WHERE key_id = ?1",
            )?
            .query_row([key_id], api_key_row)
            .optional()
    }

    /// Revokes a key by name; false when there is no such key. Revoking twice keeps the
    /// first time.
    pub fn revoke_api_key(&mut self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        let found: Option<Option<i64>> = self
            .conn
            .query_row("SELECT revoked_ms FROM api_keys WHERE name = ?1", [name], |r| r.get(0))
            .optional()?;
        if found.is_none() {
            return Ok(false);
        }
        self.conn.execute(
            "UPDATE api_keys SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms IS NULL",
            params![name, now_ms],
        )?;
        Ok(true)
    }

    /// Notes that a key was used, at most once a minute per key.
    pub fn touch_api_key(&self, name: &str, now_ms: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE api_keys SET last_used_ms = ?2
                 WHERE name = ?1 AND (last_used_ms IS NULL OR last_used_ms < CAST(?2 AS BIGINT) - ?3)",
            )?
            .execute(params![name, now_ms, TOUCH_EVERY_MS])?;
        Ok(())
    }

    /// Appends an audit log line.
    pub fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO audit_log (at_ms, key_name, method, path, subject, status, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                entry.at_ms,
                entry.key_name,
                entry.method,
                entry.path,
                entry.subject,
                entry.status,
                entry.outcome
            ])?;
        Ok(())
    }

    /// The newest `limit` audit lines, newest first; only those of `key_name` if given.
    pub fn audit_entries(&self, limit: usize, key_name: Option<&str>) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare_cached(
            "SELECT at_ms, key_name, method, path, subject, status, outcome FROM audit_log
             WHERE CAST(?2 AS TEXT) IS NULL OR key_name = ?2 ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt
            .query_map(params![limit, key_name], |r| {
                Ok(AuditEntry {
                    at_ms: r.get(0)?,
                    key_name: r.get(1)?,
                    method: r.get(2)?,
                    path: r.get(3)?,
                    subject: r.get(4)?,
                    status: r.get(5)?,
                    outcome: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Withdraws every tracking link of a shipment issued until now; false when there is
    /// no such shipment. Links issued later (new messages) work again.
    pub fn revoke_links(&mut self, shipment_id: i64, now_ms: i64) -> Result<bool, StoreError> {
        let exists: Option<i64> = self
            .conn
            .query_row("SELECT id FROM shipments WHERE id = ?1", [shipment_id], |r| r.get(0))
            .optional()?;
        if exists.is_none() {
            return Ok(false);
        }
        self.conn.execute(
            "INSERT INTO link_revocations (shipment_id, revoked_ms) VALUES (?1, ?2)
             ON CONFLICT (shipment_id) DO UPDATE SET revoked_ms = CASE WHEN excluded.revoked_ms > link_revocations.revoked_ms
                 THEN excluded.revoked_ms ELSE link_revocations.revoked_ms END",
            params![shipment_id, now_ms],
        )?;
        Ok(true)
    }

    /// When a shipment's links were last withdrawn, if ever.
    pub fn links_revoked_ms(&self, shipment_id: i64) -> Result<Option<i64>, StoreError> {
        self.conn
            .prepare_cached("SELECT revoked_ms FROM link_revocations WHERE shipment_id = ?1")?
            .query_row([shipment_id], |r| r.get(0))
            .optional()
    }
}

fn api_key_row(r: &super::db::Row<'_>) -> Result<ApiKeyRecord, StoreError> {
    Ok(ApiKeyRecord {
        name: r.get(0)?,
        key_id: r.get(1)?,
        digest: r.get(2)?,
        scopes: r.get(3)?,
        created_ms: r.get(4)?,
        last_used_ms: r.get(5)?,
        revoked_ms: r.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_name_means_one_key_forever_and_revoking_keeps_the_first_time() {
        let mut store = Store::open_in_memory().expect("store");
        store.create_api_key("orders", "abc", &[1; 32], "orders:write", 10).expect("store");
        assert!(matches!(
            store.create_api_key("orders", "def", &[2; 32], "admin", 11),
            Err(StoreError::Exists(_))
        ));
        assert!(store.revoke_api_key("orders", 20).expect("store"));
        assert!(store.revoke_api_key("orders", 30).expect("store"));
        assert!(!store.revoke_api_key("nobody", 30).expect("store"));
        let key = store.api_key_by_id("abc").expect("store").expect("store");
        assert_eq!((key.name.as_str(), key.revoked_ms), ("orders", Some(20)));
        assert!(matches!(
            store.create_api_key("orders", "ghi", &[3; 32], "admin", 40),
            Err(StoreError::Exists(_))
        ));
        assert_eq!(store.api_keys().expect("store").len(), 1);
    }

    #[test]
    fn last_used_is_written_at_most_once_a_minute() {
        let mut store = Store::open_in_memory().expect("store");
        store.create_api_key("orders", "abc", &[1; 32], "orders:write", 0).expect("store");
        store.touch_api_key("orders", 1_000).expect("store");
        store.touch_api_key("orders", 30_000).expect("store");
        assert_eq!(store.api_key_by_id("abc").expect("store").expect("store").last_used_ms, Some(1_000));
        store.touch_api_key("orders", 62_000).expect("store");
        assert_eq!(store.api_key_by_id("abc").expect("store").expect("store").last_used_ms, Some(62_000));
    }

    #[test]
    fn audit_lines_come_back_newest_first_and_by_key() {
        let store = Store::open_in_memory().expect("store");
        for (i, key) in [Some("a"), None, Some("b"), Some("a")].into_iter().enumerate() {
            let entry = AuditEntry {
                at_ms: i64::try_from(i).expect("store"),
                key_name: key.map(str::to_owned),
                method: "POST".into(),
                path: "/v1/shipments".into(),
                subject: Some(format!("shipment T{i}")),
                status: 201,
                outcome: "ok".into(),
            };
            store.audit(&entry).expect("store");
        }
        let all = store.audit_entries(10, None).expect("store");
        assert_eq!(all.iter().map(|e| e.at_ms).collect::<Vec<_>>(), [3, 2, 1, 0]);
        let a = store.audit_entries(10, Some("a")).expect("store");
        assert_eq!(a.iter().map(|e| e.at_ms).collect::<Vec<_>>(), [3, 0]);
        assert_eq!(store.audit_entries(1, None).expect("store").len(), 1);
    }
}
