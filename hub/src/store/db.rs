//! One way to run the store's statements on either backend: SQLite (the embedded
//! default, one file) or PostgreSQL (hubs on several hosts sharing one primary).
//!
//! The store's methods are written once against [`Db`]: a statement is SQL with SQLite's
//! numbered placeholders (`?1`), bound from [`Value`]s, read through [`Row`]. On SQLite it
//! runs as it always did (rusqlite's statement cache, no extra copy); on PostgreSQL the
//! placeholders become `$1`, the statement is prepared once per connection, and it runs
//! on the connection's own single-threaded runtime (the store is synchronous: ingest's
//! writer thread and the dispatcher's blocking threads call it; see [`PgConn`]). Where the dialects
//! differ (a new row's id, JSON reads, a UTC day, row locks, the database's clock) a
//! method asks [`Db::dialect`] and says both.
//!
//! Values are SQLite's five kinds. Both schemas keep integers as 64 bits and flags as 0
//! and 1, so one statement text serves both; PostgreSQL's reads are lenient about the
//! width of an integer column, as SQLite's are.

use std::borrow::Cow;
use std::collections::HashMap;

use rusqlite::types::{ToSqlOutput, ValueRef};
use tokio_postgres::types::{IsNull, ToSql, Type};

use super::StoreError;
use super::postgres::PgStore;

/// Which SQL a statement is written in, where the two differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite: one file, every hub's writes serialised by its lock.
    Sqlite,
    /// PostgreSQL: concurrent hubs under READ COMMITTED.
    Postgres,
}

impl Dialect {
    /// `SELECT` of the texts in a JSON array bound at `?n`, for `x IN (...)`.
    pub fn json_texts(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("SELECT value FROM json_each(?{n})"),
            Dialect::Postgres => format!("SELECT json_array_elements_text(CAST(?{n} AS json))"),
        }
    }

    /// The integer at `key` of the JSON object in `column`; NULL where the column is not
    /// JSON or has no such key.
    pub fn json_int(self, column: &str, key: &str) -> String {
        match self {
            Dialect::Sqlite => {
                format!("(CASE WHEN json_valid({column}) THEN json_extract({column}, '$.{key}') END)")
            }
            Dialect::Postgres => format!("doorstep_json_int({column}, '{key}')"),
        }
    }

    /// The text at `key` of the JSON object in `column`, as [`Dialect::json_int`].
    pub fn json_text(self, column: &str, key: &str) -> String {
        match self {
            Dialect::Sqlite => {
                format!("(CASE WHEN json_valid({column}) THEN json_extract({column}, '$.{key}') END)")
            }
            Dialect::Postgres => format!("doorstep_json_text({column}, '{key}')"),
        }
    }

    /// After a subquery that picks rows to claim: on PostgreSQL, lock them and skip those
    /// another hub is claiming; SQLite's one writer needs nothing.
    pub fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// The database's clock, ms since the Unix epoch: what hubs on several hosts compare
    /// instead of their own clocks.
    pub fn now_ms(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
            Dialect::Postgres => super::postgres::NOW_MS,
        }
    }

    /// The UTC day (`YYYY-MM-DD`) of `ms`, milliseconds since the Unix epoch.
    pub fn utc_day(self, ms: &str) -> String {
        match self {
            Dialect::Sqlite => format!("date({ms} / 1000, 'unixepoch')"),
            Dialect::Postgres => {
                format!("to_char(to_timestamp({ms} / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')")
            }
        }
    }
}

/// A connection to the hub database.
#[derive(Debug)]
pub enum Db {
    /// A SQLite file (or an in-memory database in unit tests).
    Sqlite(rusqlite::Connection),
    /// A PostgreSQL server.
    Postgres(PgConn),
}

/// One PostgreSQL connection driven synchronously: the store's callers are threads (the
/// ingest writer, the dispatcher's blocking tasks), so the connection has a
/// single-threaded runtime of its own, turned only while a statement is in flight. A
/// plain thread turns it itself; a caller inside an async runtime (where blocking on
/// another runtime is refused) hands the statement to the connection's helper thread and
/// waits.
#[derive(Debug)]
pub struct PgConn {
    worker: std::sync::Arc<std::sync::Mutex<PgWorker>>,
    jobs: std::sync::mpsc::Sender<Job>,
    /// Inside `BEGIN`: a lost connection fails the transaction instead of reconnecting.
    pub(super) in_transaction: std::cell::Cell<bool>,
}

type Job = Box<dyn FnOnce() + Send>;

/// The connection: its runtime, the client, and what it prepared.
pub struct PgWorker {
    /// Drives the connection while a statement waits on it (taken only when dropped).
    runtime: Option<tokio::runtime::Runtime>,
    /// The connection, with the store's async operations.
    pub store: PgStore,
    /// Statements prepared on this connection, by the store's text of them.
    prepared: HashMap<String, tokio_postgres::Statement>,
}

impl PgWorker {
    /// Runs `future` (one of [`PgStore`]'s operations) to completion on the connection's
    /// runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        runtime(&self.runtime).block_on(future)
    }

    /// Runs one of [`PgStore`]'s operations that needs it mutably.
    pub fn with_store<'a, F: std::future::Future>(
        &'a mut self,
        op: impl FnOnce(&'a mut PgStore) -> F,
    ) -> F::Output {
        runtime(&self.runtime).block_on(op(&mut self.store))
    }

    fn statement(&mut self, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let text = numbered_to_dollar(sql);
        let statement = self.block_on(self.store.client.prepare(&text))?;
        self.prepared.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn ready(&mut self, in_transaction: bool) -> Result<(), StoreError> {
        if !in_transaction && self.store.client.is_closed() {
            runtime(&self.runtime).block_on(self.store.reconnect())?;
            self.prepared.clear();
        }
        Ok(())
    }

    fn query(
        &mut self,
        sql: &str,
        args: &[Value<'_>],
        in_tx: bool,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.ready(in_tx)?;
        let statement = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        Ok(self.block_on(self.store.client.query(&statement, &refs))?)
    }

    fn execute(&mut self, sql: &str, args: &[Value<'_>], in_tx: bool) -> Result<usize, StoreError> {
        self.ready(in_tx)?;
        let statement = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let n = self.block_on(self.store.client.execute(&statement, &refs))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn batch(&mut self, sql: &str, in_tx: bool) -> Result<(), StoreError> {
        self.ready(in_tx)?;
        Ok(self.block_on(self.store.client.batch_execute(sql))?)
    }
}

impl PgConn {
    /// Connects (TLS unless the URL says `sslmode=disable`), checks durability and
    /// migrates, as [`PgStore::connect`].
    pub fn connect(url: &str) -> Result<(Self, super::Migrated), StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
            StoreError::Postgres(format!("cannot start the database connection's runtime: {e}"))
        })?;
        // Connecting is itself a statement in flight: on the helper thread when the
        // caller is inside a runtime.
        let url = url.to_owned();
        let (runtime, connected) = std::thread::scope(|s| {
            s.spawn(move || {
                let connected = runtime.block_on(PgStore::connect(&url));
                (runtime, connected)
            })
            .join()
        })
        .map_err(|_| gone())?;
        let (store, migrated) = connected?;
        let worker = std::sync::Arc::new(std::sync::Mutex::new(PgWorker {
            runtime: Some(runtime),
            store,
            prepared: HashMap::new(),
        }));
        let (jobs, inbox) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("doorstep-pg".into())
            .spawn(move || {
                // Ends when the store is dropped (its sender with it).
                for job in inbox {
                    job();
                }
            })
            .map_err(|e| {
                StoreError::Postgres(format!("cannot start the database connection's thread: {e}"))
            })?;
        Ok((Self { worker, jobs, in_transaction: std::cell::Cell::new(false) }, migrated))
    }

    /// Whether this thread may turn the connection's runtime itself (it is not inside
    /// another runtime).
    fn inline() -> bool {
        tokio::runtime::Handle::try_current().is_err()
    }

    /// Runs `f` with the connection: on this thread, or on the helper thread when this
    /// one is inside an async runtime.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut PgWorker) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if Self::inline() {
            return f(&mut self.worker.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        }
        let (done, result) = std::sync::mpsc::sync_channel(1);
        let worker = std::sync::Arc::clone(&self.worker);
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(f(&mut worker.lock().unwrap_or_else(std::sync::PoisonError::into_inner)));
            }))
            .map_err(|_| gone())?;
        result.recv().map_err(|_| gone())?
    }

    /// Runs one statement with `op`: on this thread borrowing the arguments, or on the
    /// helper thread with copies of them.
    fn statement<T: Send + 'static>(
        &self,
        sql: &str,
        args: &[Value<'_>],
        op: fn(&mut PgWorker, &str, &[Value<'_>], bool) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let in_tx = self.in_transaction.get();
        if Self::inline() {
            return op(
                &mut self.worker.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
                sql,
                args,
                in_tx,
            );
        }
        let (sql, args) = (sql.to_owned(), owned(args));
        self.run(move |w| op(w, &sql, &args, in_tx))
    }

    fn query(&self, sql: &str, args: &[Value<'_>]) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.statement(sql, args, PgWorker::query)
    }

    fn execute(&self, sql: &str, args: &[Value<'_>]) -> Result<usize, StoreError> {
        self.statement(sql, args, PgWorker::execute)
    }

    fn batch(&self, sql: &str) -> Result<(), StoreError> {
        self.statement(sql, &[], |w, sql, _, in_tx| w.batch(sql, in_tx))
    }
}

fn gone() -> StoreError {
    StoreError::Postgres("the database connection's thread has stopped".into())
}

fn owned(args: &[Value<'_>]) -> Vec<Value<'static>> {
    args.iter()
        .map(|v| match v {
            Value::Null => Value::Null,
            Value::Int(n) => Value::Int(*n),
            Value::Real(f) => Value::Real(*f),
            Value::Text(s) => Value::Text(Cow::Owned(s.to_string())),
            Value::Blob(b) => Value::Blob(Cow::Owned(b.to_vec())),
        })
        .collect()
}

fn runtime(runtime: &Option<tokio::runtime::Runtime>) -> &tokio::runtime::Runtime {
    runtime.as_ref().expect("the runtime lives until the connection is dropped")
}

impl Drop for PgWorker {
    fn drop(&mut self) {
        // The store may be dropped inside an async task, where a runtime may not be shut
        // down by waiting: the connection's runtime is let go without waiting.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for PgWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgWorker")
    }
}

/// `?1` → `$1` (and a bare `?` → the next number), outside quoted text.
fn numbered_to_dollar(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    let mut next = 1;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (Some(_), c) => out.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (None, '?') => {
                out.push('$');
                let mut digits = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    digits.push(d);
                    chars.next();
                }
                if digits.is_empty() {
                    out.push_str(&next.to_string());
                    next += 1;
                } else {
                    out.push_str(&digits);
                }
            }
            (None, c) => out.push(c),
        }
    }
    out
}

impl Db {
    /// Which SQL this connection speaks.
    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The SQLite connection, for what only SQLite has (pragmas, checkpoints).
    pub fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match self {
            Db::Sqlite(conn) => Some(conn),
            Db::Postgres(_) => None,
        }
    }

    /// A statement, prepared once per connection.
    pub fn prepare_cached<'s>(&'s self, sql: &'s str) -> Result<Stmt<'s>, StoreError> {
        Ok(match self {
            Db::Sqlite(conn) => Stmt::Sqlite(conn.prepare_cached(sql)?),
            Db::Postgres(pg) => Stmt::Postgres { pg, sql },
        })
    }

    /// As [`Db::prepare_cached`] (every statement is cached).
    pub fn prepare<'s>(&'s self, sql: &'s str) -> Result<Stmt<'s>, StoreError> {
        self.prepare_cached(sql)
    }

    /// Runs a statement that returns no rows; the number of rows it changed.
    pub fn execute(&self, sql: &str, args: impl Args) -> Result<usize, StoreError> {
        self.prepare_cached(sql)?.execute(args)
    }

    /// The first row of a query, read by `f`; [`StoreError::NoRow`] when there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        args: impl Args,
        f: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.prepare_cached(sql)?.query_row(args, f)
    }

    /// Runs an `INSERT` of at most one row: the new row's `id`, or `None` when it
    /// inserted nothing (`ON CONFLICT DO NOTHING` met an existing row).
    pub fn insert_id(&self, sql: &str, args: impl Args) -> Result<Option<i64>, StoreError> {
        match self {
            // SQLite runs RETURNING as a trigger (it tripled a shipment insert's cost);
            // its rowid is free.
            Db::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(sql)?;
                let inserted = args.with_values(|v| stmt.execute(rusqlite::params_from_iter(v.iter())))?;
                Ok((inserted > 0).then(|| conn.last_insert_rowid()))
            }
            Db::Postgres(pg) => {
                let sql = format!("{sql} RETURNING id");
                let rows = args.with_values(|v| pg.query(&sql, v))?;
                rows.first().map(|row| row.try_get(0)).transpose().map_err(StoreError::from)
            }
        }
    }

    /// Runs statements separated by `;`, with no arguments (transaction control, DDL).
    pub fn execute_batch(&self, sql: &str) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Db::Postgres(pg) => pg.batch(sql),
        }
    }
}

fn to_lite<'a>(values: &'a [Value<'a>]) -> rusqlite::ParamsFromIter<std::slice::Iter<'a, Value<'a>>> {
    rusqlite::params_from_iter(values.iter())
}

/// A prepared statement.
pub enum Stmt<'s> {
    /// On SQLite: from the connection's statement cache.
    Sqlite(rusqlite::CachedStatement<'s>),
    /// On PostgreSQL: prepared on first use, then from the connection's cache.
    Postgres {
        /// The connection.
        pg: &'s PgConn,
        /// The statement's text.
        sql: &'s str,
    },
}

impl Stmt<'_> {
    /// Runs it; the number of rows changed.
    pub fn execute(&mut self, args: impl Args) -> Result<usize, StoreError> {
        match self {
            Stmt::Sqlite(stmt) => Ok(args.with_values(|v| stmt.execute(to_lite(v)))?),
            Stmt::Postgres { pg, sql } => args.with_values(|v| pg.execute(sql, v)),
        }
    }

    /// Every row, each read by `f`.
    pub fn query_map<T>(
        &mut self,
        args: impl Args,
        mut f: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<std::vec::IntoIter<Result<T, StoreError>>, StoreError> {
        let mut out = Vec::new();
        match self {
            Stmt::Sqlite(stmt) => args.with_values(|v| -> Result<(), StoreError> {
                let mut rows = stmt.query(to_lite(v))?;
                while let Some(r) = rows.next()? {
                    out.push(f(&Row::Sqlite(r)));
                }
                Ok(())
            })?,
            Stmt::Postgres { pg, sql } => {
                for r in args.with_values(|v| pg.query(sql, v))? {
                    out.push(f(&Row::Postgres(&r)));
                }
            }
        }
        Ok(out.into_iter())
    }

    /// The first row, read by `f`; [`StoreError::NoRow`] when there is none.
    pub fn query_row<T>(
        &mut self,
        args: impl Args,
        f: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self {
            Stmt::Sqlite(stmt) => args.with_values(|v| {
                let mut rows = stmt.query(to_lite(v))?;
                match rows.next()? {
                    Some(r) => f(&Row::Sqlite(r)),
                    None => Err(StoreError::NoRow),
                }
            }),
            Stmt::Postgres { pg, sql } => {
                let rows = args.with_values(|v| pg.query(sql, v))?;
                f(&Row::Postgres(rows.first().ok_or(StoreError::NoRow)?))
            }
        }
    }

    /// The rows, to step through with [`Rows::next`].
    pub fn query(&mut self, args: impl Args) -> Result<Rows<'_>, StoreError> {
        match self {
            Stmt::Sqlite(stmt) => Ok(Rows::Sqlite(args.with_values(|v| stmt.query(to_lite(v)))?)),
            Stmt::Postgres { pg, sql } => Ok(Rows::Postgres {
                rows: args.with_values(|v| pg.query(sql, v))?.into_iter(),
                current: None,
            }),
        }
    }

    /// Whether the query returns any row.
    pub fn exists(&mut self, args: impl Args) -> Result<bool, StoreError> {
        self.query_row(args, |_| Ok(())).optional().map(|found| found.is_some())
    }
}

/// A query's rows, one at a time.
pub enum Rows<'s> {
    /// From SQLite, read as they are stepped to.
    Sqlite(rusqlite::Rows<'s>),
    /// From PostgreSQL, all received.
    Postgres {
        /// Those not reached yet.
        rows: std::vec::IntoIter<tokio_postgres::Row>,
        /// The one [`Rows::next`] returned last.
        current: Option<tokio_postgres::Row>,
    },
}

impl Rows<'_> {
    /// The next row, or `None` after the last.
    pub fn next(&mut self) -> Result<Option<Row<'_>>, StoreError> {
        match self {
            Rows::Sqlite(rows) => Ok(rows.next()?.map(Row::Sqlite)),
            Rows::Postgres { rows, current } => {
                *current = rows.next();
                Ok(current.as_ref().map(Row::Postgres))
            }
        }
    }
}

/// A row of a query's result.
pub enum Row<'r> {
    /// From SQLite.
    Sqlite(&'r rusqlite::Row<'r>),
    /// From PostgreSQL.
    Postgres(&'r tokio_postgres::Row),
}

impl Row<'_> {
    /// Column `idx` (from 0) as a `T`. The `I` parameter keeps rusqlite's call shape
    /// (`r.get::<_, String>(0)`).
    pub fn get<I: ColumnIndex, T: FromDb>(&self, idx: I) -> Result<T, StoreError> {
        let idx = idx.index();
        match self {
            Row::Sqlite(r) => T::from_sqlite(r.get_ref(idx)?).map_err(|e| column_error(idx, e)),
            Row::Postgres(r) => T::from_postgres(r, idx),
        }
    }
}

/// A column's position (a trait, so `r.get(0)` reads the literal as `usize`).
pub trait ColumnIndex {
    /// From 0.
    fn index(self) -> usize;
}

impl ColumnIndex for usize {
    fn index(self) -> usize {
        self
    }
}

fn column_error(idx: usize, e: rusqlite::types::FromSqlError) -> StoreError {
    StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(
        idx,
        rusqlite::types::Type::Null,
        Box::new(e),
    ))
}

/// What a column can be read as.
pub trait FromDb: Sized {
    /// From SQLite's value.
    fn from_sqlite(value: ValueRef<'_>) -> Result<Self, rusqlite::types::FromSqlError>;
    /// From a PostgreSQL row's column.
    fn from_postgres(row: &tokio_postgres::Row, idx: usize) -> Result<Self, StoreError>;
}

fn pg_null(idx: usize) -> StoreError {
    StoreError::Postgres(format!("column {idx} is NULL where a value was expected"))
}

fn pg_type(row: &tokio_postgres::Row, idx: usize) -> Result<&Type, StoreError> {
    row.columns()
        .get(idx)
        .map(|c| c.type_())
        .ok_or_else(|| StoreError::Postgres(format!("no column {idx} in the result")))
}

fn pg_int(row: &tokio_postgres::Row, idx: usize) -> Result<Option<i64>, StoreError> {
    Ok(match *pg_type(row, idx)? {
        Type::INT8 => row.try_get::<_, Option<i64>>(idx)?,
        Type::INT4 => row.try_get::<_, Option<i32>>(idx)?.map(i64::from),
        Type::INT2 => row.try_get::<_, Option<i16>>(idx)?.map(i64::from),
        Type::BOOL => row.try_get::<_, Option<bool>>(idx)?.map(i64::from),
        ref other => return Err(StoreError::Postgres(format!("column {idx} is {other}, not an integer"))),
    })
}

impl FromDb for i64 {
    fn from_sqlite(value: ValueRef<'_>) -> Result<Self, rusqlite::types::FromSqlError> {
        rusqlite::types::FromSql::column_result(value)
    }
    fn from_postgres(row: &tokio_postgres::Row, idx: usize) -> Result<Self, StoreError> {
        pg_int(row, idx)?.ok_or_else(|| pg_null(idx))
    }
}

macro_rules! from_db_int {
    ($($t:ty),*) => {$(
        impl FromDb for $t {
            fn from_sqlite(value: ValueRef<'_>) -> Result<Self, rusqlite::types::FromSqlError> {
                let n = value.as_i64()?;
                <$t>::try_from(n).map_err(|_| rusqlite::types::FromSqlError::OutOfRange(n))
            }
            fn from_postgres(row: &tokio_postgres::Row, idx: usize) -> Result<Self, StoreError> {
                let n = pg_int(row, idx)?.ok_or_else(|| pg_null(idx))?;
                <$t>::try_from(n).map_err(|_| StoreError::Postgres(format!("column {idx} value {n} is out of range")))
            }
        }
    )*};
}
from_db_int!(u64, u32, i32, usize, u8, u16);

impl FromDb for bool {
    fn from_sqlite(value: ValueRef<'_>) -> Result<Self, rusqlite::types::FromSqlError> {
        rusqlite::types::FromSql::column_result(value)
    }
    fn from_postgres(row: &tokio_postgres::Row, idx: usize) -> Result<Self, StoreError> {
        Ok(pg_int(row, idx)?.ok_or_else(|| pg_null(idx))? != 0)
    }
}

impl FromDb for f64 {
    fn from_sqlite(value: ValueRef<'_>) -> Result<Self, rusqlite::types::FromSqlError> {
        rusqlite::types::FromSql::column_result(value)
    }
    fn from_postgres(row: &tokio_postgres::Row, idx: usize) -> Result<Self, StoreError> {
        let value = match *pg_type(row, idx)? {
            Type::FLOAT8 => row.try_get::<_, Option<f64>>(idx)?,
            Type::FLOAT4 => row.try_get::<_, Option<f32>>(idx)?.map(f64::from),
            _ => pg_int(row, idx)?.map(|n| n as f64),
        };
        value.ok_or_else(|| pg_null(idx))
    }
}

impl FromDb for String {
    fn from_sqlite(value: ValueRef<'_>) -> Result<Self, rusqlite::types::FromSqlError> {
        rusqlite::types::FromSql::column_result(value)
    }
    fn from_postgres(row: &tokio_postgres::Row, idx: usize) -> Result<Self, StoreError> {
        row.try_get::<_, Option<String>>(idx)?.ok_or_else(|| pg_null(idx))
    }
}

impl FromDb for Vec<u8> {
    fn from_sqlite(value: ValueRef<'_>) -> Result<Self, rusqlite::types::FromSqlError> {
        rusqlite::types::FromSql::column_result(value)
    }
    fn from_postgres(row: &tokio_postgres::Row, idx: usize) -> Result<Self, StoreError> {
        row.try_get::<_, Option<Vec<u8>>>(idx)?.ok_or_else(|| pg_null(idx))
    }
}

impl<T: FromDb> FromDb for Option<T> {
    fn from_sqlite(value: ValueRef<'_>) -> Result<Self, rusqlite::types::FromSqlError> {
        match value {
            ValueRef::Null => Ok(None),
            value => T::from_sqlite(value).map(Some),
        }
    }
    fn from_postgres(row: &tokio_postgres::Row, idx: usize) -> Result<Self, StoreError> {
        match T::from_postgres(row, idx) {
            Ok(v) => Ok(Some(v)),
            // NULL: the column reads as NULL under the widest type it could have.
            Err(e) => match row.try_get::<_, Option<PgAny>>(idx) {
                Ok(None) => Ok(None),
                _ => Err(e),
            },
        }
    }
}

/// Any PostgreSQL value, read only to learn whether it is NULL.
struct PgAny;

impl<'a> tokio_postgres::types::FromSql<'a> for PgAny {
    fn from_sql(_: &Type, _: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(PgAny)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A value bound to a statement: SQLite's five kinds.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// NULL.
    Null,
    /// A 64-bit integer (flags are 0 and 1).
    Int(i64),
    /// A float.
    Real(f64),
    /// Text.
    Text(Cow<'a, str>),
    /// Bytes.
    Blob(Cow<'a, [u8]>),
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(n) => ValueRef::Integer(*n),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(n), &Type::INT8) => n.to_sql(ty, out),
            (Value::Int(n), &Type::INT4) => i32::try_from(*n)?.to_sql(ty, out),
            (Value::Int(n), &Type::INT2) => i16::try_from(*n)?.to_sql(ty, out),
            (Value::Int(n), &Type::BOOL) => (*n != 0).to_sql(ty, out),
            (Value::Int(n), &Type::FLOAT8) => (*n as f64).to_sql(ty, out),
            (Value::Int(n), &Type::TEXT | &Type::VARCHAR) => n.to_string().to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Value::Text(s), &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME | &Type::UNKNOWN) => {
                s.as_ref().to_sql(ty, out)
            }
            (Value::Blob(b), &Type::BYTEA) => b.as_ref().to_sql(ty, out),
            // JSON travels as its text; JSONB as a version byte and the text.
            (Value::Text(s), &Type::JSON) => {
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
            (Value::Text(s), &Type::JSONB) => {
                out.extend_from_slice(&[1]);
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
            (value, ty) => Err(format!("a {value:?} cannot be bound where PostgreSQL expects {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// What can be bound to a placeholder.
pub trait ToValue {
    /// As a [`Value`], borrowing where it can.
    fn to_value(&self) -> Value<'_>;
}

impl ToValue for Value<'_> {
    fn to_value(&self) -> Value<'_> {
        match self {
            Value::Text(s) => Value::Text(Cow::Borrowed(s)),
            Value::Blob(b) => Value::Blob(Cow::Borrowed(b)),
            Value::Null => Value::Null,
            Value::Int(n) => Value::Int(*n),
            Value::Real(f) => Value::Real(*f),
        }
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value<'_> {
        Value::Text(Cow::Borrowed(self))
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value<'_> {
        Value::Text(Cow::Borrowed(self))
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(Cow::Borrowed(self))
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(Cow::Borrowed(self))
    }
}

impl<const N: usize> ToValue for [u8; N] {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(Cow::Borrowed(self))
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Value<'_> {
        Value::Real(*self)
    }
}

impl ToValue for bool {
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}

macro_rules! to_value_int {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value<'_> {
                // Past i64 (a u64 over 2^63) is stored as the largest; nothing the hub
                // counts comes near it.
                Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
to_value_int!(i64, i32, u32, u64, usize, u8, u16, i16);

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value<'_> {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

impl std::fmt::Debug for Stmt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stmt")
    }
}

impl std::fmt::Debug for Rows<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rows")
    }
}

impl std::fmt::Debug for Row<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Row")
    }
}

/// A statement's arguments: an array of bindable values (`[id]`, `params![a, b]`).
pub trait Args {
    /// Calls `f` with the values, without allocating.
    fn with_values<R>(&self, f: impl FnOnce(&[Value<'_>]) -> R) -> R;
}

impl<T: ToValue, const N: usize> Args for [T; N] {
    fn with_values<R>(&self, f: impl FnOnce(&[Value<'_>]) -> R) -> R {
        let values: [Value<'_>; N] = std::array::from_fn(|i| self[i].to_value());
        f(&values)
    }
}

impl<'a, 'b> Args for &'a [Value<'b>] {
    fn with_values<R>(&self, f: impl FnOnce(&[Value<'_>]) -> R) -> R {
        f(self)
    }
}

impl Args for Vec<Value<'_>> {
    fn with_values<R>(&self, f: impl FnOnce(&[Value<'_>]) -> R) -> R {
        f(self)
    }
}

/// No arguments.
pub const NO_ARGS: [Value<'static>; 0] = [];

/// Arguments of several types, as `rusqlite::params!`: `params![device.as_str(), now_ms]`.
macro_rules! params {
    () => { $crate::store::db::NO_ARGS };
    ($($arg:expr),+ $(,)?) => {
        [$($crate::store::db::ToValue::to_value(&$arg)),+]
    };
}
pub(crate) use params;

/// `.optional()` on a single-row query's result, as rusqlite's extension.
pub(crate) trait OptionalExtension<T> {
    /// `None` where the query found no row.
    fn optional(self) -> Result<Option<T>, StoreError>;
}

impl<T> OptionalExtension<T> for Result<T, StoreError> {
    fn optional(self) -> Result<Option<T>, StoreError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::NoRow) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::numbered_to_dollar;

    #[test]
    fn placeholders_become_postgres_numbers_outside_quotes() {
        assert_eq!(
            numbered_to_dollar("SELECT ?1, ?12 WHERE a = '?1' AND b = ?"),
            "SELECT $1, $12 WHERE a = '?1' AND b = $1"
        );
        assert_eq!(
            numbered_to_dollar("SELECT \"a?\" FROM t WHERE x = ? AND y = ?"),
            "SELECT \"a?\" FROM t WHERE x = $1 AND y = $2"
        );
    }
}
