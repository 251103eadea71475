//! `nubo invoke`: one synchronous invocation; the body goes to stdout.

use crate::connect::Target;
use anyhow::{Context as _, bail};
use std::io::Write as _;

pub async fn run(
    target: &Target,
    function: &str,
    data: Option<String>,
    path: &str,
    method: Option<String>,
    include: bool,
    asynchronous: bool,
) -> anyhow::Result<()> {
    let body = match &data {
        Some(d) if d.starts_with('@') => {
            std::fs::read(&d[1..]).with_context(|| format!("reading {}", &d[1..]))?
        }
        Some(d) => d.clone().into_bytes(),
        None => Vec::new(),
    };
    let method = match method {
        Some(m) => m
            .to_ascii_uppercase()
            .parse()
            .with_context(|| format!("invalid method {m:?}"))?,
        None if data.is_some() => reqwest::Method::POST,
        None => reqwest::Method::GET,
    };
    let out = target
        .anonymous()
        .invoke(function, method, path, body, asynchronous)
        .await?;
    if asynchronous && out.status == 202 {
        // The id alone on stdout, for scripts; where to follow it on stderr.
        let id = out
            .headers
            .get("nubo-invocation-id")
            .and_then(|v| v.to_str().ok())
            .context("the server accepted the invocation but sent no Nubo-Invocation-Id")?;
        println!("{id}");
        if include {
            eprintln!("status: nubo invocation {id}   (GET /_nubo/api/v1/invocations/{id})");
        }
        return Ok(());
    }
    if include {
        eprintln!("status: {}", out.status);
        for (k, v) in &out.headers {
            eprintln!("{k}: {}", v.to_str().unwrap_or("<binary>"));
        }
    }
    if (200..400).contains(&out.status) {
        std::io::stdout().write_all(&out.body)?;
        return Ok(());
    }
    // A platform error has the JSON shape; a function's own error page is printed as it is.
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&out.body).ok();
    match parsed.as_ref().and_then(|v| v.get("error")) {
        Some(e) => bail!(
            "{} ({}, {}){}",
            e["message"].as_str().unwrap_or("invocation failed"),
            out.status,
            e["code"].as_str().unwrap_or("error"),
            e["hint"]
                .as_str()
                .map(|h| format!(" (hint: {h})"))
                .unwrap_or_default()
        ),
        None => {
            std::io::stdout().write_all(&out.body)?;
            bail!("the function answered with status {}", out.status)
        }
    }
}
