//! Every error answer is JSON: `{"code", "message", "field"}`. Bodies and query strings go
//! through extractors of ours so that a type error, an unknown field or an oversize body
//! gets the same shape, naming the field at fault.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;
use serde::de::DeserializeOwned;
use zw_proto::api::ApiError;
use zw_store::StoreError;

/// Largest request body the API reads.
pub const MAX_BODY: usize = 1 << 20;

#[derive(Debug)]
pub struct Error {
    pub status: StatusCode,
    pub body: ApiError,
}

impl Error {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Error {
        Error {
            status,
            body: ApiError {
                code: code.to_string(),
                message: message.into(),
                field: None,
            },
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Error {
        let f: String = field.into();
        self.body.field = (!f.is_empty()).then_some(f);
        self
    }

    /// 422 naming the offending field.
    pub fn invalid(e: zw_proto::api::FieldError) -> Error {
        Error::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.message).field(e.field)
    }

    pub fn unauthorized() -> Error {
        Error::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid token: send `Authorization: Bearer <token>`",
        )
    }

    pub fn forbidden() -> Error {
        Error::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token may not use this endpoint",
        )
    }

    pub fn not_found(what: &str) -> Error {
        Error::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::NotFound { .. } => {
                Error::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            StoreError::Conflict(f) => {
                Error::new(StatusCode::CONFLICT, "conflict", f.to_string()).field(f.field)
            }
            StoreError::Invalid(f) => {
                Error::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", f.to_string())
                    .field(f.field)
            }
            StoreError::Forbidden(m) => Error::new(StatusCode::FORBIDDEN, "forbidden", m),
            StoreError::Db(_) | StoreError::Other(_) => {
                // The details are for the operator's log, not for API clients.
                tracing::error!(error = %e, "store error");
                Error::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the state store failed; see the operator's log",
                )
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, Error>;

/// A JSON body of at most [`MAX_BODY`] bytes, decoded with the failing field named.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ct) = req.headers().get(http::header::CONTENT_TYPE) {
            if !is_json(ct.as_bytes()) {
                return Err(Error::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!(
                        "request bodies are JSON: send `Content-Type: application/json` (got `{}`)",
                        String::from_utf8_lossy(ct.as_bytes())
                    ),
                ));
            }
        }
        let body: Body = req.into_body();
        let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
            Error::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request bodies are limited to {MAX_BODY} bytes"),
            )
        })?;
        decode_json(&bytes).map(Json)
    }
}

/// `application/json` or a `+json` type, any parameters (`; charset=utf-8`) ignored. A
/// request without the header is taken as JSON, as most API clients send it so; one that
/// names another type (curl's `-d` form encoding, `text/plain`) is refused rather than
/// guessed at.
fn is_json(content_type: &[u8]) -> bool {
    let text = String::from_utf8_lossy(content_type);
    let media = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // the path includes an unknown field's own name; "." is the whole body
        let field = if path == "." { String::new() } else { path };
        let message = if field.is_empty() {
            format!("invalid JSON body: {message}")
        } else {
            format!("{field}: {message}")
        };
        Error::new(StatusCode::BAD_REQUEST, "bad_request", message).field(field)
    })?;
    de.end().map_err(|e| {
        Error::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid JSON body: {e}"),
        )
    })?;
    Ok(value)
}

/// Query parameters, decoded with the failing parameter named.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                let field = if path == "." { String::new() } else { path };
                Error::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("query parameter {field}: {message}"),
                )
                .field(field)
            })
    }
}
