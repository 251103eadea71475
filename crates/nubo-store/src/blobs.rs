//! Content-addressed artifacts: `blobs/sha256/<hex>`, written once, verified, never changed.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A sha256 digest as 64 lower-case hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest(String);

impl Digest {
    /// Accepts `<64 hex>` or `sha256:<64 hex>`.
    pub fn parse(text: &str) -> Result<Digest, String> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        if hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Digest(hex.to_string()))
        } else {
            Err(format!(
                "{text:?} is not a sha256 digest: expected 64 lower-case hex characters"
            ))
        }
    }

    pub fn of(bytes: &[u8]) -> Digest {
        Digest(hex::encode(Sha256::digest(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct BlobDir {
    root: PathBuf,
}

impl BlobDir {
    pub fn open(root: &Path) -> io::Result<BlobDir> {
        fs::create_dir_all(root.join("sha256"))?;
        fs::create_dir_all(root.join("tmp"))?;
        Ok(BlobDir {
            root: root.to_path_buf(),
        })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.as_str())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    pub fn read(&self, digest: &Digest) -> io::Result<Vec<u8>> {
        fs::read(self.path(digest))
    }

    /// Starts writing a blob that must hash to `expected`.
    pub fn writer(&self, expected: Digest) -> io::Result<BlobWriter> {
        let tmp = tempfile_in(&self.root.join("tmp"))?;
        Ok(BlobWriter {
            file: File::create(&tmp)?,
            tmp,
            hasher: Sha256::new(),
            len: 0,
            dest: self.path(&expected),
            expected,
        })
    }
}

fn tempfile_in(dir: &Path) -> io::Result<PathBuf> {
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(dir.join(format!("upload-{}", hex::encode(rnd))))
}

/// An upload in progress. Dropped without [`BlobWriter::commit`], it leaves nothing behind.
pub struct BlobWriter {
    file: File,
    tmp: PathBuf,
    hasher: Sha256,
    len: u64,
    dest: PathBuf,
    expected: Digest,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(
        "the upload hashes to {actual}, not {expected}: upload the exact bytes of the artifact"
    )]
    Mismatch { expected: String, actual: String },
    #[error("writing the blob failed: {0}")]
    Io(#[from] io::Error),
}

impl BlobWriter {
    pub fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
        self.file.write_all(chunk)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Verifies the digest, then makes the blob durable and visible (fsync, rename, fsync dir).
    pub fn commit(mut self) -> Result<(), CommitError> {
        let actual = hex::encode(self.hasher.finalize_reset());
        if actual != self.expected.as_str() {
            return Err(CommitError::Mismatch {
                expected: self.expected.to_string(),
                actual,
            });
        }
        self.file.sync_all()?;
        fs::rename(&self.tmp, &self.dest)?;
        if let Some(dir) = self.dest.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After a successful commit the temp path no longer exists; ignoring the error is right.
        let _ = fs::remove_file(&self.tmp);
    }
}
