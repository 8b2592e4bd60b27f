//! Running a piece of work inside the pod's network namespace.
//!
//! setns(2) with CLONE_NEWNET only moves the calling thread, so the work runs on a fresh
//! scoped thread that is discarded afterwards: the main thread never leaves the host netns.

use std::{
    fs::File,
    io::ErrorKind,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use nix::{errno::Errno, sched::CloneFlags};

use crate::error::CniError;

/// An open handle on a network namespace, taken from CNI_NETNS.
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens the netns; a missing one is the spec's "container unknown" (code 3).
    pub fn open(path: &Path) -> Result<Self, CniError> {
        let shown = path.display();
        match File::open(path) {
            Ok(file) if is_own_netns(&file) => Err(CniError::InvalidEnv(format!(
                "CNI_NETNS {shown} is the host's own network namespace, not a pod's"
            ))),
            Ok(file) => Ok(Self {
                file,
                path: path.to_path_buf(),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(CniError::ContainerUnknown(format!(
                "the pod's network namespace {shown} (CNI_NETNS) does not exist"
            ))),
            Err(e) => Err(CniError::InvalidEnv(format!(
                "cannot open the pod's network namespace {shown} (CNI_NETNS): {e}"
            ))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on a thread that has joined this netns.
    pub fn run<T, F>(&self, work: F) -> Result<T, CniError>
    where
        T: Send,
        F: FnOnce() -> Result<T, CniError> + Send,
    {
        let shown = self.path.display();
        std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                nix::sched::setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|e| match e {
                    Errno::EINVAL => CniError::InvalidEnv(format!(
                        "CNI_NETNS {shown} is not a network namespace"
                    )),
                    other => CniError::InvalidEnv(format!(
                        "cannot enter the pod's network namespace {shown}: {other}"
                    )),
                })?;
                work()
            });
            handle.join().unwrap_or_else(|_| {
                Err(CniError::Io(format!(
                    "internal error while working in the network namespace {shown}"
                )))
            })
        })
    }
}

/// True when `file` is the netns this process runs in: changing "pod" interfaces there would
/// change the node's own.
fn is_own_netns(file: &File) -> bool {
    match (file.metadata(), std::fs::metadata("/proc/self/ns/net")) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}
