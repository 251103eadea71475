//! App directories as deployable archives: a tar of the files, in a fixed order and with fixed
//! metadata, so the same files always give the same digest (and are uploaded once).

use anyhow::Context as _;
use std::path::Path;

/// Files never packaged, besides what `.nuboignore` lists.
const ALWAYS_SKIPPED: &[&str] = &[".git", ".nubo"];

/// Packs `dir`, honouring `.nuboignore` (gitignore syntax) files in it.
pub fn pack(dir: &Path) -> anyhow::Result<Vec<u8>> {
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    let walk = ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .add_custom_ignore_filename(".nuboignore")
        .filter_entry(|e| {
            !ALWAYS_SKIPPED
                .iter()
                .any(|s| e.depth() > 0 && e.file_name() == *s)
        })
        .sort_by_file_path(|a, b| a.cmp(b))
        .build();
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    for entry in walk {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let path = entry.path();
        let rel = path.strip_prefix(dir).expect("walk stays inside dir");
        if rel.as_os_str().is_empty() {
            continue;
        }
        let meta = std::fs::symlink_metadata(path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
        if meta.is_file() {
            let file =
                std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
            tar.append_data(&mut header, rel, file)
                .with_context(|| format!("packing {}", path.display()))?;
        } else if meta.is_dir() {
            tar.append_data(&mut header, rel, std::io::empty())
                .with_context(|| format!("packing {}", path.display()))?;
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(path)?;
            tar.append_link(&mut header, rel, target)
                .with_context(|| format!("packing {}", path.display()))?;
        }
    }
    tar.into_inner().context("finishing the archive")
}
