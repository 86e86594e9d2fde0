//! The webhook collections in MongoDB: registered endpoints (`webhook_endpoints`), one
//! document per delivery with its attempt log (`webhook_deliveries`), and each tenant's
//! signing secret for per-job `callback_url`s (`webhook_secrets`).
//!
//! Written for the MongoDB-compatible server's quirks too: flags are integers, times integer
//! ms, the attempt log a map keyed by attempt number (no `$push` of documents), and the
//! retention date lives in a sub-document.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{FindOneAndUpdateOptions, ReturnDocument};
use mongodb::{Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

use jobmill::error::{Error, Result};
use jobmill::job::{now_ms, Retention};
use jobmill::outbox::JobEvent;
use jobmill::store::{is_duplicate_key, newest_first, scoped};

use crate::signing::generate_secret;

/// Registered endpoints.
pub const ENDPOINTS: &str = "webhook_endpoints";
/// Deliveries and their attempt logs.
pub const DELIVERIES: &str = "webhook_deliveries";
/// Per-tenant signing secrets for `callback_url` deliveries.
pub const SECRETS: &str = "webhook_secrets";

/// A secret that was rotated out and still signs until `expires_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OldSecret {
    /// The secret (`whsec_...`).
    pub secret: String,
    /// It stops signing at this time (ms since the epoch).
    pub expires_ms: i64,
}

/// The secrets that sign now: the current one, then the previous one during its grace period.
fn signing_secrets(current: &str, previous: &Option<OldSecret>) -> Vec<String> {
    let mut v = vec![current.to_string()];
    if let Some(p) = previous {
        if p.expires_ms > now_ms() {
            v.push(p.secret.clone());
        }
    }
    v
}

/// A registered endpoint: every matching event of its tenant is POSTed to `url`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    /// `we_<hex>`.
    #[serde(rename = "_id")]
    pub id: String,
    /// Sort key (`created_ms` + id): the compatible server cannot index `_id` with others.
    pub list_key: String,
    /// Owner.
    pub tenant: String,
    /// Where events go.
    pub url: String,
    /// Subscribed event types.
    pub events: Vec<JobEvent>,
    /// The endpoint's own signing secret.
    pub secret: String,
    /// The secret before the last rotation, while it still signs.
    #[serde(default)]
    pub previous_secret: Option<OldSecret>,
    /// 1 = receives events, 0 = disabled (by a `410`, by failing too long, or by hand).
    pub enabled: i32,
    /// Why it was disabled.
    #[serde(default)]
    pub disabled_reason: Option<String>,
    /// Start of the current run of failures (0 = last attempt succeeded).
    #[serde(default)]
    pub failing_since_ms: i64,
    /// Created at.
    pub created_ms: i64,
}

impl Endpoint {
    /// Secrets to sign with right now.
    pub fn signing_secrets(&self) -> Vec<String> {
        signing_secrets(&self.secret, &self.previous_secret)
    }

    /// Whether it wants events of this type.
    pub fn wants(&self, event: JobEvent) -> bool {
        self.enabled == 1 && self.events.contains(&event)
    }
}

/// A tenant's signing secret for `callback_url` deliveries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantSecret {
    /// The tenant.
    #[serde(rename = "_id")]
    pub tenant: String,
    /// Current secret.
    pub secret: String,
    /// The secret before the last rotation, while it still signs.
    #[serde(default)]
    pub previous: Option<OldSecret>,
    /// When the current secret was made.
    pub created_ms: i64,
}

impl TenantSecret {
    /// Secrets to sign with right now.
    pub fn signing_secrets(&self) -> Vec<String> {
        signing_secrets(&self.secret, &self.previous)
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (also after a replay).
    Pending,
    /// A 2xx was received.
    Delivered,
    /// The retry schedule ran out, the URL was refused, or the endpoint is gone or disabled.
    Failed,
    /// The receiver answered `410 Gone`: stopped, and the endpoint disabled.
    Gone,
}

impl DeliveryStatus {
    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Gone => "gone",
        }
    }

    /// Whether no further attempt will run (a replay may start one).
    pub fn is_final(self) -> bool {
        match self {
            DeliveryStatus::Pending => false,
            DeliveryStatus::Delivered | DeliveryStatus::Failed | DeliveryStatus::Gone => true,
        }
    }
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptLog {
    /// Attempt number within the delivery (1, 2, ...; replays continue the count).
    pub attempt: i32,
    /// When it was sent, ms since the epoch.
    pub at_ms: i64,
    /// HTTP status, if an answer came.
    pub status: Option<i32>,
    /// Time until the answer (or the error), ms.
    pub latency_ms: i64,
    /// Connection error, timeout or refusal, if any.
    pub error: Option<String>,
    /// The first bytes of the response body.
    pub response: Option<String>,
}

/// One event going to one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    /// Deterministic: `dlv_<event>_<target>`, so re-dispatching an event never duplicates it.
    #[serde(rename = "_id")]
    pub id: String,
    /// Sort key (`created_ms` + id).
    pub list_key: String,
    /// Owner of the job (and of the endpoint).
    pub tenant: String,
    /// The job the event is about.
    pub job_id: String,
    /// The registered endpoint, or `None` for the job's own `callback_url`.
    #[serde(default)]
    pub endpoint_id: Option<String>,
    /// Target URL.
    pub url: String,
    /// Event type.
    pub event: JobEvent,
    /// Event id: the `webhook-id` header, the same on every attempt and replay.
    pub event_id: String,
    /// The exact body sent on every attempt.
    pub body_json: String,
    /// Created at.
    pub created_ms: i64,
    /// `pending`, `delivered`, `failed` or `gone`.
    pub status: DeliveryStatus,
    /// Attempts started (the key of the next log entry).
    #[serde(default)]
    pub attempt_seq: i32,
    /// Replays requested.
    #[serde(default)]
    pub replays: i32,
    /// The attempt log, keyed by attempt number.
    #[serde(default)]
    pub attempts: BTreeMap<String, AttemptLog>,
    /// Deleted after the job retention (TTL index).
    #[serde(default)]
    pub retention: Option<Retention>,
}

impl Delivery {
    /// The attempt log in order.
    pub fn attempts_in_order(&self) -> Vec<&AttemptLog> {
        let mut v: Vec<&AttemptLog> = self.attempts.values().collect();
        v.sort_by_key(|a| a.attempt);
        v
    }
}

/// The sort key of documents created at `ms` with id `id`.
pub fn list_key(ms: i64, id: &str) -> String {
    format!("{ms:013}:{id}")
}

/// Handle to the webhook collections. Cheap to clone.
#[derive(Clone)]
pub struct WebhookStore {
    endpoints: Collection<Endpoint>,
    deliveries: Collection<Delivery>,
    secrets: Collection<TenantSecret>,
    retention: Duration,
}

fn after() -> FindOneAndUpdateOptions {
    FindOneAndUpdateOptions::builder()
        .return_document(ReturnDocument::After)
        .build()
}

impl WebhookStore {
    /// The collections of `db`; deliveries are kept for `retention`.
    pub fn new(db: &Database, retention: Duration) -> Self {
        WebhookStore {
            endpoints: db.collection(ENDPOINTS),
            deliveries: db.collection(DELIVERIES),
            secrets: db.collection(SECRETS),
            retention,
        }
    }

    /// Indexes for listing, dispatch and retention. Idempotent.
    pub async fn ensure_indexes(&self) -> Result<()> {
        let plain = |keys: Document| IndexModel::builder().keys(keys).build();
        self.endpoints
            .create_indexes(vec![plain(doc! { "tenant": 1, "list_key": -1 })])
            .await?;
        self.deliveries
            .create_indexes(vec![
                plain(doc! { "job_id": 1, "list_key": -1 }),
                plain(doc! { "endpoint_id": 1, "list_key": -1 }),
                Retention::ttl_index(),
            ])
            .await?;
        Ok(())
    }

    // ----- endpoints -----------------------------------------------------------------------

    /// Store a new endpoint.
    pub async fn create_endpoint(&self, ep: &Endpoint) -> Result<()> {
        self.endpoints.insert_one(ep).await?;
        Ok(())
    }

    /// Endpoints, newest first (`None` = every tenant's, for operators).
    pub async fn list_endpoints(&self, tenant: Option<&str>, limit: i64) -> Result<Vec<Endpoint>> {
        newest_first(&self.endpoints, scoped(doc! {}, tenant), None, limit).await
    }

    /// One endpoint.
    pub async fn get_endpoint(&self, id: &str, tenant: Option<&str>) -> Result<Option<Endpoint>> {
        Ok(self
            .endpoints
            .find_one(scoped(doc! { "_id": id }, tenant))
            .await?)
    }

    /// Delete an endpoint; pending deliveries to it stop at their next attempt.
    pub async fn delete_endpoint(&self, id: &str, tenant: Option<&str>) -> Result<bool> {
        let r = self
            .endpoints
            .delete_one(scoped(doc! { "_id": id }, tenant))
            .await?;
        Ok(r.deleted_count == 1)
    }

    /// Enable (clearing the failure run) or disable an endpoint.
    pub async fn set_enabled(
        &self,
        id: &str,
        tenant: Option<&str>,
        enabled: bool,
        reason: Option<&str>,
    ) -> Result<Option<Endpoint>> {
        let update = if enabled {
            doc! { "$set": { "enabled": 1, "disabled_reason": Bson::Null, "failing_since_ms": 0 } }
        } else {
            doc! { "$set": { "enabled": 0, "disabled_reason": reason } }
        };
        Ok(self
            .endpoints
            .find_one_and_update(scoped(doc! { "_id": id }, tenant), update)
            .with_options(after())
            .await?)
    }

    /// Give an endpoint a new secret; the old one keeps signing for `grace`.
    pub async fn rotate_endpoint_secret(
        &self,
        id: &str,
        tenant: Option<&str>,
        grace: Duration,
    ) -> Result<Option<Endpoint>> {
        let Some(ep) = self.get_endpoint(id, tenant).await? else {
            return Ok(None);
        };
        let old = OldSecret {
            secret: ep.secret.clone(),
            expires_ms: now_ms() + grace.as_millis() as i64,
        };
        // Guarded on the secret read, so two concurrent rotations cannot drop a secret that is
        // still in use: the loser answers with the winner's state.
        let r = self
            .endpoints
            .find_one_and_update(
                doc! { "_id": id, "secret": &ep.secret },
                doc! { "$set": {
                    "secret": generate_secret(),
                    "previous_secret": mongodb::bson::to_document(&old).map_err(corrupt)?,
                } },
            )
            .with_options(after())
            .await?;
        match r {
            Some(ep) => Ok(Some(ep)),
            None => self.get_endpoint(id, tenant).await,
        }
    }

    /// Enabled endpoints of these tenants.
    pub async fn enabled_endpoints(&self, tenants: &[String]) -> Result<Vec<Endpoint>> {
        Ok(self
            .endpoints
            .find(doc! { "tenant": { "$in": tenants }, "enabled": 1 })
            .await?
            .try_collect()
            .await?)
    }

    /// `(tenant, events)` of every enabled endpoint: only these two fields travel, since every
    /// worker reloads this every few seconds.
    pub async fn enabled_subscriptions(&self) -> Result<Vec<(String, Vec<JobEvent>)>> {
        #[derive(Deserialize)]
        struct Sub {
            tenant: String,
            events: Vec<JobEvent>,
        }
        let subs: Vec<Sub> = self
            .endpoints
            .clone_with_type::<Sub>()
            .find(doc! { "enabled": 1 })
            .projection(doc! { "tenant": 1, "events": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(subs.into_iter().map(|s| (s.tenant, s.events)).collect())
    }

    /// Whether a tenant has an enabled endpoint.
    pub async fn tenant_has_endpoints(&self, tenant: &str) -> Result<bool> {
        Ok(self
            .endpoints
            .find_one(doc! { "tenant": tenant, "enabled": 1 })
            .await?
            .is_some())
    }

    /// Record a failed attempt: start the failure run if none is running, and disable the
    /// endpoint when the run is older than `disable_after`. Returns whether it was disabled.
    pub async fn endpoint_failed(&self, ep: &Endpoint, disable_after: Duration) -> Result<bool> {
        let now = now_ms();
        if ep.failing_since_ms == 0 {
            self.endpoints
                .update_one(
                    doc! { "_id": &ep.id, "failing_since_ms": 0 },
                    doc! { "$set": { "failing_since_ms": now } },
                )
                .await?;
            return Ok(false);
        }
        if now - ep.failing_since_ms >= disable_after.as_millis() as i64 {
            let reason = format!(
                "failing since {} without a success",
                jobmill::view::ts(ep.failing_since_ms)
            );
            self.set_enabled(&ep.id, None, false, Some(&reason)).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// A 2xx ends the endpoint's failure run.
    pub async fn endpoint_succeeded(&self, ep: &Endpoint) -> Result<()> {
        if ep.failing_since_ms != 0 {
            self.endpoints
                .update_one(
                    doc! { "_id": &ep.id },
                    doc! { "$set": { "failing_since_ms": 0 } },
                )
                .await?;
        }
        Ok(())
    }

    // ----- tenant secrets --------------------------------------------------------------------

    /// The tenant's signing secret, made on first use.
    pub async fn tenant_secret(&self, tenant: &str) -> Result<TenantSecret> {
        if let Some(s) = self.secrets.find_one(doc! { "_id": tenant }).await? {
            return Ok(s);
        }
        let fresh = TenantSecret {
            tenant: tenant.to_string(),
            secret: generate_secret(),
            previous: None,
            created_ms: now_ms(),
        };
        match self.secrets.insert_one(&fresh).await {
            Ok(_) => Ok(fresh),
            // Someone else made it first: theirs is the one.
            Err(e) if is_duplicate_key(&e) => self
                .secrets
                .find_one(doc! { "_id": tenant })
                .await?
                .ok_or_else(|| Error::Corrupt("tenant secret vanished".into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Rotate the tenant's secret; the old one keeps signing for `grace`.
    pub async fn rotate_tenant_secret(
        &self,
        tenant: &str,
        grace: Duration,
    ) -> Result<TenantSecret> {
        let current = self.tenant_secret(tenant).await?;
        let old = OldSecret {
            secret: current.secret.clone(),
            expires_ms: now_ms() + grace.as_millis() as i64,
        };
        let r = self
            .secrets
            .find_one_and_update(
                doc! { "_id": tenant, "secret": &current.secret },
                doc! { "$set": {
                    "secret": generate_secret(),
                    "previous": mongodb::bson::to_document(&old).map_err(corrupt)?,
                    "created_ms": now_ms(),
                } },
            )
            .with_options(after())
            .await?;
        match r {
            Some(s) => Ok(s),
            None => self.tenant_secret(tenant).await,
        }
    }

    // ----- deliveries ------------------------------------------------------------------------

    /// The retention sub-document of a delivery created now.
    pub fn retention_of_new(&self) -> Retention {
        Retention::from_now(self.retention)
    }

    /// Insert deliveries; ones that exist already (a re-dispatched event) are left as they are.
    pub async fn insert_deliveries(&self, ds: &[Delivery]) -> Result<()> {
        if ds.is_empty() {
            return Ok(());
        }
        match self.deliveries.insert_many(ds).ordered(false).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let only_dups = match e.kind.as_ref() {
                    mongodb::error::ErrorKind::InsertMany(im) => {
                        im.write_concern_error.is_none()
                            && im
                                .write_errors
                                .as_ref()
                                .is_some_and(|w| w.iter().all(|w| w.code == 11000))
                    }
                    _ => is_duplicate_key(&e),
                };
                if only_dups {
                    Ok(())
                } else {
                    Err(e.into())
                }
            }
        }
    }

    /// One delivery.
    pub async fn get_delivery(&self, id: &str, tenant: Option<&str>) -> Result<Option<Delivery>> {
        Ok(self
            .deliveries
            .find_one(scoped(doc! { "_id": id }, tenant))
            .await?)
    }

    /// Deliveries of a job, newest first.
    pub async fn deliveries_of_job(
        &self,
        job_id: &str,
        tenant: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Delivery>> {
        self.find_deliveries(scoped(doc! { "job_id": job_id }, tenant), limit)
            .await
    }

    /// Deliveries to an endpoint, newest first.
    pub async fn deliveries_of_endpoint(
        &self,
        endpoint_id: &str,
        tenant: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Delivery>> {
        self.find_deliveries(scoped(doc! { "endpoint_id": endpoint_id }, tenant), limit)
            .await
    }

    async fn find_deliveries(&self, filter: Document, limit: i64) -> Result<Vec<Delivery>> {
        newest_first(&self.deliveries, filter, None, limit).await
    }

    /// Number the next attempt (counted before sending, so even an attempt whose worker dies
    /// mid-send keeps its own number).
    pub async fn next_attempt(&self, id: &str) -> Result<i32> {
        let d = self
            .deliveries
            .find_one_and_update(doc! { "_id": id }, doc! { "$inc": { "attempt_seq": 1 } })
            .with_options(after())
            .await?
            .ok_or(Error::NotFound)?;
        Ok(d.attempt_seq)
    }

    /// Log an attempt, and set the delivery's status when it ended it.
    pub async fn record_attempt(
        &self,
        id: &str,
        log: &AttemptLog,
        status: DeliveryStatus,
    ) -> Result<()> {
        let entry = mongodb::bson::to_document(log).map_err(corrupt)?;
        self.deliveries
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { format!("attempts.{}", log.attempt): entry, "status": status.as_str() } },
            )
            .await?;
        Ok(())
    }

    /// End a delivery without an attempt (endpoint deleted or disabled).
    pub async fn set_status(&self, id: &str, status: DeliveryStatus) -> Result<()> {
        self.deliveries
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { "status": status.as_str() } },
            )
            .await?;
        Ok(())
    }

    /// Mark a finished delivery pending again for a replay; returns it with its new replay
    /// number, or `None` if it does not exist or is still pending (a delivery being retried is
    /// not replayed on top: that would send it twice at once).
    pub async fn start_replay(&self, id: &str, tenant: Option<&str>) -> Result<Option<Delivery>> {
        Ok(self
            .deliveries
            .find_one_and_update(
                scoped(
                    doc! { "_id": id, "status": { "$in": [
                        DeliveryStatus::Delivered.as_str(),
                        DeliveryStatus::Failed.as_str(),
                        DeliveryStatus::Gone.as_str(),
                    ] } },
                    tenant,
                ),
                doc! { "$set": { "status": DeliveryStatus::Pending.as_str() }, "$inc": { "replays": 1 } },
            )
            .with_options(after())
            .await?)
    }

    /// Like [`start_replay`](Self::start_replay), for a delivery left `pending` by a sending job
    /// that ended without recording an outcome (its store writes kept failing). Guarded on the
    /// replay number the caller checked, so two replays cannot both start.
    pub async fn replay_orphaned(
        &self,
        id: &str,
        tenant: Option<&str>,
        replays: i32,
    ) -> Result<Option<Delivery>> {
        Ok(self
            .deliveries
            .find_one_and_update(
                scoped(
                    doc! { "_id": id, "status": DeliveryStatus::Pending.as_str(), "replays": replays },
                    tenant,
                ),
                doc! { "$inc": { "replays": 1 } },
            )
            .with_options(after())
            .await?)
    }
}

/// The idempotency key of the job that sends replay number `replays` of delivery `id` (0 =
/// the first send).
pub fn sending_job_key(id: &str, replays: i32) -> String {
    if replays == 0 {
        id.to_string()
    } else {
        format!("{id}:replay:{replays}")
    }
}

fn corrupt(e: impl std::fmt::Display) -> Error {
    Error::Corrupt(e.to_string())
}
