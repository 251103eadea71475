//! HTTP request -> v2.0 event.

use crate::percent;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// The parts of an incoming HTTP request that the event carries.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequestInfo<'a> {
    pub method: &'a str,
    /// The path as the function should see it, e.g. `/items/7`.
    pub raw_path: &'a str,
    /// Without `?`; may be empty.
    pub raw_query: &'a str,
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
    pub source_ip: &'a str,
    pub request_id: &'a str,
    pub time: SystemTime,
}

/// The v2.0 event as AWS sends it. Optional fields (`cookies`, `queryStringParameters`,
/// `body`) are omitted when empty, as AWS does.
pub fn request_event(r: &HttpRequestInfo) -> Value {
    let mut event = Map::new();
    event.insert("version".into(), json!("2.0"));
    event.insert("routeKey".into(), json!("$default"));
    event.insert("rawPath".into(), json!(r.raw_path));
    event.insert("rawQueryString".into(), json!(r.raw_query));
    let cookies = cookies(r.headers);
    if !cookies.is_empty() {
        event.insert("cookies".into(), json!(cookies));
    }
    event.insert("headers".into(), headers(r.headers));
    let query = query_parameters(r.raw_query);
    if !query.is_empty() {
        event.insert("queryStringParameters".into(), json!(query));
    }
    event.insert("requestContext".into(), request_context(r));
    let (body, is_base64) = body(r.headers, r.body);
    if let Some(body) = body {
        event.insert("body".into(), json!(body));
    }
    event.insert("isBase64Encoded".into(), json!(is_base64));
    Value::Object(event)
}

fn lossy(value: &http::HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// Every `Cookie` header, split into its `name=value` pairs.
fn cookies(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|value| {
            lossy(value)
                .split(';')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Lowercase names, repeated values joined by ','; `cookie` goes to `cookies` instead.
fn headers(headers: &http::HeaderMap) -> Value {
    let mut out = Map::new();
    for name in headers.keys() {
        if name == http::header::COOKIE {
            continue;
        }
        let values: Vec<String> = headers.get_all(name).iter().map(lossy).collect();
        out.insert(name.as_str().to_owned(), json!(values.join(",")));
    }
    Value::Object(out)
}

/// Decoded parameters, repeated keys joined by ','. `+` is left as is.
fn query_parameters(raw_query: &str) -> BTreeMap<String, String> {
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| String::from_utf8_lossy(&percent::decode(s)).into_owned();
        params.entry(decode(key)).or_default().push(decode(value));
    }
    params
        .into_iter()
        .map(|(key, values)| (key, values.join(",")))
        .collect()
}

fn request_context(r: &HttpRequestInfo) -> Value {
    let domain = r
        .headers
        .get(http::header::HOST)
        .map(lossy)
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    let user_agent = r
        .headers
        .get(http::header::USER_AGENT)
        .map(lossy)
        .unwrap_or_default();
    let epoch_ms = match r.time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    let time = chrono::DateTime::from_timestamp_millis(epoch_ms)
        .unwrap_or_default()
        .format("%d/%b/%Y:%H:%M:%S +0000")
        .to_string();
    json!({
        "accountId": "000000000000",
        "apiId": "nubo",
        "domainName": domain,
        "domainPrefix": domain_prefix(&domain),
        "http": {
            "method": r.method,
            "path": r.raw_path,
            "protocol": "HTTP/1.1",
            "sourceIp": r.source_ip,
            "userAgent": user_agent,
        },
        "requestId": r.request_id,
        "routeKey": "$default",
        "stage": "$default",
        "time": time,
        "timeEpoch": epoch_ms,
    })
}

/// The first DNS label of the host, without any port (`api.example.com:8080` -> `api`).
fn domain_prefix(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal has no DNS labels: use the address.
        return rest.split(']').next().unwrap_or(rest);
    }
    let name = host.split(':').next().unwrap_or(host);
    name.split('.').next().unwrap_or(name)
}

/// The body as text when it is UTF-8 of a textual type (or of no declared type), else base64.
fn body(headers: &http::HeaderMap, body: &[u8]) -> (Option<String>, bool) {
    if body.is_empty() {
        return (None, false);
    }
    let textual = match headers.get(http::header::CONTENT_TYPE) {
        None => true,
        Some(value) => value.to_str().is_ok_and(is_textual),
    };
    match std::str::from_utf8(body) {
        Ok(text) if textual => (Some(text.to_owned()), false),
        _ => (Some(BASE64.encode(body)), true),
    }
}

fn is_textual(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime.starts_with("text/")
        || matches!(
            mime.as_str(),
            "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/x-www-form-urlencoded"
        )
        || mime.ends_with("+json")
        || mime.ends_with("+xml")
}
