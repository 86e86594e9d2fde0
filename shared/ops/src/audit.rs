//! The audit trail: every operator action (and every webhook endpoint or secret change, by any
//! key) is recorded here before it takes effect, then completed with its result. Records
//! expire with the jobs' retention, through the same TTL field (`retention.expire_at`).

use jobmill::job::Retention;
use jobmill::store::newest_first;
use jobmill::Result;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

/// Name of the audit collection.
pub const AUDIT: &str = "audit";

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum AuditAction {
    /// `POST /v1/queues/{name}/pause`.
    #[serde(rename = "queue.pause")]
    QueuePause,
    /// `POST /v1/queues/{name}/resume`.
    #[serde(rename = "queue.resume")]
    QueueResume,
    /// `PUT /v1/queues/{name}/limits`.
    #[serde(rename = "queue.limits_set")]
    QueueLimitsSet,
    /// `DELETE /v1/queues/{name}/limits`.
    #[serde(rename = "queue.limits_delete")]
    QueueLimitsDelete,
    /// `POST /v1/workers/{id}/quiet`.
    #[serde(rename = "worker.quiet")]
    WorkerQuiet,
    /// `POST /v1/workers/{id}/stop`.
    #[serde(rename = "worker.stop")]
    WorkerStop,
    /// `POST /v1/jobs/actions/retry`.
    #[serde(rename = "jobs.retry")]
    BulkRetry,
    /// `POST /v1/jobs/actions/cancel`.
    #[serde(rename = "jobs.cancel")]
    BulkCancel,
    /// `POST /v1/jobs/actions/discard`.
    #[serde(rename = "jobs.discard")]
    BulkDiscard,
    /// A webhook endpoint was created.
    #[serde(rename = "webhook.create")]
    WebhookCreate,
    /// A webhook endpoint was deleted.
    #[serde(rename = "webhook.delete")]
    WebhookDelete,
    /// A disabled webhook endpoint was enabled again.
    #[serde(rename = "webhook.enable")]
    WebhookEnable,
    /// A webhook endpoint was disabled by hand (the dashboard).
    #[serde(rename = "webhook.disable")]
    WebhookDisable,
    /// A webhook endpoint's secret was rotated.
    #[serde(rename = "webhook.secret_rotate")]
    WebhookSecretRotate,
    /// A tenant's signing secret was rotated.
    #[serde(rename = "signing_secret.rotate")]
    SigningSecretRotate,
    /// A code-managed schedule was handed over to the API (`POST /v1/schedules/{name}/detach`).
    #[serde(rename = "schedule.detach")]
    ScheduleDetach,
}

/// How the action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// Recorded; the action has not reported back (it is running, or its process died).
    Pending,
    /// Done.
    Done,
    /// Refused or failed.
    Failed,
}

/// One audit record.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditRecord {
    /// Record id (time-ordered).
    pub id: String,
    /// When the action was asked for.
    pub at: chrono::DateTime<chrono::Utc>,
    /// The API key's name.
    pub key: String,
    /// What was done.
    pub action: AuditAction,
    /// Its target: a queue, a worker id, a webhook id, a tenant.
    pub target: String,
    /// The filter of a bulk action (never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Value>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// What it did: a count, a job id, an error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
}

/// A page of audit records, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditPage {
    /// Records.
    pub records: Vec<AuditRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The audit trail. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    coll: Collection<Document>,
    retention: Duration,
}

/// A record written before its action, to be completed by [`Audit::finish`].
#[derive(Debug, Clone)]
pub struct Pending {
    /// Record id.
    pub id: String,
}

impl Audit {
    /// Over `db`, kept for `retention` (the jobs' retention).
    pub fn new(db: &Database, retention: Duration) -> Self {
        Audit {
            coll: db.collection(AUDIT),
            retention,
        }
    }

    /// The TTL index, and the listing order.
    pub async fn ensure_indexes(&self) -> Result<()> {
        self.coll
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "retention.expire_at": 1 })
                    .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
                    .build(),
            )
            .await?;
        self.coll
            .create_index(IndexModel::builder().keys(doc! { "list_key": -1 }).build())
            .await?;
        Ok(())
    }

    /// Record an action before it takes effect. If this fails the action must not run.
    pub async fn begin(
        &self,
        key: &str,
        action: AuditAction,
        target: &str,
        filter: Option<serde_json::Value>,
    ) -> Result<Pending> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = DateTime::now();
        let filter = match filter {
            Some(f) => {
                mongodb::bson::to_bson(&f).map_err(|e| jobmill::Error::Corrupt(e.to_string()))?
            }
            None => mongodb::bson::Bson::Null,
        };
        let action =
            mongodb::bson::to_bson(&action).map_err(|e| jobmill::Error::Corrupt(e.to_string()))?;
        self.coll
            .insert_one(doc! {
                "_id": &id,
                "list_key": &id,
                "at": now,
                "key": key,
                "action": action,
                "target": target,
                "filter": filter,
                "outcome": "pending",
                "result": mongodb::bson::Bson::Null,
                "retention": Retention::after(now, self.retention).to_doc(),
            })
            .await?;
        Ok(Pending { id })
    }

    /// Complete a record with how the action ended.
    pub async fn finish(
        &self,
        pending: &Pending,
        outcome: AuditOutcome,
        result: serde_json::Value,
    ) -> Result<()> {
        let outcome =
            mongodb::bson::to_bson(&outcome).map_err(|e| jobmill::Error::Corrupt(e.to_string()))?;
        let result =
            mongodb::bson::to_bson(&result).map_err(|e| jobmill::Error::Corrupt(e.to_string()))?;
        self.coll
            .update_one(
                doc! { "_id": &pending.id },
                doc! { "$set": { "outcome": outcome, "result": result } },
            )
            .await?;
        Ok(())
    }

    /// A page of records, newest first, before `cursor`.
    pub async fn list(&self, cursor: Option<&str>, limit: i64) -> Result<AuditPage> {
        let docs = newest_first(&self.coll, doc! {}, cursor, limit).await?;
        let records: Vec<AuditRecord> = docs.into_iter().filter_map(|d| record(&d)).collect();
        let next_cursor = (records.len() as i64 == limit)
            .then(|| records.last().map(|r| r.id.clone()))
            .flatten();
        Ok(AuditPage {
            records,
            next_cursor,
        })
    }
}

fn record(d: &Document) -> Option<AuditRecord> {
    let json = |k: &str| -> Option<serde_json::Value> {
        match d.get(k) {
            None | Some(mongodb::bson::Bson::Null) => None,
            Some(b) => Some(b.clone().into_relaxed_extjson()),
        }
    };
    Some(AuditRecord {
        id: d.get_str("_id").ok()?.to_string(),
        at: crate::workers::at(d.get_datetime("at").ok()?.timestamp_millis()),
        key: d.get_str("key").ok()?.to_string(),
        action: serde_json::from_value(json("action")?).ok()?,
        target: d.get_str("target").unwrap_or_default().to_string(),
        filter: json("filter"),
        outcome: serde_json::from_value(json("outcome")?).ok()?,
        result: json("result"),
    })
}
