//! Deploys: validate, check artifacts, compile, commit in one transaction, swap the route table.

use crate::AppState;
use crate::api_error::ApiError;
use crate::live::LiveFunction;
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
        if f.spec.kind != Kind::Wasm {
            return Err(ApiError::bad_request(
                "kind_not_supported",
                format!("{at}.kind: kind {} is not supported yet by this server; only wasm functions can be deployed", f.spec.kind),
            )
            .hint("deploy the wasm functions of this project, or wait for process and lambda support"));
        }
        if f.spec.memory.bytes() > state.runtime.max_memory() {
            return Err(ApiError::bad_request(
                "invalid_manifest",
                format!(
                    "{at}.memory: {} is above the largest wasm memory limit of this node (4Gi)",
                    f.spec.memory
                ),
            ));
        }
        let path = f.spec.component.as_deref().unwrap_or_default();
        let digest = req.artifacts.get(path).ok_or_else(|| {
            ApiError::bad_request("missing_artifact", format!("{at}.component: no artifact digest was given for {path:?}"))
                .hint("`nubo deploy` uploads artifacts for you; over the API, PUT the file to /_nubo/api/v1/blobs/<sha256> and map its path to the digest in `artifacts`")
        })?;
        let digest = Digest::parse(digest).map_err(|e| {
            ApiError::bad_request("invalid_digest", format!("artifacts.{path}: {e}"))
        })?;
        if !state.store.blobs.contains(&digest) {
            return Err(ApiError::bad_request(
                "missing_blob",
                format!("{at}.component: the artifact {digest} has not been uploaded"),
            )
            .hint("PUT it to /_nubo/api/v1/blobs/<sha256> first (`nubo deploy` does this)"));
        }
        plan.functions.push(PlannedFunction {
            name: f.name.to_string(),
            digest: digest.to_string(),
            spec: f.spec.clone(),
        });
    }

    // One deploy at a time: the table rebuilt below must start from the table the store saw.
    let _guard = state.deploy_lock.lock().await;

    // Compile what is not running already, before anything is committed: a component that
    // fails to compile fails the deploy and changes nothing.
    let table = state.table();
    let mut components: HashMap<String, WasmComponent> = HashMap::new();
    for p in &plan.functions {
        if components.contains_key(&p.digest) {
            continue;
        }
        if let Some(running) = table.functions().find(|f| f.component.digest() == p.digest) {
            components.insert(p.digest.clone(), running.component.clone());
            continue;
        }
        let runtime = state.runtime.clone();
        let digest = Digest::parse(&p.digest).expect("checked above");
        let blob = state.store.blobs.path(&digest);
        let prepared = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&blob)
                .map_err(|e| nubo_sandbox::ComponentError::Cache(e.to_string()))?;
            runtime.prepare(digest.as_str(), &bytes)
        })
        .await
        .map_err(|e| ApiError::internal("compiling a component", e))?;
        let component = prepared.map_err(|e| {
            let path = p.spec.component.as_deref().unwrap_or_default();
            ApiError::bad_request(
                "invalid_component",
                format!("{}: functions.{}.component ({path}): {e}", req.file, p.name),
            )
            .hint("nothing was deployed")
        })?;
        components.insert(p.digest.clone(), component);
    }

    let store = state.store.clone();
    let committed_plan = plan.clone();
    let outcome = tokio::task::spawn_blocking(move || store.apply_deploy(&committed_plan))
        .await
        .map_err(|e| ApiError::internal("committing the deploy", e))?
        .map_err(|e| match e {
            DeployError::Store(e) => ApiError::internal("committing the deploy", e),
            conflict => ApiError::new(StatusCode::CONFLICT, "conflict", conflict.to_string())
                .hint("rename the function or route, or remove it from the other project first"),
        })?;

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
        match table.function(&d.name) {
            // Same revision number, artifact and spec: keep it live, with its warm instances.
            // (Numbers alone are not enough: they start again after a function is removed.)
            Some(current)
                if current.revision == d.revision
                    && current.component.digest() == p.digest
                    && current.spec == p.spec =>
            {
                live.push(current.clone())
            }
            _ => live.push(LiveFunction::new(
                state,
                &d.name,
                &plan.project,
                d.revision,
                p.spec.clone(),
                components[&p.digest].clone(),
            )),
        }
    }
    state.set_table(RouteTable::new(live));
    // Old revisions finish their in-flight requests on the instances they hold; idle ones go.
    for f in table.functions() {
        let replaced = outcome
            .functions
            .iter()
            .any(|d| d.name == f.name && d.revision != f.revision)
            || outcome.removed.contains(&f.name);
        if replaced {
            drop(f.pool.drain_idle());
        }
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
        drop(f.pool.drain_idle());
    }
    Ok(existed)
}

/// At start: loads every deployed function's current revision (from the compiled cache).
pub async fn load_deployed(state: &Arc<AppState>) -> anyhow::Result<()> {
    let store = state.store.clone();
    let records = tokio::task::spawn_blocking(move || store.functions()).await??;
    let mut live = Vec::new();
    let mut components: HashMap<String, WasmComponent> = HashMap::new();
    for r in records {
        let component = match components.get(&r.revision.digest) {
            Some(c) => c.clone(),
            None => {
                let runtime = state.runtime.clone();
                let digest = r.revision.digest.clone();
                let blob = match Digest::parse(&digest) {
                    Ok(d) => state.store.blobs.path(&d),
                    Err(e) => {
                        tracing::error!("function {}: {e}", r.name);
                        continue;
                    }
                };
                match tokio::task::spawn_blocking(move || runtime.load(&digest, &blob)).await? {
                    Ok(c) => {
                        components.insert(r.revision.digest.clone(), c.clone());
                        c
                    }
                    Err(e) => {
                        tracing::error!(
                            "function {} revision {} cannot be loaded: {e}",
                            r.name,
                            r.revision.number
                        );
                        continue;
                    }
                }
            }
        };
        live.push(LiveFunction::new(
            state,
            &r.name,
            &r.project,
            r.revision.number,
            r.revision.spec,
            component,
        ));
    }
    state.set_table(RouteTable::new(live));
    Ok(())
}
