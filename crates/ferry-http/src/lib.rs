//! Ferry's HTTP listener (port 8080 by default): the admin API, and `/metrics` for
//! Prometheus.
//!
//! The admin API follows RabbitMQ's management API paths where they overlap
//! (`/api/overview`, `/api/users/{name}`, `/api/vhosts/{name}`,
//! `/api/permissions/{vhost}/{user}`, `/api/queues[/{vhost}]`, `/api/exchanges[/{vhost}]`,
//! `/api/bindings[/{vhost}]`; Ferry's own `/api/topics`), answers in JSON, and needs HTTP basic
//! authentication as a user tagged `administrator` (the default `guest` is one, from
//! loopback only). `/metrics` needs no authentication, like RabbitMQ's Prometheus
//! endpoint. [`client::AdminClient`] is the matching client; the `ferry user|vhost|
//! permissions` commands use it.
//!
//! Handlers hold no business rule: each one is a call on [`ferry_core::Broker`] and a
//! mapping of its answer to JSON.

mod api;
pub mod client;
pub mod json;
mod metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use ferry_core::Broker;
use tokio::net::TcpListener;

/// Default HTTP listen address (DESIGN: admin API, console and `/metrics` on 8080).
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8080";
/// Largest request body accepted, in bytes (definitions are small JSON documents).
pub const REQUEST_BODY_BYTES_MAX: usize = 1 << 20;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub broker: Arc<Broker>,
}

/// Serves the admin API and `/metrics` on `listener` until `shutdown` resolves, then
/// lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(broker).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Every route of the HTTP listener.
pub fn router(broker: Arc<Broker>) -> Router {
    let state = AppState { broker };
    Router::new()
        .route("/api/overview", get(api::overview))
        .route("/api/whoami", get(api::whoami))
        .route("/api/limits", get(api::get_limits).put(api::put_limits))
        .route("/api/users", get(api::list_users))
        .route(
            "/api/users/{name}",
            get(api::get_user)
                .put(api::put_user)
                .delete(api::delete_user),
        )
        .route("/api/vhosts", get(api::list_vhosts))
        .route(
            "/api/vhosts/{name}",
            get(api::get_vhost)
                .put(api::put_vhost)
                .delete(api::delete_vhost),
        )
        .route("/api/permissions", get(api::list_permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(api::get_permission)
                .put(api::put_permission)
                .delete(api::delete_permission),
        )
        .route("/api/queues", get(api::list_queues))
        .route("/api/queues/{vhost}", get(api::list_vhost_queues))
        .route("/api/exchanges", get(api::list_exchanges))
        .route("/api/exchanges/{vhost}", get(api::list_vhost_exchanges))
        .route("/api/bindings", get(api::list_bindings))
        .route("/api/bindings/{vhost}", get(api::list_vhost_bindings))
        .route("/api/topics", get(api::list_topics))
        .route("/metrics", get(metrics::metrics))
        .fallback(api::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(state)
}
