//! Worker nodes run by agents: registration, heartbeats, instance reports, liveness, the
//! assignments pushed to each node, and the scheduler that makes them.
//!
//! Only nodes that registered through an agent (they have an ingress address) are
//! scheduled on; nodes and instances created by hand through the API are left alone.

use std::collections::{BTreeMap, HashMap};

use zw_proto::agent::{Assignment, InstanceReport};
use zw_proto::api::{
    check_id, check_name, DeploymentStatus, DriverStatus, HealthCheckSpec, InstanceState,
    NodeState, Resources, RetiringInstance, RootFs, Runtime,
};
use zw_proto::time::unix_millis;

use crate::{get, invalid, random_hex, Result, Store, StoreError};

/// What the scheduler reserves on a node per instance. Deployments do not declare their
/// needs yet, so every instance counts the same.
pub const INSTANCE_MEMORY_MB: u64 = 64;

/// A node's registration, from its agent's hello.
#[derive(Debug, Clone)]
pub struct AgentHello<'a> {
    pub node_id: &'a str,
    pub hostname: &'a str,
    pub region: &'a str,
    pub address: &'a str,
    pub ingress_address: &'a str,
    pub resources: Resources,
    pub drivers: &'a [DriverStatus],
    /// The join token the agent spoke with (`None`: the admin token).
    pub token: Option<&'a str>,
}

/// What a join token can enroll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrollable {
    Node,
    Edge,
}

/// What one scheduling pass changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scheduled {
    pub placed: Vec<(String, String)>,
    pub removed: Vec<String>,
    /// Deployments short of replicas, with the reason.
    pub unplaced: BTreeMap<String, String>,
}

impl Scheduled {
    pub fn changed(&self) -> bool {
        !self.placed.is_empty() || !self.removed.is_empty()
    }
}

impl Store {
    /// Records a node as its agent describes it, creating it on first contact, and marks
    /// it ready (unless an operator drained it or took it down).
    pub async fn agent_hello(&self, h: &AgentHello<'_>) -> Result<()> {
        check_id("node_id", h.node_id).map_err(invalid)?;
        check_name("region", h.region).map_err(invalid)?;
        zw_proto::api::check_host_port("ingress_address", h.ingress_address).map_err(invalid)?;
        let drivers = serde_json::to_string(h.drivers).unwrap_or_default();
        let now = unix_millis();
        let mut tx = self.begin_write().await?;
        crate::entities::require(&mut tx, "regions", "name", "region", "region", h.region).await?;
        if let Some(token) = h.token {
            claim(&mut tx, "nodes", "node", h.node_id, token).await?;
        }
        // New, or back: ready, unless an operator drained it or took it down.
        sqlx::query(
            "INSERT INTO nodes (id, hostname, address, region, node_type, state, cpu_millis, memory_mb, disk_mb, last_heartbeat_at, created_at, ingress_address, drivers, enrolled_by) \
             VALUES ($1, $2, $3, $4, 'worker', 'ready', $5, $6, $7, $8, $8, $9, $10, $11) \
             ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, address = excluded.address, \
               region = excluded.region, cpu_millis = excluded.cpu_millis, memory_mb = excluded.memory_mb, \
               disk_mb = excluded.disk_mb, last_heartbeat_at = excluded.last_heartbeat_at, \
               ingress_address = excluded.ingress_address, drivers = excluded.drivers, \
               state = CASE WHEN nodes.state IN ('draining', 'down') THEN nodes.state ELSE 'ready' END",
        )
        .bind(h.node_id)
        .bind(h.hostname)
        .bind(h.address)
        .bind(h.region)
        .bind(h.resources.cpu_millis.min(i64::MAX as u64) as i64)
        .bind(h.resources.memory_mb.min(i64::MAX as u64) as i64)
        .bind(h.resources.disk_mb.min(i64::MAX as u64) as i64)
        .bind(now)
        .bind(h.ingress_address)
        .bind(&drivers)
        .bind(h.token.map(str::to_string))
        .execute(&mut *tx)
        .await?;
        self.commit_routing(tx).await
    }

    /// Before the CA signs a certificate for `id` asked with join token `token`: binds the
    /// token to `id` (refused when it enrolled another identity, or when another token or
    /// the admin made the record), and returns the host names and addresses the operator
    /// has recorded for it (`None`: the node does not exist yet; its first hello will
    /// record them).
    pub async fn enroll(
        &self,
        table: Enrollable,
        id: &str,
        token: &str,
    ) -> Result<Option<Vec<String>>> {
        check_id("name", id).map_err(invalid)?;
        let mut tx = self.begin_write().await?;
        let (t, kind) = match table {
            Enrollable::Node => ("nodes", "node"),
            Enrollable::Edge => ("edge_proxies", "edge"),
        };
        claim(&mut tx, t, kind, id, token).await?;
        let names = match table {
            Enrollable::Node => {
                let row = sqlx::query("SELECT address, ingress_address FROM nodes WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                match row {
                    None => None,
                    Some(row) => {
                        let mut names = vec![get::<String>(&row, "address")?];
                        if let Some(ingress) = get::<Option<String>>(&row, "ingress_address")? {
                            if let Some((host, _)) = ingress.rsplit_once(':') {
                                names.push(host.trim_matches(['[', ']']).to_string());
                            }
                        }
                        Some(names)
                    }
                }
            }
            Enrollable::Edge => None,
        };
        tx.commit().await?;
        Ok(names)
    }

    /// Binds join token `token` to `id` and hands it the record, whoever enrolled it
    /// before (an older `up` that ran its components on the admin token, or a token file
    /// that was deleted). For the process that owns the store (`zeitwork up`), never for
    /// API callers.
    pub async fn adopt_enrollment(
        &self,
        role: zw_proto::api::TokenRole,
        id: &str,
        token: &str,
    ) -> Result<()> {
        let table = match role {
            zw_proto::api::TokenRole::Agent => "nodes",
            zw_proto::api::TokenRole::Edge => "edge_proxies",
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(&format!(
            "UPDATE {table} SET enrolled_by = $1 WHERE id = $2"
        ))
        .bind(token)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        crate::auth::bind_token(&mut tx, token, id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A heartbeat: the node is alive. Wakes the compilers and the scheduler only when
    /// it brings a suspect or lost node back.
    pub async fn agent_heartbeat(&self, node_id: &str, resources: Resources) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let revived = sqlx::query(
            "UPDATE nodes SET state = 'ready' WHERE id = $1 AND state IN ('suspect', 'lost')",
        )
        .bind(node_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE nodes SET last_heartbeat_at = $1, cpu_millis = $2, memory_mb = $3, disk_mb = $4 WHERE id = $5",
        )
        .bind(unix_millis())
        .bind(resources.cpu_millis.min(i64::MAX as u64) as i64)
        .bind(resources.memory_mb.min(i64::MAX as u64) as i64)
        .bind(resources.disk_mb.min(i64::MAX as u64) as i64)
        .bind(node_id)
        .execute(&mut *tx)
        .await?;
        if revived > 0 {
            tracing::info!(node = node_id, "node heartbeats again: ready");
            self.commit_routing(tx).await
        } else {
            Ok(tx.commit().await?)
        }
    }

    /// An instance's new state, as its node's agent reports it. Reports about instances
    /// the node no longer holds are ignored (the agent is told to stop them).
    pub async fn instance_report(&self, node_id: &str, r: &InstanceReport) -> Result<bool> {
        let reason = r.reason.as_deref().map(|s| zw_proto::abbreviate(s, 1024));
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE instances SET state = $1, reason = $2, updated_at = $3, permanent = $6 WHERE id = $4 AND node = $5",
        )
        .bind(r.state.as_str())
        .bind(reason)
        .bind(unix_millis())
        .bind(&r.id)
        .bind(node_id)
        .bind(i64::from(r.permanent))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done == 0 && matches!(r.state, InstanceState::Stopped | InstanceState::Destroyed) {
            // one the platform let go of: its processes are gone now
            sqlx::query("DELETE FROM retiring_instances WHERE id = $1 AND node = $2")
                .bind(&r.id)
                .bind(node_id)
                .execute(&mut *tx)
                .await?;
        }
        self.commit_routing(tx).await?;
        Ok(done > 0)
    }

    /// Brings the store in line with what the node's agent holds (its hello, and every
    /// heartbeat): reported states that differ are written; instances the store places
    /// on the node that the agent does not hold go back to `created`, so no edge is sent
    /// to them until the agent starts them. Writes (and wakes the compilers) only when
    /// something differs; returns how many instances changed.
    pub async fn agent_sync(&self, node_id: &str, held: &[InstanceReport]) -> Result<usize> {
        self.settle_retiring(node_id, held).await?;
        let stored: Vec<(String, String)> =
            sqlx::query("SELECT id, state FROM instances WHERE node = $1")
                .bind(node_id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|row| Ok((get(row, "id")?, get(row, "state")?)))
                .collect::<Result<_>>()?;
        let mut changes: Vec<InstanceReport> = Vec::new();
        for (id, state) in &stored {
            match held.iter().find(|r| r.id == *id) {
                Some(r) if r.state.as_str() != state => changes.push(r.clone()),
                Some(_) => {}
                None if state != InstanceState::Created.as_str() => changes.push(InstanceReport {
                    id: id.clone(),
                    state: InstanceState::Created,
                    reason: Some("not running on its node".into()),
                    permanent: false,
                }),
                None => {}
            }
        }
        if changes.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        for r in &changes {
            sqlx::query(
                "UPDATE instances SET state = $1, reason = $2, updated_at = $3, permanent = $6 WHERE id = $4 AND node = $5",
            )
            .bind(r.state.as_str())
            .bind(r.reason.as_deref().map(|s| zw_proto::abbreviate(s, 1024)))
            .bind(unix_millis())
            .bind(&r.id)
            .bind(node_id)
            .bind(i64::from(r.permanent))
            .execute(&mut *tx)
            .await?;
        }
        self.commit_routing(tx).await?;
        Ok(changes.len())
    }

    /// Marks agent nodes silent for longer than `suspect_ms` suspect, and longer than
    /// `lost_ms` lost. Silence counts from the last heartbeat, but not from before
    /// `watching_since` (when this operator started: no heartbeat could reach it before).
    /// Returns the nodes that changed state.
    pub async fn mark_silent_nodes(
        &self,
        suspect_ms: i64,
        lost_ms: i64,
        watching_since: i64,
    ) -> Result<Vec<(String, NodeState)>> {
        let now = unix_millis();
        if now - watching_since <= suspect_ms.min(lost_ms) {
            return Ok(Vec::new());
        }
        // Called often: a plain read first, the write lock only when something changes.
        let silent: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM nodes WHERE ingress_address IS NOT NULL AND state IN ('ready', 'suspect') \
             AND (last_heartbeat_at IS NULL OR last_heartbeat_at < $1)",
        )
        .bind(now - suspect_ms.min(lost_ms))
        .fetch_one(&self.pool)
        .await?;
        if silent == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(
            "SELECT id, state, last_heartbeat_at FROM nodes WHERE ingress_address IS NOT NULL AND state IN ('ready', 'suspect')",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut changed = Vec::new();
        for row in rows {
            let id: String = get(&row, "id")?;
            let state: String = get(&row, "state")?;
            let last: Option<i64> = get(&row, "last_heartbeat_at")?;
            let silent = now - last.unwrap_or(0).max(watching_since);
            let next = if silent > lost_ms {
                NodeState::Lost
            } else if silent > suspect_ms && state == "ready" {
                NodeState::Suspect
            } else {
                continue;
            };
            sqlx::query("UPDATE nodes SET state = $1 WHERE id = $2")
                .bind(next.as_str())
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            changed.push((id, next));
        }
        if changed.is_empty() {
            tx.commit().await?;
        } else {
            self.commit_routing(tx).await?;
        }
        Ok(changed)
    }

    /// Everything `node_id` should run, in id order.
    pub async fn assignments(&self, node_id: &str) -> Result<Vec<Assignment>> {
        let rows = sqlx::query(
            "SELECT i.id AS id, i.deployment AS deployment, d.port AS port, d.health_check AS health_check, \
                    m.command AS command, m.env AS env, m.runtime AS runtime, m.rootfs AS rootfs \
             FROM instances i JOIN deployments d ON d.name = i.deployment JOIN images m ON m.name = d.image \
             WHERE i.node = $1 ORDER BY i.id",
        )
        .bind(node_id)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let json = |col: &str| -> Result<String> { get(&row, col) };
            let parse = |col: &str, text: String| {
                StoreError::Other(format!(
                    "column {col} holds `{}`",
                    zw_proto::abbreviate(&text, 64)
                ))
            };
            let runtime: String = get(&row, "runtime")?;
            let rootfs: Option<String> = get(&row, "rootfs")?;
            let port: i64 = get(&row, "port")?;
            out.push(Assignment {
                id: get(&row, "id")?,
                deployment: get(&row, "deployment")?,
                runtime: Runtime::parse(&runtime)
                    .ok_or_else(|| parse("runtime", runtime.clone()))?,
                command: serde_json::from_str(&json("command")?)
                    .map_err(|e| StoreError::Other(format!("column command: {e}")))?,
                env: serde_json::from_str(&json("env")?)
                    .map_err(|e| StoreError::Other(format!("column env: {e}")))?,
                rootfs: rootfs
                    .map(|r| serde_json::from_str::<RootFs>(&r))
                    .transpose()
                    .map_err(|e| StoreError::Other(format!("column rootfs: {e}")))?,
                port: u16::try_from(port).unwrap_or(0),
                health_check: serde_json::from_str::<HealthCheckSpec>(&json("health_check")?)
                    .map_err(|e| StoreError::Other(format!("column health_check: {e}")))?,
            });
        }
        Ok(out)
    }

    /// One scheduling pass: removes the instances of lost nodes and of scaled-down or
    /// stopped deployments, and places missing replicas on ready agent nodes of the
    /// deployment's regions that have room, spreading each deployment across nodes.
    pub async fn schedule(&self) -> Result<Scheduled> {
        let mut tx = self.begin_write().await?;
        if self.backend == crate::Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('zeitwork-scheduler'))")
                .execute(&mut *tx)
                .await?;
        }
        let mut out = Scheduled::default();
        struct NodeRow {
            id: String,
            region: String,
            state: String,
            memory_mb: u64,
            used: u64,
        }
        let mut nodes: Vec<NodeRow> = Vec::new();
        for row in sqlx::query(
            "SELECT id, region, state, memory_mb FROM nodes WHERE ingress_address IS NOT NULL ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            nodes.push(NodeRow {
                id: get(&row, "id")?,
                region: get(&row, "region")?,
                state: get(&row, "state")?,
                memory_mb: get::<i64>(&row, "memory_mb")?.max(0) as u64,
                used: 0,
            });
        }
        let node_index: HashMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        // deployment → [(instance id, node index, state)]
        let mut managed: BTreeMap<String, Vec<(String, usize, String)>> = BTreeMap::new();
        for row in sqlx::query("SELECT id, deployment, node, state FROM instances ORDER BY id")
            .fetch_all(&mut *tx)
            .await?
        {
            let node: String = get(&row, "node")?;
            let Some(&ni) = node_index.get(&node) else {
                continue;
            };
            let id: String = get(&row, "id")?;
            if nodes[ni].state == NodeState::Lost.as_str() {
                out.removed.push(id);
                continue;
            }
            nodes[ni].used += 1;
            managed.entry(get(&row, "deployment")?).or_default().push((
                id,
                ni,
                get(&row, "state")?,
            ));
        }
        for row in
            sqlx::query("SELECT name, replicas, regions, status FROM deployments ORDER BY name")
                .fetch_all(&mut *tx)
                .await?
        {
            let name: String = get(&row, "name")?;
            let status: String = get(&row, "status")?;
            let regions: Vec<String> = serde_json::from_str(&get::<String>(&row, "regions")?)
                .map_err(|e| StoreError::Other(format!("column regions: {e}")))?;
            let want = if status == DeploymentStatus::Stopped.as_str() {
                0
            } else {
                get::<i64>(&row, "replicas")?.max(0) as usize
            };
            let mut have = managed.remove(&name).unwrap_or_default();
            // Scale down: drop instances that are not serving first, then from the
            // busiest node.
            while have.len() > want {
                let pick = (0..have.len())
                    .max_by_key(|&i| {
                        let (_, ni, state) = &have[i];
                        (state != InstanceState::Started.as_str(), nodes[*ni].used)
                    })
                    .unwrap_or(0);
                let (id, ni, _) = have.swap_remove(pick);
                nodes[ni].used = nodes[ni].used.saturating_sub(1);
                out.removed.push(id);
            }
            while have.len() < want {
                let candidate = nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| {
                        n.state == NodeState::Ready.as_str()
                            && (regions.is_empty() || regions.contains(&n.region))
                            && n.memory_mb >= (n.used + 1) * INSTANCE_MEMORY_MB
                    })
                    .min_by_key(|(i, n)| {
                        let mine = have.iter().filter(|(_, ni, _)| ni == i).count();
                        (mine, n.used, n.id.clone())
                    })
                    .map(|(i, _)| i);
                let Some(ni) = candidate else {
                    out.unplaced.insert(
                        name.clone(),
                        format!(
                            "{} of {want} replicas placed: no ready worker node in {} with {INSTANCE_MEMORY_MB} MiB free",
                            have.len(),
                            if regions.is_empty() { "any region".to_string() } else { regions.join(", ") }
                        ),
                    );
                    break;
                };
                let id = format!("inst-{}", random_hex(6));
                let now = unix_millis();
                sqlx::query("INSERT INTO instances (id, deployment, node, state, created_at, updated_at) VALUES ($1, $2, $3, 'created', $4, $4)")
                    .bind(&id)
                    .bind(&name)
                    .bind(&nodes[ni].id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                nodes[ni].used += 1;
                out.placed.push((id.clone(), nodes[ni].id.clone()));
                have.push((id, ni, InstanceState::Created.as_str().to_string()));
            }
        }
        for id in &out.removed {
            retire(&mut tx, "id", id).await?;
            sqlx::query("DELETE FROM instances WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if out.changed() {
            self.commit_routing(tx).await?;
        } else {
            tx.commit().await?;
        }
        Ok(out)
    }

    /// The ids of nodes registered at `address` (their host, as their agents gave it).
    pub async fn nodes_at(&self, address: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM nodes WHERE address = $1 ORDER BY id")
                .bind(address)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// A stored setting.
    pub async fn setting(&self, name: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Stores `value` under `name` unless a value is already there; returns the stored
    /// one. Replicas racing to initialise a setting all end up with the same value.
    pub async fn init_setting(&self, name: &str, value: &str) -> Result<String> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&mut *tx)
        .await?;
        let stored: String = sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(stored)
    }
}

impl Store {
    /// Replaces setting `name` with `new` if it still holds `old`; false when another
    /// writer changed it first (compare and swap, so replicas do not undo each other).
    pub async fn replace_setting(&self, name: &str, old: &str, new: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE settings SET value = $1 WHERE name = $2 AND value = $3")
            .bind(new)
            .bind(name)
            .bind(old)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(done == 1)
    }
}

/// A join token may speak for record `id` of `table` (nodes, edge_proxies) only when the
/// record is new or the token enrolled it; the token is bound to `id` on the way (a token
/// enrolls one identity). A record made through the API or by another token is refused:
/// a hello never takes a record over.
pub(crate) async fn claim(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    table: &str,
    kind: &str,
    id: &str,
    token: &str,
) -> Result<()> {
    let owner: Option<Option<String>> =
        sqlx::query_scalar(&format!("SELECT enrolled_by FROM {table} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
    if let Some(owner) = owner {
        if owner.as_deref() != Some(token) {
            return Err(StoreError::Forbidden(format!(
                "{kind} `{id}` is registered already, by {}; a join token speaks only for the {kind} it enrolled",
                if owner.is_some() { "another join token" } else { "the admin (through the API)" }
            )));
        }
    }
    crate::auth::bind_token(&mut *tx, token, id).await
}

/// Records the instances matching `column = value` as retiring before their rows go:
/// their agent still has to stop them, and `destroy` waits for that.
pub(crate) async fn retire(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    column: &str,
    value: &str,
) -> Result<()> {
    let sql = format!(
        "INSERT INTO retiring_instances (id, node, deployment, since) \
         SELECT id, node, deployment, $2 FROM instances WHERE {column} = $1 \
         ON CONFLICT (id) DO NOTHING"
    );
    sqlx::query(&sql)
        .bind(value)
        .bind(unix_millis())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// How long a retiring instance is waited for: an agent that never reports (its node is
/// gone) must not make `destroy` wait for ever.
const RETIRING_FOR_AT_MOST_MS: i64 = 10 * 60 * 1000;

impl Store {
    /// The instances of `deployment` that are being stopped: let go of by the platform,
    /// not yet reported stopped by their agent. Ones waited for longer than ten minutes
    /// are dropped (their node is gone or lost; they stop when its agent comes back).
    pub async fn retiring(&self, deployment: &str) -> Result<Vec<RetiringInstance>> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM retiring_instances WHERE since < $1")
            .bind(unix_millis() - RETIRING_FOR_AT_MOST_MS)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT id, node, deployment, since FROM retiring_instances WHERE deployment = $1 ORDER BY id",
        )
        .bind(deployment)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                Ok(RetiringInstance {
                    id: get(row, "id")?,
                    node: get(row, "node")?,
                    deployment: get(row, "deployment")?,
                    since: zw_proto::time::Timestamp(get(row, "since")?),
                })
            })
            .collect()
    }

    /// Forgets retiring instances of `node_id` that its agent no longer holds, or holds
    /// stopped: the agent's word, at hello and every heartbeat.
    async fn settle_retiring(&self, node_id: &str, held: &[InstanceReport]) -> Result<()> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM retiring_instances WHERE node = $1")
                .bind(node_id)
                .fetch_all(&self.pool)
                .await?;
        let gone: Vec<&String> = ids
            .iter()
            .filter(|id| {
                held.iter().find(|r| r.id == **id).is_none_or(|r| {
                    matches!(r.state, InstanceState::Stopped | InstanceState::Destroyed)
                })
            })
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for id in gone {
            sqlx::query("DELETE FROM retiring_instances WHERE id = $1 AND node = $2")
                .bind(id)
                .bind(node_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
