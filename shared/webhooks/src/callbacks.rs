//! The webhooks' check of submissions ([`SubmitHook`]): a job's `callback_url` must be an
//! allowed destination, and a job whose tenant has endpoints is marked as wanting its events,
//! so its end records an outbox entry even before any worker's subscriptions table knows the
//! endpoint.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jobmill::job::Job;
use jobmill::outbox::BoxFuture;
use jobmill::{Error, Result, SubmitHook};

use crate::guard::{self, AllowList, Destinations};
use crate::records::WebhookStore;
use crate::CALLBACK_URL;

/// How long "does this tenant have webhook endpoints" is cached per process. An endpoint
/// registered through another API process is seen by submissions here after at most this long.
const ENDPOINT_CACHE: Duration = Duration::from_secs(2);

/// See the module doc.
pub struct CallbackCheck {
    pub(crate) hooks: WebhookStore,
    pub(crate) allow: AllowList,
    pub(crate) destinations: Destinations,
    pub(crate) has_endpoints: Mutex<HashMap<String, (bool, Instant)>>,
}

impl SubmitHook for CallbackCheck {
    fn prepare<'a>(
        &'a self,
        tenant: &'a str,
        jobs: &'a mut [Job],
        batch: bool,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.check(tenant, jobs, batch))
    }
}

impl CallbackCheck {
    async fn check(&self, tenant: &str, jobs: &mut [Job], batch: bool) -> Result<()> {
        for (i, job) in jobs.iter_mut().enumerate() {
            let Some(raw) = job.ext.get(CALLBACK_URL) else {
                continue;
            };
            let name_job = |e: Error| match e {
                Error::InvalidJob { code, message } if batch => Error::InvalidJob {
                    code,
                    message: format!("job {i}: {message}"),
                },
                other => other,
            };
            let Some(raw) = raw.as_str() else {
                return Err(name_job(Error::invalid(
                    "invalid_callback_url",
                    "callback_url must be a string",
                )));
            };
            let url = guard::parse_url(raw).map_err(name_job)?;
            // Refused here and again by the worker, after its own resolution, right before
            // sending.
            guard::resolve(&url, &self.allow, &self.destinations)
                .await
                .map_err(name_job)?;
            job.ext
                .insert(CALLBACK_URL.to_string(), url.to_string().into());
            job.wants_events = true;
        }
        if jobs.iter().any(|j| !j.wants_events) && self.tenant_has_endpoints(tenant).await? {
            for j in jobs.iter_mut() {
                j.wants_events = true;
            }
        }
        Ok(())
    }

    /// Whether the tenant has webhook endpoints (cached for [`ENDPOINT_CACHE`]).
    async fn tenant_has_endpoints(&self, tenant: &str) -> Result<bool> {
        if let Some((has, at)) = self.has_endpoints.lock().expect("cache").get(tenant) {
            if at.elapsed() < ENDPOINT_CACHE {
                return Ok(*has);
            }
        }
        let has = self.hooks.tenant_has_endpoints(tenant).await?;
        self.has_endpoints
            .lock()
            .expect("cache")
            .insert(tenant.to_string(), (has, Instant::now()));
        Ok(has)
    }

    /// Forget the cached answer of a tenant whose endpoints just changed.
    pub(crate) fn forget(&self, tenant: &str) {
        self.has_endpoints.lock().expect("cache").remove(tenant);
    }
}
