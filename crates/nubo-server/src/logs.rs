//! Function logs and invocation records: lines from guests and from the platform, and one
//! record per finished invocation, batched into the store by one task so the request path
//! never waits on SQLite.

use nubo_store::{InvocationRow, LogLine, Store, now_ms};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Lines buffered between the guests and the store; beyond this, lines are dropped (and
/// counted) rather than slowing invocations down.
const BUFFER: usize = 65_536;
const BATCH: usize = 1024;
/// How often the store is trimmed to its bounds (trimming is a scan, inserting is not).
const TRIM_EVERY: Duration = Duration::from_secs(1);

enum Msg {
    Line(LogLine),
    Record(InvocationRow),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
    /// Bumped after every batch is in the store: followers wake on it instead of polling.
    committed: watch::Receiver<u64>,
}

impl LogWriter {
    pub fn start(store: Arc<Store>) -> LogWriter {
        let (tx, rx) = mpsc::channel(BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        let (committed_tx, committed) = watch::channel(0);
        tokio::spawn(write_batches(store, rx, dropped.clone(), committed_tx));
        LogWriter {
            tx,
            dropped,
            committed,
        }
    }

    /// Where a function's instances write their output lines.
    pub fn sink(&self, function: &str) -> nubo_sandbox::LogFn {
        let (logs, function) = (self.clone(), function.to_string());
        Arc::new(move |r: nubo_sandbox::LogRecord| {
            logs.line(
                &function,
                r.stream,
                Some(&r.instance),
                r.invocation.as_deref(),
                r.line,
            )
        })
    }

    /// Records one line; never blocks.
    pub fn line(
        &self,
        function: &str,
        stream: &str,
        instance: Option<&str>,
        invocation: Option<&str>,
        line: String,
    ) {
        let msg = Msg::Line(LogLine {
            id: 0,
            function: function.to_string(),
            ts: now_ms(),
            stream: stream.to_string(),
            instance: instance.map(String::from),
            invocation: invocation.map(String::from),
            line,
        });
        if self.tx.try_send(msg).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records one finished invocation; never blocks.
    pub fn record(&self, row: InvocationRow) {
        if self.tx.try_send(Msg::Record(row)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until every line sent before this call is in the store.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn write_batches(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<Msg>,
    dropped: Arc<AtomicU64>,
    committed: watch::Sender<u64>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut records = Vec::with_capacity(BATCH);
    let mut waiters = Vec::new();
    let mut last_trim = tokio::time::Instant::now() - TRIM_EVERY;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Gather what is already queued, up to a batch, waiting a moment for more.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        loop {
            match next.take() {
                Some(Msg::Line(l)) => batch.push(l),
                Some(Msg::Record(r)) => records.push(r),
                Some(Msg::Flush(w)) => {
                    waiters.push(w);
                    break;
                }
                None => {}
            }
            if batch.len() >= BATCH || records.len() >= BATCH {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => next = Some(m),
                _ => break,
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(
                "{lost} log lines were dropped: guests wrote faster than the store could keep"
            );
        }
        if !batch.is_empty() || !records.is_empty() {
            let (lines, rows) = (std::mem::take(&mut batch), std::mem::take(&mut records));
            let trim = last_trim.elapsed() >= TRIM_EVERY;
            if trim {
                last_trim = tokio::time::Instant::now();
            }
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.append(&lines, &rows, trim)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("writing logs and invocation records: {e}"),
                Err(e) => tracing::error!("writing logs and invocation records: {e}"),
            }
            committed.send_modify(|n| *n += 1);
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

/// Lines read per store query while following.
const FOLLOW_PAGE: i64 = 1000;
/// How often a follower with nothing new checks that its function still exists.
const FOLLOW_CHECK: Duration = Duration::from_secs(5);

/// A function's log lines after line `after` (and at or after `since`, ms), then every new
/// line as it reaches the store, as newline-delimited JSON. Ends when the function is removed
/// or the client goes away.
pub fn follow(
    store: Arc<Store>,
    logs: &LogWriter,
    function: String,
    after: i64,
    since: i64,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    let committed = logs.committed.clone();
    futures::stream::unfold(
        (store, committed, function, after, false),
        move |(store, mut committed, function, mut after, done)| async move {
            if done {
                return None;
            }
            loop {
                committed.mark_unchanged();
                let (s, f) = (store.clone(), function.clone());
                let read = tokio::task::spawn_blocking(move || {
                    s.logs(&f, after, since, FOLLOW_PAGE, false)
                })
                .await;
                let lines = match read {
                    Ok(Ok(lines)) => lines,
                    Ok(Err(e)) => {
                        let err = std::io::Error::other(format!("reading logs: {e}"));
                        return Some((Err(err), (store, committed, function, after, true)));
                    }
                    Err(e) => {
                        let err = std::io::Error::other(format!("reading logs: {e}"));
                        return Some((Err(err), (store, committed, function, after, true)));
                    }
                };
                if let Some(last) = lines.last() {
                    after = last.id;
                    let mut out = Vec::with_capacity(lines.len() * 128);
                    for l in &lines {
                        // A log line always serialises: it is strings and numbers.
                        if serde_json::to_writer(&mut out, l).is_ok() {
                            out.push(b'\n');
                        }
                    }
                    let chunk = bytes::Bytes::from(out);
                    return Some((Ok(chunk), (store, committed, function, after, false)));
                }
                match tokio::time::timeout(FOLLOW_CHECK, committed.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return None, // the writer is gone: the server is stopping
                    Err(_) => {
                        let (s, f) = (store.clone(), function.clone());
                        let exists = tokio::task::spawn_blocking(move || s.function(&f))
                            .await
                            .ok()
                            .and_then(|r| r.ok())
                            .flatten()
                            .is_some();
                        if !exists {
                            return None;
                        }
                    }
                }
            }
        },
    )
}
