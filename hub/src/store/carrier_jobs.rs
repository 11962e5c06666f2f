//! Carrier jobs: what the hub owes a carrier aggregator for a shipment (polling ShipEngine,
//! registering with AfterShip), one row per shipment and kind, claimed under a lease.
//!
//! The rows are the durable half of `carrier::jobs`; the decisions (when next, done or
//! failed) are made there, purely, and written back here. Claiming is one `UPDATE ...
//! RETURNING`, never a read followed by a write, so hubs sharing the database never take
//! the same row at once.

use super::db::{OptionalExtension, params};
use doorstep_proto::TrackingNumber;
use serde::Serialize;

use super::{Store, StoreError, StoreTx, corrupt};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Still to do: due at `due_ms` (or claimed until then).
    Pending,
    /// Finished for good (a final carrier status, registered, or no longer needed).
    Done,
    /// Given up: the vendor refused the input, or the shipment grew too old while retrying.
    Failed,
}

impl JobState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "pending" => Ok(Self::Pending),
            "done" => Ok(Self::Done),
            "failed" => Ok(Self::Failed),
            other => Err(corrupt("carrier job state", other)),
        }
    }
}

/// A job as one hub claimed it, with the shipment it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedJob {
    /// The shipment.
    pub shipment_id: i64,
    /// Its parcel.
    pub tracking_number: TrackingNumber,
    /// Its carrier as the order system named it (`UPS`, `usps`), as stored now.
    pub carrier: Option<String>,
    /// When the shipment was created, ms since the Unix epoch.
    pub shipment_created_ms: i64,
    /// Requests made for this job, this one included.
    pub attempts: u32,
    /// Failed attempts in a row before this one.
    pub errors: u32,
    /// Answers in a row that told nothing new (polls).
    pub unchanged: u32,
    /// The carrier's raw status at the last answer (polls).
    pub last_status: Option<String>,
    /// The token the answer must be written back under.
    pub claim: String,
}

/// What to write back after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobUpdate<'a> {
    /// Where the job stands now.
    pub state: JobState,
    /// When it is due next (kept as written for a finished job).
    pub due_ms: i64,
    /// Failed attempts in a row.
    pub errors: u32,
    /// Answers in a row that told nothing new.
    pub unchanged: u32,
    /// The carrier's raw status, when the attempt read one.
    pub last_status: Option<&'a str>,
    /// The attempt's outcome label (`stored`, `rate_limited`, `registered`, ...).
    pub outcome: &'a str,
    /// The vendor's words or id, when there are any worth keeping.
    pub detail: Option<&'a str>,
}

/// A job as stored, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CarrierJobRecord {
    /// `poll` or `register`.
    pub kind: String,
    /// Where it stands.
    pub state: JobState,
    /// Next due (or lease end), ms since the Unix epoch.
    pub due_ms: i64,
    /// Requests made.
    pub attempts: u32,
    /// Failed attempts in a row.
    pub errors: u32,
    /// Answers in a row that told nothing new.
    pub unchanged: u32,
    /// The carrier's raw status at the last answer.
    pub last_status: Option<String>,
    /// The last attempt's outcome.
    pub outcome: Option<String>,
    /// The vendor's message or id.
    pub detail: Option<String>,
}

fn count(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

impl StoreTx<'_> {
    /// Adds a `kind` job, due `first_delay_ms` after its creation, for every shipment
    /// created since the last sweep of this kind whose carrier (trimmed, lower case) is
    /// one of `carriers`, not yet delivered and created at or after `min_created_ms`; then
    /// moves the kind's cursor to the newest shipment. Returns how many jobs were added.
    ///
    /// Shipments are looked at once: one whose carrier is not listed when it is swept is
    /// not picked up later, when the configuration changes.
    pub fn sweep_carrier_jobs(
        &self,
        kind: &str,
        carriers: &[String],
        first_delay_ms: i64,
        min_created_ms: i64,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let names = serde_json::to_string(carriers).map_err(|e| corrupt("carrier names", e))?;
        let sql = format!(
            "INSERT INTO carrier_jobs (shipment_id, kind, due_ms, created_ms, updated_ms)
             SELECT s.id, CAST(?1 AS TEXT), s.created_ms + ?2, CAST(?5 AS BIGINT), ?5 FROM shipments s
             WHERE s.id > coalesce((SELECT shipment_id FROM carrier_job_cursors WHERE kind = ?1), 0)
               AND s.created_ms >= ?4
               AND s.milestone <> 'delivered'
               AND lower(trim(s.carrier)) IN ({}) ON CONFLICT DO NOTHING",
            self.tx.dialect().json_texts(3)
        );
        let added = self.tx.execute(&sql, params![kind, first_delay_ms, names, min_created_ms, now_ms])?;
        self.tx
            .prepare_cached(
                "INSERT INTO carrier_job_cursors (kind, shipment_id)
                 VALUES (?1, (SELECT coalesce(max(id), 0) FROM shipments))
                 ON CONFLICT (kind) DO UPDATE SET shipment_id = excluded.shipment_id",
            )?
            .execute([kind])?;
        Ok(added)
    }

    /// Claims the most overdue pending `kind` job due at `now_ms`: its due time moves to
    /// the end of the lease (`now_ms + lease_ms`) and it carries `claim`, so no other hub
    /// takes it meanwhile; its attempts count this one. `None` when nothing is due.
    pub fn claim_carrier_job(
        &self,
        kind: &str,
        claim: &str,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<Option<ClaimedJob>, StoreError> {
        type Row = (i64, i64, i64, i64, Option<String>);
        // Hubs claiming at once on PostgreSQL each skip the job another is taking; the
        // outer conditions are checked again on the row as it is after a concurrent claim.
        let sql = format!(
            "UPDATE carrier_jobs SET due_ms = CAST(?3 AS BIGINT) + ?4, claim = ?2, attempts = attempts + 1,
                 updated_ms = ?3
             WHERE kind = ?1 AND state = 'pending' AND due_ms <= ?3
               AND shipment_id = (SELECT shipment_id FROM carrier_jobs
                                  WHERE kind = ?1 AND state = 'pending' AND due_ms <= ?3
                                  ORDER BY due_ms LIMIT 1{})
             RETURNING shipment_id, attempts, errors, unchanged, last_status",
            self.tx.dialect().skip_locked()
        );
        let row: Option<Row> = self
            .tx
            .prepare_cached(&sql)?
            .query_row(params![kind, claim, now_ms, lease_ms], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let Some((shipment_id, attempts, errors, unchanged, last_status)) = row else { return Ok(None) };
        let (tracking, carrier, created_ms): (String, Option<String>, i64) = self
            .tx
            .prepare_cached("SELECT tracking_number, carrier, created_ms FROM shipments WHERE id = ?1")?
            .query_row([shipment_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(Some(ClaimedJob {
            shipment_id,
            tracking_number: TrackingNumber::new(tracking).map_err(|e| corrupt("tracking number", e))?,
            carrier,
            shipment_created_ms: created_ms,
            attempts: count(attempts),
            errors: count(errors),
            unchanged: count(unchanged),
            last_status,
            claim: claim.to_owned(),
        }))
    }

    /// Writes an attempt's result back, if `job` is still held under its claim. False when
    /// the lease ran out and another hub took the job meanwhile: its answer counts, not
    /// this one.
    pub fn finish_carrier_job(
        &self,
        kind: &str,
        job: &ClaimedJob,
        update: &JobUpdate<'_>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .tx
            .prepare_cached(
                "UPDATE carrier_jobs SET state = ?4, due_ms = ?5, claim = NULL, errors = ?6, unchanged = ?7,
                     last_status = coalesce(?8, last_status), outcome = ?9, detail = coalesce(?10, detail),
                     updated_ms = ?11
                 WHERE shipment_id = ?1 AND kind = ?2 AND claim = ?3",
            )?
            .execute(params![
                job.shipment_id,
                kind,
                job.claim,
                update.state.as_str(),
                update.due_ms,
                update.errors,
                update.unchanged,
                update.last_status,
                update.outcome,
                update.detail,
                now_ms
            ])?;
        Ok(n == 1)
    }
}

impl Store {
    /// A shipment's `kind` job, if it has one.
    pub fn carrier_job(&self, shipment_id: i64, kind: &str) -> Result<Option<CarrierJobRecord>, StoreError> {
        type Row = (String, String, i64, i64, i64, i64, Option<String>, Option<String>, Option<String>);
        let row: Option<Row> = self
            .conn
            .prepare_cached(
                "SELECT kind, state, due_ms, attempts, errors, unchanged, last_status, outcome, detail
                 FROM carrier_jobs WHERE shipment_id = ?1 AND kind = ?2",
            )?
            .query_row(params![shipment_id, kind], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })
            .optional()?;
        row.map(|(kind, state, due_ms, attempts, errors, unchanged, last_status, outcome, detail)| {
            Ok(CarrierJobRecord {
                kind,
                state: JobState::parse(&state)?,
                due_ms,
                attempts: count(attempts),
                errors: count(errors),
                unchanged: count(unchanged),
                last_status,
                outcome,
                detail,
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::NewShipment;

    fn shipment(tx: &StoreTx<'_>, tracking: &str, carrier: Option<&str>, now_ms: i64) -> i64 {
        let new = NewShipment {
            tracking_number: TrackingNumber::new(tracking).expect("tracking"),
            carrier: carrier.map(str::to_owned),
            order_id: None,
            contacts: BTreeMap::new(),
            locale: "en-US".into(),
            time_zone: "America/New_York".into(),
        };
        tx.insert_shipment(&new, now_ms).expect("shipment")
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn update<'a>(state: JobState, due_ms: i64, outcome: &'a str) -> JobUpdate<'a> {
        JobUpdate { state, due_ms, errors: 0, unchanged: 0, last_status: None, outcome, detail: None }
    }

    #[test]
    fn a_sweep_adds_each_listed_carriers_shipment_once_and_only_new_ones_after() {
        let mut store = Store::open_in_memory().expect("open");
        let tx = store.transaction().expect("tx");
        let ups = shipment(&tx, "1Z999AA10123456784", Some(" UPS "), 1_000);
        shipment(&tx, "9400100000000000000001", Some("dhl"), 1_000);
        shipment(&tx, "NOCARRIER1", None, 1_000);
        assert_eq!(
            tx.sweep_carrier_jobs("poll", &names(&["ups", "usps"]), 60_000, 0, 2_000).expect("sweep"),
            1
        );
        assert_eq!(
            tx.sweep_carrier_jobs("poll", &names(&["ups", "usps"]), 60_000, 0, 2_000).expect("sweep"),
            0
        );
        let usps = shipment(&tx, "9400100000000000000002", Some("USPS"), 3_000);
        // Registration keeps its own cursor.
        assert_eq!(tx.sweep_carrier_jobs("register", &names(&["ups"]), 0, 0, 3_000).expect("sweep"), 1);
        assert_eq!(
            tx.sweep_carrier_jobs("poll", &names(&["ups", "usps"]), 60_000, 0, 4_000).expect("sweep"),
            1
        );
        tx.commit().expect("commit");
        let job = store.carrier_job(ups, "poll").expect("read").expect("job");
        assert_eq!((job.state, job.due_ms, job.attempts), (JobState::Pending, 61_000, 0));
        assert!(store.carrier_job(usps, "poll").expect("read").is_some());
        assert!(store.carrier_job(usps, "register").expect("read").is_none());
    }

    #[test]
    fn shipments_older_than_the_horizon_are_not_swept() {
        let mut store = Store::open_in_memory().expect("open");
        let tx = store.transaction().expect("tx");
        shipment(&tx, "1Z999AA10123456784", Some("ups"), 1_000);
        assert_eq!(tx.sweep_carrier_jobs("poll", &names(&["ups"]), 0, 5_000, 10_000).expect("sweep"), 0);
    }

    #[test]
    fn a_claimed_job_is_not_claimed_again_until_its_lease_ends() {
        let mut store = Store::open_in_memory().expect("open");
        let tx = store.transaction().expect("tx");
        let id = shipment(&tx, "1Z999AA10123456784", Some("ups"), 1_000);
        tx.sweep_carrier_jobs("poll", &names(&["ups"]), 0, 0, 1_000).expect("sweep");
        let job = tx.claim_carrier_job("poll", "hub-a/1", 300_000, 2_000).expect("claim").expect("due");
        assert_eq!((job.shipment_id, job.attempts, job.carrier.as_deref()), (id, 1, Some("ups")));
        assert_eq!(job.tracking_number.as_str(), "1Z999AA10123456784");
        assert!(tx.claim_carrier_job("poll", "hub-b/1", 300_000, 2_001).expect("claim").is_none());
        assert!(tx.claim_carrier_job("register", "hub-b/1", 300_000, 2_001).expect("claim").is_none());
        // Hub A died: after the lease, hub B takes it, and A's late answer is not written.
        let taken = tx.claim_carrier_job("poll", "hub-b/1", 300_000, 302_000).expect("claim").expect("due");
        assert_eq!(taken.attempts, 2);
        assert!(
            !tx.finish_carrier_job("poll", &job, &update(JobState::Done, 0, "stored"), 302_500)
                .expect("write")
        );
        let next = JobUpdate {
            unchanged: 1,
            last_status: Some("IT"),
            ..update(JobState::Pending, 900_000, "stored")
        };
        assert!(tx.finish_carrier_job("poll", &taken, &next, 302_500).expect("write"));
        tx.commit().expect("commit");
        let record = store.carrier_job(id, "poll").expect("read").expect("job");
        assert_eq!(record.last_status.as_deref(), Some("IT"));
        assert_eq!((record.state, record.due_ms, record.unchanged), (JobState::Pending, 900_000, 1));
        assert_eq!(record.outcome.as_deref(), Some("stored"));
    }

    #[test]
    fn finished_jobs_are_never_claimed_and_the_most_overdue_goes_first() {
        let mut store = Store::open_in_memory().expect("open");
        let tx = store.transaction().expect("tx");
        let late = shipment(&tx, "1Z999AA10123456784", Some("ups"), 5_000);
        let early = shipment(&tx, "1Z999AA10123456785", Some("ups"), 1_000);
        tx.sweep_carrier_jobs("register", &names(&["ups"]), 0, 0, 6_000).expect("sweep");
        let first = tx.claim_carrier_job("register", "c1", 1_000, 6_000).expect("claim").expect("due");
        assert_eq!(first.shipment_id, early);
        let done = JobUpdate { detail: Some("as-id-1"), ..update(JobState::Done, 6_000, "registered") };
        assert!(tx.finish_carrier_job("register", &first, &done, 6_000).expect("write"));
        let second = tx.claim_carrier_job("register", "c2", 1_000, 6_000).expect("claim").expect("due");
        assert_eq!(second.shipment_id, late);
        assert!(
            tx.claim_carrier_job("register", "c3", 1_000, 100_000).expect("claim").map(|j| j.shipment_id)
                == Some(late)
        );
    }
}
