//! One ingest batch on PostgreSQL: its shipments read once, its writes sent once.
//!
//! Reconciled one by one against the database, each device event of a batch would cost
//! a few round trips: its shipment's locked read, its timeline row, the reconciler's
//! save. On PostgreSQL the writer instead reads every shipment the batch can touch in one
//! statement and keeps what it read ([`Batch`]); each event is reconciled against the
//! kept rows, and its timeline rows and saves wait in the batch and go at commit, in
//! set-based statements pipelined in one round trip. Nothing on the ingest path reads
//! `shipments` or `timeline` by SQL, so the kept rows are the batch's whole view.
//!
//! The read takes no locks ([`BatchReads::Checked`]): most events change no shipment (the
//! tenth "nearby" of a stop), and hubs sharing a fleet's messages would otherwise queue
//! behind one another's batches for rows they only read. At commit, the shipments the
//! batch changed are locked in id order and each save is made only if the shipment is
//! still as the batch read it. One that another hub (or a carrier webhook) changed
//! meanwhile fails the whole batch ([`StoreError::Changed`]): nothing of it is kept, and
//! the writer stores it again with its shipments locked from the read on
//! ([`BatchReads::Locked`]), in id order so hubs take turns instead of deadlocking.
//! A batch that changes nothing it read is as if it ran before the other hub's change.
//!
//! A write outside the ingest path (a new shipment, an order's fields, a route) first
//! sends what waits and ends the batch ([`StoreTx::settle`]). A failed statement or
//! commit drops the kept rows with the transaction. SQLite's one writer pays no round
//! trips and keeps nothing: none of this runs there.

use std::collections::{BTreeMap, HashMap};

use doorstep_proto::{DeviceId, FleetId, KeyId, StopId, TrackingNumber};

use super::db::Db;
use super::shipments::{ShipmentRow, milestone_str, shipment_from_row};
use super::{PgStore, Shipment, StoreError, StoreTx, corrupt};
use crate::model::Milestone;

/// The shipments a batch of device events can touch: the parcels at stops of their
/// vans' routes (device, route id, stop id) and the parcels they name by number.
#[derive(Debug, Default)]
pub struct BatchParcels {
    /// The vans of `stops`, one a stop.
    pub devices: Vec<String>,
    /// The route ids of `stops`.
    pub routes: Vec<String>,
    /// The stop ids.
    pub stops: Vec<String>,
    /// Tracking numbers named by the events themselves.
    pub numbers: Vec<String>,
}

impl BatchParcels {
    /// Whether no event of the batch touches a shipment.
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty() && self.numbers.is_empty()
    }
}

/// The parcels at stops of vans' routes: (device, route id, stop id) → tracking numbers.
pub type StopParcels = HashMap<(String, String, String), Vec<String>>;

/// How a batch reads its shipments on PostgreSQL (see the module's notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchReads {
    /// Without locks; each save is checked at commit against what was read.
    Checked,
    /// Locked in id order from the read to the commit: what a batch is tried again with.
    Locked,
}

/// What [`PgStore::read_batch`] read.
#[derive(Debug)]
pub struct ReadBatch {
    /// The parcels at each stop asked for (none where the route has none), in tracking
    /// number order.
    pub at_stops: StopParcels,
    /// Every tracking number asked for, with or without a shipment.
    pub numbers: Vec<String>,
    /// The shipments found, in id order.
    pub shipments: Vec<ShipmentRow>,
}

/// What a batch's transaction keeps, from [`StoreTx::read_batch`] to its commit.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// Whether a batch is under way: only then is anything kept or deferred.
    active: bool,
    /// The parcels at the batch's stops: (device, route id, stop id) → tracking numbers.
    stop_parcels: HashMap<(String, String, String), Vec<TrackingNumber>>,
    /// The locked shipments by tracking number; `None` where no shipment has the number.
    shipments: HashMap<String, Option<Shipment>>,
    /// Each kept shipment's tracking number, by id.
    ids: HashMap<i64, String>,
    /// What waits for the commit.
    pending: Pending,
}

/// A batch's writes, sent at its commit.
#[derive(Debug, Default)]
pub struct Pending {
    /// Timeline rows in the order they were added (the order their ids keep).
    timeline: TimelineColumns,
    /// The reconciler's last save of each shipment it changed.
    saves: BTreeMap<i64, Save>,
}

/// A shipment's save: what the batch leaves, and what it read before its first change.
#[derive(Debug)]
struct Save {
    milestone: &'static str,
    state: String,
    at_ms: i64,
    read_milestone: &'static str,
    read_state: Option<String>,
}

/// Timeline rows as the columns of one insert.
#[derive(Debug, Default)]
struct TimelineColumns {
    shipment_ids: Vec<i64>,
    occurred_ms: Vec<i64>,
    sources: Vec<String>,
    kinds: Vec<String>,
    details: Vec<String>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.timeline.shipment_ids.is_empty() && self.saves.is_empty()
    }
}

impl PgStore {
    /// Reads the shipments of `parcels` (locked in id order when `reads` says so: hubs
    /// whose batches share shipments then wait for one another instead of taking the
    /// same rows in their own arrival orders and deadlocking), and the parcels at each of
    /// `parcels`' stops: what the batch's events are reconciled against.
    pub async fn read_batch(
        &mut self,
        parcels: BatchParcels,
        reads: BatchReads,
    ) -> Result<ReadBatch, tokio_postgres::Error> {
        let BatchParcels { devices, routes, stops, mut numbers } = parcels;
        let read = self
            .prepared(
                "SELECT r.device, r.route_id, r.stop_id, r.tracking_number FROM route_stops r
                 JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(device, route_id, stop_id)
                   USING (device, route_id, stop_id)
                 ORDER BY r.tracking_number",
            )
            .await?;
        let shipments = self
            .prepared(match reads {
                BatchReads::Checked => {
                    "SELECT id, tracking_number, carrier, order_id, contacts, locale, time_zone, milestone,
                            reconcile_state, created_ms, order_name
                     FROM shipments WHERE tracking_number = ANY($1::text[])"
                }
                BatchReads::Locked => {
                    "SELECT id, tracking_number, carrier, order_id, contacts, locale, time_zone, milestone,
                            reconcile_state, created_ms, order_name
                     FROM shipments WHERE tracking_number = ANY($1::text[])
                     ORDER BY id FOR NO KEY UPDATE"
                }
            })
            .await?;
        let mut at_stops: StopParcels = devices
            .into_iter()
            .zip(routes)
            .zip(stops)
            .map(|((device, route), stop)| ((device, route, stop), Vec::new()))
            .collect();
        let (devices, routes, stops): (Vec<&str>, Vec<&str>, Vec<&str>) = {
            let keys: Vec<&(String, String, String)> = at_stops.keys().collect();
            (
                keys.iter().map(|k| k.0.as_str()).collect(),
                keys.iter().map(|k| k.1.as_str()).collect(),
                keys.iter().map(|k| k.2.as_str()).collect(),
            )
        };
        let rows = self.client.query(&read, &[&devices, &routes, &stops]).await?;
        for row in &rows {
            let key: (String, String, String) = (row.get(0), row.get(1), row.get(2));
            let number: String = row.get(3);
            numbers.push(number.clone());
            at_stops.entry(key).or_default().push(number);
        }
        numbers.sort_unstable();
        numbers.dedup();
        let shipments = self
            .client
            .query(&shipments, &[&numbers])
            .await?
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                    r.get(7),
                    r.get(8),
                    r.get(9),
                    r.get(10),
                )
            })
            .collect();
        Ok(ReadBatch { at_stops, numbers, shipments })
    }

    /// Sends a batch's saves and timeline rows: set-based statements, pipelined. The
    /// saved shipments are locked in id order first (without waiting: one another
    /// transaction holds makes them all count as changed), and each is saved only if it
    /// is still as the batch read it; returns how many were not.
    pub async fn write_batch(&mut self, pending: Pending) -> Result<usize, tokio_postgres::Error> {
        let lock = self
            .prepared(
                "SELECT id FROM shipments WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE NOWAIT",
            )
            .await?;
        let update = self
            .prepared(
                "UPDATE shipments s SET milestone = u.milestone, reconcile_state = u.state, updated_ms = u.at
                 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[])
                      AS u(id, milestone, state, at, read_milestone, read_state)
                 WHERE s.id = u.id AND s.milestone = u.read_milestone
                   AND s.reconcile_state IS NOT DISTINCT FROM u.read_state",
            )
            .await?;
        let insert = self
            .prepared(
                "INSERT INTO timeline (shipment_id, occurred_ms, source, kind, detail)
                 SELECT s, o, src, k, d
                 FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[])
                      WITH ORDINALITY AS u(s, o, src, k, d, n)
                 ORDER BY n",
            )
            .await?;
        let Pending { timeline: t, saves } = pending;
        let n = saves.len();
        let (mut ids, mut milestones, mut states, mut at) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut read_milestones, mut read_states) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (id, save) in saves {
            ids.push(id);
            milestones.push(save.milestone);
            states.push(save.state);
            at.push(save.at_ms);
            read_milestones.push(save.read_milestone);
            read_states.push(save.read_state);
        }
        let client = &self.client;
        // In flight together: the client sends all three before it reads an answer.
        let locked = async {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            client.query(&lock, &[&ids]).await
        };
        let saved = async {
            if ids.is_empty() {
                return Ok(0);
            }
            client.execute(&update, &[&ids, &milestones, &states, &at, &read_milestones, &read_states]).await
        };
        let timeline = async {
            if t.shipment_ids.is_empty() {
                return Ok(0);
            }
            client
                .execute(&insert, &[&t.shipment_ids, &t.occurred_ms, &t.sources, &t.kinds, &t.details])
                .await
        };
        let (locked, saved, timeline) = tokio::join!(locked, saved, timeline);
        if let Err(e) = locked {
            // Held by another transaction: a hub saving it too, or a batch that locked it
            // to be tried again. Waiting could close a circle with rows this batch took
            // on its way (an outbox key the other also enqueues); giving way cannot.
            if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
                return Ok(ids.len());
            }
            return Err(e);
        }
        let saved = saved?;
        timeline?;
        Ok(ids.len().saturating_sub(usize::try_from(saved).unwrap_or(usize::MAX)))
    }

    /// The fleet of each active device whose current key is the one given, for a
    /// batch's (device, key) pairs in one statement; a pair left out is unknown,
    /// revoked, or rotated to another key.
    pub async fn active_devices(
        &mut self,
        devices: Vec<String>,
        keys: Vec<String>,
    ) -> Result<Vec<(String, String, String)>, tokio_postgres::Error> {
        let read = self
            .prepared(
                "SELECT d.device, d.key_id, d.fleet FROM devices d
                 JOIN unnest($1::text[], $2::text[]) AS k(device, key_id) USING (device, key_id)
                 WHERE d.status = 'active'",
            )
            .await?;
        let rows = self.client.query(&read, &[&devices, &keys]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }
}

impl StoreTx<'_> {
    /// On PostgreSQL, reads the shipments a batch's events can touch (locked in id order
    /// with [`BatchReads::Locked`]) before any is reconciled, with the parcels at the
    /// batch's stops; until the commit, the batch's shipments, stop parcels, timeline rows
    /// and saves are kept here (see the module's notes). On SQLite nothing is to be
    /// ordered or saved up: one writer's transaction runs alone.
    pub fn read_batch(&self, parcels: BatchParcels, reads: BatchReads) -> Result<(), StoreError> {
        let Db::Postgres(pg) = self.tx else { return Ok(()) };
        if parcels.is_empty() {
            return Ok(());
        }
        let locked = pg.run(move |w| Ok(w.with_store(|store| store.read_batch(parcels, reads))?))?;
        let mut batch = self.batch.borrow_mut();
        for (key, numbers) in locked.at_stops {
            let numbers = numbers
                .into_iter()
                .map(|t| TrackingNumber::new(t).map_err(|e| corrupt("tracking number", e)))
                .collect::<Result<_, _>>()?;
            batch.stop_parcels.insert(key, numbers);
        }
        for number in locked.numbers {
            batch.shipments.insert(number, None);
        }
        for row in locked.shipments {
            let shipment = shipment_from_row(row)?;
            let number = shipment.tracking_number.as_str().to_owned();
            batch.ids.insert(shipment.id, number.clone());
            batch.shipments.insert(number, Some(shipment));
        }
        batch.active = true;
        Ok(())
    }

    /// The fleet each (device, key) pair is registered in while active, as
    /// [`StoreTx::active_device`] answers one pair: on PostgreSQL in one statement.
    pub fn active_devices(
        &self,
        pairs: &[(DeviceId, KeyId)],
    ) -> Result<HashMap<(DeviceId, KeyId), Option<FleetId>>, StoreError> {
        let Db::Postgres(pg) = self.tx else {
            return pairs.iter().map(|(d, k)| Ok(((d.clone(), *k), self.active_device(d, k)?))).collect();
        };
        let devices: Vec<String> = pairs.iter().map(|(d, _)| d.as_str().to_owned()).collect();
        let keys: Vec<String> = pairs.iter().map(|(_, k)| k.to_hex()).collect();
        let rows = pg.run(move |w| Ok(w.with_store(|store| store.active_devices(devices, keys))?))?;
        let found: HashMap<(String, String), String> =
            rows.into_iter().map(|(device, key, fleet)| ((device, key), fleet)).collect();
        pairs
            .iter()
            .map(|(device, key)| {
                let fleet = found.get(&(device.as_str().to_owned(), key.to_hex())).cloned();
                let fleet = fleet.map(FleetId::new).transpose().map_err(|e| corrupt("fleet id", e))?;
                Ok(((device.clone(), *key), fleet))
            })
            .collect()
    }

    /// The parcels at a stop, when the batch read them.
    pub(super) fn batch_stop_parcels(
        &self,
        device: &DeviceId,
        route_id: &str,
        stop_id: &StopId,
    ) -> Option<Vec<TrackingNumber>> {
        let batch = self.batch.borrow();
        if !batch.active {
            return None;
        }
        let key = (device.as_str().to_owned(), route_id.to_owned(), stop_id.as_str().to_owned());
        batch.stop_parcels.get(&key).cloned()
    }

    /// The batch's copy of a shipment (`Some(None)`: the batch knows there is none), or
    /// `None` when the batch did not read it.
    pub(super) fn batch_shipment(&self, tracking: &TrackingNumber) -> Option<Option<Shipment>> {
        let batch = self.batch.borrow();
        if !batch.active {
            return None;
        }
        batch.shipments.get(tracking.as_str()).cloned()
    }

    /// The batch's copy of a shipment by id, when it has one.
    pub(super) fn batch_shipment_by_id(&self, id: i64) -> Option<Shipment> {
        let batch = self.batch.borrow();
        let number = batch.ids.get(&id)?;
        batch.shipments.get(number).cloned().flatten()
    }

    /// Keeps a shipment read (and locked) during a batch, so later events of the batch
    /// see the batch's saves of it.
    pub(super) fn keep_in_batch(&self, tracking: &TrackingNumber, shipment: Option<&Shipment>) {
        let mut batch = self.batch.borrow_mut();
        if !batch.active {
            return;
        }
        if let Some(s) = shipment {
            batch.ids.insert(s.id, tracking.as_str().to_owned());
        }
        batch.shipments.insert(tracking.as_str().to_owned(), shipment.cloned());
    }

    /// Keeps the reconciler's save of a kept shipment for the commit, and the kept copy
    /// up to date; `false` (nothing kept) when the batch does not hold the shipment.
    pub(super) fn defer_save(
        &self,
        shipment_id: i64,
        milestone: Milestone,
        state_json: &str,
        now_ms: i64,
    ) -> bool {
        let batch = &mut *self.batch.borrow_mut();
        if !batch.active {
            return false;
        }
        let Some(number) = batch.ids.get(&shipment_id) else { return false };
        let Some(Some(kept)) = batch.shipments.get_mut(number) else { return false };
        let read = (milestone_str(kept.milestone), kept.reconcile_state.take());
        kept.milestone = milestone;
        kept.reconcile_state = Some(state_json.to_owned());
        let (milestone, state) = (milestone_str(milestone), state_json.to_owned());
        batch
            .pending
            .saves
            .entry(shipment_id)
            .and_modify(|save| (save.milestone, save.state, save.at_ms) = (milestone, state.clone(), now_ms))
            .or_insert_with(|| Save {
                milestone,
                state,
                at_ms: now_ms,
                read_milestone: read.0,
                read_state: read.1,
            });
        true
    }

    /// Keeps a timeline row for the commit; `false` outside a batch.
    pub(super) fn defer_timeline(
        &self,
        shipment_id: i64,
        occurred_ms: i64,
        source: &str,
        kind: &str,
        detail_json: &str,
    ) -> bool {
        let mut batch = self.batch.borrow_mut();
        if !batch.active {
            return false;
        }
        let t = &mut batch.pending.timeline;
        t.shipment_ids.push(shipment_id);
        t.occurred_ms.push(occurred_ms);
        t.sources.push(source.to_owned());
        t.kinds.push(kind.to_owned());
        t.details.push(detail_json.to_owned());
        true
    }

    /// Sends what the batch saved up and ends it: from here on every read and write goes
    /// to the database. The commit calls it first; so does any write a batch does not
    /// keep (a new shipment, an order's fields, a route).
    pub(super) fn settle(&self) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut *self.batch.borrow_mut()).pending;
        if pending.is_empty() {
            return Ok(());
        }
        let Db::Postgres(pg) = self.tx else { return Ok(()) };
        match pg.run(move |w| Ok(w.with_store(|store| store.write_batch(pending))?))? {
            0 => Ok(()),
            changed => Err(StoreError::Changed(changed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewShipment, Store};

    fn number(text: &str) -> TrackingNumber {
        TrackingNumber::new(text).expect("tracking number")
    }

    fn new_shipment(tracking: &TrackingNumber) -> NewShipment {
        NewShipment {
            tracking_number: tracking.clone(),
            carrier: None,
            order_id: None,
            contacts: Default::default(),
            locale: "en".into(),
            time_zone: "UTC".into(),
        }
    }

    fn shipment(store: &mut Store, tracking: &TrackingNumber) -> i64 {
        let tx = store.transaction().expect("tx");
        let id = tx.insert_shipment(&new_shipment(tracking), 1).expect("insert");
        tx.commit().expect("commit");
        id
    }

    /// One batch as the writer runs it: lock, reconcile two events of one shipment,
    /// add their timeline rows; on PostgreSQL all kept in the batch until the commit.
    fn batch_of_two(
        store: &mut Store,
        id: i64,
        tracking: &TrackingNumber,
        missing: &TrackingNumber,
        commit: bool,
    ) {
        let tx = store.transaction().expect("tx");
        let parcels = BatchParcels {
            numbers: vec![tracking.as_str().into(), missing.as_str().into()],
            ..BatchParcels::default()
        };
        tx.read_batch(parcels, BatchReads::Checked).expect("read");
        assert_eq!(
            tx.shipment_by_tracking(tracking).expect("read").expect("found").milestone,
            Milestone::Created
        );
        assert!(tx.shipment_by_tracking(missing).expect("read").is_none());
        tx.save_reconcile_json(id, Milestone::Nearby, r#"{"n":1}"#, 5).expect("save");
        tx.add_timeline_json(id, 30, "device", "second", "{}").expect("timeline");
        let seen = tx.shipment_by_tracking(tracking).expect("read").expect("found");
        assert_eq!(
            (seen.milestone, seen.reconcile_state.as_deref()),
            (Milestone::Nearby, Some(r#"{"n":1}"#))
        );
        assert_eq!(tx.shipment(id).expect("by id").expect("found").milestone, Milestone::Nearby);
        tx.save_reconcile_json(id, Milestone::Delivered, r#"{"n":2}"#, 6).expect("save");
        tx.add_timeline_json(id, 10, "device", "first", "{}").expect("timeline");
        tx.add_timeline_json(id, 10, "device", "first again", "{}").expect("timeline");
        if commit {
            tx.commit().expect("commit");
        }
    }

    #[test]
    fn a_batch_sees_its_own_saves_and_stores_them_and_its_timeline_only_when_it_commits() {
        let mut store = Store::open_in_memory().expect("open");
        let (tracking, missing) = (number("1Z999AA10123456784"), number("1Z999AA10123456791"));
        let id = shipment(&mut store, &tracking);

        batch_of_two(&mut store, id, &tracking, &missing, false);
        let after = store.shipment_by_tracking(&tracking).expect("read").expect("found");
        assert_eq!((after.milestone, after.reconcile_state), (Milestone::Created, None), "rolled back");
        assert!(store.timeline(id).expect("timeline").is_empty(), "rolled back");

        batch_of_two(&mut store, id, &tracking, &missing, true);
        let after = store.shipment_by_tracking(&tracking).expect("read").expect("found");
        assert_eq!(
            (after.milestone, after.reconcile_state.as_deref()),
            (Milestone::Delivered, Some(r#"{"n":2}"#))
        );
        let kinds: Vec<String> = store.timeline(id).expect("timeline").into_iter().map(|t| t.kind).collect();
        assert_eq!(kinds, ["first", "first again", "second"], "by time, then in the order added");
    }

    #[test]
    fn a_shipment_created_during_a_batch_is_read_from_the_database_after_it() {
        let mut store = Store::open_in_memory().expect("open");
        let (tracking, later) = (number("1Z999AA10123456784"), number("1Z999AA10123456791"));
        let id = shipment(&mut store, &tracking);
        let tx = store.transaction().expect("tx");
        let parcels = BatchParcels {
            numbers: vec![tracking.as_str().into(), later.as_str().into()],
            ..BatchParcels::default()
        };
        tx.read_batch(parcels, BatchReads::Checked).expect("read");
        assert!(tx.shipment_by_tracking(&later).expect("read").is_none());
        tx.add_timeline_json(id, 10, "device", "nearby", "{}").expect("timeline");
        let created = tx.insert_shipment(&new_shipment(&later), 2).expect("insert");
        assert_eq!(tx.shipment_by_tracking(&later).expect("read").expect("found").id, created);
        tx.commit().expect("commit");
        assert_eq!(
            store.timeline(id).expect("timeline").len(),
            1,
            "the row kept before the new shipment is stored"
        );
    }
}
