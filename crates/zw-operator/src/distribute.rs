//! The compiler loop: on every committed change, compile each region's snapshot, record
//! it (a new version only when its content changed) and publish it to the edge sessions.
//!
//! Changes are debounced: the first change of a burst starts a short wait that collects the
//! rest, so a hundred writes in a row cost a handful of compilations, not a hundred.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use zw_config::{Config, Limits};
use zw_store::Store;

/// One region's current snapshot, as edges receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub version: u64,
    pub hash: String,
    pub body: Arc<str>,
}

/// Region name → its newest snapshot.
pub type PublishedMap = Arc<BTreeMap<String, Arc<Published>>>;

pub(crate) async fn compile_loop(
    store: Store,
    base: Config,
    debounce: Duration,
    sealing_key: zw_pki::SealingKey,
    publish: watch::Sender<PublishedMap>,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = store.changes();
    loop {
        changes.borrow_and_update();
        let started = Instant::now();
        match compile_once(&store, &base, &sealing_key).await {
            Ok(map) => {
                publish.send_if_modified(|current| {
                    if **current == map {
                        return false;
                    }
                    for (region, snap) in map.iter() {
                        if current.get(region).map(|c| c.version) != Some(snap.version) {
                            tracing::info!(%region, version = snap.version, hash = %snap.hash, took = ?started.elapsed(), "snapshot published");
                        }
                    }
                    *current = Arc::new(map);
                    true
                });
            }
            Err(e) => {
                // Edges keep what they run; the next change (or retry) tries again.
                tracing::error!(error = %e, "compiling snapshots failed; edges keep their current version");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.changed() => return,
                }
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
        tokio::time::sleep(debounce).await;
    }
}

async fn compile_once(
    store: &Store,
    base: &Config,
    sealing_key: &zw_pki::SealingKey,
) -> Result<BTreeMap<String, Arc<Published>>, String> {
    let mut state = store.routing_state().await.map_err(|e| e.to_string())?;
    // Certificates reach the edges with their keys opened here, just before compiling.
    for c in store.tls_certificates().await.map_err(|e| e.to_string())? {
        let (Some(cert_pem), Some(sealed)) = (c.cert_pem, c.sealed_key) else {
            continue;
        };
        match sealing_key.open(&sealed, crate::acme::KEY_PURPOSE) {
            Ok(key) => state.certificates.push(zw_snapshot::DomainCertificate {
                domain: c.domain,
                cert_pem,
                key_pem: String::from_utf8_lossy(&key).into_owned(),
            }),
            Err(e) => {
                tracing::error!(domain = %c.domain, error = %e, "a stored certificate's key does not open with this operator's sealing key; the domain is served without it")
            }
        }
    }
    let limits = Limits::default();
    let mut out = BTreeMap::new();
    for region in state.regions.keys() {
        let config = match zw_snapshot::compile(&state, region, base) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(%region, error = %e, "region's snapshot not compiled");
                continue;
            }
        };
        let valid = match zw_config::validate(config, &limits) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(%region, errors = %e, "region's compiled snapshot is invalid; not published");
                continue;
            }
        };
        let body = serde_json::to_string(&valid.config).map_err(|e| e.to_string())?;
        let stored = store
            .record_snapshot(region, &valid.hash, &body)
            .await
            .map_err(|e| e.to_string())?;
        out.insert(
            region.clone(),
            Arc::new(Published {
                version: stored.version,
                hash: stored.hash,
                body: stored.body.into(),
            }),
        );
    }
    Ok(out)
}
