//! Databases for tests: a SQLite file in a temporary directory, and a fresh PostgreSQL
//! database per test on the server named by `ZEITWORK_TEST_DATABASE_URL`, dropped when the
//! guard goes. Without that variable PostgreSQL tests are skipped (with a message), except
//! under CI (`CI` set), where a missing or unreachable server fails the test.

use sqlx::Connection;

/// The environment variable naming the PostgreSQL server for tests.
pub const ENV: &str = "ZEITWORK_TEST_DATABASE_URL";

/// A database that lives as long as the guard.
pub struct TestDb {
    pub url: String,
    pub backend: crate::Backend,
    admin_url: Option<String>,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let url = format!("sqlite://{}/state.db", dir.path().display());
        TestDb {
            url,
            backend: crate::Backend::Sqlite,
            admin_url: None,
            name: String::new(),
            _dir: Some(dir),
        }
    }

    /// A fresh PostgreSQL database, or `None` (with a note on stderr) when no server is
    /// configured outside CI.
    pub async fn postgres() -> Option<TestDb> {
        let Ok(admin_url) = std::env::var(ENV) else {
            if std::env::var_os("CI").is_some() {
                panic!("{ENV} is not set: CI must test against PostgreSQL");
            }
            eprintln!("{ENV} not set: skipping the PostgreSQL run of this test");
            return None;
        };
        let name = format!("zw_test_{}", crate::random_hex(6));
        let mut conn = sqlx::postgres::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL at {} is unreachable: {e}",
                    crate::redact(&admin_url)
                )
            });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = conn.close().await;
        let base = admin_url.split('?').next().unwrap_or(&admin_url);
        let cut = base
            .rfind('/')
            .filter(|&i| i > base.find("://").map_or(0, |s| s + 2))
            .unwrap_or(base.len());
        let url = format!("{}/{name}", &base[..cut]);
        Some(TestDb {
            url,
            backend: crate::Backend::Postgres,
            admin_url: Some(admin_url),
            name,
            _dir: None,
        })
    }

    /// Both backends this machine can test: SQLite always, PostgreSQL when configured.
    pub async fn all() -> Vec<TestDb> {
        let mut v = vec![TestDb::sqlite()];
        v.extend(TestDb::postgres().await);
        v
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(admin) = self.admin_url.clone() else {
            return;
        };
        let name = self.name.clone();
        // Dropping runs inside or outside a runtime; a thread of its own works in both.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = sqlx::postgres::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}
