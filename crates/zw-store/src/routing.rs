//! What the snapshot compiler reads, and the versioned snapshots it produced.
//!
//! Versions are per region and come from the database (`MAX(version) + 1` under the
//! primary key), so they only grow — across operator restarts and across replicas — and a
//! version number always means the same content.

use std::collections::BTreeMap;

use zw_proto::api::HealthCheckSpec;
use zw_proto::time::unix_millis;
use zw_snapshot::{DeploymentRoute, DomainRoute, Endpoint, RoutingState};

use crate::{get, Result, Store, StoreError};

/// Snapshots kept per region (older ones are only history).
const KEEP: i64 = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub region: String,
    pub version: u64,
    pub hash: String,
    /// The configuration as JSON.
    pub body: String,
}

impl Store {
    /// The routable state: regions, deployments, verified domains, and started instances
    /// on nodes that are not down.
    pub async fn routing_state(&self) -> Result<RoutingState> {
        let mut state = RoutingState::default();
        let mut tx = self.pool.begin().await?;
        for row in sqlx::query("SELECT name, balancer_address FROM regions")
            .fetch_all(&mut *tx)
            .await?
        {
            state
                .regions
                .insert(get(&row, "name")?, get(&row, "balancer_address")?);
        }
        for row in sqlx::query("SELECT name, health_check FROM deployments")
            .fetch_all(&mut *tx)
            .await?
        {
            let hc: String = get(&row, "health_check")?;
            let hc: HealthCheckSpec = serde_json::from_str(&hc)
                .map_err(|e| StoreError::Other(format!("deployments.health_check: {e}")))?;
            state.deployments.insert(
                get(&row, "name")?,
                DeploymentRoute {
                    health_path: hc.path,
                    health_interval_secs: hc.interval_secs,
                },
            );
        }
        for row in sqlx::query(
            "SELECT name, deployment FROM domains WHERE verified_at IS NOT NULL ORDER BY name",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            state.domains.push(DomainRoute {
                name: get(&row, "name")?,
                deployment: get(&row, "deployment")?,
            });
        }
        for row in sqlx::query("SELECT token, key_authorization FROM acme_challenges")
            .fetch_all(&mut *tx)
            .await?
        {
            state
                .acme_challenges
                .insert(get(&row, "token")?, get(&row, "key_authorization")?);
        }
        let rows = sqlx::query(
            "SELECT i.id AS id, i.deployment AS deployment, n.region AS region, i.address AS address, i.port AS port, n.ingress_address AS ingress \
             FROM instances i JOIN nodes n ON n.id = i.node \
             WHERE i.state = 'started' AND i.draining_since IS NULL AND n.state NOT IN ('down', 'lost') \
             ORDER BY i.id",
        )
        .fetch_all(&mut *tx)
        .await?;
        for row in rows {
            let ingress: Option<String> = get(&row, "ingress")?;
            // An agent's instance is reached through its node's ingress; one made by hand
            // through the API at its own address.
            let (address, port, instance) = match ingress {
                Some(ingress) => {
                    let Some((host, port)) = ingress.rsplit_once(':') else {
                        continue;
                    };
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    (
                        host.to_string(),
                        port.parse::<i64>().ok(),
                        Some(get(&row, "id")?),
                    )
                }
                None => (
                    match get::<Option<String>>(&row, "address")? {
                        Some(a) => a,
                        None => continue,
                    },
                    get(&row, "port")?,
                    None,
                ),
            };
            let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            state.endpoints.push(Endpoint {
                deployment: get(&row, "deployment")?,
                region: get(&row, "region")?,
                address,
                port,
                instance,
            });
        }
        tx.commit().await?;
        Ok(state)
    }

    pub async fn latest_snapshot(&self, region: &str) -> Result<Option<StoredSnapshot>> {
        let row = sqlx::query("SELECT region, version, hash, body FROM snapshots WHERE region = $1 ORDER BY version DESC LIMIT 1")
            .bind(region)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| snapshot(&r)).transpose()
    }

    /// The newest snapshot of every region.
    pub async fn latest_snapshots(&self) -> Result<BTreeMap<String, StoredSnapshot>> {
        let rows = sqlx::query(
            "SELECT s.region AS region, s.version AS version, s.hash AS hash, s.body AS body FROM snapshots s \
             JOIN (SELECT region, MAX(version) AS version FROM snapshots GROUP BY region) m \
             ON m.region = s.region AND m.version = s.version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| snapshot(r).map(|s| (s.region.clone(), s)))
            .collect()
    }

    /// Records `body` as the region's next version, unless the newest version already has
    /// this hash. Returns the region's newest snapshot either way. Writers of one region
    /// take turns (SQLite's write lock; a transaction-scoped advisory lock on PostgreSQL),
    /// so operator replicas racing on the same change agree on one version.
    pub async fn record_snapshot(
        &self,
        region: &str,
        hash: &str,
        body: &str,
    ) -> Result<StoredSnapshot> {
        let mut tx = self.begin_write().await?;
        if self.backend == crate::Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(format!("zeitwork-snapshot-{region}"))
                .execute(&mut *tx)
                .await?;
        }
        let latest = sqlx::query("SELECT region, version, hash, body FROM snapshots WHERE region = $1 ORDER BY version DESC LIMIT 1")
            .bind(region)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| snapshot(&r))
            .transpose()?;
        let version = match latest {
            Some(l) if l.hash == hash => return Ok(l),
            Some(l) => l.version + 1,
            None => 1,
        };
        sqlx::query("INSERT INTO snapshots (region, version, hash, body, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(region)
            .bind(version as i64)
            .bind(hash)
            .bind(body)
            .bind(unix_millis())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM snapshots WHERE region = $1 AND version <= $2")
            .bind(region)
            .bind(version as i64 - KEEP)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(StoredSnapshot {
            region: region.to_string(),
            version,
            hash: hash.to_string(),
            body: body.to_string(),
        })
    }
}

fn snapshot(row: &sqlx::any::AnyRow) -> Result<StoredSnapshot> {
    Ok(StoredSnapshot {
        region: get(row, "region")?,
        version: get::<i64>(row, "version")?.max(0) as u64,
        hash: get(row, "hash")?,
        body: get(row, "body")?,
    })
}
