//! Domain ownership: a domain is routed (and gets a certificate) only once the operator
//! has shown that its name leads to this platform. The operator puts a random token on
//! every edge (the HTTP-01 path, so the edges answer it like an ACME challenge, on every
//! entry point and ahead of routing), waits until every connected edge runs it, and
//! fetches `http://NAME/.well-known/acme-challenge/TOKEN`. The answer it expects can only
//! come from one of its edges: the name's DNS (or the balancer the check was sent
//! through) leads here. This is the check Vercel and Fly.io run before serving a custom
//! domain; a name claimed by mistake stays unrouted and says why in `zeitwork get domains`.
//!
//! An admin may still mark a domain verified by hand (`verified: true`), for names proven
//! another way (a DNS record the operator cannot see).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use zw_store::UnverifiedDomain;

use crate::App;

/// Where the operator sends its ownership check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DomainCheck {
    /// To the name itself, port 80, as DNS resolves it: what a client on the internet
    /// would reach. The default.
    #[default]
    Dns,
    /// To the balancer of each region the domain's app runs in, with `Host: NAME`: for
    /// names that resolve to this machine only (`zeitwork up`'s `*.localhost`) or an
    /// operator that cannot reach the platform's public address from inside.
    Balancer,
}

/// Why a check failed; shown to the user as is, so each says what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckError {
    #[error("the state store: {0}")]
    Store(#[from] zw_store::StoreError),
    #[error("{0}")]
    Edges(String),
    #[error(
        "wildcard names cannot be proven over HTTP (they need DNS-01, which Zeitwork does \
         not do yet); once the name's DNS points at the balancers, mark it verified: \
         PATCH /api/v1/domains/NAME {{\"verified\": true}}"
    )]
    Wildcard,
    #[error("none of the app's regions has a balancer address to check through (set one: PATCH /api/v1/regions/REGION)")]
    NoBalancer,
    #[error("http://{name}/ did not answer the check: {source}; point the name's DNS at the region's balancer")]
    Unreachable {
        name: String,
        source: zw_http::Error,
    },
    #[error("http://{name}{path} answered {status} with another body: the name leads somewhere else than this platform's edges; point its DNS at the region's balancer")]
    Elsewhere {
        name: String,
        path: String,
        status: u16,
    },
}

/// First retry after a failed check; doubled per failure up to [`MAX_BACKOFF`]. Short:
/// a user who just pointed their DNS is waiting for it.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long the edges get to take the tokens (a connected edge takes a snapshot in
/// milliseconds).
const EDGES_WAIT: Duration = Duration::from_secs(10);

/// When a domain that failed `failures` checks in a row is checked next.
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// Checks unverified domains until `stop` fires: at once when one appears, then with
/// backoff while it fails.
pub(crate) async fn run(app: App, how: DomainCheck, mut stop: watch::Receiver<bool>) {
    // per domain: failures in a row, when it is due again, and the balancers it was
    // checked through (a new balancer address is worth a check at once)
    let mut failing: BTreeMap<String, (u32, Instant, Vec<String>)> = BTreeMap::new();
    let mut changes = app.store.changes();
    let mut expired_at: Option<Instant> = None;
    loop {
        changes.borrow_and_update();
        // Tokens of checks and orders whose operator died while they ran (neither lasts
        // an hour); looked for once a minute at most, not at every change.
        if expired_at.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            expired_at = Some(Instant::now());
            if let Err(e) = app.store.expire_acme_challenges(3600 * 1000).await {
                tracing::warn!(error = %e, "removing stale HTTP-01 tokens failed");
            }
        }
        let mut next = Duration::from_secs(3600);
        let pending = match app.store.unverified_domains().await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "reading the domains to verify failed");
                next = Duration::from_secs(5);
                Vec::new()
            }
        };
        failing.retain(|name, _| pending.iter().any(|d| d.name == *name));
        let now = Instant::now();
        let due: Vec<UnverifiedDomain> = pending
            .into_iter()
            .filter(|d| match failing.get(&d.name) {
                Some((_, at, through)) if *at > now && *through == d.balancers => {
                    next = next.min(*at - now);
                    false
                }
                _ => true,
            })
            .collect();
        if !due.is_empty() {
            for (d, result) in check_all(&app, how, &due).await {
                match result {
                    Ok(()) => {
                        failing.remove(&d.name);
                        match app.store.domain_verified(&d.name).await {
                            Ok(()) => {
                                tracing::info!(domain = %d.name, "domain verified: it leads to this platform; routed from the next snapshot")
                            }
                            Err(e) => {
                                tracing::error!(domain = %d.name, error = %e, "recording a verified domain failed")
                            }
                        }
                    }
                    Err(e) => {
                        let f = failing
                            .entry(d.name.clone())
                            .or_insert((0, now, Vec::new()));
                        f.0 += 1;
                        let retry = backoff(f.0);
                        f.1 = Instant::now() + retry;
                        f.2.clone_from(&d.balancers);
                        next = next.min(retry);
                        tracing::warn!(domain = %d.name, error = %e, failures = f.0, retry_in = ?retry, "domain not verified");
                        if let Err(e) = app.store.domain_check_failed(&d.name, &e.to_string()).await
                        {
                            tracing::error!(domain = %d.name, error = %e, "recording a failed domain check failed");
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            r = changes.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
        // A burst of writes (a deploy) is one look, not many.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One round: a token per domain on every edge, then one fetch per domain.
async fn check_all<'a>(
    app: &App,
    how: DomainCheck,
    due: &'a [UnverifiedDomain],
) -> Vec<(&'a UnverifiedDomain, Result<(), CheckError>)> {
    let tokens: Vec<(String, String)> = due
        .iter()
        .map(|_| {
            let token = zw_store::random_hex(16);
            let answer = format!("{token}.{}", zw_store::random_hex(16));
            (token, answer)
        })
        .collect();
    let placed = place(app, &tokens).await;
    let mut out = Vec::with_capacity(due.len());
    for (d, (token, answer)) in due.iter().zip(&tokens) {
        let result = match &placed {
            Err(e) => Err(CheckError::Edges(e.to_string())),
            Ok(()) => check(how, d, token, answer).await,
        };
        out.push((d, result));
    }
    for (token, _) in &tokens {
        if let Err(e) = app.store.delete_acme_challenge(token).await {
            tracing::warn!(error = %e, "removing a domain check's token failed");
        }
    }
    out
}

async fn place(app: &App, tokens: &[(String, String)]) -> Result<(), CheckError> {
    for (token, answer) in tokens {
        app.store.put_acme_challenge(token, answer).await?;
    }
    for (token, _) in tokens {
        crate::acme::edges_hold(app, token, EDGES_WAIT)
            .await
            .map_err(|why| CheckError::Edges(format!("{why}; the check runs again")))?;
    }
    Ok(())
}

async fn check(
    how: DomainCheck,
    d: &UnverifiedDomain,
    token: &str,
    answer: &str,
) -> Result<(), CheckError> {
    if d.name.starts_with("*.") {
        return Err(CheckError::Wildcard);
    }
    let path = format!("{}{token}", zw_acme::HTTP01_PREFIX);
    let targets = match how {
        DomainCheck::Dns => vec![format!("{}:80", d.name)],
        DomainCheck::Balancer if d.balancers.is_empty() => return Err(CheckError::NoBalancer),
        DomainCheck::Balancer => d.balancers.clone(),
    };
    let mut last = None;
    for target in &targets {
        match zw_http::get(target, &path, &[("host", d.name.as_str())], TIMEOUT, 4096).await {
            Ok((200, body)) if body == answer.as_bytes() => return Ok(()),
            Ok((status, _)) => {
                last = Some(CheckError::Elsewhere {
                    name: d.name.clone(),
                    path: path.clone(),
                    status,
                })
            }
            Err(source) => {
                last = Some(CheckError::Unreachable {
                    name: d.name.clone(),
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or(CheckError::NoBalancer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_two_seconds_to_five_minutes() {
        let secs: Vec<u64> = (1..=10).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
