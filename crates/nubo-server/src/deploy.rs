//! Deploys: validate, check artifacts, compile, commit in one transaction, swap the route table.

use crate::AppState;
use crate::api_error::ApiError;
use crate::app::AppRevision;
use crate::live::{LiveFunction, Runner, WasmRunner};
use crate::routes::RouteTable;
use axum::http::StatusCode;
use nubo_manifest::Kind;
use nubo_sandbox::WasmComponent;
use nubo_store::{DeployError, DeployPlan, Digest, PlannedFunction};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// `POST /_nubo/api/v1/deployments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The manifest text, exactly as in the user's file.
    pub manifest: String,
    /// The manifest's file name, for messages.
    #[serde(default = "default_file")]
    pub file: String,
    /// Component path as written in the manifest -> sha256 of an uploaded blob.
    #[serde(default)]
    pub artifacts: BTreeMap<String, String>,
}

fn default_file() -> String {
    "nubo.yaml".into()
}

#[derive(Debug, Serialize)]
pub struct DeployResponse {
    pub id: i64,
    pub project: String,
    pub functions: Vec<DeployedFunction>,
    pub removed: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DeployedFunction {
    pub name: String,
    pub revision: i64,
    pub changed: bool,
    pub url: String,
    pub routes: Vec<String>,
}

/// Deploys on a task of its own: once started, a deploy runs to the end (commit and route
/// table swap together) even if the client hangs up, so the store and the table never disagree.
pub async fn deploy(state: &Arc<AppState>, req: DeployRequest) -> Result<DeployResponse, ApiError> {
    let state = state.clone();
    tokio::spawn(async move { deploy_to_end(&state, req).await })
        .await
        .map_err(|e| ApiError::internal("deploying", e))?
}

async fn deploy_to_end(
    state: &Arc<AppState>,
    req: DeployRequest,
) -> Result<DeployResponse, ApiError> {
    let manifest = nubo_manifest::parse(&req.file, &req.manifest).map_err(|e| {
        ApiError::bad_request("invalid_manifest", e.to_string())
            .hint("fix the manifest and deploy again; nothing was changed")
            .details(json!(e.problems))
    })?;

    let mut plan = DeployPlan {
        project: manifest.project.to_string(),
        manifest: req.manifest.clone(),
        functions: Vec::new(),
    };
    for f in &manifest.functions {
        let at = format!("{}: functions.{}", req.file, f.name);
        let (key, artifact) = match f.spec.kind {
            Kind::Wasm => {
                if f.spec.memory.bytes() > state.runtime.max_memory() {
                    return Err(ApiError::bad_request(
                        "invalid_manifest",
                        format!(
                            "{at}.memory: {} is above the largest wasm memory limit of this node (4Gi)",
                            f.spec.memory
                        ),
                    ));
                }
                ("component", f.spec.component.clone().unwrap_or_default())
            }
            Kind::Process | Kind::Lambda => {
                if let Err(why) = &state.process_host {
                    return Err(ApiError::bad_request(
                        "sandbox_unavailable",
                        format!(
                            "{at}: this server cannot run {} functions: {why}",
                            f.spec.kind
                        ),
                    )
                    .hint("run `nubo up` as root on Linux with cgroups (v1 or v2) mounted"));
                }
                ("dir", f.spec.dir.clone().unwrap_or_else(|| ".".into()))
            }
        };
        let digest = req.artifacts.get(&artifact).ok_or_else(|| {
            ApiError::bad_request("missing_artifact", format!("{at}.{key}: no artifact digest was given for {artifact:?}"))
                .hint("`nubo deploy` uploads artifacts for you; over the API, PUT the file (for a dir: a tar of it) to /_nubo/api/v1/blobs/<sha256> and map its path to the digest in `artifacts`")
        })?;
        let digest = Digest::parse(digest).map_err(|e| {
            ApiError::bad_request("invalid_digest", format!("artifacts.{artifact}: {e}"))
        })?;
        if !state.store.blobs.contains(&digest) {
            return Err(ApiError::bad_request(
                "missing_blob",
                format!("{at}.{key}: the artifact {digest} has not been uploaded"),
            )
            .hint("PUT it to /_nubo/api/v1/blobs/<sha256> first (`nubo deploy` does this)"));
        }
        plan.functions.push(PlannedFunction {
            name: f.name.to_string(),
            digest: digest.to_string(),
            spec: f.spec.clone(),
        });
    }

    // One deploy at a time: the table rebuilt below must start from the table the store saw,
    // and the revision numbers predicted below are the ones the commit will give.
    let _guard = state.deploy_lock.lock().await;

    // Everything that can fail runs before the commit: components compile, apps unpack and
    // start their seed, `min` and `warm` instances. A failure changes nothing.
    let table = state.table();
    let mut runners: HashMap<String, Runner> = HashMap::new();
    let mut started: Vec<Arc<AppRevision>> = Vec::new();
    let mut components: HashMap<String, WasmComponent> = HashMap::new();
    for p in &plan.functions {
        if let Some(current) = table.function(&p.name)
            && current.digest == p.digest
            && current.spec == p.spec
        {
            continue; // unchanged: keeps its live state
        }
        let revision = next_revision(state, &p.name).await?;
        let runner = match p.spec.kind {
            Kind::Wasm => {
                let component = match components.get(&p.digest) {
                    Some(c) => c.clone(),
                    None => {
                        let c = compile(state, &req.file, p, &table).await?;
                        components.insert(p.digest.clone(), c.clone());
                        c
                    }
                };
                Runner::Wasm(WasmRunner::new(
                    state, &p.name, revision, &p.spec, component,
                ))
            }
            _ => match start_app(state, &req.file, p, revision).await {
                Ok(app) => {
                    started.push(app.clone());
                    Runner::Process(app)
                }
                Err(e) => {
                    for a in &started {
                        a.retire();
                    }
                    return Err(e);
                }
            },
        };
        runners.insert(p.name.clone(), runner);
    }

    let store = state.store.clone();
    let committed_plan = plan.clone();
    let committed = tokio::task::spawn_blocking(move || store.apply_deploy(&committed_plan))
        .await
        .map_err(|e| ApiError::internal("committing the deploy", e))
        .and_then(|r| {
            r.map_err(|e| match e {
                DeployError::Store(e) => ApiError::internal("committing the deploy", e),
                conflict => ApiError::new(StatusCode::CONFLICT, "conflict", conflict.to_string())
                    .hint(
                        "rename the function or route, or remove it from the other project first",
                    ),
            })
        });
    let outcome = match committed {
        Ok(o) => o,
        Err(e) => {
            for a in &started {
                a.retire();
            }
            return Err(e);
        }
    };

    // Swap in the new table: unchanged functions keep their live state (and warm instances).
    let mut live: Vec<Arc<LiveFunction>> = table
        .functions()
        .filter(|f| f.project != plan.project)
        .cloned()
        .collect();
    for d in &outcome.functions {
        let p = plan
            .functions
            .iter()
            .find(|p| p.name == d.name)
            .expect("deployed functions come from the plan");
        match runners.remove(&d.name) {
            None => live.push(
                table
                    .function(&d.name)
                    .expect("unchanged functions are live")
                    .clone(),
            ),
            Some(runner) => live.push(LiveFunction::new(
                state,
                &d.name,
                &plan.project,
                d.revision,
                p.spec.clone(),
                &p.digest,
                runner,
            )),
        }
    }
    state.set_table(RouteTable::new(live));
    // Old revisions finish their in-flight requests on the instances they hold, then stop.
    for f in table.functions() {
        let replaced = outcome
            .functions
            .iter()
            .any(|d| d.name == f.name && d.revision != f.revision)
            || outcome.removed.contains(&f.name);
        if replaced {
            retire(state, f);
        }
    }
    for name in &outcome.removed {
        state.forget_series(name);
    }

    Ok(DeployResponse {
        id: outcome.id,
        project: outcome.project,
        functions: outcome
            .functions
            .iter()
            .map(|d| {
                let spec = &plan
                    .functions
                    .iter()
                    .find(|p| p.name == d.name)
                    .expect("from the plan")
                    .spec;
                DeployedFunction {
                    name: d.name.clone(),
                    revision: d.revision,
                    changed: d.changed,
                    url: format!("{}/fn/{}/", state.base_url, d.name),
                    routes: spec
                        .routes
                        .iter()
                        .map(|r| format!("{}{}", state.base_url, r.path))
                        .collect(),
                }
            })
            .collect(),
        removed: outcome.removed,
    })
}

/// Removes a function: from the store, then from the route table.
pub async fn remove(state: &Arc<AppState>, name: &str) -> Result<bool, ApiError> {
    let (state, name) = (state.clone(), name.to_string());
    tokio::spawn(async move { remove_to_end(&state, &name).await })
        .await
        .map_err(|e| ApiError::internal("removing the function", e))?
}

async fn remove_to_end(state: &Arc<AppState>, name: &str) -> Result<bool, ApiError> {
    let _guard = state.deploy_lock.lock().await;
    let store = state.store.clone();
    let n = name.to_string();
    let existed = tokio::task::spawn_blocking(move || store.remove_function(&n))
        .await
        .map_err(|e| ApiError::internal("removing the function", e))?
        .map_err(|e| ApiError::internal("removing the function", e))?;
    let table = state.table();
    let live: Vec<_> = table
        .functions()
        .filter(|f| f.name != name)
        .cloned()
        .collect();
    state.set_table(RouteTable::new(live));
    if let Some(f) = table.function(name) {
        retire(state, f);
    }
    state.forget_series(name);
    Ok(existed)
}

/// At start: loads every deployed function's current revision (from the compiled cache; apps
/// start their seed, `min` and `warm` instances in the background).
pub async fn load_deployed(state: &Arc<AppState>) -> anyhow::Result<()> {
    let store = state.store.clone();
    let records = tokio::task::spawn_blocking(move || store.functions()).await??;
    let mut live = Vec::new();
    let mut components: HashMap<String, WasmComponent> = HashMap::new();
    for r in records {
        match load_revision(state, &r.name, &r.project, &r.revision, &mut components).await {
            Ok(f) => live.push(f),
            Err(e) => tracing::error!(
                "function {} revision {} cannot be loaded: {e}",
                r.name,
                r.revision.number
            ),
        }
    }
    state.set_table(RouteTable::new(live));
    Ok(())
}

/// A stored revision made live: a wasm component from the compiled cache, or an app whose
/// seed, `min` and `warm` instances start in the background.
pub async fn load_revision(
    state: &Arc<AppState>,
    name: &str,
    project: &str,
    rev: &nubo_store::RevisionRecord,
    components: &mut HashMap<String, WasmComponent>,
) -> anyhow::Result<Arc<LiveFunction>> {
    let digest = rev.digest.clone();
    let runner = match rev.spec.kind {
        Kind::Wasm => {
            let component = match components.get(&digest) {
                Some(c) => c.clone(),
                None => {
                    let c = load_component(state, &digest).await?;
                    components.insert(digest.clone(), c.clone());
                    c
                }
            };
            Runner::Wasm(WasmRunner::new(
                state, name, rev.number, &rev.spec, component,
            ))
        }
        _ => {
            let planned = PlannedFunction {
                name: name.to_string(),
                digest: digest.clone(),
                spec: rev.spec.clone(),
            };
            let app = build_app(state, &planned, rev.number)
                .await
                .map_err(anyhow::Error::msg)?;
            let a = app.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                if let Err(e) = a.prepare().await {
                    tracing::error!("function {name}: {e}");
                }
            });
            Runner::Process(app)
        }
    };
    Ok(LiveFunction::new(
        state,
        name,
        project,
        rev.number,
        rev.spec.clone(),
        &digest,
        runner,
    ))
}

async fn load_component(state: &AppState, digest: &str) -> anyhow::Result<WasmComponent> {
    let runtime = state.runtime.clone();
    let blob = state
        .store
        .blobs
        .path(&Digest::parse(digest).map_err(anyhow::Error::msg)?);
    let d = digest.to_string();
    Ok(tokio::task::spawn_blocking(move || runtime.load(&d, &blob)).await??)
}

/// Lets a replaced or removed revision finish its requests, then releases its instances.
pub fn retire(state: &AppState, f: &LiveFunction) {
    match &f.runner {
        Runner::Wasm(w) => drop(w.pool.drain_idle()),
        Runner::Process(app) => {
            state.draining.add(app);
            app.retire();
        }
    }
}

/// The number the commit will give a changed function (deploys are serialised).
async fn next_revision(state: &AppState, name: &str) -> Result<i64, ApiError> {
    let store = state.store.clone();
    let n = name.to_string();
    let revs = tokio::task::spawn_blocking(move || store.revisions(&n))
        .await
        .map_err(|e| ApiError::internal("reading revisions", e))?
        .map_err(|e| ApiError::internal("reading revisions", e))?;
    Ok(revs.iter().map(|r| r.number).max().unwrap_or(0) + 1)
}

/// Compiles a component (or reuses a running one with the same digest).
async fn compile(
    state: &AppState,
    file: &str,
    p: &PlannedFunction,
    table: &RouteTable,
) -> Result<WasmComponent, ApiError> {
    if let Some(Runner::Wasm(w)) = table
        .functions()
        .find(|f| f.digest == p.digest)
        .map(|f| &f.runner)
    {
        return Ok(w.component.clone());
    }
    let runtime = state.runtime.clone();
    let digest = Digest::parse(&p.digest).expect("checked before");
    let blob = state.store.blobs.path(&digest);
    let prepared = tokio::task::spawn_blocking(move || {
        let bytes =
            std::fs::read(&blob).map_err(|e| nubo_sandbox::ComponentError::Cache(e.to_string()))?;
        runtime.prepare(digest.as_str(), &bytes)
    })
    .await
    .map_err(|e| ApiError::internal("compiling a component", e))?;
    prepared.map_err(|e| {
        let path = p.spec.component.as_deref().unwrap_or_default();
        ApiError::bad_request(
            "invalid_component",
            format!("{file}: functions.{}.component ({path}): {e}", p.name),
        )
        .hint("nothing was deployed")
    })
}

/// Unpacks an app, checks its command, and starts what must run before traffic moves.
async fn start_app(
    state: &Arc<AppState>,
    file: &str,
    p: &PlannedFunction,
    revision: i64,
) -> Result<Arc<AppRevision>, ApiError> {
    let app = build_app(state, p, revision).await.map_err(|e| {
        ApiError::bad_request("invalid_app", format!("{file}: functions.{}: {e}", p.name))
            .hint("nothing was deployed")
    })?;
    if let Err(e) = app.prepare().await {
        app.retire();
        return Err(ApiError::bad_request(
            "app_start_failed",
            format!("{file}: functions.{}: {e}", p.name),
        )
        .hint("nothing was deployed and the running revision still serves; run the app locally with PORT set to see it start"));
    }
    Ok(app)
}

async fn build_app(
    state: &Arc<AppState>,
    p: &PlannedFunction,
    revision: i64,
) -> Result<Arc<AppRevision>, String> {
    let host = state.process_host.as_ref().map_err(|e| e.clone())?;
    let digest = Digest::parse(&p.digest).map_err(|e| e.to_string())?;
    let blob = state.store.blobs.path(&digest);
    let apps = state.apps_dir.clone();
    let d = p.digest.clone();
    let dir = tokio::task::spawn_blocking(move || crate::app_files::unpack(&blob, &apps, &d))
        .await
        .map_err(|e| e.to_string())??;
    let app = AppRevision::new(state, host, &p.name, revision, &p.spec, dir);
    crate::app_files::check_command(&app.spec.dir, &app.spec.command)
        .map_err(|e| format!("command: {e}"))?;
    Ok(app)
}
