//! Edge proxies: registered through the API or by their first hello, and updated as their
//! control connections come and go, acknowledge and refuse snapshots.

use sqlx::any::AnyRow;
use zw_proto::api::*;
use zw_proto::time::{unix_millis, Timestamp};

use crate::entities::{exists, EDGE_PROXIES};
use crate::{get, invalid, map_constraint, Result, Store};

/// What an edge says about itself when its control connection opens.
#[derive(Debug, Clone, Copy)]
pub struct EdgeHello<'a> {
    pub id: &'a str,
    pub region: &'a str,
    pub address: &'a str,
    pub admin_address: Option<&'a str>,
    pub version: Option<u64>,
    pub hash: Option<&'a str>,
    /// The join token the edge spoke with (`None`: the admin token).
    pub token: Option<&'a str>,
}

/// An edge counts as connected while its operator saw it this recently (the operator
/// pings every few seconds; an operator that died cannot clear the flag itself).
pub const CONNECTED_WITHIN_MS: i64 = 45_000;

fn edge(row: &AnyRow) -> Result<EdgeProxy> {
    let connected: i64 = get(row, "connected")?;
    let last_seen: Option<i64> = get(row, "last_seen_at")?;
    let version: Option<i64> = get(row, "applied_version")?;
    let state: String = get(row, "state")?;
    Ok(EdgeProxy {
        id: get(row, "id")?,
        region: get(row, "region")?,
        address: get(row, "address")?,
        admin_address: get(row, "admin_address")?,
        state: EdgeState::parse(&state).unwrap_or(EdgeState::Active),
        connected: connected != 0
            && last_seen.is_some_and(|t| unix_millis() - t < CONNECTED_WITHIN_MS),
        applied_version: version.map(|v| v.max(0) as u64),
        applied_hash: get(row, "applied_hash")?,
        last_ack_at: get::<Option<i64>>(row, "last_ack_at")?.map(Timestamp),
        last_nack_at: get::<Option<i64>>(row, "last_nack_at")?.map(Timestamp),
        last_nack_error: get(row, "last_nack_error")?,
        last_seen_at: last_seen.map(Timestamp),
        created_at: Timestamp(get(row, "created_at")?),
    })
}

impl Store {
    pub async fn create_edge_proxy(&self, new: NewEdgeProxy) -> Result<EdgeProxy> {
        check_id("id", &new.id).map_err(invalid)?;
        check_name("region", &new.region).map_err(invalid)?;
        check_host_port("address", &new.address).map_err(invalid)?;
        let mut tx = self.begin_write().await?;
        if !exists(&mut tx, "regions", "name", &new.region).await? {
            return Err(invalid(FieldError::new(
                "region",
                format!("unknown region `{}`", new.region),
            )));
        }
        let now = unix_millis();
        sqlx::query("INSERT INTO edge_proxies (id, region, address, state, connected, created_at) VALUES ($1, $2, $3, 'active', 0, $4)")
            .bind(&new.id)
            .bind(&new.region)
            .bind(&new.address)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_constraint(e, "id", &format!("edge proxy `{}`", new.id)))?;
        tx.commit().await?;
        self.edge_proxy(&new.id).await
    }

    pub async fn edge_proxy(&self, id: &str) -> Result<EdgeProxy> {
        self.fetch_one(&EDGE_PROXIES, id, edge).await
    }

    pub async fn edge_proxies(
        &self,
        region: Option<&str>,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<EdgeProxy>> {
        let filters = [("region", region.map(str::to_string))];
        self.fetch_page(&EDGE_PROXIES, &filters, after, limit, edge, |e| &e.id)
            .await
    }

    pub async fn update_edge_proxy(&self, id: &str, patch: EdgeProxyPatch) -> Result<EdgeProxy> {
        let mut e = self.edge_proxy(id).await?;
        if let Some(a) = patch.address {
            check_host_port("address", &a).map_err(invalid)?;
            e.address = a;
        }
        if let Some(s) = patch.state {
            e.state = s;
        }
        sqlx::query("UPDATE edge_proxies SET address = $1, state = $2 WHERE id = $3")
            .bind(&e.address)
            .bind(e.state.as_str())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(e)
    }

    pub async fn delete_edge_proxy(&self, id: &str) -> Result<()> {
        self.delete(&EDGE_PROXIES, id, false).await
    }

    /// An edge said hello: registers it (or updates where it is and what it runs).
    pub async fn edge_hello(&self, h: &EdgeHello<'_>) -> Result<()> {
        check_id("id", h.id).map_err(invalid)?;
        check_name("region", h.region).map_err(invalid)?;
        check_host_port("address", h.address).map_err(invalid)?;
        if let Some(a) = h.admin_address {
            check_host_port("admin_address", a).map_err(invalid)?;
        }
        let mut tx = self.begin_write().await?;
        if !exists(&mut tx, "regions", "name", h.region).await? {
            return Err(invalid(FieldError::new(
                "region",
                format!(
                    "unknown region `{}`: create it first (POST /api/v1/regions)",
                    h.region
                ),
            )));
        }
        if let Some(token) = h.token {
            crate::agents::claim(&mut tx, "edge_proxies", "edge", h.id, token).await?;
        }
        let now = unix_millis();
        sqlx::query(
            "INSERT INTO edge_proxies (id, region, address, admin_address, state, connected, applied_version, applied_hash, last_seen_at, created_at, enrolled_by) \
             VALUES ($1, $2, $3, $4, 'active', 1, $5, $6, $7, $7, $8) \
             ON CONFLICT (id) DO UPDATE SET region = excluded.region, address = excluded.address, admin_address = excluded.admin_address, \
             connected = 1, applied_version = excluded.applied_version, applied_hash = excluded.applied_hash, last_seen_at = excluded.last_seen_at",
        )
        .bind(h.id)
        .bind(h.region)
        .bind(h.address)
        .bind(h.admin_address.map(str::to_string))
        .bind(h.version.map(|v| v as i64))
        .bind(h.hash.map(str::to_string))
        .bind(now)
        .bind(h.token.map(str::to_string))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The edge answered a ping.
    pub async fn edge_seen(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE edge_proxies SET last_seen_at = $1, connected = 1 WHERE id = $2")
            .bind(unix_millis())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn edge_disconnected(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE edge_proxies SET connected = 0 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn edge_ack(&self, id: &str, version: u64, hash: &str) -> Result<()> {
        let now = unix_millis();
        sqlx::query("UPDATE edge_proxies SET applied_version = $1, applied_hash = $2, last_ack_at = $3, last_seen_at = $3 WHERE id = $4")
            .bind(version as i64)
            .bind(hash)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.acks.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    pub async fn edge_nack(
        &self,
        id: &str,
        version_in_use: Option<u64>,
        error: &str,
    ) -> Result<()> {
        let now = unix_millis();
        let error = zw_proto::truncate(error, 4096);
        sqlx::query("UPDATE edge_proxies SET applied_version = $1, last_nack_at = $2, last_nack_error = $3, last_seen_at = $2 WHERE id = $4")
            .bind(version_in_use.map(|v| v as i64))
            .bind(now)
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
