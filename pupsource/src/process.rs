//! This process as the other workers of a projection see it: the host it runs on and its
//! process id, recorded with its registration; and whether a process recorded so is gone.
//!
//! A restarted process uses this to take over at once the partitions of its dead predecessor
//! on the same host, instead of waiting for their leases to expire. That is safe however the
//! answer turns out: a lease taken from a live worker only makes that worker's batch in flight
//! roll back (its epoch no longer matches), never commit twice.

use std::sync::OnceLock;

/// Where a worker process runs, as its registration records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Process {
    /// The host, as [`Process::this`] names it.
    pub(crate) host: String,
    /// The process id.
    pub(crate) pid: u32,
}

impl Process {
    /// This process.
    pub(crate) fn this() -> Process {
        Process { host: host().to_owned(), pid: std::process::id() }
    }

    /// Whether this is another process of this host that no longer exists. `false` whenever
    /// that cannot be told (another host, a system without `/proc`): the caller then waits for
    /// the lease to expire, as it would without this check.
    pub(crate) fn is_gone_from_this_host(&self) -> bool {
        self.host == host() && self.pid != std::process::id() && !exists(self.pid)
    }
}

/// The host name (see [`host_name`]) and, on Linux, the boot id and the PID namespace
/// (`myhost boot:0b5c… pid:[4026531836]`): machines may share a host name (and every machine's
/// first PID namespace has the same id), containers may share a host name but not their
/// process ids, and a process id means something only within its namespace.
fn host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
        match (boot, std::fs::read_link("/proc/self/ns/pid")) {
            (Ok(boot), Ok(namespace)) => {
                format!("{} boot:{} {}", host_name(), boot.trim(), namespace.display())
            }
            _ => host_name().to_owned(),
        }
    })
}

/// The machine's host name (`HOSTNAME`, else the kernel's), or `host` if it has none usable.
pub(crate) fn host_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty() && h.len() <= 100 && !h.contains('\0'))
            .unwrap_or_else(|| "host".to_owned())
    })
}

/// Whether process `pid` exists (a zombie not yet reaped counts as existing).
#[cfg(target_os = "linux")]
fn exists(pid: u32) -> bool {
    std::path::Path::new("/proc").join(pid.to_string()).exists()
}

/// Whether process `pid` exists: without `/proc`, assume it does.
#[cfg(not(target_os = "linux"))]
fn exists(_pid: u32) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reaped_child_is_gone_and_this_process_is_not() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn `true`");
        let pid = child.id();
        child.wait().expect("reap");
        let dead = Process { pid, ..Process::this() };
        assert_eq!(dead.is_gone_from_this_host(), cfg!(target_os = "linux"));
        assert!(!Process::this().is_gone_from_this_host());
        let elsewhere = Process { host: format!("not {}", host()), ..dead };
        assert!(!elsewhere.is_gone_from_this_host());
    }
}
