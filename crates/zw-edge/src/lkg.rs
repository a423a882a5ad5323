//! The last-known-good snapshot on disk: what an edge serves when it starts while the
//! operator is unreachable (DESIGN.md, invariant 3).
//!
//! Written after every successful apply from the control plane: temp file, fsync, rename,
//! fsync of the directory, so a crash leaves the old file or the new one, never half of
//! one. The first line carries a SHA-256 of the rest; a file that fails it (or does not
//! parse, or does not validate) is refused whole — the edge then stays not-ready rather
//! than serve an empty or partial configuration.
//!
//! Private keys in the snapshot (`tls.certificates[].keyFile`, a store's default
//! certificate's) are sealed before they reach the disk, with a key kept beside the file
//! (`secret-key`, mode 0600, made on first save), as the operator seals what it stores.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zw_config::{Limits, ValidConfig};

const MAGIC: &str = "zeitwork-last-known-good v1";
const FILE: &str = "last-known-good.json";
const KEY_FILE: &str = "secret-key";
const KEY_PURPOSE: &str = "last-known-good.key";

/// The last-known-good file in a state directory.
#[derive(Debug, Clone)]
pub struct LastKnownGood {
    path: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Body<'a> {
    version: u64,
    hash: &'a str,
    origin: &'a str,
    #[serde(borrow)]
    snapshot: &'a serde_json::value::RawValue,
}

/// A snapshot read back from disk.
#[derive(Debug)]
pub struct Restored {
    pub version: u64,
    pub origin: String,
    pub config: ValidConfig,
}

impl LastKnownGood {
    pub fn in_dir(dir: &Path) -> LastKnownGood {
        LastKnownGood {
            path: dir.join(FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Atomically replaces the file with this snapshot.
    pub fn save(
        &self,
        version: u64,
        hash: &str,
        origin: &str,
        snapshot: &serde_json::value::RawValue,
    ) -> std::io::Result<()> {
        let mut value: serde_json::Value = serde_json::from_str(snapshot.get())?;
        let sealed = if has_keys(&value) {
            let key = self.sealing_key(true)?;
            for_each_key(&mut value, |pem| {
                key.seal(pem.as_bytes(), KEY_PURPOSE)
                    .map_err(std::io::Error::other)
            })?;
            Some(serde_json::value::to_raw_value(&value)?)
        } else {
            None
        };
        let body = serde_json::to_string(&Body {
            version,
            hash,
            origin,
            snapshot: sealed.as_deref().unwrap_or(snapshot),
        })?;
        let digest = hex::encode(Sha256::digest(body.as_bytes()));
        let head = format!("{MAGIC} sha256:{digest}\n");
        zw_proto::fsutil::write_atomic(&self.path, &[head.as_bytes(), body.as_bytes()], 0o600)
    }

    /// Reads, checks and validates the file. `Ok(None)` when there is none.
    pub fn load(&self, limits: &Limits) -> Result<Option<Restored>, crate::Error> {
        let bad = |why: &str| crate::Error::LastKnownGood {
            path: self.path.clone(),
            why: why.to_string(),
        };
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(&e.to_string())),
        };
        if text.len() as u64 > limits.max_total_bytes {
            return Err(bad("larger than the configuration size limit"));
        }
        let text = std::str::from_utf8(&text).map_err(|_| bad("not UTF-8"))?;
        let (header, body) = text.split_once('\n').ok_or_else(|| bad("no header line"))?;
        let digest = header
            .strip_prefix(MAGIC)
            .and_then(|r| r.trim().strip_prefix("sha256:"))
            .ok_or_else(|| bad("unknown header"))?;
        if hex::encode(Sha256::digest(body.as_bytes())) != digest {
            return Err(bad("checksum mismatch (truncated or altered)"));
        }
        let parsed: Body<'_> = serde_json::from_str(body).map_err(|e| bad(&e.to_string()))?;
        let mut value: serde_json::Value =
            serde_json::from_str(parsed.snapshot.get()).map_err(|e| bad(&e.to_string()))?;
        if has_sealed(&value) {
            let key = self
                .sealing_key(false)
                .map_err(|e| bad(&format!("its keys are sealed and {e}")))?;
            for_each_key(&mut value, |sealed| {
                if !zw_pki::is_sealed(sealed) {
                    return Ok(sealed.to_string());
                }
                key.open(sealed, KEY_PURPOSE)
                    .map_err(|e| bad(&e.to_string()))
                    .and_then(|k| String::from_utf8(k).map_err(|_| bad("a sealed key is not text")))
            })?;
        }
        let text = serde_json::to_string(&value).map_err(|e| bad(&e.to_string()))?;
        let config = zw_config::parse_str(&text, zw_config::Format::Json)
            .and_then(|c| zw_config::validate(c, limits))
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Some(Restored {
            version: parsed.version,
            origin: parsed.origin.to_string(),
            config,
        }))
    }
}

impl LastKnownGood {
    /// The key that seals the snapshot's private keys: read from beside the file, or
    /// made there (mode 0600) when `create`.
    fn sealing_key(&self, create: bool) -> std::io::Result<zw_pki::SealingKey> {
        let path = self.path.with_file_name(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => zw_pki::SealingKey::from_hex(&text)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key = zw_pki::SealingKey::generate().map_err(std::io::Error::other)?;
                zw_proto::fsutil::write_atomic(&path, &[key.to_hex().as_bytes()], 0o600)?;
                Ok(key)
            }
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("{} cannot be read: {e}", path.display()),
            )),
        }
    }
}

/// The private keys a snapshot holds inline: each certificate's `keyFile`, and the default
/// certificate's of every store.
fn key_slots(v: &mut serde_json::Value) -> Vec<&mut serde_json::Value> {
    let mut out = Vec::new();
    let Some(tls) = v.get_mut("tls").and_then(|t| t.as_object_mut()) else {
        return out;
    };
    let (mut certs, mut stores) = (None, None);
    for (k, v) in tls.iter_mut() {
        match k.as_str() {
            "certificates" => certs = v.as_array_mut(),
            "stores" => stores = v.as_object_mut(),
            _ => {}
        }
    }
    for c in certs.into_iter().flatten() {
        if let Some(k) = c.get_mut("keyFile") {
            out.push(k);
        }
    }
    for s in stores.into_iter().flat_map(|s| s.values_mut()) {
        if let Some(k) = s
            .get_mut("defaultCertificate")
            .and_then(|d| d.get_mut("keyFile"))
        {
            out.push(k);
        }
    }
    out
}

/// Whether any inline key of the snapshot satisfies `f` (read-only: no copy of it).
fn any_key(v: &serde_json::Value, f: impl Fn(&str) -> bool) -> bool {
    let Some(tls) = v.get("tls") else {
        return false;
    };
    let certs = tls
        .get("certificates")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("keyFile"));
    let stores = tls
        .get("stores")
        .and_then(|s| s.as_object())
        .into_iter()
        .flat_map(|s| s.values())
        .filter_map(|s| s.get("defaultCertificate")?.get("keyFile"));
    certs.chain(stores).any(|k| k.as_str().is_some_and(&f))
}

fn has_keys(v: &serde_json::Value) -> bool {
    any_key(v, |s| s.contains("-----BEGIN"))
}

fn has_sealed(v: &serde_json::Value) -> bool {
    any_key(v, zw_pki::is_sealed)
}

/// Replaces each inline key (PEM, or sealed) with `f` of it; file paths stay.
fn for_each_key<E>(
    v: &mut serde_json::Value,
    mut f: impl FnMut(&str) -> Result<String, E>,
) -> Result<(), E> {
    for slot in key_slots(v) {
        let Some(text) = slot.as_str() else { continue };
        if text.contains("-----BEGIN") || zw_pki::is_sealed(text) {
            *slot = serde_json::Value::String(f(text)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(s.to_string()).unwrap()
    }

    const SNAP: &str = r#"{"http":{"routers":{"r":{"rule":"Host(`a`)","service":"s"}},"services":{"s":{"loadBalancer":{"servers":[{"url":"http://127.0.0.1:1"}]}}}}}"#;

    /// A snapshot's private keys are sealed on disk and opened again when it is read.
    #[test]
    fn private_keys_are_sealed_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let lkg = LastKnownGood::in_dir(dir.path());
        let limits = Limits::default();
        let ca = zw_pki::Ca::generate().unwrap();
        let snap = serde_json::json!({
            "http": {},
            "tls": {
                "certificates": [{"certFile": ca.cert_pem(), "keyFile": ca.key_pem()}],
                "stores": {"default": {"defaultCertificate": {"certFile": ca.cert_pem(), "keyFile": ca.key_pem()}}}
            }
        });
        lkg.save(3, "h", "ws://op", &raw(&snap.to_string()))
            .unwrap();
        let text = std::fs::read_to_string(lkg.path()).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(text.contains("zwseal1:"));
        use std::os::unix::fs::PermissionsExt;
        let key = dir.path().join(KEY_FILE);
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let r = lkg.load(&limits).unwrap().unwrap();
        assert_eq!(r.config.parsed.tls.certificates.len(), 1);
        // Without the key the file cannot be served, and says why.
        std::fs::remove_file(&key).unwrap();
        let e = lkg.load(&limits).unwrap_err().to_string();
        assert!(e.contains("sealed") && e.contains("secret-key"), "{e}");
    }

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let lkg = LastKnownGood::in_dir(dir.path());
        let limits = Limits::default();
        assert!(
            lkg.load(&limits).unwrap().is_none(),
            "no file is not an error"
        );

        lkg.save(7, "sha256:x", "ws://op", &raw(SNAP)).unwrap();
        let r = lkg.load(&limits).unwrap().unwrap();
        assert_eq!(r.version, 7);
        assert_eq!(r.config.config.http.routers.len(), 1);

        // one flipped byte in the body
        let mut bytes = std::fs::read(lkg.path()).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x01;
        std::fs::write(lkg.path(), &bytes).unwrap();
        assert!(lkg
            .load(&limits)
            .unwrap_err()
            .to_string()
            .contains("checksum mismatch"));

        // truncated
        lkg.save(8, "sha256:x", "ws://op", &raw(SNAP)).unwrap();
        let bytes = std::fs::read(lkg.path()).unwrap();
        std::fs::write(lkg.path(), &bytes[..bytes.len() / 2]).unwrap();
        assert!(lkg.load(&limits).is_err());

        // no temp files left behind
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn every_single_byte_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lkg = LastKnownGood::in_dir(dir.path());
        lkg.save(3, "sha256:x", "ws://op", &raw(SNAP)).unwrap();
        let good = std::fs::read(lkg.path()).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x04;
            std::fs::write(lkg.path(), &bad).unwrap();
            assert!(
                lkg.load(&Limits::default()).is_err(),
                "flipping byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn a_checksummed_but_invalid_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lkg = LastKnownGood::in_dir(dir.path());
        lkg.save(
            1,
            "sha256:x",
            "ws://op",
            &raw(r#"{"http":{"routers":{"r":{"rule":"Host(","service":"s"}}}}"#),
        )
        .unwrap();
        let e = lkg.load(&Limits::default()).unwrap_err().to_string();
        assert!(e.contains("http.routers.r"), "{e}");
    }
}
