//! The admin API's handlers: JSON in and out, RabbitMQ management API shapes where they
//! overlap (status codes: 200 with a body, 201 created, 204 changed or deleted, 400 bad
//! input, 401 not an administrator, 404 not found).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ferry_core::alarm::Usage;
use ferry_core::auth::{validate_vhost_name, AuthedUser, PermissionSpec, UserSpec};
use ferry_core::mq::MqError;
use ferry_core::routing::VHost;
use ferry_core::{Broker, CoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::warn;

use crate::json::{ExchangeJson, LimitsJson, PermissionJson, QueueJson, UserJson, VhostJson};
use crate::AppState;

/// Realm named in `WWW-Authenticate`.
const REALM: &str = "Ferry";

/// An admin API failure, answered as RabbitMQ's management API does: a status and
/// `{"error": …, "reason": …}`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 401: no, wrong or non-administrator credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 503: the broker is shutting down.
    #[error("broker is shutting down")]
    Unavailable,
    /// 500: storage failure or a crashed task.
    #[error("{0}")]
    Internal(String),
}

impl From<MqError> for ApiError {
    fn from(e: MqError) -> Self {
        match e {
            MqError::NotFound(reason) => ApiError::NotFound(reason),
            MqError::Core(CoreError::ShuttingDown) => ApiError::Unavailable,
            MqError::Core(e) => ApiError::Internal(e.to_string()),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = match &self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "not_authorised"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "Object Not Found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        };
        let body = Json(json!({"error": error, "reason": self.to_string()}));
        if status == StatusCode::UNAUTHORIZED {
            let challenge = format!("Basic realm=\"{REALM}\"");
            return (status, [(WWW_AUTHENTICATE, challenge)], body).into_response();
        }
        (status, body).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A request authenticated as an administrator (HTTP basic, checked like an AMQP login,
/// `loopback_users` included).
pub(crate) struct Admin(#[allow(dead_code)] pub AuthedUser);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Admin> {
        let (user, password) = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_basic)
            .ok_or_else(|| ApiError::Unauthorized("HTTP basic authentication required".into()))?;
        // Without the peer address (a router served without connect info) nothing is
        // known to be loopback.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
        let authed = state
            .broker
            .auth()
            .authenticate(&user, &password, peer)
            .map_err(|_| ApiError::Unauthorized("Login failed".into()))?;
        if !authed.is_administrator() {
            warn!(user, %peer, "admin API refused: not an administrator");
            return Err(ApiError::Unauthorized(format!(
                "user '{user}' is not tagged administrator"
            )));
        }
        Ok(Admin(authed))
    }
}

/// `Basic base64(user:password)` → (user, password).
fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(BASE64.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Runs a durable change (an fsync) off the async threads.
async fn blocking<T: Send + 'static>(
    broker: &Arc<Broker>,
    change: impl FnOnce(&Broker) -> Result<T, MqError> + Send + 'static,
) -> ApiResult<T> {
    let broker = broker.clone();
    tokio::task::spawn_blocking(move || change(&broker))
        .await
        .map_err(|e| ApiError::Internal(format!("admin task failed: {e}")))?
        .map_err(ApiError::from)
}

/// 201 when something new was made, else 204.
fn created_or_changed(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    }
}

/// Any path without a route.
pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound("Not Found".into())
}

// ---- overview ----

/// `GET /api/overview`: product, object counts, resource use and alarms.
pub(crate) async fn overview(_admin: Admin, State(state): State<AppState>) -> Json<Value> {
    let broker = &state.broker;
    let usage = Usage::sample(&broker.config().data_dir);
    let limits = broker.alarm_limits();
    let alarms = *broker.alarms().borrow();
    let topics = broker.topics();
    let partitions: u64 = topics.iter().map(|t| u64::from(t.partitions)).sum();
    let vhosts = listed_vhosts(broker, None).unwrap_or_default();
    let queues: usize = vhosts.iter().map(|v| v.queues().len()).sum();
    let exchanges: usize = vhosts.iter().map(|v| v.exchanges().len()).sum();
    Json(json!({
        "product_name": "Ferry",
        "product_version": env!("CARGO_PKG_VERSION"),
        "node_id": broker.node_id(),
        "object_totals": {
            "topics": topics.len(),
            "partitions": partitions,
            "users": broker.auth().users().len(),
            "vhosts": vhosts.len(),
            "queues": queues,
            "exchanges": exchanges,
        },
        "memory": {
            "resident_bytes": usage.resident_bytes,
            "high_watermark_bytes": limits.memory_high_watermark_bytes,
        },
        "disk": {
            "free_bytes": usage.disk_free_bytes,
            "free_limit_bytes": limits.disk_free_limit_bytes,
        },
        "alarms": {"memory": alarms.memory, "disk": alarms.disk},
    }))
}

/// `GET /api/whoami`: the authenticated user.
pub(crate) async fn whoami(Admin(user): Admin) -> Json<UserJson> {
    Json(UserJson::from(user))
}

// ---- limits ----

/// Body of `PUT /api/limits`: a number sets a threshold, `null` restores the configured
/// one, an absent key keeps it.
#[derive(Debug, Deserialize)]
pub(crate) struct PutLimits {
    #[serde(default, deserialize_with = "present")]
    memory_high_watermark_bytes: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    disk_free_limit_bytes: Option<Option<u64>>,
}

/// Tells a key given as `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

fn limits_json(broker: &Broker) -> LimitsJson {
    let limits = broker.alarm_limits();
    LimitsJson {
        memory_high_watermark_bytes: limits.memory_high_watermark_bytes,
        disk_free_limit_bytes: limits.disk_free_limit_bytes,
    }
}

/// `GET /api/limits`: the memory and disk alarm thresholds in force.
pub(crate) async fn get_limits(_admin: Admin, State(state): State<AppState>) -> Json<LimitsJson> {
    Json(limits_json(&state.broker))
}

/// `PUT /api/limits`: changes alarm thresholds until the next start (as
/// `rabbitmqctl set_vm_memory_high_watermark`); answers with the thresholds and alarms.
pub(crate) async fn put_limits(
    _admin: Admin,
    State(state): State<AppState>,
    Json(body): Json<PutLimits>,
) -> ApiResult<Json<Value>> {
    let broker = &state.broker;
    if body.memory_high_watermark_bytes == Some(Some(0)) {
        return Err(ApiError::BadRequest(
            "memory_high_watermark_bytes must be positive".into(),
        ));
    }
    let configured = broker.config().limits.resolve();
    let mut limits = broker.alarm_limits();
    if let Some(memory) = body.memory_high_watermark_bytes {
        limits.memory_high_watermark_bytes =
            memory.unwrap_or(configured.memory_high_watermark_bytes);
    }
    if let Some(disk) = body.disk_free_limit_bytes {
        limits.disk_free_limit_bytes = disk.unwrap_or(configured.disk_free_limit_bytes);
    }
    let alarms = broker.set_alarm_limits(limits);
    Ok(Json(json!({
        "memory_high_watermark_bytes": limits.memory_high_watermark_bytes,
        "disk_free_limit_bytes": limits.disk_free_limit_bytes,
        "alarms": {"memory": alarms.memory, "disk": alarms.disk},
    })))
}

// ---- users ----

impl From<AuthedUser> for UserJson {
    fn from(user: AuthedUser) -> Self {
        UserJson {
            name: user.name,
            tags: user.tags,
        }
    }
}

/// Tags as RabbitMQ accepts them: a list, or one comma-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Tags {
    List(Vec<String>),
    Text(String),
}

impl Tags {
    fn into_vec(self) -> Vec<String> {
        match self {
            Tags::List(tags) => tags,
            Tags::Text(text) => text.split(',').map(str::to_owned).collect(),
        }
    }
}

/// Body of `PUT /api/users/{name}`.
#[derive(Debug, Deserialize)]
pub(crate) struct PutUser {
    password: Option<String>,
    tags: Option<Tags>,
}

/// `GET /api/users`.
pub(crate) async fn list_users(
    _admin: Admin,
    State(state): State<AppState>,
) -> Json<Vec<UserJson>> {
    Json(
        state
            .broker
            .auth()
            .users()
            .into_iter()
            .map(UserJson::from)
            .collect(),
    )
}

/// `GET /api/users/{name}`.
pub(crate) async fn get_user(
    _admin: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<UserJson>> {
    state
        .broker
        .auth()
        .user(&name)
        .map(|user| Json(UserJson::from(user)))
        .ok_or_else(|| ApiError::NotFound(format!("no user '{name}'")))
}

/// `PUT /api/users/{name}` with `{"password": …, "tags": …}`: creates or replaces (an
/// existing user's tags alone change without a password).
pub(crate) async fn put_user(
    _admin: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Option<Json<PutUser>>,
) -> ApiResult<StatusCode> {
    let Json(body) =
        body.ok_or_else(|| ApiError::BadRequest("a JSON body with a password is needed".into()))?;
    let tags = body.tags.map(Tags::into_vec).unwrap_or_default();
    let created = state.broker.auth().user(&name).is_none();
    match body.password {
        Some(password) => {
            let spec = UserSpec {
                name,
                password,
                tags,
            };
            blocking(&state.broker, move |broker| broker.auth().put_user(spec)).await?;
        }
        // As RabbitMQ: an existing user's tags change without its password.
        None if !created => {
            blocking(&state.broker, move |broker| {
                broker.auth().set_tags(&name, tags)
            })
            .await?;
        }
        None => return Err(ApiError::BadRequest("password must be set".into())),
    }
    Ok(created_or_changed(created))
}

/// `DELETE /api/users/{name}`.
pub(crate) async fn delete_user(
    _admin: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    blocking(&state.broker, move |broker| {
        broker.auth().delete_user(&name)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- vhosts ----

/// `GET /api/vhosts`.
pub(crate) async fn list_vhosts(
    _admin: Admin,
    State(state): State<AppState>,
) -> Json<Vec<VhostJson>> {
    let mut names = state.broker.vhosts().names();
    names.sort();
    Json(names.into_iter().map(|name| VhostJson { name }).collect())
}

/// `GET /api/vhosts/{name}`.
pub(crate) async fn get_vhost(
    _admin: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<VhostJson>> {
    if !vhost_exists(&state.broker, &name) {
        return Err(no_vhost(&name));
    }
    Ok(Json(VhostJson { name }))
}

/// `PUT /api/vhosts/{name}`: creates it if missing.
pub(crate) async fn put_vhost(
    _admin: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    validate_vhost_name(&name)?;
    let created = !vhost_exists(&state.broker, &name);
    blocking(&state.broker, move |broker| broker.vhosts().add(&name)).await?;
    Ok(created_or_changed(created))
}

/// `DELETE /api/vhosts/{name}`: the vhost with everything in it, and every permission on it.
pub(crate) async fn delete_vhost(
    _admin: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if !vhost_exists(&state.broker, &name) {
        return Err(no_vhost(&name));
    }
    state.broker.vhosts().delete(&name).await?;
    blocking(&state.broker, move |broker| {
        broker.auth().clear_vhost(&name)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn vhost_exists(broker: &Broker, name: &str) -> bool {
    broker.vhosts().names().iter().any(|n| n == name)
}

fn no_vhost(name: &str) -> ApiError {
    ApiError::NotFound(format!("no vhost '{name}'"))
}

// ---- permissions ----

impl From<PermissionSpec> for PermissionJson {
    fn from(p: PermissionSpec) -> Self {
        PermissionJson {
            user: p.user,
            vhost: p.vhost,
            configure: p.configure,
            write: p.write,
            read: p.read,
        }
    }
}

/// Body of `PUT /api/permissions/{vhost}/{user}`.
#[derive(Debug, Deserialize)]
pub(crate) struct PutPermission {
    configure: String,
    write: String,
    read: String,
}

/// `GET /api/permissions`.
pub(crate) async fn list_permissions(
    _admin: Admin,
    State(state): State<AppState>,
) -> Json<Vec<PermissionJson>> {
    Json(
        state
            .broker
            .auth()
            .permissions()
            .into_iter()
            .map(PermissionJson::from)
            .collect(),
    )
}

/// `GET /api/permissions/{vhost}/{user}`.
pub(crate) async fn get_permission(
    _admin: Admin,
    State(state): State<AppState>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<PermissionJson>> {
    state
        .broker
        .auth()
        .permissions()
        .into_iter()
        .find(|p| p.vhost == vhost && p.user == user)
        .map(|p| Json(PermissionJson::from(p)))
        .ok_or_else(|| {
            ApiError::NotFound(format!("no permission of user '{user}' in vhost '{vhost}'"))
        })
}

/// `PUT /api/permissions/{vhost}/{user}` with `{"configure", "write", "read"}`.
pub(crate) async fn put_permission(
    _admin: Admin,
    State(state): State<AppState>,
    Path((vhost, user)): Path<(String, String)>,
    body: Option<Json<PutPermission>>,
) -> ApiResult<StatusCode> {
    let Json(body) = body.ok_or_else(|| {
        ApiError::BadRequest("a JSON body with configure, write and read is needed".into())
    })?;
    if !vhost_exists(&state.broker, &vhost) {
        return Err(ApiError::BadRequest(format!("no vhost '{vhost}'")));
    }
    let created = !state
        .broker
        .auth()
        .permissions()
        .iter()
        .any(|p| p.vhost == vhost && p.user == user);
    let spec = PermissionSpec {
        user,
        vhost,
        configure: body.configure,
        write: body.write,
        read: body.read,
    };
    blocking(&state.broker, move |broker| {
        broker.auth().set_permission(spec)
    })
    .await?;
    Ok(created_or_changed(created))
}

/// `DELETE /api/permissions/{vhost}/{user}`.
pub(crate) async fn delete_permission(
    _admin: Admin,
    State(state): State<AppState>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    blocking(&state.broker, move |broker| {
        broker.auth().clear_permission(&user, &vhost)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- queues, exchanges, bindings ----

/// A binding as listed.
#[derive(Debug, Serialize)]
pub(crate) struct BindingJson {
    source: String,
    vhost: String,
    destination: String,
    destination_type: &'static str,
    routing_key: String,
}

/// The vhosts a listing covers: all, or the one named (404 if missing).
fn listed_vhosts(broker: &Broker, only: Option<&str>) -> ApiResult<Vec<Arc<VHost>>> {
    match only {
        Some(name) => Ok(vec![broker
            .vhosts()
            .get(name)
            .map_err(|_| no_vhost(name))?]),
        None => {
            let mut names = broker.vhosts().names();
            names.sort();
            // A vhost deleted meanwhile is left out.
            Ok(names
                .iter()
                .filter_map(|name| broker.vhosts().get(name).ok())
                .collect())
        }
    }
}

fn queues_of(broker: &Broker, only: Option<&str>) -> ApiResult<Json<Vec<QueueJson>>> {
    let mut all = Vec::new();
    for vhost in listed_vhosts(broker, only)? {
        all.extend(vhost.queues().into_iter().map(|q| QueueJson {
            name: q.name,
            vhost: vhost.name().to_owned(),
            durable: q.durable,
            exclusive: q.exclusive,
            auto_delete: q.auto_delete,
            messages: q.messages,
            consumers: q.consumers,
        }));
    }
    Ok(Json(all))
}

fn exchanges_of(broker: &Broker, only: Option<&str>) -> ApiResult<Json<Vec<ExchangeJson>>> {
    let mut all = Vec::new();
    for vhost in listed_vhosts(broker, only)? {
        all.extend(vhost.exchanges().into_iter().map(|x| ExchangeJson {
            name: x.name,
            vhost: vhost.name().to_owned(),
            kind: x.kind.as_str().to_owned(),
            durable: x.durable,
            auto_delete: x.auto_delete,
            internal: x.internal,
        }));
    }
    Ok(Json(all))
}

fn bindings_of(broker: &Broker, only: Option<&str>) -> ApiResult<Json<Vec<BindingJson>>> {
    let mut all = Vec::new();
    for vhost in listed_vhosts(broker, only)? {
        all.extend(vhost.bindings().into_iter().map(|b| BindingJson {
            source: b.source,
            vhost: vhost.name().to_owned(),
            destination: b.destination,
            destination_type: b.destination_kind.as_str(),
            routing_key: b.routing_key,
        }));
    }
    Ok(Json(all))
}

/// `GET /api/queues`: every vhost's queues with message and consumer counts.
pub(crate) async fn list_queues(
    _admin: Admin,
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<QueueJson>>> {
    queues_of(&state.broker, None)
}

/// `GET /api/queues/{vhost}`.
pub(crate) async fn list_vhost_queues(
    _admin: Admin,
    State(state): State<AppState>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Vec<QueueJson>>> {
    queues_of(&state.broker, Some(&vhost))
}

/// `GET /api/exchanges`.
pub(crate) async fn list_exchanges(
    _admin: Admin,
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<ExchangeJson>>> {
    exchanges_of(&state.broker, None)
}

/// `GET /api/exchanges/{vhost}`.
pub(crate) async fn list_vhost_exchanges(
    _admin: Admin,
    State(state): State<AppState>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Vec<ExchangeJson>>> {
    exchanges_of(&state.broker, Some(&vhost))
}

/// `GET /api/bindings` (the default exchange's implicit bindings included).
pub(crate) async fn list_bindings(
    _admin: Admin,
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<BindingJson>>> {
    bindings_of(&state.broker, None)
}

/// `GET /api/bindings/{vhost}`.
pub(crate) async fn list_vhost_bindings(
    _admin: Admin,
    State(state): State<AppState>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Vec<BindingJson>>> {
    bindings_of(&state.broker, Some(&vhost))
}

// ---- topics ----

/// One partition of a listed topic.
#[derive(Debug, Serialize)]
pub(crate) struct PartitionJson {
    partition: u32,
    log_start_offset: i64,
    log_end_offset: i64,
    size_bytes: u64,
}

/// A topic as listed.
#[derive(Debug, Serialize)]
pub(crate) struct TopicJson {
    name: String,
    id: String,
    configs: BTreeMap<String, String>,
    partitions: Vec<PartitionJson>,
}

/// `GET /api/topics`: every topic with its partitions' offsets and sizes.
pub(crate) async fn list_topics(
    _admin: Admin,
    State(state): State<AppState>,
) -> Json<Vec<TopicJson>> {
    let broker = &state.broker;
    let topics = broker
        .topics()
        .into_iter()
        .map(|topic| {
            let partitions = (0..topic.partitions)
                .filter_map(|index| {
                    // A partition deleted meanwhile is left out.
                    let offsets = broker.partition_offsets(&topic.name, index).ok()?;
                    let size_bytes = broker.partition_size_bytes(&topic.name, index).ok()?;
                    Some(PartitionJson {
                        partition: index,
                        log_start_offset: offsets.log_start_offset,
                        log_end_offset: offsets.log_end_offset,
                        size_bytes,
                    })
                })
                .collect();
            TopicJson {
                id: topic.id.to_string(),
                configs: topic.config.overrides.clone(),
                name: topic.name,
                partitions,
            }
        })
        .collect();
    Json(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_parsed() {
        let header = format!("Basic {}", BASE64.encode("guest:gu:est"));
        assert_eq!(
            parse_basic(&header),
            Some(("guest".to_owned(), "gu:est".to_owned()))
        );
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
        assert_eq!(
            parse_basic(&format!("basic {}", BASE64.encode("nocolon"))),
            None
        );
    }

    #[test]
    fn tags_come_as_list_or_text() {
        let list: Tags = serde_json::from_str(r#"["a","b"]"#).expect("list");
        assert_eq!(list.into_vec(), vec!["a", "b"]);
        let text: Tags = serde_json::from_str(r#""a,b""#).expect("text");
        assert_eq!(text.into_vec(), vec!["a", "b"]);
    }
}
