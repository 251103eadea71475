//! `nubo invocation ID`, `nubo dlq ls FN`, `nubo dlq replay FN [ID...]`: async invocations and
//! the dead-letter list.

use super::inspect::{age, print_json, s, table};
use crate::Output;
use nubo_client::Client;
use serde_json::Value;

pub async fn show(client: &Client, id: &str, output: Output) -> anyhow::Result<()> {
    let v = client.invocation(id).await?;
    if output == Output::Json {
        print_json(&v);
        return Ok(());
    }
    let mut t = table(&["field", "value"]);
    for key in [
        "id",
        "function",
        "trigger",
        "status",
        "attempts",
        "max_attempts",
    ] {
        t.add_row(vec![key.to_string(), s(&v[key])]);
    }
    t.add_row(vec![
        "created".to_string(),
        format!("{} ago", age(&v["created_at"])),
    ]);
    if !v["result_status"].is_null() {
        t.add_row(vec!["result status".to_string(), s(&v["result_status"])]);
    }
    if !v["error"].is_null() {
        t.add_row(vec!["error".to_string(), s(&v["error"])]);
    }
    if !v["result"].is_null() {
        t.add_row(vec!["result".to_string(), s(&v["result"])]);
    }
    println!("{t}");
    Ok(())
}

pub async fn ls(
    client: &Client,
    function: &str,
    limit: usize,
    output: Output,
) -> anyhow::Result<()> {
    let v = client.invocations(function, "dead", limit).await?;
    if output == Output::Json {
        print_json(&v);
        return Ok(());
    }
    let list = v["invocations"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        eprintln!("no dead letters for {function}");
        return Ok(());
    }
    let mut t = table(&["id", "trigger", "attempts", "age", "error"]);
    for i in &list {
        t.add_row(vec![
            s(&i["id"]),
            s(&i["trigger"]),
            s(&i["attempts"]),
            age(&i["created_at"]),
            s(&i["error"]).chars().take(100).collect(),
        ]);
    }
    println!("{t}");
    Ok(())
}

pub async fn replay(
    client: &Client,
    function: &str,
    ids: &[String],
    output: Output,
) -> anyhow::Result<()> {
    let v = client.replay(function, ids).await?;
    if output == Output::Json {
        print_json(&v);
        return Ok(());
    }
    let replayed: Vec<&str> = v["replayed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !ids.is_empty() && replayed.len() < ids.len() {
        let missing: Vec<&String> = ids
            .iter()
            .filter(|i| !replayed.contains(&i.as_str()))
            .collect();
        anyhow::bail!(
            "replayed {} of {} ids; not dead letters of {function}: {}",
            replayed.len(),
            ids.len(),
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("replayed {} invocation(s) of {function}", replayed.len());
    for id in replayed {
        println!("{id}");
    }
    Ok(())
}
