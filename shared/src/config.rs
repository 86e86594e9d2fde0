//! Typed settings read from `JOBMILL_*` environment variables (flags may override), validated
//! once at startup so a bad deployment fails fast with a message naming every broken setting.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::webhooks::{AllowList, Destinations, WebhookSettings};

/// Default Redis URL when `JOBMILL_REDIS_URL` is unset.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";
/// Default MongoDB URI when `JOBMILL_MONGODB_URI` is unset.
pub const DEFAULT_MONGODB_URI: &str = "mongodb://127.0.0.1:27017/?directConnection=true";
/// Default database name.
pub const DEFAULT_MONGODB_DB: &str = "jobmill";
/// Default Redis key prefix.
pub const DEFAULT_KEY_PREFIX: &str = "jobmill";
/// Default API listen address (loopback: exposing it is a deliberate act).
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:8080";
/// How long finished jobs are kept before MongoDB's TTL index removes them.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a claimed job stays leased without a heartbeat.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// First retry delay ceiling (full jitter below it, doubling per attempt).
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(1);
/// Largest retry delay ceiling.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(3600);
/// Largest HTTP request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest serialized `args` of one job.
pub const DEFAULT_MAX_ARGS_BYTES: usize = 64 * 1024;
/// Default worker queues.
pub const DEFAULT_QUEUES: &str = "default,webhooks";
/// Default handler concurrency per worker process.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// How long SIGTERM waits for running jobs before releasing them.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Finished attempts a worker may hold before MongoDB has recorded them.
pub const DEFAULT_MAX_UNRECORDED: usize = 10_000;
/// How long a cancelled handler may take to stop before the worker abandons it.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(10);

/// Default size of an upload part (8 MiB).
pub const DEFAULT_UPLOAD_PART_SIZE: usize = 8 * 1024 * 1024;
/// Smallest upload part size (tests use it to get many parts from a small file).
pub const MIN_UPLOAD_PART_SIZE: usize = 64 * 1024;
/// How long an upload that never completed (and its parts) is kept.
pub const DEFAULT_UPLOAD_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Rows per page of a dataset listing.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// How many leading pages of a dataset listing the Redis cache holds.
pub const DEFAULT_CACHE_PAGES: usize = 10;

/// Every setting: env name, default, meaning. Drives `--help` and the README table.
pub const SETTINGS: &[(&str, &str, &str)] = &[
    (
        "JOBMILL_REDIS_URL",
        DEFAULT_REDIS_URL,
        "Redis holding the queues",
    ),
    (
        "JOBMILL_MONGODB_URI",
        DEFAULT_MONGODB_URI,
        "MongoDB, the system of record",
    ),
    ("JOBMILL_MONGODB_DB", DEFAULT_MONGODB_DB, "database name"),
    (
        "JOBMILL_KEY_PREFIX",
        DEFAULT_KEY_PREFIX,
        "prefix of every Redis key (no braces)",
    ),
    ("JOBMILL_API_ADDR", DEFAULT_API_ADDR, "API listen address"),
    (
        "JOBMILL_API_KEYS",
        "(none; required by the API)",
        "comma-separated name:secret:role, role = submitter|operator",
    ),
    ("JOBMILL_RETENTION", "7d", "how long finished jobs are kept"),
    (
        "JOBMILL_LEASE_TTL",
        "30s",
        "lease of a claimed job; heartbeats renew it every third of it",
    ),
    (
        "JOBMILL_RETRY_BASE",
        "1s",
        "first retry delay ceiling (exponential, full jitter)",
    ),
    ("JOBMILL_RETRY_MAX", "1h", "largest retry delay ceiling"),
    (
        "JOBMILL_MAX_BODY_BYTES",
        "1048576",
        "largest HTTP request body",
    ),
    (
        "JOBMILL_MAX_ARGS_BYTES",
        "65536",
        "largest serialized args of one job",
    ),
    (
        "JOBMILL_QUEUES",
        DEFAULT_QUEUES,
        "worker: queues to consume, name[:weight],...",
    ),
    (
        "JOBMILL_CONCURRENCY",
        "16",
        "worker: handlers running at once",
    ),
    (
        "JOBMILL_SHUTDOWN_TIMEOUT",
        "30s",
        "worker: SIGTERM drain time before jobs are released",
    ),
    (
        "JOBMILL_CANCEL_GRACE",
        "10s",
        "worker: time a cancelled handler gets before it is abandoned",
    ),
    (
        "JOBMILL_MAX_UNRECORDED",
        "10000",
        "worker: finished attempts held while MongoDB catches up; claiming pauses beyond",
    ),
    (
        "JOBMILL_UPLOAD_PART_SIZE",
        "8388608",
        "size of an upload part in bytes (65536 or more)",
    ),
    (
        "JOBMILL_UPLOAD_RETENTION",
        "24h",
        "uploads never completed, and their parts, are deleted after this",
    ),
    (
        "JOBMILL_PAGE_SIZE",
        "50",
        "rows per page of GET /v1/datasets/{name}/pages/{n}",
    ),
    (
        "JOBMILL_CACHE_PAGES",
        "10",
        "leading pages of each dataset kept in the Redis cache",
    ),
    (
        "JOBMILL_WEBHOOK_ALLOW",
        "(none)",
        "hosts (host or host:port, comma-separated) whose callbacks may resolve to private or loopback addresses",
    ),
    (
        "JOBMILL_WEBHOOK_DESTINATIONS",
        "(none: any public address)",
        "the only destinations webhooks may reach: host names, IPs or CIDRs, each with an optional :port, comma-separated",
    ),
    (
        "JOBMILL_WEBHOOK_TIMEOUT",
        "15s",
        "timeout of one webhook delivery attempt",
    ),
    (
        "JOBMILL_WEBHOOK_RETRY_BASE",
        "5s",
        "first webhook retry delay ceiling (doubles 11 times; 22 attempts span about a day)",
    ),
    (
        "JOBMILL_WEBHOOK_DISABLE_AFTER",
        "5d",
        "an endpoint failing this long without a success is disabled",
    ),
    (
        "JOBMILL_WEBHOOK_ROTATION_GRACE",
        "24h",
        "how long a rotated-out webhook secret keeps signing",
    ),
    (
        "JOBMILL_WEBHOOK_PROGRESS_EVERY",
        "1s",
        "least time between two job.progress events of one job (for endpoints subscribed to them)",
    ),
    (
        "JOBMILL_LOG",
        "info",
        "tracing filter, e.g. info,jobmill=debug",
    ),
    ("JOBMILL_LOG_FORMAT", "text", "text or json"),
];

/// A string that never shows up in `Debug` output (connection strings carry passwords).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret value; call only where it is really needed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What an API key may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sees and acts on its own jobs only.
    Submitter,
    /// Sees and acts on every job.
    Operator,
}

/// One configured API key. The name is the tenant that owns the jobs it submits.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Tenant name.
    pub name: String,
    /// Bearer secret.
    pub secret: Secret,
    /// Permissions.
    pub role: Role,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A queue a worker consumes, with its relative weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueWeight {
    /// Queue name.
    pub name: String,
    /// Relative share of claims (1..=100).
    pub weight: u32,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Which binary is loading settings: decides which settings are required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// `jobmill-api`: needs API keys.
    Api,
    /// `jobmill-worker`.
    Worker,
    /// Library use (tests, benchmarks): nothing extra required.
    Library,
}

/// All settings of both binaries.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Redis URL.
    pub redis_url: Secret,
    /// MongoDB URI.
    pub mongodb_uri: Secret,
    /// MongoDB database.
    pub mongodb_db: String,
    /// Redis key prefix.
    pub key_prefix: String,
    /// API listen address.
    pub api_addr: SocketAddr,
    /// API keys.
    pub api_keys: Vec<ApiKey>,
    /// Retention of finished jobs.
    pub retention: Duration,
    /// Lease duration of a claimed job.
    pub lease_ttl: Duration,
    /// First retry delay ceiling.
    pub retry_base: Duration,
    /// Largest retry delay ceiling.
    pub retry_max: Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Largest serialized args.
    pub max_args_bytes: usize,
    /// Worker queues with weights.
    pub queues: Vec<QueueWeight>,
    /// Worker concurrency.
    pub concurrency: usize,
    /// Worker drain time on SIGTERM.
    pub shutdown_timeout: Duration,
    /// Grace period of a cancelled handler.
    pub cancel_grace: Duration,
    /// Finished-but-unrecorded attempts a worker may hold before it stops claiming.
    pub max_unrecorded: usize,
    /// Size of an upload part.
    pub upload_part_size: usize,
    /// Retention of uploads never completed.
    pub upload_retention: Duration,
    /// Rows per cached page.
    pub page_size: usize,
    /// Leading pages of a dataset kept in the cache.
    pub cache_pages: usize,
    /// Webhook delivery settings.
    pub webhooks: WebhookSettings,
    /// Tracing filter.
    pub log: String,
    /// Log format.
    pub log_format: LogFormat,
}

impl Settings {
    /// Read settings from the process environment, with `--flag value` overrides from `args`
    /// (`--queues x` overrides `JOBMILL_QUEUES`). Every broken setting is reported at once.
    pub fn load(component: Component, args: &[String]) -> Result<Self> {
        let overrides = parse_flags(args)?;
        Self::from_lookup(component, |name| {
            overrides
                .get(name)
                .cloned()
                .or_else(|| std::env::var(name).ok())
        })
    }

    /// Build settings from any lookup function (tests use a map instead of the environment).
    pub fn from_lookup(component: Component, get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut problems = Vec::new();
        let read = |name: &str, default: &str| -> String {
            match get(name) {
                Some(v) if !v.trim().is_empty() => v.trim().to_string(),
                _ => default.to_string(),
            }
        };
        let redis_url = read("JOBMILL_REDIS_URL", DEFAULT_REDIS_URL);
        let mongodb_uri = read("JOBMILL_MONGODB_URI", DEFAULT_MONGODB_URI);
        let mongodb_db = read("JOBMILL_MONGODB_DB", DEFAULT_MONGODB_DB);
        let key_prefix = read("JOBMILL_KEY_PREFIX", DEFAULT_KEY_PREFIX);
        let api_addr = read("JOBMILL_API_ADDR", DEFAULT_API_ADDR);
        let api_keys = read("JOBMILL_API_KEYS", "");
        let retention = read("JOBMILL_RETENTION", "7d");
        let lease_ttl = read("JOBMILL_LEASE_TTL", "30s");
        let retry_base = read("JOBMILL_RETRY_BASE", "1s");
        let retry_max = read("JOBMILL_RETRY_MAX", "1h");
        let max_body = read("JOBMILL_MAX_BODY_BYTES", "1048576");
        let max_args = read("JOBMILL_MAX_ARGS_BYTES", "65536");
        let queues = read("JOBMILL_QUEUES", DEFAULT_QUEUES);
        let concurrency = read("JOBMILL_CONCURRENCY", "16");
        let shutdown_timeout = read("JOBMILL_SHUTDOWN_TIMEOUT", "30s");
        let cancel_grace = read("JOBMILL_CANCEL_GRACE", "10s");
        let max_unrecorded = read("JOBMILL_MAX_UNRECORDED", "10000");
        let part_size = read("JOBMILL_UPLOAD_PART_SIZE", "8388608");
        let upload_retention = read("JOBMILL_UPLOAD_RETENTION", "24h");
        let page_size = read("JOBMILL_PAGE_SIZE", "50");
        let cache_pages = read("JOBMILL_CACHE_PAGES", "10");
        let webhook_allow = read("JOBMILL_WEBHOOK_ALLOW", "");
        let webhook_destinations = read("JOBMILL_WEBHOOK_DESTINATIONS", "");
        let webhook_timeout = read("JOBMILL_WEBHOOK_TIMEOUT", "15s");
        let webhook_retry_base = read("JOBMILL_WEBHOOK_RETRY_BASE", "5s");
        let webhook_disable_after = read("JOBMILL_WEBHOOK_DISABLE_AFTER", "5d");
        let webhook_rotation_grace = read("JOBMILL_WEBHOOK_ROTATION_GRACE", "24h");
        let webhook_progress_every = read("JOBMILL_WEBHOOK_PROGRESS_EVERY", "1s");
        let log = read("JOBMILL_LOG", "info");
        let log_format = read("JOBMILL_LOG_FORMAT", "text");

        let mut check = |name: &str, r: std::result::Result<(), String>| {
            if let Err(e) = r {
                problems.push(format!("{name}: {e}"));
            }
        };

        check(
            "JOBMILL_REDIS_URL",
            check_scheme(
                &redis_url,
                &["redis://", "rediss://", "redis+unix://", "unix://"],
            ),
        );
        check(
            "JOBMILL_MONGODB_URI",
            check_scheme(&mongodb_uri, &["mongodb://", "mongodb+srv://"]),
        );
        check("JOBMILL_MONGODB_DB", check_db_name(&mongodb_db));
        check("JOBMILL_KEY_PREFIX", check_prefix(&key_prefix));
        let api_addr_parsed = api_addr.parse::<SocketAddr>();
        check(
            "JOBMILL_API_ADDR",
            api_addr_parsed
                .as_ref()
                .map(|_| ())
                .map_err(|_| format!("'{api_addr}' is not an address like 127.0.0.1:8080")),
        );
        let keys = parse_api_keys(&api_keys);
        check(
            "JOBMILL_API_KEYS",
            keys.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        if component == Component::Api && matches!(&keys, Ok(k) if k.is_empty()) {
            check(
                "JOBMILL_API_KEYS",
                Err("the API needs at least one key, e.g. JOBMILL_API_KEYS=ops:<secret of 16+ chars>:operator".into()),
            );
        }
        let mut dur = |name: &str, raw: &str, min: Duration, max: Duration| -> Duration {
            match parse_duration(raw) {
                Ok(d) if d < min => {
                    check(
                        name,
                        Err(format!(
                            "{raw} is shorter than the minimum {}",
                            fmt_duration(min)
                        )),
                    );
                    min
                }
                Ok(d) if d > max => {
                    check(
                        name,
                        Err(format!(
                            "{raw} is longer than the maximum {}",
                            fmt_duration(max)
                        )),
                    );
                    max
                }
                Ok(d) => d,
                Err(e) => {
                    check(name, Err(e));
                    min
                }
            }
        };
        let day = Duration::from_secs(86_400);
        let retention = dur(
            "JOBMILL_RETENTION",
            &retention,
            Duration::from_secs(60),
            day * 3650,
        );
        let lease_ttl = dur(
            "JOBMILL_LEASE_TTL",
            &lease_ttl,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        );
        let retry_base = dur(
            "JOBMILL_RETRY_BASE",
            &retry_base,
            Duration::from_millis(1),
            day,
        );
        let retry_max = dur(
            "JOBMILL_RETRY_MAX",
            &retry_max,
            Duration::from_millis(1),
            day * 7,
        );
        let shutdown_timeout = dur(
            "JOBMILL_SHUTDOWN_TIMEOUT",
            &shutdown_timeout,
            Duration::ZERO,
            day,
        );
        let cancel_grace = dur(
            "JOBMILL_CANCEL_GRACE",
            &cancel_grace,
            Duration::ZERO,
            Duration::from_secs(3600),
        );
        let upload_retention = dur(
            "JOBMILL_UPLOAD_RETENTION",
            &upload_retention,
            Duration::from_secs(60),
            day * 365,
        );
        let webhook_timeout = dur(
            "JOBMILL_WEBHOOK_TIMEOUT",
            &webhook_timeout,
            Duration::from_millis(100),
            Duration::from_secs(300),
        );
        let webhook_retry_base = dur(
            "JOBMILL_WEBHOOK_RETRY_BASE",
            &webhook_retry_base,
            Duration::from_millis(1),
            Duration::from_secs(3600),
        );
        let webhook_disable_after = dur(
            "JOBMILL_WEBHOOK_DISABLE_AFTER",
            &webhook_disable_after,
            Duration::ZERO,
            day * 365,
        );
        let webhook_rotation_grace = dur(
            "JOBMILL_WEBHOOK_ROTATION_GRACE",
            &webhook_rotation_grace,
            Duration::ZERO,
            day * 30,
        );
        let webhook_progress_every = dur(
            "JOBMILL_WEBHOOK_PROGRESS_EVERY",
            &webhook_progress_every,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        );
        let mut num = |name: &str, raw: &str, min: usize, max: usize| -> usize {
            match raw.parse::<usize>() {
                Ok(n) if (min..=max).contains(&n) => n,
                _ => {
                    check(
                        name,
                        Err(format!("'{raw}' is not a whole number from {min} to {max}")),
                    );
                    min
                }
            }
        };
        let max_body_bytes = num("JOBMILL_MAX_BODY_BYTES", &max_body, 1024, 64 * 1024 * 1024);
        let max_args_bytes = num("JOBMILL_MAX_ARGS_BYTES", &max_args, 64, 16 * 1024 * 1024);
        let concurrency = num("JOBMILL_CONCURRENCY", &concurrency, 1, 10_000);
        let max_unrecorded = num("JOBMILL_MAX_UNRECORDED", &max_unrecorded, 1, 1_000_000);
        let upload_part_size = num(
            "JOBMILL_UPLOAD_PART_SIZE",
            &part_size,
            MIN_UPLOAD_PART_SIZE,
            1024 * 1024 * 1024,
        );
        let page_size = num("JOBMILL_PAGE_SIZE", &page_size, 1, 1000);
        let cache_pages = num("JOBMILL_CACHE_PAGES", &cache_pages, 1, 1000);
        let queues = parse_queues(&queues);
        check(
            "JOBMILL_QUEUES",
            queues.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        let log_format = match log_format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                check(
                    "JOBMILL_LOG_FORMAT",
                    Err(format!("'{other}' is neither text nor json")),
                );
                LogFormat::Text
            }
        };
        let webhook_allow = match AllowList::parse(&webhook_allow) {
            Ok(a) => a,
            Err(e) => {
                check("JOBMILL_WEBHOOK_ALLOW", Err(e));
                AllowList::default()
            }
        };
        let webhook_destinations = match Destinations::parse(&webhook_destinations) {
            Ok(d) => d,
            Err(e) => {
                check("JOBMILL_WEBHOOK_DESTINATIONS", Err(e));
                Destinations::default()
            }
        };
        // Rules that tie two settings together.
        if retry_base > retry_max {
            check(
                "JOBMILL_RETRY_BASE",
                Err("must not be longer than JOBMILL_RETRY_MAX".into()),
            );
        }
        if max_args_bytes > max_body_bytes {
            check(
                "JOBMILL_MAX_ARGS_BYTES",
                Err("must not exceed JOBMILL_MAX_BODY_BYTES".into()),
            );
        }

        if !problems.is_empty() {
            return Err(Error::Config(problems.join("\n")));
        }
        Ok(Settings {
            redis_url: Secret(redis_url),
            mongodb_uri: Secret(mongodb_uri),
            mongodb_db,
            key_prefix,
            api_addr: api_addr_parsed.expect("checked above"),
            api_keys: keys.expect("checked above"),
            retention,
            lease_ttl,
            retry_base,
            retry_max,
            max_body_bytes,
            max_args_bytes,
            queues: queues.expect("checked above"),
            concurrency,
            shutdown_timeout,
            cancel_grace,
            max_unrecorded,
            upload_part_size,
            upload_retention,
            page_size,
            cache_pages,
            webhooks: WebhookSettings {
                allow: webhook_allow,
                destinations: webhook_destinations,
                timeout: webhook_timeout,
                retry_base: webhook_retry_base,
                disable_after: webhook_disable_after,
                rotation_grace: webhook_rotation_grace,
                progress_every: webhook_progress_every,
            },
            log,
            log_format,
        })
    }

    /// How often a worker renews its leases: a third of the lease, so two heartbeats may be
    /// missed before a live worker loses a job.
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease_ttl / 3
    }

    /// The `--help` text listing every setting.
    pub fn help(binary: &str, extra: &str) -> String {
        let mut s = format!("{binary}: configured by environment variables; any of them may be given as a flag (JOBMILL_QUEUES=x is --queues x).\n{extra}\n\n");
        for (name, default, meaning) in SETTINGS {
            s.push_str(&format!("  {name:<26} {meaning} [default: {default}]\n"));
        }
        s
    }
}

/// Turn `--name value` / `--name=value` into `JOBMILL_NAME` overrides.
fn parse_flags(args: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(flag) = a.strip_prefix("--") else {
            return Err(Error::Config(format!(
                "unexpected argument '{a}' (flags look like --queues default)"
            )));
        };
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => {
                let v = it
                    .next()
                    .ok_or_else(|| Error::Config(format!("--{flag} needs a value")))?;
                (flag.to_string(), v.clone())
            }
        };
        let env = format!("JOBMILL_{}", name.replace('-', "_").to_ascii_uppercase());
        if !SETTINGS.iter().any(|(n, _, _)| *n == env) {
            return Err(Error::Config(format!("unknown flag --{name} (see --help)")));
        }
        out.insert(env, value);
    }
    Ok(out)
}

fn check_scheme(v: &str, schemes: &[&str]) -> std::result::Result<(), String> {
    if schemes.iter().any(|s| v.starts_with(s)) {
        Ok(())
    } else {
        Err(format!("must start with one of {}", schemes.join(", ")))
    }
}

fn check_db_name(v: &str) -> std::result::Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("'{v}' must be 1-63 letters, digits, '_' or '-'"))
    }
}

fn check_prefix(v: &str) -> std::result::Result<(), String> {
    // Braces would break the `{queue}` hash tags that keep each queue on one cluster slot.
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-:.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{v}' must be 1-64 letters, digits or _-:. (no braces)"
        ))
    }
}

/// Validate a queue name: short, and safe inside a Redis hash tag.
pub fn check_queue_name(v: &str) -> std::result::Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "queue name '{}' must be 1-64 letters, digits, '_' or '-'",
            truncate(v, 80)
        ))
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn parse_queues(raw: &str) -> std::result::Result<Vec<QueueWeight>, String> {
    let mut out: Vec<QueueWeight> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = match part.split_once(':') {
            Some((n, w)) => (
                n,
                w.parse::<u32>()
                    .ok()
                    .filter(|w| (1..=100).contains(w))
                    .ok_or_else(|| format!("weight '{w}' of queue '{n}' must be 1-100"))?,
            ),
            None => (part, 1),
        };
        check_queue_name(name)?;
        if out.iter().any(|q| q.name == name) {
            return Err(format!("queue '{name}' is listed twice"));
        }
        out.push(QueueWeight {
            name: name.to_string(),
            weight,
        });
    }
    if out.is_empty() {
        return Err("name at least one queue".into());
    }
    Ok(out)
}

fn parse_api_keys(raw: &str) -> std::result::Result<Vec<ApiKey>, String> {
    let mut keys: Vec<ApiKey> = Vec::new();
    for (i, entry) in raw
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
    {
        let n = i + 1;
        let parts: Vec<&str> = entry.split(':').collect();
        let [name, secret, role] = parts[..] else {
            return Err(format!("entry {n} must be name:secret:role"));
        };
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "entry {n}: name must be 1-64 letters, digits, '_' or '-'"
            ));
        }
        if secret.len() < 16 || secret.len() > 256 || secret.chars().any(|c| c.is_whitespace()) {
            return Err(format!(
                "entry {n} ({name}): secret must be 16-256 characters without spaces"
            ));
        }
        let role = match role {
            "submitter" => Role::Submitter,
            "operator" => Role::Operator,
            other => {
                return Err(format!(
                    "entry {n} ({name}): role '{other}' is neither submitter nor operator"
                ))
            }
        };
        if keys.iter().any(|k| k.name == name) {
            return Err(format!("name '{name}' is used twice"));
        }
        if keys.iter().any(|k| k.secret.expose() == secret) {
            return Err(format!("entry {n} ({name}) reuses another key's secret"));
        }
        keys.push(ApiKey {
            name: name.to_string(),
            secret: Secret(secret.to_string()),
            role,
        });
    }
    Ok(keys)
}

/// Parse `500ms`, `10s`, `5m`, `2h`, `7d`, or a bare number of seconds.
pub fn parse_duration(raw: &str) -> std::result::Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{raw}' is not a duration like 500ms, 30s, 5m, 2h or 7d"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "'{raw}' has an unknown unit (use ms, s, m, h or d)"
            ))
        }
    }
    .ok_or_else(|| format!("'{raw}' is too long"))?;
    Ok(Duration::from_millis(ms))
}

fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)], component: Component) -> Result<Settings> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(component, |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_valid_for_the_worker() {
        let s = load(&[], Component::Worker).unwrap();
        assert_eq!(s.mongodb_db, "jobmill");
        assert_eq!(s.key_prefix, "jobmill");
        assert_eq!(s.lease_ttl, DEFAULT_LEASE_TTL);
        assert_eq!(
            s.queues,
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
        assert_eq!(s.heartbeat_interval(), Duration::from_secs(10));
    }

    #[test]
    fn api_requires_a_key() {
        let err = load(&[], Component::Api).unwrap_err().to_string();
        assert!(err.contains("JOBMILL_API_KEYS"), "{err}");
    }

    #[test]
    fn every_broken_setting_is_named() {
        let err = load(
            &[
                ("JOBMILL_API_ADDR", "nowhere"),
                ("JOBMILL_RETENTION", "forever"),
                ("JOBMILL_KEY_PREFIX", "a{b}"),
                ("JOBMILL_QUEUES", "default,imports:0"),
                ("JOBMILL_CONCURRENCY", "-3"),
                ("JOBMILL_REDIS_URL", "http://x"),
                ("JOBMILL_API_KEYS", "a:short:operator"),
            ],
            Component::Api,
        )
        .unwrap_err()
        .to_string();
        for name in [
            "JOBMILL_API_ADDR",
            "JOBMILL_RETENTION",
            "JOBMILL_KEY_PREFIX",
            "JOBMILL_QUEUES",
            "JOBMILL_CONCURRENCY",
            "JOBMILL_REDIS_URL",
            "JOBMILL_API_KEYS",
        ] {
            assert!(err.contains(name), "{name} missing from: {err}");
        }
    }

    #[test]
    fn tied_settings_are_checked_together() {
        let err = load(
            &[("JOBMILL_RETRY_BASE", "2h"), ("JOBMILL_RETRY_MAX", "1h")],
            Component::Worker,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("JOBMILL_RETRY_BASE"), "{err}");
    }

    #[test]
    fn keys_and_queues_parse() {
        let s = load(
            &[
                (
                    "JOBMILL_API_KEYS",
                    "alice:0123456789abcdef:submitter, ops:fedcba9876543210:operator",
                ),
                ("JOBMILL_QUEUES", "default,imports:3,cache"),
            ],
            Component::Api,
        )
        .unwrap();
        assert_eq!(s.api_keys.len(), 2);
        assert_eq!(s.api_keys[1].role, Role::Operator);
        assert_eq!(
            s.queues[1],
            QueueWeight {
                name: "imports".into(),
                weight: 3
            }
        );
        assert!(
            !format!("{s:?}").contains("0123456789abcdef"),
            "secrets leak into Debug"
        );
    }

    #[test]
    fn file_and_cache_settings() {
        let s = load(&[], Component::Worker).unwrap();
        assert_eq!(s.upload_part_size, DEFAULT_UPLOAD_PART_SIZE);
        assert_eq!(s.upload_retention, DEFAULT_UPLOAD_RETENTION);
        assert_eq!(s.page_size, DEFAULT_PAGE_SIZE);
        assert_eq!(s.cache_pages, DEFAULT_CACHE_PAGES);
        let err = load(
            &[
                ("JOBMILL_UPLOAD_PART_SIZE", "1000"),
                ("JOBMILL_PAGE_SIZE", "0"),
                ("JOBMILL_UPLOAD_RETENTION", "1s"),
            ],
            Component::Worker,
        )
        .unwrap_err()
        .to_string();
        for name in [
            "JOBMILL_UPLOAD_PART_SIZE",
            "JOBMILL_PAGE_SIZE",
            "JOBMILL_UPLOAD_RETENTION",
        ] {
            assert!(err.contains(name), "{name} missing from: {err}");
        }
    }

    #[test]
    fn webhook_settings_parse_and_are_checked() {
        let s = load(
            &[
                ("JOBMILL_WEBHOOK_ALLOW", "127.0.0.1,hooks.local:8443"),
                (
                    "JOBMILL_WEBHOOK_DESTINATIONS",
                    "hooks.local:8443,10.0.0.0/8",
                ),
                ("JOBMILL_WEBHOOK_RETRY_BASE", "100ms"),
                ("JOBMILL_WEBHOOK_DISABLE_AFTER", "1h"),
            ],
            Component::Worker,
        )
        .unwrap();
        assert!(!s.webhooks.allow.is_empty());
        assert!(s.webhooks.destinations.is_restricted());
        // What scripts/dev.sh and the tests set both to.
        let loopback = "127.0.0.1,localhost,[::1]";
        let dev = load(
            &[
                ("JOBMILL_WEBHOOK_ALLOW", loopback),
                ("JOBMILL_WEBHOOK_DESTINATIONS", loopback),
            ],
            Component::Worker,
        )
        .unwrap();
        assert!(!dev.webhooks.allow.is_empty());
        assert!(dev.webhooks.destinations.is_restricted());
        assert_eq!(s.webhooks.retry_base, Duration::from_millis(100));
        assert_eq!(s.webhooks.disable_after, Duration::from_secs(3600));
        let err = load(
            &[
                ("JOBMILL_WEBHOOK_ALLOW", "a/b"),
                ("JOBMILL_WEBHOOK_DESTINATIONS", "10.0.0.1/8"),
                ("JOBMILL_WEBHOOK_TIMEOUT", "1ms"),
            ],
            Component::Worker,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("JOBMILL_WEBHOOK_ALLOW"), "{err}");
        assert!(err.contains("JOBMILL_WEBHOOK_DESTINATIONS"), "{err}");
        assert!(err.contains("JOBMILL_WEBHOOK_TIMEOUT"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn flags_override_env_names() {
        let m =
            parse_flags(&["--queues".into(), "a,b:2".into(), "--concurrency=4".into()]).unwrap();
        assert_eq!(m["JOBMILL_QUEUES"], "a,b:2");
        assert_eq!(m["JOBMILL_CONCURRENCY"], "4");
        assert!(parse_flags(&["--bogus".into(), "1".into()]).is_err());
        assert!(parse_flags(&["stray".into()]).is_err());
    }
}
