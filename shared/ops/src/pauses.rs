//! Queue pauses. The operator's decision is recorded in MongoDB first (it must survive a Redis
//! wipe), then the flag that `claim.lua` checks is set in Redis. After Redis lost its data the
//! reconciler calls [`Pauses::restore`] before it puts any job back, so a paused queue never
//! hands out a job it re-queued.

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

    /// Make the Redis flag of `name` agree with its record (after a wipe; before any job of
    /// the queue is handed out). Returns whether it is paused.
    ///
    /// The record is read again after the flag is written: a pause or resume whose MongoDB
    /// write landed in between may have written its flag before ours, so ours (stale) would
    /// win. While the record changes under us, go round again; once it reads the same twice,
    /// any later change writes its own flag after ours.
    pub async fn restore(&self, queue: &RedisQueue, name: &str) -> Result<bool> {
        let mut seen = self.coll.find_one(doc! { "_id": name }).await?;
        for _ in 0..RESTORE_ROUNDS {
            let paused = seen
                .as_ref()
                .is_some_and(|d| d.get_i32("paused").is_ok_and(|p| p == 1));
            queue.set_paused(name, paused).await?;
            let now = self.coll.find_one(doc! { "_id": name }).await?;
            if now == seen {
                return Ok(paused);
            }
            seen = now;
        }
        Err(jobmill::Error::StoreUnavailable(format!(
            "the pause of queue {name} kept changing while it was restored"
        )))
    }
}

/// Rounds of [`Pauses::restore`] before it gives up (the reconciler retries next round).
pub(crate) const RESTORE_ROUNDS: usize = 5;
