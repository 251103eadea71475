//! App archives: a `process` function's directory, uploaded as a tar blob, unpacked once per
//! digest under `<data>/apps/<sha256>/` (instances see it read-only).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Unpacks `blob` unless an earlier deploy did; returns the directory.
pub fn unpack(blob: &Path, apps_dir: &Path, digest: &str) -> Result<PathBuf, String> {
    let target = apps_dir.join(digest);
    if target.is_dir() {
        return Ok(target);
    }
    std::fs::create_dir_all(apps_dir)
        .map_err(|e| format!("creating {}: {e}", apps_dir.display()))?;
    let staging = apps_dir.join(format!(".unpacking-{digest}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let result = (|| {
        let file = std::fs::File::open(blob).map_err(|e| format!("opening the archive: {e}"))?;
        let mut archive = tar::Archive::new(file);
        archive.set_preserve_permissions(true);
        // No set-uid, set-gid or sticky bits from a user's archive on the host.
        archive.set_mask(0o7000);
        archive.set_overwrite(false);
        // `unpack` refuses entries that would land outside the directory (`..`, absolute).
        archive
            .unpack(&staging)
            .map_err(|e| format!("the app archive cannot be unpacked: {e}"))?;
        std::fs::rename(&staging, &target).map_err(|e| format!("moving the app into place: {e}"))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        // Another deploy of the same digest may have won the race.
        if target.is_dir() {
            return Ok(target);
        }
        return Err(e);
    }
    Ok(target)
}

/// Checks that `command` can start in `dir`: a path must name an executable file of the app,
/// a bare name must be found on the server's `PATH`.
pub fn check_command(dir: &Path, command: &[String]) -> Result<(), String> {
    let Some(program) = command.first() else {
        return Err("the command is empty".into());
    };
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = if Path::new(program).is_absolute() {
            PathBuf::from(program)
        } else {
            dir.join(program)
        };
        if !path.exists() {
            return Err(format!("{program} is not in the app directory"));
        }
        if !executable(&path) {
            return Err(format!(
                "{program} is not executable (chmod +x it before deploying)"
            ));
        }
        return Ok(());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    if path
        .split(':')
        .any(|d| !d.is_empty() && executable(&Path::new(d).join(program)))
    {
        Ok(())
    } else {
        Err(format!(
            "{program} is not installed on the server (not found on its PATH)"
        ))
    }
}
