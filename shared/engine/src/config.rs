//! Settings: one table of rows (env name, flag, default, bounds, doc), written once, from
//! which `--help`, parsing and validation all come.
//!
//! Each part of jobmill owns a *section*: a struct with its own [`Section::SETTINGS`] table and a
//! [`Section::read`] that turns an [`Env`] into typed values. The engine's section is
//! [`CoreSettings`]; features and binaries (API, worker) declare theirs next
//! to the code that uses them, and a binary loads the sections it assembles with [`load`]. Every
//! broken setting is reported at once, naming each variable, so a bad deployment fails fast.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};
pub use crate::redis_conn::RedisTarget;

/// One setting: its environment variable, default, bounds and meaning. The flag is derived from
/// the variable (`JOBMILL_LEASE_TTL` is `--lease-ttl`), so nothing is written twice.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Environment variable, `JOBMILL_*`.
    pub env: &'static str,
    /// Default as it would be written in the environment (`""` for none).
    pub default: &'static str,
    /// Bounds checked when the value is read.
    pub bounds: Bounds,
    /// What it means, for `--help` and the README table.
    pub doc: &'static str,
}

/// Bounds of a setting's value.
#[derive(Debug, Clone, Copy)]
pub enum Bounds {
    /// Free text, checked by the section.
    Text,
    /// A duration (`500ms`, `30s`, `5m`, `2h`, `7d`) between the two, inclusive.
    Duration(Duration, Duration),
    /// A whole number between the two, inclusive.
    Count(u64, u64),
}

impl Setting {
    /// The command-line flag of this setting.
    pub fn flag(&self) -> String {
        let name = self.env.strip_prefix("JOBMILL_").unwrap_or(self.env);
        format!("--{}", name.to_ascii_lowercase().replace('_', "-"))
    }
}

/// A part of the configuration with its own table.
pub trait Section: Sized {
    /// The rows of this section.
    const SETTINGS: &'static [Setting];
    /// Read the section; broken values are recorded in `env`, and a usable stand-in returned.
    fn read(env: &Env) -> Self;
}

/// Where raw values come from: environment plus flags, or a map in tests.
type Lookup<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

/// A source of raw values that collects problems.
pub struct Env<'a> {
    get: Lookup<'a>,
    problems: RefCell<Vec<String>>,
}

impl<'a> Env<'a> {
    /// Values from any lookup function.
    pub fn new(get: impl Fn(&str) -> Option<String> + 'a) -> Self {
        Env {
            get: Box::new(get),
            problems: RefCell::default(),
        }
    }

    /// Whether the variable was given (not blank).
    pub fn is_set(&self, s: &Setting) -> bool {
        (self.get)(s.env).is_some_and(|v| !v.trim().is_empty())
    }

    /// The raw value, or the default.
    pub fn raw(&self, s: &Setting) -> String {
        match (self.get)(s.env) {
            Some(v) if !v.trim().is_empty() => v.trim().to_string(),
            _ => s.default.to_string(),
        }
    }

    /// Record a broken setting.
    pub fn problem(&self, s: &Setting, why: impl fmt::Display) {
        self.problems.borrow_mut().push(format!("{}: {why}", s.env));
    }

    /// Parse the value with `f`; a failure is recorded and gives `None`.
    pub fn parse<T>(&self, s: &Setting, f: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        match f(&self.raw(s)) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(s, e);
                None
            }
        }
    }

    /// The value as text.
    pub fn text(&self, s: &Setting) -> String {
        self.raw(s)
    }

    /// A duration within the row's bounds (the nearest bound when out of them).
    pub fn duration(&self, s: &Setting) -> Duration {
        let Bounds::Duration(min, max) = s.bounds else {
            unreachable!("{} is not a duration setting", s.env)
        };
        let raw = self.raw(s);
        match parse_duration(&raw) {
            Ok(d) if d < min => {
                self.problem(
                    s,
                    format!("{raw} is shorter than the minimum {}", fmt_duration(min)),
                );
                min
            }
            Ok(d) if d > max => {
                self.problem(
                    s,
                    format!("{raw} is longer than the maximum {}", fmt_duration(max)),
                );
                max
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(s, e);
                min
            }
        }
    }

    /// A whole number within the row's bounds.
    pub fn count(&self, s: &Setting) -> usize {
        let Bounds::Count(min, max) = s.bounds else {
            unreachable!("{} is not a count setting", s.env)
        };
        let raw = self.raw(s);
        match raw.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => n as usize,
            _ => {
                self.problem(
                    s,
                    format!("'{raw}' is not a whole number from {min} to {max}"),
                );
                min as usize
            }
        }
    }

    /// Ok if nothing was broken, else every problem in one error.
    pub fn finish(self) -> Result<()> {
        let problems = self.problems.into_inner();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems.join("\n")))
        }
    }
}

/// The whole configuration of one process: the sections it loads. A binary names its tables and
/// how to read them; loading from the environment and flags, from a lookup, and `--help` come
/// from here.
pub trait Config: Sized {
    /// Every table this configuration reads, for flags and `--help`.
    const TABLES: &'static [&'static [Setting]];

    /// Read every section and check the rules that tie sections together, recording problems
    /// in `env` (the caller reports them all at once).
    fn read_sections(env: &Env) -> Self;

    /// Read every section; every broken setting is reported at once.
    fn read(env: Env) -> Result<Self> {
        let c = Self::read_sections(&env);
        env.finish()?;
        Ok(c)
    }

    /// From the environment, with `--flag value` overrides.
    fn load(args: &[String]) -> Result<Self> {
        Self::read(process_env(args, Self::TABLES)?)
    }

    /// From any lookup (tests, benchmarks).
    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        Self::read(Env::new(get))
    }

    /// The `--help` text of `binary`.
    fn help(binary: &str, extra: &str) -> String {
        help(binary, extra, Self::TABLES)
    }
}

/// Environment values overridden by `--flag value` / `--flag=value` from `args`, accepting only
/// the flags of `tables`.
pub fn process_env(args: &[String], tables: &[&[Setting]]) -> Result<Env<'static>> {
    let overrides = parse_flags(args, tables)?;
    Ok(Env::new(move |name| {
        overrides
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    }))
}

/// The `--help` text of a binary that loads `tables`.
pub fn help(binary: &str, extra: &str, tables: &[&[Setting]]) -> String {
    let mut s = format!("{binary}: configured by environment variables; any of them may be given as a flag (JOBMILL_QUEUES=x is --queues x).\n{extra}\n\n");
    for row in tables.iter().flat_map(|t| t.iter()) {
        let default = if row.default.is_empty() {
            "(none)"
        } else {
            row.default
        };
        s.push_str(&format!(
            "  {:<30} {} [default: {default}]\n",
            row.env, row.doc
        ));
    }
    s
}

/// A string that never shows up in `Debug` output (connection strings carry passwords).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

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

const DAY: Duration = Duration::from_secs(86_400);
const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `JOBMILL_REDIS_URL`.
pub const REDIS_URL: Setting = Setting {
    env: "JOBMILL_REDIS_URL",
    default: "redis://127.0.0.1:6379/",
    bounds: Bounds::Text,
    doc: "Redis holding the queues",
};
/// `JOBMILL_REDIS_CLUSTER`.
pub const REDIS_CLUSTER: Setting = Setting {
    env: "JOBMILL_REDIS_CLUSTER",
    default: "",
    bounds: Bounds::Text,
    doc: "Redis Cluster seed URLs, comma-separated (instead of JOBMILL_REDIS_URL)",
};
/// `JOBMILL_MONGODB_URI`.
pub const MONGODB_URI: Setting = Setting {
    env: "JOBMILL_MONGODB_URI",
    default: "mongodb://127.0.0.1:27017/?directConnection=true",
    bounds: Bounds::Text,
    doc: "MongoDB, the system of record",
};
/// `JOBMILL_MONGODB_WRITE_CONCERN`.
pub const MONGODB_WRITE_CONCERN: Setting = Setting {
    env: "JOBMILL_MONGODB_WRITE_CONCERN",
    default: "",
    bounds: Bounds::Text,
    doc: "write concern: majority, a number of nodes (1+), or a tag set name; default majority when the URI names a replicaSet, else the server's default",
};
/// `JOBMILL_MONGODB_JOURNAL`.
pub const MONGODB_JOURNAL: Setting = Setting {
    env: "JOBMILL_MONGODB_JOURNAL",
    default: "",
    bounds: Bounds::Text,
    doc: "true: writes are acknowledged once in the on-disk journal; false: not required; empty: the server's default",
};
/// `JOBMILL_MONGODB_RETRY_WRITES`.
pub const MONGODB_RETRY_WRITES: Setting = Setting {
    env: "JOBMILL_MONGODB_RETRY_WRITES",
    default: "true",
    bounds: Bounds::Text,
    doc: "let the driver retry a write once after a failover (true or false)",
};
/// `JOBMILL_MONGODB_DB`.
pub const MONGODB_DB: Setting = Setting {
    env: "JOBMILL_MONGODB_DB",
    default: "jobmill",
    bounds: Bounds::Text,
    doc: "database name",
};
/// `JOBMILL_KEY_PREFIX`.
pub const KEY_PREFIX: Setting = Setting {
    env: "JOBMILL_KEY_PREFIX",
    default: "jobmill",
    bounds: Bounds::Text,
    doc: "prefix of every Redis key (no braces)",
};
/// `JOBMILL_RETENTION`.
pub const RETENTION: Setting = Setting {
    env: "JOBMILL_RETENTION",
    default: "7d",
    bounds: Bounds::Duration(secs(60), secs(3650 * 86_400)),
    doc: "how long finished jobs are kept",
};
/// `JOBMILL_LEASE_TTL`.
pub const LEASE_TTL: Setting = Setting {
    env: "JOBMILL_LEASE_TTL",
    default: "30s",
    bounds: Bounds::Duration(secs(1), secs(3600)),
    doc: "lease of a claimed job; heartbeats renew it every third of it",
};
/// `JOBMILL_RETRY_BASE`.
pub const RETRY_BASE: Setting = Setting {
    env: "JOBMILL_RETRY_BASE",
    default: "1s",
    bounds: Bounds::Duration(ms(1), DAY),
    doc: "first retry delay ceiling (exponential, full jitter)",
};
/// `JOBMILL_RETRY_MAX`.
pub const RETRY_MAX: Setting = Setting {
    env: "JOBMILL_RETRY_MAX",
    default: "1h",
    bounds: Bounds::Duration(ms(1), secs(7 * 86_400)),
    doc: "largest retry delay ceiling",
};
/// `JOBMILL_MAX_ARGS_BYTES`.
pub const MAX_ARGS_BYTES: Setting = Setting {
    env: "JOBMILL_MAX_ARGS_BYTES",
    default: "65536",
    bounds: Bounds::Count(64, 16 * 1024 * 1024),
    doc: "largest serialized args of one job",
};
/// `JOBMILL_LOG`.
pub const LOG: Setting = Setting {
    env: "JOBMILL_LOG",
    default: "info",
    bounds: Bounds::Text,
    doc: "tracing filter, e.g. info,jobmill=debug",
};
/// `JOBMILL_LOG_FORMAT`.
pub const LOG_FORMAT: Setting = Setting {
    env: "JOBMILL_LOG_FORMAT",
    default: "text",
    bounds: Bounds::Text,
    doc: "text or json",
};

/// `JOBMILL_QUEUE_SHARDS`.
pub const QUEUE_SHARDS: Setting = Setting {
    env: "JOBMILL_QUEUE_SHARDS",
    default: "",
    bounds: Bounds::Text,
    doc: "sharded queues as queue=count,... (e.g. imports=8,default=4; 1-64 each, others one shard); must match the shard map in MongoDB",
};
/// `JOBMILL_QUEUE_RESHARD`.
pub const QUEUE_RESHARD: Setting = Setting {
    env: "JOBMILL_QUEUE_RESHARD",
    default: "false",
    bounds: Bounds::Text,
    doc: "record JOBMILL_QUEUE_SHARDS as the new shard map where it differs (old shards drain first); set on one process only",
};

/// The engine's settings: where the stores are, leases, retries, retention, logging.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    /// Where Redis is: one server (`JOBMILL_REDIS_URL`) or a cluster
    /// (`JOBMILL_REDIS_CLUSTER`).
    pub redis: RedisTarget,
    /// MongoDB URI.
    pub mongodb_uri: Secret,
    /// MongoDB database.
    pub mongodb_db: String,
    /// Write concern, journal and retryable writes for MongoDB.
    pub mongodb_writes: MongoWrites,
    /// Redis key prefix.
    pub key_prefix: String,
    /// Retention of finished jobs.
    pub retention: Duration,
    /// Lease duration of a claimed job.
    pub lease_ttl: Duration,
    /// First retry delay ceiling.
    pub retry_base: Duration,
    /// Largest retry delay ceiling.
    pub retry_max: Duration,
    /// Largest serialized args.
    pub max_args_bytes: usize,
    /// Tracing filter.
    pub log: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Shard counts of sharded queues (`JOBMILL_QUEUE_SHARDS`); a queue not named has one.
    pub queue_shards: BTreeMap<String, u16>,
    /// Record `queue_shards` as the new shard map where the stored one differs.
    pub queue_reshard: bool,
}

impl Section for CoreSettings {
    const SETTINGS: &'static [Setting] = &[
        REDIS_URL,
        REDIS_CLUSTER,
        MONGODB_URI,
        MONGODB_WRITE_CONCERN,
        MONGODB_JOURNAL,
        MONGODB_RETRY_WRITES,
        MONGODB_DB,
        KEY_PREFIX,
        RETENTION,
        LEASE_TTL,
        RETRY_BASE,
        RETRY_MAX,
        MAX_ARGS_BYTES,
        LOG,
        LOG_FORMAT,
        QUEUE_SHARDS,
        QUEUE_RESHARD,
    ];

    fn read(env: &Env) -> Self {
        let redis = read_redis(env);
        let mongodb_uri = env.text(&MONGODB_URI);
        if let Err(e) = check_scheme(&mongodb_uri, &["mongodb://", "mongodb+srv://"]) {
            env.problem(&MONGODB_URI, e);
        }
        let mongodb_writes = read_mongo_writes(env);
        let mongodb_db = env.text(&MONGODB_DB);
        if let Err(e) = check_db_name(&mongodb_db) {
            env.problem(&MONGODB_DB, e);
        }
        let key_prefix = env.text(&KEY_PREFIX);
        if let Err(e) = check_prefix(&key_prefix) {
            env.problem(&KEY_PREFIX, e);
        }
        let retry_base = env.duration(&RETRY_BASE);
        let retry_max = env.duration(&RETRY_MAX);
        if retry_base > retry_max {
            env.problem(&RETRY_BASE, "must not be longer than JOBMILL_RETRY_MAX");
        }
        let log_format = env
            .parse(&LOG_FORMAT, |v| match v {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                other => Err(format!("'{other}' is neither text nor json")),
            })
            .unwrap_or(LogFormat::Text);
        CoreSettings {
            redis,
            mongodb_uri: Secret(mongodb_uri),
            mongodb_db,
            mongodb_writes,
            key_prefix,
            retention: env.duration(&RETENTION),
            lease_ttl: env.duration(&LEASE_TTL),
            retry_base,
            retry_max,
            max_args_bytes: env.count(&MAX_ARGS_BYTES),
            log: env.text(&LOG),
            log_format,
            queue_shards: env
                .parse(&QUEUE_SHARDS, crate::shards::parse_shards)
                .unwrap_or_default(),
            queue_reshard: env.parse(&QUEUE_RESHARD, parse_bool).unwrap_or(false),
        }
    }
}

/// How many MongoDB nodes must confirm a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteConcern {
    /// Not set: `majority` when the URI names a replica set (`replicaSet=`), else whatever the
    /// URI (`w=`) or the server says.
    Default,
    /// A majority of the replica set's voting members: a confirmed write survives a failover.
    Majority,
    /// This many nodes (1 or more).
    Nodes(u32),
    /// A custom write concern (tag set) defined in the replica set's configuration.
    Tag(String),
}

/// MongoDB write settings (applied in [`crate::store::client_options_for`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoWrites {
    /// `JOBMILL_MONGODB_WRITE_CONCERN`.
    pub concern: WriteConcern,
    /// `JOBMILL_MONGODB_JOURNAL`: `None` leaves it to the server.
    pub journal: Option<bool>,
    /// `JOBMILL_MONGODB_RETRY_WRITES`.
    pub retry_writes: bool,
}

fn parse_bool(v: &str) -> std::result::Result<bool, String> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        other => Err(format!(
            "'{}' is neither true nor false",
            truncate(other, 40)
        )),
    }
}

fn read_mongo_writes(env: &Env) -> MongoWrites {
    let concern = env
        .parse(&MONGODB_WRITE_CONCERN, |v| match v {
            "" => Ok(WriteConcern::Default),
            "majority" => Ok(WriteConcern::Majority),
            n if n.chars().all(|c| c.is_ascii_digit()) => match n.parse::<u32>() {
                // Unacknowledged writes return no match counts, and every state transition is
                // a guarded write whose count says whether it applied: w=0 would break them.
                Ok(0) => Err("0 (unacknowledged writes) is refused: jobmill's guarded \
                              writes need to know whether they applied"
                    .to_string()),
                Ok(n) if n <= 50 => Ok(WriteConcern::Nodes(n)),
                _ => Err(format!("'{n}' is not a number of nodes from 1 to 50")),
            },
            tag if tag.len() <= 64
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) =>
            {
                Ok(WriteConcern::Tag(tag.to_string()))
            }
            other => Err(format!(
                "'{}' is not majority, a number of nodes or a tag set name",
                truncate(other, 40)
            )),
        })
        .unwrap_or(WriteConcern::Majority);
    let journal = if env.is_set(&MONGODB_JOURNAL) {
        env.parse(&MONGODB_JOURNAL, parse_bool)
    } else {
        None
    };
    let retry_writes = env.parse(&MONGODB_RETRY_WRITES, parse_bool).unwrap_or(true);
    MongoWrites {
        concern,
        journal,
        retry_writes,
    }
}

/// `JOBMILL_REDIS_URL` or `JOBMILL_REDIS_CLUSTER`, never both: a deployment that names both
/// would otherwise silently use one of them.
fn read_redis(env: &Env) -> RedisTarget {
    let url = env.text(&REDIS_URL);
    if let Err(e) = check_scheme(&url, &["redis://", "rediss://", "redis+unix://", "unix://"]) {
        env.problem(&REDIS_URL, e);
    }
    if !env.is_set(&REDIS_CLUSTER) {
        return RedisTarget::Single(Secret(url));
    }
    if env.is_set(&REDIS_URL) {
        env.problem(
            &REDIS_CLUSTER,
            "JOBMILL_REDIS_CLUSTER and JOBMILL_REDIS_URL are both set; set only one \
             (JOBMILL_REDIS_CLUSTER for a Redis Cluster, JOBMILL_REDIS_URL for one server)",
        );
    }
    let mut seeds = Vec::new();
    for seed in env.text(&REDIS_CLUSTER).split(',').map(str::trim) {
        if seed.is_empty() {
            continue;
        }
        match check_scheme(seed, &["redis://", "rediss://"]) {
            Ok(()) => seeds.push(Secret(seed.to_string())),
            Err(e) => env.problem(&REDIS_CLUSTER, format!("seed {}: {e}", seed_host(seed))),
        }
    }
    if seeds.is_empty() {
        env.problem(&REDIS_CLUSTER, "name at least one seed URL");
    }
    RedisTarget::Cluster(seeds)
}

/// A seed as it may be shown in an error: without any password.
fn seed_host(seed: &str) -> String {
    match seed.rsplit_once('@') {
        Some((_, host)) => format!("...@{host}"),
        None => truncate(seed, 80),
    }
}

impl CoreSettings {
    /// Read this section alone from a lookup (tests, libraries).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let env = Env::new(get);
        let s = Self::read(&env);
        env.finish()?;
        Ok(s)
    }

    /// How often a worker renews its leases: a third of the lease, so two heartbeats may be
    /// missed before a live worker loses a job.
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease_ttl / 3
    }

    /// How often the rescuer looks for expired leases: a quarter of the lease, within bounds,
    /// so a dead worker's jobs rerun soon after its lease ends.
    pub fn rescue_period(&self) -> Duration {
        (self.lease_ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(5))
    }

    /// How long a rescue may stall (its rescuer died) before another rescuer takes it over.
    pub fn rescue_stale_after(&self) -> Duration {
        (self.lease_ttl * 2).max(Duration::from_secs(10))
    }

    /// How long a worker's registry entry outlives its last heartbeat.
    pub fn registry_ttl(&self) -> Duration {
        (self.lease_ttl * 3).max(Duration::from_secs(10))
    }
}

/// Turn `--name value` / `--name=value` into `JOBMILL_NAME` overrides.
fn parse_flags(args: &[String], tables: &[&[Setting]]) -> Result<BTreeMap<String, String>> {
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
        let row = tables
            .iter()
            .flat_map(|t| t.iter())
            .find(|r| r.flag() == format!("--{name}"))
            .ok_or_else(|| Error::Config(format!("unknown flag --{name} (see --help)")))?;
        out.insert(row.env.to_string(), value);
    }
    Ok(out)
}

/// Check that a URL starts with one of `schemes`.
pub fn check_scheme(v: &str, schemes: &[&str]) -> std::result::Result<(), String> {
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

/// Parse `name[:weight],...`.
pub fn parse_queues(raw: &str) -> std::result::Result<Vec<QueueWeight>, String> {
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

/// A duration as the settings write it (`500ms`, `30s`).
pub fn fmt_duration(d: Duration) -> String {
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

    fn core(pairs: &[(&str, &str)]) -> Result<CoreSettings> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CoreSettings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_valid() {
        let s = core(&[]).unwrap();
        assert_eq!(s.mongodb_db, "jobmill");
        assert_eq!(s.key_prefix, "jobmill");
        assert_eq!(s.lease_ttl, Duration::from_secs(30));
        assert_eq!(s.heartbeat_interval(), Duration::from_secs(10));
    }

    #[test]
    fn every_broken_setting_is_named() {
        let err = core(&[
            ("JOBMILL_RETENTION", "forever"),
            ("JOBMILL_KEY_PREFIX", "a{b}"),
            ("JOBMILL_REDIS_URL", "http://x"),
        ])
        .unwrap_err()
        .to_string();
        for name in [
            "JOBMILL_RETENTION",
            "JOBMILL_KEY_PREFIX",
            "JOBMILL_REDIS_URL",
        ] {
            assert!(err.contains(name), "{name} missing from: {err}");
        }
    }

    #[test]
    fn redis_cluster_seeds_parse_and_exclude_the_url() {
        let s = core(&[(
            "JOBMILL_REDIS_CLUSTER",
            "redis://127.0.0.1:7001, redis://127.0.0.1:7002,",
        )])
        .unwrap();
        let RedisTarget::Cluster(seeds) = &s.redis else {
            panic!("not a cluster: {:?}", s.redis)
        };
        assert_eq!(seeds.len(), 2);
        assert_eq!(seeds[1].expose(), "redis://127.0.0.1:7002");
        assert!(matches!(core(&[]).unwrap().redis, RedisTarget::Single(_)));
        let err = core(&[
            ("JOBMILL_REDIS_CLUSTER", "redis://127.0.0.1:7001"),
            ("JOBMILL_REDIS_URL", "redis://127.0.0.1:6379/"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("JOBMILL_REDIS_CLUSTER") && err.contains("JOBMILL_REDIS_URL"),
            "{err}"
        );
        let err = core(&[("JOBMILL_REDIS_CLUSTER", "http://x:1,redis://:pw@h:2")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("JOBMILL_REDIS_CLUSTER"), "{err}");
        assert!(core(&[("JOBMILL_REDIS_CLUSTER", " , ")]).is_err());
    }

    #[test]
    fn mongodb_write_settings_parse() {
        let s = core(&[]).unwrap();
        assert_eq!(
            s.mongodb_writes,
            MongoWrites {
                concern: WriteConcern::Default,
                journal: None,
                retry_writes: true
            }
        );
        let s = core(&[
            ("JOBMILL_MONGODB_WRITE_CONCERN", "2"),
            ("JOBMILL_MONGODB_JOURNAL", "true"),
            ("JOBMILL_MONGODB_RETRY_WRITES", "false"),
        ])
        .unwrap();
        assert_eq!(s.mongodb_writes.concern, WriteConcern::Nodes(2));
        assert_eq!(s.mongodb_writes.journal, Some(true));
        assert!(!s.mongodb_writes.retry_writes);
        assert_eq!(
            core(&[("JOBMILL_MONGODB_WRITE_CONCERN", "majority")])
                .unwrap()
                .mongodb_writes
                .concern,
            WriteConcern::Majority
        );
        assert_eq!(
            core(&[("JOBMILL_MONGODB_WRITE_CONCERN", "two_dcs")])
                .unwrap()
                .mongodb_writes
                .concern,
            WriteConcern::Tag("two_dcs".into())
        );
        for (k, v) in [
            ("JOBMILL_MONGODB_WRITE_CONCERN", "0"),
            ("JOBMILL_MONGODB_WRITE_CONCERN", "a b"),
            ("JOBMILL_MONGODB_JOURNAL", "maybe"),
            ("JOBMILL_MONGODB_RETRY_WRITES", "sometimes"),
        ] {
            let err = core(&[(k, v)]).unwrap_err().to_string();
            assert!(err.contains(k), "{k}={v}: {err}");
        }
    }

    #[test]
    fn tied_settings_are_checked_together() {
        let err = core(&[("JOBMILL_RETRY_BASE", "2h"), ("JOBMILL_RETRY_MAX", "1h")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("JOBMILL_RETRY_BASE"), "{err}");
    }

    #[test]
    fn queues_parse() {
        assert_eq!(
            parse_queues("default,imports:3,reports").unwrap()[1],
            QueueWeight {
                name: "imports".into(),
                weight: 3
            }
        );
        assert!(parse_queues("default,imports:0").is_err());
        assert!(parse_queues("a,a").is_err());
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
    fn flags_come_from_the_table() {
        let m = parse_flags(
            &["--lease-ttl".into(), "5s".into(), "--log=debug".into()],
            &[CoreSettings::SETTINGS],
        )
        .unwrap();
        assert_eq!(m["JOBMILL_LEASE_TTL"], "5s");
        assert_eq!(m["JOBMILL_LOG"], "debug");
        assert!(parse_flags(&["--bogus".into(), "1".into()], &[CoreSettings::SETTINGS]).is_err());
        assert!(parse_flags(&["stray".into()], &[CoreSettings::SETTINGS]).is_err());
        assert_eq!(LEASE_TTL.flag(), "--lease-ttl");
    }
}
