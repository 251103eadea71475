//! Pools of instances, one per revision: who gets an instance, who waits, who is turned away.
//!
//! A [`Pool`] hands out [`Lease`]s. A lease is one of at most `max` slots; it comes with a warm
//! idle instance, or with the duty to start one (a cold start). When every slot is taken,
//! requests wait in a bounded FIFO queue for at most `queue_wait`; past the bound they are
//! rejected at once. The choice itself is [`decide`], a plain function of the pool's counts,
//! so it can be tested without instances, clocks or tasks.
//!
//! This crate knows nothing of HTTP, SQL or what an instance is: `I` is whatever the sandbox
//! returns. Instances are never created or destroyed here, only handed around.

mod shared;
pub use shared::{
    MemberView, SharedDecision, SharedLease, SharedLimits, SharedPool, SharedRejected, SharedView,
    StartFailed, Starter, decide_shared,
};

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Limits of one pool, from the function's `scale` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolLimits {
    /// Slots: instances busy or starting at once.
    pub max: usize,
    /// Requests that may wait for a slot.
    pub queue: usize,
    /// How long one may wait.
    pub queue_wait: Duration,
    /// Idle instances older than this are reaped.
    pub idle: Duration,
}

/// The counts the scaling decision depends on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolView {
    /// Started instances with no request, ready to serve.
    pub idle: usize,
    /// Slots serving a request (including those whose instance is starting).
    pub busy: usize,
    /// Of the busy slots, those still starting their instance.
    pub starting: usize,
    /// Requests queued for a slot.
    pub waiting: usize,
}

impl PoolView {
    /// Busy slots whose instance is already started and serving.
    pub fn serving(&self) -> usize {
        self.busy - self.starting
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Take an idle instance: a warm start.
    UseIdle,
    /// Take a free slot and start an instance in it: a cold start.
    StartNew,
    /// Every slot is busy; wait in the queue.
    Wait,
    /// Every slot is busy and the queue is full.
    Reject,
}

/// The scaling decision for one arriving request.
///
/// Relies on the pool's invariant that requests wait only while every slot is busy and no
/// instance is idle (a freed slot goes straight to the oldest waiter).
pub fn decide(view: PoolView, limits: &PoolLimits) -> Decision {
    if view.idle > 0 {
        Decision::UseIdle
    } else if view.busy < limits.max {
        Decision::StartNew
    } else if view.waiting < limits.queue {
        Decision::Wait
    } else {
        Decision::Reject
    }
}

/// Why a request got no instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("all {max} instances are busy and {queue} requests are already waiting")]
    QueueFull { max: usize, queue: usize },
    #[error("no instance became free within {0:?}")]
    WaitTimeout(Duration),
}

/// What a lease starts with.
pub enum Grant<I> {
    Warm(I),
    /// The holder must start an instance (and give it back with [`Lease::release`]).
    Start,
}

struct Idle<I> {
    instance: I,
    since: Instant,
}

struct Inner<I> {
    idle: Vec<Idle<I>>,
    busy: usize,
    starting: usize,
    waiters: VecDeque<oneshot::Sender<Grant<I>>>,
}

pub struct Pool<I> {
    limits: PoolLimits,
    inner: Mutex<Inner<I>>,
}

impl<I: Send + 'static> Pool<I> {
    pub fn new(limits: PoolLimits) -> Arc<Self> {
        Arc::new(Pool {
            limits,
            inner: Mutex::new(Inner {
                idle: Vec::new(),
                busy: 0,
                starting: 0,
                waiters: VecDeque::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<I>> {
        // Counters stay consistent under every panic point (none hold the lock across user
        // code), so a poisoned lock is safe to keep using.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn view(&self) -> PoolView {
        let inner = self.lock();
        view_of(&inner)
    }

    /// Gets a slot: at once if one is free, else after waiting in the queue.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease<I>, Rejected> {
        let rx = {
            let mut inner = self.lock();
            if decide(view_of(&inner), &self.limits) == Decision::Reject {
                // Waiters whose requests were dropped (clients that hung up) still hold a place
                // in the queue until a slot frees; do not turn new requests away for them.
                inner.waiters.retain(|w| !w.is_closed());
            }
            match decide(view_of(&inner), &self.limits) {
                Decision::UseIdle => {
                    // Most recently used first: its memory is likeliest still in cache.
                    let idle = inner.idle.pop().expect("decide saw an idle instance");
                    inner.busy += 1;
                    return Ok(self.lease(Grant::Warm(idle.instance), Duration::ZERO));
                }
                Decision::StartNew => {
                    inner.busy += 1;
                    inner.starting += 1;
                    return Ok(self.lease(Grant::Start, Duration::ZERO));
                }
                Decision::Reject => {
                    return Err(Rejected::QueueFull {
                        max: self.limits.max,
                        queue: self.limits.queue,
                    });
                }
                Decision::Wait => {
                    let (tx, rx) = oneshot::channel();
                    inner.waiters.push_back(tx);
                    rx
                }
            }
        };
        let started = Instant::now();
        // Until a grant is taken out of it, the guard gives back whatever reaches `rx`: on a
        // timeout and also when this future is dropped (the client hung up), so a slot handed
        // to a waiter that is gone is never lost.
        let mut waiting = Waiting {
            pool: self,
            rx: Some(rx),
        };
        let rx = waiting.rx.as_mut().expect("set above");
        match tokio::time::timeout(self.limits.queue_wait, rx).await {
            Ok(Ok(grant)) => {
                waiting.rx = None;
                Ok(self.lease(grant, started.elapsed()))
            }
            // The pool never drops a waiter's sender without sending; treat it as a timeout.
            Ok(Err(_)) | Err(_) => Err(Rejected::WaitTimeout(self.limits.queue_wait)),
        }
    }

    fn lease(self: &Arc<Self>, grant: Grant<I>, waited: Duration) -> Lease<I> {
        Lease {
            pool: self.clone(),
            grant: Some(grant),
            waited,
            done: false,
        }
    }

    /// Gives a slot back, with the instance when it may serve again.
    fn give_back(&self, instance: Option<I>, was_starting: bool) {
        let mut inner = self.lock();
        if was_starting {
            inner.starting -= 1;
        }
        let mut grant = match instance {
            Some(i) => Grant::Warm(i),
            None => Grant::Start,
        };
        while let Some(waiter) = inner.waiters.pop_front() {
            if matches!(grant, Grant::Start) {
                inner.starting += 1;
            }
            match waiter.send(grant) {
                Ok(()) => return,
                Err(back) => {
                    if matches!(back, Grant::Start) {
                        inner.starting -= 1;
                    }
                    grant = back;
                }
            }
        }
        inner.busy -= 1;
        if let Grant::Warm(instance) = grant {
            inner.idle.push(Idle {
                instance,
                since: Instant::now(),
            });
        }
    }

    /// Removes instances idle for longer than the pool's `idle` limit and returns them, so the
    /// caller drops (stops) them outside the lock.
    pub fn reap(&self, now: Instant) -> Vec<I> {
        let mut inner = self.lock();
        let idle_limit = self.limits.idle;
        let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut inner.idle)
            .into_iter()
            .partition(|i| now.saturating_duration_since(i.since) >= idle_limit);
        inner.idle = keep;
        old.into_iter().map(|i| i.instance).collect()
    }

    /// Removes every idle instance (when the revision is replaced or deleted).
    pub fn drain_idle(&self) -> Vec<I> {
        let mut inner = self.lock();
        std::mem::take(&mut inner.idle)
            .into_iter()
            .map(|i| i.instance)
            .collect()
    }
}

/// A request waiting in the queue; see `acquire`.
struct Waiting<'a, I: Send + 'static> {
    pool: &'a Arc<Pool<I>>,
    rx: Option<oneshot::Receiver<Grant<I>>>,
}

impl<I: Send + 'static> Drop for Waiting<'_, I> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        rx.close();
        if let Ok(grant) = rx.try_recv() {
            let mut lease = self.pool.lease(grant, Duration::ZERO);
            let instance = lease.take_instance();
            lease.release(instance);
        }
        self.pool.lock().waiters.retain(|w| !w.is_closed());
    }
}

fn view_of<I>(inner: &Inner<I>) -> PoolView {
    PoolView {
        idle: inner.idle.len(),
        busy: inner.busy,
        starting: inner.starting,
        waiting: inner.waiters.len(),
    }
}

/// One slot of a pool. Give it back with [`Lease::release`]; dropped, it frees its slot with no
/// instance (so a cancelled request can never leak capacity).
pub struct Lease<I: Send + 'static> {
    pool: Arc<Pool<I>>,
    grant: Option<Grant<I>>,
    waited: Duration,
    done: bool,
}

impl<I: Send + 'static> Lease<I> {
    /// The warm instance, or `None` when the holder must start one.
    pub fn take_instance(&mut self) -> Option<I> {
        // A `Start` grant stays: `started` and `release` read it.
        match self.grant.take_if(|g| matches!(g, Grant::Warm(_))) {
            Some(Grant::Warm(i)) => Some(i),
            _ => None,
        }
    }

    /// Time spent in the queue.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Marks the start of this lease's instance as finished (for the `starting` count).
    pub fn started(&mut self) {
        if matches!(self.grant, Some(Grant::Start)) {
            self.grant = None;
            let mut inner = self.pool.lock();
            inner.starting -= 1;
        }
    }

    /// Frees the slot; `instance` goes back to the pool when it may serve again.
    pub fn release(mut self, instance: Option<I>) {
        self.done = true;
        let starting = matches!(self.grant.take(), Some(Grant::Start));
        self.pool.give_back(instance, starting);
    }
}

impl<I: Send + 'static> Drop for Lease<I> {
    fn drop(&mut self) {
        if !self.done {
            let (instance, starting) = match self.grant.take() {
                Some(Grant::Warm(i)) => (Some(i), false),
                Some(Grant::Start) => (None, true),
                None => (None, false),
            };
            self.pool.give_back(instance, starting);
        }
    }
}

#[cfg(test)]
mod tests;
