//! The recent past of each function, in memory, for the dashboard: invocations, errors, cold
//! starts and a latency histogram per 10-second step over the last 15 minutes. Fed by the one
//! place that counts a finished invocation; lost on restart (the records are the durable
//! history).

use serde::Serialize;
use std::sync::Mutex;
use std::time::Duration;

pub const STEP_MS: i64 = 10_000;
pub const WINDOW_MS: i64 = 15 * 60_000;
/// One slot per step of the window, plus the step in progress.
const SLOTS: usize = (WINDOW_MS / STEP_MS) as usize + 1;
/// Latency buckets grow by 2^(1/4) (about 19%) from 10 µs; the last one holds everything
/// beyond about 5.6 minutes. Quantiles are reported at a bucket's upper bound.
const LATENCY_BUCKETS: usize = 104;
const FIRST_BOUND_US: f64 = 10.0;

#[derive(Clone)]
struct Bucket {
    /// Start of the step (ms since the epoch); a slot holding an older step is stale.
    start: i64,
    invocations: u32,
    errors: u32,
    cold_starts: u32,
    latency: [u32; LATENCY_BUCKETS],
}

impl Bucket {
    fn empty(start: i64) -> Bucket {
        Bucket {
            start,
            invocations: 0,
            errors: 0,
            cold_starts: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }

    /// The latency (ms) under which a fraction `q` of the step's invocations finished.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.invocations == 0 {
            return None;
        }
        let want = (q * self.invocations as f64).ceil().max(1.0) as u32;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(bound_us(i) / 1000.0);
            }
        }
        None
    }
}

fn bound_us(i: usize) -> f64 {
    FIRST_BOUND_US * 2f64.powf(i as f64 / 4.0)
}

fn bucket_of(took: Duration) -> usize {
    let us = took.as_secs_f64() * 1e6;
    if us <= FIRST_BOUND_US {
        return 0;
    }
    ((4.0 * (us / FIRST_BOUND_US).log2()).ceil() as usize).min(LATENCY_BUCKETS - 1)
}

/// One step of a function's recent past, as the dashboard draws it.
#[derive(Debug, Serialize, PartialEq)]
pub struct Point {
    /// Start of the step, ms since the epoch.
    pub t: i64,
    pub invocations: u32,
    /// Invocations answered 500 or more.
    pub errors: u32,
    pub cold_starts: u32,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Totals over the last minute.
#[derive(Debug, Serialize, PartialEq)]
pub struct Recent {
    pub window_seconds: u32,
    pub invocations: u32,
    pub errors: u32,
    pub per_second: f64,
}

pub struct Series(Mutex<Vec<Bucket>>);

impl Default for Series {
    fn default() -> Series {
        Series(Mutex::new(vec![Bucket::empty(i64::MIN); SLOTS]))
    }
}

impl Series {
    /// Counts one finished invocation that started at `start_ms`.
    pub fn add(&self, start_ms: i64, status: u16, took: Duration, cold: bool) {
        let step = start_ms.div_euclid(STEP_MS) * STEP_MS;
        let mut slots = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let b = &mut slots[slot(step)];
        if b.start != step {
            if b.start > step {
                return; // older than the window
            }
            *b = Bucket::empty(step);
        }
        b.invocations += 1;
        b.errors += u32::from(status >= 500);
        b.cold_starts += u32::from(cold);
        b.latency[bucket_of(took)] += 1;
    }

    /// The steps of the last `window_ms` up to `now_ms`, oldest first, empty ones included.
    pub fn points(&self, now_ms: i64, window_ms: i64) -> Vec<Point> {
        let window_ms = window_ms.clamp(STEP_MS, WINDOW_MS);
        let last = now_ms.div_euclid(STEP_MS) * STEP_MS;
        let slots = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (0..window_ms / STEP_MS)
            .rev()
            .map(|k| {
                let t = last - k * STEP_MS;
                let b = &slots[slot(t)];
                if b.start != t {
                    return Point {
                        t,
                        invocations: 0,
                        errors: 0,
                        cold_starts: 0,
                        p50_ms: None,
                        p99_ms: None,
                    };
                }
                Point {
                    t,
                    invocations: b.invocations,
                    errors: b.errors,
                    cold_starts: b.cold_starts,
                    p50_ms: b.quantile_ms(0.5),
                    p99_ms: b.quantile_ms(0.99),
                }
            })
            .collect()
    }

    /// Invocations and errors in the last minute (the current step and the six before it,
    /// the oldest one counted in proportion to how much of it is inside the minute).
    pub fn recent(&self, now_ms: i64) -> Recent {
        const MINUTE: i64 = 60_000;
        let (mut n, mut e) = (0.0, 0.0);
        for p in self.points(now_ms, MINUTE + STEP_MS) {
            let inside =
                ((p.t + STEP_MS - (now_ms - MINUTE)) as f64 / STEP_MS as f64).clamp(0.0, 1.0);
            n += p.invocations as f64 * inside;
            e += p.errors as f64 * inside;
        }
        Recent {
            window_seconds: 60,
            invocations: n.round() as u32,
            errors: e.round() as u32,
            per_second: n / 60.0,
        }
    }
}

fn slot(step_start: i64) -> usize {
    (step_start.div_euclid(STEP_MS)).rem_euclid(SLOTS as i64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    #[test]
    fn steps_count_invocations_errors_and_cold_starts() {
        let s = Series::default();
        for i in 0..100 {
            let took = Duration::from_millis(if i < 90 { 2 } else { 100 });
            s.add(T0 + 1_000, if i % 10 == 0 { 502 } else { 200 }, took, i < 3);
        }
        s.add(T0 + STEP_MS + 5, 200, Duration::from_micros(3), false);
        let p = s.points(T0 + STEP_MS + 10, 3 * STEP_MS);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].invocations, 0);
        assert_eq!(p[0].p50_ms, None);
        assert_eq!(
            (p[1].t, p[1].invocations, p[1].errors, p[1].cold_starts),
            (T0, 100, 10, 3)
        );
        // Reported at the bucket bound: within 19% above the true value.
        let p50 = p[1].p50_ms.unwrap();
        assert!((2.0..2.4).contains(&p50), "{p50}");
        let p99 = p[1].p99_ms.unwrap();
        assert!((100.0..120.0).contains(&p99), "{p99}");
        assert_eq!(p[2].invocations, 1);
        assert_eq!(p[2].p50_ms, Some(0.01));
    }

    #[test]
    fn old_steps_leave_the_window() {
        let s = Series::default();
        s.add(T0, 200, Duration::from_millis(1), false);
        let later = T0 + WINDOW_MS + STEP_MS;
        assert!(
            s.points(later, WINDOW_MS)
                .iter()
                .all(|p| p.invocations == 0)
        );
        // A slot reused by a newer step forgets the old one, and a late old add is ignored.
        s.add(later, 200, Duration::from_millis(1), false);
        s.add(T0, 200, Duration::from_millis(1), false);
        let total: u32 = s
            .points(later, WINDOW_MS)
            .iter()
            .map(|p| p.invocations)
            .sum();
        assert_eq!(total, 1);
    }

    #[test]
    fn recent_is_the_last_minute() {
        let s = Series::default();
        for k in 0..12 {
            s.add(T0 + k * STEP_MS, 200, Duration::from_millis(1), false);
        }
        s.add(T0 + 11 * STEP_MS, 500, Duration::from_millis(1), false);
        // At the end of step 11, the minute holds steps 6..=11.
        let r = s.recent(T0 + 12 * STEP_MS);
        assert_eq!((r.invocations, r.errors), (7, 1));
        assert!((r.per_second - 7.0 / 60.0).abs() < 1e-9);
    }
}
