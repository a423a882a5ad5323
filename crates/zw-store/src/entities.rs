//! Regions, nodes, images, deployments, instances and domains.
//!
//! Every write validates its input first (each error names its field), checks references
//! inside the same transaction so the message says which reference is unknown, and then
//! writes; nothing is written when anything is wrong.

use std::collections::BTreeMap;

use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};
use zw_proto::api::*;
use zw_proto::time::{unix_millis, Timestamp};

use crate::{
    conflict, get, invalid, map_constraint, not_found, page, page_limit, random_hex, Result, Store,
    StoreError,
};

type Tx = Transaction<'static, Any>;

const MAX_REPLICAS: u32 = 1000;
const MAX_LIST: usize = 256;
const MAX_TEXT: usize = 4096;

/// Filters for `GET /api/v1/nodes`.
#[derive(Debug, Clone, Default)]
pub struct NodeFilter {
    pub node_type: Option<NodeType>,
    pub state: Option<NodeState>,
    pub region: Option<String>,
}

/// Filters for `GET /api/v1/instances`.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    pub deployment: Option<String>,
    pub node: Option<String>,
    pub state: Option<InstanceState>,
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

fn enum_col<T>(row: &AnyRow, col: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
    let text: String = get(row, col)?;
    parse(&text)
        .ok_or_else(|| StoreError::Other(format!("column {col} holds unknown value `{text}`")))
}

pub(crate) fn json_col<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> Result<T> {
    let text: String = get(row, col)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Other(format!("column {col}: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn u64_col(row: &AnyRow, col: &str) -> Result<u64> {
    Ok(get::<i64>(row, col)?.max(0) as u64)
}

pub(crate) async fn exists(
    tx: &mut Tx,
    table: &'static str,
    key: &'static str,
    value: &str,
) -> Result<bool> {
    let sql = format!("SELECT COUNT(*) FROM {table} WHERE {key} = $1");
    let n: i64 = sqlx::query_scalar(&sql)
        .bind(value)
        .fetch_one(&mut **tx)
        .await?;
    Ok(n > 0)
}

pub(crate) async fn require(
    tx: &mut Tx,
    table: &'static str,
    key: &'static str,
    field: &str,
    kind: &str,
    value: &str,
) -> Result<()> {
    if exists(tx, table, key, value).await? {
        Ok(())
    } else {
        Err(invalid(FieldError::new(
            field,
            format!("unknown {kind} `{value}`"),
        )))
    }
}

/// A table, its key column, and what its rows are called in messages.
#[derive(Clone, Copy)]
pub(crate) struct Table {
    pub name: &'static str,
    pub key: &'static str,
    pub kind: &'static str,
}

impl Table {
    const fn new(name: &'static str, key: &'static str, kind: &'static str) -> Table {
        Table { name, key, kind }
    }
}

pub(crate) const REGIONS: Table = Table::new("regions", "name", "region");
pub(crate) const NODES: Table = Table::new("nodes", "id", "node");
pub(crate) const IMAGES: Table = Table::new("images", "name", "image");
pub(crate) const DEPLOYMENTS: Table = Table::new("deployments", "name", "deployment");
pub(crate) const INSTANCES: Table = Table::new("instances", "id", "instance");
pub(crate) const DOMAINS: Table = Table::new("domains", "name", "domain");
pub(crate) const EDGE_PROXIES: Table = Table::new("edge_proxies", "id", "edge proxy");

impl Store {
    /// The row of `table` whose `key` is `value`, decoded.
    pub(crate) async fn fetch_one<T>(
        &self,
        table: &Table,
        value: &str,
        decode: fn(&AnyRow) -> Result<T>,
    ) -> Result<T> {
        let Table { name, key, kind } = *table;
        let sql = format!("SELECT * FROM {name} WHERE {key} = $1");
        let row = sqlx::query(&sql)
            .bind(value)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| not_found(kind, value))?;
        decode(&row)
    }

    /// A page of `table` in `key` order after `after`, keeping rows whose columns equal
    /// the given filters (`None` filters nothing).
    pub(crate) async fn fetch_page<T>(
        &self,
        table: &Table,
        filters: &[(&'static str, Option<String>)],
        after: Option<&str>,
        limit: Option<u32>,
        decode: fn(&AnyRow) -> Result<T>,
        key_of: fn(&T) -> &str,
    ) -> Result<Page<T>> {
        let limit = page_limit(limit);
        let Table { name, key, .. } = *table;
        let mut sql = format!("SELECT * FROM {name} WHERE {key} > $1");
        let mut binds: Vec<&str> = vec![after.unwrap_or("")];
        for (col, v) in filters {
            if let Some(v) = v {
                binds.push(v);
                sql.push_str(&format!(" AND {col} = ${}", binds.len()));
            }
        }
        sql.push_str(&format!(" ORDER BY {key} LIMIT ${}", binds.len() + 1));
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(b);
        }
        let rows = q.bind(i64::from(limit)).fetch_all(&self.pool).await?;
        let items = rows.iter().map(decode).collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit, key_of))
    }
}

fn check_text(field: &str, value: &str) -> Result<()> {
    if value.len() > MAX_TEXT {
        return Err(invalid(FieldError::new(
            field,
            format!("longer than {MAX_TEXT} bytes"),
        )));
    }
    // NUL ends a C string: no path, argument or variable can hold one (the kernel would
    // see a shorter value than the one stored), and PostgreSQL refuses it in text
    if value.contains('\0') {
        return Err(invalid(FieldError::new(field, "contains a NUL character")));
    }
    Ok(())
}

// ---------- regions ----------

fn region(row: &AnyRow) -> Result<Region> {
    Ok(Region {
        name: get(row, "name")?,
        balancer_address: get(row, "balancer_address")?,
        https_address: get(row, "https_address")?,
        created_at: Timestamp(get(row, "created_at")?),
    })
}

fn check_region(r: &Region) -> Result<()> {
    check_name("name", &r.name).map_err(invalid)?;
    if let Some(a) = &r.balancer_address {
        check_host_port("balancer_address", a).map_err(invalid)?;
    }
    if let Some(a) = &r.https_address {
        check_host_port("https_address", a).map_err(invalid)?;
    }
    Ok(())
}

/// A region's balancer address must not be an edge's: other regions' edges forward to it
/// requests they cannot serve, and an edge there would route them with its own snapshot —
/// back round to where they came from when that region has no instance either.
async fn not_an_edge(tx: &mut Tx, address: &str) -> Result<()> {
    let edge: Option<(String, String)> =
        sqlx::query_as("SELECT id, region FROM edge_proxies WHERE address = $1 LIMIT 1")
            .bind(address)
            .fetch_optional(&mut **tx)
            .await?;
    match edge {
        Some((id, region)) => Err(invalid(FieldError::new(
            "balancer_address",
            format!(
                "{address} is edge {id}'s address (region {region}), not a balancer: requests \
                 forwarded there from other regions could be forwarded back in a loop; give the \
                 address of the region's L4 balancer"
            ),
        ))),
        None => Ok(()),
    }
}

impl Store {
    pub async fn create_region(&self, new: NewRegion) -> Result<Region> {
        let r = Region {
            name: new.name,
            balancer_address: new.balancer_address.filter(|a| !a.is_empty()),
            https_address: new.https_address.filter(|a| !a.is_empty()),
            created_at: Timestamp::now(),
        };
        check_region(&r)?;
        let mut tx = self.begin_write().await?;
        if let Some(a) = &r.balancer_address {
            not_an_edge(&mut tx, a).await?;
        }
        sqlx::query("INSERT INTO regions (name, balancer_address, https_address, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&r.name)
            .bind(r.balancer_address.clone())
            .bind(r.https_address.clone())
            .bind(r.created_at.0)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_constraint(e, "name", &format!("region `{}`", r.name)))?;
        self.commit_routing(tx).await?;
        Ok(r)
    }

    pub async fn region(&self, name: &str) -> Result<Region> {
        self.fetch_one(&REGIONS, name, region).await
    }

    pub async fn regions(&self, after: Option<&str>, limit: Option<u32>) -> Result<Page<Region>> {
        self.fetch_page(&REGIONS, &[], after, limit, region, |r| &r.name)
            .await
    }

    pub async fn update_region(&self, name: &str, patch: RegionPatch) -> Result<Region> {
        let mut r = self.region(name).await?;
        if let Some(a) = patch.balancer_address {
            r.balancer_address = Some(a).filter(|a| !a.is_empty());
        }
        if let Some(a) = patch.https_address {
            r.https_address = Some(a).filter(|a| !a.is_empty());
        }
        check_region(&r)?;
        let mut tx = self.begin_write().await?;
        if let Some(a) = &r.balancer_address {
            not_an_edge(&mut tx, a).await?;
        }
        sqlx::query("UPDATE regions SET balancer_address = $1, https_address = $2 WHERE name = $3")
            .bind(r.balancer_address.clone())
            .bind(r.https_address.clone())
            .bind(name)
            .execute(&mut *tx)
            .await?;
        self.commit_routing(tx).await?;
        Ok(r)
    }

    pub async fn delete_region(&self, name: &str) -> Result<()> {
        self.delete(&REGIONS, name, true).await
    }

    /// Deletes one row; a row still referenced is a conflict that says so.
    pub(crate) async fn delete(&self, table: &Table, value: &str, routing: bool) -> Result<()> {
        let Table { name, key, kind } = *table;
        let mut tx = self.begin_write().await?;
        let sql = format!("DELETE FROM {name} WHERE {key} = $1");
        let done = sqlx::query(&sql)
            .bind(value)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_constraint(e, key, &format!("{kind} `{value}`")))?;
        if done.rows_affected() == 0 {
            return Err(not_found(kind, value));
        }
        if routing {
            self.commit_routing(tx).await
        } else {
            Ok(tx.commit().await?)
        }
    }

    /// Commits a write that can change routing and tells the compilers.
    pub(crate) async fn commit_routing(&self, mut tx: Tx) -> Result<()> {
        self.notify_in(&mut tx).await?;
        tx.commit().await?;
        self.changed();
        Ok(())
    }
}

// ---------- nodes ----------

fn node(row: &AnyRow) -> Result<Node> {
    Ok(Node {
        id: get(row, "id")?,
        hostname: get(row, "hostname")?,
        address: get(row, "address")?,
        region: get(row, "region")?,
        node_type: enum_col(row, "node_type", NodeType::parse)?,
        state: enum_col(row, "state", NodeState::parse)?,
        resources: Resources {
            cpu_millis: u64_col(row, "cpu_millis")?,
            memory_mb: u64_col(row, "memory_mb")?,
            disk_mb: u64_col(row, "disk_mb")?,
        },
        ingress_address: get(row, "ingress_address")?,
        drivers: get::<Option<String>>(row, "drivers")?
            .and_then(|d| serde_json::from_str(&d).ok())
            .unwrap_or_default(),
        last_heartbeat_at: ts(get(row, "last_heartbeat_at")?),
        created_at: Timestamp(get(row, "created_at")?),
    })
}

fn check_resources(r: &Resources) -> Result<()> {
    // Values the database's BIGINT holds.
    for (field, v) in [
        ("resources.cpu_millis", r.cpu_millis),
        ("resources.memory_mb", r.memory_mb),
        ("resources.disk_mb", r.disk_mb),
    ] {
        if v > i64::MAX as u64 {
            return Err(invalid(FieldError::new(field, "too large")));
        }
    }
    Ok(())
}

impl Store {
    pub async fn create_node(&self, new: NewNode) -> Result<Node> {
        check_host("hostname", &new.hostname).map_err(invalid)?;
        check_host("address", &new.address).map_err(invalid)?;
        check_name("region", &new.region).map_err(invalid)?;
        check_resources(&new.resources)?;
        let n = Node {
            id: format!("node-{}", random_hex(6)),
            hostname: new.hostname,
            address: new.address,
            region: new.region,
            node_type: new.node_type,
            state: new.state.unwrap_or(NodeState::Ready),
            resources: new.resources,
            ingress_address: None,
            drivers: Vec::new(),
            last_heartbeat_at: None,
            created_at: Timestamp::now(),
        };
        let mut tx = self.begin_write().await?;
        require(&mut tx, "regions", "name", "region", "region", &n.region).await?;
        sqlx::query(
            "INSERT INTO nodes (id, hostname, address, region, node_type, state, cpu_millis, memory_mb, disk_mb, last_heartbeat_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10)",
        )
        .bind(&n.id)
        .bind(&n.hostname)
        .bind(&n.address)
        .bind(&n.region)
        .bind(n.node_type.as_str())
        .bind(n.state.as_str())
        .bind(n.resources.cpu_millis as i64)
        .bind(n.resources.memory_mb as i64)
        .bind(n.resources.disk_mb as i64)
        .bind(n.created_at.0)
        .execute(&mut *tx)
        .await?;
        self.commit_routing(tx).await?;
        Ok(n)
    }

    pub async fn node(&self, id: &str) -> Result<Node> {
        self.fetch_one(&NODES, id, node).await
    }

    pub async fn nodes(
        &self,
        filter: &NodeFilter,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Node>> {
        let filters = [
            (
                "node_type",
                filter.node_type.map(|t| t.as_str().to_string()),
            ),
            ("state", filter.state.map(|s| s.as_str().to_string())),
            ("region", filter.region.clone()),
        ];
        self.fetch_page(&NODES, &filters, after, limit, node, |n| &n.id)
            .await
    }

    pub async fn update_node(&self, id: &str, patch: NodePatch) -> Result<Node> {
        let mut n = self.node(id).await?;
        if let Some(a) = patch.address {
            check_host("address", &a).map_err(invalid)?;
            n.address = a;
        }
        if let Some(s) = patch.state {
            n.state = s;
        }
        if let Some(r) = patch.resources {
            check_resources(&r)?;
            n.resources = r;
        }
        self.put_node(&n).await?;
        Ok(n)
    }

    /// Records a heartbeat (and the node's current resources, when sent).
    pub async fn heartbeat(&self, id: &str, resources: Option<Resources>) -> Result<Node> {
        let mut n = self.node(id).await?;
        if let Some(r) = resources {
            check_resources(&r)?;
            n.resources = r;
        }
        n.last_heartbeat_at = Some(Timestamp::now());
        self.put_node(&n).await?;
        Ok(n)
    }

    async fn put_node(&self, n: &Node) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE nodes SET address = $1, state = $2, cpu_millis = $3, memory_mb = $4, disk_mb = $5, last_heartbeat_at = $6 WHERE id = $7")
            .bind(&n.address)
            .bind(n.state.as_str())
            .bind(n.resources.cpu_millis as i64)
            .bind(n.resources.memory_mb as i64)
            .bind(n.resources.disk_mb as i64)
            .bind(n.last_heartbeat_at.map(|t| t.0))
            .bind(&n.id)
            .execute(&mut *tx)
            .await?;
        self.commit_routing(tx).await
    }

    pub async fn delete_node(&self, id: &str) -> Result<()> {
        self.delete(&NODES, id, true).await
    }
}

// ---------- images ----------

fn image(row: &AnyRow) -> Result<Image> {
    Ok(Image {
        name: get(row, "name")?,
        command: json_col(row, "command")?,
        env: json_col(row, "env")?,
        runtime: enum_col(row, "runtime", Runtime::parse)?,
        rootfs: get::<Option<String>>(row, "rootfs")?
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| StoreError::Other(format!("column rootfs: {e}")))?,
        created_at: Timestamp(get(row, "created_at")?),
    })
}

fn check_image(i: &NewImage) -> Result<()> {
    check_name("name", &i.name).map_err(invalid)?;
    if i.command.is_empty() || i.command[0].is_empty() {
        return Err(invalid(FieldError::new(
            "command",
            "must name the program to run",
        )));
    }
    if i.command.len() > MAX_LIST || i.env.len() > MAX_LIST {
        return Err(invalid(FieldError::new(
            "command",
            format!("at most {MAX_LIST} arguments and {MAX_LIST} variables"),
        )));
    }
    for (n, a) in i.command.iter().enumerate() {
        check_text(&format!("command[{n}]"), a)?;
    }
    for (k, v) in &i.env {
        crate::releases::check_var_name(&format!("env.{k}"), k).map_err(invalid)?;
        check_text(&format!("env.{k}"), v)?;
    }
    if let Some(RootFs::Dir(path) | RootFs::Oci(path)) = &i.rootfs {
        check_text("rootfs", path)?;
        if !path.starts_with('/') {
            return Err(invalid(FieldError::new(
                "rootfs",
                "must be an absolute path on the worker nodes",
            )));
        }
    }
    Ok(())
}

impl Store {
    pub async fn create_image(&self, new: NewImage) -> Result<Image> {
        check_image(&new)?;
        let mut tx = self.begin_write().await?;
        let img = insert_image(&mut tx, new, false).await?;
        tx.commit().await?;
        Ok(img)
    }

    pub async fn image(&self, name: &str) -> Result<Image> {
        self.fetch_one(&IMAGES, name, image).await
    }

    pub async fn images(&self, after: Option<&str>, limit: Option<u32>) -> Result<Page<Image>> {
        self.fetch_page(&IMAGES, &[], after, limit, image, |i| &i.name)
            .await
    }

    pub async fn delete_image(&self, name: &str) -> Result<()> {
        self.delete(&IMAGES, name, false).await
    }
}

async fn insert_image(tx: &mut Tx, new: NewImage, replace: bool) -> Result<Image> {
    let img = Image {
        name: new.name,
        command: new.command,
        env: new.env,
        runtime: new.runtime,
        rootfs: new.rootfs,
        created_at: Timestamp::now(),
    };
    let rootfs = img.rootfs.as_ref().map(to_json);
    if replace && exists(tx, "images", "name", &img.name).await? {
        sqlx::query(
            "UPDATE images SET command = $1, env = $2, runtime = $3, rootfs = $4 WHERE name = $5",
        )
        .bind(to_json(&img.command))
        .bind(to_json(&img.env))
        .bind(img.runtime.as_str())
        .bind(rootfs)
        .bind(&img.name)
        .execute(&mut **tx)
        .await?;
        return Ok(img);
    }
    sqlx::query("INSERT INTO images (name, command, env, runtime, rootfs, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&img.name)
        .bind(to_json(&img.command))
        .bind(to_json(&img.env))
        .bind(img.runtime.as_str())
        .bind(rootfs)
        .bind(img.created_at.0)
        .execute(&mut **tx)
        .await
        .map_err(|e| map_constraint(e, "name", &format!("image `{}`", img.name)))?;
    Ok(img)
}

// ---------- deployments ----------

fn deployment(row: &AnyRow) -> Result<Deployment> {
    Ok(Deployment {
        name: get(row, "name")?,
        image: get(row, "image")?,
        replicas: u64_col(row, "replicas")?.min(u64::from(u32::MAX)) as u32,
        regions: json_col(row, "regions")?,
        port: u64_col(row, "port")?.min(u64::from(u16::MAX)) as u16,
        health_check: json_col(row, "health_check")?,
        status: enum_col(row, "status", DeploymentStatus::parse)?,
        release: u64_col(row, "release")?,
        strategy: enum_col(row, "strategy", Strategy::parse)?,
        max_surge: get(row, "max_surge")?,
        created_at: Timestamp(get(row, "created_at")?),
    })
}

async fn check_deployment(tx: &mut Tx, d: &Deployment) -> Result<()> {
    check_name("name", &d.name).map_err(invalid)?;
    check_name("image", &d.image).map_err(invalid)?;
    if d.replicas > MAX_REPLICAS {
        return Err(invalid(FieldError::new(
            "replicas",
            format!("at most {MAX_REPLICAS}"),
        )));
    }
    if d.port == 0 {
        return Err(invalid(FieldError::new("port", "must be 1-65535")));
    }
    if d.regions.is_empty() {
        return Err(invalid(FieldError::new(
            "regions",
            "name at least one region",
        )));
    }
    if d.regions.len() > MAX_LIST {
        return Err(invalid(FieldError::new(
            "regions",
            format!("at most {MAX_LIST}"),
        )));
    }
    if let Some(p) = &d.health_check.path {
        if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) || p.len() > 1024 {
            return Err(invalid(FieldError::new(
                "health_check.path",
                "must be a path like /healthz",
            )));
        }
    }
    if crate::rollout::surge(&d.max_surge, 1).is_none() {
        return Err(invalid(FieldError::new(
            "max_surge",
            "a count of instances (1-1000) or a percentage of the replicas (1%-100%)",
        )));
    }
    if let Some(0) = d.health_check.interval_secs {
        return Err(invalid(FieldError::new(
            "health_check.interval_secs",
            "must be at least 1",
        )));
    }
    require(tx, "images", "name", "image", "image", &d.image).await?;
    for (i, r) in d.regions.iter().enumerate() {
        let field = format!("regions[{i}]");
        check_name(&field, r).map_err(invalid)?;
        require(tx, "regions", "name", &field, "region", r).await?;
    }
    Ok(())
}

async fn insert_deployment(tx: &mut Tx, d: &Deployment) -> Result<()> {
    sqlx::query("INSERT INTO deployments (name, image, replicas, regions, port, health_check, status, created_at, strategy, max_surge) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
        .bind(&d.name)
        .bind(&d.image)
        .bind(i64::from(d.replicas))
        .bind(to_json(&d.regions))
        .bind(i64::from(d.port))
        .bind(to_json(&d.health_check))
        .bind(d.status.as_str())
        .bind(d.created_at.0)
        .bind(d.strategy.as_str())
        .bind(&d.max_surge)
        .execute(&mut **tx)
        .await
        .map_err(|e| map_constraint(e, "name", &format!("deployment `{}`", d.name)))?;
    Ok(())
}

async fn update_deployment_row(tx: &mut Tx, d: &Deployment) -> Result<()> {
    sqlx::query("UPDATE deployments SET image = $1, replicas = $2, regions = $3, port = $4, health_check = $5, status = $6, strategy = $7, max_surge = $8 WHERE name = $9")
        .bind(&d.image)
        .bind(i64::from(d.replicas))
        .bind(to_json(&d.regions))
        .bind(i64::from(d.port))
        .bind(to_json(&d.health_check))
        .bind(d.status.as_str())
        .bind(d.strategy.as_str())
        .bind(&d.max_surge)
        .bind(&d.name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn new_deployment(new: NewDeployment) -> Deployment {
    Deployment {
        name: new.name,
        image: new.image,
        replicas: new.replicas,
        regions: new.regions,
        port: new.port,
        health_check: new.health_check,
        status: DeploymentStatus::Pending,
        release: 0,
        strategy: new.strategy.unwrap_or(Strategy::Rolling),
        max_surge: new.max_surge.unwrap_or_else(|| "1".into()),
        created_at: Timestamp::now(),
    }
}

/// Makes the next release of `d` from its image row, port and health check, keeping the
/// secrets of its current release, when that changes what runs. The deployment row must
/// be written already.
async fn release_from(
    tx: &mut Tx,
    d: &Deployment,
    by: &str,
    timeout_ms: Option<i64>,
) -> Result<Option<u64>> {
    let row = sqlx::query("SELECT * FROM images WHERE name = $1")
        .bind(&d.image)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| not_found("image", &d.image))?;
    let img = image(&row)?;
    let secrets = crate::releases::target(tx, &d.name)
        .await?
        .map(|(_, s)| s.secrets)
        .unwrap_or_default();
    let spec = crate::releases::Spec {
        command: img.command,
        env: img.env,
        runtime: img.runtime,
        rootfs: img.rootfs,
        port: d.port,
        health_check: d.health_check.clone(),
        secrets,
    };
    crate::releases::make(tx, &d.name, spec, by, timeout_ms, None).await
}

impl Store {
    pub async fn create_deployment(&self, new: NewDeployment) -> Result<Deployment> {
        let d = new_deployment(new);
        let mut tx = self.begin_write().await?;
        check_deployment(&mut tx, &d).await?;
        insert_deployment(&mut tx, &d).await?;
        let release = release_from(&mut tx, &d, "admin", None).await?;
        self.commit_routing(tx).await?;
        Ok(Deployment {
            release: release.unwrap_or(0),
            ..d
        })
    }

    pub async fn deployment(&self, name: &str) -> Result<Deployment> {
        self.fetch_one(&DEPLOYMENTS, name, deployment).await
    }

    pub async fn deployments(
        &self,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Deployment>> {
        self.fetch_page(&DEPLOYMENTS, &[], after, limit, deployment, |d| &d.name)
            .await
    }

    pub async fn update_deployment(
        &self,
        name: &str,
        patch: DeploymentPatch,
    ) -> Result<Deployment> {
        let mut d = self.deployment(name).await?;
        if let Some(v) = patch.image {
            d.image = v;
        }
        if let Some(v) = patch.replicas {
            d.replicas = v;
        }
        if let Some(v) = patch.regions {
            d.regions = v;
        }
        if let Some(v) = patch.port {
            d.port = v;
        }
        if let Some(v) = patch.health_check {
            d.health_check = v;
        }
        if let Some(v) = patch.status {
            d.status = v;
        }
        if let Some(v) = patch.strategy {
            d.strategy = v;
        }
        if let Some(v) = patch.max_surge {
            d.max_surge = v;
        }
        let mut tx = self.begin_write().await?;
        check_deployment(&mut tx, &d).await?;
        update_deployment_row(&mut tx, &d).await?;
        if let Some(v) = release_from(&mut tx, &d, "admin", None).await? {
            d.release = v;
        }
        self.commit_routing(tx).await?;
        Ok(d)
    }

    /// Deletes a deployment with its instances and domains.
    pub async fn delete_deployment(&self, name: &str) -> Result<()> {
        // Explicit, not only ON DELETE CASCADE: SQLite connections opened by other tools may
        // run without foreign keys enabled.
        let mut tx = self.begin_write().await?;
        if !exists(&mut tx, "deployments", "name", name).await? {
            return Err(not_found("deployment", name));
        }
        crate::agents::retire(&mut tx, "deployment", name).await?;
        for sql in [
            "DELETE FROM releases WHERE deployment = $1",
            "DELETE FROM domains WHERE deployment = $1",
            "DELETE FROM instances WHERE deployment = $1",
            "DELETE FROM deployments WHERE name = $1",
        ] {
            sqlx::query(sql).bind(name).execute(&mut *tx).await?;
        }
        self.commit_routing(tx).await
    }

    /// `zeitwork apply`: image, deployment and domains in one transaction.
    pub async fn apply(&self, spec: ApplySpec) -> Result<Applied> {
        self.apply_by(spec, "admin").await
    }

    /// [`Store::apply`], recording `by` as the maker of the release it makes.
    pub async fn apply_by(&self, spec: ApplySpec, by: &str) -> Result<Applied> {
        let timeout_ms = spec
            .rollout_timeout_secs
            .map(|s| s.min(86_400).saturating_mul(1000) as i64);
        if let Some(img) = &spec.image {
            check_image(img).map_err(|e| prefix("image", e))?;
            if img.name != spec.deployment.image {
                return Err(invalid(FieldError::new(
                    "deployment.image",
                    format!(
                        "`{}` differs from image.name `{}`",
                        spec.deployment.image, img.name
                    ),
                )));
            }
        }
        if spec.domains.len() > MAX_LIST {
            return Err(invalid(FieldError::new(
                "domains",
                format!("at most {MAX_LIST}"),
            )));
        }
        for (i, d) in spec.domains.iter().enumerate() {
            check_domain(&format!("domains[{i}]"), d).map_err(invalid)?;
        }
        let mut tx = self.begin_write().await?;
        if let Some(img) = spec.image {
            insert_image(&mut tx, img, true).await?;
        }
        let mut d = new_deployment(spec.deployment);
        check_deployment(&mut tx, &d)
            .await
            .map_err(|e| prefix("deployment", e))?;
        let existing = sqlx::query("SELECT * FROM deployments WHERE name = $1")
            .bind(&d.name)
            .fetch_optional(&mut *tx)
            .await?;
        let action = match existing {
            Some(row) => {
                let old = deployment(&row)?;
                d.status = old.status;
                d.created_at = old.created_at;
                d.release = old.release;
                update_deployment_row(&mut tx, &d).await?;
                "updated"
            }
            None => {
                insert_deployment(&mut tx, &d).await?;
                "created"
            }
        };
        let release = release_from(&mut tx, &d, by, timeout_ms).await?;
        if let Some(v) = release {
            d.release = v;
        }
        let now = unix_millis();
        let mut domains = Vec::new();
        for (i, name) in spec.domains.iter().enumerate() {
            let row = sqlx::query("SELECT * FROM domains WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
            let dom = match row {
                Some(row) => {
                    let mut dom = domain(&row)?;
                    if dom.deployment != d.name && !spec.move_domains {
                        return Err(conflict(
                            &format!("domains[{i}]"),
                            format!(
                                "domain `{name}` belongs to deployment `{}`; destroy that app first, or move the domain explicitly (`zeitwork deploy --move-domains`, or `move_domains: true` in the spec)",
                                dom.deployment
                            ),
                        ));
                    }
                    // A moved domain stays verified: it was proven once already.
                    dom.deployment = d.name.clone();
                    put_domain(&mut tx, &dom).await?;
                    dom
                }
                None => {
                    // Routed once the operator's check proves the name leads here.
                    let dom = Domain {
                        name: name.clone(),
                        deployment: d.name.clone(),
                        verified_at: None,
                        check_error: None,
                        created_at: Timestamp(now),
                    };
                    insert_domain(&mut tx, &dom).await?;
                    dom
                }
            };
            domains.push(dom);
        }
        self.commit_routing(tx).await?;
        Ok(Applied {
            deployment: d,
            domains,
            action: action.to_string(),
            release,
        })
    }
}

fn prefix(p: &str, e: StoreError) -> StoreError {
    match e {
        StoreError::Invalid(f) => invalid(FieldError::new(format!("{p}.{}", f.field), f.message)),
        other => other,
    }
}

// ---------- instances ----------

fn instance(row: &AnyRow) -> Result<Instance> {
    let port: Option<i64> = get(row, "port")?;
    Ok(Instance {
        id: get(row, "id")?,
        deployment: get(row, "deployment")?,
        release: u64_col(row, "release")?,
        draining: get::<Option<i64>>(row, "draining_since")?.is_some(),
        node: get(row, "node")?,
        state: enum_col(row, "state", InstanceState::parse)?,
        reason: get(row, "reason")?,
        permanent: get::<i64>(row, "permanent")? != 0,
        address: get(row, "address")?,
        port: port.and_then(|p| u16::try_from(p).ok()),
        created_at: Timestamp(get(row, "created_at")?),
        updated_at: Timestamp(get(row, "updated_at")?),
    })
}

fn check_instance(i: &Instance) -> Result<()> {
    if let Some(a) = &i.address {
        check_host("address", a).map_err(invalid)?;
    }
    if i.port == Some(0) {
        return Err(invalid(FieldError::new("port", "must be 1-65535")));
    }
    if i.state == InstanceState::Started && (i.address.is_none() || i.port.is_none()) {
        return Err(invalid(FieldError::new(
            "state",
            "a started instance needs an address and a port",
        )));
    }
    Ok(())
}

impl Store {
    pub async fn create_instance(&self, new: NewInstance) -> Result<Instance> {
        check_name("deployment", &new.deployment).map_err(invalid)?;
        check_id("node", &new.node).map_err(invalid)?;
        let now = Timestamp::now();
        let i = Instance {
            id: format!("inst-{}", random_hex(6)),
            deployment: new.deployment,
            release: 0,
            draining: false,
            node: new.node,
            state: new.state.unwrap_or(InstanceState::Created),
            reason: None,
            permanent: false,
            address: new.address,
            port: new.port,
            created_at: now,
            updated_at: now,
        };
        check_instance(&i)?;
        let mut tx = self.begin_write().await?;
        require(
            &mut tx,
            "deployments",
            "name",
            "deployment",
            "deployment",
            &i.deployment,
        )
        .await?;
        require(&mut tx, "nodes", "id", "node", "node", &i.node).await?;
        sqlx::query("INSERT INTO instances (id, deployment, node, state, address, port, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&i.id)
            .bind(&i.deployment)
            .bind(&i.node)
            .bind(i.state.as_str())
            .bind(i.address.clone())
            .bind(i.port.map(i64::from))
            .bind(i.created_at.0)
            .bind(i.updated_at.0)
            .execute(&mut *tx)
            .await?;
        self.commit_routing(tx).await?;
        Ok(i)
    }

    pub async fn instance(&self, id: &str) -> Result<Instance> {
        self.fetch_one(&INSTANCES, id, instance).await
    }

    pub async fn instances(
        &self,
        filter: &InstanceFilter,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Instance>> {
        let filters = [
            ("deployment", filter.deployment.clone()),
            ("node", filter.node.clone()),
            ("state", filter.state.map(|s| s.as_str().to_string())),
        ];
        self.fetch_page(&INSTANCES, &filters, after, limit, instance, |i| &i.id)
            .await
    }

    pub async fn update_instance(&self, id: &str, patch: InstancePatch) -> Result<Instance> {
        let mut i = self.instance(id).await?;
        if let Some(s) = patch.state {
            i.state = s;
        }
        if let Some(a) = patch.address {
            i.address = Some(a);
        }
        if let Some(p) = patch.port {
            i.port = Some(p);
        }
        i.updated_at = Timestamp::now();
        check_instance(&i)?;
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE instances SET state = $1, address = $2, port = $3, updated_at = $4 WHERE id = $5")
            .bind(i.state.as_str())
            .bind(i.address.clone())
            .bind(i.port.map(i64::from))
            .bind(i.updated_at.0)
            .bind(&i.id)
            .execute(&mut *tx)
            .await?;
        self.commit_routing(tx).await?;
        Ok(i)
    }

    pub async fn delete_instance(&self, id: &str) -> Result<()> {
        self.delete(&INSTANCES, id, true).await
    }
}

// ---------- domains ----------

fn domain(row: &AnyRow) -> Result<Domain> {
    Ok(Domain {
        name: get(row, "name")?,
        deployment: get(row, "deployment")?,
        verified_at: ts(get(row, "verified_at")?),
        check_error: get(row, "check_error")?,
        created_at: Timestamp(get(row, "created_at")?),
    })
}

async fn insert_domain(tx: &mut Tx, d: &Domain) -> Result<()> {
    sqlx::query(
        "INSERT INTO domains (name, deployment, verified_at, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&d.name)
    .bind(&d.deployment)
    .bind(d.verified_at.map(|t| t.0))
    .bind(d.created_at.0)
    .execute(&mut **tx)
    .await
    .map_err(|e| map_constraint(e, "name", &format!("domain `{}`", d.name)))?;
    Ok(())
}

async fn put_domain(tx: &mut Tx, d: &Domain) -> Result<()> {
    sqlx::query(
        "UPDATE domains SET deployment = $1, verified_at = $2, check_error = $3 WHERE name = $4",
    )
    .bind(&d.deployment)
    .bind(d.verified_at.map(|t| t.0))
    .bind(d.check_error.clone())
    .bind(&d.name)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    pub async fn create_domain(&self, new: NewDomain) -> Result<Domain> {
        check_domain("name", &new.name).map_err(invalid)?;
        check_name("deployment", &new.deployment).map_err(invalid)?;
        let now = Timestamp::now();
        let d = Domain {
            name: new.name,
            deployment: new.deployment,
            verified_at: new.verified.then_some(now),
            check_error: None,
            created_at: now,
        };
        let mut tx = self.begin_write().await?;
        require(
            &mut tx,
            "deployments",
            "name",
            "deployment",
            "deployment",
            &d.deployment,
        )
        .await?;
        insert_domain(&mut tx, &d).await?;
        self.commit_routing(tx).await?;
        Ok(d)
    }

    pub async fn domain(&self, name: &str) -> Result<Domain> {
        self.fetch_one(&DOMAINS, name, domain).await
    }

    pub async fn domains(
        &self,
        deployment: Option<&str>,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Domain>> {
        let filters = [("deployment", deployment.map(str::to_string))];
        self.fetch_page(&DOMAINS, &filters, after, limit, domain, |d| &d.name)
            .await
    }

    pub async fn update_domain(&self, name: &str, patch: DomainPatch) -> Result<Domain> {
        let mut d = self.domain(name).await?;
        let mut tx = self.begin_write().await?;
        if let Some(dep) = patch.deployment {
            check_name("deployment", &dep).map_err(invalid)?;
            require(
                &mut tx,
                "deployments",
                "name",
                "deployment",
                "deployment",
                &dep,
            )
            .await?;
            d.deployment = dep;
        }
        match patch.verified {
            Some(true) if d.verified_at.is_none() => {
                d.verified_at = Some(Timestamp::now());
                d.check_error = None;
            }
            Some(false) => d.verified_at = None,
            _ => {}
        }
        put_domain(&mut tx, &d).await?;
        self.commit_routing(tx).await?;
        Ok(d)
    }

    pub async fn delete_domain(&self, name: &str) -> Result<()> {
        self.delete(&DOMAINS, name, true).await
    }
}

/// Count of rows per table, for tests and diagnostics.
impl Store {
    pub async fn counts(&self) -> Result<BTreeMap<&'static str, i64>> {
        let mut out = BTreeMap::new();
        for t in [
            "regions",
            "nodes",
            "images",
            "deployments",
            "instances",
            "domains",
            "edge_proxies",
            "tokens",
            "snapshots",
        ] {
            let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {t}"))
                .fetch_one(&self.pool)
                .await?;
            out.insert(t, n);
        }
        Ok(out)
    }
}
