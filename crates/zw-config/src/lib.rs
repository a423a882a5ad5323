//! Zeitwork's dynamic configuration: the Traefik model (routers, services, middlewares,
//! servers transports), read from TOML, YAML or JSON — one file, or a directory of files
//! merged — validated as a whole, and given a content hash.
//!
//! A Traefik v3 file-provider dynamic configuration loads as it is. Keys we do not
//! support are reported by their full path, never silently ignored. Zeitwork's own
//! additions use Traefik's naming style (`camelCase`) and are marked on their fields.
//!
//! Validation is all or nothing ([`validate`] returns every problem it finds, each naming
//! the offending path, e.g. `http.routers.api.service: unknown service "apii"`): the edge
//! keeps running its current configuration when a new one has any error.
//!
//! This crate does no network I/O; [`load_path`] reads files.
#![forbid(unsafe_code)]

mod access;
mod auth;
mod duration;
mod load;
mod model;
mod parsed;
mod static_config;
mod tls;
mod validate;

pub use auth::{basic_credentials, digest_params, parse_hash, MAX_USERS_FILE_BYTES};
pub use duration::Dur;
pub use load::{config_files, load_path, parse_str, Format, Limits, LoadedConfig};
pub use model::*;
pub use parsed::*;
pub use static_config::{
    acme_domains, is_static, load_static, parse_static, AcmeDomains, AcmeResolver, ForwardedTrust,
    KeyType, Redirection, StaticConfig, StaticEntryPoint, LETS_ENCRYPT,
};
pub use validate::{ref_name, validate, UpstreamScheme, UpstreamUrl, ValidConfig};

use std::fmt;

/// One problem in a configuration, located by its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path (`http.routers.api.rule`), prefixed with the file when known.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a configuration. Displays one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError::new(path, message)])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
