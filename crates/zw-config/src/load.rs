//! Reading configuration text: formats, directories, limits.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::{Config, ConfigError, ConfigErrors};

/// A configuration file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
    Json,
}

impl Format {
    /// The format a file name's extension names, if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Bounds on what a configuration may hold. Files are operator input, but a runaway
/// generator or a wrong path must not exhaust the edge's memory.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
    pub max_files: usize,
    pub max_routers: usize,
    pub max_services: usize,
    pub max_middlewares: usize,
    pub max_servers_per_service: usize,
    pub max_middlewares_per_router: usize,
    pub max_name_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 32 << 20,
            max_total_bytes: 128 << 20,
            max_files: 4096,
            max_routers: 200_000,
            max_services: 200_000,
            max_middlewares: 100_000,
            max_servers_per_service: 10_000,
            max_middlewares_per_router: 64,
            max_name_len: 256,
        }
    }
}

/// A configuration as read, before validation, with the files it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub files: Vec<PathBuf>,
}

/// The configuration files `path` names: itself, or every `.toml`/`.yaml`/`.yml`/`.json`
/// file below it when it is a directory (hidden entries skipped), sorted.
pub fn config_files(path: &Path, limits: &Limits) -> Result<Vec<PathBuf>, ConfigErrors> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigErrors::one(path.display().to_string(), format!("cannot read: {e}")))?;
    if meta.is_dir() {
        let mut files = Vec::new();
        collect_files(path, 0, &mut files, limits)?;
        files.sort();
        Ok(files)
    } else if Format::from_path(path).is_none() {
        Err(ConfigErrors::one(
            path.display().to_string(),
            "unknown format: the file name must end in .toml, .yaml, .yml or .json",
        ))
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

/// Reads a file, or every `.toml`/`.yaml`/`.yml`/`.json` file below a directory (hidden
/// files and other extensions are skipped), and merges them. The same router, service,
/// middleware or transport defined in two files is an error naming both.
pub fn load_path(path: &Path, limits: &Limits) -> Result<LoadedConfig, ConfigErrors> {
    let files = config_files(path, limits)?;
    let mut total = 0u64;
    let mut merged = Value::Object(Map::new());
    let mut origin: Vec<(String, PathBuf)> = Vec::new();
    let mut errors = Vec::new();
    for file in &files {
        let name = file.display().to_string();
        let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        if len > limits.max_file_bytes {
            errors.push(ConfigError::new(
                &name,
                format!(
                    "file is {len} bytes; the limit is {}",
                    limits.max_file_bytes
                ),
            ));
            continue;
        }
        total += len;
        if total > limits.max_total_bytes {
            errors.push(ConfigError::new(
                &name,
                format!(
                    "configuration exceeds {} bytes in all",
                    limits.max_total_bytes
                ),
            ));
            break;
        }
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError::new(&name, format!("cannot read: {e}")));
                continue;
            }
        };
        let Some(format) = Format::from_path(file) else {
            continue;
        };
        match parse_value(&text, format) {
            Ok(v) => merge(
                &mut merged,
                v,
                &mut Vec::new(),
                file,
                &mut origin,
                &mut errors,
            ),
            Err(msg) => errors.push(ConfigError::new(&name, msg)),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let config = from_value(merged).map_err(|mut e| {
        if files.len() == 1 {
            for err in &mut e.0 {
                err.path = format!("{}: {}", files[0].display(), err.path);
            }
        }
        e
    })?;
    Ok(LoadedConfig { config, files })
}

fn collect_files(
    dir: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
    limits: &Limits,
) -> Result<(), ConfigErrors> {
    if depth > 8 {
        return Err(ConfigErrors::one(
            dir.display().to_string(),
            "directories nest deeper than 8 levels",
        ));
    }
    let rd = std::fs::read_dir(dir)
        .map_err(|e| ConfigErrors::one(dir.display().to_string(), format!("cannot list: {e}")))?;
    for entry in rd {
        let entry = entry.map_err(|e| {
            ConfigErrors::one(dir.display().to_string(), format!("cannot list: {e}"))
        })?;
        let p = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let ft = entry
            .file_type()
            .map_err(|e| ConfigErrors::one(p.display().to_string(), e.to_string()))?;
        if ft.is_dir() {
            collect_files(&p, depth + 1, out, limits)?;
        } else if Format::from_path(&p).is_some() {
            out.push(p);
            if out.len() > limits.max_files {
                return Err(ConfigErrors::one(
                    dir.display().to_string(),
                    format!("more than {} configuration files", limits.max_files),
                ));
            }
        }
    }
    Ok(())
}

/// Parses configuration text of a known format (no merging, no validation).
pub fn parse_str(text: &str, format: Format) -> Result<Config, ConfigErrors> {
    let v = parse_value(text, format).map_err(|m| ConfigErrors::one("", m))?;
    from_value(v)
}

/// YAML is parsed under a budget, so that a small file cannot expand into a huge one:
/// aliases (`*ref`) may not replay more than the configuration size cap in scalars, and
/// nesting stops at a depth no configuration needs (Traefik's deepest path is about 8).
/// Without it, a 1 MB scalar aliased 1,000 times cost 2.45 GB, and `[` nested 20,000
/// deep took seconds of CPU.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = 64;
    budget.max_total_scalar_bytes = 64 << 20;
    budget.max_recorded_anchor_bytes = 32 << 20;
    budget.max_aliases = 100_000;
    // 200,000 routers of a few keys each, with room to spare
    budget.max_nodes = 20_000_000;
    budget.max_events = 50_000_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    // YAML 1.2 booleans only, as Go's yaml.v3 (which Traefik reads with) has them:
    // `X-Added: yes` is the string "yes", not `true`
    options.strict_booleans = true;
    options
}

pub(crate) fn parse_value(text: &str, format: Format) -> Result<Value, String> {
    let v: Value = match format {
        Format::Json => serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?,
        Format::Yaml => serde_saphyr::from_str_with_options(text, yaml_options())
            .map_err(|e| format!("invalid YAML: {e}"))?,
        Format::Toml => toml::from_str(text)
            .map_err(|e| format!("invalid TOML: {}", e.to_string().trim_end()))?,
    };
    match v {
        // an empty YAML document is an empty configuration
        Value::Null => Ok(Value::Object(Map::new())),
        Value::Object(_) => Ok(v),
        _ => Err("the configuration must be a map at the top level".into()),
    }
}

fn from_value(v: Value) -> Result<Config, ConfigErrors> {
    serde_path_to_error::deserialize::<_, Config>(v).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigErrors::one(path, e.into_inner().to_string())
    })
}

/// Merges `src` into `dst`. Maps merge key by key; below `http.<kind>.<name>` (a named
/// object) and for any scalar, a key set by two files is a conflict.
fn merge(
    dst: &mut Value,
    src: Value,
    path: &mut Vec<String>,
    file: &Path,
    origin: &mut Vec<(String, PathBuf)>,
    errors: &mut Vec<ConfigError>,
) {
    let Value::Object(src) = src else { return };
    let Value::Object(dmap) = dst else { return };
    for (k, v) in src {
        path.push(k.clone());
        let dotted = path.join(".");
        let named_object = path.len() == 3 && path[0] == "http";
        match dmap.get_mut(&k) {
            None => {
                dmap.insert(k, v);
                origin.push((dotted, file.to_path_buf()));
            }
            Some(existing) if existing.is_object() && v.is_object() && !named_object => {
                merge(existing, v, path, file, origin, errors);
            }
            // Certificates are a list that files add to, as in Traefik.
            Some(Value::Array(existing)) if dotted == "tls.certificates" && v.is_array() => {
                if let Value::Array(more) = v {
                    existing.extend(more);
                }
            }
            Some(_) => {
                let first = origin
                    .iter()
                    .find(|(p, _)| dotted == *p || dotted.starts_with(&format!("{p}.")))
                    .map(|(_, f)| f.display().to_string())
                    .unwrap_or_else(|| "another file".into());
                errors.push(ConfigError::new(
                    dotted,
                    format!("defined in both {first} and {}", file.display()),
                ));
            }
        }
        path.pop();
    }
}
