//! Releases: immutable, numbered versions of what a deployment runs, and its secrets.
//!
//! A deployment points at one release (`deployments.release`, the target); the scheduler
//! rolls its instances to it ([`crate::rollout`]). A change to what runs makes the next
//! release, never an edit of one, so rolling back is making a release equal to an older
//! one. Secrets live inside releases, each value sealed by the operator (this crate never
//! sees a plaintext secret): a release's secrets are exactly what its instances get, and
//! a rollback brings the old values back, as on Heroku.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};
use zw_proto::api::{
    FieldError, HealthCheckSpec, Release, ReleaseStatus, RootFs, Runtime, SecretInfo,
};
use zw_proto::time::{unix_millis, Timestamp};

use crate::entities::json_col;
use crate::{conflict, get, invalid, not_found, Result, Store, StoreError};

type Tx = Transaction<'static, Any>;

/// Releases kept per deployment unless the operator says otherwise.
pub const KEEP_RELEASES: usize = 10;
/// How long a release may take to become healthy unless the deploy says otherwise.
pub const ROLLOUT_TIMEOUT_MS: i64 = 120_000;
const KEEP_SETTING: &str = "keep_releases";
const MAX_SECRETS: usize = 256;
const MAX_SEALED: usize = 16 * 1024;

/// One secret as stored: the operator's sealed value and when it was set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    pub sealed: String,
    pub set_at: i64,
}

/// What a release runs: the part that makes one release differ from another.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spec {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub runtime: Runtime,
    pub rootfs: Option<RootFs>,
    pub port: u16,
    pub health_check: HealthCheckSpec,
    pub secrets: BTreeMap<String, SealedSecret>,
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn spec(row: &AnyRow) -> Result<Spec> {
    let runtime: String = get(row, "runtime")?;
    Ok(Spec {
        command: json_col(row, "command")?,
        env: json_col(row, "env")?,
        runtime: Runtime::parse(&runtime)
            .ok_or_else(|| StoreError::Other(format!("column runtime holds `{runtime}`")))?,
        rootfs: get::<Option<String>>(row, "rootfs")?
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| StoreError::Other(format!("column rootfs: {e}")))?,
        port: u16::try_from(get::<i64>(row, "port")?).unwrap_or(0),
        health_check: json_col(row, "health_check")?,
        secrets: json_col(row, "secrets")?,
    })
}

fn release(row: &AnyRow) -> Result<Release> {
    let s = spec(row)?;
    let status: String = get(row, "status")?;
    Ok(Release {
        deployment: get(row, "deployment")?,
        version: get::<i64>(row, "version")?.max(0) as u64,
        command: s.command,
        env: s.env,
        runtime: s.runtime,
        rootfs: s.rootfs,
        port: s.port,
        health_check: s.health_check,
        secrets: s.secrets.into_keys().collect(),
        status: ReleaseStatus::parse(&status)
            .ok_or_else(|| StoreError::Other(format!("column status holds `{status}`")))?,
        reason: get(row, "reason")?,
        description: get(row, "description")?,
        created_by: get(row, "created_by")?,
        created_at: Timestamp(get(row, "created_at")?),
    })
}

/// What changed from `old` to `new`, in words.
fn describe(old: Option<&Spec>, new: &Spec) -> String {
    let Some(old) = old else {
        return "first release".into();
    };
    let mut parts = Vec::new();
    if old.command != new.command {
        parts.push("command".to_string());
    }
    let keys: std::collections::BTreeSet<&String> = old.env.keys().chain(new.env.keys()).collect();
    for k in keys {
        match (old.env.get(k), new.env.get(k)) {
            (None, Some(_)) => parts.push(format!("env {k} added")),
            (Some(_), None) => parts.push(format!("env {k} removed")),
            (Some(a), Some(b)) if a != b => parts.push(format!("env {k}")),
            _ => {}
        }
    }
    let keys: std::collections::BTreeSet<&String> =
        old.secrets.keys().chain(new.secrets.keys()).collect();
    for k in keys {
        match (old.secrets.get(k), new.secrets.get(k)) {
            (None, Some(_)) => parts.push(format!("secret {k} set")),
            (Some(_), None) => parts.push(format!("secret {k} unset")),
            (Some(a), Some(b)) if a != b => parts.push(format!("secret {k} set")),
            _ => {}
        }
    }
    if old.runtime != new.runtime {
        parts.push(format!("runtime {}", new.runtime));
    }
    if old.rootfs != new.rootfs {
        parts.push("root filesystem".into());
    }
    if old.port != new.port {
        parts.push(format!("port {}", new.port));
    }
    if old.health_check != new.health_check {
        parts.push("health check".into());
    }
    format!("changed: {}", parts.join(", "))
}

/// The spec of `deployment`'s target release, with its version (none before the first).
pub(crate) async fn target(tx: &mut Tx, deployment: &str) -> Result<Option<(u64, Spec)>> {
    let row = sqlx::query(
        "SELECT r.* FROM releases r JOIN deployments d ON d.name = r.deployment AND d.release = r.version \
         WHERE d.name = $1",
    )
    .bind(deployment)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|r| Ok((get::<i64>(&r, "version")?.max(0) as u64, spec(&r)?)))
        .transpose()
}

/// Makes `spec` the next release of `deployment` and its target, unless it is what the
/// target already runs; returns the new version. A release still rolling is superseded.
pub(crate) async fn make(
    tx: &mut Tx,
    deployment: &str,
    spec: Spec,
    by: &str,
    timeout_ms: Option<i64>,
    description: Option<String>,
) -> Result<Option<u64>> {
    let current = target(tx, deployment).await?;
    if current.as_ref().map(|(_, s)| s) == Some(&spec) {
        return Ok(None);
    }
    let last: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM releases WHERE deployment = $1")
            .bind(deployment)
            .fetch_one(&mut **tx)
            .await?;
    let version = last.unwrap_or(0).max(0) + 1;
    let now = unix_millis();
    let description =
        description.unwrap_or_else(|| describe(current.as_ref().map(|(_, s)| s), &spec));
    sqlx::query(
        "INSERT INTO releases (deployment, version, command, env, runtime, rootfs, port, health_check, secrets, \
         description, created_by, status, reason, deadline_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'rolling', NULL, $12, $13)",
    )
    .bind(deployment)
    .bind(version)
    .bind(to_json(&spec.command))
    .bind(to_json(&spec.env))
    .bind(spec.runtime.as_str())
    .bind(spec.rootfs.as_ref().map(to_json))
    .bind(i64::from(spec.port))
    .bind(to_json(&spec.health_check))
    .bind(to_json(&spec.secrets))
    .bind(zw_proto::abbreviate(&description, 1024))
    .bind(zw_proto::abbreviate(by, 256))
    .bind(now + timeout_ms.unwrap_or(ROLLOUT_TIMEOUT_MS))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE releases SET status = 'superseded' WHERE deployment = $1 AND status = 'rolling' AND version <> $2",
    )
    .bind(deployment)
    .bind(version)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE deployments SET release = $1, port = $2, health_check = $3 WHERE name = $4",
    )
    .bind(version)
    .bind(i64::from(spec.port))
    .bind(to_json(&spec.health_check))
    .bind(deployment)
    .execute(&mut **tx)
    .await?;
    collect(tx, deployment).await?;
    Ok(Some(version as u64))
}

/// A secret's name: an environment variable's.
pub fn check_var_name(field: &str, k: &str) -> std::result::Result<(), FieldError> {
    let ok = !k.is_empty()
        && k.len() <= 256
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !k.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            "variable names are letters, digits and '_', not starting with a digit",
        ))
    }
}

impl Store {
    /// The releases of `deployment`, newest first.
    pub async fn releases(&self, deployment: &str) -> Result<Vec<Release>> {
        self.deployment(deployment).await?;
        let rows =
            sqlx::query("SELECT * FROM releases WHERE deployment = $1 ORDER BY version DESC")
                .bind(deployment)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(release).collect()
    }

    pub async fn release(&self, deployment: &str, version: u64) -> Result<Release> {
        let row = sqlx::query("SELECT * FROM releases WHERE deployment = $1 AND version = $2")
            .bind(deployment)
            .bind(version as i64)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| not_found("release", &format!("{deployment} v{version}")))?;
        release(&row)
    }

    /// Makes a release equal to `version` of `deployment` (default: the one that ran
    /// before the running one) and rolls to it.
    pub async fn rollback(
        &self,
        deployment: &str,
        version: Option<u64>,
        by: &str,
    ) -> Result<Release> {
        let mut tx = self.begin_write().await?;
        let running: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(version) FROM releases WHERE deployment = $1 AND status = 'running'",
        )
        .bind(deployment)
        .fetch_one(&mut *tx)
        .await?;
        let to = match version {
            Some(v) => v as i64,
            None => {
                let before: Option<i64> = sqlx::query_scalar(
                    "SELECT MAX(version) FROM releases WHERE deployment = $1 AND status = 'retired' AND version < $2",
                )
                .bind(deployment)
                .bind(running.unwrap_or(i64::MAX))
                .fetch_one(&mut *tx)
                .await?;
                before.ok_or_else(|| {
                    conflict(
                        "version",
                        format!("{deployment} has no earlier release that ran to roll back to; name one (`zeitwork releases {deployment}`)"),
                    )
                })?
            }
        };
        let row = sqlx::query("SELECT * FROM releases WHERE deployment = $1 AND version = $2")
            .bind(deployment)
            .bind(to)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                not_found(
                    "release",
                    &format!("{deployment} v{to} (older ones are garbage-collected)"),
                )
            })?;
        let spec = spec(&row)?;
        let made = make(
            &mut tx,
            deployment,
            spec,
            by,
            None,
            Some(format!("rollback to v{to}")),
        )
        .await?
        .ok_or_else(|| {
            conflict(
                "version",
                format!("{deployment} runs what v{to} runs already"),
            )
        })?;
        self.commit_routing(tx).await?;
        self.release(deployment, made).await
    }

    /// Sets and removes secrets of `deployment` (values sealed by the caller) in one new
    /// release.
    pub async fn change_secrets(
        &self,
        deployment: &str,
        set: BTreeMap<String, String>,
        unset: &[String],
        by: &str,
    ) -> Result<Release> {
        for (k, sealed) in &set {
            check_var_name(&format!("set.{k}"), k).map_err(invalid)?;
            if sealed.len() > MAX_SEALED {
                return Err(invalid(FieldError::new(
                    format!("set.{k}"),
                    "value longer than 12 KiB",
                )));
            }
        }
        let mut tx = self.begin_write().await?;
        let Some((_, mut spec)) = target(&mut tx, deployment).await? else {
            return Err(not_found("deployment", deployment));
        };
        for k in unset {
            if spec.secrets.remove(k).is_none() {
                return Err(invalid(FieldError::new(
                    "unset",
                    format!("{deployment} has no secret {k}"),
                )));
            }
        }
        let now = unix_millis();
        for (k, sealed) in set {
            spec.secrets.insert(
                k,
                SealedSecret {
                    sealed,
                    set_at: now,
                },
            );
        }
        if spec.secrets.len() > MAX_SECRETS {
            return Err(invalid(FieldError::new(
                "set",
                format!("at most {MAX_SECRETS} secrets"),
            )));
        }
        let made = make(&mut tx, deployment, spec, by, None, None)
            .await?
            .ok_or_else(|| conflict("set", "nothing to change"))?;
        self.commit_routing(tx).await?;
        self.release(deployment, made).await
    }

    /// The secrets of `deployment`'s target release: names and when set.
    pub async fn secrets(&self, deployment: &str) -> Result<Vec<SecretInfo>> {
        let mut tx = self.pool.begin().await?;
        let found = target(&mut tx, deployment).await?;
        tx.commit().await?;
        let Some((_, spec)) = found else {
            self.deployment(deployment).await?;
            return Ok(Vec::new());
        };
        Ok(spec
            .secrets
            .into_iter()
            .map(|(name, s)| SecretInfo {
                name,
                set_at: Timestamp(s.set_at),
            })
            .collect())
    }

    /// How many releases each deployment keeps (the running and target ones always).
    pub async fn set_keep_releases(&self, keep: usize) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(KEEP_SETTING)
        .bind(keep.max(1).to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Forgets releases beyond the newest `keep` of `deployment`, never its target or running
/// one, nor one an instance still runs.
pub(crate) async fn collect(tx: &mut Tx, deployment: &str) -> Result<u64> {
    let keep: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
        .bind(KEEP_SETTING)
        .fetch_optional(&mut **tx)
        .await?;
    let keep = keep
        .and_then(|k| k.parse::<i64>().ok())
        .unwrap_or(KEEP_RELEASES as i64)
        .max(1);
    let newest: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM releases WHERE deployment = $1")
            .bind(deployment)
            .fetch_one(&mut **tx)
            .await?;
    let Some(newest) = newest else { return Ok(0) };
    let done = sqlx::query(
        "DELETE FROM releases WHERE deployment = $1 AND version <= $2 AND status <> 'running' \
         AND version <> (SELECT release FROM deployments WHERE name = $1) \
         AND version NOT IN (SELECT release FROM instances WHERE deployment = $1)",
    )
    .bind(deployment)
    .bind(newest - keep)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// The release a deployment targets, with its status and rollout deadline, as the
/// scheduler reads it.
pub(crate) struct TargetState {
    pub version: u64,
    pub status: ReleaseStatus,
    pub deadline_at: i64,
}

pub(crate) async fn target_state(tx: &mut Tx, deployment: &str) -> Result<Option<TargetState>> {
    let row = sqlx::query(
        "SELECT r.version AS version, r.status AS status, r.deadline_at AS deadline_at FROM releases r \
         JOIN deployments d ON d.name = r.deployment AND d.release = r.version WHERE d.name = $1",
    )
    .bind(deployment)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let status: String = get(&row, "status")?;
    Ok(Some(TargetState {
        version: get::<i64>(&row, "version")?.max(0) as u64,
        status: ReleaseStatus::parse(&status).unwrap_or(ReleaseStatus::Rolling),
        deadline_at: get::<Option<i64>>(&row, "deadline_at")?.unwrap_or(i64::MAX),
    }))
}

/// The target release of `deployment` finished rolling: it is the running one now.
pub(crate) async fn completed(tx: &mut Tx, deployment: &str, version: u64) -> Result<()> {
    sqlx::query(
        "UPDATE releases SET status = 'retired' WHERE deployment = $1 AND status = 'running' AND version <> $2",
    )
    .bind(deployment)
    .bind(version as i64)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE releases SET status = 'running', reason = NULL WHERE deployment = $1 AND version = $2")
        .bind(deployment)
        .bind(version as i64)
        .execute(&mut **tx)
        .await?;
    collect(tx, deployment).await?;
    Ok(())
}

/// The target release of `deployment` is halted for `reason`: it is marked failed and the
/// deployment goes back to its running release. Without one, the failed release stays the
/// target (its instances keep being retried, and it runs once they are healthy: a node
/// added, a command fixed on the nodes); there is nothing else to run. Returns the target.
pub(crate) async fn halt(tx: &mut Tx, deployment: &str, version: u64, reason: &str) -> Result<u64> {
    sqlx::query(
        "UPDATE releases SET status = 'failed', reason = $3 WHERE deployment = $1 AND version = $2",
    )
    .bind(deployment)
    .bind(version as i64)
    .bind(zw_proto::abbreviate(reason, 1024))
    .execute(&mut **tx)
    .await?;
    let back: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(version) FROM releases WHERE deployment = $1 AND status = 'running'",
    )
    .bind(deployment)
    .fetch_one(&mut **tx)
    .await?;
    let Some(back) = back.filter(|b| *b > 0) else {
        return Ok(version);
    };
    sqlx::query(
        "UPDATE deployments SET release = $1, port = (SELECT port FROM releases WHERE deployment = $2 AND version = $1), \
         health_check = (SELECT health_check FROM releases WHERE deployment = $2 AND version = $1) WHERE name = $2",
    )
    .bind(back)
    .bind(deployment)
    .execute(&mut **tx)
    .await?;
    Ok(back as u64)
}
