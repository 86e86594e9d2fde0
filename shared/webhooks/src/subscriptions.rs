//! The worker's view of which event types each tenant's enabled endpoints subscribe to.
//!
//! A job records an outbox entry when it ends if it has a `callback_url` (known at submit) or if
//! its tenant has an endpoint that wants the event. The second is decided here, when the job
//! ends, not when it was submitted: an endpoint registered while a job waits or runs still gets
//! that job's events. The table is reloaded every [`REFRESH`], so an endpoint registered less
//! than that before a job ends may miss that one job's event.
//!
//! Erring towards recording: until the first load succeeds every tenant counts as subscribed.
//! An outbox entry nobody wants costs one cleared flag; a missing one is a lost event.

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;
use std::time::Duration;

use jobmill::error::Result;
use jobmill::outbox::JobEvent;

use crate::records::WebhookStore;

/// How often the table is reloaded from MongoDB.
pub const REFRESH: Duration = Duration::from_secs(2);

/// Tenant → event types its enabled endpoints want. See the module doc.
#[derive(Debug, Default)]
pub struct Subscriptions {
    /// `None` until the first load.
    table: RwLock<Option<HashMap<String, BTreeSet<JobEvent>>>>,
}

impl Subscriptions {
    /// Whether an enabled endpoint of `tenant` wants `event` (true while not yet loaded).
    pub fn wants(&self, tenant: &str, event: JobEvent) -> bool {
        match &*self.table.read().expect("subscriptions lock") {
            None => true,
            Some(t) => t.get(tenant).is_some_and(|evs| evs.contains(&event)),
        }
    }

    /// Reload from the endpoints collection. On error the previous table stays.
    pub async fn refresh(&self, hooks: &WebhookStore) -> Result<()> {
        let subs = hooks.enabled_subscriptions().await?;
        self.set(
            subs.into_iter()
                .flat_map(|(t, evs)| evs.into_iter().map(move |e| (t.clone(), e))),
        );
        Ok(())
    }

    /// Replace the table with these (tenant, event) pairs.
    pub fn set(&self, pairs: impl IntoIterator<Item = (String, JobEvent)>) {
        let mut table: HashMap<String, BTreeSet<JobEvent>> = HashMap::new();
        for (tenant, event) in pairs {
            table.entry(tenant).or_default().insert(event);
        }
        *self.table.write().expect("subscriptions lock") = Some(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_means_subscribed_until_loaded() {
        let s = Subscriptions::default();
        assert!(s.wants("acme", JobEvent::Succeeded));
        s.set([("acme".to_string(), JobEvent::Progress)]);
        assert!(s.wants("acme", JobEvent::Progress));
        assert!(!s.wants("acme", JobEvent::Succeeded));
        assert!(!s.wants("other", JobEvent::Progress));
    }
}
