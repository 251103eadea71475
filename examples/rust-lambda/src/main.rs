//! An AWS Lambda function in Rust, written against the `lambda_runtime` crate and nothing else.
//!
//! The same binary runs on AWS (as the `bootstrap` of a `provided.al2023` function) and on Nubo
//! (as a `kind: lambda` function, see `nubo.yaml`): both hand it events through the Lambda
//! Runtime API at `$AWS_LAMBDA_RUNTIME_API`.
//!
//! What it answers (Nubo's end-to-end tests rely on this):
//! - an HTTP event (API Gateway HTTP API payload 2.0, as sent for `/fn/<f>/...` and `routes`):
//!   a `statusCode`/`headers`/`cookies`/`body` response describing the request;
//! - `{"action": "fail"}`: a handler error (`requested failure`);
//! - `{"action": "crash"}`: the process exits with status 3 mid-invocation;
//! - `{"action": "sleep", "ms": N}`: sleeps N milliseconds, then answers like the default;
//! - anything else: the event echoed with the function name, version, request id and deadline.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (payload, context) = event.into_parts();
    // Goes to the function's log: `nubo logs <function>` on Nubo, CloudWatch Logs on AWS.
    println!("request {}", context.request_id);

    if payload.get("rawPath").is_some() {
        return Ok(http_response(&payload));
    }
    match payload.get("action").and_then(Value::as_str) {
        Some("fail") => return Err(Error::from("requested failure")),
        Some("crash") => std::process::exit(3),
        Some("sleep") => {
            let ms = payload.get("ms").and_then(Value::as_u64).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        _ => {}
    }
    Ok(json!({
        "echo": payload,
        "function": std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok(),
        "version": std::env::var("AWS_LAMBDA_FUNCTION_VERSION").ok(),
        "request_id": context.request_id,
        "deadline_ms": context.deadline,
    }))
}

/// The answer to an HTTP API (payload format 2.0) event: the same shape a Lambda function URL
/// or an API Gateway HTTP API maps back to an HTTP response.
fn http_response(event: &Value) -> Value {
    let request = json!({
        "path": event["rawPath"],
        "method": event["requestContext"]["http"]["method"],
        "query": event["rawQueryString"],
        "body": event["body"],
        "isBase64Encoded": event.get("isBase64Encoded").cloned().unwrap_or(Value::Bool(false)),
    });
    json!({
        "statusCode": 200,
        "headers": { "content-type": "application/json", "x-handler": "rust" },
        "cookies": ["visited=1"],
        "body": request.to_string(),
    })
}
