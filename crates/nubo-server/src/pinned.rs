//! Older revisions, invoked by a Lambda `Qualifier`: made live on first use, kept while used,
//! retired after [`PINNED_IDLE`] without an invocation. The current revision is never here.

use crate::AppState;
use crate::live::LiveFunction;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A pinned revision unused this long is retired (its instances stop).
pub const PINNED_IDLE: Duration = Duration::from_secs(300);

/// (function, revision) -> the live revision and when it was last invoked.
type Entries = HashMap<(String, i64), (Arc<LiveFunction>, Instant)>;

#[derive(Default)]
pub struct Pinned(tokio::sync::Mutex<Entries>);

impl Pinned {
    /// Revision `number` of `name`, live; `Ok(None)` when the store has no such revision.
    pub async fn get(
        &self,
        state: &Arc<AppState>,
        name: &str,
        number: i64,
    ) -> Result<Option<Arc<LiveFunction>>, String> {
        // Held while loading: two first invocations of one revision load it once.
        let mut map = self.0.lock().await;
        let key = (name.to_string(), number);
        if let Some((f, used)) = map.get_mut(&key) {
            *used = Instant::now();
            return Ok(Some(f.clone()));
        }
        let store = state.store.clone();
        let n = name.to_string();
        let found = tokio::task::spawn_blocking(move || {
            let project = store.function(&n)?.map(|f| f.project);
            let rev = store
                .revisions(&n)?
                .into_iter()
                .find(|r| r.number == number);
            Ok::<_, nubo_store::StoreError>(project.zip(rev))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let Some((project, rev)) = found else {
            return Ok(None);
        };
        let f = crate::deploy::load_revision(state, name, &project, &rev, &mut HashMap::new())
            .await
            .map_err(|e| e.to_string())?;
        map.insert(key, (f.clone(), Instant::now()));
        Ok(Some(f))
    }

    /// Upkeep (reaping idle instances) of pinned revisions, and retirement of unused ones.
    pub async fn maintain(&self, state: &AppState, now: Instant) {
        // Not while a revision loads: upkeep of every other function must not wait for it.
        let Ok(mut map) = self.0.try_lock() else {
            return;
        };
        let table = state.table();
        map.retain(|(name, _), (f, used)| {
            if now.duration_since(*used) > PINNED_IDLE || table.function(name).is_none() {
                crate::deploy::retire(state, f);
                return false;
            }
            match &f.runner {
                crate::live::Runner::Wasm(w) => drop(w.pool.reap(now)),
                crate::live::Runner::Process(app) => app.maintain(now),
            }
            true
        });
    }
}
