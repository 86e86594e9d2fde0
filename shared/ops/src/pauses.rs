//! Queue pauses. The operator's decision is recorded in MongoDB first (it must survive a Redis
//! wipe), then the flag that `claim.lua` checks is set in Redis. After Redis lost its data the
//! reconciler calls [`Pauses::restore`] before it puts any job back, so a paused queue never
//! hands out a job it re-queued.

use futures::TryStreamExt;
use jobmill::queue::RedisQueue;
use jobmill::Result;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::{Collection, Database};

/// Name of the collection of queue pauses (`_id` = queue name).
pub const PAUSES: &str = "queue_pauses";

/// The pause records. Cheap to clone.
#[derive(Clone)]
pub struct Pauses {
    coll: Collection<Document>,
}

impl Pauses {
    /// Over `db`.
    pub fn new(db: &Database) -> Self {
        Pauses {
            coll: db.collection(PAUSES),
        }
    }

    /// Pause or resume `name`: MongoDB first, then the Redis flag (takes effect on the next
    /// claim). `by` is the key name that asked.
    pub async fn set(&self, queue: &RedisQueue, name: &str, paused: bool, by: &str) -> Result<()> {
        // An integer, not a boolean: the MongoDB-compatible test server stores `$set` booleans
        // as integers, and a filter must match on every server.
        self.coll
            .update_one(
                doc! { "_id": name },
                doc! { "$set": { "paused": i32::from(paused), "by": by, "at": DateTime::now() } },
            )
            .upsert(true)
            .await?;
        queue.set_paused(name, paused).await
    }

    /// Put every recorded pause back into Redis (after a wipe). Returns how many.
    pub async fn restore(&self, queue: &RedisQueue) -> Result<usize> {
        let paused: Vec<Document> = self
            .coll
            .find(doc! { "paused": 1 })
            .await?
            .try_collect()
            .await?;
        for d in &paused {
            if let Ok(name) = d.get_str("_id") {
                queue.set_paused(name, true).await?;
            }
        }
        Ok(paused.len())
    }
}
