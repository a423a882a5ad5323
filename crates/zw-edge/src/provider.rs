//! The file provider: loads a configuration file or directory and watches it.
//!
//! Watching polls the files' metadata (size, modification time, inode) every interval —
//! cheap, and correct for editors that replace files by rename and for directories where
//! files come and go. A change is loaded, validated and applied as a whole; an invalid
//! one is logged, counted and shown at `/debug/config`, and the running configuration
//! stays.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use zw_config::Limits;

use crate::Edge;

type Fingerprint = Vec<(PathBuf, u64, i64, i64, u64)>;

/// The configuration files' metadata, and that of the certificate files the last
/// configuration read named.
fn fingerprint(path: &Path, limits: &Limits, referenced_files: &[PathBuf]) -> Option<Fingerprint> {
    let mut files = zw_config::config_files(path, limits).ok()?;
    files.extend(referenced_files.iter().cloned());
    Some(
        files
            .into_iter()
            .map(|f| match std::fs::metadata(&f) {
                Ok(m) => (f, m.len(), m.mtime(), m.mtime_nsec(), m.ino()),
                Err(_) => (f, 0, 0, 0, 0),
            })
            .collect(),
    )
}

impl Edge {
    /// Loads, validates and applies the configuration at `path`. Returns the applied
    /// version, or every error found (the running configuration is kept).
    pub fn load_file(&self, path: &Path, limits: &Limits) -> Result<u64, crate::Error> {
        self.load_file_tls(path, limits, None, None).0
    }

    /// [`Edge::load_file`], and the certificate files the configuration names (read or
    /// not: one that is missing now may appear).
    /// With `statics`, what its entry points add (redirections, entry point TLS) goes
    /// into the configuration before validation; with `acme`, the certificates its
    /// resolvers hold, and once the configuration is valid, the resolvers learn which
    /// certificates its routers ask for.
    fn load_file_tls(
        &self,
        path: &Path,
        limits: &Limits,
        statics: Option<&zw_config::StaticConfig>,
        acme: Option<&zw_acme::Acme>,
    ) -> (Result<u64, crate::Error>, Vec<PathBuf>) {
        let mut referenced_files = Vec::new();
        let mut wanted = Vec::new();
        let running = self.status();
        let mut skipped = None;
        let result = zw_config::load_path(path, limits)
            .and_then(|mut loaded| {
                referenced_files = loaded.config.referenced_files();
                // A file with nothing in it while a configuration runs is most likely one
                // being written (an editor truncates, then writes): skipped, as Traefik
                // skips an empty configuration ("Skipping empty Configuration").
                let c = &loaded.config;
                let empty = c.http.routers.is_empty()
                    && c.http.services.is_empty()
                    && c.http.middlewares.is_empty()
                    && c.tls.is_none();
                if empty && running.routers + running.services + running.middlewares > 0 {
                    skipped = Some(running.version);
                }
                if let Some(st) = statics {
                    st.apply_to(&mut loaded.config)?;
                }
                if let Some(acme) = acme {
                    wanted = zw_config::acme_domains(&loaded.config);
                    let tls = loaded.config.tls.get_or_insert_with(Default::default);
                    for held in acme.certificates().iter() {
                        tls.certificates.push(zw_config::TlsCertificate {
                            cert_file: zw_config::FileOrContent(held.cert_pem.clone()),
                            key_file: zw_config::FileOrContent(held.key_pem.clone()),
                            ..Default::default()
                        });
                    }
                }
                zw_config::validate(loaded.config, limits)
            })
            .inspect(|_| {
                if let Some(acme) = acme {
                    acme.want(std::mem::take(&mut wanted));
                }
            })
            .map_err(crate::Error::from)
            .and_then(|valid| match skipped {
                Some(version) => {
                    tracing::info!(file = %path.display(), "skipping an empty configuration; the running one stays");
                    Ok(version)
                }
                None => self.apply(
                    valid,
                    crate::ConfigSource::File,
                    &path.display().to_string(),
                ),
            });
        if let Err(e) = &result {
            self.reject(&e.to_string(), crate::ConfigSource::File);
        }
        (result, referenced_files)
    }
}

/// A configuration file or directory feeding an edge.
///
/// The fingerprint is taken *before* each load, so a change that lands while a load runs
/// (or between the first load and the start of watching) is seen on the next poll — at
/// worst it is loaded twice, never missed.
pub struct FileProvider {
    path: PathBuf,
    limits: Limits,
    seen: Option<Fingerprint>,
    referenced_files: Vec<PathBuf>,
    statics: Option<std::sync::Arc<zw_config::StaticConfig>>,
    acme: Option<zw_acme::Acme>,
    watch_files: bool,
}

impl FileProvider {
    pub fn new(path: PathBuf, limits: Limits) -> Self {
        FileProvider {
            path,
            limits,
            seen: None,
            referenced_files: Vec::new(),
            statics: None,
            acme: None,
            watch_files: true,
        }
    }

    /// Whether [`FileProvider::watch`] looks for changed files (Traefik's
    /// `providers.file.watch`); without it, it reloads only for new ACME certificates.
    pub fn watch_files(mut self, on: bool) -> Self {
        self.watch_files = on;
        self
    }

    /// Adds the certificates `acme` holds to every configuration read, tells it what the
    /// routers ask for, and reloads when it gets a new certificate.
    pub fn with_acme(mut self, acme: zw_acme::Acme) -> Self {
        self.acme = Some(acme);
        self
    }

    /// Applies what a Traefik static configuration's entry points add to every
    /// configuration read (see [`zw_config::StaticConfig::apply_to`]).
    pub fn with_static(mut self, statics: std::sync::Arc<zw_config::StaticConfig>) -> Self {
        self.statics = Some(statics);
        self
    }

    /// Loads the configuration now and applies it to `edge`.
    pub fn load_into(&mut self, edge: &Edge) -> Result<u64, crate::Error> {
        let (result, referenced_files) = edge.load_file_tls(
            &self.path,
            &self.limits,
            self.statics.as_deref(),
            self.acme.as_ref(),
        );
        self.seen = fingerprint(&self.path, &self.limits, &referenced_files);
        self.referenced_files = referenced_files;
        result
    }

    /// Re-applies the configuration whenever its files change or an ACME resolver gets a
    /// new certificate, until `stop` fires.
    pub async fn watch(
        mut self,
        edge: Edge,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut certificates = self.acme.as_ref().map(|a| a.subscribe());
        loop {
            let certificate = async {
                let open = match &mut certificates {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => false,
                };
                if !open {
                    std::future::pending::<()>().await
                }
            };
            let files = async {
                if self.watch_files {
                    tokio::time::sleep(interval).await
                } else {
                    std::future::pending().await
                }
            };
            let mut new_certificate = false;
            tokio::select! {
                _ = files => {}
                _ = certificate => new_certificate = true,
                _ = stop.changed() => return,
            }
            if !new_certificate
                && fingerprint(&self.path, &self.limits, &self.referenced_files) == self.seen
            {
                continue;
            }
            // Taken before the load: a change that lands while it runs is seen next poll.
            self.seen = fingerprint(&self.path, &self.limits, &self.referenced_files);
            let (e, path, limits) = (edge.clone(), self.path.clone(), self.limits);
            let statics = self.statics.clone();
            let acme = self.acme.clone();
            // Parsing and compiling 100k rules takes a while: keep it off the request threads.
            // The load runs on its own task, so even a bug that panics in it fails this one
            // load, and watching goes on with the running configuration.
            let started = std::time::Instant::now();
            let result = match tokio::task::spawn_blocking(move || {
                e.load_file_tls(&path, &limits, statics.as_deref(), acme.as_ref())
            })
            .await
            {
                Ok((r, referenced_files)) => {
                    if referenced_files != self.referenced_files {
                        // Other certificate files: watched from now on.
                        self.seen = fingerprint(&self.path, &self.limits, &referenced_files);
                        self.referenced_files = referenced_files;
                    }
                    r
                }
                Err(join) => {
                    let error = crate::Error::Panicked(join.to_string());
                    edge.reject(&error.to_string(), crate::ConfigSource::File);
                    Err(error)
                }
            };
            match result {
                Ok(version) => {
                    // read, parsed, validated, built and swapped in
                    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
                    tracing::info!(path = %self.path.display(), version, total_ms, "configuration change applied")
                }
                Err(errors) => {
                    tracing::error!(path = %self.path.display(), %errors, "configuration change rejected; still running the previous configuration")
                }
            }
        }
    }
}
