//! `nubo init TEMPLATE DIR`: starter projects that deploy as they are.

use anyhow::{Context as _, bail};
use std::path::Path;

const RUST_WASM_LIB: &str = r#"//! A wasi:http function: Nubo calls `handle` for every request.

use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Function;

wasip2::http::proxy::export!(Function);

impl wasip2::exports::http::incoming_handler::Guest for Function {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
        let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())]).unwrap();
        let response = OutgoingResponse::new(headers);
        let body = response.body().unwrap();
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().unwrap();
        stream
            .blocking_write_and_flush(format!("{greeting} from Nubo! You asked for {path}\n").as_bytes())
            .unwrap();
        drop(stream);
        OutgoingBody::finish(body, None).unwrap();
    }
}
"#;

const PYTHON_APP: &str = r#""""A Flask app. Nubo runs it unchanged: as a plain process, or forked from a seed that
imported it once (see `python:` in nubo.yaml)."""
import os
import uuid

from flask import Flask, jsonify

app = Flask(__name__)
STARTED_AS = uuid.uuid4().hex  # module level: fresh in every instance, forked or not


@app.get("/health")
def health():
    return "ok"


@app.get("/", defaults={"path": ""})
@app.get("/<path:path>")  # routes pass the whole path: /NAME/... arrives as is
def index(path):
    return jsonify(message="Hello from Nubo!", path="/" + path,
                   instance=os.environ.get("NUBO_INSTANCE"), pid=os.getpid(),
                   started_as=STARTED_AS)


if __name__ == "__main__":  # for running it yourself: PORT=8000 python3 app.py
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
"#;

const NODE_APP: &str = r#"// A plain Node.js HTTP server. Nubo runs it unchanged: it only has to listen on $PORT.
const http = require("http");

const server = http.createServer((req, res) => {
  if (req.url === "/health") {
    res.end("ok");
    return;
  }
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify({
    message: "Hello from Nubo!",
    instance: process.env.NUBO_INSTANCE,
    pid: process.pid,
    path: req.url,
  }));
});

server.listen(Number(process.env.PORT || 8000), "127.0.0.1");
process.on("SIGTERM", () => server.close(() => process.exit(0)));
"#;

const PYTHON_LAMBDA: &str = r#""""An AWS Lambda handler, exactly as it would be deployed to AWS.

Nubo runs it with the official runtime client, `python3 -m awslambdaric handler.main`: the
client fetches each event from the Runtime API Nubo serves to this instance and calls `main`.
"""
import base64
import json
import os


def main(event, context):
    # HTTP requests (`/fn/<function>/...`, the manifest's routes, `nubo invoke`) arrive as API
    # Gateway HTTP API payload 2.0 events, the events a Lambda function URL sends.
    if isinstance(event, dict) and "rawPath" in event:
        name = http_name(event)
        print(f"{event['requestContext']['http']['method']} {event['rawPath']} for {name}")
        return {
            "statusCode": 200,
            "headers": {"content-type": "application/json"},
            "body": json.dumps(
                {
                    "message": f"Hello, {name}!",
                    "path": event["rawPath"],
                    "request_id": context.aws_request_id,
                }
            ),
        }
    # Anything else (the Invoke API, AWS CLI and SDKs, async invocations, cron) is the JSON
    # event as sent; the return value is the result.
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    print(f"event for {name}")
    return {
        "message": f"Hello, {name}!",
        "function": context.function_name,
        "version": context.function_version,
        "memory_mb": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "region": os.environ.get("AWS_REGION"),
    }


def http_name(event):
    """`?name=` from the query string, else `name` from a JSON body, else "world"."""
    query = event.get("queryStringParameters") or {}
    if query.get("name"):
        return query["name"]
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8", "replace")
    try:
        return json.loads(body).get("name") or "world"
    except (ValueError, AttributeError):
        return "world"
"#;

pub fn run(template: &str, dir: &Path) -> anyhow::Result<()> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.to_ascii_lowercase().replace(['_', ' ', '.'], "-"))
        .filter(|n| nubo_manifest::validate_function_name(n).is_ok())
        .unwrap_or_else(|| "hello".to_string());
    if dir.exists()
        && dir
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} exists and is not empty: choose a new directory",
            dir.display()
        );
    }
    let files: Vec<(&str, String)> = match template {
        "rust-wasm" => {
            let crate_name = name.replace('-', "_");
            vec![
                (
                    "Cargo.toml",
                    format!(
                        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nwasip2 = \"1\"\n\n[profile.release]\nopt-level = \"s\"\nlto = true\nstrip = true\n"
                    ),
                ),
                ("src/lib.rs", RUST_WASM_LIB.to_string()),
                (
                    "nubo.yaml",
                    format!(
                        "project: {name}\nfunctions:\n  {name}:\n    kind: wasm\n    build: cargo build --release --target wasm32-wasip2 --target-dir target\n    component: target/wasm32-wasip2/release/{crate_name}.wasm\n    env: {{ GREETING: Hello }}\n    memory: 64Mi\n    timeout: 10s\n    routes:\n      - path: /{name}\n        methods: [GET, POST]\n"
                    ),
                ),
                (".gitignore", "/target\n".to_string()),
            ]
        }
        "python-app" => vec![
            ("app.py", PYTHON_APP.to_string()),
            ("requirements.txt", "flask>=2\n".to_string()),
            (".nuboignore", "__pycache__/\n*.pyc\n.venv/\n".to_string()),
            (
                "nubo.yaml",
                format!(
                    "project: {name}\nfunctions:\n  {name}:\n    kind: process\n    # New instances fork from a seed that imported app.py once (milliseconds).\n    python: {{ wsgi: \"app:app\" }}\n    ready: /health\n    memory: 256Mi\n    concurrency: 16\n    scale: {{ max: 10, idle: 5m }}\n    routes:\n      - path: /{name}/*\n"
                ),
            ),
        ],
        "node-app" => vec![
            ("server.js", NODE_APP.to_string()),
            (".nuboignore", "node_modules/.cache/\n".to_string()),
            (
                "nubo.yaml",
                format!(
                    "project: {name}\nfunctions:\n  {name}:\n    kind: process\n    command: [node, server.js]\n    ready: /health\n    memory: 256Mi\n    # One instance started and frozen ahead of time: scale-out thaws it.\n    warm: 1\n    scale: {{ max: 10, idle: 5m }}\n    routes:\n      - path: /{name}/*\n"
                ),
            ),
        ],
        "python-lambda" => vec![
            ("handler.py", PYTHON_LAMBDA.to_string()),
            (".nuboignore", "__pycache__/\n*.pyc\n.venv/\n".to_string()),
            (
                "nubo.yaml",
                format!(
                    "project: {name}\nfunctions:\n  {name}:\n    kind: lambda\n    # An AWS Lambda handler, unchanged, on the official runtime client (awslambdaric).\n    command: [python3, -m, awslambdaric, handler.main]\n    memory: 128Mi\n    timeout: 10s\n    # One invocation at a time per instance, as on AWS: scale.max caps them.\n    scale: {{ max: 10, idle: 5m }}\n    async: {{ retries: 2, max_age: 1h }}\n    routes:\n      - path: /{name}\n"
                ),
            ),
        ],
        other => bail!(
            "unknown template {other:?}: available templates: rust-wasm, python-app, node-app, python-lambda"
        ),
    };
    for (path, text) in files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("created {} ({template}). Next:", dir.display());
    match template {
        "rust-wasm" => println!("  rustup target add wasm32-wasip2   # once"),
        "python-app" => println!("  pip install flask   # on the server, once"),
        "python-lambda" => println!(
            "  pip install awslambdaric   # on the server, once (or into the project: pip install --target {} awslambdaric)",
            dir.display()
        ),
        _ => {}
    }
    println!("  cd {} && nubo deploy", dir.display());
    if template == "python-lambda" {
        println!("  nubo invoke {name} --data '{{\"name\": \"Ada\"}}'");
    }
    Ok(())
}
