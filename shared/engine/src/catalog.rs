//! The kinds catalog: which job kinds exist, what their args look like (a JSON Schema), their
//! defaults, and who serves them. A worker announces every public kind it links when it starts
//! ([`announce`]); any API process validates submissions against the catalog, so a user's kind
//! is accepted by the stock API moments after its first worker starts, with no API rebuild.
//!
//! Sources, in order of precedence for a name:
//! 1. announcements in MongoDB (`kinds` collection), newest wins: workers of different versions
//!    may announce different schemas, and the last one started is the one the fleet runs;
//! 2. the kinds this process links itself ([`Registry`]), so an API started before any worker
//!    still accepts the built-ins.
//!
//! Internal kinds are never announced and only [`Access::Internal`] lookups see them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use futures::TryStreamExt;
use mongodb::bson::doc;
use mongodb::Collection;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ArgProblem, Error, Result};
use crate::job::now_ms;
use crate::kind::{Registry, Visibility};
use crate::store::Store;

/// The MongoDB collection of announcements.
pub const KINDS: &str = "kinds";
/// Most problems listed in one `invalid_args` answer.
const MAX_PROBLEMS: usize = 20;

/// Defaults of a kind, as the catalog shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Defaults {
    /// Queue its jobs go to when the submission names none.
    pub queue: String,
    /// Attempts before failing for good.
    pub max_attempts: u32,
    /// Per-attempt timeout in ms.
    pub timeout_ms: u64,
}

/// One announcement, as stored (`_id` is the kind name).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announcement {
    /// Kind name.
    #[serde(rename = "_id")]
    pub name: String,
    /// One sentence on what it does.
    pub description: String,
    /// JSON Schema of its args, as JSON text (schemas use `$`-keys MongoDB dislikes).
    pub schema_json: String,
    /// Its defaults.
    pub defaults: Defaults,
    /// When it was last announced (ms since the epoch).
    pub seen_at_ms: i64,
    /// The worker that announced it last.
    pub worker: String,
}

/// A kind the catalog knows, with its compiled schema.
pub struct KindInfo {
    /// Kind name.
    pub name: String,
    /// One sentence on what it does.
    pub description: String,
    /// JSON Schema of its args.
    pub schema: Value,
    /// Its defaults.
    pub defaults: Defaults,
    /// When and by whom it was announced (`None` for a kind only linked here).
    pub announced: Option<(i64, String)>,
    /// Who may submit it.
    pub visibility: Visibility,
    validator: jsonschema::Validator,
}

impl KindInfo {
    fn new(
        name: String,
        description: String,
        schema: Value,
        defaults: Defaults,
        announced: Option<(i64, String)>,
        visibility: Visibility,
    ) -> Result<Self> {
        let validator = jsonschema::validator_for(&schema)
            .map_err(|e| Error::Corrupt(format!("the schema of kind {name} is invalid: {e}")))?;
        Ok(KindInfo {
            name,
            description,
            schema,
            defaults,
            announced,
            visibility,
            validator,
        })
    }

    /// Check `args` against the schema; every problem with its JSON Pointer into `args`.
    pub fn check(&self, args: &Value) -> std::result::Result<(), Vec<ArgProblem>> {
        let problems: Vec<ArgProblem> = self
            .validator
            .iter_errors(args)
            .take(MAX_PROBLEMS)
            .map(|e| ArgProblem {
                path: e.instance_path().as_str().to_string(),
                reason: e.masked().to_string(),
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A client of the API: public kinds only.
    Public,
    /// jobmill itself: internal kinds too.
    Internal,
}

/// The catalog of one process. Cheap to share (`Arc`).
#[derive(Default)]
pub struct Catalog {
    local: RwLock<BTreeMap<String, Arc<KindInfo>>>,
    announced: RwLock<BTreeMap<String, Arc<KindInfo>>>,
}

impl Catalog {
    /// A catalog of the kinds this process links.
    pub fn new(local: &Registry) -> Arc<Self> {
        let c = Arc::new(Catalog::default());
        c.set_local(local);
        c
    }

    /// Replace the linked kinds (a process registers its kinds after building its client).
    pub fn set_local(&self, registry: &Registry) {
        let mut local = BTreeMap::new();
        for (name, r) in registry.iter() {
            let k = &r.kind;
            let d = k.defaults();
            match KindInfo::new(
                name.to_string(),
                k.description().to_string(),
                k.schema(),
                Defaults {
                    queue: d.queue.to_string(),
                    max_attempts: d.max_attempts,
                    timeout_ms: d.timeout.as_millis() as u64,
                },
                None,
                r.visibility,
            ) {
                Ok(info) => {
                    local.insert(name.to_string(), Arc::new(info));
                }
                Err(e) => tracing::error!(kind = name, error = %e, "kind left out of the catalog"),
            }
        }
        *self.local.write().expect("catalog lock") = local;
    }

    /// The kind `name` as `access` may see it.
    pub fn lookup(&self, name: &str, access: Access) -> Option<Arc<KindInfo>> {
        let local = self.local.read().expect("catalog lock").get(name).cloned();
        if let Some(l) = &local {
            if l.visibility == Visibility::Internal {
                // An internal kind is never shadowed by an announcement of the same name.
                return (access == Access::Internal).then_some(local).flatten();
            }
        }
        let announced = self
            .announced
            .read()
            .expect("catalog lock")
            .get(name)
            .cloned();
        announced.or(local)
    }

    /// Look a kind up and check `args` against its schema.
    pub fn validate(&self, name: &str, args: &Value, access: Access) -> Result<Arc<KindInfo>> {
        let Some(kind) = self.lookup(name, access) else {
            return Err(Error::invalid(
                "unknown_kind",
                // The name sent is not echoed, so that an internal kind and one that does not
                // exist get the very same answer.
                format!(
                    "unknown job kind; known kinds: {}",
                    self.public_names().join(", ")
                ),
            ));
        };
        kind.check(args).map_err(|details| Error::InvalidArgs {
            message: format!(
                "args for kind '{name}' are invalid: {}",
                details
                    .iter()
                    .map(|p| if p.path.is_empty() {
                        p.reason.clone()
                    } else {
                        format!("{}: {}", p.path, p.reason)
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            details,
        })?;
        Ok(kind)
    }

    /// Every public kind, sorted by name.
    pub fn public(&self) -> Vec<Arc<KindInfo>> {
        let mut all: BTreeMap<String, Arc<KindInfo>> = self
            .local
            .read()
            .expect("catalog lock")
            .iter()
            .filter(|(_, k)| k.visibility == Visibility::Public)
            .map(|(n, k)| (n.clone(), k.clone()))
            .collect();
        // A snapshot first: `lookup` takes the locks again, and a second read lock taken while
        // a writer waits (the reload) would deadlock.
        let announced: Vec<(String, Arc<KindInfo>)> = self
            .announced
            .read()
            .expect("catalog lock")
            .iter()
            .map(|(n, k)| (n.clone(), k.clone()))
            .collect();
        for (n, k) in announced {
            if self.lookup(&n, Access::Public).is_some() {
                all.insert(n, k);
            }
        }
        all.into_values().collect()
    }

    /// Names of the public kinds, sorted.
    pub fn public_names(&self) -> Vec<String> {
        self.public().iter().map(|k| k.name.clone()).collect()
    }

    /// Reload the announcements. On error the previous ones stay.
    pub async fn refresh(&self, store: &Store) -> Result<()> {
        let all: Vec<Announcement> = collection(store).find(doc! {}).await?.try_collect().await?;
        let mut announced = BTreeMap::new();
        for a in all {
            let schema: Value = match serde_json::from_str(&a.schema_json) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(kind = %a.name, error = %e, "announced schema is not JSON");
                    continue;
                }
            };
            match KindInfo::new(
                a.name.clone(),
                a.description,
                schema,
                a.defaults,
                Some((a.seen_at_ms, a.worker)),
                Visibility::Public,
            ) {
                Ok(info) => {
                    announced.insert(a.name, Arc::new(info));
                }
                Err(e) => tracing::warn!(kind = %a.name, error = %e, "announcement ignored"),
            }
        }
        *self.announced.write().expect("catalog lock") = announced;
        Ok(())
    }
}

fn collection(store: &Store) -> Collection<Announcement> {
    store.database().collection(KINDS)
}

/// Announce every public kind of `registry` as served by `worker`. The newest announcement of
/// a name replaces the previous one.
pub async fn announce(store: &Store, registry: &Registry, worker: &str) -> Result<()> {
    let now = now_ms();
    for (name, r) in registry.iter() {
        if r.visibility != Visibility::Public {
            continue;
        }
        let d = r.kind.defaults();
        let a = Announcement {
            name: name.to_string(),
            description: r.kind.description().to_string(),
            schema_json: r.kind.schema().to_string(),
            defaults: Defaults {
                queue: d.queue.to_string(),
                max_attempts: d.max_attempts,
                timeout_ms: d.timeout.as_millis() as u64,
            },
            seen_at_ms: now,
            worker: worker.to_string(),
        };
        collection(store)
            .replace_one(doc! { "_id": name }, &a)
            .upsert(true)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtins_validate_with_paths_and_internal_kinds_hide() {
        let c = Catalog::new(&Registry::builtin());
        assert!(c
            .validate("sleep", &json!({"ms": 10}), Access::Public)
            .is_ok());
        match c.validate("sleep", &json!({"ms": -5}), Access::Public) {
            Err(Error::InvalidArgs { details, .. }) => assert_eq!(details[0].path, "/ms"),
            other => panic!("{:?}", other.map(|k| k.name.clone())),
        }
        let msg = c
            .validate("nope", &json!({}), Access::Public)
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("noop, sleep"), "{msg}");
    }
}
