//! The schema, as an append-only list of migrations keyed by `PRAGMA user_version`.

use rusqlite::Connection;

/// Each entry moves the schema from version `i` to `i + 1`. Never edit a released entry:
/// append a new one.
const MIGRATIONS: &[&str] = &[r#"
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
"#];

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
