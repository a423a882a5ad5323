//! The database provider: for small setups without an operator process, the edge reads
//! the operator's schema itself (domains → deployments → instances → regions) every
//! interval and compiles its region's snapshot with the operator's own compiler.
//!
//! Polling is this mode's nature (seed 004's `EDGEPROXY_UPDATE_INTERVAL`); the platform
//! path (control plane) pushes instead. A failed read keeps the running configuration.

use std::time::Duration;

use tokio::sync::watch;
use zw_config::{Config, Limits};
use zw_store::Store;

use crate::Edge;

pub struct DatabaseProvider {
    pub store: Store,
    pub region: String,
    pub interval: Duration,
    pub limits: Limits,
    /// Shown as the origin at `/debug/config` (a redacted URL).
    pub origin: String,
}

impl DatabaseProvider {
    /// Reads and applies once. `Ok(None)` when nothing changed.
    pub async fn poll(&self, edge: &Edge) -> Result<Option<u64>, crate::Error> {
        let state = self
            .store
            .routing_state()
            .await
            .map_err(|e| crate::Error::Database(e.to_string()))?;
        if !state.regions.contains_key(&self.region) {
            return Err(crate::Error::Database(format!(
                "region `{}` does not exist in it (create it, or give the edge another --region)",
                self.region
            )));
        }
        let config = zw_snapshot::compile(&state, &self.region, &Config::default())
            .map_err(crate::Error::Database)?;
        let valid = zw_config::validate(config, &self.limits)?;
        if edge.status().hash.as_deref() == Some(valid.hash.as_str()) {
            return Ok(None);
        }
        edge.apply(valid, crate::ConfigSource::Database, &self.origin)
            .map(Some)
    }

    pub async fn run(self, edge: Edge, mut stop: watch::Receiver<bool>) {
        loop {
            match self.poll(&edge).await {
                Ok(Some(version)) => {
                    tracing::info!(version, region = %self.region, "configuration from the database applied")
                }
                Ok(None) => {}
                Err(e) => {
                    edge.reject(&e, crate::ConfigSource::Database);
                    tracing::warn!(error = %e, "reading routes from the database failed; the running configuration stays");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.changed() => return,
            }
        }
    }
}
