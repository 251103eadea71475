//! Pools of instances that serve several requests at once (process apps).
//!
//! Unlike [`crate::Pool`], whose instances serve one request each and are handed over whole,
//! a [`SharedPool`] keeps its instances and lends a share of one: each request goes to the
//! least-loaded ready instance under its `concurrency`. When every instance is full, the
//! request waits in a bounded FIFO queue and the pool asks its starter for more instances (up
//! to `max`), one per `concurrency` waiters. Instances start on the starter's tasks, not on the
//! request's, so a client that hangs up never abandons a half-started instance, and a start
//! that fails is reported to the requests that were waiting for it.
//!
//! The decision for an arriving request is [`decide_shared`], a plain function of counts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use crate::Rejected;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedLimits {
    /// Instances started or starting at once.
    pub max: usize,
    /// Requests one instance serves at once.
    pub concurrency: usize,
    /// Requests that may wait for capacity.
    pub queue: usize,
    pub queue_wait: Duration,
    /// Idle instances older than this are reclaimed (down to `min`).
    pub idle: Duration,
    /// Instances kept started even with no traffic.
    pub min: usize,
}

/// Counts the decision depends on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedView {
    /// Ready instances with room for one more request.
    pub with_room: usize,
    /// Ready instances.
    pub ready: usize,
    /// Instances being started.
    pub starting: usize,
    /// Requests waiting for capacity.
    pub waiting: usize,
    /// Requests being served.
    pub inflight: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedDecision {
    /// Serve on the least-loaded instance with room.
    Serve,
    /// Wait, and start `n` more instances for the waiters.
    Wait {
        start: usize,
    },
    Reject,
}

/// What to do with one arriving request.
pub fn decide_shared(view: SharedView, limits: &SharedLimits) -> SharedDecision {
    if view.with_room > 0 {
        return SharedDecision::Serve;
    }
    if view.waiting >= limits.queue {
        return SharedDecision::Reject;
    }
    // Capacity the starting instances will bring must cover every waiter, this one included.
    let waiters = view.waiting + 1;
    let needed = waiters.div_ceil(limits.concurrency.max(1));
    let room = limits.max.saturating_sub(view.ready + view.starting);
    SharedDecision::Wait {
        start: needed.saturating_sub(view.starting).min(room),
    }
}

/// Why a start failed, as told to the requests that waited for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailed(pub Arc<str>);

/// Why a request got no capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedRejected {
    Limit(Rejected),
    StartFailed(StartFailed),
    /// The pool was retired and has nothing left to serve with: ask the newer revision.
    Closed,
}

struct Member<I> {
    instance: Arc<I>,
    inflight: usize,
    served: u64,
    idle_since: Instant,
    /// Joined the pool after a start; the first request it serves reports the start.
    fresh: bool,
}

/// One instance's figures, for listings.
pub struct MemberView<I> {
    pub instance: Arc<I>,
    pub inflight: usize,
    pub served: u64,
    pub idle_for: Duration,
}

struct Grant<I> {
    instance: Arc<I>,
    fresh: bool,
}

type Waiter<I> = oneshot::Sender<Result<Grant<I>, StartFailed>>;

struct Inner<I> {
    members: Vec<Member<I>>,
    starting: usize,
    waiters: VecDeque<Waiter<I>>,
    /// A retired pool starts nothing more; its waiters are served by what it has.
    closed: bool,
}

/// Starts one instance and reports it with [`SharedPool::add`] or [`SharedPool::start_failed`].
pub type Starter<I> = Box<dyn Fn(&Arc<SharedPool<I>>) + Send + Sync>;

pub struct SharedPool<I> {
    limits: SharedLimits,
    inner: Mutex<Inner<I>>,
    starter: OnceLock<Starter<I>>,
}

impl<I: Send + Sync + 'static> SharedPool<I> {
    pub fn new(limits: SharedLimits) -> Arc<Self> {
        Arc::new(SharedPool {
            limits,
            inner: Mutex::new(Inner {
                members: Vec::new(),
                starting: 0,
                waiters: VecDeque::new(),
                closed: false,
            }),
            starter: OnceLock::new(),
        })
    }

    /// Sets how instances are started; without it the pool never grows.
    pub fn set_starter(&self, starter: Starter<I>) {
        let _ = self.starter.set(starter);
    }

    pub fn limits(&self) -> &SharedLimits {
        &self.limits
    }

    fn lock(&self) -> MutexGuard<'_, Inner<I>> {
        // No user code runs under the lock; the counts stay consistent across a panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn view(&self) -> SharedView {
        view_of(&self.lock(), self.limits.concurrency)
    }

    pub fn members(&self) -> Vec<MemberView<I>> {
        let now = Instant::now();
        self.lock()
            .members
            .iter()
            .map(|m| MemberView {
                instance: m.instance.clone(),
                inflight: m.inflight,
                served: m.served,
                idle_for: if m.inflight == 0 {
                    now.saturating_duration_since(m.idle_since)
                } else {
                    Duration::ZERO
                },
            })
            .collect()
    }

    /// Runs the starter `n` times, outside the lock.
    fn start(self: &Arc<Self>, n: usize) {
        if let Some(starter) = self.starter.get() {
            for _ in 0..n {
                starter(self);
            }
        } else if n > 0 {
            self.lock().starting -= n;
        }
    }

    pub async fn acquire(self: &Arc<Self>) -> Result<SharedLease<I>, SharedRejected> {
        let (rx, start) = {
            let mut inner = self.lock();
            let mut decision =
                decide_shared(view_of(&inner, self.limits.concurrency), &self.limits);
            if decision == SharedDecision::Reject {
                // Requests that hung up still hold a place until capacity frees; drop them.
                inner.waiters.retain(|w| !w.is_closed());
                decision = decide_shared(view_of(&inner, self.limits.concurrency), &self.limits);
            }
            match decision {
                SharedDecision::Serve => {
                    let grant = take_least_loaded(&mut inner, self.limits.concurrency)
                        .expect("decide saw room");
                    return Ok(self.lease(grant, Duration::ZERO));
                }
                SharedDecision::Reject => {
                    return Err(SharedRejected::Limit(Rejected::QueueFull {
                        max: self.limits.max,
                        queue: self.limits.queue,
                    }));
                }
                SharedDecision::Wait { .. }
                    if inner.closed && inner.members.is_empty() && inner.starting == 0 =>
                {
                    return Err(SharedRejected::Closed);
                }
                SharedDecision::Wait { start } => {
                    let start = if inner.closed { 0 } else { start };
                    inner.starting += start;
                    let (tx, rx) = oneshot::channel();
                    inner.waiters.push_back(tx);
                    (rx, start)
                }
            }
        };
        self.start(start);
        let waited_from = Instant::now();
        let mut waiting = Waiting {
            pool: self,
            rx: Some(rx),
        };
        let rx = waiting.rx.as_mut().expect("set above");
        match tokio::time::timeout(self.limits.queue_wait, rx).await {
            Ok(Ok(Ok(grant))) => {
                waiting.rx = None;
                Ok(self.lease(grant, waited_from.elapsed()))
            }
            Ok(Ok(Err(failed))) => {
                waiting.rx = None;
                Err(SharedRejected::StartFailed(failed))
            }
            Ok(Err(_)) | Err(_) => Err(SharedRejected::Limit(Rejected::WaitTimeout(
                self.limits.queue_wait,
            ))),
        }
    }

    fn lease(self: &Arc<Self>, grant: Grant<I>, waited: Duration) -> SharedLease<I> {
        SharedLease {
            pool: self.clone(),
            instance: grant.instance,
            fresh: grant.fresh,
            waited,
        }
    }

    /// Asks for starts so that `min` instances exist (or are starting); returns how many.
    pub fn top_up(self: &Arc<Self>) -> usize {
        let n = {
            let mut inner = self.lock();
            if inner.closed {
                return 0;
            }
            let have = inner.members.len() + inner.starting;
            let n = self.limits.min.min(self.limits.max).saturating_sub(have);
            inner.starting += n;
            n
        };
        self.start(n);
        n
    }

    /// An instance the starter started joins the pool and serves the oldest waiters, the first
    /// of which sees it as a cold start.
    pub fn add(self: &Arc<Self>, instance: Arc<I>) {
        let mut inner = self.lock();
        inner.starting = inner.starting.saturating_sub(1);
        self.join(inner, instance, true);
    }

    /// An instance started ahead of traffic (provisioned) joins the pool.
    pub fn insert(self: &Arc<Self>, instance: Arc<I>) {
        let inner = self.lock();
        self.join(inner, instance, false);
    }

    fn join(&self, mut inner: MutexGuard<'_, Inner<I>>, instance: Arc<I>, fresh: bool) {
        inner.members.push(Member {
            instance,
            inflight: 0,
            served: 0,
            idle_since: Instant::now(),
            fresh,
        });
        let last = inner.members.len() - 1;
        serve_waiters(&mut inner, last, self.limits.concurrency);
    }

    /// A start failed: when nothing else can serve the waiters, they get the reason.
    pub fn start_failed(self: &Arc<Self>, reason: &str) {
        let mut inner = self.lock();
        inner.starting = inner.starting.saturating_sub(1);
        if inner.starting == 0 && inner.members.is_empty() {
            let failed = StartFailed(reason.into());
            for w in inner.waiters.drain(..) {
                let _ = w.send(Err(failed.clone()));
            }
        }
    }

    /// Takes an instance out (it died); requests in flight on it end on their own. Starts a
    /// replacement when requests are waiting.
    pub fn remove(self: &Arc<Self>, instance: &Arc<I>) -> bool {
        let (found, start) = {
            let mut inner = self.lock();
            let before = inner.members.len();
            inner
                .members
                .retain(|m| !Arc::ptr_eq(&m.instance, instance));
            let found = inner.members.len() != before;
            let mut start = 0;
            if found && !inner.waiters.is_empty() && !inner.closed {
                if let SharedDecision::Wait { start: n } = decide_shared(
                    SharedView {
                        waiting: inner.waiters.len() - 1,
                        ..view_of(&inner, self.limits.concurrency)
                    },
                    &self.limits,
                ) {
                    start = n;
                }
                inner.starting += start;
            }
            (found, start)
        };
        self.start(start);
        found
    }

    /// Removes instances idle for longer than `idle`, keeping `min`; the caller stops them.
    pub fn reap(&self, now: Instant) -> Vec<Arc<I>> {
        let mut inner = self.lock();
        let mut keep = self.limits.min;
        let idle = self.limits.idle;
        let mut out = Vec::new();
        // Keep the most recently used ones: their memory is likeliest in cache.
        inner
            .members
            .sort_by_key(|m| std::cmp::Reverse(m.idle_since));
        inner.members.retain(|m| {
            let old = m.inflight == 0 && now.saturating_duration_since(m.idle_since) >= idle;
            if old && keep == 0 {
                out.push(m.instance.clone());
                false
            } else {
                keep = keep.saturating_sub(1);
                true
            }
        });
        out
    }

    /// Stops growing (a newer revision took over); waiters are served by what is here.
    pub fn close(&self) {
        self.lock().closed = true;
    }

    /// When nothing is in flight or waiting, empties the pool and returns its instances.
    pub fn drain_if_quiet(&self) -> Option<Vec<Arc<I>>> {
        let mut inner = self.lock();
        let busy = inner.members.iter().any(|m| m.inflight > 0);
        inner.waiters.retain(|w| !w.is_closed());
        if busy || !inner.waiters.is_empty() || inner.starting > 0 {
            return None;
        }
        Some(inner.members.drain(..).map(|m| m.instance).collect())
    }

    /// Empties the pool whatever is in flight (at shutdown) and returns its instances.
    pub fn drain_all(&self) -> Vec<Arc<I>> {
        let mut inner = self.lock();
        inner.closed = true;
        inner.members.drain(..).map(|m| m.instance).collect()
    }

    /// Returns a share; `served` counts a request, `fresh` hands the start report on.
    fn give_back(&self, instance: &Arc<I>, served: bool, fresh: bool) {
        let mut inner = self.lock();
        let Some(i) = inner
            .members
            .iter()
            .position(|m| Arc::ptr_eq(&m.instance, instance))
        else {
            return;
        };
        let m = &mut inner.members[i];
        m.inflight -= 1;
        m.served += u64::from(served);
        m.fresh |= fresh;
        if m.inflight == 0 {
            m.idle_since = Instant::now();
        }
        serve_waiters(&mut inner, i, self.limits.concurrency);
    }
}

/// Hands the room on member `i` to the oldest waiters.
fn serve_waiters<I>(inner: &mut Inner<I>, i: usize, concurrency: usize) {
    while inner.members[i].inflight < concurrency {
        let Some(w) = inner.waiters.pop_front() else {
            return;
        };
        let m = &mut inner.members[i];
        let grant = Grant {
            instance: m.instance.clone(),
            fresh: std::mem::take(&mut m.fresh),
        };
        m.inflight += 1;
        if let Err(Ok(grant)) = w.send(Ok(grant)) {
            // That waiter is gone: undo and try the next.
            let m = &mut inner.members[i];
            m.inflight -= 1;
            m.fresh |= grant.fresh;
        }
    }
}

fn take_least_loaded<I>(inner: &mut Inner<I>, concurrency: usize) -> Option<Grant<I>> {
    let m = inner
        .members
        .iter_mut()
        .filter(|m| m.inflight < concurrency)
        .min_by_key(|m| m.inflight)?;
    m.inflight += 1;
    Some(Grant {
        instance: m.instance.clone(),
        fresh: std::mem::take(&mut m.fresh),
    })
}

fn view_of<I>(inner: &Inner<I>, concurrency: usize) -> SharedView {
    SharedView {
        with_room: inner
            .members
            .iter()
            .filter(|m| m.inflight < concurrency)
            .count(),
        ready: inner.members.len(),
        starting: inner.starting,
        waiting: inner.waiters.len(),
        inflight: inner.members.iter().map(|m| m.inflight).sum(),
    }
}

struct Waiting<'a, I: Send + Sync + 'static> {
    pool: &'a Arc<SharedPool<I>>,
    rx: Option<oneshot::Receiver<Result<Grant<I>, StartFailed>>>,
}

impl<I: Send + Sync + 'static> Drop for Waiting<'_, I> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        rx.close();
        // A share handed to a waiter that is gone goes back at once.
        if let Ok(Ok(grant)) = rx.try_recv() {
            self.pool.give_back(&grant.instance, false, grant.fresh);
        }
        self.pool.lock().waiters.retain(|w| !w.is_closed());
    }
}

/// A share of one instance; dropping it gives the share back.
pub struct SharedLease<I: Send + Sync + 'static> {
    pool: Arc<SharedPool<I>>,
    instance: Arc<I>,
    fresh: bool,
    waited: Duration,
}

impl<I: Send + Sync + 'static> SharedLease<I> {
    pub fn instance(&self) -> &Arc<I> {
        &self.instance
    }

    /// Time spent waiting for capacity.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// This request is the first on an instance started for it (or for the queue it was in).
    pub fn fresh(&self) -> bool {
        self.fresh
    }
}

impl<I: Send + Sync + 'static> Drop for SharedLease<I> {
    fn drop(&mut self) {
        self.pool.give_back(&self.instance, true, false);
    }
}

#[cfg(test)]
#[path = "shared_tests.rs"]
mod tests;
