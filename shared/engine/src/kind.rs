//! How a job kind is written: the [`JobKind`] trait, the [`JobContext`] its handler gets, the
//! typed [`Outcome`] it returns, and the [`Registry`] that maps kind names to handlers.
//!
//! A user adds a kind by implementing `JobKind` in one file and registering it in their own
//! worker; see `kinds/sleep.rs` for a complete example, `examples/custom-kind` for a whole
//! worker binary, and the README for the walk-through. A kind gets what it needs (stores,
//! clients) when it is constructed, not from the context.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::job::Progress;
use crate::state::AttemptOutcome;

/// Defaults a kind applies when the submission does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindDefaults {
    /// Queue of its jobs.
    pub queue: &'static str,
    /// Attempts before the job fails for good.
    pub max_attempts: u32,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

impl Default for KindDefaults {
    fn default() -> Self {
        KindDefaults {
            queue: crate::client::DEFAULT_QUEUE,
            max_attempts: 3,
            timeout: Duration::from_secs(300),
        }
    }
}

/// The typed result of a handler: what happens next.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done; the value becomes the job's `result`.
    Success(Value),
    /// This attempt failed; try again (after `after`, or after the backoff) unless attempts
    /// are exhausted.
    Retry {
        /// Why.
        error: String,
        /// Requested delay instead of the backoff.
        after: Option<Duration>,
    },
    /// Failed for good: another attempt cannot help (bad input, missing data).
    Fail(String),
    /// Stopped because cancellation was requested.
    Cancelled(String),
    /// Told to slow down (an upstream answered 429, a quota is used up): run again after
    /// `after` without charging an attempt, and hold the job's `limit_key` (or its whole
    /// queue, for a job without a key) until then so its siblings wait too. A job whose
    /// cancel was requested ends `cancelled` instead.
    RateLimited {
        /// How long to wait.
        after: Duration,
    },
}

impl Outcome {
    /// Success with any serializable value.
    pub fn success(v: impl Serialize) -> Self {
        match serde_json::to_value(v) {
            Ok(v) => Outcome::Success(v),
            Err(e) => Outcome::Fail(format!("result is not serializable: {e}")),
        }
    }

    /// Retry after the backoff.
    pub fn retry(error: impl std::fmt::Display) -> Self {
        Outcome::Retry {
            error: error.to_string(),
            after: None,
        }
    }

    /// Retry after a given delay.
    pub fn retry_after(after: Duration, error: impl std::fmt::Display) -> Self {
        Outcome::Retry {
            error: error.to_string(),
            after: Some(after),
        }
    }

    /// Fail permanently.
    pub fn fail(error: impl std::fmt::Display) -> Self {
        Outcome::Fail(error.to_string())
    }
}

impl From<Outcome> for AttemptOutcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Success(v) => AttemptOutcome::Succeeded(v),
            Outcome::Retry { error, after } => AttemptOutcome::Retry { error, after },
            Outcome::Fail(e) => AttemptOutcome::FailedPermanently(e),
            Outcome::Cancelled(r) => AttemptOutcome::Cancelled(r),
            Outcome::RateLimited { after } => AttemptOutcome::RateLimited { after },
        }
    }
}

/// Where progress reports go (the worker batches them into MongoDB).
pub trait ProgressSink: Send + Sync {
    /// Record the latest progress of attempt `attempt` of job `id`.
    fn report(&self, id: &str, attempt: u32, progress: Progress);
}

/// What a handler knows about the attempt it runs, and how it talks back.
#[derive(Clone)]
pub struct JobContext {
    /// Job id.
    pub id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Attempt after which failure is final.
    pub max_attempts: u32,
    /// Owner of the job.
    pub tenant: String,
    /// Queue it came from.
    pub queue: String,
    cancel: CancellationToken,
    progress: Arc<dyn ProgressSink>,
}

impl JobContext {
    /// Build a context (the worker does this; tests may too).
    pub fn new(
        id: String,
        attempt: u32,
        max_attempts: u32,
        tenant: String,
        queue: String,
        cancel: CancellationToken,
        progress: Arc<dyn ProgressSink>,
    ) -> Self {
        JobContext {
            id,
            attempt,
            max_attempts,
            tenant,
            queue,
            cancel,
            progress,
        }
    }

    /// Resolves when the job should stop: a user cancelled it, it timed out, or the worker is
    /// shutting down. Handlers `select!` on it around long awaits and return
    /// [`Outcome::Cancelled`].
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Whether stopping was requested (for loops that poll).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Report progress; cheap, coalesced, written to MongoDB in batches.
    pub fn progress(&self, done: i64, total: Option<i64>, message: Option<&str>) {
        self.progress.report(
            &self.id,
            self.attempt,
            Progress {
                done,
                total,
                message: message.map(str::to_owned),
            },
        );
    }
}

/// A job kind: a stable name, typed arguments with a JSON Schema, validation, and the handler.
pub trait JobKind: Send + Sync + 'static {
    /// The name clients submit as `kind`. Stable: it is stored with every job.
    const NAME: &'static str;
    /// What it does, one sentence, shown in `GET /v1/kinds`.
    const DESCRIPTION: &'static str = "";
    /// Arguments, deserialized from the submitted `args`. Their JSON Schema (derived with
    /// `schemars`) is what any API validates submissions against, so encode every rule that
    /// [`JobKind::validate`] checks in it too (ranges, lengths, patterns).
    type Args: DeserializeOwned + JsonSchema + Send + 'static;

    /// Checks beyond the type. Run at submission by processes that link the kind, and again by
    /// the worker as the first step of every attempt (a failure there fails the job for good).
    fn validate(&self, _args: &Self::Args) -> std::result::Result<(), String> {
        Ok(())
    }

    /// Defaults for queue, attempts and timeout.
    fn defaults(&self) -> KindDefaults {
        KindDefaults::default()
    }

    /// Run one attempt. Delivery is at least once: make the effects idempotent or say which
    /// are not.
    fn run(&self, ctx: JobContext, args: Self::Args) -> impl Future<Output = Outcome> + Send;
}

/// A boxed handler future.
pub type BoxOutcome = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Object-safe face of a [`JobKind`], so kinds of different types share one registry.
pub trait ErasedKind: Send + Sync {
    /// The kind's name.
    fn name(&self) -> &'static str;
    /// One sentence on what it does.
    fn description(&self) -> &'static str;
    /// JSON Schema of its args.
    fn schema(&self) -> Value;
    /// Validate raw args (typed deserialization, then the kind's own checks).
    fn validate(&self, args: &Value) -> std::result::Result<(), String>;
    /// Defaults.
    fn defaults(&self) -> KindDefaults;
    /// Start one attempt: deserialize, validate, run.
    fn run(&self, ctx: JobContext, args: Value) -> BoxOutcome;
}

struct Erased<K>(Arc<K>);

impl<K: JobKind> ErasedKind for Erased<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn description(&self) -> &'static str {
        K::DESCRIPTION
    }

    fn schema(&self) -> Value {
        serde_json::to_value(schemars::schema_for!(K::Args)).unwrap_or(Value::Bool(true))
    }

    fn validate(&self, args: &Value) -> std::result::Result<(), String> {
        let typed: K::Args = K::Args::deserialize(args).map_err(|e| e.to_string())?;
        self.0.validate(&typed)
    }

    fn defaults(&self) -> KindDefaults {
        self.0.defaults()
    }

    fn run(&self, ctx: JobContext, args: Value) -> BoxOutcome {
        let kind = Arc::clone(&self.0);
        Box::pin(async move {
            let typed = match serde_json::from_value::<K::Args>(args) {
                Ok(typed) => typed,
                // Validated at submission (perhaps by an API that only knew the schema), so this
                // means the args do not fit this worker's version of the kind: no attempt can fix
                // that.
                Err(e) => return Outcome::fail(format!("args do not fit kind {}: {e}", K::NAME)),
            };
            if let Err(reason) = kind.validate(&typed) {
                return Outcome::fail(format!("args for kind {} are invalid: {reason}", K::NAME));
            }
            kind.run(ctx, typed).await
        })
    }
}

use serde::Deserialize as _;

/// Who may submit a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Anyone through the API; listed in the kinds catalog.
    Public,
    /// Only jobmill itself (a feature's own follow-up jobs). The API refuses it exactly like a
    /// kind that does not exist, and no listing names it.
    Internal,
}

/// A registered kind.
#[derive(Clone)]
pub struct Registered {
    /// The handler.
    pub kind: Arc<dyn ErasedKind>,
    /// Who may submit it.
    pub visibility: Visibility,
}

/// The kinds a process links, by name: the worker runs them, and any process validates
/// submissions of them with their own checks on top of the catalog's schema.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Registered>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// The engine's own kinds (`noop`, `sleep`, `fail`), for smoke tests and benchmarks.
    pub fn builtin() -> Self {
        let mut r = Registry::new();
        crate::kinds::register_builtin(&mut r);
        r
    }

    /// Add a public kind (replacing one of the same name).
    pub fn register<K: JobKind>(&mut self, kind: K) -> &mut Self {
        self.insert(kind, Visibility::Public)
    }

    /// Add an internal kind: only jobmill's own submissions may use it.
    pub fn register_internal<K: JobKind>(&mut self, kind: K) -> &mut Self {
        self.insert(kind, Visibility::Internal)
    }

    /// Add a public kind given in its object-safe form: for kinds whose name is only known at
    /// run time or whose handler runs elsewhere (the apalis backend registers each apalis
    /// handler this way, so it is announced to the catalog with its argument schema).
    pub fn register_erased(&mut self, kind: Arc<dyn ErasedKind>) -> &mut Self {
        self.kinds.insert(
            kind.name(),
            Registered {
                kind,
                visibility: Visibility::Public,
            },
        );
        self
    }

    fn insert<K: JobKind>(&mut self, kind: K, visibility: Visibility) -> &mut Self {
        self.kinds.insert(
            K::NAME,
            Registered {
                kind: Arc::new(Erased(Arc::new(kind))),
                visibility,
            },
        );
        self
    }

    /// Add every kind of `other`.
    pub fn extend(&mut self, other: &Registry) -> &mut Self {
        self.kinds
            .extend(other.kinds.iter().map(|(k, v)| (*k, v.clone())));
        self
    }

    /// A kind by name, whatever its visibility.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn ErasedKind>> {
        self.kinds.get(name).map(|r| &r.kind)
    }

    /// A kind with its visibility.
    pub fn entry(&self, name: &str) -> Option<&Registered> {
        self.kinds.get(name)
    }

    /// Every kind name, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }

    /// Every registered kind, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Registered)> {
        self.kinds.iter().map(|(k, v)| (*k, v))
    }
}
