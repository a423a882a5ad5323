//! Validation of the `tls` section and of routers' `tls`: certificates loaded and checked
//! against their keys, options parsed into rustls server configurations.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use zw_tls::{ClientAuth, TlsOptions as Options, TlsVersion};

use crate::validate::Checker;
use crate::{FileOrContent, ParsedTls, Tls, TlsOptions};

/// The only certificate store, as in Traefik v3.
const DEFAULT_STORE: &str = "default";
pub(crate) const DEFAULT_OPTIONS: &str = "default";

/// Reads a `FileOrContent` (at most [`zw_tls::MAX_PEM_BYTES`]); a file's bytes are also
/// fed to `digest`, so that a changed certificate file changes the configuration's hash.
fn read(
    c: &mut Checker<'_>,
    path: &str,
    v: &FileOrContent,
    digest: &mut Vec<u8>,
) -> Option<Vec<u8>> {
    if v.is_content() {
        return Some(v.0.as_bytes().to_vec());
    }
    if v.0.is_empty() {
        c.err(path, "missing (a PEM file's path, or the PEM itself)");
        return None;
    }
    let mut buf = Vec::new();
    let read = std::fs::File::open(&v.0).and_then(|f| {
        f.take(zw_tls::MAX_PEM_BYTES as u64 + 1)
            .read_to_end(&mut buf)
    });
    match read {
        Ok(_) => {
            digest.extend_from_slice(&buf);
            Some(buf)
        }
        Err(e) => {
            c.err(path, format!("cannot read `{}`: {e}", v.0));
            None
        }
    }
}

fn pair(
    c: &mut Checker<'_>,
    p: &str,
    cert: &FileOrContent,
    key: &FileOrContent,
    digest: &mut Vec<u8>,
) -> Option<zw_tls::Certified> {
    let cert_pem = read(c, &format!("{p}.certFile"), cert, digest);
    let key_pem = read(c, &format!("{p}.keyFile"), key, digest);
    let (cert_pem, key_pem) = (cert_pem?, key_pem?);
    match zw_tls::load_pair(&cert_pem, &key_pem) {
        Ok(k) => Some(k),
        Err(e @ (zw_tls::TlsError::NoKey | zw_tls::TlsError::Key(_))) => {
            c.err(format!("{p}.keyFile"), e.to_string());
            None
        }
        Err(e @ zw_tls::TlsError::KeyMismatch) => {
            c.err(p, e.to_string());
            None
        }
        Err(e) => {
            c.err(format!("{p}.certFile"), e.to_string());
            None
        }
    }
}

fn options(c: &mut Checker<'_>, p: &str, o: &TlsOptions, digest: &mut Vec<u8>) -> Option<Options> {
    c.unknown(p, &o.unknown);
    let before = c.errors.len();
    let mut out = Options::default();
    let version = |field: &str, v: &Option<String>, c: &mut Checker<'_>| match v {
        None => None,
        Some(v) => match TlsVersion::parse(v) {
            Ok(v) => Some(v),
            Err(e) => {
                c.err(format!("{p}.{field}"), e.to_string());
                None
            }
        },
    };
    // TLS 1.0 / 1.1 as the minimum: served from 1.2 (see zw_tls's options).
    if let Some(Some(v)) = version("minVersion", &o.min_version, c) {
        out.min_version = v;
    }
    match version("maxVersion", &o.max_version, c) {
        Some(Some(v)) => out.max_version = v,
        Some(None) => c.err(
            format!("{p}.maxVersion"),
            "TLS 1.0 and 1.1 are not offered (rustls implements TLS 1.2 and 1.3)",
        ),
        None => {}
    }
    if !o.cipher_suites.is_empty() {
        let mut suites = Vec::new();
        for (i, name) in o.cipher_suites.iter().enumerate() {
            match zw_tls::cipher_suite(name) {
                Ok(s) => suites.push(s),
                Err(e) => c.err(format!("{p}.cipherSuites[{i}]"), e.to_string()),
            }
        }
        out.cipher_suites = Some(suites);
    }
    if !o.curve_preferences.is_empty() {
        let mut groups = Vec::new();
        for (i, name) in o.curve_preferences.iter().enumerate() {
            match zw_tls::curve(name) {
                Ok(g) => groups.push(g),
                Err(e) => c.err(format!("{p}.curvePreferences[{i}]"), e.to_string()),
            }
        }
        out.kx_groups = Some(groups);
    }
    if !o.alpn_protocols.is_empty() {
        out.alpn = o
            .alpn_protocols
            .iter()
            // acme-tls/1 is answered before these options are chosen (a TLS-ALPN-01
            // handshake gets its own configuration), and never for HTTP: not offered here.
            .filter(|a| a.as_str() != "acme-tls/1")
            .map(|a| a.as_bytes().to_vec())
            .collect();
        for (i, a) in o.alpn_protocols.iter().enumerate() {
            if !matches!(a.as_str(), "h2" | "http/1.1" | "acme-tls/1") {
                c.err(
                    format!("{p}.alpnProtocols[{i}]"),
                    format!("`{a}` is not a protocol the edge speaks (h2, http/1.1)"),
                );
            }
        }
    }
    out.sni_strict = o.sni_strict;
    if let Some(ca) = &o.client_auth {
        let cp = format!("{p}.clientAuth");
        c.unknown(&cp, &ca.unknown);
        let mut pems = Vec::new();
        for (i, f) in ca.ca_files.iter().enumerate() {
            if let Some(pem) = read(c, &format!("{cp}.caFiles[{i}]"), f, digest) {
                pems.push(pem);
            }
        }
        match zw_tls::client_roots(&pems).and_then(|roots| {
            ClientAuth::parse(ca.client_auth_type.as_deref().unwrap_or(""), roots)
        }) {
            Ok(auth) => out.client_auth = auth,
            Err(e) => c.err(cp, e.to_string()),
        }
    }
    (c.errors.len() == before).then_some(out)
}

/// Checks the `tls` section; returns it loaded when it has no problem. `digest` collects
/// the bytes of every file read.
pub(crate) fn check_tls(
    c: &mut Checker<'_>,
    tls: Option<&Tls>,
    digest: &mut Vec<u8>,
) -> Option<ParsedTls> {
    let empty = Tls::default();
    let tls = tls.unwrap_or(&empty);
    c.unknown("tls", &tls.unknown);
    let before = c.errors.len();
    let mut certs = Vec::with_capacity(tls.certificates.len());
    for (i, cert) in tls.certificates.iter().enumerate() {
        let p = format!("tls.certificates[{i}]");
        c.unknown(&p, &cert.unknown);
        for (j, store) in cert.stores.iter().enumerate() {
            if store != DEFAULT_STORE {
                c.err(
                    format!("{p}.stores[{j}]"),
                    format!("unknown store `{store}` (only `default` exists)"),
                );
            }
        }
        if let Some(k) = pair(c, &p, &cert.cert_file, &cert.key_file, digest) {
            certs.push(k);
        }
    }
    let mut default = None;
    for (name, store) in &tls.stores {
        let p = format!("tls.stores.{name}");
        c.unknown(&p, &store.unknown);
        if name != DEFAULT_STORE {
            c.err(&p, "only the `default` store exists (as in Traefik v3)");
            continue;
        }
        if let Some(d) = &store.default_certificate {
            let dp = format!("{p}.defaultCertificate");
            c.unknown(&dp, &d.unknown);
            default = pair(c, &dp, &d.cert_file, &d.key_file, digest).map(|k| k.key);
        }
    }
    let default = match default {
        Some(d) => d,
        None => match zw_tls::default_certificate() {
            Ok(d) => d,
            Err(e) => {
                c.err("tls.stores.default", e.to_string());
                return None;
            }
        },
    };
    let mut parsed = BTreeMap::new();
    for (name, o) in &tls.options {
        if let Some(o) = options(c, &format!("tls.options.{name}"), o, digest) {
            parsed.insert(name.clone(), o);
        }
    }
    if c.errors.len() != before {
        return None;
    }
    let store = Arc::new(zw_tls::CertStore::new(&certs, default));
    let config = |name: &str, o: &Options, c: &mut Checker<'_>| {
        zw_tls::server_config(o, store.clone())
            .map_err(|e| c.err(format!("tls.options.{name}"), e.to_string()))
            .ok()
    };
    let default_options = parsed.remove(DEFAULT_OPTIONS).unwrap_or_default();
    let default = config(DEFAULT_OPTIONS, &default_options, c);
    let mut named = BTreeMap::new();
    for (name, o) in &parsed {
        if let Some(cfg) = config(name, o, c) {
            named.insert(name.clone(), cfg);
        }
    }
    let default = default?;
    let certificates = certs
        .iter()
        .map(|k| crate::CertificateInfo {
            names: k.names.clone(),
            not_after: k.not_after,
        })
        .collect();
    (c.errors.len() == before).then_some(ParsedTls {
        store,
        default,
        named,
        certificates,
    })
}

/// The upstream TLS of each `serversTransports` entry, and the default (the system's
/// roots) for servers with none, made once per configuration.
pub(crate) struct UpstreamTls {
    by_transport: BTreeMap<String, crate::UpstreamTlsConfig>,
    /// Made when a server first needs it: reading the system's CAs costs a moment, and
    /// most configurations have no `https://` server.
    default: std::cell::OnceCell<Option<crate::UpstreamTlsConfig>>,
}

impl UpstreamTls {
    pub(crate) fn for_transport(&self, name: Option<&str>) -> Option<crate::UpstreamTlsConfig> {
        match name {
            Some(n) => self.by_transport.get(n).cloned(),
            None => self
                .default
                .get_or_init(|| {
                    zw_tls::client_config(None, false, None).ok().map(|cfg| {
                        crate::UpstreamTlsConfig {
                            config: Arc::new(cfg),
                            server_name: None,
                            identity: "system".into(),
                        }
                    })
                })
                .clone(),
        }
    }
}

/// Checks the TLS keys of `serversTransports`.
pub(crate) fn check_transports(
    c: &mut Checker<'_>,
    transports: &BTreeMap<String, crate::ServersTransport>,
    digest: &mut Vec<u8>,
) -> UpstreamTls {
    let mut by_transport = BTreeMap::new();
    for (name, t) in transports {
        let p = format!("http.serversTransports.{name}");
        let roots: Vec<(String, &FileOrContent)> = t
            .root_cas
            .iter()
            .enumerate()
            .map(|(i, f)| (format!("{p}.rootCAs[{i}]"), f))
            .collect();
        let mut client = None;
        for (i, cert) in t.certificates.iter().enumerate() {
            let cp = format!("{p}.certificates[{i}]");
            c.unknown(&cp, &cert.unknown);
            if i == 0 {
                client = Some((cp, &cert.cert_file, &cert.key_file));
            }
        }
        if t.certificates.len() > 1 {
            c.err(
                format!("{p}.certificates"),
                "one client certificate is presented; list one",
            );
        }
        let settings = ClientTls {
            roots,
            client,
            insecure: t.insecure_skip_verify,
            server_name: t.server_name.as_deref(),
        };
        if let Some(tls) = client_tls(c, &p, name, settings, digest) {
            by_transport.insert(name.clone(), tls);
        }
    }
    UpstreamTls {
        by_transport,
        default: std::cell::OnceCell::new(),
    }
}

/// What a TLS client is made of: roots (a path each, for errors; none: the system's), a
/// client certificate and key, `insecureSkipVerify`, the server name to ask for.
pub(crate) struct ClientTls<'a> {
    pub(crate) roots: Vec<(String, &'a FileOrContent)>,
    /// The path for errors, the certificate, the key.
    pub(crate) client: Option<(String, &'a FileOrContent, &'a FileOrContent)>,
    pub(crate) insecure: bool,
    pub(crate) server_name: Option<&'a str>,
}

/// The client configuration `t` describes (errors under `p`), with an identity that
/// changes when any of its settings or files does: connections are shared only under the
/// same one.
pub(crate) fn client_tls(
    c: &mut Checker<'_>,
    p: &str,
    label: &str,
    t: ClientTls<'_>,
    digest: &mut Vec<u8>,
) -> Option<crate::UpstreamTlsConfig> {
    let before = c.errors.len();
    let mut material = format!("{label}\n{}\n{:?}\n", t.insecure, t.server_name).into_bytes();
    let digest_before = digest.len();
    let roots = if t.roots.is_empty() {
        None
    } else {
        let mut pems = Vec::new();
        for (at, f) in &t.roots {
            if let Some(pem) = read(c, at, f, digest) {
                pems.push(pem);
            }
        }
        match zw_tls::client_roots(&pems) {
            Ok(r) => Some(r),
            Err(e) => {
                let at = t.roots.first().map_or(p, |(at, _)| at.as_str());
                c.err(at, e.to_string());
                None
            }
        }
    };
    let client = t
        .client
        .as_ref()
        .and_then(|(at, cert, key)| pair(c, at, cert, key, digest));
    if let Some(n) = t.server_name {
        if zw_tls::rustls::pki_types::ServerName::try_from(n).is_err() {
            c.err(
                format!("{p}.serverName"),
                format!("`{n}` is not a DNS name or IP address"),
            );
        }
    }
    if c.errors.len() != before {
        return None;
    }
    material.extend_from_slice(digest.get(digest_before..).unwrap_or_default());
    let inline = t
        .roots
        .iter()
        .map(|(_, f)| *f)
        .chain(t.client.iter().flat_map(|(_, cert, key)| [*cert, *key]));
    for f in inline {
        if f.is_content() {
            material.extend_from_slice(f.0.as_bytes());
        }
    }
    use sha2::Digest as _;
    let identity = hex::encode(sha2::Sha256::digest(&material));
    match zw_tls::client_config(roots, t.insecure, client.as_ref()) {
        Ok(cfg) => Some(crate::UpstreamTlsConfig {
            config: Arc::new(cfg),
            server_name: t.server_name.map(str::to_string),
            identity,
        }),
        Err(e) => {
            c.err(p, e.to_string());
            None
        }
    }
}

/// Traefik's `types.ClientTLS` (`ca`, `cert`, `key`, `insecureSkipVerify`; `caOptional`
/// accepted and ignored, as Traefik does since it deprecated it): the client configuration,
/// and the PEM it was made of (the CA, the certificate and key) for clients that take PEM.
#[allow(clippy::type_complexity)]
pub(crate) fn check_client_tls(
    c: &mut Checker<'_>,
    p: &str,
    label: &str,
    t: &crate::ClientTls,
    digest: &mut Vec<u8>,
) -> Option<(crate::UpstreamTlsConfig, ClientPem)> {
    c.unknown(p, &t.unknown);
    let client = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => Some((p.to_string(), cert, key)),
        (None, None) => None,
        _ => {
            c.err(p, "`cert` and `key` go together: set both or neither");
            None
        }
    };
    let settings = ClientTls {
        roots: t.ca.iter().map(|ca| (format!("{p}.ca"), ca)).collect(),
        client,
        insecure: t.insecure_skip_verify,
        server_name: None,
    };
    let config = client_tls(c, p, label, settings, digest)?;
    // Read again for the PEM (a file's bytes are in the digest already).
    let mut scratch = Vec::new();
    let ca = match &t.ca {
        Some(f) => Some(read(c, &format!("{p}.ca"), f, &mut scratch)?),
        None => None,
    };
    let pair = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => Some((
            read(c, &format!("{p}.cert"), cert, &mut scratch)?,
            read(c, &format!("{p}.key"), key, &mut scratch)?,
        )),
        _ => None,
    };
    Some((config, ClientPem { ca, pair }))
}

/// What a `ClientTLS` was made of, in PEM.
pub(crate) struct ClientPem {
    pub(crate) ca: Option<Vec<u8>>,
    pub(crate) pair: Option<(Vec<u8>, Vec<u8>)>,
}
