use super::*;

fn limits(max: usize, queue: usize) -> PoolLimits {
    PoolLimits {
        max,
        queue,
        queue_wait: Duration::from_millis(200),
        idle: Duration::from_secs(60),
    }
}

fn v(idle: usize, busy: usize, waiting: usize) -> PoolView {
    PoolView {
        idle,
        busy,
        starting: 0,
        waiting,
    }
}

/// One slot, one queue place, and waits long enough that a test never sees a timeout.
fn one_slot_long_wait() -> PoolLimits {
    PoolLimits {
        queue_wait: Duration::from_secs(60),
        ..limits(1, 1)
    }
}

/// A pool whose slots are all taken by started instances, with the lease of the first.
async fn full_pool(limits: PoolLimits) -> (Arc<Pool<u32>>, Lease<u32>) {
    let pool = Pool::<u32>::new(limits);
    let mut a = pool.acquire().await.unwrap();
    a.take_instance();
    a.started();
    (pool, a)
}

/// A request that waits in the pool's queue (returned once it is queued).
async fn queued_request(pool: &Arc<Pool<u32>>) -> tokio::task::JoinHandle<bool> {
    let p = pool.clone();
    let waiter = tokio::spawn(async move { p.acquire().await.is_ok() });
    until_queued(pool, 1).await;
    waiter
}

async fn until_queued(pool: &Pool<u32>, waiting: usize) {
    while pool.view().waiting < waiting {
        tokio::task::yield_now().await;
    }
}

#[test]
fn decide_prefers_idle_then_new_then_queue() {
    let l = limits(2, 1);
    assert_eq!(decide(v(1, 0, 0), &l), Decision::UseIdle);
    assert_eq!(decide(v(1, 2, 0), &l), Decision::UseIdle);
    assert_eq!(decide(v(0, 0, 0), &l), Decision::StartNew);
    assert_eq!(decide(v(0, 1, 0), &l), Decision::StartNew);
    assert_eq!(decide(v(0, 2, 0), &l), Decision::Wait);
    assert_eq!(decide(v(0, 2, 1), &l), Decision::Reject);
    assert_eq!(decide(v(0, 1, 0), &limits(1, 0)), Decision::Reject);
}

#[tokio::test]
async fn warm_instances_are_reused_and_slots_are_bounded() {
    let pool = Pool::<u32>::new(limits(1, 0));
    let mut a = pool.acquire().await.unwrap();
    assert_eq!(a.take_instance(), None, "first lease is a cold start");
    assert_eq!(pool.view().starting, 1);
    a.started();
    assert_eq!(
        pool.view(),
        PoolView {
            idle: 0,
            busy: 1,
            starting: 0,
            waiting: 0
        }
    );
    assert!(matches!(
        pool.acquire().await,
        Err(Rejected::QueueFull { .. })
    ));
    a.release(Some(7));
    assert_eq!(
        pool.view(),
        PoolView {
            idle: 1,
            busy: 0,
            starting: 0,
            waiting: 0
        }
    );
    let mut b = pool.acquire().await.unwrap();
    assert_eq!(b.take_instance(), Some(7));
    drop(b); // dropped without release: slot freed, instance gone
    assert_eq!(pool.view(), PoolView::default());
}

#[tokio::test]
async fn waiters_get_freed_slots_in_order_and_time_out() {
    let (pool, a) = full_pool(limits(1, 2)).await;
    let p1 = pool.clone();
    let w1 = tokio::spawn(async move { p1.acquire().await.map(|mut l| (l.take_instance(), l)) });
    until_queued(&pool, 1).await;
    let p2 = pool.clone();
    let w2 = tokio::spawn(async move { p2.acquire().await.map(|mut l| (l.take_instance(), l)) });
    until_queued(&pool, 2).await;
    assert!(matches!(
        pool.acquire().await,
        Err(Rejected::QueueFull { .. })
    ));
    a.release(Some(1));
    let (inst, lease) = w1.await.unwrap().unwrap();
    assert_eq!(inst, Some(1), "the oldest waiter gets the instance");
    assert!(lease.waited() > Duration::ZERO);
    // The second waiter times out while the first holds the slot.
    assert!(matches!(w2.await.unwrap(), Err(Rejected::WaitTimeout(_))));
    assert_eq!(pool.view().waiting, 0);
    lease.release(None);
    assert_eq!(pool.view(), PoolView::default());
}

#[tokio::test]
async fn a_destroyed_instance_hands_a_cold_start_to_the_waiter() {
    let (pool, a) = full_pool(limits(1, 1)).await;
    let p = pool.clone();
    let w = tokio::spawn(async move { p.acquire().await.map(|mut l| (l.take_instance(), l)) });
    until_queued(&pool, 1).await;
    a.release(None);
    let (inst, mut lease) = w.await.unwrap().unwrap();
    assert_eq!(inst, None);
    assert_eq!(pool.view().starting, 1);
    lease.started();
    lease.release(Some(2));
    assert_eq!(
        pool.view(),
        PoolView {
            idle: 1,
            busy: 0,
            starting: 0,
            waiting: 0
        }
    );
}

#[tokio::test]
async fn idle_instances_are_reaped() {
    let pool = Pool::<u32>::new(PoolLimits {
        idle: Duration::from_millis(10),
        ..limits(2, 0)
    });
    let a = pool.acquire().await.unwrap();
    a.release(Some(1));
    assert!(pool.reap(Instant::now()).is_empty());
    assert_eq!(
        pool.reap(Instant::now() + Duration::from_millis(20)),
        vec![1]
    );
    assert_eq!(pool.view(), PoolView::default());
}

#[tokio::test]
async fn abandoned_waiters_do_not_fill_the_queue() {
    let (pool, a) = full_pool(one_slot_long_wait()).await;
    let waiter = queued_request(&pool).await;
    waiter.abort(); // the client hung up
    let _ = waiter.await;
    // The queue has room again for a live request.
    let p = pool.clone();
    let live = tokio::spawn(async move { p.acquire().await.map(|l| l.waited()) });
    until_queued(&pool, 1).await;
    a.release(Some(1));
    assert!(live.await.unwrap().is_ok());
}

#[tokio::test]
async fn a_slot_granted_to_a_waiter_that_hung_up_is_given_back() {
    let (pool, a) = full_pool(one_slot_long_wait()).await;
    let waiter = queued_request(&pool).await;
    // The slot is handed to the waiter, whose request is dropped before it runs again.
    a.release(Some(7));
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(
        pool.view(),
        PoolView {
            idle: 1,
            busy: 0,
            starting: 0,
            waiting: 0
        }
    );
}
