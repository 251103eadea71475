//! Which server the CLI talks to, and how it finds the admin token without the user copying it.
//!
//! `nubo up` records each running server in `~/.nubo/servers/<host>_<port>` (the path of its
//! data directory); the CLI looks up the server it is pointed at there and reads
//! `<data-dir>/admin-token`. `--token` and `NUBO_TOKEN` override this.

use anyhow::Context as _;
use nubo_client::Client;
use std::path::{Path, PathBuf};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

pub struct Target {
    pub server: String,
    token: Option<String>,
}

pub fn nubo_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".nubo")
}

pub fn default_data_dir() -> PathBuf {
    nubo_home().join("data")
}

/// `http://127.0.0.1:8080/` -> `127.0.0.1_8080`.
fn registry_key(server: &str) -> String {
    let authority = server
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or_default();
    let authority = if authority.starts_with("localhost:") {
        authority.replacen("localhost", "127.0.0.1", 1)
    } else {
        authority.to_string()
    };
    authority.replace([':', '[', ']'], "_")
}

/// Records a running server so CLIs on this machine find its token.
pub fn register_server(addr: std::net::SocketAddr, data_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = nubo_home().join("servers");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let entry = dir.join(registry_key(&format!("http://{addr}")));
    let data_dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    // Atomically: a CLI may read the entry the moment the server says it is listening.
    let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data_dir.to_string_lossy().as_bytes())?;
    std::fs::rename(&tmp, &entry)?;
    Ok(entry)
}

impl Target {
    pub fn new(server: Option<String>, token: Option<String>) -> Target {
        let server = server.unwrap_or_else(|| DEFAULT_SERVER.to_string());
        let server = if server.contains("://") {
            server
        } else {
            format!("http://{server}")
        };
        Target { server, token }
    }

    fn discover_token(&self) -> Option<String> {
        let entry = nubo_home().join("servers").join(registry_key(&self.server));
        let data_dir = std::fs::read_to_string(entry)
            .ok()
            .map(|s| PathBuf::from(s.trim()))
            .unwrap_or_else(default_data_dir);
        std::fs::read_to_string(data_dir.join(nubo_server::ADMIN_TOKEN_FILE))
            .ok()
            .map(|t| t.trim().to_string())
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        let token = self.token.clone().or_else(|| self.discover_token());
        Ok(Client::new(&self.server, token))
    }

    /// A client for the gateway only (no token needed).
    pub fn anonymous(&self) -> Client {
        Client::new(&self.server, None)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn registry_keys() {
        assert_eq!(
            super::registry_key("http://127.0.0.1:8080"),
            "127.0.0.1_8080"
        );
        assert_eq!(super::registry_key("http://localhost:9/x"), "127.0.0.1_9");
        assert_eq!(super::registry_key("[::1]:80"), "___1__80");
    }
}
