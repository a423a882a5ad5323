//! `passTLSClientCert` with `pem` (Traefik's `pkg/middlewares/passtlsclientcert`): the
//! certificates a client presented on a TLS entry point with `clientAuth` go upstream in
//! `X-Forwarded-Tls-Client-Cert` — each one's DER in base64 (the PEM without its
//! delimiters and line breaks), comma-separated. Where the client presented none, a
//! header of that name is removed rather than passed on: Traefik leaves it, and so lets
//! a client claim a certificate it does not hold.

use http::HeaderName;

use super::{Action, Middleware, MiddlewareCtx};

const X_FORWARDED_TLS_CLIENT_CERT: HeaderName =
    HeaderName::from_static("x-forwarded-tls-client-cert");

#[derive(Debug)]
pub struct PassTlsClientCert;

impl Middleware for PassTlsClientCert {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        match ctx.client_cert {
            Some(v) => {
                ctx.parts
                    .headers
                    .insert(X_FORWARDED_TLS_CLIENT_CERT, v.clone());
            }
            None => {
                ctx.parts.headers.remove(X_FORWARDED_TLS_CLIENT_CERT);
            }
        }
        Action::Continue
    }
}
