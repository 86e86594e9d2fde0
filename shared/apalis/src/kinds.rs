//! The jobmill kinds apalis handlers are registered under. Each is announced to the kinds
//! catalog with the JSON Schema of its argument type, so any API validates submissions of it;
//! its handler runs in the apalis worker, never in a native one.

use std::marker::PhantomData;
use std::sync::Arc;

use jobmill::kind::{BoxOutcome, ErasedKind, KindDefaults};
use jobmill::{Outcome, Registry};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The kinds an apalis process serves, built before [`crate::Jobmill::start`].
#[derive(Clone, Default)]
pub struct Kinds {
    pub(crate) registry: Registry,
}

/// A typed handle on one registered kind: pass it to [`crate::Jobmill::backend`].
#[derive(Debug)]
pub struct Kind<Args> {
    pub(crate) name: &'static str,
    _args: PhantomData<fn() -> Args>,
}

impl<Args> Clone for Kind<Args> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Args> Copy for Kind<Args> {}

impl<Args> Kind<Args> {
    /// A kind served elsewhere, to push only (see [`crate::Jobmill::sink`]): nothing is
    /// announced; submissions are checked against the schema its worker announced.
    pub fn named(name: &'static str) -> Self {
        Kind {
            name,
            _args: PhantomData,
        }
    }

    /// The jobmill kind name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl Kinds {
    /// No kinds yet.
    pub fn new() -> Self {
        Kinds::default()
    }

    /// Serve jobs of kind `name`, whose `args` deserialize into `Args`. Jobs submitted without
    /// a queue go to `queue`.
    pub fn add<Args>(&mut self, name: &'static str, queue: &'static str) -> Kind<Args>
    where
        Args: DeserializeOwned + JsonSchema + Send + 'static,
    {
        self.registry.register_erased(Arc::new(ApalisKind::<Args> {
            name,
            queue,
            _args: PhantomData,
        }));
        Kind {
            name,
            _args: PhantomData,
        }
    }
}

/// The catalog's view of an apalis handler: name, schema, defaults. `run` is never called:
/// the apalis worker hands its jobs to apalis, not to the native executor.
struct ApalisKind<Args> {
    name: &'static str,
    queue: &'static str,
    _args: PhantomData<fn() -> Args>,
}

impl<Args> ErasedKind for ApalisKind<Args>
where
    Args: DeserializeOwned + JsonSchema + Send + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn description(&self) -> &'static str {
        "served by an apalis handler"
    }

    fn schema(&self) -> Value {
        serde_json::to_value(schemars::schema_for!(Args)).unwrap_or(Value::Bool(true))
    }

    fn validate(&self, args: &Value) -> Result<(), String> {
        serde_json::from_value::<Args>(args.clone())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn defaults(&self) -> KindDefaults {
        KindDefaults {
            queue: self.queue,
            ..KindDefaults::default()
        }
    }

    fn run(&self, _ctx: jobmill::kind::JobContext, _args: Value) -> BoxOutcome {
        let name = self.name;
        Box::pin(
            async move { Outcome::fail(format!("kind {name} runs only on its apalis worker")) },
        )
    }
}
