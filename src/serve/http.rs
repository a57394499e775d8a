//! The HTTP side: axum routes served by hyper's HTTP/1 connection builder, so that header
//! reads are timed out (slow clients), header size and count are bounded, and connections
//! shut down gracefully. Bodies are bounded (16 KiB), whole requests time out, and a panic
//! in a handler becomes a 500, never a dropped daemon.

use super::job::{self, BenchRequest, StartError};
use super::metrics;
use super::State;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, RawQuery, State as Shared};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn router(state: Arc<State>) -> Router {
    let registry = Arc::new(metrics::registry(Arc::clone(&state)));
    Router::new()
        .route("/", get(landing))
        .route("/healthz", get(healthz))
        .route(
            "/metrics",
            get(
                move |Shared(state): Shared<Arc<State>>, headers: HeaderMap| {
                    let registry = Arc::clone(&registry);
                    async move { scrape(&registry, &state, &headers) }
                },
            ),
        )
        .route("/api/v1/runs", get(runs))
        .route("/api/v1/runs/{id}", get(one_run))
        .route("/api/v1/bench", get(bench_status).post(bench_start))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such path: see /") })
        // A declared Content-Length over the limit is refused before any body is read.
        .layer(DefaultBodyLimit::disable())
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.opts.request_timeout,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("a handler panicked");
                error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            },
        ))
        .with_state(state)
}

fn scrape(
    registry: &prometheus_client::registry::Registry,
    state: &State,
    headers: &HeaderMap,
) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let bench = Arc::clone(
        &state
            .bench_text
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let (body, content_type) =
        metrics::render(registry, &bench, metrics::wants_openmetrics(accept));
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn healthz(Shared(state): Shared<Arc<State>>) -> Response {
    let uptime = state.started.elapsed().map_or(0.0, |d| d.as_secs_f64());
    Json(json!({ "status": "ok", "uptime_seconds": uptime })).into_response()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn landing(Shared(state): Shared<Arc<State>>) -> Html<String> {
    let gpu = state
        .gpu
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let runs = state
        .runs
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .by_id
        .len();
    let job = state
        .job
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let nvml = if gpu.up {
        format!("up, {} GPU(s)", gpu.devices.len())
    } else {
        format!(
            "down ({})",
            esc(gpu.last_error.as_deref().unwrap_or("not polled yet"))
        )
    };
    let sweep = if job.running {
        format!(
            "running: {} ({}/{} points)",
            esc(job.id.as_deref().unwrap_or("")),
            job.stored,
            job.planned
        )
    } else {
        job.outcome.map_or_else(
            || "none yet".to_string(),
            |o| format!("last: {} ({o})", esc(job.id.as_deref().unwrap_or(""))),
        )
    };
    Html(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>vramprobe</title></head><body>\n<h1>vramprobe {}</h1>\n\
         <p>How much GPU memory does this LLM really need? Estimates checked against \
         measurements.</p>\n<ul>\n<li>NVML: {nvml}</li>\n<li>stored runs: {runs}</li>\n\
         <li>sweep: {sweep}</li>\n</ul>\n<ul>\n\
         <li><a href=\"/metrics\">/metrics</a>: Prometheus (OpenMetrics when asked)</li>\n\
         <li><a href=\"/healthz\">/healthz</a>: process health (independent of NVML)</li>\n\
         <li><a href=\"/api/v1/runs\">/api/v1/runs</a>: stored runs and their points</li>\n\
         <li><a href=\"/api/v1/bench\">/api/v1/bench</a>: the current sweep; POST starts one</li>\n\
         </ul>\n</body></html>\n",
        env!("CARGO_PKG_VERSION")
    ))
}

/// Runs per page of `/api/v1/runs` unless `limit` says otherwise, and the most per page.
pub const RUNS_PAGE: (usize, usize) = (100, 1000);
/// Points per page of `/api/v1/runs/{id}` unless `limit` says otherwise, and the most.
pub const POINTS_PAGE: (usize, usize) = (1000, 10_000);

/// `offset` and `limit` of a query string (`(default, most)` for the limit), or a 400
/// naming the parameter.
#[allow(clippy::result_large_err)]
fn page(query: Option<&str>, (default, most): (usize, usize)) -> Result<(usize, usize), Response> {
    let (mut offset, mut limit) = (0, default);
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n: Option<usize> = v.parse().ok();
        match (k, n) {
            ("offset", Some(n)) => offset = n,
            ("limit", Some(n)) if (1..=most).contains(&n) => limit = n,
            ("offset" | "limit", _) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("{k}: must be a whole number (limit: 1 to {most})"),
                ))
            }
            _ => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "unknown query parameter (offset, limit)",
                ))
            }
        }
    }
    Ok((offset, limit))
}

/// The link to the next page, if there is one.
fn next(path: &str, offset: usize, limit: usize, total: usize) -> serde_json::Value {
    if offset.saturating_add(limit) < total {
        json!(format!("{path}?offset={}&limit={limit}", offset + limit))
    } else {
        serde_json::Value::Null
    }
}

/// The stored runs, a page at a time, without their points (`points_total` says how many;
/// `/api/v1/runs/{id}` pages through them).
async fn runs(Shared(state): Shared<Arc<State>>, RawQuery(q): RawQuery) -> Response {
    let (offset, limit) = match page(q.as_deref(), RUNS_PAGE) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let r = state
        .runs
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let total = r.by_id.len();
    let list: Vec<serde_json::Value> = r
        .by_id
        .values()
        .skip(offset)
        .take(limit)
        .map(|run| {
            json!({
                "id": run.id,
                "run": run.run,
                "points_total": run.points.len(),
                "problem": run.problem,
            })
        })
        .collect();
    Json(json!({
        "runs": list, "total": total, "offset": offset, "limit": limit,
        "next": next("/api/v1/runs", offset, limit, total),
    }))
    .into_response()
}

/// One run with a page of its points.
async fn one_run(
    Shared(state): Shared<Arc<State>>,
    UrlPath(id): UrlPath<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let (offset, limit) = match page(q.as_deref(), POINTS_PAGE) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let r = state
        .runs
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match r.by_id.get(&id) {
        Some(run) => {
            let total = run.points.len();
            let points: Vec<&crate::store::PointRecord> =
                run.points.iter().skip(offset).take(limit).collect();
            Json(json!({
                "id": run.id, "run": run.run, "problem": run.problem, "points": points,
                "points_total": total, "offset": offset, "limit": limit,
                "next": next(&format!("/api/v1/runs/{id}"), offset, limit, total),
            }))
            .into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no run {id:?}")),
    }
}

async fn bench_status(Shared(state): Shared<Arc<State>>) -> Response {
    let j = state
        .job
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Json(j).into_response()
}

/// Constant-time comparison, so the answer's timing does not tell how much of a guessed
/// token was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorised(state: &State, headers: &HeaderMap) -> bool {
    let Some(token) = &state.opts.token else {
        return true; // loopback without a token (check() refuses anything else)
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same(given.trim().as_bytes(), token.0.as_bytes()))
}

async fn bench_start(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorised(&state, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({ "error": "a bearer token is required (Authorization: Bearer ...)" })),
        )
            .into_response();
    }
    let req: BenchRequest = if body.iter().all(u8::is_ascii_whitespace) {
        BenchRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("request body: {e}")),
        }
    };
    match job::start(&state, &req) {
        Ok(j) => (StatusCode::ACCEPTED, Json(j)).into_response(),
        Err(e @ StartError::Busy(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ StartError::Invalid(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ StartError::ShuttingDown) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e @ StartError::Spawn(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Accept connections until `shutdown` resolves, then let open requests finish (5 s at
/// most).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) {
    let (header_timeout, app) = (state.opts.header_timeout, router(state));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: do not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .max_buf_size(64 * 1024)
                    .max_headers(64)
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish in 5 s");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abcdef", b"abcdef"));
        assert!(!same(b"abcdef", b"abcdeg"));
        assert!(!same(b"abc", b"abcdef"));
        assert!(!same(b"", b"a"));
    }
}
