//! The dispatcher's handle on the hub database: a [`Store`] of its own, used on blocking
//! threads. Every statement is the store's (`store::dispatch`, `store::lease`,
//! `store::outbox`); this module only moves the calls off the async workers.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::NotifyError;
use crate::store::{Store, StoreOptions};

/// The dispatcher's database handle: its own connection to the WAL database (SQLite
/// serializes it with ingest's writer; `BUSY_TIMEOUT` covers the wait).
#[derive(Debug)]
pub struct NotifyDb {
    store: Mutex<Store>,
}

impl NotifyDb {
    /// Opens the hub database at `path`, migrating it like every hub connection does.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Self, NotifyError> {
        Ok(Self { store: Mutex::new(Store::open(path, options)?) })
    }

    /// Runs `f` with the store on a blocking thread. The lock keeps it the connection's
    /// only user, so the store's write transactions may start from `&Store`.
    pub async fn call<R, F>(self: &Arc<Self>, f: F) -> Result<R, NotifyError>
    where
        R: Send + 'static,
        F: FnOnce(&Store) -> Result<R, NotifyError> + Send + 'static,
    {
        let db = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let store = db.store.lock().unwrap_or_else(|e| e.into_inner());
            f(&store)
        })
        .await
        .map_err(|e| NotifyError::Task(e.to_string()))?
    }
}
