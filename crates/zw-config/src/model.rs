//! The configuration model. Field names follow Traefik's file provider; fields marked
//! *Zeitwork addition* are ours.
//!
//! Every struct keeps the keys it does not know in `unknown`, so that validation can
//! report all of them by path at once instead of stopping at the first.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Dur;

/// Keys this struct does not know, kept for error reporting only.
pub type Unknown = BTreeMap<String, Value>;

/// The root of a dynamic configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    #[serde(default)]
    pub http: Http,
    /// Certificates, TLS options and certificate stores (Traefik's `tls` section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// *Zeitwork addition*: options of the edge proxy that travel with the routes.
    #[serde(default)]
    pub edge: EdgeOptions,
    /// The certificate resolvers (ACME) a static configuration defines: the names routers
    /// may give as `tls.certResolver`. Not part of the file: set by
    /// [`crate::StaticConfig::apply_to`].
    #[serde(skip)]
    pub resolvers: std::collections::BTreeSet<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

impl Config {
    /// The files the configuration names (certificates, keys, client CAs, htpasswd
    /// files): a change to one is a change to the configuration.
    pub fn referenced_files(&self) -> Vec<std::path::PathBuf> {
        let empty = Tls::default();
        let tls = self.tls.as_ref().unwrap_or(&empty);
        let pairs = tls
            .certificates
            .iter()
            .flat_map(|c| [&c.cert_file, &c.key_file])
            .chain(
                tls.stores
                    .values()
                    .filter_map(|s| s.default_certificate.as_ref())
                    .flat_map(|d| [&d.cert_file, &d.key_file]),
            )
            .chain(
                tls.options
                    .values()
                    .filter_map(|o| o.client_auth.as_ref())
                    .flat_map(|a| a.ca_files.iter()),
            );
        pairs
            .filter(|f| !f.is_content() && !f.0.is_empty())
            .map(|f| std::path::PathBuf::from(&f.0))
            .chain(
                self.http
                    .middlewares
                    .values()
                    .filter_map(|m| {
                        m.basic_auth
                            .as_ref()
                            .and_then(|b| b.users_file.as_ref())
                            .or_else(|| m.digest_auth.as_ref()?.users_file.as_ref())
                    })
                    .map(std::path::PathBuf::from),
            )
            .collect()
    }
}

/// Traefik's dynamic `tls` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    /// Certificates served by SNI, each in the stores it names (none: `default`).
    #[serde(default)]
    pub certificates: Vec<TlsCertificate>,
    /// Named TLS options; `default` applies where no other is named.
    #[serde(default)]
    pub options: BTreeMap<String, TlsOptions>,
    /// Certificate stores; only `default` exists, as in Traefik.
    #[serde(default)]
    pub stores: BTreeMap<String, TlsStore>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// A certificate file or its PEM content, as Traefik's `FileOrContent`: a value that
/// holds a PEM block is the content, anything else a path.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FileOrContent(pub String);

impl FileOrContent {
    pub fn is_content(&self) -> bool {
        self.0.contains("-----BEGIN")
    }
}

impl std::fmt::Debug for FileOrContent {
    /// Inline content may be a private key: it is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_content() {
            f.write_str("<inline PEM>")
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsCertificate {
    pub cert_file: FileOrContent,
    pub key_file: FileOrContent,
    #[serde(default)]
    pub stores: Vec<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsOptions {
    /// `VersionTLS12` (the default) or `VersionTLS13`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_version: Option<String>,
    /// Go's names of the TLS 1.2 suites allowed.
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    #[serde(default)]
    pub curve_preferences: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// Refuse handshakes whose server name no certificate names.
    #[serde(default)]
    pub sni_strict: bool,
    #[serde(default)]
    pub alpn_protocols: Vec<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientAuth {
    #[serde(default)]
    pub ca_files: Vec<FileOrContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth_type: Option<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsStore {
    /// Served when no certificate names the server name (else a generated self-signed
    /// one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_certificate: Option<StoreCertificate>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreCertificate {
    pub cert_file: FileOrContent,
    pub key_file: FileOrContent,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// A router's `tls`: the router takes requests that came over TLS, and only those.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouterTls {
    /// The TLS options (`tls.options.<name>`) for the router's hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
    /// A certificate resolver of the static configuration (`certificatesResolvers`) that
    /// gets this router's certificate: for `domains`, else for the rule's `Host` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_resolver: Option<String>,
    /// The names to get a certificate for (with `certResolver`).
    #[serde(default)]
    pub domains: Vec<TlsDomain>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsDomain {
    pub main: String,
    #[serde(default)]
    pub sans: Vec<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// *Zeitwork addition*: edge-wide options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeOptions {
    /// Add `X-Routed-To` (router, service, upstream) and `X-Route-Reason` to responses.
    /// Off by default: they reveal internal addresses.
    #[serde(default)]
    pub routing_headers: bool,
    /// ACME HTTP-01 tokens and their key authorizations, answered at
    /// `/.well-known/acme-challenge/<token>` on every entry point (the operator orders
    /// certificates once for the fleet; whichever edge the CA reaches answers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub acme_challenges: BTreeMap<String, String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Http {
    #[serde(default)]
    pub routers: BTreeMap<String, Router>,
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    #[serde(default)]
    pub middlewares: BTreeMap<String, Middleware>,
    #[serde(default)]
    pub servers_transports: BTreeMap<String, ServersTransport>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Router {
    /// Required, except on a fallback router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Higher wins; 0 or absent means the rule's length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    pub service: String,
    #[serde(default)]
    pub middlewares: Vec<String>,
    /// Entry points the router listens on; empty means all.
    #[serde(default)]
    pub entry_points: Vec<String>,
    /// *Zeitwork addition*: this router takes the requests that no rule matched (the
    /// lowest-priority catch-all). It has no `rule`; at most one per entry point.
    #[serde(default)]
    pub fallback: bool,
    /// Set (even empty: `tls: {}`), the router takes only requests that came over TLS;
    /// unset, only those that did not (as in Traefik).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouterTls>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

impl Router {
    /// Whether the router takes requests on entry point `ep` (no `entryPoints` = all).
    pub fn listens_on(&self, ep: &str) -> bool {
        self.entry_points.is_empty() || self.entry_points.iter().any(|e| e == ep)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted: Option<Weighted>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// How a load balancer picks a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Smooth weighted round robin (Traefik's default). With equal weights: round robin.
    #[default]
    #[serde(rename = "wrr")]
    Wrr,
    /// Power of two random choices, the one with fewer requests in flight.
    #[serde(rename = "p2c")]
    P2c,
    /// Highest random weight (rendezvous) hashing: consistent hashing on the client IP, or
    /// on `hashKey`.
    #[serde(rename = "hrw")]
    Hrw,
    /// *Zeitwork addition*: plain round robin, ignoring weights.
    #[serde(rename = "roundRobin")]
    RoundRobin,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(default)]
    pub servers: Vec<Server>,
    #[serde(default)]
    pub strategy: Strategy,
    /// *Zeitwork addition*: what `hrw` hashes; the client IP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<HashKey>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "healthcheck"
    )]
    pub health_check: Option<HealthCheck>,
    /// Forward the client's Host header (default) or the server's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_host_header: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers_transport: Option<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// *Zeitwork addition*: the request attribute `hrw` hashes. Exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HashKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    /// `http://host:port[/path]`, or `h2c://host:port` for HTTP/2 without TLS.
    pub url: String,
    /// Relative share of traffic; default 1, 0 takes none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Prepend the URL's path to the request path.
    #[serde(default)]
    pub preserve_path: bool,
    /// *Zeitwork addition*: the instance a worker ingress (an `https://` server) forwards
    /// to, sent as the `Zeitwork-Instance` request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// *Zeitwork addition*: the server is another region's balancer. Requests to it are
    /// marked (`Zeitwork-Hop`), and a marked request is never forwarded to another
    /// region again: it gets a 508 instead of going round a loop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cross_region: bool,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    pub path: String,
    /// Default 30s, as in Traefik.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    /// Default 5s, as in Traefik.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Host header of the check; the server's address when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Port to check instead of the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Expected status; any 2xx or 3xx when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// *Zeitwork addition*: consecutive successes before an unhealthy server gets traffic
    /// again (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// *Zeitwork addition*: consecutive failures before a server is taken out (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Weighted {
    #[serde(default)]
    pub services: Vec<WeightedService>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedService {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// A middleware: exactly one of the fields is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Middleware {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<StripPrefix>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_prefix: Option<AddPrefix>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_regex: Option<RedirectRegex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_scheme: Option<RedirectScheme>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight_req: Option<InFlightReq>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_path: Option<ReplacePath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_path_regex: Option<ReplacePathRegex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix_regex: Option<StripPrefixRegex>,
    /// `ipWhiteList`, Traefik's older name, is read as this.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "ipWhiteList"
    )]
    pub ip_allow_list: Option<IpAllowList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Chain>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_auth: Option<ForwardAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_auth: Option<DigestAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoded_characters: Option<EncodedCharacters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<ErrorPage>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "passTLSClientCert"
    )]
    pub pass_tls_client_cert: Option<PassTlsClientCert>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffering: Option<Buffering>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<ContentType>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// `buffering`: the whole request body is read before it goes upstream, the whole
/// response before it goes to the client; what is over the `mem…` sizes waits in a
/// temporary file, what is over the `max…` sizes is refused. 0 is Traefik's default: no
/// maximum, 1 MiB in memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Buffering {
    #[serde(default)]
    pub max_request_body_bytes: i64,
    #[serde(default)]
    pub mem_request_body_bytes: i64,
    #[serde(default)]
    pub max_response_body_bytes: i64,
    #[serde(default)]
    pub mem_response_body_bytes: i64,
    /// Refused: retrying is the `retry` middleware's job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_expression: Option<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// `contentType`: a response without `Content-Type` gets one guessed from its first
/// bytes, as Go's `http.DetectContentType` guesses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentType {
    /// Traefik v2's switch, deprecated in v3 (where the middleware itself turns detection
    /// on): `false` turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_detect: Option<bool>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// `passTLSClientCert`: the client's certificate (from a TLS entry point with
/// `clientAuth`) goes upstream in `X-Forwarded-Tls-Client-Cert`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PassTlsClientCert {
    #[serde(default)]
    pub pem: bool,
    /// Parts of the certificates in `X-Forwarded-Tls-Client-Cert-Info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<TlsClientCertInfo>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsClientCertInfo {
    #[serde(default)]
    pub not_after: bool,
    #[serde(default)]
    pub not_before: bool,
    #[serde(default)]
    pub sans: bool,
    #[serde(default)]
    pub serial_number: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<TlsClientCertDn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<TlsClientCertDn>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// The parts of a subject or issuer name to pass (`organizationalUnit`: subject only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsClientCertDn {
    #[serde(default)]
    pub country: bool,
    #[serde(default)]
    pub province: bool,
    #[serde(default)]
    pub locality: bool,
    #[serde(default)]
    pub organization: bool,
    #[serde(default)]
    pub organizational_unit: bool,
    #[serde(default)]
    pub common_name: bool,
    #[serde(default)]
    pub serial_number: bool,
    #[serde(default)]
    pub domain_component: bool,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// `errors`: a response whose status is in `status` gets the body and headers of
/// `service`'s answer to `query` instead, keeping its status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorPage {
    /// `500-599`, `404`, or several of them comma-separated.
    #[serde(default)]
    pub status: Vec<String>,
    #[serde(default)]
    pub service: String,
    /// The page's path; `{status}` and `{url}` (the request's, query-escaped) replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// `"418": 404` or `"500-503": 502`: the answer's status becomes this one (`{status}`
    /// in `query`; the first is `{originalStatus}`).
    #[serde(default)]
    pub status_rewrites: BTreeMap<String, u16>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// `encodedCharacters`: which percent-encoded characters a request path may hold; each is
/// refused (400) unless allowed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncodedCharacters {
    #[serde(default)]
    pub allow_encoded_slash: bool,
    #[serde(default)]
    pub allow_encoded_back_slash: bool,
    #[serde(default)]
    pub allow_encoded_null_character: bool,
    #[serde(default)]
    pub allow_encoded_semicolon: bool,
    #[serde(default)]
    pub allow_encoded_percent: bool,
    #[serde(default)]
    pub allow_encoded_question_mark: bool,
    #[serde(default)]
    pub allow_encoded_hash: bool,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

impl EncodedCharacters {
    /// The bytes whose encoded form (`%2F` for `/`…) a path may not hold.
    pub fn denied(&self) -> Vec<u8> {
        [
            (self.allow_encoded_slash, b'/'),
            (self.allow_encoded_back_slash, b'\\'),
            (self.allow_encoded_null_character, 0),
            (self.allow_encoded_semicolon, b';'),
            (self.allow_encoded_percent, b'%'),
            (self.allow_encoded_question_mark, b'?'),
            (self.allow_encoded_hash, b'#'),
        ]
        .into_iter()
        .filter(|(allowed, _)| !allowed)
        .map(|(_, b)| b)
        .collect()
    }
}

/// `digestAuth`: HTTP Digest authentication (RFC 2617, MD5, `qop=auth`) for the listed
/// users (`name:realm:md5(name:realm:password)`, as `htdigest` writes them); the same keys
/// as `basicAuth`.
pub type DigestAuth = BasicAuth;

/// `forwardAuth`: an authentication server decides; 2xx lets the request through.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardAuth {
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub trust_forward_header: bool,
    #[serde(default)]
    pub auth_response_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_response_headers_regex: Option<String>,
    #[serde(default)]
    pub auth_request_headers: Vec<String>,
    #[serde(default)]
    pub preserve_location_header: bool,
    #[serde(default)]
    pub preserve_request_method: bool,
    /// How to reach an `https://` server (without it: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTls>,
    /// Cookies of a 2xx answer, by name, that go on the client's response (replacing the
    /// upstream's of the same names).
    #[serde(default)]
    pub add_auth_cookies_to_response: Vec<String>,
    /// The request's body goes to the server too.
    #[serde(default)]
    pub forward_body: bool,
    /// With `forwardBody`: a larger body is answered 401. -1 (the default): Traefik's "no
    /// limit", which here means [`crate::FORWARD_BODY_MAX`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_size: Option<i64>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// `forwardAuth.tls` and `rateLimit.redis.tls` (Traefik's `types.ClientTLS`): PEM files or
/// PEM text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTls {
    /// The CA the server's certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<FileOrContent>,
    /// A client certificate and key, for a server that asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<FileOrContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<FileOrContent>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Deprecated in Traefik and ignored there: accepted, and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_optional: Option<bool>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// `chain`: these middlewares, in order, under one name (a chain may hold chains).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chain {
    #[serde(default)]
    pub middlewares: Vec<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// `basicAuth` (htpasswd lines `name:hash`) and `digestAuth` (htdigest lines
/// `name:realm:hash`): only the listed users get through.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    #[serde(default)]
    pub users: Vec<String>,
    /// A users file; its users come first, and a name also in `users` is that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_file: Option<String>,
    /// Default `traefik`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// Remove `Authorization` before the request goes upstream.
    #[serde(default)]
    pub remove_header: bool,
    /// A request header that carries the authenticated user's name upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_field: Option<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// `rateLimit`: a token bucket per source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests per `period` on average; 0 means no limit.
    #[serde(default)]
    pub average: i64,
    /// Default 1 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Dur>,
    /// Requests admitted at once above the average (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_criterion: Option<SourceCriterion>,
    /// Keep the buckets in Redis, shared by every edge (Traefik v3.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RateLimitRedis>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// `rateLimit.redis`: Traefik's keys (go-redis' options). `poolSize`, `minIdleConns` and
/// `maxActiveConns` are accepted and have nothing to size: one multiplexed connection
/// carries every edge request's script call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitRedis {
    /// `host:port`; one (a cluster's several endpoints are not supported).
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Not serialized: the configuration's hash, the API and the last-known-good file
    /// never carry it.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    #[serde(default)]
    pub db: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_idle_conns: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_conns: Option<i64>,
    /// Default 3 s (go-redis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_timeout: Option<Dur>,
    /// Default 5 s (go-redis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial_timeout: Option<Dur>,
    /// TLS to Redis (`rediss`): verified against `ca` (the system's roots without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTls>,
    /// Zeitwork's: when Redis cannot be reached, answer 500 instead of counting on the
    /// edge's own buckets (the default: fail open).
    #[serde(default)]
    pub fail_closed: bool,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// What requests are counted by: the client's address (the default), a header, or the
/// host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceCriterion {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_strategy: Option<IpStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_name: Option<String>,
    #[serde(default)]
    pub request_host: bool,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpStrategy {
    /// The address `depth` entries from the right of `X-Forwarded-For`.
    #[serde(default)]
    pub depth: u32,
    #[serde(default, rename = "excludedIPs")]
    pub excluded_ips: Vec<String>,
    /// IPv6 addresses count by their network of this prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_subnet: Option<u8>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// `replacePath`: the path becomes `path`; the old one goes in `X-Replaced-Path`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplacePath {
    pub path: String,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// `replacePathRegex`: a path that matches `regex` is replaced by `replacement` (`$1`
/// and `${name}` expand); the old one goes in `X-Replaced-Path`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplacePathRegex {
    pub regex: String,
    pub replacement: String,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// `stripPrefixRegex`: the first expression whose match starts the path is stripped; it
/// goes in `X-Forwarded-Prefix`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StripPrefixRegex {
    pub regex: Vec<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// `inFlightReq`: at most `amount` requests at once per source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InFlightReq {
    #[serde(default)]
    pub amount: i64,
    /// Default: the request's host (as in Traefik).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_criterion: Option<SourceCriterion>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

/// `ipAllowList`: only clients from these networks get through.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpAllowList {
    #[serde(default)]
    pub source_range: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_strategy: Option<IpStrategy>,
    /// Default 403.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_status_code: Option<u16>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Headers {
    /// Set on the request to the upstream; an empty value removes the header.
    #[serde(default)]
    pub custom_request_headers: BTreeMap<String, String>,
    /// Set on the response to the client; an empty value removes the header.
    #[serde(default)]
    pub custom_response_headers: BTreeMap<String, String>,
    // CORS
    #[serde(default)]
    pub access_control_allow_credentials: bool,
    #[serde(default)]
    pub access_control_allow_headers: Vec<String>,
    #[serde(default)]
    pub access_control_allow_methods: Vec<String>,
    #[serde(default)]
    pub access_control_allow_origin_list: Vec<String>,
    #[serde(default)]
    pub access_control_allow_origin_list_regex: Vec<String>,
    #[serde(default)]
    pub access_control_expose_headers: Vec<String>,
    #[serde(default)]
    pub access_control_max_age: i64,
    #[serde(default)]
    pub add_vary_header: bool,
    // Security
    #[serde(default)]
    pub sts_seconds: i64,
    #[serde(default)]
    pub sts_include_subdomains: bool,
    #[serde(default)]
    pub sts_preload: bool,
    #[serde(default, rename = "forceSTSHeader")]
    pub force_sts_header: bool,
    #[serde(default)]
    pub frame_deny: bool,
    #[serde(default)]
    pub custom_frame_options_value: String,
    #[serde(default)]
    pub content_type_nosniff: bool,
    #[serde(default)]
    pub browser_xss_filter: bool,
    #[serde(default, rename = "customBrowserXSSValue")]
    pub custom_browser_xss_value: String,
    #[serde(default)]
    pub content_security_policy: String,
    #[serde(default)]
    pub content_security_policy_report_only: String,
    #[serde(default)]
    pub referrer_policy: String,
    #[serde(default)]
    pub permissions_policy: String,
    /// Turns the HSTS and Public-Key-Pins headers and the `allowedHosts` check off
    /// (Traefik's development mode).
    #[serde(default)]
    pub is_development: bool,
    /// The hosts requests may name; another gets `500 Bad Host`. Empty: any.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Headers that name the host in place of `Host` for `allowedHosts` (the first
    /// non-empty one).
    #[serde(default)]
    pub hosts_proxy_headers: Vec<String>,
    /// Header and value that mark a plain-HTTP request as having come over TLS to a
    /// proxy in front (for HSTS and `publicKey`).
    #[serde(default, rename = "sslProxyHeaders")]
    pub ssl_proxy_headers: BTreeMap<String, String>,
    /// `Public-Key-Pins` value, sent on secure responses.
    #[serde(default)]
    pub public_key: String,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StripPrefix {
    pub prefixes: Vec<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddPrefix {
    pub prefix: String,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedirectRegex {
    /// Go RE2 syntax, matched against the full request URL (`http://host/path?query`).
    pub regex: String,
    /// `${1}` / `$1` refer to capture groups.
    pub replacement: String,
    #[serde(default)]
    pub permanent: bool,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedirectScheme {
    pub scheme: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(default)]
    pub permanent: bool,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServersTransport {
    #[serde(default)]
    pub forwarding_timeouts: ForwardingTimeouts,
    /// Idle keep-alive connections kept per server (default 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_conns_per_host: Option<u32>,
    /// For `https://` servers: the name the server's certificate must have (default: the
    /// URL's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// For `https://` servers: accept any certificate. For tests only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// For `https://` servers: the CAs their certificates are checked against, instead
    /// of the system's.
    #[serde(default, rename = "rootCAs")]
    pub root_cas: Vec<FileOrContent>,
    /// For `https://` servers: the client certificate to present (the first one).
    #[serde(default)]
    pub certificates: Vec<StoreCertificate>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardingTimeouts {
    /// Connect timeout; default 5s (→ 502 when it passes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial_timeout: Option<Dur>,
    /// Time allowed for the upstream's response headers; default 60s (→ 504).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_timeout: Option<Dur>,
    /// How long an idle pooled connection is kept; default 90s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_conn_timeout: Option<Dur>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Unknown,
}
