//! The REST API under `/api/v1`. Handlers are thin: decode, call the store, encode.
//! The OpenAPI document (`/api/v1/openapi.json`) is generated from these handlers' annotations.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi};
use zw_proto::api::*;
use zw_proto::time::Timestamp;
use zw_store::{InstanceFilter, NodeFilter, Store};

use crate::error::{ApiResult, Error, Json, Query};
use crate::{edge_ws, App};

type Created<T> = (StatusCode, axum::Json<T>);

fn created<T>(v: T) -> Created<T> {
    (StatusCode::CREATED, axum::Json(v))
}

/// Pagination: up to `limit` items (default 100, at most 500) after the key `after`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    pub limit: Option<u32>,
    pub after: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NodeParams {
    pub limit: Option<u32>,
    pub after: Option<String>,
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub node_type: Option<NodeType>,
    pub state: Option<NodeState>,
    pub region: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InstanceParams {
    pub limit: Option<u32>,
    pub after: Option<String>,
    pub deployment: Option<String>,
    pub node: Option<String>,
    pub state: Option<InstanceState>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RetiringParams {
    /// The deployment (it may be deleted already).
    pub deployment: String,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DomainParams {
    pub limit: Option<u32>,
    pub after: Option<String>,
    pub deployment: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EdgeParams {
    pub limit: Option<u32>,
    pub after: Option<String>,
    pub region: Option<String>,
}

/// Heartbeat body: the node's current resources, when they changed.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub resources: Option<Resources>,
}

/// The newest routing snapshot of a region.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SnapshotInfo {
    pub region: String,
    pub version: u64,
    pub hash: String,
    /// The configuration, in the edge's dynamic-configuration model.
    #[schema(value_type = Object)]
    pub snapshot: Box<serde_json::value::RawValue>,
}

pub fn router(app: App) -> Router {
    let api = Router::new()
        .route("/regions", get(list_regions).post(create_region))
        .route(
            "/regions/{name}",
            get(get_region).patch(update_region).delete(delete_region),
        )
        .route("/nodes", get(list_nodes).post(create_node))
        .route(
            "/nodes/{id}",
            get(get_node).patch(update_node).delete(delete_node),
        )
        .route("/nodes/{id}/heartbeat", post(heartbeat))
        .route("/images", get(list_images).post(create_image))
        .route("/images/{name}", get(get_image).delete(delete_image))
        .route(
            "/deployments",
            get(list_deployments).post(create_deployment),
        )
        .route(
            "/deployments/{name}",
            get(get_deployment)
                .patch(update_deployment)
                .delete(delete_deployment),
        )
        .route("/instances", get(list_instances).post(create_instance))
        .route("/retiring-instances", get(list_retiring))
        .route("/tls-certificates", get(list_tls_certificates))
        .route(
            "/instances/{id}",
            get(get_instance)
                .patch(update_instance)
                .delete(delete_instance),
        )
        .route("/domains", get(list_domains).post(create_domain))
        .route(
            "/domains/{name}",
            get(get_domain).patch(update_domain).delete(delete_domain),
        )
        .route("/edge-proxies", get(list_edges).post(create_edge))
        .route(
            "/edge-proxies/{id}",
            get(get_edge).patch(update_edge).delete(delete_edge),
        )
        .route("/join-tokens", get(list_tokens).post(create_token))
        .route("/join-tokens/{id}", axum::routing::delete(delete_token))
        .route("/apply", post(apply))
        .route("/deployments/{name}/releases", get(list_releases))
        .route("/deployments/{name}/releases/{version}", get(get_release))
        .route("/deployments/{name}/rollback", post(rollback))
        .route("/deployments/{name}/logs", get(crate::logs::logs))
        .route(
            "/deployments/{name}/secrets",
            get(list_secrets).patch(change_secrets),
        )
        .route("/snapshots/{region}", get(get_snapshot))
        .route("/openapi.json", get(openapi))
        .route("/edge/connect", get(edge_ws::connect))
        .route("/agent/connect", get(crate::agent_ws::connect))
        .route("/certificates", post(crate::ca::issue))
        .fallback(|| async { Error::not_found("endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            authenticate,
        ));
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .nest("/api/v1", api)
        .fallback(|| async { Error::not_found("endpoint") })
        .with_state(app)
}

/// Every `/api/v1` request needs a token. Join tokens for edges may open the control
/// connection and read the edge list (what balancers need); everything else is the admin's.
async fn authenticate(
    State(app): State<App>,
    mut req: axum::extract::Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let principal = match token {
        Some(t) => match app.store.authenticate(t).await {
            Ok(p) => p,
            Err(e) => return Error::from(e).into_response(),
        },
        None => None,
    };
    let Some(principal) = principal else {
        return Error::unauthorized().into_response();
    };
    // By route, exactly: a join token's few endpoints are named in full (a suffix match
    // once let an edge token read any resource whose name was `edge-proxies`).
    let path = req.uri().path();
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    let (get, post) = (
        req.method() == http::Method::GET,
        req.method() == http::Method::POST,
    );
    let allowed = match principal.role() {
        None => true,
        Some(_) if post && path == "/certificates" => true,
        Some(TokenRole::Edge) => get && (path == "/edge/connect" || path == "/edge-proxies"),
        Some(TokenRole::Agent) => get && path == "/agent/connect",
    };
    if !allowed {
        return Error::forbidden().into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

fn store(app: &App) -> &Store {
    &app.store
}

// ---------- regions ----------

#[utoipa::path(get, path = "/api/v1/regions", tag = "regions", params(ListParams),
    responses((status = 200, body = Page<Region>), (status = 401, body = ApiError)))]
async fn list_regions(
    State(app): State<App>,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Page<Region>>> {
    Ok(axum::Json(
        store(&app).regions(p.after.as_deref(), p.limit).await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/regions", tag = "regions", request_body = NewRegion,
    responses((status = 201, body = Region), (status = 400, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn create_region(
    State(app): State<App>,
    Json(new): Json<NewRegion>,
) -> ApiResult<Created<Region>> {
    Ok(created(store(&app).create_region(new).await?))
}

#[utoipa::path(get, path = "/api/v1/regions/{name}", tag = "regions",
    responses((status = 200, body = Region), (status = 404, body = ApiError)))]
async fn get_region(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Region>> {
    Ok(axum::Json(store(&app).region(&name).await?))
}

#[utoipa::path(patch, path = "/api/v1/regions/{name}", tag = "regions", request_body = RegionPatch,
    responses((status = 200, body = Region), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
async fn update_region(
    State(app): State<App>,
    Path(name): Path<String>,
    Json(p): Json<RegionPatch>,
) -> ApiResult<axum::Json<Region>> {
    Ok(axum::Json(store(&app).update_region(&name, p).await?))
}

#[utoipa::path(delete, path = "/api/v1/regions/{name}", tag = "regions",
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn delete_region(State(app): State<App>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    store(&app).delete_region(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------- nodes ----------

#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", params(NodeParams),
    responses((status = 200, body = Page<Node>)))]
async fn list_nodes(
    State(app): State<App>,
    Query(p): Query<NodeParams>,
) -> ApiResult<axum::Json<Page<Node>>> {
    let filter = NodeFilter {
        node_type: p.node_type,
        state: p.state,
        region: p.region,
    };
    Ok(axum::Json(
        store(&app)
            .nodes(&filter, p.after.as_deref(), p.limit)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/nodes", tag = "nodes", request_body = NewNode,
    responses((status = 201, body = Node), (status = 400, body = ApiError), (status = 422, body = ApiError)))]
async fn create_node(State(app): State<App>, Json(new): Json<NewNode>) -> ApiResult<Created<Node>> {
    Ok(created(store(&app).create_node(new).await?))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}", tag = "nodes",
    responses((status = 200, body = Node), (status = 404, body = ApiError)))]
async fn get_node(State(app): State<App>, Path(id): Path<String>) -> ApiResult<axum::Json<Node>> {
    Ok(axum::Json(store(&app).node(&id).await?))
}

#[utoipa::path(patch, path = "/api/v1/nodes/{id}", tag = "nodes", request_body = NodePatch,
    responses((status = 200, body = Node), (status = 404, body = ApiError)))]
async fn update_node(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(p): Json<NodePatch>,
) -> ApiResult<axum::Json<Node>> {
    Ok(axum::Json(store(&app).update_node(&id, p).await?))
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/heartbeat", tag = "nodes", request_body = Heartbeat,
    responses((status = 200, body = Node), (status = 404, body = ApiError)))]
async fn heartbeat(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(h): Json<Heartbeat>,
) -> ApiResult<axum::Json<Node>> {
    Ok(axum::Json(store(&app).heartbeat(&id, h.resources).await?))
}

#[utoipa::path(delete, path = "/api/v1/nodes/{id}", tag = "nodes",
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn delete_node(State(app): State<App>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    store(&app).delete_node(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------- images ----------

#[utoipa::path(get, path = "/api/v1/images", tag = "images", params(ListParams),
    responses((status = 200, body = Page<Image>)))]
async fn list_images(
    State(app): State<App>,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Page<Image>>> {
    Ok(axum::Json(
        store(&app).images(p.after.as_deref(), p.limit).await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/images", tag = "images", request_body = NewImage,
    responses((status = 201, body = Image), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn create_image(
    State(app): State<App>,
    Json(new): Json<NewImage>,
) -> ApiResult<Created<Image>> {
    Ok(created(store(&app).create_image(new).await?))
}

#[utoipa::path(get, path = "/api/v1/images/{name}", tag = "images",
    responses((status = 200, body = Image), (status = 404, body = ApiError)))]
async fn get_image(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Image>> {
    Ok(axum::Json(store(&app).image(&name).await?))
}

#[utoipa::path(delete, path = "/api/v1/images/{name}", tag = "images",
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn delete_image(State(app): State<App>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    store(&app).delete_image(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------- deployments ----------

#[utoipa::path(get, path = "/api/v1/deployments", tag = "deployments", params(ListParams),
    responses((status = 200, body = Page<Deployment>)))]
async fn list_deployments(
    State(app): State<App>,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Page<Deployment>>> {
    Ok(axum::Json(
        store(&app).deployments(p.after.as_deref(), p.limit).await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/deployments", tag = "deployments", request_body = NewDeployment,
    responses((status = 201, body = Deployment), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn create_deployment(
    State(app): State<App>,
    Json(new): Json<NewDeployment>,
) -> ApiResult<Created<Deployment>> {
    Ok(created(store(&app).create_deployment(new).await?))
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}", tag = "deployments",
    responses((status = 200, body = Deployment), (status = 404, body = ApiError)))]
async fn get_deployment(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Deployment>> {
    Ok(axum::Json(store(&app).deployment(&name).await?))
}

#[utoipa::path(patch, path = "/api/v1/deployments/{name}", tag = "deployments", request_body = DeploymentPatch,
    responses((status = 200, body = Deployment), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
async fn update_deployment(
    State(app): State<App>,
    Path(name): Path<String>,
    Json(p): Json<DeploymentPatch>,
) -> ApiResult<axum::Json<Deployment>> {
    Ok(axum::Json(store(&app).update_deployment(&name, p).await?))
}

#[utoipa::path(delete, path = "/api/v1/deployments/{name}", tag = "deployments",
    responses((status = 204), (status = 404, body = ApiError)))]
async fn delete_deployment(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    store(&app).delete_deployment(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/apply", tag = "deployments", request_body = ApplySpec,
    responses((status = 200, body = Applied), (status = 400, body = ApiError), (status = 422, body = ApiError)))]
async fn apply(
    State(app): State<App>,
    headers: axum::http::HeaderMap,
    Json(spec): Json<ApplySpec>,
) -> ApiResult<axum::Json<Applied>> {
    Ok(axum::Json(
        store(&app).apply_by(spec, &actor(&headers)).await?,
    ))
}

/// Who makes a release: the admin token, with the user the command line names in
/// `Zeitwork-User` (its word, recorded as such: every admin caller holds the same token).
fn actor(headers: &axum::http::HeaderMap) -> String {
    match headers
        .get("zeitwork-user")
        .and_then(|v| v.to_str().ok())
        .map(|u| zw_proto::abbreviate(u.trim(), 128))
        .filter(|u| !u.is_empty())
    {
        Some(user) => format!("admin ({user})"),
        None => "admin".into(),
    }
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}/releases", tag = "releases",
    responses((status = 200, body = Releases)))]
async fn list_releases(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Releases>> {
    Ok(axum::Json(Releases {
        items: store(&app).releases(&name).await?,
    }))
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}/releases/{version}", tag = "releases",
    responses((status = 200, body = Release)))]
async fn get_release(
    State(app): State<App>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<axum::Json<Release>> {
    // parsed here, so that a bad one gets the API's JSON error, not the extractor's text
    let version: u64 = version.trim_start_matches('v').parse().map_err(|_| {
        Error::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "`{}` is not a release number (3 or v3)",
                zw_proto::abbreviate(&version, 32)
            ),
        )
        .field("version")
    })?;
    Ok(axum::Json(store(&app).release(&name, version).await?))
}

/// Makes a new release equal to an earlier one and rolls to it.
#[utoipa::path(post, path = "/api/v1/deployments/{name}/rollback", tag = "releases", request_body = RollbackRequest,
    responses((status = 200, body = Release)))]
async fn rollback(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    Json(r): Json<RollbackRequest>,
) -> ApiResult<axum::Json<Release>> {
    Ok(axum::Json(
        store(&app)
            .rollback(&name, r.version, &actor(&headers))
            .await?,
    ))
}

/// The secrets' names and when each was set; never a value.
#[utoipa::path(get, path = "/api/v1/deployments/{name}/secrets", tag = "releases",
    responses((status = 200, body = Secrets)))]
async fn list_secrets(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Secrets>> {
    Ok(axum::Json(Secrets {
        items: store(&app).secrets(&name).await?,
    }))
}

/// Sets and removes secrets in one new release. The values are sealed with the
/// operator's key before they are stored, and are never returned.
#[utoipa::path(patch, path = "/api/v1/deployments/{name}/secrets", tag = "releases", request_body = SecretsPatch,
    responses((status = 200, body = Release)))]
async fn change_secrets(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    Json(p): Json<SecretsPatch>,
) -> ApiResult<axum::Json<Release>> {
    for (k, v) in &p.set {
        let field = format!("set.{k}");
        zw_store::check_var_name(&field, k).map_err(Error::invalid)?;
        // an environment variable cannot hold a NUL, and the value is kept small
        if v.contains('\0') || v.len() > 12 << 10 {
            return Err(Error::invalid(FieldError::new(
                field,
                "a secret's value is at most 12 KiB and holds no NUL character",
            )));
        }
    }
    let sealed = crate::secrets::seal(&app.sealing_key, &name, p.set).map_err(|e| {
        tracing::error!(error = %e, "sealing a secret failed");
        Error::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "sealing the secret failed",
        )
    })?;
    Ok(axum::Json(
        store(&app)
            .change_secrets(&name, sealed, &p.unset, &actor(&headers))
            .await?,
    ))
}

// ---------- instances ----------

/// What `zeitwork destroy` waits for: instances let go of whose agent has not yet said
/// they stopped.
#[utoipa::path(get, path = "/api/v1/retiring-instances", tag = "instances", params(RetiringParams),
    responses((status = 200, body = RetiringInstances)))]
async fn list_retiring(
    State(app): State<App>,
    Query(p): Query<RetiringParams>,
) -> ApiResult<axum::Json<RetiringInstances>> {
    Ok(axum::Json(RetiringInstances {
        items: store(&app).retiring(&p.deployment).await?,
    }))
}

/// The domains' HTTPS certificates: issuer, validity, status and the last order error.
#[utoipa::path(get, path = "/api/v1/tls-certificates", tag = "domains",
    responses((status = 200, body = TlsCertificates)))]
async fn list_tls_certificates(State(app): State<App>) -> ApiResult<axum::Json<TlsCertificates>> {
    let items = store(&app)
        .tls_certificates()
        .await?
        .into_iter()
        .map(|c| TlsCertificateInfo {
            domain: c.domain,
            issuer: c.issuer,
            not_before: c.not_before.map(|s| Timestamp(s.saturating_mul(1000))),
            not_after: c.not_after.map(|s| Timestamp(s.saturating_mul(1000))),
            status: c.status,
            last_error: c.last_error,
            orders: c.orders.max(0) as u64,
            updated_at: Timestamp(c.updated_at),
        })
        .collect();
    Ok(axum::Json(TlsCertificates { items }))
}

#[utoipa::path(get, path = "/api/v1/instances", tag = "instances", params(InstanceParams),
    responses((status = 200, body = Page<Instance>)))]
async fn list_instances(
    State(app): State<App>,
    Query(p): Query<InstanceParams>,
) -> ApiResult<axum::Json<Page<Instance>>> {
    let filter = InstanceFilter {
        deployment: p.deployment,
        node: p.node,
        state: p.state,
    };
    Ok(axum::Json(
        store(&app)
            .instances(&filter, p.after.as_deref(), p.limit)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/instances", tag = "instances", request_body = NewInstance,
    responses((status = 201, body = Instance), (status = 422, body = ApiError)))]
async fn create_instance(
    State(app): State<App>,
    Json(new): Json<NewInstance>,
) -> ApiResult<Created<Instance>> {
    Ok(created(store(&app).create_instance(new).await?))
}

#[utoipa::path(get, path = "/api/v1/instances/{id}", tag = "instances",
    responses((status = 200, body = Instance), (status = 404, body = ApiError)))]
async fn get_instance(
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Instance>> {
    Ok(axum::Json(store(&app).instance(&id).await?))
}

#[utoipa::path(patch, path = "/api/v1/instances/{id}", tag = "instances", request_body = InstancePatch,
    responses((status = 200, body = Instance), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
async fn update_instance(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(p): Json<InstancePatch>,
) -> ApiResult<axum::Json<Instance>> {
    Ok(axum::Json(store(&app).update_instance(&id, p).await?))
}

#[utoipa::path(delete, path = "/api/v1/instances/{id}", tag = "instances",
    responses((status = 204), (status = 404, body = ApiError)))]
async fn delete_instance(State(app): State<App>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    store(&app).delete_instance(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------- domains ----------

#[utoipa::path(get, path = "/api/v1/domains", tag = "domains", params(DomainParams),
    responses((status = 200, body = Page<Domain>)))]
async fn list_domains(
    State(app): State<App>,
    Query(p): Query<DomainParams>,
) -> ApiResult<axum::Json<Page<Domain>>> {
    Ok(axum::Json(
        store(&app)
            .domains(p.deployment.as_deref(), p.after.as_deref(), p.limit)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/domains", tag = "domains", request_body = NewDomain,
    responses((status = 201, body = Domain), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn create_domain(
    State(app): State<App>,
    Json(new): Json<NewDomain>,
) -> ApiResult<Created<Domain>> {
    Ok(created(store(&app).create_domain(new).await?))
}

#[utoipa::path(get, path = "/api/v1/domains/{name}", tag = "domains",
    responses((status = 200, body = Domain), (status = 404, body = ApiError)))]
async fn get_domain(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Domain>> {
    Ok(axum::Json(store(&app).domain(&name).await?))
}

#[utoipa::path(patch, path = "/api/v1/domains/{name}", tag = "domains", request_body = DomainPatch,
    responses((status = 200, body = Domain), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
async fn update_domain(
    State(app): State<App>,
    Path(name): Path<String>,
    Json(p): Json<DomainPatch>,
) -> ApiResult<axum::Json<Domain>> {
    Ok(axum::Json(store(&app).update_domain(&name, p).await?))
}

#[utoipa::path(delete, path = "/api/v1/domains/{name}", tag = "domains",
    responses((status = 204), (status = 404, body = ApiError)))]
async fn delete_domain(State(app): State<App>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    store(&app).delete_domain(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------- edge proxies ----------

#[utoipa::path(get, path = "/api/v1/edge-proxies", tag = "edge-proxies", params(EdgeParams),
    responses((status = 200, body = Page<EdgeProxy>)))]
async fn list_edges(
    State(app): State<App>,
    Query(p): Query<EdgeParams>,
) -> ApiResult<axum::Json<Page<EdgeProxy>>> {
    Ok(axum::Json(
        store(&app)
            .edge_proxies(p.region.as_deref(), p.after.as_deref(), p.limit)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/edge-proxies", tag = "edge-proxies", request_body = NewEdgeProxy,
    responses((status = 201, body = EdgeProxy), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn create_edge(
    State(app): State<App>,
    Json(new): Json<NewEdgeProxy>,
) -> ApiResult<Created<EdgeProxy>> {
    Ok(created(store(&app).create_edge_proxy(new).await?))
}

#[utoipa::path(get, path = "/api/v1/edge-proxies/{id}", tag = "edge-proxies",
    responses((status = 200, body = EdgeProxy), (status = 404, body = ApiError)))]
async fn get_edge(
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<EdgeProxy>> {
    Ok(axum::Json(store(&app).edge_proxy(&id).await?))
}

#[utoipa::path(patch, path = "/api/v1/edge-proxies/{id}", tag = "edge-proxies", request_body = EdgeProxyPatch,
    responses((status = 200, body = EdgeProxy), (status = 404, body = ApiError)))]
async fn update_edge(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(p): Json<EdgeProxyPatch>,
) -> ApiResult<axum::Json<EdgeProxy>> {
    Ok(axum::Json(store(&app).update_edge_proxy(&id, p).await?))
}

#[utoipa::path(delete, path = "/api/v1/edge-proxies/{id}", tag = "edge-proxies",
    responses((status = 204), (status = 404, body = ApiError)))]
async fn delete_edge(State(app): State<App>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    store(&app).delete_edge_proxy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------- join tokens ----------

#[utoipa::path(get, path = "/api/v1/join-tokens", tag = "join-tokens", params(ListParams),
    responses((status = 200, body = Page<JoinToken>)))]
async fn list_tokens(
    State(app): State<App>,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Page<JoinToken>>> {
    Ok(axum::Json(
        store(&app).join_tokens(p.after.as_deref(), p.limit).await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/join-tokens", tag = "join-tokens", request_body = NewJoinToken,
    responses((status = 201, body = JoinToken, description = "the token is shown in this answer only")))]
async fn create_token(
    State(app): State<App>,
    Json(new): Json<NewJoinToken>,
) -> ApiResult<Created<JoinToken>> {
    Ok(created(store(&app).create_join_token(new.role).await?))
}

#[utoipa::path(delete, path = "/api/v1/join-tokens/{id}", tag = "join-tokens",
    responses((status = 204), (status = 404, body = ApiError)))]
async fn delete_token(State(app): State<App>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    store(&app).delete_join_token(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------- snapshots and the document ----------

#[utoipa::path(get, path = "/api/v1/snapshots/{region}", tag = "snapshots",
    responses((status = 200, body = SnapshotInfo), (status = 404, body = ApiError)))]
async fn get_snapshot(
    State(app): State<App>,
    Path(region): Path<String>,
) -> ApiResult<axum::Json<SnapshotInfo>> {
    let s = store(&app)
        .latest_snapshot(&region)
        .await?
        .ok_or_else(|| Error::not_found(&format!("a snapshot for region `{region}`")))?;
    let snapshot = serde_json::value::RawValue::from_string(s.body).map_err(|e| {
        Error::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("stored snapshot is not JSON: {e}"),
        )
    })?;
    Ok(axum::Json(SnapshotInfo {
        region: s.region,
        version: s.version,
        hash: s.hash,
        snapshot,
    }))
}

async fn openapi() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Declares, on every operation, the error statuses the shared layers can answer with
/// (the handlers declare only their own): the token check (401, 403), the JSON body
/// extractor (400, 413, 415, then 422 for a bad value and 409 for a conflict), query and
/// path decoding (400) and lookups (404). Each carries the error body. It also declares
/// the `{name}` path parameters the handlers leave implicit. Without this the document
/// said less than the server does, and clients generated from it broke on the rest.
struct ErrorResponses;

impl utoipa::Modify for ErrorResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::{ContentBuilder, HttpMethod, Ref, Required, ResponseBuilder};
        let error = |what: &str| {
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ApiError")))
                        .build(),
                )
                .build()
        };
        let every: &[(&str, &str)] = &[
            (
                "400",
                "malformed request: bad JSON, a wrong type, an unknown field or parameter",
            ),
            ("401", "no token, or not a valid one"),
            ("403", "the token may not do this"),
            ("404", "no such resource"),
        ];
        let with_body: &[(&str, &str)] = &[
            (
                "409",
                "conflicts with what exists (a duplicate, a domain another app serves)",
            ),
            ("413", "the body is over 1 MiB"),
            (
                "415",
                "the body is not JSON (send Content-Type: application/json)",
            ),
            ("422", "a value is not acceptable; `field` names it"),
        ];
        for (path, item) in doc.paths.paths.iter_mut() {
            // `{name}` in a path is a parameter every operation on it takes
            let names: Vec<&str> = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            let ops = [
                (HttpMethod::Get, item.get.as_mut()),
                (HttpMethod::Post, item.post.as_mut()),
                (HttpMethod::Put, item.put.as_mut()),
                (HttpMethod::Patch, item.patch.as_mut()),
                (HttpMethod::Delete, item.delete.as_mut()),
            ];
            for (method, op) in ops {
                let Some(op) = op else { continue };
                let params = op.parameters.get_or_insert_with(Vec::new);
                for name in &names {
                    if !params.iter().any(|p| p.name == *name) {
                        params.push(
                            ParameterBuilder::new()
                                .name(*name)
                                .parameter_in(ParameterIn::Path)
                                .required(Required::True)
                                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                                .build(),
                        );
                    }
                }
                let has_body = op.request_body.is_some();
                let extra: &[(&str, &str)] = match method {
                    _ if has_body => with_body,
                    // deleting what is still in use
                    HttpMethod::Delete => &with_body[..1],
                    _ => &[],
                };
                for (code, what) in every.iter().chain(extra) {
                    op.responses
                        .responses
                        .entry((*code).to_string())
                        .or_insert_with(|| error(what).into());
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Zeitwork operator API", description = "The control plane's REST API. Every endpoint but /health needs `Authorization: Bearer <token>`."),
    modifiers(&BearerAuth, &ErrorResponses),
    security(("token" = [])),
    paths(
        list_regions, create_region, get_region, update_region, delete_region,
        list_nodes, create_node, get_node, update_node, heartbeat, delete_node,
        list_images, create_image, get_image, delete_image,
        list_deployments, create_deployment, get_deployment, update_deployment, delete_deployment, apply,
        list_releases, get_release, rollback, list_secrets, change_secrets, crate::logs::logs,
        list_instances, list_retiring, list_tls_certificates, create_instance, get_instance, update_instance, delete_instance,
        list_domains, create_domain, get_domain, update_domain, delete_domain,
        list_edges, create_edge, get_edge, update_edge, delete_edge,
        list_tokens, create_token, delete_token,
        get_snapshot,
        crate::ca::issue,
    )
)]
pub struct ApiDoc;
