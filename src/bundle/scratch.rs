//! What is being written into the release cache: a download, a staging folder, a bundle being
//! opened. Each is removed when its guard drops unless kept, so no way out of a failed
//! download or open leaves a partial file behind; and an interrupted process (the CLI's
//! Ctrl-C) stops its readers of release data at their next read (`interrupted`), waits for
//! their guards to drop, and removes whatever is still registered (`remove_all`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static LIVE: Mutex<Vec<(u64, PathBuf)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(0);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// A file or folder being written; removed on drop unless `keep` was called.
#[derive(Debug)]
pub struct Scratch {
    id: u64,
    path: PathBuf,
    kept: bool,
}

impl Scratch {
    /// Registers `path` (not created here).
    pub fn new(path: PathBuf) -> Scratch {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, path.clone()));
        Scratch {
            id,
            path,
            kept: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The work is complete (or moved into place): nothing is removed.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.kept {
            remove(&self.path);
        }
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _)| *id != self.id);
    }
}

fn remove(path: &Path) {
    if std::fs::remove_file(path).is_err() {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// From now on every reader of release data fails at its next read.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// The error a reader returns once interrupted.
pub fn check() -> io::Result<()> {
    if interrupted() {
        return Err(io::Error::other("interrupted"));
    }
    Ok(())
}

/// How many guards are live.
pub fn live() -> usize {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// Removes what every live guard holds (the guards' own drops then find nothing).
pub fn remove_all() {
    let paths: Vec<PathBuf> = LIVE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    for p in paths {
        remove(&p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_guards_remove_kept_guards_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::write(&a, b"x").unwrap();
        std::fs::create_dir_all(b.join("inner")).unwrap();
        let ga = Scratch::new(a.clone());
        let gb = Scratch::new(b.clone());
        drop(ga);
        gb.keep();
        assert!(!a.exists());
        assert!(b.join("inner").exists());
    }
}
