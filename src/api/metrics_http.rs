//! The `/metrics` HTTP endpoint (axum), on its own listener
//! (`[metrics] listen`). Each scrape first reads the levels from
//! [`crate::overview`] and pushes them into the registry, then encodes it.
//! It lives with the other transports (not in `metrics`) so the registry
//! stays a leaf that every layer may record into without importing the
//! layers above it.
//!
//! Does not: authenticate (bind it to loopback or a monitoring network), or
//! serve anything but `GET /metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::overview::Overview;

/// OpenMetrics text, as prometheus-client writes it (ends with `# EOF`).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct Ctx {
    metrics: Arc<Metrics>,
    overview: Arc<Overview>,
}

/// Serves until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    overview: Arc<Overview>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Ctx { metrics, overview });
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

async fn scrape(State(ctx): State<Ctx>) -> Response {
    match ctx.overview.collect().await {
        Ok(o) => {
            // A scrape that could not reach the database says so at once;
            // the duty's next successful lease round sets it back.
            if !o.database_reachable {
                ctx.metrics.set_database_reachable(false);
            }
            ctx.metrics.set_levels(o.scrape_values());
        }
        Err(e) => {
            tracing::warn!("metrics: cannot read the levels from the database: {e}");
            ctx.metrics.levels_failed();
        }
    }
    match ctx.metrics.encode() {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}
