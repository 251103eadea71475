//! The node's durable state: an embedded SQLite database (WAL) and a content-addressed blob
//! directory under the data directory.
//!
//! It owns the schema and its migrations, and the rules that make a deploy atomic: every
//! revision and route of one deploy is committed in one transaction, or nothing is. It knows
//! nothing of HTTP or sandboxes; all calls are blocking and meant for a blocking thread (the
//! request path never waits on them: the server keeps what it needs in memory).

mod blobs;
mod invocations;
mod records;
mod schema;

pub use blobs::{BlobDir, BlobWriter, CommitError, Digest};
pub use invocations::{FINISHED_KEPT, InvocationRecord, NewInvocation, Outcome, QueueWrite};
pub use records::{InvocationRow, RECORDS_KEPT, RECORDS_MAX_AGE_MS, Usage};

use nubo_manifest::{FunctionSpec, Route, routes_overlap};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("stored revision of {function} is unreadable: {source}")]
    Corrupt {
        function: String,
        source: serde_json::Error,
    },
}

/// Why a deploy was refused; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("function {function} belongs to project {owner}; function names are unique on a node")]
    FunctionTaken { function: String, owner: String },
    #[error("route {path} of function {function} is already routed to {other} (project {project})")]
    RouteTaken {
        path: String,
        function: String,
        other: String,
        project: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for DeployError {
    fn from(e: rusqlite::Error) -> Self {
        DeployError::Store(e.into())
    }
}

/// A function as the store knows it, with its current revision.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionRecord {
    pub name: String,
    pub project: String,
    pub revision: RevisionRecord,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RevisionRecord {
    pub function: String,
    pub number: i64,
    pub digest: String,
    pub spec: FunctionSpec,
    pub created_at: i64,
}

/// One function of a deploy: its artifact and its spec (whose `component` names the artifact).
#[derive(Debug, Clone)]
pub struct PlannedFunction {
    pub name: String,
    pub digest: String,
    pub spec: FunctionSpec,
}

#[derive(Debug, Clone)]
pub struct DeployPlan {
    pub project: String,
    pub manifest: String,
    pub functions: Vec<PlannedFunction>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeployedFunction {
    pub name: String,
    pub revision: i64,
    /// False when the function was already deployed exactly so: no revision was created.
    pub changed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeployOutcome {
    pub id: i64,
    pub project: String,
    pub functions: Vec<DeployedFunction>,
    /// Functions of the project that the manifest no longer names.
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub id: i64,
    pub function: String,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    /// `stdout`, `stderr` or `nubo` (lines the platform writes about the function).
    pub stream: String,
    pub instance: Option<String>,
    pub invocation: Option<String>,
    pub line: String,
}

/// Log lines kept per function; older ones are trimmed as new ones arrive.
pub const LOG_LINES_PER_FUNCTION: i64 = 20_000;
/// Log lines older than this (ms) are trimmed as new ones arrive.
pub const LOG_MAX_AGE_MS: i64 = 7 * 24 * 3600 * 1000;

pub struct Store {
    conn: Mutex<Connection>,
    pub blobs: BlobDir,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) `<dir>/nubo.db` and `<dir>/blobs`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut conn = Connection::open(dir.join("nubo.db"))?;
        // WAL: readers never block the writer. synchronous=FULL: an acknowledged deploy
        // survives power loss, not just a crash; deploys are rare so the fsync is cheap.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&mut conn)?;
        let blobs = BlobDir::open(&dir.join("blobs")).map_err(io(&dir.join("blobs")))?;
        Ok(Store {
            conn: Mutex::new(conn),
            blobs,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits a deploy in one transaction: all of it or none of it.
    pub fn apply_deploy(&self, plan: &DeployPlan) -> Result<DeployOutcome, DeployError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();

        for f in &plan.functions {
            let owner: Option<String> = tx
                .query_row(
                    "SELECT project FROM functions WHERE name = ?1",
                    [&f.name],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(owner) = owner.filter(|o| o != &plan.project) {
                return Err(DeployError::FunctionTaken {
                    function: f.name.clone(),
                    owner,
                });
            }
        }
        let others = routes_of_other_projects(&tx, &plan.project)?;
        for f in &plan.functions {
            for r in &f.spec.routes {
                if let Some((_, other, project)) =
                    others.iter().find(|(o, _, _)| routes_overlap(o, r))
                {
                    return Err(DeployError::RouteTaken {
                        path: r.path.clone(),
                        function: f.name.clone(),
                        other: other.clone(),
                        project: project.clone(),
                    });
                }
            }
        }

        tx.execute(
            "INSERT INTO projects (name, created_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
            params![plan.project, now],
        )?;
        let mut functions = Vec::new();
        for f in &plan.functions {
            let spec = serde_json::to_string(&f.spec).expect("specs serialize");
            let current: Option<(i64, String, String)> = tx
                .query_row(
                    "SELECT r.number, r.digest, r.spec FROM functions f
                     JOIN revisions r ON r.function = f.name AND r.number = f.current_revision
                     WHERE f.name = ?1",
                    [&f.name],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            match current {
                Some((number, digest, old)) if digest == f.digest && old == spec => {
                    functions.push(DeployedFunction {
                        name: f.name.clone(),
                        revision: number,
                        changed: false,
                    });
                }
                current => {
                    let last: i64 = tx.query_row(
                        "SELECT COALESCE(MAX(number), 0) FROM revisions WHERE function = ?1",
                        [&f.name],
                        |r| r.get(0),
                    )?;
                    let number = last + 1;
                    tx.execute(
                        "INSERT INTO revisions (function, number, kind, digest, spec, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![f.name, number, f.spec.kind.as_str(), f.digest, spec, now],
                    )?;
                    if current.is_some() {
                        tx.execute(
                            "UPDATE functions SET current_revision = ?2, updated_at = ?3 WHERE name = ?1",
                            params![f.name, number, now],
                        )?;
                    } else {
                        tx.execute(
                            "INSERT INTO functions (name, project, current_revision, created_at, updated_at)
                             VALUES (?1, ?2, ?3, ?4, ?4)",
                            params![f.name, plan.project, number, now],
                        )?;
                    }
                    functions.push(DeployedFunction {
                        name: f.name.clone(),
                        revision: number,
                        changed: true,
                    });
                }
            }
        }

        let mut removed = Vec::new();
        {
            let mut stmt =
                tx.prepare("SELECT name FROM functions WHERE project = ?1 ORDER BY name")?;
            let names = stmt.query_map([&plan.project], |r| r.get::<_, String>(0))?;
            for name in names {
                let name = name?;
                if !plan.functions.iter().any(|f| f.name == name) {
                    removed.push(name);
                }
            }
        }
        for name in &removed {
            delete_function(&tx, name)?;
        }

        tx.execute("DELETE FROM routes WHERE project = ?1", [&plan.project])?;
        for f in &plan.functions {
            for r in &f.spec.routes {
                tx.execute(
                    "INSERT INTO routes (path, methods, function, project) VALUES (?1, ?2, ?3, ?4)",
                    params![r.path, r.methods.join(","), f.name, plan.project],
                )?;
            }
        }
        tx.execute(
            "INSERT INTO deployments (project, manifest, created_at) VALUES (?1, ?2, ?3)",
            params![plan.project, plan.manifest, now],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(DeployOutcome {
            id,
            project: plan.project.clone(),
            functions,
            removed,
        })
    }

    /// Every function with its current revision, in name order.
    pub fn functions(&self) -> Result<Vec<FunctionRecord>, StoreError> {
        self.query_functions("", [])
    }

    pub fn function(&self, name: &str) -> Result<Option<FunctionRecord>, StoreError> {
        Ok(self.query_functions("WHERE f.name = ?1", [name])?.pop())
    }

    fn query_functions<P: rusqlite::Params>(
        &self,
        filter: &str,
        p: P,
    ) -> Result<Vec<FunctionRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT f.name, f.project, f.created_at, f.updated_at, r.number, r.digest, r.spec, r.created_at
             FROM functions f JOIN revisions r ON r.function = f.name AND r.number = f.current_revision
             {filter} ORDER BY f.name"
        ))?;
        let rows = stmt.query_map(p, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, project, created_at, updated_at, number, digest, spec, rev_at) = row?;
            let spec = parse_spec(&name, &spec)?;
            out.push(FunctionRecord {
                revision: RevisionRecord {
                    function: name.clone(),
                    number,
                    digest,
                    spec,
                    created_at: rev_at,
                },
                name,
                project,
                created_at,
                updated_at,
            });
        }
        Ok(out)
    }

    /// All revisions of a function, oldest first.
    pub fn revisions(&self, function: &str) -> Result<Vec<RevisionRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT number, digest, spec, created_at FROM revisions WHERE function = ?1 ORDER BY number",
        )?;
        let rows = stmt.query_map([function], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (number, digest, spec, created_at) = row?;
            out.push(RevisionRecord {
                function: function.to_string(),
                number,
                digest,
                spec: parse_spec(function, &spec)?,
                created_at,
            });
        }
        Ok(out)
    }

    /// Removes a function with its revisions, routes and logs. False when there was none.
    pub fn remove_function(&self, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existed = delete_function(&tx, name)?;
        tx.commit()?;
        Ok(existed)
    }

    /// Appends log lines and invocation records in one transaction (one fsync). With `trim`,
    /// also bounds the store: each touched function to [`LOG_LINES_PER_FUNCTION`] lines, no
    /// line older than [`LOG_MAX_AGE_MS`], and the records likewise; trimming costs a scan of
    /// a function's newest lines, so writers ask for it about once a second, not per batch.
    pub fn append(
        &self,
        lines: &[LogLine],
        records: &[InvocationRow],
        trim: bool,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO logs (function, ts, stream, instance, invocation, line) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for l in lines {
                insert.execute(params![
                    l.function,
                    l.ts,
                    l.stream,
                    l.instance,
                    l.invocation,
                    l.line
                ])?;
            }
        }
        records::insert(&tx, records)?;
        if trim {
            let mut touched: Vec<&str> = lines.iter().map(|l| l.function.as_str()).collect();
            touched.sort_unstable();
            touched.dedup();
            for f in touched {
                tx.execute(
                    "DELETE FROM logs WHERE function = ?1 AND id <= (SELECT id FROM logs
                     WHERE function = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                    params![f, LOG_LINES_PER_FUNCTION],
                )?;
            }
            // Ids follow time, so the old lines are a prefix: the scan stops at the first
            // young one instead of reading every line.
            tx.execute(
                "DELETE FROM logs WHERE id < COALESCE(
                    (SELECT id FROM logs WHERE ts >= ?1 ORDER BY id LIMIT 1),
                    (SELECT MAX(id) + 1 FROM logs))",
                [now_ms() - LOG_MAX_AGE_MS],
            )?;
            records::trim(&tx)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Log lines of a function with an id above `after` and a time at or after `since` (ms),
    /// oldest first, at most `limit`; with `tail`, the newest `limit` lines instead.
    pub fn logs(
        &self,
        function: &str,
        after: i64,
        since: i64,
        limit: i64,
        tail: bool,
    ) -> Result<Vec<LogLine>, StoreError> {
        let conn = self.conn();
        let sql = if tail {
            "SELECT * FROM (SELECT id, function, ts, stream, instance, invocation, line FROM logs
             WHERE function = ?1 AND id > ?2 AND ts >= ?4 ORDER BY id DESC LIMIT ?3) ORDER BY id"
        } else {
            "SELECT id, function, ts, stream, instance, invocation, line FROM logs
             WHERE function = ?1 AND id > ?2 AND ts >= ?4 ORDER BY id LIMIT ?3"
        };
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params![function, after, limit, since], |r| {
            Ok(LogLine {
                id: r.get(0)?,
                function: r.get(1)?,
                ts: r.get(2)?,
                stream: r.get(3)?,
                instance: r.get(4)?,
                invocation: r.get(5)?,
                line: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn parse_spec(function: &str, json: &str) -> Result<FunctionSpec, StoreError> {
    serde_json::from_str(json).map_err(|source| StoreError::Corrupt {
        function: function.to_string(),
        source,
    })
}

fn delete_function(tx: &rusqlite::Transaction<'_>, name: &str) -> Result<bool, rusqlite::Error> {
    tx.execute("DELETE FROM routes WHERE function = ?1", [name])?;
    tx.execute("DELETE FROM revisions WHERE function = ?1", [name])?;
    tx.execute("DELETE FROM logs WHERE function = ?1", [name])?;
    tx.execute("DELETE FROM cron_fires WHERE function = ?1", [name])?;
    Ok(tx.execute("DELETE FROM functions WHERE name = ?1", [name])? > 0)
}

fn routes_of_other_projects(
    tx: &rusqlite::Transaction<'_>,
    project: &str,
) -> Result<Vec<(Route, String, String)>, rusqlite::Error> {
    let mut stmt =
        tx.prepare("SELECT path, methods, function, project FROM routes WHERE project != ?1")?;
    let rows = stmt.query_map([project], |r| {
        let methods: String = r.get(1)?;
        Ok((
            Route {
                path: r.get(0)?,
                methods: methods
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            },
            r.get(2)?,
            r.get(3)?,
        ))
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests;
