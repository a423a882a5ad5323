//! API tokens. Only SHA-256 hashes are stored; a token is shown once, when it is made.
//!
//! The admin token may do anything. Join tokens admit an edge proxy (its control
//! connection, and the edge list the balancers read) or a node agent.
//!
//! A join token enrolls **one** identity: the first node or edge id it gets a certificate
//! for or says hello as is bound to it ([`Store::bind_token`]), and from then on it speaks
//! for that identity only. A record that another token enrolled (or that the admin made)
//! is never taken over by a hello: each node and edge row notes the token that enrolled
//! it.

use sha2::{Digest, Sha256};
use zw_proto::api::{JoinToken, Page, TokenRole};
use zw_proto::time::Timestamp;

use crate::{get, not_found, page, page_limit, random_hex, Result, Store};

/// Who a request's token says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    /// A join token: its role, its id, and the one identity (node or edge id) it has
    /// enrolled, once it has.
    Join {
        role: TokenRole,
        token: String,
        bound_to: Option<String>,
    },
}

impl Principal {
    pub fn role(&self) -> Option<TokenRole> {
        match self {
            Principal::Admin => None,
            Principal::Join { role, .. } => Some(*role),
        }
    }

    /// The join token's id (what records note as having enrolled them).
    pub fn token_id(&self) -> Option<&str> {
        match self {
            Principal::Admin => None,
            Principal::Join { token, .. } => Some(token),
        }
    }
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Store {
    /// Makes the admin token if there is none yet and returns it; `None` when one exists
    /// (it cannot be shown again — only its hash is kept).
    pub async fn bootstrap_admin(&self) -> Result<Option<String>> {
        let token = format!("zw_admin_{}", random_hex(24));
        let inserted = sqlx::query("INSERT INTO tokens (id, role, hash, created_at) VALUES ('admin', 'admin', $1, $2) ON CONFLICT (id) DO NOTHING")
            .bind(digest(&token))
            .bind(Timestamp::now().0)
            .execute(&self.pool)
            .await?;
        Ok((inserted.rows_affected() == 1).then_some(token))
    }

    /// Replaces the admin token (the old one stops working at once).
    pub async fn rotate_admin(&self) -> Result<String> {
        let token = format!("zw_admin_{}", random_hex(24));
        sqlx::query("DELETE FROM tokens WHERE id = 'admin'")
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO tokens (id, role, hash, created_at) VALUES ('admin', 'admin', $1, $2)",
        )
        .bind(digest(&token))
        .bind(Timestamp::now().0)
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    pub async fn create_join_token(&self, role: TokenRole) -> Result<JoinToken> {
        let token = format!("zw_{}_{}", role.as_str(), random_hex(24));
        let t = JoinToken {
            id: format!("tok-{}", random_hex(6)),
            role,
            token: Some(token.clone()),
            created_at: Timestamp::now(),
        };
        sqlx::query("INSERT INTO tokens (id, role, hash, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&t.id)
            .bind(role.as_str())
            .bind(digest(&token))
            .bind(t.created_at.0)
            .execute(&self.pool)
            .await?;
        Ok(t)
    }

    /// Binds join token `token` to `identity` (a node or edge id), or checks that it is
    /// bound to it already. A token bound to another identity is refused.
    pub async fn bind_token(&self, token: &str, identity: &str) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        bind_token(&mut conn, token, identity).await
    }

    pub async fn join_tokens(
        &self,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<JoinToken>> {
        let limit = page_limit(limit);
        let rows = sqlx::query("SELECT id, role, created_at FROM tokens WHERE role <> 'admin' AND id > $1 ORDER BY id LIMIT $2")
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let mut items = Vec::new();
        for r in rows {
            let role: String = get(&r, "role")?;
            let Some(role) = TokenRole::parse(&role) else {
                continue;
            };
            items.push(JoinToken {
                id: get(&r, "id")?,
                role,
                token: None,
                created_at: Timestamp(get(&r, "created_at")?),
            });
        }
        Ok(page(items, limit, |t| &t.id))
    }

    pub async fn delete_join_token(&self, id: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM tokens WHERE id = $1 AND role <> 'admin'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("join token", id));
        }
        Ok(())
    }

    /// The principal a bearer token belongs to, if any.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Principal>> {
        if token.is_empty() || token.len() > 256 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT id, role, bound_to FROM tokens WHERE hash = $1")
            .bind(digest(token))
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let role: String = get(&row, "role")?;
        Ok(match role.as_str() {
            "admin" => Some(Principal::Admin),
            other => match TokenRole::parse(other) {
                Some(role) => Some(Principal::Join {
                    role,
                    token: get(&row, "id")?,
                    bound_to: get(&row, "bound_to")?,
                }),
                None => None,
            },
        })
    }
}

/// [`Store::bind_token`] on a connection or inside a transaction.
pub(crate) async fn bind_token(
    conn: &mut sqlx::AnyConnection,
    token: &str,
    identity: &str,
) -> Result<()> {
    let done = sqlx::query(
        "UPDATE tokens SET bound_to = $2 WHERE id = $1 AND role <> 'admin' AND (bound_to IS NULL OR bound_to = $2)",
    )
    .bind(token)
    .bind(identity)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        return Ok(());
    }
    let bound: Option<Option<String>> =
        sqlx::query_scalar("SELECT bound_to FROM tokens WHERE id = $1")
            .bind(token)
            .fetch_optional(&mut *conn)
            .await?;
    Err(match bound {
        Some(Some(other)) => crate::StoreError::Forbidden(format!(
            "this join token enrolled `{other}` and speaks for it only; make a new join token (POST /api/v1/join-tokens) for `{identity}`"
        )),
        _ => crate::StoreError::Forbidden("the join token was deleted".into()),
    })
}
