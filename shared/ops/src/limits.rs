//! Queue limits, as operators set them. Like pauses: the decision is recorded in MongoDB
//! first (it must survive a Redis wipe), then written to the Redis hash `claim.lua` reads
//! ([`jobmill::keys::QueueKeys::limits`]). After Redis lost a queue the reconciler calls
//! [`Limits::restore`] before it puts any job back, so a rebuilt queue never runs unlimited.
//! Enforcement is the engine's (see [`jobmill::limits`]).

use jobmill::limits::QueueLimits;
use jobmill::queue::RedisQueue;
use jobmill::Result;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::{Collection, Database};

/// Name of the collection of queue limits (`_id` = queue name).
pub const LIMITS: &str = "queue_limits";

/// The limit records. Cheap to clone.
#[derive(Clone)]
pub struct Limits {
    coll: Collection<Document>,
}

impl Limits {
    /// Over `db`.
    pub fn new(db: &Database) -> Self {
        Limits {
            coll: db.collection(LIMITS),
        }
    }

    /// Set (`Some`) or remove (`None`) the limits of `name`: MongoDB first, then Redis (takes
    /// effect on the next claim). `by` is the key name that asked.
    pub async fn set(
        &self,
        queue: &RedisQueue,
        name: &str,
        limits: Option<&QueueLimits>,
        by: &str,
    ) -> Result<()> {
        match limits {
            Some(l) => {
                let mut fields = Document::new();
                for (k, v) in l.to_fields() {
                    // i64: BSON has no u64; every field is far below 2^63.
                    fields.insert(k, v as i64);
                }
                self.coll
                    .update_one(
                        doc! { "_id": name },
                        doc! { "$set": { "limits": fields, "by": by, "at": DateTime::now() } },
                    )
                    .upsert(true)
                    .await?;
            }
            None => {
                self.coll.delete_one(doc! { "_id": name }).await?;
            }
        }
        queue.set_limits(name, limits).await
    }

    /// Make the Redis limits of `name` agree with its record (after a wipe; before any job
    /// of the queue is handed out). Returns whether the queue is limited. Read again after
    /// the write, like [`crate::pauses::Pauses::restore`], so a change made meanwhile is not
    /// overwritten by the stale record.
    pub async fn restore(&self, queue: &RedisQueue, name: &str) -> Result<bool> {
        let mut seen = self.coll.find_one(doc! { "_id": name }).await?;
        for _ in 0..crate::pauses::RESTORE_ROUNDS {
            let limits = seen
                .as_ref()
                .and_then(|d| d.get_document("limits").ok())
                .map(from_doc)
                .filter(|l| !l.is_empty());
            queue.set_limits(name, limits.as_ref()).await?;
            let now = self.coll.find_one(doc! { "_id": name }).await?;
            if now == seen {
                return Ok(limits.is_some());
            }
            seen = now;
        }
        Err(jobmill::Error::StoreUnavailable(format!(
            "the limits of queue {name} kept changing while they were restored"
        )))
    }
}

/// Read the stored fields (integers of any width, as servers return them).
fn from_doc(fields: &Document) -> QueueLimits {
    QueueLimits::from_fields(fields.iter().filter_map(|(k, v)| {
        let n = match v {
            mongodb::bson::Bson::Int32(i) => i64::from(*i),
            mongodb::bson::Bson::Int64(i) => *i,
            mongodb::bson::Bson::Double(f) => *f as i64,
            _ => return None,
        };
        u64::try_from(n).ok().map(|n| (k.as_str(), n))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobmill::limits::Rate;
    use std::time::Duration;

    #[test]
    fn stored_fields_read_back() {
        let l = QueueLimits {
            concurrency: Some(40),
            rate: Some(Rate {
                max: 10,
                per: Duration::from_secs(1),
            }),
            key_concurrency: None,
            key_rate: None,
        };
        let mut d = Document::new();
        for (k, v) in l.to_fields() {
            d.insert(k, v as i32);
        }
        assert_eq!(from_doc(&d), l);
    }
}
