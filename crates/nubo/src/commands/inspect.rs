//! `nubo ls`, `get`, `rm`, `logs`.

use crate::Output;
use comfy_table::{Table, presets::NOTHING};
use nubo_client::Client;
use serde_json::Value;

/// `--since 10m` as milliseconds since the epoch (0: no bound).
fn since_ms(since: Option<&str>) -> anyhow::Result<i64> {
    let Some(ago) = since else { return Ok(0) };
    let d =
        nubo_manifest::Duration::parse(ago).map_err(|e| anyhow::anyhow!("--since {ago:?}: {e}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Ok(now - d.millis() as i64)
}

pub async fn usage(client: &Client, since: Option<&str>, output: Output) -> anyhow::Result<()> {
    let v = client.usage(since_ms(since)?).await?;
    if output == Output::Json {
        print_json(&v);
        return Ok(());
    }
    for (what, key) in [("function", "functions"), ("project", "projects")] {
        let mut t = table(&[what, "invocations", "gb-seconds", "cpu-seconds", "errors"]);
        for u in v[key].as_array().into_iter().flatten() {
            t.add_row(vec![
                s(&u["name"]),
                s(&u["invocations"]),
                format!("{:.6}", u["gb_seconds"].as_f64().unwrap_or(0.0)),
                format!("{:.6}", u["cpu_seconds"].as_f64().unwrap_or(0.0)),
                s(&u["errors"]),
            ]);
        }
        println!("{t}\n");
    }
    Ok(())
}

pub(crate) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING)
        .set_header(header.iter().map(|h| h.to_uppercase()));
    t
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub(crate) fn age(ms: &Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let secs = (now - ms.as_i64().unwrap_or(now)).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

pub async fn ls(client: &Client, output: Output) -> anyhow::Result<()> {
    let v = client.functions().await?;
    if output == Output::Json {
        print_json(&v["functions"]);
        return Ok(());
    }
    let mut t = table(&[
        "name",
        "project",
        "kind",
        "revision",
        "instances",
        "age",
        "url",
    ]);
    for f in v["functions"].as_array().into_iter().flatten() {
        let i = &f["instances"];
        t.add_row(vec![
            s(&f["name"]),
            s(&f["project"]),
            s(&f["kind"]),
            s(&f["revision"]),
            format!("{} busy, {} idle", s(&i["busy"]), s(&i["idle"])),
            age(&f["updated_at"]),
            s(&f["url"]),
        ]);
    }
    println!("{t}");
    Ok(())
}

pub async fn get(client: &Client, name: &str, output: Output) -> anyhow::Result<()> {
    let f = client.function(name).await?;
    if output == Output::Json {
        print_json(&f);
        return Ok(());
    }
    println!("function  {}", s(&f["name"]));
    println!("project   {}", s(&f["project"]));
    println!("kind      {}", s(&f["kind"]));
    println!("revision  {}", s(&f["revision"]));
    println!("url       {}", s(&f["url"]));
    for r in f["routes"].as_array().into_iter().flatten() {
        let methods = r["methods"]
            .as_array()
            .map(|m| m.iter().map(s).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        println!(
            "route     {} {}",
            s(&r["path"]),
            if methods.is_empty() {
                "(all methods)".into()
            } else {
                methods
            }
        );
    }
    let i = &f["instances"];
    println!(
        "instances {} busy, {} starting, {} idle, {} frozen, {} waiting",
        s(&i["busy"]),
        s(&i["starting"]),
        s(&i["idle"]),
        s(&i["frozen"]),
        s(&i["waiting"])
    );
    let spec = &f["spec"];
    let per_kind = if spec["kind"] == "wasm" {
        format!("reuse {}", s(&spec["reuse"]))
    } else {
        format!(
            "concurrency {}, warm {}, scale min {}",
            s(&spec["concurrency"]),
            s(&spec["warm"]),
            s(&spec["scale"]["min"])
        )
    };
    println!(
        "limits    memory {}, timeout {}, {per_kind}, scale max {}",
        s(&spec["memory"]),
        s(&spec["timeout"]),
        s(&spec["scale"]["max"])
    );
    if spec["kind"] != "wasm" {
        println!("          (per instance: nubo top {})", s(&f["name"]));
    }
    println!();
    let mut t = table(&["revision", "digest", "age"]);
    for r in f["revisions"].as_array().into_iter().flatten() {
        let d = s(&r["digest"]);
        t.add_row(vec![
            s(&r["number"]),
            d.chars().take(16).collect(),
            age(&r["created_at"]),
        ]);
    }
    println!("{t}");
    Ok(())
}

pub async fn rm(client: &Client, name: &str) -> anyhow::Result<()> {
    client.remove(name).await?;
    println!("removed {name}");
    Ok(())
}

fn print_line(l: &Value, output: Output) {
    if output == Output::Json {
        println!("{}", serde_json::to_string(l).unwrap_or_default());
        return;
    }
    let ts = l["ts"].as_i64().unwrap_or(0);
    let secs = ts / 1000;
    let (h, m, sec) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    println!(
        "{h:02}:{m:02}:{sec:02}.{:03} {:<6} {} {}",
        ts % 1000,
        s(&l["stream"]),
        s(&l["instance"]),
        s(&l["line"])
    );
}

pub async fn logs(
    client: &Client,
    name: &str,
    follow: bool,
    lines: i64,
    since: Option<String>,
    output: Output,
) -> anyhow::Result<()> {
    let since = since_ms(since.as_deref())?;
    if !follow {
        let v = client.logs(name, 0, since, lines.max(1)).await?;
        for l in v["lines"].as_array().into_iter().flatten() {
            print_line(l, output);
        }
        return Ok(());
    }
    // The server streams the newest lines, then each new one as it is stored.
    let mut resp = client.follow_logs(name, since, lines.max(1)).await?;
    let mut pending = Vec::new();
    loop {
        let chunk = resp
            .chunk()
            .await
            .map_err(|e| anyhow::anyhow!("the server stopped streaming the logs of {name}: {e}"))?;
        let Some(chunk) = chunk else {
            anyhow::bail!(
                "the server ended the log stream: function {name} was removed, or the server stopped"
            );
        };
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Ok(l) = serde_json::from_slice::<Value>(&line) {
                print_line(&l, output);
            }
        }
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
}
