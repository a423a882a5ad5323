//! Worker nodes run by agents: registration, heartbeats, instance reports, liveness, the
//! assignments pushed to each node, and the scheduler that makes them.
//!
//! Only nodes that registered through an agent (they have an ingress address) are
//! scheduled on; nodes and instances created by hand through the API are left alone.

use std::collections::{BTreeMap, HashMap};

use zw_proto::agent::{Assignment, InstanceReport};
use zw_proto::api::{
    check_id, check_name, DeploymentStatus, DriverStatus, HealthCheckSpec, InstanceState,
    NodeState, ReleaseStatus, Resources, RetiringInstance, RootFs, Runtime, Strategy,
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
    /// Taken out of the snapshots (a rolling release replaced them).
    pub drained: Vec<String>,
    /// Deployments short of replicas, with the reason.
    pub unplaced: BTreeMap<String, String>,
    /// Releases that finished rolling: (deployment, version).
    pub completed: Vec<(String, u64)>,
    /// Releases halted: (deployment, version, why).
    pub halted: Vec<(String, u64, String)>,
    /// A rollout is under way: run again soon even without a store change (it waits for
    /// instances to become healthy and for edges to acknowledge snapshots).
    pub pending: bool,
}

impl Scheduled {
    pub fn changed(&self) -> bool {
        !self.placed.is_empty()
            || !self.removed.is_empty()
            || !self.drained.is_empty()
            || !self.completed.is_empty()
            || !self.halted.is_empty()
    }
}

/// An instance as the scheduler reads it.
struct Held {
    id: String,
    ni: usize,
    state: String,
    release: u64,
    draining_since: Option<i64>,
    permanent: bool,
    reason: Option<String>,
}

/// An instance's assignment with its release's secrets still sealed.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedAssignment {
    pub assignment: Assignment,
    pub secrets: BTreeMap<String, crate::SealedSecret>,
}

/// How long a drained instance waits for its region's edges to acknowledge a snapshot
/// without it: an edge that does not answer (partitioned, stuck) must not hold a rollout
/// for ever. Past this, the agent's own drain (requests in flight finish before the stop)
/// still protects what the slow edge sends.
pub const DRAIN_ACK_WAIT_MS: i64 = 30_000;

/// Whether every connected edge of `region` runs a snapshot that no longer names
/// instance `id` (drained since `since`).
async fn edges_let_go(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    id: &str,
    region: &str,
    since: i64,
    now: i64,
) -> Result<bool> {
    if now - since > DRAIN_ACK_WAIT_MS {
        tracing::warn!(instance = id, %region, "edges did not acknowledge a snapshot without the drained instance within 30 s; stopping it anyway");
        return Ok(true);
    }
    let edges = sqlx::query(
        "SELECT e.id AS id, s.body AS body FROM edge_proxies e \
         LEFT JOIN snapshots s ON s.region = e.region AND s.version = e.applied_version \
         WHERE e.region = $1 AND e.connected = 1 AND e.last_seen_at > $2",
    )
    .bind(region)
    .bind(now - crate::CONNECTED_WITHIN_MS)
    .fetch_all(&mut **tx)
    .await?;
    // Instance ids are random and quoted in the snapshot (a server's `instance`).
    let needle = format!("\"{id}\"");
    for e in &edges {
        match get::<Option<String>>(e, "body")? {
            Some(body) if !body.contains(&needle) => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
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

    /// Everything `node_id` should run, in id order, each with its release's secrets
    /// still sealed (the operator opens them on the way to the agent).
    pub async fn assignments(&self, node_id: &str) -> Result<Vec<SealedAssignment>> {
        let rows = sqlx::query(
            "SELECT i.id AS id, i.deployment AS deployment, i.release AS release, r.port AS port, \
                    r.health_check AS health_check, r.command AS command, r.env AS env, \
                    r.runtime AS runtime, r.rootfs AS rootfs, r.secrets AS secrets \
             FROM instances i JOIN releases r ON r.deployment = i.deployment AND r.version = i.release \
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
            let assignment = Assignment {
                id: get(&row, "id")?,
                deployment: get(&row, "deployment")?,
                release: get::<i64>(&row, "release")?.max(0) as u64,
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
            };
            let secrets = serde_json::from_str(&json("secrets")?)
                .map_err(|e| StoreError::Other(format!("column secrets: {e}")))?;
            out.push(SealedAssignment {
                assignment,
                secrets,
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
        let mut managed: BTreeMap<String, Vec<Held>> = BTreeMap::new();
        for row in sqlx::query(
            "SELECT id, deployment, node, state, release, draining_since, permanent, reason FROM instances ORDER BY id",
        )
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
            managed
                .entry(get(&row, "deployment")?)
                .or_default()
                .push(Held {
                    id,
                    ni,
                    state: get(&row, "state")?,
                    release: get::<i64>(&row, "release")?.max(0) as u64,
                    draining_since: get(&row, "draining_since")?,
                    permanent: get::<i64>(&row, "permanent")? != 0,
                    reason: get(&row, "reason")?,
                });
        }
        let now = unix_millis();
        for row in sqlx::query(
            "SELECT name, replicas, regions, status, strategy, max_surge FROM deployments ORDER BY name",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            let name: String = get(&row, "name")?;
            let status: String = get(&row, "status")?;
            let regions: Vec<String> = serde_json::from_str(&get::<String>(&row, "regions")?)
                .map_err(|e| StoreError::Other(format!("column regions: {e}")))?;
            let strategy = Strategy::parse(&get::<String>(&row, "strategy")?).unwrap_or(Strategy::Rolling);
            let mut want = if status == DeploymentStatus::Stopped.as_str() {
                0
            } else {
                get::<i64>(&row, "replicas")?.max(0) as usize
            };
            let have = managed.remove(&name).unwrap_or_default();
            let target = crate::releases::target_state(&mut tx, &name).await?;
            let mut version = target.as_ref().map_or(0, |t| t.version);
            let rolling = target.as_ref().is_some_and(|t| t.status == ReleaseStatus::Rolling);
            // A first release that failed stays the target: it runs once it is healthy.
            let finishing = target
                .as_ref()
                .is_some_and(|t| matches!(t.status, ReleaseStatus::Rolling | ReleaseStatus::Failed));
            // A release that cannot become healthy is halted: back to the running one.
            if let Some(t) = target.as_ref().filter(|_| rolling) {
                let new: Vec<&Held> = have
                    .iter()
                    .filter(|h| h.release == t.version && h.draining_since.is_none())
                    .collect();
                let started = new.iter().filter(|h| h.state == "started").count();
                let why = |h: &&Held| h.reason.clone().unwrap_or_else(|| h.state.clone());
                let reason = if let Some(h) = new.iter().find(|h| h.state == "failed" && h.permanent) {
                    Some(format!("instance {} cannot start: {}", h.id, why(h)))
                } else if now > t.deadline_at && started < want {
                    let last = new
                        .iter()
                        .find(|h| h.state != "started")
                        .map(|h| format!(" (instance {}: {})", h.id, why(h)))
                        .unwrap_or_default();
                    Some(format!(
                        "{started} of {want} instances healthy by the rollout deadline{last}"
                    ))
                } else {
                    None
                };
                if let Some(reason) = reason {
                    let back = crate::releases::halt(&mut tx, &name, t.version, &reason).await?;
                    out.halted.push((name.clone(), t.version, reason));
                    version = back;
                }
            }
            if version == 0 {
                want = 0;
            }
            let members: Vec<crate::rollout::Member> = have
                .iter()
                .map(|h| crate::rollout::Member {
                    id: h.id.clone(),
                    release: h.release,
                    started: h.state == "started",
                    draining: h.draining_since.is_some(),
                    load: nodes[h.ni].used,
                })
                .collect();
            let surge = crate::rollout::surge(&get::<String>(&row, "max_surge")?, want).unwrap_or(1);
            let plan = crate::rollout::plan(version, want, strategy, surge, &members);
            for id in &plan.remove {
                if let Some(h) = have.iter().find(|h| h.id == *id) {
                    nodes[h.ni].used = nodes[h.ni].used.saturating_sub(1);
                }
                out.removed.push(id.clone());
            }
            for id in &plan.drain {
                sqlx::query("UPDATE instances SET draining_since = $1 WHERE id = $2")
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                out.drained.push(id.clone());
            }
            // Drained ones go once no edge of their region routes to them any more.
            for h in have.iter().filter(|h| h.draining_since.is_some()) {
                let since = h.draining_since.unwrap_or(now);
                if edges_let_go(&mut tx, &h.id, &nodes[h.ni].region, since, now).await? {
                    nodes[h.ni].used = nodes[h.ni].used.saturating_sub(1);
                    out.removed.push(h.id.clone());
                } else {
                    out.pending = true;
                }
            }
            if plan.complete {
                if finishing && out.halted.iter().all(|(n, ..)| *n != name) {
                    crate::releases::completed(&mut tx, &name, version).await?;
                    out.completed.push((name.clone(), version));
                }
            } else if rolling {
                // its deadline is watched, not only its changes
                out.pending = true;
            }
            let mut mine: Vec<usize> = have
                .iter()
                .filter(|h| h.draining_since.is_none() && !plan.remove.contains(&h.id))
                .map(|h| h.ni)
                .collect();
            for placed in 0..plan.place {
                let candidate = nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| {
                        n.state == NodeState::Ready.as_str()
                            && (regions.is_empty() || regions.contains(&n.region))
                            && n.memory_mb >= (n.used + 1) * INSTANCE_MEMORY_MB
                    })
                    .min_by_key(|(i, n)| {
                        let here = mine.iter().filter(|ni| *ni == i).count();
                        (here, n.used, n.id.clone())
                    })
                    .map(|(i, _)| i);
                let Some(ni) = candidate else {
                    out.unplaced.insert(
                        name.clone(),
                        format!(
                            "{placed} of {} new instances placed: no ready worker node in {} with {INSTANCE_MEMORY_MB} MiB free",
                            plan.place,
                            if regions.is_empty() { "any region".to_string() } else { regions.join(", ") }
                        ),
                    );
                    break;
                };
                let id = format!("inst-{}", random_hex(6));
                sqlx::query("INSERT INTO instances (id, deployment, node, state, release, created_at, updated_at) VALUES ($1, $2, $3, 'created', $4, $5, $5)")
                    .bind(&id)
                    .bind(&name)
                    .bind(&nodes[ni].id)
                    .bind(version as i64)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                nodes[ni].used += 1;
                mine.push(ni);
                out.placed.push((id, nodes[ni].id.clone()));
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
