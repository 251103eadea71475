//! Durable async invocations: the queue rows, their attempts and results, the dead-letter list,
//! and the last fire time of each cron schedule.
//!
//! An invocation is `queued` (due at `next_at`), `running` (claimed by a worker), `succeeded`
//! or `dead` (out of attempts or too old). A `running` row whose worker died with the server is
//! queued again at start: delivery is at least once.

use crate::{Store, StoreError};
use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

/// What a trigger hands to the queue.
#[derive(Debug, Clone)]
pub struct NewInvocation {
    pub id: String,
    pub function: String,
    /// A pinned revision (`Qualifier`); `None` runs whatever is current at dispatch.
    pub revision: Option<i64>,
    /// `http` (a request to `/fn` or a route), `event` (a raw payload: Lambda `Event`) or
    /// `cron`.
    pub trigger: String,
    /// For `http`: the request line and headers as JSON; `{}` otherwise.
    pub request: String,
    pub payload: Vec<u8>,
    /// 1 + the function's `async.retries`.
    pub max_attempts: u32,
    /// Past this time (ms) it is not tried again (`async.max_age`).
    pub expires_at: i64,
    pub now: i64,
}

/// One stored invocation.
#[derive(Debug, Clone, Serialize)]
pub struct InvocationRecord {
    pub id: String,
    pub function: String,
    pub revision: Option<i64>,
    pub trigger: String,
    #[serde(skip)]
    pub request: String,
    #[serde(skip)]
    pub payload: Vec<u8>,
    pub status: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub expires_at: i64,
    pub next_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The last attempt's HTTP status (Lambda payload invocations: 200, or 500 on a function
    /// error).
    pub result_status: Option<u16>,
    #[serde(skip)]
    pub result: Option<Vec<u8>>,
    pub error: Option<String>,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded {
        status: u16,
        body: Vec<u8>,
    },
    /// Failed; try again at `at` (ms), or dead-letter it when out of attempts or too old.
    Failed {
        status: Option<u16>,
        body: Vec<u8>,
        error: String,
        at: i64,
    },
    /// Not run (the function was at its limit): try again at `at` without using an attempt.
    Throttled {
        at: i64,
    },
}

/// One write of the queue; a batch of them commits in one transaction (group commit).
#[derive(Debug, Clone)]
pub enum QueueWrite {
    Enqueue(NewInvocation),
    /// Enqueues `invocation` only if `tick` (ms) is later than the schedule's last fire, and
    /// records `tick` as the last fire: a tick never fires twice.
    CronFire {
        schedule: String,
        tick: i64,
        invocation: NewInvocation,
    },
    Finish {
        id: String,
        outcome: Outcome,
        now: i64,
    },
}

/// Finished invocations kept, oldest trimmed first.
pub const FINISHED_KEPT: i64 = 100_000;

const COLUMNS: &str = "id, function, revision, trigger, request, payload, status, attempts, \
    max_attempts, expires_at, next_at, created_at, updated_at, result_status, result, error";

fn record(r: &Row<'_>) -> rusqlite::Result<InvocationRecord> {
    Ok(InvocationRecord {
        id: r.get(0)?,
        function: r.get(1)?,
        revision: r.get(2)?,
        trigger: r.get(3)?,
        request: r.get(4)?,
        payload: r.get(5)?,
        status: r.get(6)?,
        attempts: r.get(7)?,
        max_attempts: r.get(8)?,
        expires_at: r.get(9)?,
        next_at: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
        result_status: r.get(13)?,
        result: r.get(14)?,
        error: r.get(15)?,
    })
}

fn insert(tx: &rusqlite::Transaction<'_>, n: &NewInvocation) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO invocations (id, function, revision, trigger, request, payload, status,
         attempts, max_attempts, expires_at, max_age_ms, next_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', 0, ?7, ?8, ?8 - ?9, ?9, ?9, ?9)",
    )?
    .execute(params![
        n.id,
        n.function,
        n.revision,
        n.trigger,
        n.request,
        n.payload,
        n.max_attempts,
        n.expires_at,
        n.now
    ])?;
    Ok(())
}

impl Store {
    /// Applies a batch of queue writes in one transaction (one fsync). For each write: whether
    /// it took effect (a cron tick already fired does not; a finish of an unknown id does not).
    pub fn queue_write(&self, writes: &[QueueWrite]) -> Result<Vec<bool>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut applied = Vec::with_capacity(writes.len());
        for w in writes {
            applied.push(match w {
                QueueWrite::Enqueue(n) => {
                    insert(&tx, n)?;
                    true
                }
                QueueWrite::CronFire {
                    schedule,
                    tick,
                    invocation,
                } => {
                    let last: Option<i64> = tx
                        .prepare_cached(
                            "SELECT last_fire FROM cron_fires WHERE function = ?1 AND schedule = ?2",
                        )?
                        .query_row(params![invocation.function, schedule], |r| r.get(0))
                        .optional()?;
                    if last.is_some_and(|l| l >= *tick) {
                        false
                    } else {
                        tx.prepare_cached(
                            "INSERT INTO cron_fires (function, schedule, last_fire) VALUES (?1, ?2, ?3)
                             ON CONFLICT (function, schedule) DO UPDATE SET last_fire = excluded.last_fire",
                        )?
                        .execute(params![invocation.function, schedule, tick])?;
                        insert(&tx, invocation)?;
                        true
                    }
                }
                QueueWrite::Finish { id, outcome, now } => finish(&tx, id, outcome, *now)?,
            });
        }
        tx.commit()?;
        Ok(applied)
    }

    /// Claims up to `limit` invocations due by `now`, oldest due first: they become `running`
    /// with one more attempt.
    pub fn claim_due(&self, now: i64, limit: usize) -> Result<Vec<InvocationRecord>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let claimed = {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE invocations SET status = 'running', attempts = attempts + 1, updated_at = ?1
                 WHERE id IN (SELECT id FROM invocations WHERE status = 'queued' AND next_at <= ?1
                              ORDER BY next_at LIMIT ?2)
                 RETURNING {COLUMNS}"
            ))?;
            let rows = stmt.query_map(params![now, limit as i64], record)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(claimed)
    }

    /// At start: invocations that were running when the server stopped are queued again,
    /// unless that was their last attempt (one that takes the server down must not run at
    /// every start).
    pub fn requeue_running(&self, now: i64) -> Result<usize, StoreError> {
        Ok(self.conn().execute(
            "UPDATE invocations SET
               status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END,
               error = CASE WHEN attempts >= max_attempts
                       THEN 'the server stopped during the last attempt' ELSE error END,
               next_at = ?1, updated_at = ?1
             WHERE status = 'running'",
            [now],
        )?)
    }

    /// When the next queued invocation is due (ms), if any is queued.
    pub fn next_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.conn().query_row(
            "SELECT MIN(next_at) FROM invocations WHERE status = 'queued'",
            [],
            |r| r.get(0),
        )?)
    }

    pub fn invocation(&self, id: &str) -> Result<Option<InvocationRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM invocations WHERE id = ?1"),
                [id],
                record,
            )
            .optional()?)
    }

    /// A function's invocations in `status`, newest first.
    pub fn invocations(
        &self,
        function: &str,
        status: &str,
        limit: usize,
    ) -> Result<Vec<InvocationRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM invocations WHERE function = ?1 AND status = ?2
             ORDER BY created_at DESC, id DESC LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![function, status, limit as i64], record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Queued and running invocations per function.
    pub fn queue_depths(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT function, COUNT(*) FROM invocations WHERE status IN ('queued', 'running')
             GROUP BY function",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Moves dead-lettered invocations of `function` (all, or those in `ids`) back to the queue
    /// with fresh attempts and a fresh `max_age`. Returns their ids.
    pub fn replay(
        &self,
        function: &str,
        ids: &[String],
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let ids = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
        let replayed = {
            // A fresh `max_age` from now: `max_age_ms` is the window the invocation was
            // accepted with.
            let mut stmt = tx.prepare_cached(
                "UPDATE invocations SET status = 'queued', attempts = 0, next_at = ?2,
                     expires_at = ?2 + max_age_ms, updated_at = ?2
                 WHERE function = ?1 AND status = 'dead'
                   AND (json_array_length(?3) = 0 OR id IN (SELECT value FROM json_each(?3)))
                 RETURNING id",
            )?;
            let rows = stmt.query_map(params![function, now, ids], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(replayed)
    }

    /// Trims finished invocations beyond [`FINISHED_KEPT`], oldest first.
    pub fn trim_invocations(&self) -> Result<usize, StoreError> {
        Ok(self.conn().execute(
            "DELETE FROM invocations WHERE status IN ('succeeded', 'dead') AND rowid <=
             (SELECT rowid FROM invocations WHERE status IN ('succeeded', 'dead')
              ORDER BY rowid DESC LIMIT 1 OFFSET ?1)",
            [FINISHED_KEPT],
        )?)
    }

    /// When a cron schedule of `function` last fired (ms).
    pub fn cron_last_fire(
        &self,
        function: &str,
        schedule: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT last_fire FROM cron_fires WHERE function = ?1 AND schedule = ?2",
                params![function, schedule],
                |r| r.get(0),
            )
            .optional()?)
    }
}

fn finish(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    outcome: &Outcome,
    now: i64,
) -> rusqlite::Result<bool> {
    let n = match outcome {
        // The payload is not needed once it succeeded (only dead letters are replayed).
        Outcome::Succeeded { status, body } => tx
            .prepare_cached(
                "UPDATE invocations SET status = 'succeeded', result_status = ?2, result = ?3,
                 error = NULL, payload = X'', request = '{}', updated_at = ?4
                 WHERE id = ?1 AND status = 'running'",
            )?
            .execute(params![id, status, body, now])?,
        Outcome::Failed {
            status,
            body,
            error,
            at,
        } => tx
            .prepare_cached(
                "UPDATE invocations SET
                   status = CASE WHEN attempts >= max_attempts OR ?5 > expires_at
                            THEN 'dead' ELSE 'queued' END,
                   result_status = ?2, result = ?3, error = ?4, next_at = ?5, updated_at = ?6
                 WHERE id = ?1 AND status = 'running'",
            )?
            .execute(params![id, status, body, error, at, now])?,
        Outcome::Throttled { at } => tx
            .prepare_cached(
                "UPDATE invocations SET
                   status = CASE WHEN ?2 > expires_at THEN 'dead' ELSE 'queued' END,
                   attempts = attempts - 1, next_at = ?2, updated_at = ?3,
                   error = CASE WHEN ?2 > expires_at
                           THEN 'max_age passed while the function was at its limit'
                           ELSE error END
                 WHERE id = ?1 AND status = 'running'",
            )?
            .execute(params![id, at, now])?,
    };
    Ok(n > 0)
}
