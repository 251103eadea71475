use super::*;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_str(value).expect("test header value"),
        );
    }
    map
}

/// 2026-11-22T06:35:58.123Z
fn fixed_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_795_329_358_123)
}

fn event(method: &str, path: &str, query: &str, headers: &HeaderMap, body: &[u8]) -> Value {
    request_event(&HttpRequestInfo {
        method,
        raw_path: path,
        raw_query: query,
        headers,
        body,
        source_ip: "203.0.113.9",
        request_id: "req-1",
        time: fixed_time(),
    })
}

#[test]
fn event_with_text_body_cookies_and_repeats() {
    let h = headers(&[
        ("host", "api.example.com:8080"),
        ("user-agent", "curl/8.0"),
        ("content-type", "application/json; charset=utf-8"),
        ("x-multi", "a"),
        ("x-multi", "b"),
        ("cookie", "session=abc; theme=dark"),
        ("cookie", "lang=en"),
    ]);
    let query = "tag=a&tag=b&q=hello%20world&plus=a+b&flag";
    let got = event("POST", "/items/7", query, &h, br#"{"n":1}"#);
    assert_eq!(
        got,
        json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": "/items/7",
            "rawQueryString": query,
            "cookies": ["session=abc", "theme=dark", "lang=en"],
            "headers": {
                "host": "api.example.com:8080",
                "user-agent": "curl/8.0",
                "content-type": "application/json; charset=utf-8",
                "x-multi": "a,b",
            },
            "queryStringParameters": {
                "tag": "a,b",
                "q": "hello world",
                "plus": "a+b",
                "flag": "",
            },
            "requestContext": {
                "accountId": "000000000000",
                "apiId": "nubo",
                "domainName": "api.example.com:8080",
                "domainPrefix": "api",
                "http": {
                    "method": "POST",
                    "path": "/items/7",
                    "protocol": "HTTP/1.1",
                    "sourceIp": "203.0.113.9",
                    "userAgent": "curl/8.0",
                },
                "requestId": "req-1",
                "routeKey": "$default",
                "stage": "$default",
                "time": "22/Nov/2026:06:35:58 +0000",
                "timeEpoch": 1_795_329_358_123_i64,
            },
            "body": r#"{"n":1}"#,
            "isBase64Encoded": false,
        })
    );
}

#[test]
fn event_omits_empty_parts() {
    let got = event("GET", "/", "", &HeaderMap::new(), b"");
    let object = got.as_object().expect("event is an object");
    for absent in ["cookies", "queryStringParameters", "body"] {
        assert!(!object.contains_key(absent), "{absent} should be omitted");
    }
    assert_eq!(got["headers"], json!({}));
    assert_eq!(got["isBase64Encoded"], json!(false));
    assert_eq!(got["requestContext"]["domainName"], json!("localhost"));
    assert_eq!(got["requestContext"]["domainPrefix"], json!("localhost"));
    assert_eq!(got["requestContext"]["http"]["userAgent"], json!(""));
}

#[test]
fn event_binary_bodies_are_base64() {
    let png = [0x89, b'P', b'N', b'G', 0x00, 0xff];
    let h = headers(&[("content-type", "image/png")]);
    let got = event("PUT", "/img", "", &h, &png);
    assert_eq!(got["body"], json!("iVBORwD/"));
    assert_eq!(got["isBase64Encoded"], json!(true));

    // UTF-8 bytes of a non-textual type are still base64.
    let h = headers(&[("content-type", "application/octet-stream")]);
    let got = event("PUT", "/", "", &h, b"hi");
    assert_eq!(got["body"], json!("aGk="));
    assert_eq!(got["isBase64Encoded"], json!(true));

    // No content type: text if UTF-8, base64 otherwise.
    let got = event("PUT", "/", "", &HeaderMap::new(), b"hi");
    assert_eq!(got["body"], json!("hi"));
    let got = event("PUT", "/", "", &HeaderMap::new(), &[0xff]);
    assert_eq!(got["body"], json!("/w=="));
    assert_eq!(got["isBase64Encoded"], json!(true));

    // A textual type whose bytes are not UTF-8 is base64 too.
    let h = headers(&[("content-type", "text/plain")]);
    let got = event("PUT", "/", "", &h, &[0xc3]);
    assert_eq!(got["isBase64Encoded"], json!(true));
}

#[test]
fn event_textual_content_types() {
    for content_type in [
        "text/html",
        "TEXT/CSV; charset=utf-8",
        "application/json",
        "application/xml",
        "application/javascript",
        "application/x-www-form-urlencoded",
        "application/vnd.api+json",
        "application/atom+xml",
    ] {
        let h = headers(&[("content-type", content_type)]);
        let got = event("POST", "/", "", &h, b"a=1");
        assert_eq!(got["body"], json!("a=1"), "{content_type}");
        assert_eq!(got["isBase64Encoded"], json!(false), "{content_type}");
    }
}

#[test]
fn event_domain_prefix() {
    for (host, prefix) in [
        ("abc.lambda-url.us-east-1.on.aws", "abc"),
        ("localhost:8080", "localhost"),
        ("[::1]:8080", "::1"),
    ] {
        let h = headers(&[("host", host)]);
        let got = event("GET", "/", "", &h, b"");
        assert_eq!(got["requestContext"]["domainName"], json!(host));
        assert_eq!(
            got["requestContext"]["domainPrefix"],
            json!(prefix),
            "{host}"
        );
    }
}

#[test]
fn event_tolerates_odd_input() {
    let mut h = HeaderMap::new();
    h.insert(
        "x-bin",
        HeaderValue::from_bytes(b"\xff\xfe").expect("obs-text"),
    );
    let got = event("GET", "/", "%zz=%&=x&&a=%E2%82", &h, b"");
    assert_eq!(got["headers"]["x-bin"], json!("\u{fffd}\u{fffd}"));
    assert_eq!(got["queryStringParameters"]["%zz"], json!("%"));
    // A time before the epoch does not panic.
    let before = request_event(&HttpRequestInfo {
        method: "GET",
        raw_path: "/",
        raw_query: "",
        headers: &h,
        body: b"",
        source_ip: "",
        request_id: "",
        time: UNIX_EPOCH - Duration::from_secs(10),
    });
    assert_eq!(before["requestContext"]["timeEpoch"], json!(0));
}

fn header<'a>(response: &'a HttpResponse, name: &str) -> Vec<&'a str> {
    response
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn structured_response_with_cookies_and_base64_body() {
    let payload = json!({
        "statusCode": 201,
        "headers": {"Content-Type": "image/png", "X-Count": 3, "X-Flag": true, "X-None": null},
        "multiValueHeaders": {"Vary": ["Accept", "Origin"], "X-One": "single"},
        "cookies": ["a=1; Path=/", "b=2; Max-Age=60"],
        "body": "iVBO\nRw==",
        "isBase64Encoded": true,
    });
    let got = response_from_result(payload.to_string().as_bytes()).expect("valid response");
    assert_eq!(got.status, 201);
    assert_eq!(got.body, [0x89, b'P', b'N', b'G']);
    assert_eq!(header(&got, "content-type"), ["image/png"]);
    assert_eq!(header(&got, "x-count"), ["3"]);
    assert_eq!(header(&got, "x-flag"), ["true"]);
    assert!(header(&got, "x-none").is_empty());
    assert_eq!(header(&got, "vary"), ["Accept", "Origin"]);
    assert_eq!(header(&got, "x-one"), ["single"]);
    assert_eq!(
        header(&got, "set-cookie"),
        ["a=1; Path=/", "b=2; Max-Age=60"]
    );
}

#[test]
fn structured_response_defaults() {
    let got = response_from_result(br#"{"statusCode": 204}"#).expect("valid response");
    assert_eq!(
        got,
        HttpResponse {
            status: 204,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Vec::new(),
        }
    );
    let got =
        response_from_result(br#"{"statusCode": 200, "body": "hi", "isBase64Encoded": false}"#)
            .expect("valid response");
    assert_eq!(got.body, b"hi");
    // Unpadded base64 is accepted.
    let got =
        response_from_result(br#"{"statusCode": 200, "body": "aGk", "isBase64Encoded": true}"#)
            .expect("valid response");
    assert_eq!(got.body, b"hi");
}

#[test]
fn plain_values_are_json_bodies() {
    for payload in [
        r#"{"message": "hi"}"#,
        r#""Hello, world!""#,
        "[1, 2]",
        "42",
        "null",
        r#"{"statuscode": 500}"#,
    ] {
        let got = response_from_result(payload.as_bytes()).expect("valid response");
        assert_eq!(got.status, 200, "{payload}");
        assert_eq!(header(&got, "content-type"), ["application/json"]);
        assert_eq!(got.body, payload.as_bytes(), "{payload}");
    }
    let got = response_from_result(b"").expect("empty is fine");
    assert_eq!(
        got,
        HttpResponse {
            status: 200,
            headers: Vec::new(),
            body: Vec::new()
        }
    );
}

#[test]
fn bad_results_say_what_is_wrong() {
    let cases: &[(&str, &str)] = &[
        ("{not json", "not valid JSON"),
        ("   ", "not valid JSON"),
        (
            r#"{"statusCode": 600}"#,
            "statusCode must be an integer from 100 to 599, got 600",
        ),
        (r#"{"statusCode": 99}"#, "got 99"),
        (r#"{"statusCode": "200"}"#, r#"got "200""#),
        (r#"{"statusCode": 200.5}"#, "got 200.5"),
        (r#"{"statusCode": null}"#, "got null"),
        (r#"{"statusCode": -1}"#, "got -1"),
        (
            r#"{"statusCode": 200, "body": "@@@", "isBase64Encoded": true}"#,
            "not base64",
        ),
        (
            r#"{"statusCode": 200, "body": {"a": 1}}"#,
            "body must be a string, got an object",
        ),
        (
            r#"{"statusCode": 200, "isBase64Encoded": "yes"}"#,
            "isBase64Encoded must be true or false",
        ),
        (
            r#"{"statusCode": 200, "headers": []}"#,
            "headers must be an object",
        ),
        (
            r#"{"statusCode": 200, "multiValueHeaders": 1}"#,
            "multiValueHeaders must be an object",
        ),
        (
            r#"{"statusCode": 200, "cookies": "a=1"}"#,
            "cookies must be an array",
        ),
        (r#"{"statusCode": 200, "cookies": [1]}"#, "array of strings"),
        (
            r#"{"statusCode": 200, "headers": {"bad name": "x"}}"#,
            "not a valid HTTP header name",
        ),
        (
            r#"{"statusCode": 200, "headers": {"x": "a\nb"}}"#,
            "control character",
        ),
    ];
    for (payload, expected) in cases {
        let err = response_from_result(payload.as_bytes()).unwrap_err();
        assert!(err.contains(expected), "{payload}: {err}");
    }
}
