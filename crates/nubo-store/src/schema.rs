//! The schema, as an append-only list of migrations keyed by `PRAGMA user_version`.

use rusqlite::Connection;

/// Each entry moves the schema from version `i` to `i + 1`. Never edit a released entry:
/// append a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE projects (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE TABLE functions (
    name TEXT PRIMARY KEY,
    project TEXT NOT NULL REFERENCES projects(name),
    current_revision INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX functions_by_project ON functions(project);
CREATE TABLE revisions (
    function TEXT NOT NULL,
    number INTEGER NOT NULL,
    kind TEXT NOT NULL,
    digest TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (function, number)
);
CREATE TABLE routes (
    path TEXT NOT NULL,
    methods TEXT NOT NULL,
    function TEXT NOT NULL,
    project TEXT NOT NULL
);
CREATE INDEX routes_by_project ON routes(project);
CREATE TABLE deployments (
    id INTEGER PRIMARY KEY,
    project TEXT NOT NULL,
    manifest TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE logs (
    id INTEGER PRIMARY KEY,
    function TEXT NOT NULL,
    ts INTEGER NOT NULL,
    stream TEXT NOT NULL,
    instance TEXT,
    invocation TEXT,
    line TEXT NOT NULL
);
CREATE INDEX logs_by_function ON logs(function, id);
"#,
    r#"
CREATE TABLE invocations (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    revision INTEGER,
    trigger TEXT NOT NULL,
    request TEXT NOT NULL,
    payload BLOB NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    max_age_ms INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    result_status INTEGER,
    result BLOB,
    error TEXT
);
CREATE INDEX invocations_due ON invocations(status, next_at);
CREATE INDEX invocations_by_function ON invocations(function, status, created_at);
CREATE TABLE cron_fires (
    function TEXT NOT NULL,
    schedule TEXT NOT NULL,
    last_fire INTEGER NOT NULL,
    PRIMARY KEY (function, schedule)
);
"#,
    r#"
CREATE TABLE records (
    id TEXT NOT NULL,
    function TEXT NOT NULL,
    project TEXT NOT NULL,
    revision INTEGER NOT NULL,
    instance TEXT,
    start_ms INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    status INTEGER NOT NULL,
    mode TEXT,
    trigger TEXT NOT NULL,
    memory_mb INTEGER NOT NULL
);
CREATE INDEX records_by_function ON records(function, start_ms);
CREATE INDEX records_by_time ON records(start_ms);
"#,
    // CPU time charged to an invocation (microseconds); NULL where it is not measured.
    "ALTER TABLE records ADD COLUMN cpu_us INTEGER;",
];

pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
