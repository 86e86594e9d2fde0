//! Every Redis key and channel name, in one place.
//!
//! All keys of one queue share the hash tag `{name}` so each Lua script touches a single
//! Redis Cluster slot, and the queue's loss marker (`epoch`) lives in that slot too. Keys
//! outside a queue (queue registry, worker registry, locks) are only ever used by single-key
//! commands (or a pipeline on one key), so they may sit on any node.

/// Key builder for one deployment (one prefix).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// The keys of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    /// Queue name.
    pub name: String,
    /// ZSET id → ready score (priority band + ready time): jobs waiting to be claimed.
    pub ready: String,
    /// ZSET id → run_at ms: scheduled jobs and retries waiting for their backoff.
    pub scheduled: String,
    /// ZSET id → lease expiry ms: claimed jobs.
    pub leased: String,
    /// HASH id → worker id holding the lease.
    pub owners: String,
    /// HASH id → payload JSON: present while the job is waiting, running or being rescued.
    pub payloads: String,
    /// HASH id → number of attempts started.
    pub attempts: String,
    /// SET of leased ids whose cancellation was requested (heartbeats read it, in case the
    /// pub/sub message was missed).
    pub cancels: String,
    /// ZSET id → time: jobs taken from an expired lease whose outcome the rescuer has not
    /// recorded yet. Kept in Redis so a rescuer that dies mid-way loses nothing.
    pub rescued: String,
    /// STRING flag set while the queue is paused (operators): `claim.lua` reads it, so it
    /// lives under the queue's own hash tag like every key it touches. MongoDB keeps the
    /// operator's decision too; the reconciler restores the flag after a Redis wipe.
    pub paused: String,
    /// SET of the ids in `scheduled` that wait for a retry (not a first run), so operators see
    /// scheduled and retrying counts apart from structure sizes alone.
    pub retrying: String,
    /// STRING: marker that Redis holds a full copy of this queue's live jobs. Under the
    /// queue's tag, so it lives on the node that holds the queue: when that node comes back
    /// empty (restart without persistence, a failover that lost writes, FLUSHALL) the marker is
    /// gone with the data, and the reconciler rebuilds exactly this queue from MongoDB.
    /// `claim.lua` hands out nothing while it is missing (the pause and limits may not be back).
    pub epoch: String,
    /// HASH: the queue's limits (see [`crate::limits::QueueLimits`]); read by `claim.lua` on
    /// every claim. MongoDB keeps the operator's decision; the reconciler restores it after a
    /// Redis wipe.
    pub limits: String,
    /// HASH job id → limit key (`''` for a job without one): the limit slot of every leased
    /// job. Taken by `claim.lua` with the lease and freed, at most once (`HDEL` decides), by
    /// every script that ends the lease, so a slot can neither leak nor be freed twice. Its size
    /// is the number of the queue's jobs running.
    pub slots: String,
    /// HASH limit key → jobs of that key running (holding a slot).
    pub running: String,
    /// HASH job id → limit key, for every job with a `limit_key` that Redis holds, so the
    /// scripts place and remove it without decoding its payload.
    pub job_keys: String,
    /// ZSET limit key → turn: the keys with ready jobs, in round-robin order (lowest turn
    /// next). A key at its `key_concurrency` leaves the ring and comes back when a slot of it
    /// frees; a held or rate-limited key waits in `parked`.
    pub ring: String,
    /// ZSET limit key → ms since the epoch before which the key may not start a job (held by
    /// `RateLimited`, or its `key_rate` is used up).
    pub parked: String,
    /// Prefix of the per-key ready ZSETs (`{key_ready}{limit key}`, same scores as `ready`).
    /// The prefix itself carries the queue's tag, so every per-key set lives in its slot; the
    /// scripts receive the prefix as a key and append the limit key.
    pub key_ready: String,
    /// STRING: the number of jobs in the per-key ready sets (queue depth without a scan).
    pub key_ready_count: String,
    /// ZSET start id → slot time (ms): the queue's starts within its `rate` window; the newest
    /// entry is the next free slot (see `claim.lua`).
    pub starts: String,
    /// Prefix of the per-key ZSETs of starts within the `key_rate` window (expire with it).
    pub key_starts: String,
    /// STRING, expiring: the whole queue is held (a job without a limit key was `RateLimited`).
    pub held: String,
}

impl Keys {
    /// Keys under `prefix` (validated by the config: no braces).
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Keys of queue `name`.
    pub fn queue(&self, name: &str) -> QueueKeys {
        let base = format!("{}:{{{}}}", self.prefix, name);
        QueueKeys {
            name: name.to_string(),
            ready: format!("{base}:ready"),
            scheduled: format!("{base}:scheduled"),
            leased: format!("{base}:leased"),
            owners: format!("{base}:owners"),
            payloads: format!("{base}:payloads"),
            attempts: format!("{base}:attempts"),
            cancels: format!("{base}:cancels"),
            rescued: format!("{base}:rescued"),
            paused: format!("{base}:paused"),
            retrying: format!("{base}:retrying"),
            epoch: format!("{base}:epoch"),
            limits: format!("{base}:limits"),
            slots: format!("{base}:slots"),
            running: format!("{base}:running"),
            job_keys: format!("{base}:jobkeys"),
            ring: format!("{base}:ring"),
            parked: format!("{base}:parked"),
            key_ready: format!("{base}:kready:"),
            key_ready_count: format!("{base}:kready"),
            starts: format!("{base}:starts"),
            key_starts: format!("{base}:kstarts:"),
            held: format!("{base}:held"),
        }
    }

    /// SET of every queue name ever used, so maintenance loops know what to scan.
    pub fn queues(&self) -> String {
        format!("{}:queues", self.prefix)
    }

    /// STRING: the reconciler's fresh pass has checked every job created before this id (see
    /// `maintenance::fresh_pass` in the worker). Used alone; losing it costs a re-check.
    pub fn fresh_mark(&self) -> String {
        format!("{}:fresh_mark", self.prefix)
    }

    /// A short-lived lock so only one process runs a given maintenance pass at a time.
    pub fn lock(&self, name: &str) -> String {
        format!("{}:lock:{}", self.prefix, name)
    }

    /// ZSET worker id → last heartbeat ms.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// HASH describing one worker (host, pid, queues, counters); expires with its heartbeats.
    pub fn worker(&self, id: &str) -> String {
        format!("{}:worker:{}", self.prefix, id)
    }

    /// Channel: a job of queue `name` became ready (payload `r`) or was scheduled (`s`).
    pub fn wake_channel(&self, name: &str) -> String {
        format!("{}:wake:{}", self.prefix, name)
    }

    /// Channel: cancellation of a running job was requested (payload: job id).
    pub fn cancel_channel(&self) -> String {
        format!("{}:cancel", self.prefix)
    }

    /// Channel: jobs changed (payload: comma-separated ids); long-polls listen to it.
    pub fn events_channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// Channel: a worker announced the kinds it serves (payload: worker id); API processes
    /// reload the kinds catalog.
    pub fn kinds_channel(&self) -> String {
        format!("{}:kinds", self.prefix)
    }

    /// A channel or key of a feature, under this prefix (`{prefix}:{name}`). Features keep
    /// their own key names in their own `keys` module and build them from here.
    pub fn feature(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }
}

/// The part of `key` Redis Cluster hashes: between the first `{` and the next `}` when that is
/// not empty, else the whole key. Keys with the same hash tag live on the same slot.
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_key_shares_the_queue_hash_tag() {
        let k = Keys::new("jm:test").queue("imports");
        for key in [
            &k.ready,
            &k.scheduled,
            &k.leased,
            &k.owners,
            &k.payloads,
            &k.attempts,
            &k.cancels,
            &k.rescued,
            &k.paused,
            &k.retrying,
            &k.epoch,
            &k.limits,
            &k.slots,
            &k.running,
            &k.job_keys,
            &k.ring,
            &k.parked,
            &k.key_ready,
            &k.key_ready_count,
            &k.starts,
            &k.key_starts,
            &k.held,
        ] {
            assert_eq!(hash_tag(key), "imports", "{key}");
            assert!(key.starts_with("jm:test:"), "{key}");
        }
    }

    #[test]
    fn per_key_sets_share_the_queue_slot() {
        use crate::redis_conn::key_slot;
        let k = Keys::new("jm").queue("imports");
        let slot = key_slot(k.ready.as_bytes());
        for limit_key in ["customer:42", "api.stripe.com", "{other}", "x}{y"] {
            for key in [
                format!("{}{limit_key}", k.key_ready),
                format!("{}{limit_key}", k.key_starts),
            ] {
                assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
            }
        }
    }

    #[test]
    fn queues_do_not_collide() {
        let keys = Keys::new("p");
        assert_ne!(keys.queue("a").ready, keys.queue("b").ready);
        assert_ne!(keys.queue("a").ready, Keys::new("q").queue("a").ready);
    }
}
