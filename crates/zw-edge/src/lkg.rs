//! The last-known-good snapshot on disk: what an edge serves when it starts while the
//! operator is unreachable (DESIGN.md, invariant 3).
//!
//! Written after every successful apply from the control plane: temp file, fsync, rename,
//! fsync of the directory, so a crash leaves the old file or the new one, never half of
//! one. The first line carries a SHA-256 of the rest; a file that fails it (or does not
//! parse, or does not validate) is refused whole — the edge then stays not-ready rather
//! than serve an empty or partial configuration.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zw_config::{Limits, ValidConfig};

const MAGIC: &str = "zeitwork-last-known-good v1";
const FILE: &str = "last-known-good.json";

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
        let body = serde_json::to_string(&Body {
            version,
            hash,
            origin,
            snapshot,
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
        let config = zw_config::parse_str(parsed.snapshot.get(), zw_config::Format::Json)
            .and_then(|c| zw_config::validate(c, limits))
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Some(Restored {
            version: parsed.version,
            origin: parsed.origin.to_string(),
            config,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(s.to_string()).unwrap()
    }

    const SNAP: &str = r#"{"http":{"routers":{"r":{"rule":"Host(`a`)","service":"s"}},"services":{"s":{"loadBalancer":{"servers":[{"url":"http://127.0.0.1:1"}]}}}}}"#;

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
