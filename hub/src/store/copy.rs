//! Moving a hub from SQLite to PostgreSQL with its data: every row of the SQLite file
//! copied into a new PostgreSQL database in one transaction (`doorstep-hub migrate
//! --database postgres://... --copy-from hub.db`).
//!
//! The two schemas have the same tables and columns (checked column by column by
//! `hub/tests/postgres.rs`), so each table is copied column for column: parents before
//! the tables whose foreign keys name them (read from PostgreSQL's catalogue), many rows
//! a statement. Identity columns then go on after the highest id copied, so the hubs'
//! next shipment or outbox row does not collide with a copied one. The target must hold
//! no row at all: a copy never merges into a database hubs already use. A value that does
//! not fit its column fails the copy with the table named, and nothing of it is kept.

use std::collections::{BTreeMap, BTreeSet};

use super::db::{Db, Value};
use super::{PgStore, Store, StoreError, corrupt};

/// Values a statement binds at most (PostgreSQL's limit is 65,535).
const VALUES_PER_STATEMENT: usize = 30_000;
/// Rows a statement inserts at most.
const ROWS_PER_STATEMENT: usize = 500;

impl PgStore {
    /// Every (table, parent table) pair of the schema's foreign keys.
    pub async fn foreign_keys(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        self.ready().await?;
        let rows = self
            .client
            .query(
                "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c
                 JOIN pg_namespace n ON n.oid = c.connamespace
                 WHERE c.contype = 'f' AND n.nspname = current_schema()",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Every identity column: (table, column).
    pub async fn identity_columns(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        self.ready().await?;
        let rows = self
            .client
            .query(
                "SELECT table_name::text, column_name::text FROM information_schema.columns
                 WHERE table_schema = current_schema() AND is_identity = 'YES'",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// `tables` with each one after the tables its foreign keys name.
fn parents_first(tables: &[String], foreign_keys: &[(String, String)]) -> Result<Vec<String>, StoreError> {
    let mut parents: BTreeMap<&str, BTreeSet<&str>> =
        tables.iter().map(|t| (t.as_str(), BTreeSet::new())).collect();
    for (child, parent) in foreign_keys {
        if child != parent
            && let Some(of) = parents.get_mut(child.as_str())
        {
            of.insert(parent.as_str());
        }
    }
    let mut order: Vec<String> = Vec::with_capacity(tables.len());
    while order.len() < tables.len() {
        let ready: Vec<&str> = parents
            .iter()
            .filter(|(table, of)| {
                !order.iter().any(|done| done == *table)
                    && of.iter().all(|p| order.iter().any(|done| done == p))
            })
            .map(|(table, _)| *table)
            .collect();
        if ready.is_empty() {
            return Err(corrupt("foreign keys", "they form a cycle; the copy cannot order the tables"));
        }
        order.extend(ready.into_iter().map(str::to_owned));
    }
    Ok(order)
}

/// A SQLite identifier (from the schemas' own catalogues), quoted for either database.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn owned(value: rusqlite::types::ValueRef<'_>, table: &str) -> Result<Value<'static>, StoreError> {
    use rusqlite::types::ValueRef;
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => Value::Int(n),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(
            String::from_utf8(t.to_vec())
                .map_err(|e| corrupt("text", format!("in table {table}: {e}")))?
                .into(),
        ),
        ValueRef::Blob(b) => Value::Blob(b.to_vec().into()),
    })
}

impl Store {
    /// Copies every row of this SQLite database into `target`, a PostgreSQL database
    /// holding no row yet, in one transaction; the rows copied, by table, in the order
    /// copied. The hubs using this file must be stopped first.
    pub fn copy_into(&self, target: &mut Store) -> Result<Vec<(String, u64)>, StoreError> {
        let Db::Sqlite(source) = &self.conn else {
            return Err(StoreError::Copy("the database to copy from must be a SQLite file".into()));
        };
        let Db::Postgres(pg) = &target.conn else {
            return Err(StoreError::Copy(
                "the database to copy into must be PostgreSQL (a postgres:// URL)".into(),
            ));
        };
        let target_tables = pg.run(|w| w.with_store(PgStore::columns))?;
        let foreign_keys = pg.run(|w| w.with_store(PgStore::foreign_keys))?;
        let identities = pg.run(|w| w.with_store(PgStore::identity_columns))?;
        let source_tables: BTreeMap<String, Vec<String>> = self
            .columns()?
            .into_iter()
            .map(|(table, columns)| (table, columns.into_iter().map(|(name, _, _)| name).collect()))
            .collect();
        let names: Vec<String> = target_tables.iter().map(|(table, _)| table.clone()).collect();
        let order = parents_first(&names, &foreign_keys)?;

        // One read transaction: every table as of one moment, should a hub still write.
        let snapshot = source.unchecked_transaction()?;
        let tx = target.transaction()?;
        for table in &order {
            let holds =
                tx.query_row(&format!("SELECT count(*) FROM {}", quoted(table)), super::NO_ARGS, |r| {
                    r.get::<_, i64>(0)
                })?;
            if holds > 0 {
                return Err(StoreError::Copy(format!(
                    "the PostgreSQL database already holds rows (table {table}: {holds}); copy into a new, empty \
                     database (create it, then run this again)"
                )));
            }
        }
        let mut copied = Vec::with_capacity(order.len());
        for table in &order {
            let Some(columns) = source_tables.get(table) else {
                // A table this build's SQLite schema does not have: nothing to copy.
                copied.push((table.clone(), 0));
                continue;
            };
            let list = columns.iter().map(|c| quoted(c)).collect::<Vec<_>>().join(", ");
            let per_statement = (VALUES_PER_STATEMENT / columns.len().max(1)).clamp(1, ROWS_PER_STATEMENT);
            let insert = |rows: usize| {
                let mut sql = format!("INSERT INTO {} ({list}) VALUES ", quoted(table));
                for row in 0..rows {
                    let marks: Vec<String> =
                        (1..=columns.len()).map(|c| format!("?{}", row * columns.len() + c)).collect();
                    sql.push_str(&format!("{}({})", if row == 0 { "" } else { ", " }, marks.join(", ")));
                }
                sql
            };
            let mut read = snapshot.prepare(&format!("SELECT {list} FROM {}", quoted(table)))?;
            let mut rows = read.query([])?;
            let (mut pending, mut pending_rows, mut n) = (Vec::new(), 0usize, 0u64);
            let flush = |values: &mut Vec<Value<'static>>, rows: usize| -> Result<(), StoreError> {
                tx.execute(&insert(rows), std::mem::take(values))
                    .map_err(|e| StoreError::Copy(format!("table {table}: {e}")))?;
                Ok(())
            };
            while let Some(row) = rows.next()? {
                for i in 0..columns.len() {
                    pending.push(owned(row.get_ref(i)?, table)?);
                }
                pending_rows += 1;
                n += 1;
                if pending_rows == per_statement {
                    flush(&mut pending, pending_rows)?;
                    pending_rows = 0;
                }
            }
            if pending_rows > 0 {
                flush(&mut pending, pending_rows)?;
            }
            copied.push((table.clone(), n));
        }
        for (table, column) in &identities {
            tx.query_row(
                &format!(
                    "SELECT setval(pg_get_serial_sequence(?1, ?2), coalesce(max({col}), 0) + 1, false) FROM {table}",
                    col = quoted(column),
                    table = quoted(table)
                ),
                [table.as_str(), column.as_str()],
                |r| r.get::<_, i64>(0),
            )?;
        }
        for (table, n) in &copied {
            let holds =
                tx.query_row(&format!("SELECT count(*) FROM {}", quoted(table)), super::NO_ARGS, |r| {
                    r.get::<_, i64>(0)
                })?;
            if u64::try_from(holds).ok() != Some(*n) {
                return Err(StoreError::Copy(format!("table {table}: {n} rows read, {holds} in PostgreSQL")));
            }
        }
        tx.commit()?;
        Ok(copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_ordered_after_the_tables_their_foreign_keys_name() {
        let tables: Vec<String> = ["timeline", "shipments", "outcomes", "outbox"].map(String::from).to_vec();
        let keys = [
            ("timeline", "shipments"),
            ("outbox", "shipments"),
            ("outcomes", "outbox"),
            ("outbox", "outbox"),
        ]
        .map(|(c, p)| (c.to_owned(), p.to_owned()));
        let order = parents_first(&tables, &keys).expect("order");
        let at = |t: &str| order.iter().position(|o| o == t).expect("listed");
        assert_eq!(order.len(), 4);
        assert!(
            at("shipments") < at("timeline")
                && at("shipments") < at("outbox")
                && at("outbox") < at("outcomes")
        );
        let cycle = [("a", "b"), ("b", "a")].map(|(c, p)| (c.to_owned(), p.to_owned()));
        assert!(parents_first(&["a".into(), "b".into()], &cycle).is_err());
    }
}
