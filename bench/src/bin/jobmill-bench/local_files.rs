//! Local-disk work outside jobmill, the same-run baselines of W6 and W7: a temp directory removed
//! on drop, incompressible test files, a file's SHA-256, and a streaming file copy.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A scratch directory under the system temp dir, removed when dropped (also on error: a
/// failed 1 GiB run must not leave gigabytes behind).
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> std::io::Result<Self> {
        let p = std::env::temp_dir().join(format!("jobmill-bench-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copy block of the local baselines, also the size the API takes parts in.
const BLOCK: usize = 8 << 20;

/// Write `size` pseudo-random bytes (xorshift): incompressible, so no layer gets a free ride.
/// Synced before returning: otherwise the copies timed next compete with the writeback of a
/// gigabyte of dirty pages and run several times slower than a copy does on its own.
pub(crate) fn write_random(path: &Path, size: usize) -> std::io::Result<()> {
    let mut w = std::fs::File::create(path)?;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; BLOCK];
    let mut left = size;
    while left > 0 {
        let n = left.min(BLOCK);
        for c in buf[..n].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        w.write_all(&buf[..n])?;
        left -= n;
    }
    w.sync_all()?;
    Ok(())
}

/// SHA-256 (hex) of a file, and how long reading and hashing it took.
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<(String, Duration)> {
    let t = Instant::now();
    let mut r = std::fs::File::open(path)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok((hex::encode(sha.finalize()), t.elapsed()))
}

/// Stream `from` into a new file in 8 MiB blocks, the way a program copies a file; with `sync`,
/// until the copy is on disk. The copy is removed afterwards (outside the time).
pub(crate) fn stream_copy(from: &Path, sync: bool) -> std::io::Result<Duration> {
    let to = from.with_extension("copy");
    let t = Instant::now();
    let mut r = std::fs::File::open(from)?;
    let mut w = std::fs::File::create(&to)?;
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])?;
    }
    if sync {
        w.sync_all()?;
    }
    let took = t.elapsed();
    drop(w);
    std::fs::remove_file(&to)?;
    Ok(took)
}
