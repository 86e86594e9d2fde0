//! Who a worker process is: host, pid and a random suffix, so a restarted worker (same host,
//! maybe the same pid in a fresh container) never inherits or waits on its old name.

/// A worker's identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `host:pid:random`, unique per process start.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Start time, ms since the epoch.
    pub started_ms: i64,
}

impl Identity {
    /// A fresh identity for this process.
    pub fn new() -> Self {
        let host = gethostname();
        let pid = std::process::id();
        let rand = &uuid::Uuid::new_v4().simple().to_string()[..8];
        Identity {
            id: format!("{host}:{pid}:{rand}"),
            host,
            pid,
            started_ms: jobmill::job::now_ms(),
        }
    }
}

impl Default for Identity {
    fn default() -> Self {
        Self::new()
    }
}

fn gethostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
        .replace(':', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_unique_per_start() {
        let a = Identity::new();
        let b = Identity::new();
        assert_ne!(a.id, b.id);
        assert_eq!(a.pid, b.pid);
        assert!(a.id.starts_with(&format!("{}:{}:", a.host, a.pid)));
    }
}
