//! `nubo top`: every instance of every function (or of one), redrawn in place like `top`.

use crate::Output;
use comfy_table::{Table, presets::NOTHING};
use nubo_client::Client;
use serde_json::{Value, json};
use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

pub async fn run(
    client: &Client,
    function: Option<&str>,
    once: bool,
    interval: f64,
    output: Output,
) -> anyhow::Result<()> {
    let once = once || output == Output::Json || !std::io::stdout().is_terminal();
    let pause = Duration::from_secs_f64(interval.clamp(0.2, 3600.0));
    // CPU% comes from the change in CPU seconds between two draws.
    let mut last_cpu: std::collections::HashMap<String, f64> = Default::default();
    loop {
        let rows = collect(client, function).await?;
        if output == Output::Json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "instances": rows }))?
            );
            return Ok(());
        }
        let mut t = Table::new();
        t.load_preset(NOTHING).set_header(
            [
                "FUNCTION", "INSTANCE", "REV", "STATE", "MODE", "INFLIGHT", "SERVED", "CPU%",
                "CPU S", "MEMORY", "AGE",
            ]
            .to_vec(),
        );
        for r in &rows {
            let id = r["id"].as_str().unwrap_or_default().to_string();
            let cpu = r["cpu_seconds"].as_f64();
            let pct = match (cpu, last_cpu.get(&id)) {
                (Some(now), Some(before)) => format!(
                    "{:.1}",
                    (now - before).max(0.0) / pause.as_secs_f64() * 100.0
                ),
                _ => "-".into(),
            };
            if let Some(now) = cpu {
                last_cpu.insert(id.clone(), now);
            }
            let shown = |v: &Value| match v {
                Value::Null => "-".to_string(),
                v => v.to_string(),
            };
            t.add_row(vec![
                r["function"].as_str().unwrap_or_default().to_string(),
                id,
                r["revision"].to_string(),
                r["state"].as_str().unwrap_or_default().to_string(),
                r["mode"].as_str().unwrap_or_default().to_string(),
                shown(&r["inflight"]),
                shown(&r["served"]),
                pct,
                cpu.map_or("-".into(), |c| format!("{c:.2}")),
                mib(r["memory_bytes"].as_u64().unwrap_or(0)),
                r["age_seconds"].as_f64().map_or("-".into(), age),
            ]);
        }
        let mut out = std::io::stdout().lock();
        if !once {
            // Home and clear: redraw in place.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        writeln!(out, "{t}")?;
        if rows.is_empty() {
            writeln!(out, "no instances are running")?;
        }
        out.flush()?;
        if once {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn collect(client: &Client, only: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let names: Vec<String> = match only {
        Some(f) => vec![f.to_string()],
        None => client.functions().await?["functions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["name"].as_str().map(String::from))
            .collect(),
    };
    let mut rows = Vec::new();
    for name in names {
        let v = client.instances(&name).await?;
        if v["kind"] == "wasm" {
            // Wasm instances live for one request (or `reuse` of them): one row per function.
            let c = &v["counts"];
            rows.push(json!({
                "function": name,
                "id": "(wasm)",
                "kind": "wasm",
                "revision": v["revision"],
                "state": format!("{} busy, {} idle", c["busy"], c["idle"]),
                "mode": "-",
                "inflight": c["busy"],
                "served": Value::Null,
                "cpu_seconds": Value::Null,
                "memory_bytes": v["memory_bytes"],
                "age_seconds": Value::Null,
            }));
            continue;
        }
        for i in v["instances"].as_array().into_iter().flatten() {
            let mut i = i.clone();
            i["function"] = json!(name);
            rows.push(i);
        }
    }
    Ok(rows)
}

fn mib(bytes: u64) -> String {
    format!("{:.1}Mi", bytes as f64 / (1 << 20) as f64)
}

fn age(secs: f64) -> String {
    match secs as u64 {
        s @ 0..60 => format!("{s}s"),
        s @ 60..3600 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}
