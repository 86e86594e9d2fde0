//! The worker's settings: its own section ([`WorkerSettings`]) and everything a stock worker
//! process loads ([`WorkerConfig`]: the engine's section and the features' sections).

use std::time::Duration;

use jobmill::config::{
    parse_queues, Bounds, Config, CoreSettings, Env, QueueWeight, Section, Setting,
};
use jobmill_data::DataSettings;
use jobmill_schedules::ScheduleSettings;
use jobmill_webhooks::WebhookSettings;

/// `JOBMILL_QUEUES`.
pub const QUEUES: Setting = Setting {
    env: "JOBMILL_QUEUES",
    default: "default,webhooks",
    bounds: Bounds::Text,
    doc: "worker: queues to consume, name[:weight],...",
};
/// `JOBMILL_CONCURRENCY`.
pub const CONCURRENCY: Setting = Setting {
    env: "JOBMILL_CONCURRENCY",
    default: "16",
    bounds: Bounds::Count(1, 10_000),
    doc: "worker: handlers running at once",
};
/// `JOBMILL_SHUTDOWN_TIMEOUT`.
pub const SHUTDOWN_TIMEOUT: Setting = Setting {
    env: "JOBMILL_SHUTDOWN_TIMEOUT",
    default: "30s",
    bounds: Bounds::Duration(Duration::ZERO, Duration::from_secs(86_400)),
    doc: "worker: SIGTERM drain time before jobs are released",
};
/// `JOBMILL_CANCEL_GRACE`.
pub const CANCEL_GRACE: Setting = Setting {
    env: "JOBMILL_CANCEL_GRACE",
    default: "10s",
    bounds: Bounds::Duration(Duration::ZERO, Duration::from_secs(3600)),
    doc: "worker: time a cancelled handler gets before it is abandoned",
};
/// `JOBMILL_MAX_UNRECORDED`.
pub const MAX_UNRECORDED: Setting = Setting {
    env: "JOBMILL_MAX_UNRECORDED",
    default: "10000",
    bounds: Bounds::Count(1, 1_000_000),
    doc: "worker: finished attempts held while MongoDB catches up; claiming pauses beyond",
};
/// `JOBMILL_OUTCOME_SPLIT`.
pub const OUTCOME_SPLIT: Setting = Setting {
    env: "JOBMILL_OUTCOME_SPLIT",
    default: "16",
    bounds: Bounds::Count(0, 1000),
    doc: "worker: outcome batches of at most this many writes go to MongoDB one write per command, so a submission waits behind one write, not a batch, on a store that runs one command at a time (0: one command per batch)",
};

/// `JOBMILL_METRICS_ADDR`.
pub const METRICS_ADDR: Setting = Setting {
    env: "JOBMILL_METRICS_ADDR",
    default: "",
    bounds: Bounds::Text,
    doc: "worker: serve Prometheus metrics at http://ADDR/metrics (off when empty; no auth: bind to loopback or a private network)",
};

/// How a worker process runs: queues, concurrency, drain and cancel times.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Queues with weights.
    pub queues: Vec<QueueWeight>,
    /// Handlers running at once.
    pub concurrency: usize,
    /// Drain time on SIGTERM.
    pub shutdown_timeout: Duration,
    /// Grace period of a cancelled handler.
    pub cancel_grace: Duration,
    /// Finished-but-unrecorded attempts held before claiming pauses.
    pub max_unrecorded: usize,
    /// Outcome batches this small are written one write per command (see the persister).
    pub outcome_split: usize,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Section for WorkerSettings {
    const SETTINGS: &'static [Setting] = &[
        QUEUES,
        CONCURRENCY,
        SHUTDOWN_TIMEOUT,
        CANCEL_GRACE,
        MAX_UNRECORDED,
        OUTCOME_SPLIT,
        METRICS_ADDR,
    ];

    fn read(env: &Env) -> Self {
        WorkerSettings {
            queues: env.parse(&QUEUES, parse_queues).unwrap_or_default(),
            concurrency: env.count(&CONCURRENCY),
            shutdown_timeout: env.duration(&SHUTDOWN_TIMEOUT),
            cancel_grace: env.duration(&CANCEL_GRACE),
            max_unrecorded: env.count(&MAX_UNRECORDED),
            outcome_split: env.count(&OUTCOME_SPLIT),
            metrics_addr: env
                .parse(&METRICS_ADDR, |v| {
                    if v.trim().is_empty() {
                        return Ok(None);
                    }
                    v.trim()
                        .parse::<std::net::SocketAddr>()
                        .map(Some)
                        .map_err(|_| format!("'{v}' is not an address like 127.0.0.1:9464"))
                })
                .flatten(),
        }
    }
}

/// Everything a stock worker process loads.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The engine's settings.
    pub core: CoreSettings,
    /// The worker's own.
    pub worker: WorkerSettings,
    /// The webhooks feature's.
    pub webhooks: WebhookSettings,
    /// The data feature's.
    pub data: DataSettings,
    /// The schedules feature's.
    pub schedules: ScheduleSettings,
}

impl Config for WorkerConfig {
    const TABLES: &'static [&'static [Setting]] = &[
        CoreSettings::SETTINGS,
        WorkerSettings::SETTINGS,
        WebhookSettings::SETTINGS,
        DataSettings::SETTINGS,
        ScheduleSettings::SETTINGS,
    ];

    fn read_sections(env: &Env) -> Self {
        WorkerConfig {
            core: CoreSettings::read(env),
            worker: WorkerSettings::read(env),
            webhooks: WebhookSettings::read(env),
            data: DataSettings::read(env),
            schedules: ScheduleSettings::read(env),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> jobmill::Result<WorkerConfig> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        WorkerConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_valid_for_the_worker() {
        let s = load(&[]).unwrap();
        assert_eq!(s.core.mongodb_db, "jobmill");
        assert_eq!(
            s.worker.queues,
            vec![
                QueueWeight {
                    name: "default".into(),
                    weight: 1
                },
                QueueWeight {
                    name: "webhooks".into(),
                    weight: 1
                }
            ]
        );
        assert_eq!(s.webhooks.retry_base, Duration::from_secs(5));
        assert_eq!(s.webhooks.timeout, Duration::from_secs(15));
        assert!(s.webhooks.allow.is_empty());
        assert_eq!(s.data.upload_part_size, 8 * 1024 * 1024);
        assert_eq!(s.data.page_size, 50);
        assert_eq!(s.core.heartbeat_interval(), Duration::from_secs(10));
    }

    #[test]
    fn every_broken_setting_of_every_section_is_named() {
        let err = load(&[
            ("JOBMILL_RETENTION", "forever"),
            ("JOBMILL_QUEUES", "default,imports:0"),
            ("JOBMILL_CONCURRENCY", "-3"),
            ("JOBMILL_UPLOAD_PART_SIZE", "1000"),
            ("JOBMILL_PAGE_SIZE", "0"),
            ("JOBMILL_UPLOAD_RETENTION", "1s"),
            ("JOBMILL_WEBHOOK_ALLOW", "a/b"),
            ("JOBMILL_WEBHOOK_DESTINATIONS", "10.0.0.1/8"),
            ("JOBMILL_WEBHOOK_TIMEOUT", "1ms"),
        ])
        .unwrap_err()
        .to_string();
        for name in [
            "JOBMILL_RETENTION",
            "JOBMILL_QUEUES",
            "JOBMILL_CONCURRENCY",
            "JOBMILL_UPLOAD_PART_SIZE",
            "JOBMILL_PAGE_SIZE",
            "JOBMILL_UPLOAD_RETENTION",
            "JOBMILL_WEBHOOK_ALLOW",
            "JOBMILL_WEBHOOK_DESTINATIONS",
            "JOBMILL_WEBHOOK_TIMEOUT",
        ] {
            assert!(err.contains(name), "{name} missing from: {err}");
        }
    }

    #[test]
    fn webhook_settings_parse() {
        let s = load(&[
            ("JOBMILL_WEBHOOK_ALLOW", "127.0.0.1,hooks.local:8443"),
            (
                "JOBMILL_WEBHOOK_DESTINATIONS",
                "hooks.local:8443,10.0.0.0/8",
            ),
            ("JOBMILL_WEBHOOK_RETRY_BASE", "100ms"),
            ("JOBMILL_WEBHOOK_DISABLE_AFTER", "1h"),
        ])
        .unwrap();
        assert!(!s.webhooks.allow.is_empty());
        assert!(s.webhooks.destinations.is_restricted());
        // What scripts/dev.sh and the tests set both to.
        let loopback = "127.0.0.1,localhost,[::1]";
        let dev = load(&[
            ("JOBMILL_WEBHOOK_ALLOW", loopback),
            ("JOBMILL_WEBHOOK_DESTINATIONS", loopback),
        ])
        .unwrap();
        assert!(!dev.webhooks.allow.is_empty());
        assert!(dev.webhooks.destinations.is_restricted());
        assert_eq!(s.webhooks.retry_base, Duration::from_millis(100));
        assert_eq!(s.webhooks.disable_after, Duration::from_secs(3600));
    }

    #[test]
    fn every_setting_is_written_once() {
        let mut seen = std::collections::BTreeSet::new();
        for row in WorkerConfig::TABLES.iter().flat_map(|t| t.iter()) {
            assert!(seen.insert(row.env), "{} is in two tables", row.env);
        }
    }
}
