//! HTTPS state: each domain's certificate (the private key sealed by the operator before
//! it gets here: the store never sees it in clear), the ACME HTTP-01 tokens that travel in
//! every region's snapshot (the operator's own domain checks use them too), the outcome of
//! those checks, and leases (one operator at a time orders a certificate).

use zw_proto::time::unix_millis;

use crate::{get, Result, Store};

/// A domain's certificate as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredTlsCertificate {
    pub domain: String,
    /// The PEM chain, leaf first (none before the first order succeeds).
    pub cert_pem: Option<String>,
    /// The PEM private key, sealed.
    pub sealed_key: Option<String>,
    pub issuer: Option<String>,
    /// Unix seconds.
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
    /// `pending` (ordering), `valid`, `failed`, `unsupported` (not this issuer's kind of
    /// name).
    pub status: String,
    pub last_error: Option<String>,
    /// Orders placed for the domain, ever.
    pub orders: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
}

impl std::fmt::Debug for StoredTlsCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredTlsCertificate")
            .field("domain", &self.domain)
            .field("status", &self.status)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A new certificate for a domain.
pub struct IssuedTls<'a> {
    pub domain: &'a str,
    pub cert_pem: &'a str,
    pub sealed_key: &'a str,
    pub issuer: &'a str,
    pub not_before: i64,
    pub not_after: i64,
}

/// A domain the operator has yet to prove, with the balancers of its deployment's regions
/// (where a check can go when the name's DNS is not the way: `zeitwork up`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedDomain {
    pub name: String,
    pub balancers: Vec<String>,
}

impl Store {
    /// Domains not verified yet, by name.
    pub async fn unverified_domains(&self) -> Result<Vec<UnverifiedDomain>> {
        let mut tx = self.pool.begin().await?;
        let regions: std::collections::BTreeMap<String, Option<String>> =
            sqlx::query("SELECT name, balancer_address FROM regions")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| Ok((get(r, "name")?, get(r, "balancer_address")?)))
                .collect::<Result<_>>()?;
        let rows = sqlx::query(
            "SELECT d.name AS name, p.regions AS regions FROM domains d JOIN deployments p ON p.name = d.deployment \
             WHERE d.verified_at IS NULL ORDER BY d.name",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                let names: Vec<String> = crate::entities::json_col(r, "regions")?;
                Ok(UnverifiedDomain {
                    name: get(r, "name")?,
                    balancers: names
                        .iter()
                        .filter_map(|n| regions.get(n).cloned().flatten())
                        .collect(),
                })
            })
            .collect()
    }

    /// The operator's check proved `name`: verified (and routed from the next snapshot).
    pub async fn domain_verified(&self, name: &str) -> Result<()> {
        self.write(
            sqlx::query("UPDATE domains SET verified_at = $2, check_error = NULL WHERE name = $1 AND verified_at IS NULL")
                .bind(name)
                .bind(unix_millis()),
            true,
        )
        .await
    }

    /// The operator's check of `name` failed with `error` (shown by `get domains`).
    pub async fn domain_check_failed(&self, name: &str, error: &str) -> Result<()> {
        self.write(
            sqlx::query(
                "UPDATE domains SET check_error = $2 WHERE name = $1 AND verified_at IS NULL",
            )
            .bind(name)
            .bind(error),
            false,
        )
        .await
    }

    /// Runs one write in its own transaction; a `routing` one wakes the snapshot compiler
    /// (here, and on PostgreSQL in every operator) once committed.
    async fn write<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        routing: bool,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        query.execute(&mut *tx).await?;
        if routing {
            self.notify_in(&mut tx).await?;
        }
        tx.commit().await?;
        if routing {
            self.changed();
        }
        Ok(())
    }

    pub async fn tls_certificates(&self) -> Result<Vec<StoredTlsCertificate>> {
        let rows = sqlx::query("SELECT domain, cert_pem, sealed_key, issuer, not_before, not_after, status, last_error, orders, updated_at FROM tls_certificates ORDER BY domain")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredTlsCertificate {
                    domain: get(r, "domain")?,
                    cert_pem: get(r, "cert_pem")?,
                    sealed_key: get(r, "sealed_key")?,
                    issuer: get(r, "issuer")?,
                    not_before: get(r, "not_before")?,
                    not_after: get(r, "not_after")?,
                    status: get(r, "status")?,
                    last_error: get(r, "last_error")?,
                    orders: get(r, "orders")?,
                    updated_at: get(r, "updated_at")?,
                })
            })
            .collect()
    }

    /// An order for `domain` starts: counted, and the domain shows `pending` until it
    /// ends (a valid certificate stays `valid` while it is renewed).
    pub async fn tls_order_started(&self, domain: &str) -> Result<()> {
        self.write(sqlx::query("INSERT INTO tls_certificates (domain, status, orders, updated_at) VALUES ($1, 'pending', 1, $2) ON CONFLICT (domain) DO UPDATE SET orders = tls_certificates.orders + 1, updated_at = $2")
            .bind(domain)
            .bind(unix_millis()), false).await
    }

    /// No certificate will be issued for `domain` by this operator's issuer, for `why`
    /// (a name the local CA does not sign): shown by `get certificates`. A record that is
    /// already there (an earlier issuer's certificate) is left alone.
    pub async fn tls_not_issued(&self, domain: &str, why: &str) -> Result<()> {
        self.write(sqlx::query("INSERT INTO tls_certificates (domain, status, last_error, orders, updated_at) VALUES ($1, 'unsupported', $2, 0, $3) ON CONFLICT (domain) DO NOTHING")
            .bind(domain)
            .bind(why)
            .bind(unix_millis()), false).await
    }

    /// The order for `domain` failed with `error`; a certificate it has keeps serving.
    pub async fn tls_order_failed(&self, domain: &str, error: &str) -> Result<()> {
        self.write(sqlx::query("UPDATE tls_certificates SET status = CASE WHEN cert_pem IS NULL THEN 'failed' ELSE status END, last_error = $2, updated_at = $3 WHERE domain = $1")
            .bind(domain)
            .bind(error)
            .bind(unix_millis()), false).await
    }

    /// Stores a new certificate for its domain; every edge gets it with the next snapshot.
    pub async fn put_tls_certificate(&self, c: IssuedTls<'_>) -> Result<()> {
        self.write(sqlx::query("INSERT INTO tls_certificates (domain, cert_pem, sealed_key, issuer, not_before, not_after, status, last_error, orders, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'valid', NULL, 0, $7) \
            ON CONFLICT (domain) DO UPDATE SET cert_pem = $2, sealed_key = $3, issuer = $4, not_before = $5, not_after = $6, status = 'valid', last_error = NULL, updated_at = $7")
            .bind(c.domain)
            .bind(c.cert_pem)
            .bind(c.sealed_key)
            .bind(c.issuer)
            .bind(c.not_before)
            .bind(c.not_after)
            .bind(unix_millis()), true).await
    }

    /// An HTTP-01 token every edge answers from its next snapshot on.
    pub async fn put_acme_challenge(&self, token: &str, key_authorization: &str) -> Result<()> {
        self.write(sqlx::query("INSERT INTO acme_challenges (token, key_authorization, created_at) VALUES ($1, $2, $3) ON CONFLICT (token) DO UPDATE SET key_authorization = $2")
            .bind(token)
            .bind(key_authorization)
            .bind(unix_millis()), true).await
    }

    pub async fn delete_acme_challenge(&self, token: &str) -> Result<()> {
        self.write(
            sqlx::query("DELETE FROM acme_challenges WHERE token = $1").bind(token),
            true,
        )
        .await
    }

    /// Drops HTTP-01 tokens older than `age_ms`: an order's tokens are removed when it
    /// ends, but not when its operator died during it.
    pub async fn expire_acme_challenges(&self, age_ms: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let gone = sqlx::query("DELETE FROM acme_challenges WHERE created_at < $1")
            .bind(unix_millis() - age_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // Only a change wakes the compiler (and this operator's issuing loop, which calls
        // this each time it wakes).
        if gone > 0 {
            self.notify_in(&mut tx).await?;
        }
        tx.commit().await?;
        if gone > 0 {
            self.changed();
        }
        Ok(())
    }

    /// Takes (or renews) the lease `name` for `holder` for `ttl_ms`, unless another holder
    /// has it and it has not expired. Whether `holder` has it now.
    pub async fn try_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool> {
        let now = unix_millis();
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
            ON CONFLICT (name) DO UPDATE SET holder = $2, expires_at = $3 WHERE leases.holder = $2 OR leases.expires_at < $4")
            .bind(name)
            .bind(holder)
            .bind(now + ttl_ms)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query("SELECT holder FROM leases WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        let held: String = get(&row, "holder")?;
        tx.commit().await?;
        Ok(held == holder)
    }

    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        self.write(
            sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder),
            false,
        )
        .await
    }
}
