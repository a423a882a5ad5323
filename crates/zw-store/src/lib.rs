//! Zeitwork's state store: the operator's schema on SQLite (embedded, the default) or
//! PostgreSQL (production, several operator replicas).
//!
//! One set of portable SQL runs on both through sqlx's `Any` driver: `$n` parameters,
//! `TEXT` and `BIGINT` columns, times as Unix milliseconds, lists as JSON text. Migrations
//! are embedded and applied at [`Store::open`].
//!
//! Every write that can change routing bumps a change counter ([`Store::changes`]) after
//! it commits. On PostgreSQL the write also sends `NOTIFY zeitwork_routing` inside its
//! transaction, and [`Store::open`] listens for it, so every operator replica sharing the
//! database learns of every other replica's writes without polling.
#![forbid(unsafe_code)]

mod agents;
mod auth;
mod edges;
mod entities;
mod releases;
pub mod rollout;
mod routing;
mod schema;
#[cfg(feature = "testkit")]
pub mod testkit;
mod tls;

pub use agents::{
    AgentHello, Enrollable, Scheduled, SealedAssignment, DRAIN_ACK_WAIT_MS, INSTANCE_MEMORY_MB,
};
pub use auth::Principal;
pub use edges::{EdgeHello, CONNECTED_WITHIN_MS};
pub use entities::{InstanceFilter, NodeFilter};
pub use releases::{check_var_name, SealedSecret, KEEP_RELEASES, ROLLOUT_TIMEOUT_MS};
pub use routing::StoredSnapshot;
pub use tls::{IssuedTls, StoredTlsCertificate, UnverifiedDomain};

use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use tokio::sync::watch;
use zw_proto::api::FieldError;

/// The PostgreSQL channel routing-relevant writes notify on.
pub const CHANNEL: &str = "zeitwork_routing";

/// Lists return at most this many items per page.
pub const MAX_PAGE: u32 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing does not exist.
    #[error("{kind} `{name}` not found")]
    NotFound { kind: &'static str, name: String },
    /// The request conflicts with what is stored (a duplicate, or a thing still in use).
    #[error("{}", .0)]
    Conflict(FieldError),
    /// A field's value is unacceptable.
    #[error("{}", .0)]
    Invalid(FieldError),
    /// The caller's credentials do not cover this identity or action.
    #[error("{0}")]
    Forbidden(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) fn not_found(kind: &'static str, name: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        name: name.to_string(),
    }
}

pub(crate) fn invalid(e: FieldError) -> StoreError {
    StoreError::Invalid(e)
}

pub(crate) fn conflict(field: &str, message: impl Into<String>) -> StoreError {
    StoreError::Conflict(FieldError::new(field, message))
}

/// The operator's state, on SQLite or PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    changes: watch::Sender<u64>,
    /// Bumped when an edge acknowledges a snapshot: what a drained instance waits for.
    acks: watch::Sender<u64>,
}

impl Store {
    /// Connects, applies pending migrations and, on PostgreSQL, starts listening for other
    /// replicas' changes. `url` is `sqlite:///path/to/file.db` (created when missing) or
    /// `postgres://user@host:port/db`.
    pub async fn open(url: &str) -> Result<Store> {
        Self::connect(url, true).await
    }

    /// Connects to a database the operator owns, for reading (the edge's database
    /// provider): no migrations are applied, and a schema other than this binary's is an
    /// error that says which side to upgrade.
    pub async fn open_reader(url: &str) -> Result<Store> {
        Self::connect(url, false).await
    }

    async fn connect(url: &str, owner: bool) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::Other(format!(
                "unsupported database URL `{}`: use sqlite:///path/file.db or postgres://user@host:port/db",
                redact(url)
            )));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_string(),
        };
        let options: AnyConnectOptions = url.parse()?;
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 10,
            })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers (edges' database provider, the API) run beside the
                        // writer; busy_timeout makes writers queue instead of failing.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        if owner {
            schema::migrate(&pool, backend).await?;
        } else {
            schema::check(&pool).await?;
        }
        let (changes, _) = watch::channel(0u64);
        let (acks, _) = watch::channel(0u64);
        let store = Store {
            pool,
            backend,
            changes,
            acks,
        };
        if owner && backend == Backend::Postgres {
            store.listen(&url).await?;
        }
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A counter that moves after every committed write that can change routing, here or
    /// (on PostgreSQL) in another operator sharing the database.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Edges' snapshot acknowledgements recorded by this process (not other replicas').
    pub fn acks(&self) -> watch::Receiver<u64> {
        self.acks.subscribe()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn listen(&self, url: &str) -> Result<()> {
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(CHANNEL).await?;
        let changes = self.changes.clone();
        tokio::spawn(async move {
            loop {
                // `recv` reconnects by itself after a lost connection; a notification sent
                // meanwhile is lost, so a reconnect counts as a change.
                match listener.recv().await {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "lost the PostgreSQL notification connection; reconnecting");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                changes.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        Ok(())
    }

    /// A transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`, waiting up to the busy timeout): a deferred transaction that read
    /// first could not upgrade once another writer committed, and would fail at once with
    /// "database is locked" instead of waiting its turn.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Call inside a routing-relevant write transaction, before commit.
    pub(crate) async fn notify_in(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Call after a routing-relevant transaction committed.
    pub(crate) fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A random id or secret: `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    if getrandom::fill(&mut buf).is_err() {
        // The OS random source is gone: nothing secure can be made; make it obvious.
        panic!("the operating system's random number source failed");
    }
    hex::encode(buf)
}

/// A database URL safe to print: the password replaced.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

pub(crate) fn get<'r, T>(row: &'r AnyRow, col: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    Ok(row.try_get(col)?)
}

/// Keyset pagination: items after `after` in key order, `limit` clamped to 1..=MAX_PAGE.
/// Returns the clamped limit; a page that came back full carries a `next` cursor.
pub(crate) fn page_limit(limit: Option<u32>) -> u32 {
    limit.unwrap_or(100).clamp(1, MAX_PAGE)
}

pub(crate) fn page<T>(
    items: Vec<T>,
    limit: u32,
    key: impl Fn(&T) -> &str,
) -> zw_proto::api::Page<T> {
    let next = if items.len() as u32 >= limit {
        items.last().map(|i| key(i).to_string())
    } else {
        None
    };
    zw_proto::api::Page { items, next }
}

/// Maps a unique or foreign-key violation to a conflict on `field`.
pub(crate) fn map_constraint(e: sqlx::Error, field: &str, what: &str) -> StoreError {
    if let Some(db) = e.as_database_error() {
        match db.kind() {
            sqlx::error::ErrorKind::UniqueViolation => {
                return conflict(field, format!("{what} already exists"))
            }
            sqlx::error::ErrorKind::ForeignKeyViolation => {
                return conflict(
                    field,
                    format!(
                    "{what} is referenced by other records, or refers to one that does not exist"
                ),
                )
            }
            _ => {}
        }
    }
    StoreError::Db(e)
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite:///x.db"), "sqlite:///x.db");
    }
}
