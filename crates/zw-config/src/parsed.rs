//! The values validation parsed out of a configuration's strings, kept in
//! [`crate::ValidConfig`] so that whoever builds on a validated configuration (the edge's
//! snapshot) parses nothing again, and so cannot fail on it.

use http::{HeaderName, HeaderValue, Method};

use crate::{AddPrefix, LoadBalancer, RedirectScheme, StripPrefix, UpstreamUrl};

/// Everything parsed, each list in the order of its map in [`crate::Http`] (names
/// sorted), so that an index here is an index there.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub services: Vec<ParsedService>,
    pub routers: Vec<ParsedRouter>,
    pub middlewares: Vec<ParsedMiddleware>,
    pub tls: ParsedTls,
}

/// The `tls` section, loaded: certificates read and checked against their keys, each
/// set of options made into a rustls server configuration (without sessions: see
/// [`zw_tls::Sessions::apply`]). Present without a `tls` section too: a TLS client
/// then gets the default certificate, as from Traefik.
#[derive(Debug, Clone)]
pub struct ParsedTls {
    pub store: std::sync::Arc<zw_tls::CertStore>,
    /// `tls.options.default`, or Traefik's built-in default (TLS 1.2 and up).
    pub default: zw_tls::rustls::ServerConfig,
    /// The other options, by name.
    pub named: std::collections::BTreeMap<String, zw_tls::rustls::ServerConfig>,
    /// What each certificate of `tls.certificates` serves, and until when.
    pub certificates: Vec<CertificateInfo>,
}

/// A certificate as an operator checks it: its names and expiry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertificateInfo {
    pub names: Vec<String>,
    /// Seconds since the epoch.
    pub not_after: i64,
}

/// A service with its references resolved to indices into [`Parsed::services`].
#[derive(Debug, Clone)]
pub enum ParsedService {
    LoadBalancer(Box<ParsedLoadBalancer>),
    /// Children as (service index, weight).
    Weighted(Vec<(u32, u32)>),
}

#[derive(Debug, Clone)]
pub struct ParsedLoadBalancer {
    /// The `loadBalancer` as written (strategy, transport, weights).
    pub config: LoadBalancer,
    /// In the order of `config.servers`.
    pub servers: Vec<ParsedServer>,
    /// For its `https://` servers that are not worker ingresses: the TLS client
    /// configuration (its transport's, else the system's roots) and the server name to
    /// ask for (`serverName`; `None`: the URL's host).
    pub upstream_tls: Option<UpstreamTlsConfig>,
    /// What `strategy: hrw` hashes (the client's address when no `hashKey` is set).
    pub hash_key: HashSource,
    pub health_check: Option<ParsedHealthCheck>,
}

#[derive(Debug, Clone)]
pub struct ParsedServer {
    pub url: UpstreamUrl,
    /// `instance`, as the `Zeitwork-Instance` header it is sent in.
    pub instance: Option<HeaderValue>,
}

/// TLS to an upstream server.
#[derive(Debug, Clone)]
pub struct UpstreamTlsConfig {
    pub config: std::sync::Arc<zw_tls::rustls::ClientConfig>,
    pub server_name: Option<String>,
    /// What the connections were made with (a digest of the transport's TLS settings and
    /// files): servers share connections only under the same one, and a changed CA file
    /// means new connections.
    pub identity: String,
}

/// The source of the key an `hrw` balancer hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashSource {
    ClientIp,
    Header(HeaderName),
    Cookie(String),
}

#[derive(Debug, Clone)]
pub struct ParsedHealthCheck {
    /// `method`, GET when none is set (as in Traefik).
    pub method: Method,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A router with its service and middlewares resolved to indices.
#[derive(Debug, Clone)]
pub struct ParsedRouter {
    pub service: u32,
    /// For a TLS router (`tls` set), the name of its TLS options.
    pub tls: Option<String>,
    /// Into [`Parsed::middlewares`], in the router's order.
    pub middlewares: Vec<u32>,
}

/// Header edits of the `headers` middleware: a value to set, or `None` to remove the
/// header (an empty value in the configuration, as in Traefik).
pub type HeaderEdits = Vec<(HeaderName, Option<HeaderValue>)>;

/// The CORS keys of a `headers` middleware.
#[derive(Debug, Clone)]
pub struct Cors {
    pub allow_credentials: bool,
    pub allow_headers: Option<HeaderValue>,
    pub allow_methods: Option<HeaderValue>,
    /// Exact origins, or `*`.
    pub origins: Vec<String>,
    /// Go regular expressions, translated, with the rule engine's size limit.
    pub origin_regexes: Vec<regex::Regex>,
    pub expose_headers: Option<HeaderValue>,
    pub max_age: i64,
    pub add_vary: bool,
}

/// The security keys of a `headers` middleware: the options Traefik's `secure.go` gives
/// unrolled/secure, resolved to what goes on the wire.
#[derive(Debug, Clone, Default)]
pub struct Secure {
    /// Set on every response: frame options, nosniff, CSP, referrer and permissions
    /// policies, and HSTS when `forceSTSHeader` says so.
    pub always: Vec<(HeaderName, HeaderValue)>,
    /// Set on responses to secure requests only: HSTS, `Public-Key-Pins` (`publicKey`).
    pub on_secure: Vec<(HeaderName, HeaderValue)>,
    /// A plain-HTTP request that carries one of these headers with exactly this value
    /// came over TLS to a proxy in front (`sslProxyHeaders`).
    pub ssl_proxy_headers: Vec<(HeaderName, HeaderValue)>,
    /// The hosts a request may name (compared without regard to case, port included);
    /// empty: any. Another host gets Traefik's `500 Bad Host`.
    pub allowed_hosts: Vec<String>,
    /// Headers whose first non-empty one names the host instead of `Host` (a proxy's
    /// `X-Forwarded-Host`), for `allowed_hosts`.
    pub hosts_proxy_headers: Vec<HeaderName>,
}

/// How much of a body the `buffering` middleware holds in memory, and the most it lets
/// through (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    pub memory: u64,
    pub max: Option<u64>,
}

/// The `buffering` middleware's limits, for requests and for responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferingSpec {
    pub request: BodyLimits,
    pub response: BodyLimits,
}

/// A middleware of one type, its strings parsed.
#[derive(Debug, Clone)]
pub enum ParsedMiddleware {
    Headers {
        request: HeaderEdits,
        response: HeaderEdits,
        secure: Box<Secure>,
        cors: Option<Box<Cors>>,
    },
    StripPrefix(StripPrefix),
    AddPrefix(AddPrefix),
    RedirectRegex {
        /// Go's syntax translated, compiled with the rule engine's size limit.
        regex: regex::Regex,
        replacement: String,
        permanent: bool,
    },
    RedirectScheme(RedirectScheme),
    RateLimit(RateLimitSpec),
    ReplacePath(String),
    ReplacePathRegex {
        regex: regex::Regex,
        replacement: String,
    },
    StripPrefixRegex(Vec<regex::Regex>),
    /// At most `amount` requests in flight per source.
    InFlightReq {
        amount: u64,
        source: Source,
    },
    IpAllowList {
        ranges: Vec<zw_rules::IpNet>,
        strategy: IpStrategySpec,
        reject: http::StatusCode,
    },
    BasicAuth(BasicAuthSpec),
    ForwardAuth(ForwardAuthSpec),
    DigestAuth(DigestAuthSpec),
    /// `encodedCharacters`: the bytes whose percent-encoded form a path may not hold.
    EncodedCharacters(Vec<u8>),
    Errors(ErrorPageSpec),
    /// `buffering`: bodies held whole, in memory then in a file, up to a maximum.
    Buffering(BufferingSpec),
    /// `contentType`: whether a response without `Content-Type` gets a guessed one.
    ContentType {
        detect: bool,
    },
    /// `passTLSClientCert`: the client's certificates (`pem`), parts of them (`info`).
    PassTlsClientCert {
        pem: bool,
        info: Option<zw_tls::CertInfoOptions>,
    },
    /// A `chain`: its members are spliced into each router that names it (see
    /// [`ParsedRouter::middlewares`]), so it does nothing of its own.
    Chain,
}

/// An `errors` middleware, its service resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPageSpec {
    /// Inclusive status ranges that get the page.
    pub ranges: Vec<(u16, u16)>,
    /// Into [`Parsed::services`].
    pub service: u32,
    /// Starts with `/`; may hold `{status}`, `{originalStatus}` and `{url}`.
    pub query: String,
    /// Inclusive ranges whose status the answer gets changed to another.
    pub rewrites: Vec<((u16, u16), u16)>,
}

impl ErrorPageSpec {
    pub fn catches(&self, status: u16) -> bool {
        self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&status))
    }

    /// The status an answer of `status` goes out with (the first rewrite that covers it).
    pub fn rewritten(&self, status: u16) -> u16 {
        self.rewrites
            .iter()
            .find(|((a, b), _)| (*a..=*b).contains(&status))
            .map_or(status, |(_, to)| *to)
    }
}

/// A `digestAuth`: the users of its realm and their `HA1` (lowercase hex of
/// `md5(name:realm:password)`). Lines for other realms are kept out: Traefik looks users
/// up under the middleware's own realm only.
#[derive(Debug, Clone, PartialEq)]
pub struct DigestAuthSpec {
    pub users: std::collections::BTreeMap<String, String>,
    pub realm: String,
    pub remove_header: bool,
    pub header_field: Option<HeaderName>,
}

/// A `forwardAuth`, its address and header names parsed.
#[derive(Debug, Clone)]
pub struct ForwardAuthSpec {
    /// `http://host:port` of the authentication server.
    pub server: UpstreamUrl,
    /// What the check asks for there (the address' path and query; `/` without one).
    pub path_and_query: http::uri::PathAndQuery,
    pub trust_forward_header: bool,
    pub auth_response_headers: Vec<HeaderName>,
    pub auth_response_headers_regex: Option<regex::Regex>,
    pub auth_request_headers: Vec<HeaderName>,
    pub preserve_location_header: bool,
    pub preserve_request_method: bool,
    /// For an `https://` server: how to verify it (and what to show it).
    pub tls: Option<UpstreamTlsConfig>,
    /// Cookie names a 2xx answer may set on the client's response.
    pub add_auth_cookies: Vec<String>,
    /// With `forwardBody`: the most of a body the check carries; a larger one is a 401.
    pub forward_body: Option<u64>,
}

/// The most of a request body `forwardAuth` with `forwardBody` holds when `maxBodySize`
/// does not say (Traefik has no limit then; a body is held in memory whole).
pub const FORWARD_BODY_MAX: u64 = 64 << 20;

/// A `basicAuth`, its users' hashes parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicAuthSpec {
    /// By name, the file's users overridden by the inline ones (Traefik's order).
    pub users: std::collections::BTreeMap<String, PasswordHash>,
    pub realm: String,
    pub remove_header: bool,
    pub header_field: Option<HeaderName>,
}

/// An htpasswd hash in one of the formats Traefik's basicAuth checks (go-http-auth's
/// `CheckSecret`): bcrypt, MD5-crypt (Apache's `$apr1$` or `$1$`), and `{SHA}`.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$2a$`, `$2b$` or `$2y$`, the whole string.
    Bcrypt(String),
    /// `$apr1$salt$…` or `$1$salt$…`, the whole string.
    Md5Crypt(String),
    /// `{SHA}` and the base64 of the password's SHA-1.
    Sha1([u8; 20]),
}

impl PasswordHash {
    /// Whether checking a password against it is slow enough to leave the request path's
    /// thread (bcrypt: tens of milliseconds by design).
    pub fn is_slow(&self) -> bool {
        matches!(self, PasswordHash::Bcrypt(_))
    }
}

/// Hashes are not secrets, but they are a password's stand-in: not printed.
impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PasswordHash::Bcrypt(_) => "PasswordHash::Bcrypt(…)",
            PasswordHash::Md5Crypt(_) => "PasswordHash::Md5Crypt(…)",
            PasswordHash::Sha1(_) => "PasswordHash::Sha1(…)",
        })
    }
}

/// A `rateLimit` in the units its token bucket works in (Traefik's
/// `pkg/middlewares/ratelimiter`: rate = average / period; a request that would wait up to
/// `max_delay` — half a token's time, at most 500 ms — waits; a longer wait is a 429).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSpec {
    /// Tokens per second; `None`: no limit (`average: 0`).
    pub rate: Option<f64>,
    pub burst: u32,
    pub max_delay: std::time::Duration,
    pub source: Source,
    /// Buckets kept in Redis, shared by every edge; `None`: in this edge.
    pub redis: Option<RedisSpec>,
}

/// Where a shared rate limit keeps its buckets, and how long to wait for it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSpec {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
    pub dial_timeout: std::time::Duration,
    /// The longer of `readTimeout` and `writeTimeout`: one script call is both.
    pub response_timeout: std::time::Duration,
    /// Answer 500 when Redis cannot be reached, rather than count on this edge's buckets.
    pub fail_closed: bool,
    /// TLS to Redis.
    pub tls: Option<RedisTls>,
}

/// TLS to Redis, as the Redis client takes it: PEM bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTls {
    /// The CA Redis' certificate must chain to; `None`: the system's roots.
    pub ca: Option<Vec<u8>>,
    /// A client certificate and its key (PEM), for a Redis that asks for one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
    /// No verification at all (`insecureSkipVerify`).
    pub insecure: bool,
    /// A digest of all the above: a changed file means a new connection.
    pub identity: String,
}

/// The key is never printed: the digest stands for the whole.
impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("identity", &self.identity)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

/// The password is never printed; whether there is one, and a digest of the rest, is.
impl std::fmt::Debug for RedisSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSpec")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("dial_timeout", &self.dial_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("fail_closed", &self.fail_closed)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The key a request is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The client's address, found by the strategy.
    ClientIp(IpStrategySpec),
    Header(HeaderName),
    Host,
}

/// How the client's address is found (Traefik's `ipStrategy`): with `depth`, the entry
/// `depth` places from the right of `X-Forwarded-For`; else, with `excluded`, the
/// rightmost entry outside those networks; else the connection's (the PROXY protocol's,
/// behind a balancer). `X-Forwarded-For` is the client's only from peers an entry point
/// trusts (`forwardedHeaders.trustedIPs`): from others the edge removed it on arrival.
/// An IPv6 address counts by its network of `ipv6_subnet` bits when set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpStrategySpec {
    pub depth: u32,
    pub excluded: Vec<zw_rules::IpNet>,
    pub ipv6_subnet: Option<u8>,
}
