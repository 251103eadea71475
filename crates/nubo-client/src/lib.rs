//! A client of the Nubo admin API and gateway, used by the CLI and by tests.
//!
//! It knows the routes and the error shape of the API (interface.md §3, §4), and nothing of
//! the server's internals. Answers are JSON values: the CLI prints them, tests inspect them.

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the Nubo server at {url}: {reason}. Is `nubo up` running? (set --server or NUBO_SERVER)"
    )]
    Unreachable { url: String, reason: String },
    #[error("{message}{}", hint.as_ref().map(|h| format!(" (hint: {h})")).unwrap_or_default())]
    Api {
        status: u16,
        code: String,
        message: String,
        hint: Option<String>,
    },
    #[error("unexpected answer from the server ({status}): {body}")]
    Protocol { status: u16, body: String },
}

/// The answer of an invocation, whatever its status.
#[derive(Debug)]
pub struct Invocation {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

#[derive(Serialize)]
struct DeployBody<'a> {
    manifest: &'a str,
    file: &'a str,
    artifacts: &'a BTreeMap<String, String>,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Client {
        Client {
            http: reqwest::Client::builder()
                .pool_idle_timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("a plain HTTP client always builds"),
            base: base.trim_end_matches('/').to_string(),
            token,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self
            .http
            .request(method, format!("{}/_nubo/api/v1{path}", self.base));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        rb.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: root_cause(&e),
        })
    }

    async fn json(&self, rb: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let resp = self.send(rb).await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: root_cause(&e),
        })?;
        let value: Option<Value> = serde_json::from_slice(&body).ok();
        if (200..300).contains(&status) {
            return value.ok_or_else(|| ClientError::Protocol {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        if status == 401 && self.token.is_none() {
            return Err(self.no_token());
        }
        Err(api_error(status, value, &body))
    }

    fn no_token(&self) -> ClientError {
        ClientError::Api {
            status: 401,
            code: "unauthorized".into(),
            message: format!("no admin token was found for {}", self.base),
            hint: Some("pass --token or set NUBO_TOKEN; a server started on this machine by the same user is found by itself".into()),
        }
    }

    pub async fn functions(&self) -> Result<Value, ClientError> {
        self.json(self.api(reqwest::Method::GET, "/functions"))
            .await
    }

    pub async fn function(&self, name: &str) -> Result<Value, ClientError> {
        self.json(self.api(reqwest::Method::GET, &format!("/functions/{name}")))
            .await
    }

    /// The per-instance view of a function.
    pub async fn instances(&self, name: &str) -> Result<Value, ClientError> {
        self.json(self.api(
            reqwest::Method::GET,
            &format!("/functions/{name}/instances"),
        ))
        .await
    }

    pub async fn remove(&self, name: &str) -> Result<Value, ClientError> {
        self.json(self.api(reqwest::Method::DELETE, &format!("/functions/{name}")))
            .await
    }

    /// Log lines after id `after` (0: the newest `limit`).
    /// Log lines after line `after`, at or after `since` (ms since the epoch).
    pub async fn logs(
        &self,
        name: &str,
        after: i64,
        since: i64,
        limit: i64,
    ) -> Result<Value, ClientError> {
        self.json(self.api(
            reqwest::Method::GET,
            &format!("/functions/{name}/logs?after={after}&since={since}&limit={limit}"),
        ))
        .await
    }

    /// The newest `limit` log lines at or after `since`, then every new line as the server
    /// stores it: newline-delimited JSON, one line object per line, read with `chunk()`.
    pub async fn follow_logs(
        &self,
        name: &str,
        since: i64,
        limit: i64,
    ) -> Result<reqwest::Response, ClientError> {
        let rb = self.api(
            reqwest::Method::GET,
            &format!("/functions/{name}/logs?follow=true&since={since}&limit={limit}"),
        );
        let resp = self.send(rb).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        // An error is a plain JSON answer.
        let status = resp.status().as_u16();
        if status == 401 && self.token.is_none() {
            return Err(self.no_token());
        }
        let body = resp.bytes().await.unwrap_or_default();
        let value: Option<Value> = serde_json::from_slice(&body).ok();
        Err(api_error(status, value, &body))
    }

    pub async fn has_blob(&self, digest: &str) -> Result<bool, ClientError> {
        let resp = self
            .send(self.api(reqwest::Method::HEAD, &format!("/blobs/{digest}")))
            .await?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            401 if self.token.is_none() => Err(self.no_token()),
            401 => Err(api_error(401, None, b"")),
            status => Err(ClientError::Protocol {
                status,
                body: "HEAD of a blob".into(),
            }),
        }
    }

    /// Uploads an artifact; `progress` is called with the bytes sent so far.
    pub async fn put_blob(
        &self,
        digest: &str,
        data: bytes::Bytes,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<Value, ClientError> {
        const CHUNK: usize = 256 * 1024;
        let chunks: Vec<bytes::Bytes> = (0..data.len())
            .step_by(CHUNK)
            .map(|i| data.slice(i..(i + CHUNK).min(data.len())))
            .collect();
        let mut sent = 0u64;
        let stream = futures::stream::iter(chunks.into_iter().map(move |c| {
            sent += c.len() as u64;
            progress(sent);
            Ok::<_, std::io::Error>(c)
        }));
        let rb = self
            .api(reqwest::Method::PUT, &format!("/blobs/{digest}"))
            .header(reqwest::header::CONTENT_LENGTH, data.len())
            .body(reqwest::Body::wrap_stream(stream));
        self.json(rb).await
    }

    pub async fn deploy(
        &self,
        manifest: &str,
        file: &str,
        artifacts: &BTreeMap<String, String>,
    ) -> Result<Value, ClientError> {
        let body = DeployBody {
            manifest,
            file,
            artifacts,
        };
        self.json(self.api(reqwest::Method::POST, "/deployments").json(&body))
            .await
    }

    /// Usage per function and project since `since` (ms since the epoch).
    pub async fn usage(&self, since: i64) -> Result<Value, ClientError> {
        self.json(self.api(reqwest::Method::GET, &format!("/usage?since={since}")))
            .await
    }

    /// A function's invocation records since `since`, newest first.
    pub async fn records(
        &self,
        name: &str,
        since: i64,
        limit: usize,
    ) -> Result<Value, ClientError> {
        self.json(self.api(
            reqwest::Method::GET,
            &format!("/functions/{name}/records?since={since}&limit={limit}"),
        ))
        .await
    }

    /// An async invocation's record.
    pub async fn invocation(&self, id: &str) -> Result<Value, ClientError> {
        self.json(self.api(reqwest::Method::GET, &format!("/invocations/{id}")))
            .await
    }

    /// A function's async invocations in `status` (`dead`: the dead-letter list).
    pub async fn invocations(
        &self,
        name: &str,
        status: &str,
        limit: usize,
    ) -> Result<Value, ClientError> {
        self.json(self.api(
            reqwest::Method::GET,
            &format!("/functions/{name}/invocations?status={status}&limit={limit}"),
        ))
        .await
    }

    /// Queues dead letters of a function again (all when `ids` is empty).
    pub async fn replay(&self, name: &str, ids: &[String]) -> Result<Value, ClientError> {
        let body = serde_json::json!({ "ids": ids });
        self.json(
            self.api(
                reqwest::Method::POST,
                &format!("/functions/{name}/dlq/replay"),
            )
            .json(&body),
        )
        .await
    }

    /// Invokes a function through `/fn/<name><path>` (asynchronously: a 202 with the id).
    pub async fn invoke(
        &self,
        name: &str,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        asynchronous: bool,
    ) -> Result<Invocation, ClientError> {
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        let rb = self
            .http
            .request(method, format!("{}/fn/{name}{path}", self.base))
            .body(body);
        let rb = if asynchronous {
            rb.header("prefer", "respond-async")
        } else {
            rb
        };
        let resp = self.send(rb).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: root_cause(&e),
        })?;
        Ok(Invocation {
            status,
            headers,
            body,
        })
    }
}

fn api_error(status: u16, value: Option<Value>, body: &[u8]) -> ClientError {
    match value.as_ref().and_then(|v| v.get("error")) {
        Some(e) => ClientError::Api {
            status,
            code: e["code"].as_str().unwrap_or("unknown").to_string(),
            message: e["message"].as_str().unwrap_or("(no message)").to_string(),
            hint: e["hint"].as_str().map(String::from),
        },
        None if status == 401 => ClientError::Api {
            status,
            code: "unauthorized".into(),
            message: "the server refused the admin token".into(),
            hint: Some("pass --token or NUBO_TOKEN".into()),
        },
        None => ClientError::Protocol {
            status,
            body: String::from_utf8_lossy(body).into_owned(),
        },
    }
}

/// The innermost cause, which is what a user can act on ("Connection refused").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
