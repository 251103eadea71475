//! Cron triggers: each tick of a function's `cron` schedule (UTC) becomes one async invocation
//! with a small JSON event.
//!
//! The last fire time of each schedule is kept in the store, in the same transaction as the
//! tick's invocation ([`InvocationQueue::enqueue_tick`]): a tick never fires twice, even across
//! a restart. Ticks missed while the server was down (or stalled) are not replayed: only the
//! most recent due tick fires.

use crate::AppState;
use crate::invocations;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Longest sleep between checks (a deploy also wakes the loop).
const MAX_SLEEP: Duration = Duration::from_secs(30);

pub async fn run(state: Arc<AppState>) {
    // (function, schedule) -> the tick after which the next one is due (ms).
    let mut after: HashMap<(String, String), i64> = HashMap::new();
    let mut parsed: HashMap<String, Option<croner::Cron>> = HashMap::new();
    loop {
        let table = state.table();
        let now = Utc::now();
        let now_ms = now.timestamp_millis();
        let mut sleep = MAX_SLEEP;
        let mut live = Vec::new();
        for f in table.functions() {
            for schedule in &f.spec.cron {
                let key = (f.name.clone(), schedule.clone());
                live.push(key.clone());
                let Some(cron) = parsed
                    .entry(schedule.clone())
                    .or_insert_with(|| schedule.parse::<croner::Cron>().ok())
                    .clone()
                else {
                    continue;
                };
                let from = match after.get(&key) {
                    Some(t) => *t,
                    None => {
                        // First sight (start, or a new deploy): from now on, and never at or
                        // before a tick that already fired.
                        let last = state
                            .queue
                            .last_fire(f.name.clone(), schedule.clone())
                            .await
                            .ok()
                            .flatten()
                            .unwrap_or(i64::MIN);
                        let from = last.max(now_ms);
                        after.insert(key.clone(), from);
                        from
                    }
                };
                let Some(mut tick) = next_after(&cron, from) else {
                    continue;
                };
                if tick > now_ms {
                    sleep = sleep.min(Duration::from_millis((tick - now_ms) as u64));
                    continue;
                }
                // Due: skip to the latest due tick (no burst after a stall).
                while let Some(t) = next_after(&cron, tick).filter(|t| *t <= now_ms) {
                    tick = t;
                }
                // Advanced only once queued: a failed enqueue is tried again (the store's last
                // fire time still keeps it from firing twice).
                if fire(&state, f, schedule, tick).await {
                    after.insert(key, tick);
                    sleep = Duration::ZERO;
                } else {
                    sleep = sleep.min(Duration::from_secs(1));
                }
            }
        }
        after.retain(|k, _| live.contains(k));
        drop(table);
        if sleep.is_zero() {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = state.deployed.notified() => {}
        }
    }
}

/// The first tick strictly after `ms`.
fn next_after(cron: &croner::Cron, ms: i64) -> Option<i64> {
    let from = DateTime::<Utc>::from_timestamp_millis(ms.max(0))?;
    cron.find_next_occurrence(&from, false)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Queues one tick; false when it could not be queued (to be tried again).
async fn fire(
    state: &Arc<AppState>,
    f: &crate::live::LiveFunction,
    schedule: &str,
    tick: i64,
) -> bool {
    let time = DateTime::<Utc>::from_timestamp_millis(tick)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let event = serde_json::json!({
        "source": "nubo.cron",
        "schedule": schedule,
        "time": time,
        "function": f.name,
    });
    let id = crate::gateway::invocation_id();
    let inv =
        invocations::new_invocation(f, &id, "cron", "{}".into(), event.to_string().into(), None);
    match state
        .queue
        .enqueue_tick(schedule.to_string(), tick, inv)
        .await
    {
        Ok(true) => true,
        Ok(false) => {
            tracing::debug!("cron {schedule} of {} at {time} already fired", f.name);
            true
        }
        Err(e) => {
            let text = format!("cron {schedule} at {time} could not be queued: {e}; retrying");
            state.logs.line(&f.name, "nubo", None, None, text);
            false
        }
    }
}
