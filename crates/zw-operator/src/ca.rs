//! The platform CA, made on the operator's first start and kept in the store (so every
//! replica of the operator signs with the same CA), and `POST /api/v1/certificates`.

use std::sync::Arc;

use axum::extract::State;
use axum::Extension;
use serde::{Deserialize, Serialize};
use zw_pki::{Ca, Role, SealingKey};
use zw_proto::api::{
    check_host, ApiError, CertificateRequest, FieldError, IssuedCertificate, TokenRole,
};
use zw_store::{Enrollable, Principal, Store};

use crate::error::{ApiResult, Error, Json};
use crate::App;

const SETTING: &str = "platform_ca";
/// `zeitwork up`'s local issuer of HTTPS certificates (as Caddy's local CA): a CA of its
/// own, kept like the platform CA, whose root the user trusts.
pub(crate) const LOCAL_ISSUER: (&str, &str, &str) = (
    "local_issuer_ca",
    "local_issuer_ca.key",
    "Zeitwork local CA",
);

/// The CA as the store keeps it: the certificate in clear, the private key sealed.
#[derive(Serialize, Deserialize)]
struct StoredCa {
    cert: String,
    /// The key in clear, as versions before sealing kept it; read once and replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_key: Option<String>,
}

/// What the CA's key is sealed for: a sealed value of another purpose does not open here.
const PURPOSE: &str = "platform_ca.key";

fn stored(ca: &Ca, key: &SealingKey, purpose: &str) -> Result<String, String> {
    let sealed = key
        .seal(ca.key_pem().as_bytes(), purpose)
        .map_err(|e| e.to_string())?;
    serde_json::to_string(&StoredCa {
        cert: ca.cert_pem().to_string(),
        key: None,
        sealed_key: Some(sealed),
    })
    .map_err(|e| e.to_string())
}

/// The CA, loaded from the store or made there on first use.
pub(crate) async fn load_or_create(store: &Store, key: &SealingKey) -> Result<Ca, String> {
    load_or_create_named(store, key, (SETTING, PURPOSE, "Zeitwork platform CA")).await
}

/// A CA kept in setting `setting` with its key sealed for `purpose`, named `name` when
/// made.
pub(crate) async fn load_or_create_named(
    store: &Store,
    key: &SealingKey,
    (setting, purpose, name): (&str, &str, &str),
) -> Result<Ca, String> {
    let text = match store.setting(setting).await.map_err(|e| e.to_string())? {
        Some(s) => s,
        None => {
            let fresh = stored(
                &Ca::generate_named(name).map_err(|e| e.to_string())?,
                key,
                purpose,
            )?;
            // Another replica may have won the race; its CA is the one.
            let text = store
                .init_setting(setting, &fresh)
                .await
                .map_err(|e| e.to_string())?;
            if text == fresh && setting == SETTING {
                tracing::info!("platform CA created; its key is sealed in the store");
            } else if text == fresh {
                tracing::info!(ca = name, "CA created; its key is sealed in the store");
            }
            text
        }
    };
    let s: StoredCa =
        serde_json::from_str(&text).map_err(|e| format!("stored platform CA: {e}"))?;
    match (s.sealed_key, s.key) {
        (Some(sealed), _) => {
            let pem = key.open(&sealed, purpose).map_err(|_| {
                "the platform CA's key in the store was sealed with another sealing key: \
                 give this operator the secret-key file of the operator that made the CA \
                 (every operator on one database needs the same one)"
                    .to_string()
            })?;
            let pem = String::from_utf8(pem).map_err(|_| "stored platform CA: key is not PEM")?;
            Ca::from_pem(&s.cert, &pem).map_err(|e| format!("stored platform CA: {e}"))
        }
        (None, Some(clear)) => {
            let ca =
                Ca::from_pem(&s.cert, &clear).map_err(|e| format!("stored platform CA: {e}"))?;
            // Kept in clear by an earlier version: seal it now (only if no replica did).
            let sealed = stored(&ca, key, purpose)?;
            if store
                .replace_setting(setting, &text, &sealed)
                .await
                .map_err(|e| e.to_string())?
            {
                tracing::info!("the platform CA's key was stored in clear; it is sealed now");
            }
            Ok(ca)
        }
        (None, None) => Err("stored platform CA has no key".into()),
    }
}

pub(crate) async fn ca(app: &App) -> Result<Arc<Ca>, Error> {
    app.ca
        .get_or_try_init(|| async {
            load_or_create(&app.store, &app.sealing_key)
                .await
                .map(Arc::new)
        })
        .await
        .cloned()
        .map_err(|e| Error::new(http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e))
}

#[utoipa::path(post, path = "/api/v1/certificates", tag = "certificates", request_body = CertificateRequest,
    responses((status = 200, body = IssuedCertificate), (status = 403, body = ApiError), (status = 422, body = ApiError)))]
pub(crate) async fn issue(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    Json(req): Json<CertificateRequest>,
) -> ApiResult<axum::Json<IssuedCertificate>> {
    let role = match (principal.role(), req.role) {
        (Some(token), None) => token,
        (Some(token), Some(asked)) if token == asked => token,
        (Some(token), Some(asked)) => {
            return Err(Error::invalid(FieldError::new(
                "role",
                format!("a {token} join token cannot get a {asked} certificate"),
            )))
        }
        (None, Some(asked)) => asked,
        (None, None) => {
            return Err(Error::invalid(FieldError::new(
                "role",
                "say which certificate: `edge` or `agent`",
            )))
        }
    };
    zw_proto::api::check_id("name", &req.name).map_err(Error::invalid)?;
    if req.names.len() > 16 {
        return Err(Error::invalid(FieldError::new("names", "at most 16 names")));
    }
    for (i, n) in req.names.iter().enumerate() {
        check_host(&format!("names[{i}]"), n).map_err(Error::invalid)?;
    }
    let ca = ca(&app).await?;
    let token_role = role;
    let role = match role {
        TokenRole::Edge => Role::Edge,
        TokenRole::Agent => Role::Node,
    };
    let certificate = ca
        .sign(
            &req.csr,
            role,
            &req.name,
            &req.names,
            zw_http::CERT_VALIDITY,
        )
        .map_err(|e| Error::invalid(FieldError::new("csr", e.to_string())))?;
    // Signed, not yet handed out: a request that fails a check before the enrollment
    // below binds no token to anything.
    if token_role == TokenRole::Agent {
        // A node certificate for another node's address would let its holder pose as
        // that node's ingress to the edges. Loopback is exempt: several agents on one
        // machine share it, and nothing off the machine can reach it.
        let loopback = |n: &str| {
            n == "localhost"
                || n.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        };
        for (i, n) in req.names.iter().enumerate().filter(|(_, n)| !loopback(n)) {
            let holders = app.store.nodes_at(n).await?;
            if let Some(other) = holders.iter().find(|id| **id != req.name) {
                return Err(Error::new(
                    http::StatusCode::CONFLICT,
                    "conflict",
                    format!("{n} is node {other}'s address; a node certificate names only its own"),
                )
                .field(format!("names[{i}]")));
            }
        }
    }
    // A join token gets a certificate for the one identity it enrolls, and a node's
    // certificate names only what the operator recorded for that node.
    let recorded = match principal.token_id() {
        None => None,
        Some(token) => {
            let table = match token_role {
                TokenRole::Agent => Enrollable::Node,
                TokenRole::Edge => Enrollable::Edge,
            };
            app.store.enroll(table, &req.name, token).await?
        }
    };
    if let Some(recorded) = &recorded {
        for (i, n) in req.names.iter().enumerate() {
            if !recorded.iter().any(|r| r.eq_ignore_ascii_case(n)) {
                return Err(Error::new(
                    http::StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "node {} is recorded at {}; its certificate may name only those",
                        req.name,
                        recorded.join(", ")
                    ),
                )
                .field(format!("names[{i}]")));
            }
        }
    }
    tracing::info!(name = %req.name, ?role, names = ?req.names, "platform certificate issued");
    Ok(axum::Json(IssuedCertificate {
        certificate,
        ca: ca.cert_pem().to_string(),
    }))
}
