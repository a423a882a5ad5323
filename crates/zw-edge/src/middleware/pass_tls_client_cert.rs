//! `passTLSClientCert` (Traefik's `pkg/middlewares/passtlsclientcert`): the certificates a
//! client presented on a TLS entry point with `clientAuth` go upstream — with `pem`, in
//! `X-Forwarded-Tls-Client-Cert`, each one's DER in base64 (the PEM without its
//! delimiters and line breaks), comma-separated; with `info`, the chosen parts of each in
//! `X-Forwarded-Tls-Client-Cert-Info`, query-escaped as Go's `url.QueryEscape` does
//! ([`zw_tls::cert_info`] writes them as Traefik does). Where the client presented none,
//! headers of those names are removed rather than passed on: Traefik leaves them, and so
//! lets a client claim a certificate it does not hold.

use http::{HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::{Action, Middleware, MiddlewareCtx};

const X_FORWARDED_TLS_CLIENT_CERT: HeaderName =
    HeaderName::from_static("x-forwarded-tls-client-cert");
const X_FORWARDED_TLS_CLIENT_CERT_INFO: HeaderName =
    HeaderName::from_static("x-forwarded-tls-client-cert-info");

/// What Go's `url.QueryEscape` leaves as it is: letters, digits and `-_.~` (a space
/// becomes `+`).
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Go's `url.QueryEscape`.
pub fn query_escape(s: &str) -> String {
    utf8_percent_encode(s, QUERY)
        .to_string()
        .replace("%20", "+")
}

#[derive(Debug)]
pub struct PassTlsClientCert {
    pub pem: bool,
    pub info: Option<zw_tls::CertInfoOptions>,
}

impl Middleware for PassTlsClientCert {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        if self.pem {
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
        }
        if let Some(info) = &self.info {
            let value = (!ctx.client_certs.is_empty())
                .then(|| zw_tls::cert_info(ctx.client_certs, info))
                .and_then(|text| HeaderValue::from_str(&query_escape(&text)).ok());
            match value {
                Some(v) => {
                    ctx.parts
                        .headers
                        .insert(X_FORWARDED_TLS_CLIENT_CERT_INFO, v);
                }
                None => {
                    ctx.parts.headers.remove(X_FORWARDED_TLS_CLIENT_CERT_INFO);
                }
            }
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_escape_is_gos() {
        // url.QueryEscape(`Subject="CN=a b,O=c~d*";NB="1"`)
        assert_eq!(
            super::query_escape("Subject=\"CN=a b,O=c~d*\";NB=\"1\""),
            "Subject%3D%22CN%3Da+b%2CO%3Dc~d%2A%22%3BNB%3D%221%22"
        );
    }
}
