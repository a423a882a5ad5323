//! Embedded migrations, applied in order at start. Each runs in its own transaction and is
//! recorded in `schema_migrations`; on PostgreSQL an advisory lock keeps two operators that
//! start together from migrating at once. The SQL is portable between SQLite and
//! PostgreSQL: `TEXT` and `BIGINT` only, times in Unix milliseconds.

use sqlx::AnyPool;

use crate::{Backend, Result};

const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE regions (
    name TEXT PRIMARY KEY,
    balancer_address TEXT,
    created_at BIGINT NOT NULL
);
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    address TEXT NOT NULL,
    region TEXT NOT NULL REFERENCES regions(name),
    node_type TEXT NOT NULL,
    state TEXT NOT NULL,
    cpu_millis BIGINT NOT NULL,
    memory_mb BIGINT NOT NULL,
    disk_mb BIGINT NOT NULL,
    last_heartbeat_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX nodes_by_type_state ON nodes (node_type, state);
CREATE TABLE images (
    name TEXT PRIMARY KEY,
    command TEXT NOT NULL,
    env TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE deployments (
    name TEXT PRIMARY KEY,
    image TEXT NOT NULL REFERENCES images(name),
    replicas BIGINT NOT NULL,
    regions TEXT NOT NULL,
    port BIGINT NOT NULL,
    health_check TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    deployment TEXT NOT NULL REFERENCES deployments(name) ON DELETE CASCADE,
    node TEXT NOT NULL REFERENCES nodes(id),
    state TEXT NOT NULL,
    address TEXT,
    port BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX instances_by_deployment ON instances (deployment);
CREATE TABLE domains (
    name TEXT PRIMARY KEY,
    deployment TEXT NOT NULL REFERENCES deployments(name) ON DELETE CASCADE,
    verified_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE TABLE edge_proxies (
    id TEXT PRIMARY KEY,
    region TEXT NOT NULL REFERENCES regions(name),
    address TEXT NOT NULL,
    state TEXT NOT NULL,
    connected BIGINT NOT NULL,
    applied_version BIGINT,
    applied_hash TEXT,
    last_ack_at BIGINT,
    last_nack_at BIGINT,
    last_nack_error TEXT,
    last_seen_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE TABLE snapshots (
    region TEXT NOT NULL,
    version BIGINT NOT NULL,
    hash TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (region, version)
)
"#,
    ),
    (2, "ALTER TABLE edge_proxies ADD COLUMN admin_address TEXT"),
    (
        3,
        r#"
ALTER TABLE images ADD COLUMN runtime TEXT NOT NULL DEFAULT 'process';
ALTER TABLE images ADD COLUMN rootfs TEXT;
ALTER TABLE nodes ADD COLUMN ingress_address TEXT;
ALTER TABLE nodes ADD COLUMN drivers TEXT;
ALTER TABLE instances ADD COLUMN reason TEXT;
CREATE INDEX instances_by_node ON instances (node);
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
)
"#,
    ),
    (
        4,
        r#"
ALTER TABLE tokens ADD COLUMN bound_to TEXT;
ALTER TABLE nodes ADD COLUMN enrolled_by TEXT;
ALTER TABLE edge_proxies ADD COLUMN enrolled_by TEXT;
ALTER TABLE instances ADD COLUMN permanent BIGINT NOT NULL DEFAULT 0
"#,
    ),
    (
        5,
        // Instances the platform no longer wants but whose agent has not yet said they
        // stopped: what `destroy` and a scale-down wait for. No foreign keys: the
        // deployment may be gone already.
        r#"
CREATE TABLE retiring_instances (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    deployment TEXT NOT NULL,
    since BIGINT NOT NULL
);
CREATE INDEX retiring_by_deployment ON retiring_instances (deployment)
"#,
    ),
    (
        6,
        // HTTPS: the certificate of each domain (its key sealed with the operator's key),
        // the ACME HTTP-01 tokens every edge answers, and leases that keep two operators
        // from ordering one certificate twice.
        r#"
CREATE TABLE tls_certificates (
    domain TEXT PRIMARY KEY,
    cert_pem TEXT,
    sealed_key TEXT,
    issuer TEXT,
    not_before BIGINT,
    not_after BIGINT,
    status TEXT NOT NULL,
    last_error TEXT,
    orders BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);
CREATE TABLE acme_challenges (
    token TEXT PRIMARY KEY,
    key_authorization TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL
)
"#,
    ),
    (
        7,
        // Domains are verified by the operator's HTTP check, which records why it failed;
        // a region's balancer may take HTTPS on a port of its own.
        r#"
ALTER TABLE domains ADD COLUMN check_error TEXT;
ALTER TABLE regions ADD COLUMN https_address TEXT
"#,
    ),
    (
        8,
        // Releases: what a deployment runs, one immutable row per version, with its
        // secrets sealed by the operator. Instances run one release; a drained one is out
        // of the snapshots, waiting for the edges to let go of it. Existing deployments
        // become their release 1, which runs.
        r#"
CREATE TABLE releases (
    deployment TEXT NOT NULL,
    version BIGINT NOT NULL,
    command TEXT NOT NULL,
    env TEXT NOT NULL,
    runtime TEXT NOT NULL,
    rootfs TEXT,
    port BIGINT NOT NULL,
    health_check TEXT NOT NULL,
    secrets TEXT NOT NULL,
    description TEXT NOT NULL,
    created_by TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    deadline_at BIGINT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (deployment, version)
);
ALTER TABLE deployments ADD COLUMN release BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deployments ADD COLUMN strategy TEXT NOT NULL DEFAULT 'rolling';
ALTER TABLE deployments ADD COLUMN max_surge TEXT NOT NULL DEFAULT '1';
ALTER TABLE instances ADD COLUMN release BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN draining_since BIGINT;
INSERT INTO releases (deployment, version, command, env, runtime, rootfs, port, health_check, secrets, description, created_by, status, created_at)
    SELECT d.name, 1, m.command, m.env, m.runtime, m.rootfs, d.port, d.health_check, '{}', 'from before releases', 'migration', 'running', d.created_at
    FROM deployments d JOIN images m ON m.name = d.image;
UPDATE deployments SET release = 1 WHERE name IN (SELECT deployment FROM releases);
UPDATE instances SET release = 1 WHERE deployment IN (SELECT deployment FROM releases)
"#,
    ),
];

/// The schema version this binary writes and reads.
pub fn current() -> i64 {
    MIGRATIONS.iter().map(|(v, _)| *v).max().unwrap_or(0)
}

/// For readers: the database must be at exactly this binary's schema version.
pub(crate) async fn check(pool: &AnyPool) -> Result<()> {
    let found: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
        .fetch_one(pool)
        .await
        .map_err(|_| {
            crate::StoreError::Other(
                "the database has no Zeitwork schema: start the operator on it first".into(),
            )
        })?;
    let (found, want) = (found.unwrap_or(0), current());
    match found.cmp(&want) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(crate::StoreError::Other(format!(
            "the database has schema version {found}, this binary needs {want}: upgrade the operator first (it migrates the database)"
        ))),
        std::cmp::Ordering::Greater => Err(crate::StoreError::Other(format!(
            "the database has schema version {found}, newer than this binary's {want}: upgrade this binary"
        ))),
    }
}

pub(crate) async fn migrate(pool: &AnyPool, backend: Backend) -> Result<()> {
    let mut conn = pool.acquire().await?;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_lock(7245837)")
            .execute(&mut *conn)
            .await?;
    }
    let result = run(&mut conn).await;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_unlock(7245837)")
            .execute(&mut *conn)
            .await?;
    }
    result
}

async fn run(conn: &mut sqlx::AnyConnection) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    let applied: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
        .fetch_one(&mut *conn)
        .await?;
    let applied = applied.unwrap_or(0);
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(*version)
            .bind(zw_proto::time::unix_millis())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version, "database migration applied");
    }
    Ok(())
}
