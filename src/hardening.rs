//! Process hardening done first thing at start: no core dumps, not
//! dumpable (which also keeps other users' ptrace and `/proc/PID/environ`
//! away), and optionally all memory locked so keys never reach swap.
//!
//! Our own key and plaintext buffers are zeroized on drop; buffers inside
//! hyper, h2, rustls and prost are not, which is why the process must not be
//! dumpable or swappable in the first place.

use rustix::{
    mm::{MlockAllFlags, mlockall},
    process::{
        DumpableBehavior, Resource, Rlimit, dumpable_behavior, getrlimit, set_dumpable_behavior,
        setrlimit,
    },
};

/// What hardening achieved.
#[derive(Debug, PartialEq, Eq)]
pub struct Hardening {
    /// The process is not dumpable (read back with PR_GET_DUMPABLE).
    pub non_dumpable: bool,
    /// RLIMIT_CORE is 0 (soft and hard).
    pub no_core_dumps: bool,
    /// All memory is locked (when asked for), or why not.
    pub memory_locked: Option<Result<(), String>>,
}

/// Hardens the current process. Failures are reported, not fatal: the
/// caller logs them (a container may forbid mlock, for example).
pub fn harden_process(lock_memory: bool) -> Hardening {
    let no_core_dumps = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .is_ok();
    let _ = set_dumpable_behavior(DumpableBehavior::NotDumpable);
    let non_dumpable = matches!(dumpable_behavior(), Ok(DumpableBehavior::NotDumpable));
    let memory_locked = lock_memory.then(lock_all_memory);
    Hardening {
        non_dumpable,
        no_core_dumps,
        memory_locked,
    }
}

/// Locks current and future memory, but only where the lock limit cannot
/// later make an ordinary allocation (Argon2id's 64 MiB, request buffers)
/// fail: with a finite RLIMIT_MEMLOCK, MCL_FUTURE turns "no swap" into
/// "abort on the next large allocation".
fn lock_all_memory() -> Result<(), String> {
    let limit = getrlimit(Resource::Memlock);
    if limit.current.is_some() {
        return Err(format!(
            "RLIMIT_MEMLOCK is finite ({} bytes): locking all memory would make later \
             allocations fail; raise it to unlimited (systemd LimitMEMLOCK=infinity) or disable swap",
            limit.current.unwrap_or_default()
        ));
    }
    mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE)
        .map_err(|e| format!("mlockall failed ({e}); grant CAP_IPC_LOCK or disable swap"))
}

impl Hardening {
    /// Logs the outcome: info when everything held, a warning otherwise.
    pub fn log(&self) {
        if self.non_dumpable && self.no_core_dumps {
            tracing::info!(dumpable = false, core_limit = 0, "process hardened");
        } else {
            tracing::warn!(
                non_dumpable = self.non_dumpable,
                no_core_dumps = self.no_core_dumps,
                "process hardening incomplete: key material could reach a core dump"
            );
        }
        match &self.memory_locked {
            Some(Ok(())) => tracing::info!("all memory locked (no swap)"),
            Some(Err(why)) => tracing::warn!("memory not locked: {why}"),
            None => {}
        }
    }
}
