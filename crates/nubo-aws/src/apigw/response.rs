//! Handler result -> HTTP response, as Lambda function URLs interpret it.

use crate::clip;
use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

/// Accepts base64 with or without padding: runtimes differ, and AWS is lenient too.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// An HTTP response ready to send; header names and values are valid for `http`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Maps a handler's result payload back to HTTP as function URLs do.
///
/// A JSON object with `statusCode` is a structured response (`headers`, `multiValueHeaders`,
/// `cookies` -> one `Set-Cookie` each, `body`, `isBase64Encoded`; `content-type` defaults to
/// `application/json`). Any other JSON value is sent as is: 200, `application/json`, the
/// payload bytes unchanged. An empty payload is 200 with an empty body. Anything else is an
/// `Err` saying what is wrong, meant for a 502 the function's author will read.
pub fn response_from_result(payload: &[u8]) -> Result<HttpResponse, String> {
    if payload.is_empty() {
        return Ok(HttpResponse {
            status: 200,
            headers: Vec::new(),
            body: Vec::new(),
        });
    }
    let value: Value = serde_json::from_slice(payload).map_err(|e| {
        format!(
            "the function's result is not valid JSON ({e}); return a JSON value, or an object \
             with statusCode, headers and body"
        )
    })?;
    match value {
        Value::Object(object) if object.contains_key("statusCode") => structured(&object),
        _ => Ok(HttpResponse {
            status: 200,
            headers: vec![content_type_json()],
            body: payload.to_vec(),
        }),
    }
}

fn content_type_json() -> (String, String) {
    ("content-type".to_owned(), "application/json".to_owned())
}

fn structured(object: &Map<String, Value>) -> Result<HttpResponse, String> {
    let status = status_code(object.get("statusCode").unwrap_or(&Value::Null))?;
    let mut headers = Vec::new();
    match object.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                if let Some(text) = header_text(value) {
                    headers.push((name.clone(), text));
                }
            }
        }
        Some(other) => return Err(format!("headers must be an object, got {}", kind(other))),
    }
    match object.get("multiValueHeaders") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, values) in map {
                let values = match values {
                    Value::Array(items) => items.iter().collect(),
                    single => vec![single],
                };
                headers.extend(
                    values
                        .into_iter()
                        .filter_map(header_text)
                        .map(|text| (name.clone(), text)),
                );
            }
        }
        Some(other) => {
            return Err(format!(
                "multiValueHeaders must be an object of arrays, got {}",
                kind(other)
            ));
        }
    }
    match object.get("cookies") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                let Value::String(cookie) = item else {
                    return Err(format!(
                        "cookies must be an array of strings, but one is {}",
                        kind(item)
                    ));
                };
                headers.push(("set-cookie".to_owned(), cookie.clone()));
            }
        }
        Some(other) => return Err(format!("cookies must be an array, got {}", kind(other))),
    }
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        headers.push(content_type_json());
    }
    for (name, value) in &headers {
        check_header(name, value)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body: body(object)?,
    })
}

fn status_code(value: &Value) -> Result<u16, String> {
    value
        .as_u64()
        .filter(|code| (100..=599).contains(code))
        .and_then(|code| u16::try_from(code).ok())
        .ok_or_else(|| {
            format!(
                "statusCode must be an integer from 100 to 599, got {}",
                clip(&value.to_string())
            )
        })
}

/// A header value as text: strings as is, other scalars as their JSON text; null means none.
fn header_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

fn check_header(name: &str, value: &str) -> Result<(), String> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!(
            "response header name {:?} is not a valid HTTP header name",
            clip(name)
        ));
    }
    if http::HeaderValue::from_bytes(value.as_bytes()).is_err() {
        return Err(format!(
            "the value of response header {name:?} has a control character (such as a newline)"
        ));
    }
    Ok(())
}

fn body(object: &Map<String, Value>) -> Result<Vec<u8>, String> {
    let is_base64 = match object.get("isBase64Encoded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(other) => {
            return Err(format!(
                "isBase64Encoded must be true or false, got {}",
                clip(&other.to_string())
            ));
        }
    };
    match object.get("body") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) if is_base64 => {
            let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
            BASE64
                .decode(compact)
                .map_err(|e| format!("body is marked isBase64Encoded but is not base64: {e}"))
        }
        Some(Value::String(text)) => Ok(text.clone().into_bytes()),
        Some(other) => Err(format!(
            "body must be a string, got {}; serialize it first (JSON.stringify, json.dumps)",
            kind(other)
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
