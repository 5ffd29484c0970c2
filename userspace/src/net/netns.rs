//! Network namespaces: finding one by name or path, and running netlink work inside one.
use std::{
    future::Future,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context, Result};
use rtnetlink::Handle;

use super::netlink::connect;

/// Resolves a network namespace given by name (under /run/netns) or by path.
pub fn netns_path(netns: &str) -> PathBuf {
    if netns.contains('/') {
        PathBuf::from(netns)
    } else {
        Path::new("/run/netns").join(netns)
    }
}

pub fn open_netns(netns: &str) -> Result<OwnedFd> {
    let path = netns_path(netns);
    let file = std::fs::File::open(&path).with_context(|| {
        format!(
            "network namespace {netns:?} not found at {}: create it first (ip netns add NAME)",
            path.display()
        )
    })?;
    Ok(file.into())
}

/// Runs `f` with a netlink handle inside the network namespace `netns`, on a thread of
/// its own (setns changes the calling thread only).
pub async fn in_netns<T, F, Fut>(netns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let fd = open_netns(netns)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own that ends with the work, so no pooled thread is ever left
    // in a container's namespace.
    std::thread::spawn(move || {
        // SAFETY: fd is a valid namespace file descriptor owned by this closure;
        // setns changes only this thread.
        let result = if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            Err(std::io::Error::last_os_error())
                .context("setns into the container's namespace failed")
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start a runtime for the namespace thread")
                .and_then(|rt| rt.block_on(async move { f(connect()?).await }))
        };
        let _ = tx.send(result);
    });
    rx.await.map_err(|_| anyhow!("the namespace thread died"))?
}
