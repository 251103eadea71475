//! The durable queue of async invocations, behind the one interface the rest of the server
//! uses ([`InvocationQueue`]): SQLite on one node ([`SqliteQueue`]); a NATS JetStream work
//! queue is the intended second implementation for a cluster.

use async_trait::async_trait;
use nubo_store::{InvocationRecord, NewInvocation, Outcome, QueueWrite, Store};
use std::sync::Arc;
use tokio::sync::{Notify, oneshot};

#[derive(Debug, thiserror::Error)]
#[error("the invocation queue failed: {0}")]
pub struct QueueError(pub String);

#[async_trait]
pub trait InvocationQueue: Send + Sync {
    /// Stores an invocation; it is durable when this returns.
    async fn enqueue(&self, invocation: NewInvocation) -> Result<(), QueueError>;
    /// Stores a cron tick's invocation unless that tick of `schedule` already fired.
    async fn enqueue_tick(
        &self,
        schedule: String,
        tick: i64,
        invocation: NewInvocation,
    ) -> Result<bool, QueueError>;
    /// Takes up to `limit` due invocations for a worker (each one attempt more).
    async fn claim(&self, limit: usize) -> Result<Vec<InvocationRecord>, QueueError>;
    /// Records how an attempt ended (success, retry later, dead letter).
    async fn finish(&self, id: String, outcome: Outcome) -> Result<(), QueueError>;
    /// When the next queued invocation is due (ms since the epoch).
    async fn next_due(&self) -> Result<Option<i64>, QueueError>;
    async fn get(&self, id: String) -> Result<Option<InvocationRecord>, QueueError>;
    /// A function's invocations in one state (`dead` is the dead-letter list), newest first.
    async fn list(
        &self,
        function: String,
        status: &'static str,
        limit: usize,
    ) -> Result<Vec<InvocationRecord>, QueueError>;
    /// Queues dead-lettered invocations again (all of the function's, or `ids`).
    async fn replay(&self, function: String, ids: Vec<String>) -> Result<Vec<String>, QueueError>;
    /// When a cron schedule last fired.
    async fn last_fire(
        &self,
        function: String,
        schedule: String,
    ) -> Result<Option<i64>, QueueError>;
    /// Queued and running invocations per function.
    async fn depths(&self) -> Result<Vec<(String, i64)>, QueueError>;
    /// Drops the oldest finished invocations beyond what is kept.
    async fn trim(&self) -> Result<usize, QueueError>;
    /// Notified when work arrives (an enqueue or a replay).
    fn arrivals(&self) -> &Notify;
}

type Reply = oneshot::Sender<Result<bool, String>>;

/// The queue in the node's SQLite store. Writes go through one writer thread that commits
/// everything waiting in one transaction: one fsync covers a burst of enqueues (group commit),
/// and each caller still hears back only once its write is on disk.
pub struct SqliteQueue {
    store: Arc<Store>,
    writes: std::sync::mpsc::Sender<(QueueWrite, Reply)>,
    arrivals: Notify,
}

/// Writes committed together at most.
const GROUP_MAX: usize = 512;

impl SqliteQueue {
    /// Queues again what was running when the server last stopped, and starts the writer.
    pub fn open(store: Arc<Store>) -> Result<SqliteQueue, QueueError> {
        let requeued = store
            .requeue_running(nubo_store::now_ms())
            .map_err(|e| QueueError(e.to_string()))?;
        if requeued > 0 {
            tracing::info!(
                "{requeued} async invocations were running at the last stop: queued again"
            );
        }
        let (tx, rx) = std::sync::mpsc::channel::<(QueueWrite, Reply)>();
        let writer_store = store.clone();
        std::thread::Builder::new()
            .name("nubo-queue-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < GROUP_MAX {
                        match rx.try_recv() {
                            Ok(w) => batch.push(w),
                            Err(_) => break,
                        }
                    }
                    commit(&writer_store, batch);
                }
            })
            .map_err(|e| QueueError(format!("starting the queue writer: {e}")))?;
        Ok(SqliteQueue {
            store,
            writes: tx,
            arrivals: Notify::new(),
        })
    }

    async fn write(&self, w: QueueWrite) -> Result<bool, QueueError> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send((w, tx))
            .map_err(|_| QueueError("the queue writer stopped".into()))?;
        rx.await
            .map_err(|_| QueueError("the queue writer stopped".into()))?
            .map_err(QueueError)
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, nubo_store::StoreError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| QueueError(e.to_string()))?
            .map_err(|e| QueueError(e.to_string()))
    }
}

/// Commits a group; if the group fails (one bad write), each write is tried alone so the others
/// still land.
fn commit(store: &Store, batch: Vec<(QueueWrite, Reply)>) {
    let (writes, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    match store.queue_write(&writes) {
        Ok(applied) => {
            for (reply, ok) in replies.into_iter().zip(applied) {
                let _ = reply.send(Ok(ok));
            }
        }
        Err(_) if writes.len() > 1 => {
            for (w, reply) in writes.into_iter().zip(replies) {
                let r = store
                    .queue_write(std::slice::from_ref(&w))
                    .map(|a| a[0])
                    .map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }
}

#[async_trait]
impl InvocationQueue for SqliteQueue {
    async fn enqueue(&self, invocation: NewInvocation) -> Result<(), QueueError> {
        self.write(QueueWrite::Enqueue(invocation)).await?;
        self.arrivals.notify_one();
        Ok(())
    }

    async fn enqueue_tick(
        &self,
        schedule: String,
        tick: i64,
        invocation: NewInvocation,
    ) -> Result<bool, QueueError> {
        let fired = self
            .write(QueueWrite::CronFire {
                schedule,
                tick,
                invocation,
            })
            .await?;
        if fired {
            self.arrivals.notify_one();
        }
        Ok(fired)
    }

    async fn claim(&self, limit: usize) -> Result<Vec<InvocationRecord>, QueueError> {
        self.read(move |s| s.claim_due(nubo_store::now_ms(), limit))
            .await
    }

    async fn finish(&self, id: String, outcome: Outcome) -> Result<(), QueueError> {
        let retry = matches!(outcome, Outcome::Failed { .. } | Outcome::Throttled { .. });
        self.write(QueueWrite::Finish {
            id,
            outcome,
            now: nubo_store::now_ms(),
        })
        .await?;
        if retry {
            self.arrivals.notify_one();
        }
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<i64>, QueueError> {
        self.read(|s| s.next_due()).await
    }

    async fn get(&self, id: String) -> Result<Option<InvocationRecord>, QueueError> {
        self.read(move |s| s.invocation(&id)).await
    }

    async fn list(
        &self,
        function: String,
        status: &'static str,
        limit: usize,
    ) -> Result<Vec<InvocationRecord>, QueueError> {
        self.read(move |s| s.invocations(&function, status, limit))
            .await
    }

    async fn replay(&self, function: String, ids: Vec<String>) -> Result<Vec<String>, QueueError> {
        let replayed = self
            .read(move |s| s.replay(&function, &ids, nubo_store::now_ms()))
            .await?;
        self.arrivals.notify_one();
        Ok(replayed)
    }

    async fn last_fire(
        &self,
        function: String,
        schedule: String,
    ) -> Result<Option<i64>, QueueError> {
        self.read(move |s| s.cron_last_fire(&function, &schedule))
            .await
    }

    async fn depths(&self) -> Result<Vec<(String, i64)>, QueueError> {
        self.read(|s| s.queue_depths()).await
    }

    async fn trim(&self) -> Result<usize, QueueError> {
        self.read(|s| s.trim_invocations()).await
    }

    fn arrivals(&self) -> &Notify {
        &self.arrivals
    }
}
