use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

fn limits(max: usize, concurrency: usize) -> SharedLimits {
    SharedLimits {
        max,
        concurrency,
        queue: 8,
        queue_wait: Duration::from_secs(30),
        idle: Duration::from_secs(60),
        min: 0,
    }
}

#[test]
fn decisions() {
    let l = limits(4, 2);
    let v = |with_room, ready, starting, waiting| SharedView {
        with_room,
        ready,
        starting,
        waiting,
        inflight: 0,
    };
    assert_eq!(decide_shared(v(1, 1, 0, 0), &l), SharedDecision::Serve);
    // Nothing ready: the first waiter starts one instance, the second rides on it.
    assert_eq!(
        decide_shared(v(0, 0, 0, 0), &l),
        SharedDecision::Wait { start: 1 }
    );
    assert_eq!(
        decide_shared(v(0, 0, 1, 1), &l),
        SharedDecision::Wait { start: 0 }
    );
    assert_eq!(
        decide_shared(v(0, 0, 1, 2), &l),
        SharedDecision::Wait { start: 1 }
    );
    // At max: wait without starting.
    assert_eq!(
        decide_shared(v(0, 4, 0, 0), &l),
        SharedDecision::Wait { start: 0 }
    );
    assert_eq!(decide_shared(v(0, 4, 0, 8), &l), SharedDecision::Reject);
}

/// A pool whose starter counts its calls and adds nothing by itself.
fn counting_pool(l: SharedLimits) -> (Arc<SharedPool<u32>>, Arc<AtomicUsize>) {
    let pool = SharedPool::new(l);
    let starts = Arc::new(AtomicUsize::new(0));
    let s = starts.clone();
    pool.set_starter(Box::new(move |_| {
        s.fetch_add(1, Ordering::SeqCst);
    }));
    (pool, starts)
}

#[tokio::test]
async fn least_loaded_instance_serves() {
    let (pool, _) = counting_pool(limits(4, 3));
    pool.top_up();
    pool.add(Arc::new(1));
    pool.add(Arc::new(2));
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    assert_ne!(
        a.instance(),
        b.instance(),
        "the second request goes to the idle one"
    );
    drop(a);
    let c = pool.acquire().await.unwrap();
    assert_ne!(c.instance(), b.instance());
    assert_eq!(pool.view().inflight, 2);
}

#[tokio::test]
async fn waiters_get_a_started_instance_and_see_it_fresh() {
    let (pool, starts) = counting_pool(limits(4, 2));
    let p = pool.clone();
    let first = tokio::spawn(async move { p.acquire().await.map(|l| l.fresh()) });
    tokio::task::yield_now().await;
    while pool.view().waiting == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(starts.load(Ordering::SeqCst), 1);
    pool.add(Arc::new(7));
    assert_eq!(first.await.unwrap(), Ok(true));
    // The next request on it is warm.
    assert!(!pool.acquire().await.unwrap().fresh());
}

#[tokio::test]
async fn a_failed_start_reaches_the_waiters() {
    let (pool, _) = counting_pool(limits(4, 2));
    let p = pool.clone();
    let waiter = tokio::spawn(async move { p.acquire().await.err() });
    while pool.view().waiting == 0 {
        tokio::task::yield_now().await;
    }
    pool.start_failed("exited with status 1");
    assert_eq!(
        waiter.await.unwrap(),
        Some(SharedRejected::StartFailed(StartFailed(
            "exited with status 1".into()
        )))
    );
    assert_eq!(pool.view(), SharedView::default());
}

#[tokio::test]
async fn reap_keeps_min_and_busy_instances() {
    let (pool, _) = counting_pool(SharedLimits {
        min: 1,
        idle: Duration::ZERO,
        ..limits(4, 1)
    });
    for i in 0..3 {
        pool.add(Arc::new(i));
    }
    let busy = pool.acquire().await.unwrap();
    let reaped = pool.reap(Instant::now());
    assert_eq!(reaped.len(), 1, "one busy, one kept for min, one reaped");
    assert!(!reaped.iter().any(|r| Arc::ptr_eq(r, busy.instance())));
    assert_eq!(pool.view().ready, 2);
}

#[tokio::test]
async fn a_closed_pool_drains_once_quiet() {
    let (pool, starts) = counting_pool(limits(4, 1));
    pool.add(Arc::new(1));
    let lease = pool.acquire().await.unwrap();
    pool.close();
    assert!(pool.drain_if_quiet().is_none(), "a request is in flight");
    drop(lease);
    assert_eq!(pool.drain_if_quiet().map(|v| v.len()), Some(1));
    assert_eq!(pool.top_up(), 0);
    assert_eq!(starts.load(Ordering::SeqCst), 0);
}
