//! Names unique to this run (process id and a sequence number), and temporary
//! directories removed on drop.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Result;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// `<pid>-<seq>`: unique within this process, and tells which process made a name.
pub(crate) fn unique_tag() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A temporary directory, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("oxlay-{}-{tag}", unique_tag()));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
