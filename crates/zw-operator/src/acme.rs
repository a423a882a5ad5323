//! The fleet's one ACME client: for each verified domain, one certificate, whatever the
//! number of edges and regions (Traefik's open-source edition orders once per instance,
//! and its docs warn against running several with Let's Encrypt enabled).
//!
//! HTTP-01 tokens go into the store, so they travel in every region's snapshot and
//! whichever edge the CA's request reaches answers; the CA is told to validate only once
//! every connected edge has acknowledged a snapshot holding the token. Certificates are
//! stored with their key sealed (the operator's sealing key) and reach every edge with the
//! next snapshot. A lease in the store keeps two operators on one database from ordering
//! one certificate twice. Renewal, backoff and the hourly cap are `zw_acme::policy`'s.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use zw_acme::policy::{self, Attempts};
use zw_acme::{Challenges, OrderRequest};
use zw_store::IssuedTls;

use crate::App;

/// Why a domain has no certificate yet. Each says where to look.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IssueError {
    #[error("the state store: {0}")]
    Store(#[from] zw_store::StoreError),
    #[error(transparent)]
    Acme(#[from] zw_acme::Error),
    #[error("making, signing or sealing a key: {0}")]
    Pki(#[from] zw_pki::PkiError),
    #[error("the issued certificate cannot be served: {0}")]
    Issued(#[from] zw_tls::TlsError),
    /// The local CA (made and kept like the platform CA).
    #[error("the local CA: {0}")]
    Ca(String),
    #[error("the ACME account in the store: {0}")]
    Account(#[from] serde_json::Error),
}

/// The ACME CA the operator orders from.
#[derive(Debug, Clone)]
pub struct AcmeOptions {
    /// The directory URL.
    pub directory: String,
    pub email: Option<String>,
    /// The root of the CA's own HTTPS certificate, when not publicly trusted.
    pub ca_certificate: Option<PathBuf>,
}

const ACCOUNT_SETTING: &str = "acme_account";
const ACCOUNT_PURPOSE: &str = "acme.account";
/// What a certificate's key is sealed for in the store.
pub(crate) const KEY_PURPOSE: &str = "tls_certificate.key";
/// How long an order's lease lasts (longer than an order may take).
const LEASE_MS: i64 = 10 * 60 * 1000;
/// How long the edges get to take a token before the order gives up.
const EDGES_WAIT: Duration = Duration::from_secs(30);

/// Where the operator's certificates come from.
#[derive(Debug, Clone)]
pub(crate) enum Issuer {
    /// An ACME CA, for every verified domain but `.localhost` ones.
    Acme(AcmeOptions),
    /// The local CA (`zeitwork up`), for `.localhost` domains, certificates valid this long.
    Local(Duration),
}

impl Issuer {
    /// Why a name [`Issuer::signs`] refuses gets no certificate, and what to do.
    fn not_signed(&self) -> &'static str {
        match self {
            Issuer::Acme(_) => "no public CA signs a .localhost name; it is served over HTTP only",
            Issuer::Local(_) => "the local CA signs only *.localhost names; start with --acme-ca URL to order certificates for other names",
        }
    }

    fn signs(&self, domain: &str) -> bool {
        // No public CA signs a `.localhost` name: ordering one would only fail.
        match self {
            Issuer::Acme(_) => !locally_issued(domain),
            Issuer::Local(_) => locally_issued(domain),
        }
    }
}

/// Orders (or issues) and renews certificates for verified domains until `stop` fires.
pub(crate) async fn run(app: App, issuer: Issuer, mut stop: watch::Receiver<bool>) {
    let holder = format!("operator-{}", zw_store::random_hex(8));
    let origin = Instant::now();
    let mut attempts: BTreeMap<String, Attempts> = BTreeMap::new();
    let mut account: Option<instant_acme::Account> = None;
    // names recorded as not this issuer's (once per run)
    let mut said = std::collections::BTreeSet::new();
    let mut changes = app.store.changes();
    match &issuer {
        Issuer::Acme(o) => {
            tracing::info!(ca = %o.directory, "ACME: ordering certificates for verified domains")
        }
        Issuer::Local(_) => {
            tracing::info!("local CA: issuing certificates for verified .localhost domains")
        }
    }
    // The local CA's certificates renew at two thirds of the lifetime they were given
    // (theirs starts an hour early, for clocks that disagree).
    let lifetime = match &issuer {
        Issuer::Local(v) => Some(*v),
        Issuer::Acme(_) => None,
    };
    loop {
        changes.borrow_and_update();
        let mut next = Duration::from_secs(3600);
        let wanted = match due(&app, lifetime).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "reading the domains to certify failed");
                next = Duration::from_secs(5);
                Vec::new()
            }
        };
        for (domain, wait) in wanted {
            if !issuer.signs(&domain) {
                if !said.contains(&domain) {
                    if let Err(e) = app.store.tls_not_issued(&domain, issuer.not_signed()).await {
                        tracing::warn!(%domain, error = %e, "recording an unsigned name failed");
                    } else {
                        said.insert(domain);
                    }
                }
                continue;
            }
            if let Some(wait) = wait {
                next = next.min(wait);
                continue;
            }
            let a = attempts.entry(domain.clone()).or_default();
            let now = origin.elapsed();
            if let Some(wait) = a.wait(now) {
                next = next.min(wait);
                continue;
            }
            let lease = format!("certificate:{domain}");
            match app.store.try_lease(&lease, &holder, LEASE_MS).await {
                Ok(true) => {}
                Ok(false) => {
                    // Another operator orders it; its certificate arrives by the store.
                    next = next.min(Duration::from_secs(30));
                    continue;
                }
                Err(e) => {
                    tracing::error!(%domain, error = %e, "taking the certificate's lease failed");
                    next = next.min(Duration::from_secs(5));
                    continue;
                }
            }
            // Another operator may have stored a certificate since `due` was read (and
            // released its lease): look again under the lease, so no domain is ordered twice.
            let still_due = due(&app, lifetime)
                .await
                .map(|d| d.iter().any(|(n, wait)| *n == domain && wait.is_none()))
                .unwrap_or(false);
            if !still_due {
                let _ = app.store.release_lease(&lease, &holder).await;
                continue;
            }
            a.started(now);
            let result = match &issuer {
                Issuer::Acme(o) => obtain(&app, o, &mut account, &domain).await,
                Issuer::Local(validity) => issue_local(&app, &domain, *validity).await,
            };
            let _ = app.store.release_lease(&lease, &holder).await;
            match result {
                Ok(not_after) => {
                    a.succeeded();
                    tracing::info!(%domain, not_after, "certificate obtained; every edge gets it with the next snapshot");
                }
                Err(e) => {
                    a.failed(origin.elapsed());
                    let retry = a.backoff();
                    tracing::error!(%domain, error = %e, failures = a.failures(), retry_in = ?retry, "certificate order failed");
                    let _ = app.store.tls_order_failed(&domain, &e.to_string()).await;
                    next = next.min(retry);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            r = changes.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
        // A burst of writes (a deploy) is one look, not many.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the local issuer signs for `domain`: names under `.localhost`, which resolve to
/// this machine (RFC 6761) and which no public CA will sign.
pub(crate) fn locally_issued(domain: &str) -> bool {
    domain == "localhost" || domain.ends_with(".localhost")
}

/// The local CA's root certificate (PEM), made on first use.
pub(crate) async fn local_root(app: &App) -> Result<String, String> {
    Ok(
        crate::ca::load_or_create_named(&app.store, &app.sealing_key, crate::ca::LOCAL_ISSUER)
            .await?
            .cert_pem()
            .to_string(),
    )
}

async fn issue_local(app: &App, domain: &str, validity: Duration) -> Result<i64, IssueError> {
    let ca = crate::ca::load_or_create_named(&app.store, &app.sealing_key, crate::ca::LOCAL_ISSUER)
        .await
        .map_err(IssueError::Ca)?;
    let csr = zw_pki::Csr::generate(domain)?;
    let cert = ca.sign(
        &csr.csr_pem,
        zw_pki::Role::Node,
        domain,
        &[domain.to_string()],
        validity,
    )?;
    store_certificate(app, domain, &cert, &csr.key_pem).await
}

/// Seals the key and stores the certificate; every edge gets it with the next snapshot.
async fn store_certificate(
    app: &App,
    domain: &str,
    chain: &str,
    key: &str,
) -> Result<i64, IssueError> {
    let loaded = zw_tls::load_pair(chain.as_bytes(), key.as_bytes())?;
    let sealed = app.sealing_key.seal(key.as_bytes(), KEY_PURPOSE)?;
    app.store
        .put_tls_certificate(IssuedTls {
            domain,
            cert_pem: chain,
            sealed_key: &sealed,
            issuer: &loaded.issuer,
            not_before: loaded.not_before,
            not_after: loaded.not_after,
        })
        .await?;
    Ok(loaded.not_after)
}

/// Verified domains that can have a certificate (wildcards need DNS-01: not here), each
/// with `None` when an order is due now, or how long until its renewal. With `lifetime`,
/// renewal counts from `not_after - lifetime` rather than the certificate's `not_before`.
async fn due(
    app: &App,
    lifetime: Option<Duration>,
) -> Result<Vec<(String, Option<Duration>)>, IssueError> {
    let state = app.store.routing_state().await?;
    let have: BTreeMap<String, (i64, i64)> = app
        .store
        .tls_certificates()
        .await?
        .into_iter()
        .filter_map(|c| Some((c.domain, (c.not_before?, c.not_after?))))
        .collect();
    let now = zw_proto::time::unix_millis() / 1000;
    Ok(state
        .domains
        .into_iter()
        .filter(|d| !d.name.starts_with("*."))
        .map(|d| {
            let wait = have.get(&d.name).and_then(|(nb, na)| {
                let from = lifetime.map_or(*nb, |l| na - l.as_secs() as i64);
                policy::until_renewal(now, from, *na)
            });
            (d.name, wait)
        })
        .collect())
}

/// One order; the certificate stored (key sealed) before it returns its expiry.
async fn obtain(
    app: &App,
    opts: &AcmeOptions,
    account: &mut Option<instant_acme::Account>,
    domain: &str,
) -> Result<i64, IssueError> {
    app.store.tls_order_started(domain).await?;
    let acct = match account {
        Some(a) => a.clone(),
        None => {
            let a = load_or_register(app, opts).await?;
            *account = Some(a.clone());
            a
        }
    };
    let names = [domain.to_string()];
    let challenges = StoreChallenges {
        app: app.clone(),
        pending: Mutex::new(Vec::new()),
    };
    let (chain, key) = zw_acme::order_certificate(
        &acct,
        &OrderRequest {
            ca: &opts.directory,
            names: &names,
            key_type: zw_config::KeyType::Ec256,
            http01: true,
        },
        &challenges,
    )
    .await?;
    store_certificate(app, domain, &chain, &key).await
}

/// The operator's account at the CA: the stored one (sealed: it holds the account key)
/// when it is for this directory, else a new registration, stored before it is used.
async fn load_or_register(
    app: &App,
    opts: &AcmeOptions,
) -> Result<instant_acme::Account, IssueError> {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Stored {
        directory: String,
        credentials: serde_json::Value,
    }
    if let Some(sealed) = app.store.setting(ACCOUNT_SETTING).await? {
        let opened = app.sealing_key.open(&sealed, ACCOUNT_PURPOSE)?;
        if let Ok(stored) = serde_json::from_slice::<Stored>(&opened) {
            if stored.directory == opts.directory {
                if let Ok(creds) = serde_json::from_value(stored.credentials) {
                    return zw_acme::client(&opts.directory, opts.ca_certificate.as_ref())?
                        .from_credentials(creds)
                        .await
                        .map_err(|source| {
                            IssueError::Acme(zw_acme::Error::Acme {
                                ca: opts.directory.clone(),
                                source,
                            })
                        });
                }
            }
        }
    }
    let (account, creds) = zw_acme::register(
        &opts.directory,
        opts.ca_certificate.as_ref(),
        opts.email.as_deref(),
    )
    .await?;
    let stored = serde_json::to_vec(&Stored {
        directory: opts.directory.clone(),
        credentials: serde_json::to_value(&creds)?,
    })?;
    let sealed = app.sealing_key.seal(&stored, ACCOUNT_PURPOSE)?;
    let stored_now = match app.store.setting(ACCOUNT_SETTING).await? {
        None => app
            .store
            .init_setting(ACCOUNT_SETTING, &sealed)
            .await
            .map(|_| ()),
        Some(old) => app
            .store
            .replace_setting(ACCOUNT_SETTING, &old, &sealed)
            .await
            .map(|_| ()),
    };
    stored_now?;
    tracing::info!(ca = %opts.directory, account = %account.id(), "ACME account registered");
    Ok(account)
}

/// HTTP-01 through the store: a token presented is written there when the order is
/// about to be validated ([`Challenges::ready`]), which waits until every connected edge
/// runs a snapshot that holds it.
struct StoreChallenges {
    app: App,
    pending: Mutex<Vec<(String, String)>>,
}

impl Challenges for StoreChallenges {
    fn present_http01(&self, token: &str, key_authorization: &str) {
        if let Ok(mut p) = self.pending.lock() {
            p.push((token.to_string(), key_authorization.to_string()));
        }
    }

    fn clean_up_http01(&self, token: &str) {
        let (store, token) = (self.app.store.clone(), token.to_string());
        tokio::spawn(async move {
            if let Err(e) = store.delete_acme_challenge(&token).await {
                tracing::warn!(error = %e, "ACME: removing a used token failed");
            }
        });
    }

    fn present_tls_alpn01(&self, _: &str, _: Arc<zw_tls::rustls::sign::CertifiedKey>) {}

    fn clean_up_tls_alpn01(&self, _: &str) {}

    fn ready(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), zw_acme::Error>> + Send + '_>>
    {
        Box::pin(async move {
            let pending: Vec<(String, String)> = self
                .pending
                .lock()
                .map(|mut p| std::mem::take(&mut *p))
                .unwrap_or_default();
            for (token, key_auth) in &pending {
                self.app
                    .store
                    .put_acme_challenge(token, key_auth)
                    .await
                    .map_err(|e| zw_acme::Error::NotPresented(format!("the state store: {e}")))?;
            }
            for (token, _) in &pending {
                edges_hold(&self.app, token, EDGES_WAIT)
                    .await
                    .map_err(zw_acme::Error::NotPresented)?;
            }
            Ok(())
        })
    }
}

/// Waits (at most `wait`) until every connected edge has acknowledged a snapshot of its
/// region that holds `token`; else why not.
pub(crate) async fn edges_hold(app: &App, token: &str, wait: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    loop {
        let published = app.published.borrow().clone();
        let edges = app
            .store
            .edge_proxies(None, None, Some(1000))
            .await
            .map_err(|e| format!("the state store: {e}"))?
            .items;
        let connected: Vec<_> = edges.iter().filter(|e| e.connected).collect();
        let all = !connected.is_empty()
            && connected.iter().all(|e| {
                published.get(&e.region).is_some_and(|p| {
                    p.body.contains(token) && e.applied_hash.as_deref() == Some(p.hash.as_str())
                })
            });
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(if connected.is_empty() {
                "no edge is connected to answer the HTTP-01 token".to_string()
            } else {
                format!("the edges did not take the token's snapshot within {wait:?}")
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
