//! `/v1/datasets`: a tenant's datasets with row counts, rows by seek pagination, and the
//! leading pages served from the Redis cache (a miss answers from MongoDB and asks for one
//! coalesced `cache_rebuild`).

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use jobmill_data::cache::{page_json, Cached};
use jobmill_data::datasets::{check_name, row_json, Dataset};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::Query;
use crate::AppState;

/// A dataset.
#[derive(Debug, Serialize, ToSchema)]
pub struct DatasetView {
    /// Name.
    pub name: String,
    /// Rows.
    pub rows: u64,
}

/// The tenant's datasets.
#[derive(Debug, Serialize, ToSchema)]
pub struct DatasetList {
    /// By name.
    pub datasets: Vec<DatasetView>,
}

/// A page of rows.
#[derive(Debug, Serialize, ToSchema)]
pub struct RowPage {
    /// Rows in `_id` order.
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<Value>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// Query of the rows listing.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RowParams {
    /// Sort field; only `_id` (the index every dataset has) is supported.
    #[param(value_type = Option<SortField>, nullable = false, inline)]
    pub sort: Option<String>,
    /// Page size, 1-1000 (default 100).
    #[param(nullable = false, minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(nullable = false, max_length = 1024)]
    pub cursor: Option<String>,
}

/// The sortable fields of a dataset (documentation of `sort`).
#[derive(ToSchema)]
pub enum SortField {
    /// The row id.
    #[schema(rename = "_id")]
    Id,
}

fn datasets(state: &AppState) -> jobmill_data::datasets::Datasets {
    state.data.datasets().clone()
}

async fn load(state: &AppState, caller: &Caller, name: &str) -> Result<Dataset, ApiError> {
    check_name(name).map_err(|m| ApiError::bad_request("invalid_dataset", m))?;
    // Datasets belong to the caller's own tenant, operators included: names are per tenant.
    datasets(state)
        .get(&caller.tenant, name)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such dataset"))
}

/// List the caller's datasets with row counts.
#[utoipa::path(get, path = "/v1/datasets", tag = "datasets", security(("bearer" = [])),
    responses(
        (status = 200, description = "datasets by name", body = DatasetList),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
    ))]
pub async fn datasets_index(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let all = datasets(&state).list(&caller.tenant).await?;
    Ok(axum::Json(DatasetList {
        datasets: all
            .into_iter()
            .map(|(d, rows)| DatasetView { name: d.name, rows })
            .collect(),
    })
    .into_response())
}

/// Page through a dataset's rows in `_id` order (seek pagination on the `_id` index).
#[utoipa::path(get, path = "/v1/datasets/{name}/rows", tag = "datasets", security(("bearer" = [])),
    params(("name" = String, Path, description = "dataset name", pattern = r"^[a-z0-9_]{1,48}$"), RowParams),
    responses(
        (status = 200, description = "a page of rows", body = RowPage),
        (status = 400, description = "bad name, sort, limit or cursor", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such dataset", body = ErrorBody),
    ))]
pub async fn datasets_rows(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(p): Query<RowParams>,
) -> Result<Response, ApiError> {
    if p.sort.as_deref().is_some_and(|s| s != "_id") {
        return Err(ApiError::bad_request(
            "invalid_sort",
            "only sort=_id is supported (it is the index every dataset has)",
        ));
    }
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be from 1 to 1000",
        ));
    }
    if p.cursor.as_ref().is_some_and(|c| c.len() > 1024) {
        return Err(ApiError::bad_request(
            "invalid_cursor",
            "cursor is too long",
        ));
    }
    let ds = load(&state, &caller, &name).await?;
    let rows = datasets(&state)
        .rows_after(&ds, p.cursor.as_deref(), limit)
        .await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| {
            rows.last()
                .and_then(|r| r.get_str("_id").ok().map(str::to_string))
        })
        .flatten();
    Ok(axum::Json(RowPage {
        rows: rows.into_iter().map(row_json).collect(),
        next_cursor,
    })
    .into_response())
}

/// Page `n` (from 0) of the listing, `JOBMILL_PAGE_SIZE` rows each. The first
/// `JOBMILL_CACHE_PAGES` pages come from Redis (`x-cache: hit`); on a miss the page comes from
/// MongoDB and one `cache_rebuild` is queued for the dataset, however many readers missed
/// (`x-rebuild-job` names it; absent when a rebuild finished between the miss and the request).
#[utoipa::path(get, path = "/v1/datasets/{name}/pages/{n}", tag = "datasets", security(("bearer" = [])),
    params(("name" = String, Path, description = "dataset name", pattern = r"^[a-z0-9_]{1,48}$"),
           ("n" = u64, Path, description = "page from 0", minimum = 0, maximum = 999999)),
    responses(
        (status = 200, description = "the page: {dataset, page, page_size, rows, version}", content_type = "application/json"),
        (status = 400, description = "bad name or page", body = ErrorBody),
        (status = 401, description = "missing or unknown API key", body = ErrorBody),
        (status = 404, description = "no such dataset", body = ErrorBody),
    ))]
pub async fn datasets_page(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, n)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    // Digits only: `u64::from_str` would also take a `+`, which the document does not allow.
    let n: u64 = Some(n.as_str())
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
        .filter(|n| *n < 1_000_000)
        .ok_or_else(|| ApiError::bad_request("invalid_page", "page must be from 0 to 999999"))?;
    let ds = load(&state, &caller, &name).await?;
    let cache = state.data.cache();
    let cacheable = n < cache.pages as u64;
    let mut seen = None;
    if cacheable {
        match cache.read(&caller.tenant, &name, n).await? {
            Cached::Hit(json) => {
                let mut res = (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    json,
                )
                    .into_response();
                res.headers_mut()
                    .insert("x-cache", HeaderValue::from_static("hit"));
                return Ok(res);
            }
            Cached::Miss { current } => seen = current,
        }
    }
    let rows = datasets(&state)
        .page(&ds, n, cache.page_size as i64)
        .await?;
    let body = page_json(
        &name,
        n,
        cache.page_size,
        rows.into_iter().map(row_json).collect(),
        None,
    );
    let mut res = (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    res.headers_mut().insert(
        "x-cache",
        HeaderValue::from_static(if cacheable { "miss" } else { "bypass" }),
    );
    if cacheable {
        // None: a rebuild finished since the miss; nothing to name, nothing to submit.
        let job = cache
            .request_rebuild_after_miss(&caller.tenant, &name, seen.as_deref())
            .await?;
        if let Some(v) = job.and_then(|j| HeaderValue::from_str(&j).ok()) {
            res.headers_mut().insert("x-rebuild-job", v);
        }
    }
    Ok(res)
}
