//! `kind: lambda`: unchanged handlers on the official runtime clients (Python `awslambdaric`,
//! the Rust `lambda_runtime` crate), HTTP as API Gateway v2 events, and the Lambda Invoke API
//! as AWS SDKs call it (boto3).

use crate::harness::*;
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

fn py_lambda(extra: &str) -> String {
    format!(
        "project: lam
functions:
  py:
    kind: lambda
    command: [python3, -m, awslambdaric, handler.main]
    timeout: 2s
    routes:
      - path: /py-route/*
  pyfail:
    kind: lambda
    command: [python3, -m, awslambdaric, handler.main]
    env: {{ FAIL: \"1\" }}
  broken:
    kind: lambda
    command: [python3, -m, awslambdaric, broken.main]
{extra}"
    )
}

fn invoke_api(
    s: &Server,
    function: &str,
    kind: &str,
    payload: &str,
) -> reqwest::blocking::Response {
    s.http()
        .post(format!(
            "{}/2015-03-31/functions/{function}/invocations",
            s.url
        ))
        .header("x-amz-invocation-type", kind)
        .body(payload.to_string())
        .send()
        .unwrap()
}

fn header<'a>(r: &'a reqwest::blocking::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

fn logs(s: &Server, f: &str) -> String {
    text(&s.nubo(&["logs", f, "-n", "500"]).stdout)
}

#[test]
fn python_lambda_runs_unchanged_over_http_and_the_invoke_api() {
    require_process_sandbox!();
    require_python_module("awslambdaric", "awslambdaric");
    let s = Server::start();
    s.deploy_project(Project::app(&py_lambda(""), "lambda-py"));

    // HTTP through /fn: an API Gateway v2.0 event in, the structured result mapped back.
    let r = s
        .http()
        .post(format!("{}/fn/py/items/7?x=1&x=2&y=z", s.url))
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "x-handler"), "python");
    let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    assert!(header(&r, "server-timing").contains("cold;dur="));
    let first_instance = header(&r, "nubo-instance").to_string();
    assert!(first_instance.starts_with("py-r1-"), "{first_instance}");
    let v: Value = r.json().unwrap();
    assert_eq!(v["path"], "/items/7");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["query"], json!({ "x": "1,2", "y": "z" }));
    assert_eq!(v["body"], "hello");
    assert_eq!(v["base64"], false);
    // The W3C trace context reaches the handler as the runtime's X-Ray trace id.
    assert_eq!(
        v["trace"],
        "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331;Sampled=1"
    );
    // A route delivers the path as sent.
    let r = s.get("/py-route/a");
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().unwrap()["path"], "/py-route/a");

    // The Invoke API: the payload in, the handler's value out, with the Lambda context.
    let r = invoke_api(&s, "py", "RequestResponse", r#"{"a": 1}"#);
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-amz-executed-version"), "1");
    assert_eq!(header(&r, "x-amz-function-error"), "");
    let id = header(&r, "x-amzn-requestid").to_string();
    let v: Value = r.json().unwrap();
    assert_eq!(v["echo"], json!({ "a": 1 }));
    assert_eq!(v["request_id"], id.as_str());
    assert_eq!(v["function"], "py");
    assert_eq!(v["version"], "1");
    assert_eq!(v["memory"], "128");
    assert_eq!(v["region"], "us-east-1");
    assert!(v["trace"].as_str().unwrap().starts_with("Root=1-"), "{v}");
    let remaining = v["remaining_ms"].as_i64().unwrap();
    assert!(remaining > 1000 && remaining <= 2000, "{remaining}");

    // What the runtime prints during an invocation is tagged with that invocation.
    let r = invoke_api(&s, "py", "RequestResponse", r#"{"action": "print"}"#);
    assert_eq!(r.status(), 200);
    let id = header(&r, "x-amzn-requestid").to_string();
    eventually(Duration::from_secs(5), "the printed line tagged", || {
        let out = s.nubo(&["logs", "py", "-n", "500", "-o", "json"]);
        text(&out.stdout).lines().any(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["line"] == format!("printing for {id}") && v["invocation"] == id.as_str()
        })
    });

    // The handler raises: a function error, as AWS reports it.
    let r = invoke_api(&s, "py", "RequestResponse", r#"{"action": "fail"}"#);
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-amz-function-error"), "Unhandled");
    let v: Value = r.json().unwrap();
    assert_eq!(v["errorType"], "ValueError");
    assert_eq!(v["errorMessage"], "requested failure");
    // Over HTTP a handler error is a 502 naming it.
    let r = s.get("/fn/pyfail/");
    assert_eq!(r.status(), 502);
    let v: Value = r.json().unwrap();
    assert_eq!(error_code(&v), "function_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("failing on purpose"),
        "{v}"
    );

    // Timeout: 504 over HTTP, the instance killed and replaced, the log says so.
    let r = s.get("/fn/py/?sleep_ms=5000");
    assert_eq!(r.status(), 504);
    let timed_out = header(&r, "nubo-instance").to_string();
    let r = s.get("/fn/py/");
    assert_eq!(r.status(), 201);
    assert_ne!(
        header(&r, "nubo-instance"),
        timed_out,
        "a fresh instance serves next"
    );
    eventually(Duration::from_secs(5), "the timeout in the log", || {
        logs(&s, "py").contains("Task timed out after 2.00 seconds")
    });
    // Through the Invoke API a timeout is a function error, as in AWS.
    let r = invoke_api(
        &s,
        "py",
        "RequestResponse",
        r#"{"action": "sleep", "ms": 5000}"#,
    );
    assert_eq!(header(&r, "x-amz-function-error"), "Unhandled");
    assert_eq!(r.json::<Value>().unwrap()["errorType"], "Sandbox.Timedout");

    // A crash mid-invocation: Runtime.ExitError, and the next invocation runs on a new instance.
    let r = invoke_api(&s, "py", "RequestResponse", r#"{"action": "crash"}"#);
    assert_eq!(header(&r, "x-amz-function-error"), "Unhandled");
    let v: Value = r.json().unwrap();
    assert_eq!(v["errorType"], "Runtime.ExitError");
    assert!(
        v["errorMessage"].as_str().unwrap().contains("status 3"),
        "{v}"
    );
    assert_eq!(invoke_api(&s, "py", "RequestResponse", "{}").status(), 200);

    // An init error (the handler module fails to import) is a start failure with its message.
    let r = s.get("/fn/broken/");
    assert_eq!(r.status(), 502);
    let v: Value = r.json().unwrap();
    assert_eq!(error_code(&v), "start_failed");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be imported"),
        "{v}"
    );
    assert!(logs(&s, "broken").contains("cannot be imported"));

    // A new revision; `Qualifier` still reaches the old one, made live on demand.
    let yaml = py_lambda("").replace("timeout: 2s", "timeout: 3s");
    s.deploy_project(Project::app(&yaml, "lambda-py"));
    let qualified = |q: &str| {
        s.http()
            .post(format!(
                "{}/2015-03-31/functions/py/invocations?Qualifier={q}",
                s.url
            ))
            .body("{}")
            .send()
            .unwrap()
    };
    let r = qualified("1");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-amz-executed-version"), "1");
    assert_eq!(r.json::<Value>().unwrap()["version"], "1");
    let r = qualified("%24LATEST");
    assert_eq!(header(&r, "x-amz-executed-version"), "2");
    assert_eq!(r.json::<Value>().unwrap()["version"], "2");
    let r = qualified("9");
    assert_eq!(r.status(), 404);
    assert_eq!(header(&r, "x-amzn-errortype"), "ResourceNotFoundException");
    let r = invoke_api(&s, "py:1", "RequestResponse", "{}");
    assert_eq!(header(&r, "x-amz-executed-version"), "1");
}

/// boto3, as users call AWS Lambda, pointed at Nubo.
const BOTO3: &str = r#"
import boto3, json, sys, time, urllib.request
url, token = sys.argv[1], sys.argv[2]
c = boto3.client("lambda", endpoint_url=url, region_name="us-east-1",
                 aws_access_key_id="AKIDTEST", aws_secret_access_key=sys.argv[3])
out = {}
r = c.invoke(FunctionName="py", Payload=json.dumps({"k": 2}))
out["sync"] = [r["StatusCode"], r.get("FunctionError"), json.loads(r["Payload"].read())["echo"]]
r = c.invoke(FunctionName="py", Payload=b'{"action": "fail"}')
out["error"] = [r["StatusCode"], r.get("FunctionError"), json.loads(r["Payload"].read())["errorType"]]
r = c.invoke(FunctionName="py", InvocationType="DryRun")
out["dry"] = r["StatusCode"]
r = c.invoke(FunctionName="py", Qualifier="$LATEST", InvocationType="Event", Payload=b'{"k": 3}')
loc = r["ResponseMetadata"]["HTTPHeaders"]["location"]
out["event"] = [r["StatusCode"], loc.startswith("/_nubo/api/v1/invocations/")]
for _ in range(200):
    req = urllib.request.Request(url + loc, headers={"Authorization": "Bearer " + token})
    rec = json.loads(urllib.request.urlopen(req).read())
    if rec["status"] == "succeeded":
        break
    time.sleep(0.05)
out["event_record"] = [rec["status"], json.loads(rec["result"])["echo"]]
r = c.invoke(FunctionName="hello", Payload=b'{"x": 1}')
out["wasm"] = [r["StatusCode"], r.get("FunctionError")]
try:
    c.invoke(FunctionName="nope")
    out["missing"] = "no error"
except c.exceptions.ResourceNotFoundException as e:
    out["missing"] = e.response["Error"]["Code"]
print(json.dumps(out))
"#;

fn boto3(s: &Server, secret: &str) -> Result<Value, String> {
    let out = Command::new("python3")
        .args(["-c", BOTO3, &s.url, &s.token(), secret])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(text(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn boto3_calls_the_invoke_api_with_signatures_checked() {
    require_process_sandbox!();
    require_python_module("awslambdaric", "awslambdaric");
    require_python_module("boto3", "boto3");
    let s = Server::start_with(&["--aws-access-keys", "AKIDTEST:s3cret"]);
    let yaml = format!(
        "{}  hello:\n    kind: wasm\n    component: hello.wasm\n",
        py_lambda("")
    );
    let p = Project::app(&yaml, "lambda-py");
    std::fs::copy(guest("hello"), p.dir().join("hello.wasm")).unwrap();
    s.deploy_project(p);

    let v = boto3(&s, "s3cret").unwrap();
    assert_eq!(v["sync"], json!([200, null, { "k": 2 }]));
    assert_eq!(v["error"], json!([200, "Unhandled", "ValueError"]));
    assert_eq!(v["dry"], 204);
    assert_eq!(v["event"], json!([202, true]));
    assert_eq!(v["event_record"], json!(["succeeded", { "k": 3 }]));
    // Any kind answers the Invoke API: a wasm function gets the payload as POST /.
    assert_eq!(v["wasm"], json!([200, null]));
    // Counted once in the metrics, however it was reached.
    let metrics = s.get("/_nubo/metrics").text().unwrap();
    assert!(
        metrics.contains("nubo_invocations_total{function=\"hello\",status=\"200\"} 1\n"),
        "{metrics}"
    );
    assert_eq!(v["missing"], "ResourceNotFoundException");

    // A wrong secret is refused with the AWS error boto3 understands.
    let err = boto3(&s, "wrong").unwrap_err();
    assert!(err.contains("InvalidSignatureException"), "{err}");
    // Unsigned requests are refused when keys are set.
    let r = invoke_api(&s, "py", "RequestResponse", "{}");
    assert_eq!(r.status(), 403);
    assert_eq!(
        header(&r, "x-amzn-errortype"),
        "MissingAuthenticationTokenException"
    );
}

#[test]
fn rust_lambda_runtime_runs_unchanged() {
    require_process_sandbox!();
    let bootstrap = sibling_bin("bootstrap");
    let s = Server::start();
    let p = Project::new(
        "project: rl
functions:
  rs:
    kind: lambda
    timeout: 2s
",
        &[],
    );
    std::fs::copy(&bootstrap, p.dir().join("bootstrap")).unwrap();
    s.deploy_project(p);

    let r = s
        .http()
        .post(format!("{}/fn/rs/a/b?q=1", s.url))
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-handler"), "rust");
    assert_eq!(header(&r, "set-cookie"), "visited=1");
    let v: Value = r.json().unwrap();
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["query"], "q=1");

    let r = invoke_api(&s, "rs", "RequestResponse", r#"{"n": 5}"#);
    assert_eq!(r.status(), 200);
    let id = header(&r, "x-amzn-requestid").to_string();
    let v: Value = r.json().unwrap();
    assert_eq!(v["echo"], json!({ "n": 5 }));
    assert_eq!(v["function"], "rs");
    assert_eq!(v["request_id"], id.as_str());

    let r = invoke_api(&s, "rs", "RequestResponse", r#"{"action": "fail"}"#);
    assert_eq!(header(&r, "x-amz-function-error"), "Unhandled");
    let v: Value = r.json().unwrap();
    assert!(
        v["errorMessage"]
            .as_str()
            .unwrap()
            .contains("requested failure"),
        "{v}"
    );

    let r = invoke_api(
        &s,
        "rs",
        "RequestResponse",
        r#"{"action": "sleep", "ms": 4000}"#,
    );
    assert_eq!(r.json::<Value>().unwrap()["errorType"], "Sandbox.Timedout");
    let r = invoke_api(&s, "rs", "RequestResponse", r#"{"action": "crash"}"#);
    assert_eq!(r.json::<Value>().unwrap()["errorType"], "Runtime.ExitError");
    assert_eq!(invoke_api(&s, "rs", "RequestResponse", "{}").status(), 200);
    assert!(logs(&s, "rs").contains("Task timed out after 2.00 seconds"));
}
