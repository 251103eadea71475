//! Function logs and invocation records: lines from guests and from the platform, and one
//! record per finished invocation, batched into the store by one task so the request path
//! never waits on SQLite.

use nubo_store::{InvocationRow, LogLine, Store, now_ms};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Lines buffered between the guests and the store; beyond this, lines are dropped (and
/// counted) rather than slowing invocations down.
const BUFFER: usize = 65_536;
const BATCH: usize = 1024;

enum Msg {
    Line(LogLine),
    Record(InvocationRow),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl LogWriter {
    pub fn start(store: Arc<Store>) -> LogWriter {
        let (tx, rx) = mpsc::channel(BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_batches(store, rx, dropped.clone()));
        LogWriter { tx, dropped }
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

async fn write_batches(store: Arc<Store>, mut rx: mpsc::Receiver<Msg>, dropped: Arc<AtomicU64>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut records = Vec::with_capacity(BATCH);
    let mut waiters = Vec::new();
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
        if !batch.is_empty() {
            let lines = std::mem::take(&mut batch);
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.append_logs(&lines)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("writing logs: {e}"),
                Err(e) => tracing::error!("writing logs: {e}"),
            }
        }
        if !records.is_empty() {
            let rows = std::mem::take(&mut records);
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.append_records(&rows)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("writing invocation records: {e}"),
                Err(e) => tracing::error!("writing invocation records: {e}"),
            }
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
}
