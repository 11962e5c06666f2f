//! The hub's shared state on PostgreSQL, for a fleet that outgrows one machine: several
//! hubs on several hosts share one primary, where SQLite serialised them on one file.
//!
//! What is here so far: connecting (TLS by rustls unless the URL says `sslmode=disable`),
//! the durability check, the versioned schema migrated under an advisory lock, and the
//! dispatch lease decided on the database's clock. The SQLite store stays the embedded
//! default and the backend `serve` runs on; the remaining statements move here (set-based
//! on the ingest path, as `../shared/SCALE.md` lays out) before `hub.database` accepts a
//! `postgres://` URL.
//!
//! Durability: a hub acks a van's events after COMMIT returns, and the van then deletes
//! them. A server with `fsync`, `full_page_writes` or `synchronous_commit` off can lose
//! such a commit in a crash, so the hub refuses it at connect, as it refuses a SQLite
//! file that is not in WAL mode.

use std::str::FromStr as _;

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls, Statement};

use super::dispatch::{NoticeLogged, SETTLED_RESEND, SETTLED_UNKNOWN};
use super::lease::{Acquired, LeaseClaim, Settled};
use super::pg_schema::{PG_MIGRATIONS, PG_SCHEMA_VERSION};
use super::{StoreError, TableColumns};

/// The advisory lock key hubs migrate under ("doorstep" in ASCII).
const MIGRATION_LOCK: i64 = 0x646f_6f72_7374_6570;

/// The server settings a hub needs on (each one off can lose an acked commit).
const DURABILITY: [&str; 3] = ["fsync", "full_page_writes", "synchronous_commit"];

/// What [`PgStore::connect`] did to the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// The version found.
    pub from: i64,
    /// The version now (this build's).
    pub to: i64,
}

/// One connection to the shared PostgreSQL database.
#[derive(Debug)]
pub struct PgStore {
    pub(super) client: Client,
    /// Where it connects, to connect again.
    config: Config,
    /// Statements prepared on this connection, by their text: a statement sent as text
    /// costs PostgreSQL a parse and plan and the hub a round trip each time.
    statements: std::collections::HashMap<&'static str, Statement>,
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/database?sslmode=...`),
    /// checks the server keeps commits, and migrates the schema to this build's version.
    pub async fn connect(url: &str) -> Result<(Self, Migrated), StoreError> {
        let config = Config::from_str(url)
            .map_err(|e| StoreError::Postgres(format!("the database URL does not parse: {e}")))?;
        let mut client = open_client(&config).await?;
        check_durability(&client).await?;
        let migrated = migrate(&mut client).await?;
        Ok((Self { client, config, statements: std::collections::HashMap::new() }, migrated))
    }

    /// Connects again when the connection was lost (a server restart, a failover, a
    /// network cut): the statements prepared on the old one go with it. Every method
    /// calls it first; a batch that failed because the connection broke under it is
    /// retried on the new one ([`PgStore::insert_events`]), which is safe because
    /// events are keyed.
    pub(super) async fn ready(&mut self) -> Result<(), StoreError> {
        if self.client.is_closed() {
            self.reconnect().await?;
        }
        Ok(())
    }

    /// Replaces the connection.
    pub(super) async fn reconnect(&mut self) -> Result<(), StoreError> {
        tracing::warn!("the PostgreSQL connection was lost; connecting again");
        self.client = open_client(&self.config).await?;
        self.statements.clear();
        Ok(())
    }

    /// `sql` prepared on this connection, once.
    pub(super) async fn prepared(&mut self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    /// The schema version in the database.
    pub async fn schema_version(&mut self) -> Result<i64, StoreError> {
        self.ready().await?;
        Ok(self.client.query_one("SELECT version FROM doorstep_schema WHERE id = 1", &[]).await?.get(0))
    }

    /// Every table's columns: (name, type, not null), in column order. The schema parity
    /// test compares them with [`super::Store::columns`].
    pub async fn columns(&mut self) -> Result<Vec<TableColumns>, StoreError> {
        self.ready().await?;
        let rows = self
            .client
            .query(
                "SELECT table_name::text, column_name::text, data_type::text, is_nullable = 'NO'
                 FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name <> 'doorstep_schema'
                 ORDER BY table_name, ordinal_position",
                &[],
            )
            .await?;
        let mut tables: Vec<TableColumns> = Vec::new();
        for row in rows {
            let table: String = row.get(0);
            let column = (row.get(1), row.get(2), row.get(3));
            match tables.last_mut() {
                Some((name, columns)) if *name == table => columns.push(column),
                _ => tables.push((table, vec![column])),
            }
        }
        Ok(tables)
    }

    /// Takes or renews the dispatch lease, as [`super::Store::take_dispatch_lease`] does,
    /// but on the database's clock: hubs on several hosts never compare their own clocks.
    /// One conditional upsert decides; rows a previous holder left `sending` are settled
    /// in the same transaction.
    pub async fn take_dispatch_lease(
        &mut self,
        claim: &LeaseClaim<'_>,
    ) -> Result<(Acquired, Settled), StoreError> {
        self.ready().await?;
        let tx = self.client.transaction().await?;
        // The row is created once; after that, the row lock orders concurrent claims.
        tx.execute(
            "INSERT INTO dispatcher_lease (id, holder, token, expires_ms) VALUES (1, '', '', 0)
             ON CONFLICT (id) DO NOTHING",
            &[],
        )
        .await?;
        let before = tx
            .query_one(
                &format!("SELECT holder, token, expires_ms > {NOW_MS} FROM dispatcher_lease WHERE id = 1 FOR UPDATE"),
                &[],
            )
            .await?;
        let (holder, token, live): (String, String, bool) = (before.get(0), before.get(1), before.get(2));
        let acquired = if holder == claim.holder && token == claim.token {
            Acquired::Renewed
        } else if live && !(claim.first && holder == claim.holder) {
            return Ok((Acquired::HeldBy(holder), Settled::default()));
        } else {
            Acquired::TookOver((!holder.is_empty()).then_some(holder))
        };
        tx.execute(
            &format!(
                "UPDATE dispatcher_lease SET holder = $1, token = $2, expires_ms = {NOW_MS} + $3 WHERE id = 1"
            ),
            &[&claim.holder, &claim.token, &claim.ttl_ms],
        )
        .await?;
        let settled = if matches!(acquired, Acquired::TookOver(_)) {
            let safe: Vec<&str> = claim.resend_safe.to_vec();
            let rows = tx
                .query(
                    "WITH settled AS (
                         UPDATE notification_outbox
                         SET status = CASE WHEN channel = ANY($1) THEN 'queued' ELSE 'unknown' END,
                             next_attempt_ms = CASE WHEN channel = ANY($1) THEN $2 ELSE next_attempt_ms END
                         WHERE status = 'sending'
                         RETURNING id, status)
                     INSERT INTO notification_outcomes (outbox_id, at_ms, outcome, detail)
                     SELECT id, $2,
                            CASE WHEN status = 'queued' THEN 'attempt_failed' ELSE 'unknown' END,
                            CASE WHEN status = 'queued' THEN $3 ELSE $4 END
                     FROM settled
                     RETURNING outcome",
                    &[&safe, &db_now_ms(&tx).await?, &SETTLED_RESEND, &SETTLED_UNKNOWN],
                )
                .await?;
            let requeued =
                rows.iter().filter(|r| r.get::<_, &str>(0) == NoticeLogged::AttemptFailed.as_str()).count();
            Settled { requeued, unknown: rows.len() - requeued }
        } else {
            Settled::default()
        };
        tx.commit().await?;
        Ok((acquired, settled))
    }

    /// Gives the lease up (a graceful stop). Only this process's lease.
    pub async fn release_dispatch_lease(&mut self, token: &str) -> Result<(), StoreError> {
        self.ready().await?;
        self.client.execute("UPDATE dispatcher_lease SET expires_ms = 0 WHERE token = $1", &[&token]).await?;
        Ok(())
    }
}

/// Whether `e` means the connection is gone: closed under the client, or ended by the
/// server (an administrator, a shutdown, a failover) or the network.
pub(super) fn connection_lost(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.is_closed()
        || e.code().is_some_and(|code| {
            [SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN, SqlState::CANNOT_CONNECT_NOW].contains(code)
                || code.code().starts_with("08")
        })
}

/// A client for `config`: TLS by rustls with the system's roots unless the URL says
/// `sslmode=disable`; its connection runs on a task of its own.
async fn open_client(config: &Config) -> Result<Client, StoreError> {
    if config.get_ssl_mode() == SslMode::Disable {
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(drive(connection));
        return Ok(client);
    }
    // The hub's processes use ring, like its other TLS clients.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (tls, _unreadable) = tokio_postgres_rustls::MakeRustlsConnect::with_native_certs().map_err(|_| {
        StoreError::Postgres(
            "no system root certificates to check the database server's TLS certificate: install \
             ca-certificates, or add sslmode=disable to the URL on a private network"
                .to_owned(),
        )
    })?;
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(drive(connection));
    Ok(client)
}

/// The database's clock, ms since the Unix epoch (`clock_timestamp()`: the time of the
/// statement, not of the transaction's start).
pub(super) const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

async fn db_now_ms(tx: &tokio_postgres::Transaction<'_>) -> Result<i64, StoreError> {
    Ok(tx.query_one(&format!("SELECT {NOW_MS}"), &[]).await?.get(0))
}

/// Runs a connection until it closes; a broken one fails the client's next call.
async fn drive<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "the PostgreSQL connection closed");
    }
}

async fn check_durability(client: &Client) -> Result<(), StoreError> {
    for setting in DURABILITY {
        let value: String = client.query_one("SELECT current_setting($1)", &[&setting]).await?.get(0);
        if value == "off" {
            return Err(StoreError::NotDurable { setting, value });
        }
    }
    Ok(())
}

/// Brings the schema to this build's version. Hubs starting together queue on one
/// advisory lock, and each reads the version under it: the first migrates, the others
/// find it done.
async fn migrate(client: &mut Client) -> Result<Migrated, StoreError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
    let migrated = migrate_locked(client).await;
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    let migrated = migrated?;
    unlocked?;
    Ok(migrated)
}

async fn migrate_locked(client: &mut Client) -> Result<Migrated, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS doorstep_schema (
                 id       BIGINT PRIMARY KEY CHECK (id = 1),
                 version  BIGINT NOT NULL
             )",
        )
        .await?;
    let from: i64 = client
        .query_opt("SELECT version FROM doorstep_schema WHERE id = 1", &[])
        .await?
        .map_or(0, |row| row.get(0));
    if from > PG_SCHEMA_VERSION {
        return Err(StoreError::TooNew { found: from });
    }
    for version in from..PG_SCHEMA_VERSION {
        let sql = usize::try_from(version).ok().and_then(|v| PG_MIGRATIONS.get(v)).ok_or_else(|| {
            super::corrupt("schema version", format!("version {version} is not one this hub wrote"))
        })?;
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO doorstep_schema (id, version) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            &[&(version + 1)],
        )
        .await?;
        tx.commit().await?;
    }
    Ok(Migrated { from, to: PG_SCHEMA_VERSION })
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        // The server's own message says what is wrong (a missing role, a refused
        // password); the client's display alone says only "db error".
        let text = match e.as_db_error() {
            Some(db) => format!("{e}: {}", db.message()),
            None => match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            },
        };
        let passes = connection_lost(&e)
            || e.code().is_some_and(|c| {
                [SqlState::T_R_SERIALIZATION_FAILURE, SqlState::T_R_DEADLOCK_DETECTED].contains(c)
            });
        if passes { Self::Transient(text) } else { Self::Postgres(text) }
    }
}
