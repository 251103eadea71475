//! `nubo deploy`: build, upload artifacts once by digest, deploy the manifest.

use super::package;
use anyhow::{Context as _, bail};
use nubo_client::Client;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::Path;

pub async fn run(client: &Client, file: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let shown = file.display().to_string();
    // Validate here first: the same checks as the server, before any build runs.
    let manifest = nubo_manifest::parse(&shown, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let root = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));

    let mut built = Vec::new();
    for f in &manifest.functions {
        let Some(cmd) = &f.build else { continue };
        if built.contains(cmd) {
            continue;
        }
        eprintln!("building {}: {cmd}", f.name);
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(root)
            .stdout(std::process::Stdio::inherit())
            .stdin(std::process::Stdio::null())
            .status()
            .await
            .with_context(|| format!("starting the build of {}", f.name))?;
        if !status.success() {
            bail!("the build of function {} failed ({status}): {cmd}", f.name);
        }
        built.push(cmd.clone());
    }

    let mut artifacts = BTreeMap::new();
    for f in &manifest.functions {
        // wasm: the component file; process and lambda: the app directory, packed.
        let (key, bytes) = if let Some(component) = &f.spec.component {
            let path = root.join(component);
            let bytes = std::fs::read(&path).with_context(|| {
                format!(
                    "{shown}: functions.{}.component: reading {}",
                    f.name,
                    path.display()
                )
            })?;
            (component.clone(), bytes)
        } else {
            let dir = f.spec.dir.clone().unwrap_or_else(|| ".".into());
            if artifacts.contains_key(&dir) {
                continue;
            }
            let path = root.join(&dir);
            let bytes = package::pack(&path)
                .with_context(|| format!("{shown}: functions.{}.dir: packing {dir}", f.name))?;
            (dir, bytes)
        };
        if artifacts.contains_key(&key) {
            continue;
        }
        let digest = hex::encode(Sha256::digest(&bytes));
        if client.has_blob(&digest).await? {
            eprintln!("{key}: already uploaded ({})", &digest[..12]);
        } else {
            upload(client, &key, &digest, bytes).await?;
        }
        artifacts.insert(key, digest);
    }

    let out = client.deploy(&text, &shown, &artifacts).await?;
    println!(
        "deployed project {}",
        out["project"].as_str().unwrap_or("?")
    );
    for f in out["functions"].as_array().into_iter().flatten() {
        let state = if f["changed"].as_bool() == Some(true) {
            "new revision"
        } else {
            "unchanged"
        };
        println!(
            "  {:<20} revision {:<4} {:<13} {}",
            f["name"].as_str().unwrap_or("?"),
            f["revision"],
            state,
            f["url"].as_str().unwrap_or("")
        );
        for r in f["routes"].as_array().into_iter().flatten() {
            println!("  {:<20} {:<32} {}", "", "", r.as_str().unwrap_or(""));
        }
    }
    for r in out["removed"].as_array().into_iter().flatten() {
        println!(
            "  {:<20} removed (no longer in the manifest)",
            r.as_str().unwrap_or("?")
        );
    }
    Ok(())
}

async fn upload(client: &Client, name: &str, digest: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
    let len = bytes.len() as u64;
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(len);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("uploading {name}"));
        Some(bar)
    } else {
        None
    };
    let b = bar.clone();
    client
        .put_blob(digest, bytes.into(), move |sent| {
            if let Some(b) = &b {
                b.set_position(sent);
            }
        })
        .await?;
    match bar {
        Some(b) => b.finish_with_message(format!("uploaded {name}")),
        None => eprintln!("{name}: uploaded {len} bytes ({})", &digest[..12]),
    }
    Ok(())
}
