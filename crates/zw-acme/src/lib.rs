//! The ACME client of a standalone edge (Traefik's `certificatesResolvers.<name>.acme`):
//! certificates ordered from the CA for the names routers ask for, answered by HTTP-01 on
//! the resolver's entry point, kept in Traefik's `acme.json` ([`storage`]) and renewed
//! ahead of expiry ([`policy`]).
//!
//! [`Acme`] is shared: the edge's configuration loader tells it what is wanted
//! ([`Acme::want`]) and adds what it has to every configuration ([`Acme::certificates`]);
//! [`Acme::run`] orders what is missing and wakes the loader ([`Acme::subscribe`]) when a
//! certificate arrives, so a new certificate reaches new handshakes with the next
//! snapshot, without a restart.
#![forbid(unsafe_code)]

pub mod policy;
pub mod storage;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use zw_config::{AcmeDomains, AcmeResolver, KeyType};

use policy::Attempts;
use storage::{Domain, ResolverData, Storage, StoredAccount, StoredCertificate};

/// Why a certificate could not be had. Each says what to look at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ACME storage {path}: {reason}")]
    Storage { path: PathBuf, reason: String },
    #[error("caCertificates {path}: {reason}")]
    CaCertificate { path: PathBuf, reason: String },
    /// The CA's answer, with its problem document when it sent one.
    #[error("the ACME server {ca} refused: {source}")]
    Acme {
        ca: String,
        #[source]
        source: instant_acme::Error,
    },
    #[error("the order for {names} ended {status}: {detail}")]
    Order {
        names: String,
        status: String,
        detail: String,
    },
    #[error(
        "the CA offers no {1} challenge for {0}: set the other one (httpChallenge or tlsChallenge)"
    )]
    NoChallenge(String, String),
    #[error("making the certificate request failed: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("the CA's certificate cannot be served: {0}")]
    Issued(#[from] zw_tls::TlsError),
    #[error("the order for {0} took longer than {ORDER_TIMEOUT:?}")]
    Timeout(String),
    /// The challenge could not be put where the CA will look (see [`Challenges::ready`]).
    #[error("the challenge could not be presented: {0}")]
    NotPresented(String),
}

/// How long one order may take, challenges and polling included.
/// The path HTTP-01 tokens are fetched under (RFC 8555 §8.3); the edges answer it for
/// the ACME CA and for the operator's own domain checks.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

pub const ORDER_TIMEOUT: Duration = Duration::from_secs(180);
/// The longest sleep between two looks at what is due (a renewal far off is looked at
/// again after this, so a clock jump cannot hide it).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Where challenges are presented. HTTP-01: the edge answers
/// `GET /.well-known/acme-challenge/<token>` with the key authorization. TLS-ALPN-01
/// (RFC 8737): a handshake for the name that offers only `acme-tls/1` gets the given
/// self-signed certificate carrying the key authorization's digest.
pub trait Challenges: Send + Sync + 'static {
    fn present_http01(&self, token: &str, key_authorization: &str);
    fn clean_up_http01(&self, token: &str);
    fn present_tls_alpn01(&self, name: &str, certificate: Arc<zw_tls::rustls::sign::CertifiedKey>);
    fn clean_up_tls_alpn01(&self, name: &str);
    /// Called after a challenge is presented and before the CA is told to validate it:
    /// where presenting takes a while (the operator's token must reach every edge), this
    /// waits until it has; an error ends the order.
    fn ready(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send + '_>> {
        Box::pin(async { Ok(()) })
    }
}

/// A challenge presented for an order, to clean up when the order ends.
#[derive(Debug, Clone)]
enum Presented {
    Http01(String),
    TlsAlpn01(String),
}

/// A certificate a resolver holds, ready to add to a configuration.
#[derive(Clone)]
pub struct Held {
    pub resolver: String,
    pub names: Vec<String>,
    pub cert_pem: String,
    pub key_pem: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("resolver", &self.resolver)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Held {
    fn covers(&self, names: &[String]) -> bool {
        names.iter().all(|n| self.names.contains(n))
    }
}

/// What the run loop needs from the rest of the edge, and what it counts.
struct Inner {
    resolvers: Vec<AcmeResolver>,
    challenges: Arc<dyn Challenges>,
    storage: Mutex<BTreeMap<PathBuf, Storage>>,
    held: ArcSwap<Vec<Held>>,
    wanted: tokio::sync::watch::Sender<Vec<AcmeDomains>>,
    /// Counts the certificates obtained: a receiver sees every change, even one made
    /// while it was busy.
    changed: tokio::sync::watch::Sender<u64>,
    orders: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// The resolvers of a static configuration. Cheap to clone.
#[derive(Clone)]
pub struct Acme {
    inner: Arc<Inner>,
}

impl Acme {
    /// Reads each resolver's storage (certificates kept there are served at once; a
    /// storage that cannot be read is an error naming it, so nothing is overwritten).
    pub fn new(
        resolvers: Vec<AcmeResolver>,
        challenges: Arc<dyn Challenges>,
    ) -> Result<Acme, Error> {
        let mut storage = BTreeMap::new();
        let mut held = Vec::new();
        for r in &resolvers {
            if !storage.contains_key(&r.storage) {
                storage.insert(r.storage.clone(), Storage::open(&r.storage)?);
            }
            let Some(st) = storage.get(&r.storage) else {
                continue;
            };
            for c in st.resolver(&r.name)?.certificates {
                match held_of(&r.name, &c) {
                    Ok(h) => held.push(h),
                    // Traefik would fail the same way on this entry; the others serve.
                    Err(e) => {
                        tracing::warn!(resolver = %r.name, names = ?c.names(), error = %e, storage = %r.storage.display(), "stored certificate skipped")
                    }
                }
            }
        }
        tracing::info!(
            certificates = held.len(),
            "ACME certificates read from storage"
        );
        Ok(Acme {
            inner: Arc::new(Inner {
                resolvers,
                challenges,
                storage: Mutex::new(storage),
                held: ArcSwap::from_pointee(held),
                wanted: tokio::sync::watch::channel(Vec::new()).0,
                changed: tokio::sync::watch::channel(0).0,
                orders: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                last_error: Mutex::new(None),
            }),
        })
    }

    /// The certificates held now, for every configuration loaded.
    pub fn certificates(&self) -> Arc<Vec<Held>> {
        self.inner.held.load_full()
    }

    /// What the applied configuration's routers ask for; what is missing is ordered.
    pub fn want(&self, wanted: Vec<AcmeDomains>) {
        self.inner.wanted.send_if_modified(|w| {
            if *w == wanted {
                false
            } else {
                *w = wanted;
                true
            }
        });
    }

    /// Changes each time a new certificate is held.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Orders placed since the start (each a new order at the CA).
    pub fn orders(&self) -> u64 {
        self.inner.orders.load(Ordering::Relaxed)
    }

    /// Orders that failed since the start.
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// The last failure, as logged.
    pub fn last_error(&self) -> Option<String> {
        self.inner.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Orders and renews until `stop` fires.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let origin = Instant::now();
        let mut attempts: BTreeMap<AcmeDomains, Attempts> = BTreeMap::new();
        let mut accounts: BTreeMap<String, Account> = BTreeMap::new();
        let mut wanted_rx = self.inner.wanted.subscribe();
        loop {
            let wanted = wanted_rx.borrow_and_update().clone();
            let mut next = MAX_SLEEP;
            for w in &wanted {
                let now_epoch = epoch_now();
                let held = self.inner.held.load();
                let have = held
                    .iter()
                    .filter(|h| h.resolver == w.resolver && h.covers(&w.names))
                    .max_by_key(|h| h.not_after);
                if let Some(wait) =
                    have.and_then(|h| policy::until_renewal(now_epoch, h.not_before, h.not_after))
                {
                    next = next.min(wait);
                    continue;
                }
                let a = attempts.entry(w.clone()).or_default();
                let now = origin.elapsed();
                if let Some(wait) = a.wait(now) {
                    next = next.min(wait);
                    continue;
                }
                a.started(now);
                self.inner.orders.fetch_add(1, Ordering::Relaxed);
                match self.obtain(w, &mut accounts).await {
                    Ok(h) => {
                        a.succeeded();
                        tracing::info!(resolver = %w.resolver, names = ?w.names, not_after = h.not_after, renewing = have.is_some(), "certificate obtained");
                        let mut all: Vec<Held> = self.inner.held.load().as_ref().clone();
                        all.retain(|o| !(o.resolver == h.resolver && o.names == h.names));
                        all.push(h);
                        self.inner.held.store(Arc::new(all));
                        self.inner.changed.send_modify(|n| *n += 1);
                    }
                    Err(e) => {
                        a.failed(origin.elapsed());
                        self.inner.failures.fetch_add(1, Ordering::Relaxed);
                        let retry = a.backoff();
                        tracing::error!(resolver = %w.resolver, names = ?w.names, error = %e, failures = a.failures(), retry_in = ?retry, "ACME order failed");
                        if let Ok(mut last) = self.inner.last_error.lock() {
                            *last = Some(format!("{}: {e}", w.names.join(",")));
                        }
                        next = next.min(retry);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                r = wanted_rx.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    }

    fn resolver(&self, name: &str) -> Option<&AcmeResolver> {
        self.inner.resolvers.iter().find(|r| r.name == name)
    }

    /// One order, bounded in time; the result stored before it is returned.
    async fn obtain(
        &self,
        w: &AcmeDomains,
        accounts: &mut BTreeMap<String, Account>,
    ) -> Result<Held, Error> {
        let Some(r) = self.resolver(&w.resolver).cloned() else {
            return Err(Error::Order {
                names: w.names.join(","),
                status: "unordered".into(),
                detail: format!("no resolver `{}`", w.resolver),
            });
        };
        let account = match accounts.get(&r.name) {
            Some(a) => a.clone(),
            None => {
                let a = self.account(&r).await?;
                accounts.insert(r.name.clone(), a.clone());
                a
            }
        };
        let (cert_pem, key_pem) = order_certificate(
            &account,
            &OrderRequest {
                ca: &r.ca_server,
                names: &w.names,
                key_type: r.key_type,
                http01: r.http_challenge.is_some(),
            },
            self.inner.challenges.as_ref(),
        )
        .await?;
        let stored = StoredCertificate {
            domain: Domain {
                main: w.names.first().cloned().unwrap_or_default(),
                sans: w.names.iter().skip(1).cloned().collect(),
            },
            certificate: cert_pem.clone().into_bytes(),
            key: key_pem.clone().into_bytes(),
            store: "default".into(),
        };
        let held = held_of(&r.name, &stored)?;
        self.update(&r, |d| {
            d.certificates.retain(|c| c.names() != stored.names());
            d.certificates.push(stored.clone());
        })?;
        Ok(held)
    }

    /// Applies `f` to the resolver's stored data and writes the storage.
    fn update(&self, r: &AcmeResolver, f: impl FnOnce(&mut ResolverData)) -> Result<(), Error> {
        let mut all = self.inner.storage.lock().map_err(|_| Error::Storage {
            path: r.storage.clone(),
            reason: "an earlier write panicked".into(),
        })?;
        let st = match all.get_mut(&r.storage) {
            Some(st) => st,
            None => all
                .entry(r.storage.clone())
                .or_insert(Storage::open(&r.storage)?),
        };
        let mut data = st.resolver(&r.name)?;
        f(&mut data);
        st.save(&r.name, &data)
    }

    /// The resolver's account: the stored one for this CA, else a new registration,
    /// stored before it is used.
    async fn account(&self, r: &AcmeResolver) -> Result<Account, Error> {
        let acme = |source| Error::Acme {
            ca: r.ca_server.clone(),
            source,
        };
        let stored = {
            let all = self.inner.storage.lock().ok();
            all.and_then(|all| all.get(&r.storage).and_then(|st| st.resolver(&r.name).ok()))
                .and_then(|d| d.account)
                .filter(|a| a.ca_server == r.ca_server)
        };
        if let Some(a) = stored {
            if let Ok(creds) = serde_json::from_value::<AccountCredentials>(a.credentials) {
                return client(&r.ca_server, r.ca_certificates.first())?
                    .from_credentials(creds)
                    .await
                    .map_err(acme);
            }
        }
        let (account, creds) =
            register(&r.ca_server, r.ca_certificates.first(), r.email.as_deref()).await?;
        tracing::info!(resolver = %r.name, ca = %r.ca_server, account = %account.id(), "ACME account registered");
        let credentials = serde_json::to_value(&creds).map_err(|e| Error::Storage {
            path: r.storage.clone(),
            reason: e.to_string(),
        })?;
        self.update(r, |d| {
            d.account = Some(StoredAccount {
                ca_server: r.ca_server.clone(),
                credentials,
            })
        })?;
        Ok(account)
    }
}

/// A client of the ACME server at `ca`, trusting `ca_certificate` (a PEM root) for its
/// HTTPS certificate, or the system's roots.
pub fn client(
    ca: &str,
    ca_certificate: Option<&PathBuf>,
) -> Result<instant_acme::AccountBuilder, Error> {
    match ca_certificate {
        None => Account::builder().map_err(|source| Error::Acme {
            ca: ca.to_string(),
            source,
        }),
        Some(path) => {
            if let Err(e) = std::fs::metadata(path) {
                return Err(Error::CaCertificate {
                    path: path.clone(),
                    reason: e.to_string(),
                });
            }
            Account::builder_with_root(path).map_err(|e| Error::CaCertificate {
                path: path.clone(),
                reason: e.to_string(),
            })
        }
    }
}

/// Registers a new account at `ca` (terms of service agreed, as Traefik does).
pub async fn register(
    ca: &str,
    ca_certificate: Option<&PathBuf>,
    email: Option<&str>,
) -> Result<(Account, AccountCredentials), Error> {
    let contact = email.map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    client(ca, ca_certificate)?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            ca.to_string(),
            None,
        )
        .await
        .map_err(|source| Error::Acme {
            ca: ca.to_string(),
            source,
        })
}

/// One certificate to order.
#[derive(Debug, Clone, Copy)]
pub struct OrderRequest<'a> {
    /// The CA's directory URL (for error messages).
    pub ca: &'a str,
    /// The names, the first as the subject.
    pub names: &'a [String],
    pub key_type: KeyType,
    /// HTTP-01 (else TLS-ALPN-01).
    pub http01: bool,
}

/// Orders a certificate, bounded by [`ORDER_TIMEOUT`]: a challenge for each name presented
/// through `challenges` (and cleaned up after, whatever the outcome), finalized with a key
/// made here. Returns the PEM chain and the PEM key.
pub async fn order_certificate(
    account: &Account,
    req: &OrderRequest<'_>,
    challenges: &dyn Challenges,
) -> Result<(String, String), Error> {
    let presented = Mutex::new(Vec::new());
    let result = tokio::time::timeout(ORDER_TIMEOUT, order(account, req, challenges, &presented))
        .await
        .unwrap_or_else(|_| Err(Error::Timeout(req.names.join(","))));
    for p in presented.lock().map(|t| t.clone()).unwrap_or_default() {
        match p {
            Presented::Http01(token) => challenges.clean_up_http01(&token),
            Presented::TlsAlpn01(name) => challenges.clean_up_tls_alpn01(&name),
        }
    }
    result
}

async fn order(
    account: &Account,
    req: &OrderRequest<'_>,
    challenges: &dyn Challenges,
    presented: &Mutex<Vec<Presented>>,
) -> Result<(String, String), Error> {
    let names = req.names;
    let acme = |source| Error::Acme {
        ca: req.ca.to_string(),
        source,
    };
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(acme)?;
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a.map_err(acme)?;
        match a.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            s => {
                return Err(Error::Order {
                    names: names.join(","),
                    status: format!("{s:?}").to_lowercase(),
                    detail: "an authorization is no longer pending".into(),
                })
            }
        }
        let id = a.identifier().to_string();
        let kind = if req.http01 {
            ChallengeType::Http01
        } else {
            ChallengeType::TlsAlpn01
        };
        let mut ch = a
            .challenge(kind.clone())
            .ok_or_else(|| Error::NoChallenge(id.clone(), format!("{kind:?}")))?;
        let key_auth = ch.key_authorization();
        let p = if kind == ChallengeType::Http01 {
            challenges.present_http01(&ch.token, key_auth.as_str());
            Presented::Http01(ch.token.clone())
        } else {
            let cert = tls_alpn01_certificate(&id, key_auth.digest().as_ref())?;
            challenges.present_tls_alpn01(&id, cert);
            Presented::TlsAlpn01(id.clone())
        };
        if let Ok(mut t) = presented.lock() {
            t.push(p);
        }
        challenges.ready().await?;
        ch.set_ready().await.map_err(acme)?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(ORDER_TIMEOUT);
    let status = order.poll_ready(&retry).await.map_err(acme)?;
    if status != OrderStatus::Ready {
        let detail = order
            .state()
            .error
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "the CA gave no reason".into());
        return Err(Error::Order {
            names: names.join(","),
            status: format!("{status:?}").to_lowercase(),
            detail,
        });
    }
    let key = new_key(req.key_type)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await.map_err(acme)?;
    let chain = order.poll_certificate(&retry).await.map_err(acme)?;
    Ok((chain, key.serialize_pem()))
}

/// A certificate's private key of `kind`.
pub fn new_key(kind: KeyType) -> Result<rcgen::KeyPair, rcgen::Error> {
    let rsa = |size| rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size);
    match kind {
        KeyType::Ec256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::Ec384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Rsa2048 => rsa(rcgen::RsaKeySize::_2048),
        KeyType::Rsa3072 => rsa(rcgen::RsaKeySize::_3072),
        KeyType::Rsa4096 => rsa(rcgen::RsaKeySize::_4096),
    }
}

/// The self-signed certificate TLS-ALPN-01 answers with (RFC 8737 §3): the name as its one
/// DNS name and the digest of the key authorization in the critical `acmeIdentifier`
/// extension.
fn tls_alpn01_certificate(
    name: &str,
    digest: &[u8],
) -> Result<Arc<zw_tls::rustls::sign::CertifiedKey>, Error> {
    if digest.len() != 32 {
        // rcgen would panic; a SHA-256 digest is always 32 bytes.
        return Err(Error::Order {
            names: name.into(),
            status: "unanswered".into(),
            detail: format!("a key authorization digest of {} bytes", digest.len()),
        });
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    Ok(zw_tls::load_pair(cert.pem().as_bytes(), key.serialize_pem().as_bytes())?.key)
}

/// A stored certificate, checked (PEM, key against certificate) and with its validity.
fn held_of(resolver: &str, c: &StoredCertificate) -> Result<Held, Error> {
    let loaded = zw_tls::load_pair(&c.certificate, &c.key)?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(Held {
        resolver: resolver.to_string(),
        names: c
            .names()
            .into_iter()
            .map(|n| n.to_ascii_lowercase())
            .collect(),
        cert_pem: text(&c.certificate),
        key_pem: text(&c.key),
        not_before: loaded.not_before,
        not_after: loaded.not_after,
    })
}

fn epoch_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
