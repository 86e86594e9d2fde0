//! How a job kind is written: the [`JobKind`] trait, the [`JobContext`] its handler gets, the
//! typed [`Outcome`] it returns, and the [`Registry`] that maps kind names to handlers.
//!
//! A user adds a kind by implementing `JobKind` in one file and registering it; see
//! `kinds/sleep.rs` for a complete example and the README for the walk-through.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::job::Progress;
use crate::state::AttemptOutcome;

/// Defaults a kind applies when the submission does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindDefaults {
    /// Attempts before the job fails for good.
    pub max_attempts: u32,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

impl Default for KindDefaults {
    fn default() -> Self {
        KindDefaults {
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
        }
    }
}

/// Where progress reports go (the worker batches them into MongoDB).
pub trait ProgressSink: Send + Sync {
    /// Record the latest progress of attempt `attempt` of job `id`.
    fn report(&self, id: &str, attempt: u32, progress: Progress);
}

/// What the built-in kinds that touch data need: the stores and the settings. The worker sets
/// it on every context ([`JobContext::with_resources`]); a context built without it (unit tests
/// of pure kinds) answers [`JobContext::resources`] with a failed outcome.
#[derive(Clone)]
pub struct Resources {
    /// MongoDB, Redis, and submission of follow-up jobs.
    pub client: crate::client::JobClient,
    /// The process's settings (part size, page size, retention...).
    pub settings: Arc<crate::config::Settings>,
}

impl Resources {
    /// The file store.
    pub fn files(&self) -> crate::files::FileStore {
        crate::files::FileStore::new(
            self.client.store().database(),
            self.settings.upload_retention,
        )
    }
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
    resources: Option<Arc<Resources>>,
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
            resources: None,
        }
    }

    /// Give the handler access to the stores.
    pub fn with_resources(mut self, resources: Arc<Resources>) -> Self {
        self.resources = Some(resources);
        self
    }

    /// The stores, or a permanent failure to return when this process did not provide them.
    pub fn resources(&self) -> std::result::Result<&Resources, Outcome> {
        self.resources.as_deref().ok_or_else(|| {
            Outcome::fail("this process runs kinds without store access (no Resources)")
        })
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

/// A job kind: a stable name, typed arguments, validation, and the handler.
pub trait JobKind: Send + Sync + 'static {
    /// The name clients submit as `kind`. Stable: it is stored with every job.
    const NAME: &'static str;
    /// Arguments, deserialized from the submitted `args`.
    type Args: DeserializeOwned + Send + 'static;

    /// Checks beyond the type, run at submission (a failure answers 422 with this message).
    fn validate(&self, _args: &Self::Args) -> std::result::Result<(), String> {
        Ok(())
    }

    /// Defaults for attempts and timeout.
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
    /// Validate raw args.
    fn validate(&self, args: &Value) -> std::result::Result<(), String>;
    /// Defaults.
    fn defaults(&self) -> KindDefaults;
    /// Start one attempt.
    fn run(&self, ctx: JobContext, args: Value) -> BoxOutcome;
}

struct Erased<K>(Arc<K>);

impl<K: JobKind> ErasedKind for Erased<K> {
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
            match serde_json::from_value::<K::Args>(args) {
                Ok(typed) => kind.run(ctx, typed).await,
                // Validated at submission, so this means the kind's Args changed since.
                Err(e) => Outcome::fail(format!("args no longer match kind {}: {e}", K::NAME)),
            }
        })
    }
}

use serde::Deserialize as _;

/// The kinds a process knows, by name. The API uses it to validate submissions; the worker to
/// run them. Both must be built with the same kinds.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn ErasedKind>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// The kinds that ship with jobmill.
    pub fn builtin() -> Self {
        let mut r = Registry::new();
        crate::kinds::register_builtin(&mut r);
        r
    }

    /// Add a kind (replacing one of the same name).
    pub fn register<K: JobKind>(&mut self, kind: K) -> &mut Self {
        self.kinds.insert(K::NAME, Arc::new(Erased(Arc::new(kind))));
        self
    }

    /// A kind by name.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn ErasedKind>> {
        self.kinds.get(name)
    }

    /// Every known kind name, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }

    /// Look up a kind and validate args against it.
    pub fn validate(&self, name: &str, args: &Value) -> Result<&Arc<dyn ErasedKind>> {
        let kind = self.get(name).ok_or_else(|| {
            Error::invalid(
                "unknown_kind",
                format!(
                    "unknown job kind '{}'; known kinds: {}",
                    name.chars().take(64).collect::<String>(),
                    self.names().join(", ")
                ),
            )
        })?;
        kind.validate(args).map_err(|reason| {
            Error::invalid(
                "invalid_args",
                format!("args for kind '{name}' are invalid: {reason}"),
            )
        })?;
        Ok(kind)
    }
}
