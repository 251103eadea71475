//! A test fixture whose behaviour is picked by the request path:
//! `/echo` returns the body and the request headers (as `echo-<name>` headers),
//! `/env` lists the environment, `/loop` never returns, `/hog` allocates without bound,
//! `/panic` panics, `/sleep?ms=N` sleeps, `/log` writes to stdout and stderr,
//! `/count` returns how many requests this instance has served; anything else greets.

use std::sync::atomic::{AtomicU64, Ordering};
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Testkit;

wasip2::http::proxy::export!(Testkit);

static SERVED: AtomicU64 = AtomicU64::new(0);

fn respond(out: ResponseOutparam, status: u16, headers: Vec<(String, Vec<u8>)>, body: &[u8]) {
    let fields = Fields::from_list(&headers).unwrap();
    let response = OutgoingResponse::new(fields);
    response.set_status_code(status).unwrap();
    let outgoing = response.body().unwrap();
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().unwrap();
    for chunk in body.chunks(4096) {
        stream.blocking_write_and_flush(chunk).unwrap();
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).unwrap();
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let body = request.consume().unwrap();
    let mut data = Vec::new();
    {
        let stream = body.stream().unwrap();
        while let Ok(chunk) = stream.blocking_read(64 * 1024) {
            data.extend_from_slice(&chunk);
        }
    }
    IncomingBody::finish(body);
    data
}

fn query_param(path: &str, name: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

impl wasip2::exports::http::incoming_handler::Guest for Testkit {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        let path = request.path_with_query().unwrap_or_default();
        let route = path.split('?').next().unwrap_or("").to_string();
        let text = vec![("content-type".to_string(), b"text/plain".to_vec())];
        match route.as_str() {
            "/echo" => {
                let mut headers: Vec<(String, Vec<u8>)> = request
                    .headers()
                    .entries()
                    .into_iter()
                    .map(|(k, v)| (format!("echo-{k}"), v))
                    .collect();
                let method = format!("{:?}", request.method());
                headers.push(("echo-method".into(), method.into_bytes()));
                headers.push(("echo-path".into(), path.clone().into_bytes()));
                let body = read_body(&request);
                respond(out, 200, headers, &body);
            }
            "/env" => {
                let mut lines = String::new();
                for (k, v) in std::env::vars() {
                    lines.push_str(&format!("{k}={v}\n"));
                }
                respond(out, 200, text, lines.as_bytes());
            }
            "/loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "/hog" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "/panic" => panic!("testkit was asked to panic"),
            "/sleep" => {
                let ms: u64 = query_param(&path, "ms").and_then(|v| v.parse().ok()).unwrap_or(100);
                wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                respond(out, 200, text, format!("slept {ms} ms\n").as_bytes());
            }
            "/log" => {
                println!("hello on stdout");
                eprintln!("hello on stderr");
                respond(out, 200, text, b"logged\n");
            }
            "/count" => respond(out, 200, text, format!("{served}\n").as_bytes()),
            "/status" => {
                let code: u16 = query_param(&path, "code").and_then(|v| v.parse().ok()).unwrap_or(200);
                respond(out, code, text, format!("status {code}\n").as_bytes());
            }
            _ => respond(out, 200, text, format!("hello from testkit at {path}\n").as_bytes()),
        }
    }
}
