//! `zeitwork operator`.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
#[command(after_help = "Examples:\n  \
zeitwork operator                                   # SQLite in ./zeitwork-data\n  \
zeitwork operator --database-url postgres://zeitwork@db:5432/zeitwork\n\n\
On first start an admin token is made, printed once and written to DATA_DIR/admin-token\n\
(mode 0600); only its hash is stored. `zeitwork get` and `zeitwork apply` read it from there.\n\
Edges connect to ws://LISTEN/api/v1/edge/connect with a join token:\n  \
curl -H \"Authorization: Bearer $(cat zeitwork-data/admin-token)\" \\\n       \
-d '{\"role\":\"edge\"}' http://127.0.0.1:7070/api/v1/join-tokens")]
pub struct OperatorArgs {
    #[command(flatten)]
    data: super::DataDir,
    /// PostgreSQL instead of the embedded SQLite: postgres://user@host:port/db.
    #[arg(long, value_name = "URL", env = "ZEITWORK_DATABASE_URL")]
    database_url: Option<String>,
    /// API address (REST under /api/v1, edge connections, /health).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Dynamic configuration merged into every region's snapshot (same format as
    /// `zeitwork edge --config`); read at start.
    #[arg(long, value_name = "PATH")]
    static_config: Option<PathBuf>,
    /// How long the compiler waits after a change for more changes to arrive.
    #[arg(long, value_name = "DURATION", default_value = "10ms", value_parser = super::duration)]
    debounce: Duration,
    #[command(flatten)]
    liveness: Liveness,
    #[command(flatten)]
    acme: AcmeArgs,
    /// How a new domain is proven to lead to the platform before it is routed: the
    /// operator puts a token on every edge and fetches it from http://DOMAIN/… . `dns`:
    /// as the name resolves, port 80 (what clients reach). `balancer`: through the
    /// balancer of each region the app runs in, with the domain as Host (names that do
    /// not resolve to the balancers from where the operator runs).
    #[arg(long, value_name = "HOW", default_value = "dns", value_parser = ["dns", "balancer"])]
    domain_check: String,
    /// Replace the admin token (the old one stops working) and write the new one to
    /// DATA_DIR/admin-token.
    #[arg(long)]
    rotate_admin_token: bool,
    /// The key that seals secrets kept in the store (apps' secrets, the platform CA's and
    /// the certificates' private keys). Default: DATA_DIR/secret-key, made on first start;
    /// `ZEITWORK_SECRET_KEY` (the key itself, hex) takes precedence. Operators on one
    /// PostgreSQL database need the same key.
    #[arg(long, value_name = "PATH", env = "ZEITWORK_SECRET_KEY_FILE")]
    secret_key_file: Option<PathBuf>,
    /// Releases kept per app (older ones are forgotten; never the running one, nor one an
    /// instance still runs).
    #[arg(long, value_name = "N", default_value_t = zw_store::KEEP_RELEASES)]
    keep_releases: usize,
    /// Log format on stderr.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// The ACME CA the operator orders domain certificates from (`zeitwork operator` and
/// `up`): one order per verified domain for the whole fleet.
#[derive(Args)]
pub struct AcmeArgs {
    /// ACME directory URL to order certificates from for every verified domain, e.g.
    /// https://acme-v02.api.letsencrypt.org/directory. The CA validates over HTTP-01 on
    /// port 80 of the domain: the balancer's HTTP port must be reachable there.
    #[arg(long, value_name = "URL", env = "ZEITWORK_ACME_CA")]
    pub acme_ca: Option<String>,
    /// Contact address for the ACME account.
    #[arg(long, value_name = "EMAIL", requires = "acme_ca")]
    pub acme_email: Option<String>,
    /// PEM root of the ACME server's own HTTPS certificate, when it is not publicly
    /// trusted (a test CA such as pebble).
    #[arg(long, value_name = "PATH", requires = "acme_ca")]
    pub acme_ca_certificate: Option<PathBuf>,
}

impl AcmeArgs {
    pub fn options(&self) -> anyhow::Result<Option<zw_operator::acme::AcmeOptions>> {
        let Some(ca) = &self.acme_ca else {
            return Ok(None);
        };
        if !ca.starts_with("https://") {
            anyhow::bail!("--acme-ca {ca}: an ACME directory URL starting with https://");
        }
        Ok(Some(zw_operator::acme::AcmeOptions {
            directory: ca.clone(),
            email: self.acme_email.clone(),
            ca_certificate: self.acme_ca_certificate.clone(),
        }))
    }
}

/// When the operator gives up on a silent worker node (`zeitwork operator` and `up`).
#[derive(Args)]
pub struct Liveness {
    /// A worker node silent this long is suspect (no new instances)…
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::duration)]
    pub node_suspect_after: Duration,
    /// …and this long lost: its instances are placed on other nodes.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = super::duration)]
    pub node_lost_after: Duration,
}

pub fn run(args: OperatorArgs) -> ExitCode {
    let json = args.log_format == "json";
    super::service("operator", json, || {
        super::runtime(None)?.block_on(run_inner(args))
    })
}

/// Where the admin token is written.
pub fn token_file(data_dir: &Path) -> PathBuf {
    data_dir.join("admin-token")
}

/// Makes the data directory (0700 when new) and, for the embedded store, its database
/// file 0600 — also when the directory was already there with looser modes, so the
/// file's mode never depends on the umask. Returns the SQLite URL.
pub(crate) fn prepare_data_dir(data_dir: &Path) -> anyhow::Result<String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let db = data_dir.join("state.db");
    // SQLite gives its -wal and -shm files the database file's mode
    for f in [
        db.clone(),
        data_dir.join("state.db-wal"),
        data_dir.join("state.db-shm"),
    ] {
        if f == db || f.exists() {
            restrict(&f).with_context(|| format!("making {} private (0600)", f.display()))?;
        }
    }
    Ok(format!("sqlite://{}", db.display()))
}

/// Creates `path` 0600 if it is missing, else sets its mode to 0600.
fn restrict(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// The key that seals the secrets the store keeps: `ZEITWORK_SECRET_KEY` (hex) when set,
/// else read from `file`, or from DATA_DIR/secret-key, which is made (0600) on first
/// start. Operators sharing one PostgreSQL database must be given the same key.
pub(crate) fn sealing_key(
    data_dir: &Path,
    file: Option<&Path>,
) -> anyhow::Result<zw_operator::SealingKey> {
    if let Ok(hex) = std::env::var("ZEITWORK_SECRET_KEY") {
        return zw_operator::SealingKey::from_hex(&hex).context(
            "ZEITWORK_SECRET_KEY: not a sealing key (64 hex digits, as in DATA_DIR/secret-key)",
        );
    }
    let (path, explicit) = match file {
        Some(f) => (f.to_path_buf(), true),
        None => (data_dir.join("secret-key"), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => zw_operator::SealingKey::from_hex(&text)
            .with_context(|| format!("{}: not a sealing key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            let key = zw_operator::SealingKey::generate()?;
            write_secret(&path, &key.to_hex())
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(file = %path.display(), "made the key that seals stored secrets; back it up with the database");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading the sealing key {}", path.display())),
    }
}

async fn run_inner(args: OperatorArgs) -> anyhow::Result<()> {
    let sqlite = prepare_data_dir(&args.data.data_dir)?;
    let url = match &args.database_url {
        Some(u) => u.clone(),
        None => sqlite,
    };
    let sealing_key = sealing_key(&args.data.data_dir, args.secret_key_file.as_deref())?;
    let store = zw_store::Store::open(&url)
        .await
        .with_context(|| format!("opening the state store {}", zw_store::redact(&url)))?;
    tracing::info!(store = %zw_store::redact(&url), "state store open, migrations applied");
    store.set_keep_releases(args.keep_releases).await?;

    if args.rotate_admin_token {
        let t = store.rotate_admin().await?;
        show_token(&args.data.data_dir, &t)?;
    } else if let Some(t) = store.bootstrap_admin().await? {
        show_token(&args.data.data_dir, &t)?;
    } else if !token_file(&args.data.data_dir).exists() {
        // Not replaced here: a replica with its own data directory shares the token.
        tracing::warn!(
            "an admin token exists but {} does not; if it is lost, restart with --rotate-admin-token",
            token_file(&args.data.data_dir).display()
        );
    }

    let static_config = match &args.static_config {
        None => zw_config::Config::default(),
        Some(p) => {
            let limits = zw_config::Limits::default();
            let loaded = zw_config::load_path(p, &limits)
                .and_then(|l| zw_config::validate(l.config, &limits))
                .map_err(|e| {
                    anyhow::anyhow!("invalid static configuration in {}:\n{e}", p.display())
                })?;
            loaded.config
        }
    };
    let operator = zw_operator::Operator::start(
        store,
        zw_operator::Options {
            static_config,
            debounce: args.debounce,
            suspect_after: args.liveness.node_suspect_after,
            lost_after: args.liveness.node_lost_after,
            sealing_key,
            acme: args.acme.options()?,
            local_issuer: None,
            domain_check: match args.domain_check.as_str() {
                "balancer" => zw_operator::verify::DomainCheck::Balancer,
                _ => zw_operator::verify::DomainCheck::Dns,
            },
        },
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the API to {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "operator API listening (/api/v1, /api/v1/edge/connect, /health)");
    operator.serve(listener, super::shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

fn show_token(data_dir: &Path, token: &str) -> anyhow::Result<()> {
    let file = token_file(data_dir);
    write_secret(&file, token).with_context(|| format!("writing {}", file.display()))?;
    eprintln!(
        "\nadmin token (shown once; also written to {}):\n  {token}\n",
        file.display()
    );
    Ok(())
}

/// For `zeitwork up`: the admin token, made (and written to DATA_DIR/admin-token) on first
/// start, read from that file afterwards, and replaced when the file is gone (only its hash
/// is stored, and nothing else shares this store).
pub(crate) async fn admin_token(
    store: &zw_store::Store,
    data_dir: &Path,
) -> anyhow::Result<String> {
    if let Some(t) = store.bootstrap_admin().await? {
        show_token(data_dir, &t)?;
        return Ok(t);
    }
    let file = token_file(data_dir);
    match std::fs::read_to_string(&file) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => {
            tracing::warn!(file = %file.display(), "the admin token file is gone; making a new admin token (the old one stops working)");
            let t = store.rotate_admin().await?;
            show_token(data_dir, &t)?;
            Ok(t)
        }
    }
}

/// For `zeitwork up`: a join token of `role` for the in-process component `identity` (the
/// edge, the agent), kept in DATA_DIR/NAME-token (mode 0600) and reused while it still
/// authenticates, so the components run on credentials that speak for them alone and not
/// on the admin token. A record made before tokens were bound (by an older `up`, with the
/// admin token) is handed to this token.
pub(crate) async fn component_token(
    store: &zw_store::Store,
    data_dir: &Path,
    role: zw_proto::api::TokenRole,
    identity: Option<&str>,
) -> anyhow::Result<String> {
    let file = data_dir.join(format!("{}-token", role.as_str()));
    let kept = std::fs::read_to_string(&file).ok();
    let kept = kept.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let (token, id) = match kept {
        Some(t) => match store.authenticate(t).await? {
            Some(p) if p.role() == Some(role) => (t.to_string(), p.token_id().map(str::to_string)),
            _ => (String::new(), None),
        },
        None => (String::new(), None),
    };
    if let Some(id) = id {
        match identity {
            None => return Ok(token),
            Some(identity) => match store.adopt_enrollment(role, identity, &id).await {
                Ok(()) => return Ok(token),
                // Bound to an identity that is gone (a new node id): a new token.
                Err(zw_store::StoreError::Forbidden(why)) => {
                    tracing::info!(file = %file.display(), %why, "making a new join token")
                }
                Err(e) => return Err(e.into()),
            },
        }
    }
    let made = store.create_join_token(role).await?;
    let t = made.token.unwrap_or_default();
    write_secret(&file, &t).with_context(|| format!("writing {}", file.display()))?;
    if let Some(identity) = identity {
        store.adopt_enrollment(role, identity, &made.id).await?;
    }
    Ok(t)
}

fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    zw_proto::fsutil::write_atomic(path, &[secret.as_bytes(), b"\n"], 0o600)
}
