//! Invocation records (one row per finished invocation) and the usage computed from them, so
//! that usage always reconciles with the records it is the sum of.

use crate::{Store, StoreError, now_ms};
use rusqlite::{Transaction, params};
use serde::Serialize;

/// One finished invocation.
#[derive(Debug, Clone, Serialize)]
pub struct InvocationRow {
    pub id: String,
    pub function: String,
    pub project: String,
    pub revision: i64,
    pub instance: Option<String>,
    /// Milliseconds since the epoch.
    pub start_ms: i64,
    pub duration_us: i64,
    pub status: u16,
    /// How the serving instance started for this invocation (`warm`, `new`, `fork`, `thaw`).
    pub mode: Option<String>,
    /// `http`, `async`, `cron` or `lambda-api`.
    pub trigger: String,
    /// The memory limit the invocation ran under.
    pub memory_mb: i64,
    /// CPU time charged to this invocation: for wasm the time the guest ran; for process and
    /// lambda instances the cgroup CPU the instance used since its previous invocation ended
    /// (start-up included), so the records of an instance add up to all the CPU it used.
    pub cpu_us: Option<i64>,
}

/// Usage of one function (or project) over a window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Usage {
    pub name: String,
    pub invocations: i64,
    /// Memory limit (GB) × duration, the duration rounded up to whole milliseconds.
    pub gb_seconds: f64,
    /// Invocations that answered 500 or more.
    pub errors: i64,
    /// CPU time charged to the invocations (see [`InvocationRow::cpu_us`]).
    pub cpu_seconds: f64,
}

/// Records kept: the newest this many, and none older than [`RECORDS_MAX_AGE_MS`].
pub const RECORDS_KEPT: i64 = 2_000_000;
pub const RECORDS_MAX_AGE_MS: i64 = 30 * 24 * 3600 * 1000;

/// GB-seconds of one record, as SQL over its columns (1 ms granularity, rounded up).
const GB_SECONDS: &str = "memory_mb / 1024.0 * ((duration_us + 999) / 1000) / 1000.0";

/// Inserts records inside the caller's transaction.
pub(crate) fn insert(tx: &Transaction, rows: &[InvocationRow]) -> Result<(), StoreError> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO records (id, function, project, revision, instance, start_ms,
         duration_us, status, mode, trigger, memory_mb, cpu_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    for r in rows {
        insert.execute(params![
            r.id,
            r.function,
            r.project,
            r.revision,
            r.instance,
            r.start_ms,
            r.duration_us,
            r.status,
            r.mode,
            r.trigger,
            r.memory_mb,
            r.cpu_us
        ])?;
    }
    Ok(())
}

/// Bounds the records by count and age.
pub(crate) fn trim(tx: &Transaction) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM records WHERE start_ms < ?1",
        [now_ms() - RECORDS_MAX_AGE_MS],
    )?;
    tx.execute(
        "DELETE FROM records WHERE rowid <= (SELECT MAX(rowid) FROM records) - ?1",
        [RECORDS_KEPT],
    )?;
    Ok(())
}

impl Store {
    /// A function's records since `since` (ms), newest first.
    pub fn records(
        &self,
        function: &str,
        since: i64,
        limit: i64,
    ) -> Result<Vec<InvocationRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, function, project, revision, instance, start_ms, duration_us, status,
                    mode, trigger, memory_mb, cpu_us
             FROM records WHERE function = ?1 AND start_ms >= ?2
             ORDER BY start_ms DESC, rowid DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![function, since, limit], |r| {
            Ok(InvocationRow {
                id: r.get(0)?,
                function: r.get(1)?,
                project: r.get(2)?,
                revision: r.get(3)?,
                instance: r.get(4)?,
                start_ms: r.get(5)?,
                duration_us: r.get(6)?,
                status: r.get(7)?,
                mode: r.get(8)?,
                trigger: r.get(9)?,
                memory_mb: r.get(10)?,
                cpu_us: r.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Usage since `since` (ms) per function and per project, from the records.
    pub fn usage(&self, since: i64) -> Result<(Vec<Usage>, Vec<Usage>), StoreError> {
        let conn = self.conn();
        let query = |by: &str| -> Result<Vec<Usage>, StoreError> {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {by}, COUNT(*), SUM({GB_SECONDS}), SUM(status >= 500),
                        COALESCE(SUM(cpu_us), 0) / 1e6
                 FROM records WHERE start_ms >= ?1 GROUP BY {by} ORDER BY {by}"
            ))?;
            let rows = stmt.query_map([since], |r| {
                Ok(Usage {
                    name: r.get(0)?,
                    invocations: r.get(1)?,
                    gb_seconds: r.get(2)?,
                    errors: r.get(3)?,
                    cpu_seconds: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        };
        Ok((query("function")?, query("project")?))
    }
}
