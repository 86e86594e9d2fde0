//! jobmill HTTP API: a thin axum layer over the engine's [`jobmill::JobClient`] and the
//! webhooks and data features, assembled here.
//!
//! # Layout
//! - [`app`]: the router, for `serve` and for tests (no socket needed).
//! - [`AppState`]: what handlers share, built by [`AppState::connect`] from an [`ApiConfig`].
//! - `routes/`: handlers, one file per resource (`jobs`, `kinds`, `uploads`, `files`,
//!   `datasets`, `webhooks`, `deliveries`, `health`, and the operator plane's `workers`,
//!   `queues`, `audit`).
//! - [`view`]: request and answer shapes, with OpenAPI schemas.
//! - [`auth`]: bearer API keys and tenants.
//! - [`extract`]: extractors that answer bad input in the API's error shape.
//! - [`error`]: the `ApiError` answer type and the middleware that logs internal errors once.
//! - [`settings`]: the API's settings section and the whole config of an API process.
//! - [`catalog`]: keeps the kinds catalog fresh.
//! - [`watch`]: job-change events for long-polls.
//! - [`finished`]: finished jobs cached in memory for status polls.
//! - [`server`]: the connection loop with its HTTP timeouts and connection limit.
//! - [`range`]: `Range` headers of file downloads.
//! - [`ui`]: the web dashboard under `/ui/` (server-rendered pages over the same data
//!   functions as the JSON routes, signed session cookies, CSRF tokens).
#![warn(missing_docs)]

pub mod auth;
pub mod catalog;
pub mod error;
pub mod extract;
pub mod finished;
pub mod range;
pub mod routes;
pub mod server;
pub mod settings;
pub mod ui;
pub mod view;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, Uri};
use axum::routing::{get, post, put};
use axum::Router;
use jobmill::catalog::Catalog;
use jobmill::client::Limits;
use jobmill::queue::RedisQueue;
use jobmill::store::Store;
use jobmill::{JobClient, Registry};
use jobmill_data::Data;
use jobmill_ops::Ops;
use jobmill_schedules::Schedules;
use jobmill_webhooks::Webhooks;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::ApiError;
pub use settings::{ApiConfig, ApiKey, Role};

/// What every handler shares: one `Arc`, because axum clones the state for every extractor of
/// every request; a clone of the features' handles themselves (each a handful of `Arc`s and
/// strings) cost about 5% of the API's CPU on W1 over HTTP.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The contents of [`AppState`].
pub struct Shared {
    /// Submission, cancel, retry, reads, and the kinds catalog.
    pub client: JobClient,
    /// The webhooks feature (endpoints, deliveries, secrets).
    pub webhooks: Webhooks,
    /// The data feature (uploads, files, datasets, cached pages).
    pub data: Data,
    /// The operator plane (workers, queues, pauses, history, audit).
    pub ops: Ops,
    /// Periodic schedules.
    pub schedules: Schedules,
    /// Accepted API keys.
    pub keys: Arc<Vec<ApiKey>>,
    /// Job-change events.
    pub watch: watch::Watch,
    /// Finished jobs served to status polls without a MongoDB read.
    pub finished: Arc<finished::FinishedJobs>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Scrape token of `GET /metrics`.
    pub metrics_token: Option<jobmill::config::Secret>,
    /// The shared source of every fleet event stream.
    pub fleet: routes::events::FleetFeed,
    /// The dashboard's session signing and cookie policy.
    pub sessions: ui::session::Sessions,
}

impl AppState {
    /// Connect to Redis and MongoDB, assemble the features and create the indexes. `kinds` are
    /// kinds this binary links beyond the stock ones (their schemas are known before any worker
    /// announces them).
    pub async fn connect(config: &ApiConfig, kinds: Registry) -> jobmill::Result<Self> {
        let core = &config.core;
        let store = Store::connect_settings(core).await?;
        let queue = RedisQueue::connect(&core.redis, &core.key_prefix).await?;
        // Before anything is accepted: a process whose JOBMILL_QUEUE_SHARDS disagrees with the
        // stored shard map refuses to start.
        jobmill::shards::join_settings(&store, core, &queue).await?;
        let webhooks = Webhooks::new(&store, &queue, core.redis.clone(), config.webhooks.clone());
        let catalog = Catalog::new(&Registry::new());
        let client = JobClient::new(
            store.clone(),
            queue,
            catalog.clone(),
            Limits::from_settings(core),
            vec![webhooks.submit_hook()],
        );
        let data = Data::new(&client, config.data.clone());
        let ops = Ops::new(&store, client.queue());
        // The API does not fire schedules (workers do), so its schedule metrics stay unused.
        let schedules = Schedules::new(
            &client,
            config.schedules.clone(),
            vec![webhooks.submit_hook()],
            Default::default(),
        );
        let mut registry = Registry::builtin();
        webhooks.register_kinds(&mut registry);
        data.register_kinds(&mut registry);
        ops.register_kinds(&mut registry, &client);
        registry.extend(&kinds);
        catalog.set_local(&registry);
        store.ensure_indexes().await?;
        webhooks.ensure_indexes().await?;
        data.ensure_indexes().await?;
        ops.ensure_indexes().await?;
        schedules.ensure_indexes().await?;
        if let Err(e) = catalog.refresh(&store).await {
            tracing::warn!(error = %e, "kinds catalog not loaded yet; only linked kinds are accepted");
        }
        catalog::start(client.clone(), core.redis.clone());
        let finished = Arc::new(finished::FinishedJobs::default());
        let watch = watch::Watch::start(
            core.redis.clone(),
            client.queue().keys().events_channel(),
            finished.clone(),
        );
        Ok(AppState(Arc::new(Shared {
            client,
            webhooks,
            data,
            ops,
            schedules,
            keys: Arc::new(config.api.keys.clone()),
            watch,
            finished,
            max_body_bytes: config.api.max_body_bytes,
            metrics_token: config.api.metrics_token.clone(),
            fleet: routes::events::FleetFeed::default(),
            sessions: ui::session::Sessions::new(&config.ui),
        })))
    }
}

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "jobmill", description = "Background jobs over HTTP: submit, watch, cancel, retry; signed webhook callbacks.\n\n\
Every error answer is `{\"error\": {\"code\", \"message\"}}`. A method a path does not list answers \
`405 method_not_allowed` with an `Allow` header naming the methods it does list; an unknown path answers \
`404 not_found`. Any operation that reads or writes a store may answer `503 unavailable` while the store is down."),
    paths(
        routes::jobs::jobs_create,
        routes::jobs::jobs_batch,
        routes::jobs::jobs_index,
        routes::jobs::jobs_show,
        routes::jobs::jobs_cancel,
        routes::jobs::jobs_retry,
        routes::kinds::kinds_index,
        routes::uploads::uploads_create,
        routes::uploads::uploads_show,
        routes::uploads::uploads_part,
        routes::uploads::uploads_complete,
        routes::files::files_index,
        routes::files::files_show,
        routes::files::files_head,
        routes::files::files_delete,
        routes::datasets::datasets_index,
        routes::datasets::datasets_rows,
        routes::datasets::datasets_page,
        routes::jobs::jobs_deliveries,
        routes::webhooks::webhooks_create,
        routes::webhooks::webhooks_index,
        routes::webhooks::webhooks_show,
        routes::webhooks::webhooks_delete,
        routes::webhooks::webhooks_enable,
        routes::webhooks::webhooks_rotate,
        routes::webhooks::webhooks_deliveries,
        routes::webhooks::webhooks_secret_show,
        routes::webhooks::webhooks_secret_rotate,
        routes::deliveries::deliveries_show,
        routes::deliveries::deliveries_replay,
        routes::workers::workers_index,
        routes::workers::workers_show,
        routes::workers::workers_quiet,
        routes::workers::workers_stop,
        routes::queues::queues_index,
        routes::queues::queues_pause,
        routes::queues::queues_resume,
        routes::queues::queues_limits_set,
        routes::queues::queues_limits_delete,
        routes::queues::queues_history,
        routes::audit::audit_index,
        routes::metrics::metrics_show,
        routes::actions::jobs_actions_retry,
        routes::actions::jobs_actions_cancel,
        routes::actions::jobs_actions_discard,
        routes::events::jobs_events,
        routes::events::events_index,
        routes::health::healthz,
        routes::health::readyz,
        routes::health::openapi,
        routes::schedules::schedules_create,
        routes::schedules::schedules_index,
        routes::schedules::schedules_show,
        routes::schedules::schedules_update,
        routes::schedules::schedules_delete,
        routes::schedules::schedules_pause,
        routes::schedules::schedules_resume,
        routes::schedules::schedules_trigger,
        routes::schedules::schedules_detach,
    ),
    components(schemas(
        view::SubmitJob, view::SubmitBatch, view::JobView, view::JobPage, view::BatchView,
        view::ProgressView, view::AttemptErrorView, error::ErrorBody, error::ErrorDetail,
        error::ArgProblemView,
        routes::kinds::KindList, routes::kinds::KindView, routes::kinds::KindDefaultsView,
        routes::health::Readiness,
        routes::uploads::CreateUpload, routes::uploads::UploadView, routes::uploads::PartView,
        routes::files::FileView, routes::files::FilePage,
        routes::datasets::DatasetView, routes::datasets::DatasetList, routes::datasets::RowPage,
        view::CreateWebhook, view::EventType, view::WebhookView, view::WebhookList, view::SigningSecretView,
        view::DeliveryView, view::DeliveryAttemptView, view::DeliveryList,
        jobmill_ops::workers::WorkerList, jobmill_ops::workers::WorkerView,
        jobmill_ops::workers::WorkerState, jobmill_ops::workers::QueueWeightView,
        jobmill_ops::workers::WorkerCounters, jobmill_ops::workers::HeldJobView,
        jobmill_ops::queues::QueueList, jobmill_ops::queues::QueueView,
        jobmill_ops::queues::QueueCounts, jobmill_ops::history::Recent,
        jobmill_ops::queues::LimitsView, jobmill_ops::queues::KeyRunning,
        jobmill_ops::queues::KeyHeld, jobmill::limits::LimitsSpec, jobmill::limits::RateSpec,
        jobmill_ops::history::Window, jobmill_ops::history::HistoryView,
        jobmill_ops::history::Minute, jobmill_ops::audit::AuditPage,
        jobmill_ops::audit::AuditRecord, jobmill_ops::audit::AuditAction,
        jobmill_ops::audit::AuditOutcome, routes::actions::BulkRequest,
        jobmill_ops::bulk::BulkCount,
        jobmill_schedules::model::CreateSchedule, jobmill_schedules::model::PatchSchedule,
        jobmill_schedules::model::ScheduleView, jobmill_schedules::model::ScheduleList,
        jobmill_schedules::model::RunView, jobmill_schedules::model::JobTemplateView,
        jobmill_schedules::model::Overlap, jobmill_schedules::model::CatchUp,
        jobmill_schedules::model::ManagedBy,
    )),
    modifiers(&BearerAuth, &LimitsNeedOne),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `PUT /v1/queues/{name}/limits` needs at least one limit (`DELETE` removes them), so its
/// body's schema says `minProperties: 1`. Set here because utoipa-gen 5.5's `min_properties`
/// attribute writes `maxProperties` instead.
struct LimitsNeedOne;

impl Modify for LimitsNeedOne {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, Schema};
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        if let Some(RefOr::T(Schema::Object(o))) = components.schemas.get_mut("LimitsSpec") {
            o.min_properties = Some(1);
        }
    }
}

/// The API router.
pub fn app(state: AppState) -> Router {
    use routes::{
        actions, audit, datasets, deliveries, events, files, health, jobs, kinds, metrics, queues,
        schedules, uploads, webhooks, workers,
    };
    Router::new()
        .route("/v1/jobs", post(jobs::jobs_create).get(jobs::jobs_index))
        .route("/v1/jobs/batch", post(jobs::jobs_batch))
        .route("/v1/jobs/{id}", get(jobs::jobs_show))
        .route("/v1/jobs/{id}/cancel", post(jobs::jobs_cancel))
        .route("/v1/jobs/{id}/retry", post(jobs::jobs_retry))
        .route("/v1/kinds", get(kinds::kinds_index))
        .route("/v1/uploads", post(uploads::uploads_create))
        .route("/v1/uploads/{id}", get(uploads::uploads_show))
        // Parts are streamed into the file store and limited by the part size instead.
        .route(
            "/v1/uploads/{id}/parts/{n}",
            put(uploads::uploads_part)
                .layer(DefaultBodyLimit::disable())
                .layer(axum::middleware::map_response(close_unless_success)),
        )
        .route("/v1/uploads/{id}/complete", post(uploads::uploads_complete))
        .route("/v1/files", get(files::files_index))
        .route(
            "/v1/files/{id}",
            get(files::files_show)
                .head(files::files_head)
                .delete(files::files_delete),
        )
        .route("/v1/datasets", get(datasets::datasets_index))
        .route("/v1/datasets/{name}/rows", get(datasets::datasets_rows))
        .route(
            "/v1/datasets/{name}/pages/{n}",
            get(datasets::datasets_page),
        )
        .route("/v1/jobs/{id}/deliveries", get(jobs::jobs_deliveries))
        .route(
            "/v1/webhooks",
            post(webhooks::webhooks_create).get(webhooks::webhooks_index),
        )
        .route("/v1/webhooks/secret", get(webhooks::webhooks_secret_show))
        .route(
            "/v1/webhooks/secret/rotate",
            post(webhooks::webhooks_secret_rotate),
        )
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::webhooks_show).delete(webhooks::webhooks_delete),
        )
        .route("/v1/webhooks/{id}/enable", post(webhooks::webhooks_enable))
        .route(
            "/v1/webhooks/{id}/secret/rotate",
            post(webhooks::webhooks_rotate),
        )
        .route(
            "/v1/webhooks/{id}/deliveries",
            get(webhooks::webhooks_deliveries),
        )
        .route("/v1/deliveries/{id}", get(deliveries::deliveries_show))
        .route(
            "/v1/deliveries/{id}/replay",
            post(deliveries::deliveries_replay),
        )
        .route("/v1/workers", get(workers::workers_index))
        .route("/v1/workers/{id}", get(workers::workers_show))
        .route("/v1/workers/{id}/quiet", post(workers::workers_quiet))
        .route("/v1/workers/{id}/stop", post(workers::workers_stop))
        .route("/v1/queues", get(queues::queues_index))
        .route("/v1/queues/{name}/pause", post(queues::queues_pause))
        .route("/v1/queues/{name}/resume", post(queues::queues_resume))
        .route(
            "/v1/queues/{name}/limits",
            put(queues::queues_limits_set).delete(queues::queues_limits_delete),
        )
        .route("/v1/queues/{name}/history", get(queues::queues_history))
        .route("/v1/audit", get(audit::audit_index))
        .route("/metrics", get(metrics::metrics_show))
        .route("/v1/jobs/actions/retry", post(actions::jobs_actions_retry))
        .route(
            "/v1/jobs/actions/cancel",
            post(actions::jobs_actions_cancel),
        )
        .route(
            "/v1/jobs/actions/discard",
            post(actions::jobs_actions_discard),
        )
        .route("/v1/jobs/{id}/events", get(events::jobs_events))
        .route("/v1/events", get(events::events_index))
        .route(
            "/v1/schedules",
            post(schedules::schedules_create).get(schedules::schedules_index),
        )
        .route(
            "/v1/schedules/{name}",
            get(schedules::schedules_show)
                .patch(schedules::schedules_update)
                .delete(schedules::schedules_delete),
        )
        .route(
            "/v1/schedules/{name}/pause",
            post(schedules::schedules_pause),
        )
        .route(
            "/v1/schedules/{name}/resume",
            post(schedules::schedules_resume),
        )
        .route(
            "/v1/schedules/{name}/trigger",
            post(schedules::schedules_trigger),
        )
        .route(
            "/v1/schedules/{name}/detach",
            post(schedules::schedules_detach),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(health::openapi))
        // The dashboard: HTML pages, left out of /openapi.json (see `ui`).
        .merge(ui::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(axum::middleware::from_fn(error::log_internal_errors))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// A part upload refused before its body was read (bad auth, unknown upload, completed
/// upload...) leaves unread bytes on the connection; reusing it would make the client's next
/// request fail. So such answers close the connection.
async fn close_unless_success(mut res: axum::response::Response) -> axum::response::Response {
    if !res.status().is_success() {
        res.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    res
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    tracing::error!("handler panicked");
    ApiError::internal().into_response()
}

/// Serve the API on the configured address until `shutdown` resolves, with the HTTP limits
/// (`JOBMILL_HTTP_*`, see [`server::HttpLimits`]).
pub async fn serve(
    config: &ApiConfig,
    kinds: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let state = AppState::connect(config, kinds)
        .await
        .context("connecting to Redis and MongoDB")?;
    let listener = tokio::net::TcpListener::bind(config.api.addr)
        .await
        .with_context(|| format!("binding {}", config.api.addr))?;
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    server::serve_on(listener, app(state), config.http.clone(), shutdown).await
}

#[cfg(test)]
mod doc_tests {
    use serde_json::Value;
    use utoipa::OpenApi;

    fn doc() -> Value {
        serde_json::to_value(crate::ApiDoc::openapi()).unwrap()
    }

    fn operations(d: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, ops) in d["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                out.push((path.clone(), method.clone(), op.clone()));
            }
        }
        out
    }

    #[test]
    fn path_parameters_are_in_the_path_and_queries_are_optional() {
        for (path, method, op) in operations(&doc()) {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                if p["in"] == "path" {
                    assert!(
                        path.contains(&format!("{{{name}}}")),
                        "{method} {path}: '{name}' is declared in the path but is not in it"
                    );
                } else {
                    assert_ne!(p["required"], true, "{method} {path}: {name}");
                    assert!(
                        !p["schema"]["type"].is_array(),
                        "{method} {path}: {name} must not be nullable"
                    );
                }
            }
        }
    }

    #[test]
    fn statuses_the_server_answers_are_listed() {
        let d = doc();
        for (path, method, op) in operations(&d) {
            let responses = op["responses"].as_object().unwrap();
            if op.get("security").is_some() {
                assert!(responses.contains_key("401"), "{method} {path}: 401");
            }
            let json_body = op["requestBody"]["content"]
                .get("application/json")
                .is_some();
            if json_body {
                assert!(responses.contains_key("415"), "{method} {path}: 415");
                assert!(responses.contains_key("400"), "{method} {path}: 400");
            }
            if op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["in"] == "path")
            {
                assert!(responses.contains_key("400"), "{method} {path}: 400");
            }
        }
        assert!(d["paths"]["/v1/files/{id}"]["head"].is_object());
        let part = &d["paths"]["/v1/uploads/{id}/parts/{n}"]["put"]["requestBody"]["content"]
            ["application/octet-stream"]["schema"];
        assert_eq!(part["format"], "binary", "{part}");
    }

    #[test]
    fn limits_need_one_field_and_none_is_nullable() {
        let d = doc();
        let limits = &d["components"]["schemas"]["LimitsSpec"];
        assert_eq!(limits["minProperties"], 1, "{limits}");
        assert!(limits.get("maxProperties").is_none(), "{limits}");
        for (name, p) in limits["properties"].as_object().unwrap() {
            let text = p.to_string();
            assert!(!text.contains("\"null\""), "{name} is nullable: {p}");
        }
        let empty: Result<jobmill::limits::LimitsSpec, _> = serde_json::from_str("{}");
        assert!(empty.unwrap().check().is_err());
        let null: Result<jobmill::limits::LimitsSpec, _> =
            serde_json::from_str(r#"{"concurrency": 3, "rate": null}"#);
        assert!(null.is_err(), "an explicit null is refused");
    }

    #[test]
    fn schedules_name_the_callback_field_webhooks_read() {
        assert_eq!(
            jobmill_schedules::model::CALLBACK_URL_FIELD,
            jobmill_webhooks::CALLBACK_URL
        );
        let d = doc();
        for path in [
            "/v1/schedules",
            "/v1/schedules/{name}",
            "/v1/schedules/{name}/pause",
            "/v1/schedules/{name}/resume",
            "/v1/schedules/{name}/trigger",
            "/v1/schedules/{name}/detach",
        ] {
            assert!(d["paths"][path].is_object(), "{path} is not documented");
        }
    }

    #[test]
    fn ranges_match_the_validators() {
        let d = doc();
        let job = &d["components"]["schemas"]["SubmitJob"]["properties"];
        assert_eq!(job["max_attempts"]["minimum"], 1);
        assert_eq!(
            job["max_attempts"]["maximum"],
            jobmill::client::MAX_ATTEMPTS
        );
        assert_eq!(job["priority"]["maximum"], 9);
        assert_eq!(job["kind"]["minLength"], 1);
        assert_eq!(
            job["timeout_ms"]["maximum"],
            jobmill::client::MAX_TIMEOUT_MS
        );
        assert_eq!(
            job["delay_ms"]["maximum"],
            jobmill::client::MAX_SCHEDULE_AHEAD_MS
        );
        let part = &d["paths"]["/v1/uploads/{id}/parts/{n}"]["put"]["parameters"][1]["schema"];
        assert_eq!(
            part["maximum"],
            jobmill_data::files::MAX_PARTS - 1,
            "{part}"
        );
        let limit = &d["paths"]["/v1/jobs"]["get"]["parameters"][3];
        assert_eq!(limit["name"], "limit");
        assert_eq!(limit["schema"]["maximum"], crate::extract::MAX_LIMIT);
    }
}
