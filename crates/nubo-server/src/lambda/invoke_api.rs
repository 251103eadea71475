//! The AWS Lambda Invoke API, `POST /2015-03-31/functions/<name>/invocations`, for functions of
//! every kind, so AWS SDKs and the AWS CLI work with `--endpoint-url`.
//!
//! - `X-Amz-Invocation-Type`: `RequestResponse` (200 with the result; a handler error adds
//!   `X-Amz-Function-Error: Unhandled`), `Event` (queued durably, 202), `DryRun` (204).
//! - `Qualifier` (or `name:qualifier`, or an ARN): `$LATEST` or the current revision number.
//! - SigV4 signatures are verified when the server has access keys (`--aws-access-keys`).
//! - A wasm or process function gets the payload as `POST /` (JSON body); its response body
//!   is the result, and a status of 400 or more is a function error.

use super::{Answer, Failure, call};
use crate::AppState;
use crate::api_error::{ApiError, PlatformError};
use crate::gateway;
use crate::live::{LiveFunction, Runner};
use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use nubo_aws::lambda_errors::LambdaApiError;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

pub const PREFIX: &str = "/2015-03-31/functions/";

/// What a payload invocation produced.
pub enum PayloadResult {
    Ok {
        body: Bytes,
        instance: Option<Arc<str>>,
    },
    /// The handler failed: the error document (`errorMessage`, `errorType`).
    FunctionError {
        body: Bytes,
        instance: Option<Arc<str>>,
    },
    /// The platform could not run it (limits, removed, not startable).
    Platform(ApiError),
}

pub async fn handle(state: Arc<AppState>, req: axum::extract::Request) -> Response {
    let id = gateway::invocation_id();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let Some(name) = path
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_suffix("/invocations"))
    else {
        return aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            format!(
                "{path} is not an operation of this Lambda API; Nubo serves Invoke (POST {PREFIX}<name>/invocations)"
            ),
            &id,
        );
    };
    if parts.method != Method::POST {
        return aws_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "InvalidRequestContentException",
            format!("Invoke is POST, not {}", parts.method),
            &id,
        );
    }
    let body = match gateway::read_body(&state, &parts.headers, body).await {
        Ok(b) => b,
        Err(e) => {
            return aws_error(e.status, "RequestTooLargeException", e.message, &id);
        }
    };
    if !state.aws_keys.is_empty()
        && let Err(e) = nubo_aws::sigv4::verify(
            &state.aws_keys,
            parts.method.as_str(),
            &path,
            parts.uri.query(),
            &parts.headers,
            &body,
            std::time::SystemTime::now(),
        )
    {
        return aws_error(StatusCode::FORBIDDEN, e.aws_code(), e.to_string(), &id);
    }

    let name = percent_decode(name);
    let (name, mut qualifier) = split_name(&name);
    if let Some(q) = query_param(parts.uri.query(), "Qualifier") {
        qualifier = Some(q);
    }
    let arn = super::function_arn(&state.aws_region, &name);
    let revision = match qualifier.as_deref() {
        None | Some("$LATEST") => None,
        Some(q) => match q.parse::<i64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return aws_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameterValueException",
                    format!("Qualifier {q:?} is neither $LATEST nor a revision number"),
                    &id,
                );
            }
        },
    };
    let f = match state.function_at(&name, revision).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            let what = match revision {
                Some(n) => format!("{arn}:{n}"),
                None => arn,
            };
            return aws_error(
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                format!("Function not found: {what}"),
                &id,
            );
        }
        Err(e) => {
            return aws_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                format!("revision {revision:?} of {name} could not be loaded: {e}"),
                &id,
            );
        }
    };
    let payload = if body.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "Could not parse request body into json: the payload must be a JSON document".into(),
            &id,
        );
    } else {
        body
    };
    let kind = parts
        .headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    match kind {
        "DryRun" => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            set_common(&mut r, &id, &f);
            r
        }
        "Event" => {
            match crate::invocations::enqueue(
                &state,
                &f,
                &id,
                "event",
                "{}".into(),
                payload,
                revision,
            )
            .await
            {
                Ok(()) => {
                    let mut r = crate::invocations::accepted(&id);
                    set_common(&mut r, &id, &f);
                    r
                }
                Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => {
                    aws_error(e.status, "TooManyRequestsException", e.message, &id)
                }
                Err(e) => aws_error(e.status, "ServiceException", e.message, &id),
            }
        }
        "RequestResponse" => {
            let result = if state.otel.is_some() {
                let mut headers = parts.headers.clone();
                let t = crate::otel::Trace::begin(&mut headers);
                let trace = super::trace_header(&headers);
                let call = invoke_payload(&state, f.clone(), payload, &id, "invoke", trace);
                crate::otel::CURRENT.scope(t, call).await
            } else {
                let trace = super::trace_header(&parts.headers);
                invoke_payload(&state, f.clone(), payload, &id, "invoke", trace).await
            };
            let mut r = match result {
                PayloadResult::Ok { body, instance } => {
                    let mut r = Response::new(Body::from(body));
                    set_instance(&mut r, instance.as_deref());
                    r
                }
                PayloadResult::FunctionError { body, instance } => {
                    let mut r = Response::new(Body::from(body));
                    r.headers_mut().insert(
                        "x-amz-function-error",
                        HeaderValue::from_static("Unhandled"),
                    );
                    set_instance(&mut r, instance.as_deref());
                    r
                }
                PayloadResult::Platform(e) => platform_error(e, &id),
            };
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            set_common(&mut r, &id, &f);
            // Counted in the metrics by `invoke_payload` (or the gateway it goes through).
            r
        }
        other => aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            format!("X-Amz-Invocation-Type {other:?}: use RequestResponse, Event or DryRun"),
            &id,
        ),
    }
}

fn set_instance(r: &mut Response, instance: Option<&str>) {
    if let Some(i) = instance {
        r.headers_mut()
            .insert("nubo-instance", gateway::header_value(i));
    }
}

fn set_common(r: &mut Response, id: &str, f: &LiveFunction) {
    let h = r.headers_mut();
    h.insert("x-amzn-requestid", gateway::header_value(id));
    h.insert("nubo-invocation-id", gateway::header_value(id));
    h.insert(
        "x-amz-executed-version",
        gateway::header_value(&f.revision.to_string()),
    );
}

/// A platform refusal in the shape the SDKs parse.
fn platform_error(e: ApiError, id: &str) -> Response {
    let (status, code) = match e.code {
        "concurrency_limit" | "no_capacity" => {
            (StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsException")
        }
        "function_not_found" => (StatusCode::NOT_FOUND, "ResourceNotFoundException"),
        "body_too_large" => (StatusCode::PAYLOAD_TOO_LARGE, "RequestTooLargeException"),
        _ => (StatusCode::BAD_GATEWAY, "ServiceException"),
    };
    let mut r = aws_error(status, code, format!("{}: {}", e.code, e.message), id);
    if let Some(secs) = e.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

fn aws_error(status: StatusCode, code: &'static str, message: String, id: &str) -> Response {
    let e = LambdaApiError {
        status: status.as_u16(),
        code,
        message,
    };
    let mut r = Response::new(Body::from(e.body()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert("x-amzn-errortype", HeaderValue::from_static(code));
    h.insert("x-amzn-requestid", gateway::header_value(id));
    r
}

/// Runs `payload` through `f`, whatever its kind (also the async workers' way for `event` and
/// `cron` invocations); `trigger` (`invoke`, `event`, `cron`) reaches wasm and process functions
/// as the `Nubo-Trigger` header.
pub async fn invoke_payload(
    state: &Arc<AppState>,
    f: Arc<LiveFunction>,
    payload: Bytes,
    id: &str,
    trigger: &str,
    trace: Option<String>,
) -> PayloadResult {
    if let Runner::Process(app) = &f.runner
        && app.is_lambda()
    {
        let app = app.clone();
        f.inflight.inc();
        let inflight = gateway::Inflight(f.inflight.clone());
        let received = Instant::now();
        let called = call(state, f, &app, payload, id, trace).await;
        drop(inflight);
        let status = match &called.answer {
            Ok(Answer::Response(_)) => 200,
            Ok(Answer::Error { .. }) | Err(Failure::Ended(_)) => 502,
            Err(Failure::Timeout) => 504,
            Err(Failure::Platform(e)) => e.status.as_u16(),
        };
        let mode = called
            .timing
            .split("desc=\"")
            .nth(1)
            .and_then(|t| t.split('"').next());
        let served = gateway::Served {
            status,
            instance: called.instance.as_deref(),
            mode,
            cpu_us: called.cpu_us,
            timing: Some(&called.timing),
        };
        gateway::count(state, &called.f, id, received, served);
        let instance = called.instance;
        return match called.answer {
            Ok(Answer::Response(body)) => PayloadResult::Ok { body, instance },
            Ok(Answer::Error { error_type, body }) => PayloadResult::FunctionError {
                body: error_document(&error_type, &body),
                instance,
            },
            Err(Failure::Platform(e)) => PayloadResult::Platform(e),
            Err(Failure::Timeout) => PayloadResult::FunctionError {
                body: json_bytes(json!({
                    "errorType": "Sandbox.Timedout",
                    "errorMessage": format!(
                        "RequestId: {id} Error: Task timed out after {:.2} seconds",
                        called.f.spec.timeout.to_std().as_secs_f64()
                    ),
                })),
                instance,
            },
            Err(Failure::Ended(exit)) => PayloadResult::FunctionError {
                body: json_bytes(json!({
                    "errorType": if exit.oom { "Runtime.OutOfMemory" } else { "Runtime.ExitError" },
                    "errorMessage": format!("RequestId: {id} Error: Runtime exited: {}", exit.status),
                })),
                instance,
            },
        };
    }
    // wasm and process functions: the payload is a JSON POST to `/`.
    let req = http::Request::builder()
        .method(Method::POST)
        .uri("/")
        .header(header::CONTENT_TYPE, "application/json")
        .header("nubo-trigger", trigger)
        .body(())
        .map(|r| r.into_parts().0);
    let mut parts = match req {
        Ok(p) => p,
        Err(e) => return PayloadResult::Platform(ApiError::internal("building the request", e)),
    };
    // A traced invocation hands its span to the function, as over HTTP.
    if let Ok(trace) = crate::otel::CURRENT.try_with(|t| *t)
        && let Ok(v) = http::HeaderValue::from_str(&trace.traceparent())
    {
        parts.headers.insert("traceparent", v);
    }
    let timeout = f.spec.timeout.to_std();
    let resp = gateway::run(state, f, parts, payload, id.to_string(), Instant::now()).await;
    let status = resp.status();
    let platform = resp.extensions().get::<PlatformError>().copied();
    let instance = resp
        .headers()
        .get("nubo-instance")
        .and_then(|v| v.to_str().ok())
        .map(Arc::from);
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = http_body_util::Limited::new(resp.into_body(), state.body_limit).collect();
    // A streaming answer must not hold the caller (or an async worker) past the timeout.
    let body = match tokio::time::timeout(timeout, body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            return PayloadResult::Platform(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!("reading the function's answer failed: {e}"),
            ));
        }
        Err(_) => {
            return PayloadResult::FunctionError {
                body: json_bytes(json!({
                    "errorType": "timeout",
                    "errorMessage": "the function's response body did not end within its timeout",
                })),
                instance,
            };
        }
    };
    match platform {
        Some(p)
            if matches!(
                p.code,
                "concurrency_limit" | "no_capacity" | "function_not_found"
            ) =>
        {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(String::from))
                .unwrap_or_default();
            let mut e = ApiError::new(status, p.code, message);
            e.retry_after = retry_after;
            PayloadResult::Platform(e)
        }
        Some(p) => PayloadResult::FunctionError {
            body: json_bytes(json!({
                "errorType": p.code,
                "errorMessage": serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(String::from))
                    .unwrap_or_default(),
            })),
            instance,
        },
        None if status.as_u16() < 400 => PayloadResult::Ok { body, instance },
        None => PayloadResult::FunctionError {
            body: json_bytes(json!({
                "errorType": format!("HTTP{}", status.as_u16()),
                "errorMessage": String::from_utf8_lossy(&body).chars().take(4096).collect::<String>(),
            })),
            instance,
        },
    }
}

fn json_bytes(v: serde_json::Value) -> Bytes {
    Bytes::from(v.to_string())
}

/// The runtime's error document, with `errorType` filled in from its header when missing.
fn error_document(error_type: &str, body: &[u8]) -> Bytes {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) if v.is_object() => {
            if v.get("errorType").is_none() && !error_type.is_empty() {
                v["errorType"] = json!(error_type);
            }
            json_bytes(v)
        }
        _ => json_bytes(json!({
            "errorType": if error_type.is_empty() { "Unhandled" } else { error_type },
            "errorMessage": String::from_utf8_lossy(body),
        })),
    }
}

/// `name`, `name:qualifier`, or an ARN `arn:aws:lambda:region:account:function:name[:qualifier]`.
fn split_name(name: &str) -> (String, Option<String>) {
    let rest = match name.find(":function:") {
        Some(i) if name.starts_with("arn:") => &name[i + ":function:".len()..],
        _ => name,
    };
    match rest.split_once(':') {
        Some((n, q)) => (n.to_string(), Some(q.to_string())),
        None => (rest.to_string(), None),
    }
}

fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_qualifiers_and_arns() {
        assert_eq!(split_name("hello"), ("hello".into(), None));
        assert_eq!(split_name("hello:3"), ("hello".into(), Some("3".into())));
        assert_eq!(
            split_name("arn:aws:lambda:us-east-1:000000000000:function:hello:$LATEST"),
            ("hello".into(), Some("$LATEST".into()))
        );
        assert_eq!(percent_decode("arn%3Aaws%3Ax"), "arn:aws:x");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(
            query_param(Some("a=1&Qualifier=%24LATEST"), "Qualifier").as_deref(),
            Some("$LATEST")
        );
    }
}
