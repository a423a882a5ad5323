//! Traefik's `acme.json`, read and written as Traefik does (`pkg/provider/acme/
//! local_store.go`, `store.go`): an object keyed by resolver name, each holding `Account`
//! and `Certificates` (`domain {main, sans}`, and the certificate chain and key as PEM,
//! base64-encoded as Go encodes `[]byte`, with the `Store` they go to). A Traefik user who
//! switches keeps the certificates they have.
//!
//! Traefik's `Account` holds an RSA key in PKCS#1, which this client (ECDSA P-256 account
//! keys) cannot sign with: it is kept untouched, so switching back to Traefik still works,
//! and Zeitwork's own account sits beside it under `ZeitworkAccount`, a key Traefik
//! ignores. The file is written atomically with mode 0600, the mode Traefik insists on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// The largest `acme.json` read (thousands of certificates fit).
pub const MAX_STORAGE_BYTES: u64 = 64 << 20;

/// One resolver's part of the file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ResolverData {
    /// Traefik's account, kept as it is.
    #[serde(rename = "Account", default)]
    pub traefik_account: Value,
    #[serde(rename = "Certificates", default, deserialize_with = "null_is_empty")]
    pub certificates: Vec<StoredCertificate>,
    #[serde(
        rename = "ZeitworkAccount",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub account: Option<StoredAccount>,
    /// Whatever else a newer Traefik writes.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

fn null_is_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<StoredCertificate>, D::Error> {
    Ok(Option::<Vec<StoredCertificate>>::deserialize(d)?.unwrap_or_default())
}

/// Zeitwork's ACME account: the directory it is registered at and instant-acme's
/// credentials (the account URL and its PKCS#8 key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredAccount {
    #[serde(rename = "caServer")]
    pub ca_server: String,
    pub credentials: Value,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Domain {
    pub main: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sans: Vec<String>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCertificate {
    pub domain: Domain,
    /// The PEM chain, leaf first.
    #[serde(with = "go_bytes")]
    pub certificate: Vec<u8>,
    /// The PEM private key.
    #[serde(with = "go_bytes")]
    pub key: Vec<u8>,
    #[serde(rename = "Store", default = "default_store")]
    pub store: String,
}

impl std::fmt::Debug for StoredCertificate {
    /// The key is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCertificate")
            .field("domain", &self.domain)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl StoredCertificate {
    /// The names it was ordered for, `main` first.
    pub fn names(&self) -> Vec<String> {
        std::iter::once(self.domain.main.clone())
            .chain(self.domain.sans.iter().cloned())
            .collect()
    }
}

fn default_store() -> String {
    "default".into()
}

/// Go's JSON encoding of `[]byte`: standard base64 with padding.
mod go_bytes {
    use super::*;
    pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// The whole file: every resolver's data, those of other resolvers kept as they are.
#[derive(Debug)]
pub struct Storage {
    path: PathBuf,
    all: BTreeMap<String, Value>,
}

impl Storage {
    /// Reads `path`; a missing or empty file is an empty storage (Traefik's behaviour).
    pub fn open(path: &Path) -> Result<Storage, Error> {
        let fail = |reason: String| Error::Storage {
            path: path.to_path_buf(),
            reason,
        };
        let all = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(fail(e.to_string())),
            Ok(m) if m.len() > MAX_STORAGE_BYTES => {
                return Err(fail(format!(
                    "{} bytes; the limit is {MAX_STORAGE_BYTES}",
                    m.len()
                )))
            }
            Ok(_) => {
                let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
                return Storage::parse(path, &text);
            }
        };
        Ok(Storage {
            path: path.to_path_buf(),
            all,
        })
    }

    /// The storage `text` holds (as read from `path`): empty text is an empty storage.
    pub fn parse(path: &Path, text: &[u8]) -> Result<Storage, Error> {
        let all = if text.is_empty() {
            BTreeMap::new()
        } else {
            serde_json::from_slice(text).map_err(|e| Error::Storage {
                path: path.to_path_buf(),
                reason: format!(
                    "not Traefik's acme.json format ({e}); move it away to start afresh"
                ),
            })?
        };
        Ok(Storage {
            path: path.to_path_buf(),
            all,
        })
    }

    /// The names of the resolvers it holds data for.
    pub fn resolvers(&self) -> impl Iterator<Item = &str> {
        self.all.keys().map(String::as_str)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One resolver's data (empty if the file has none).
    pub fn resolver(&self, name: &str) -> Result<ResolverData, Error> {
        match self.all.get(name) {
            None | Some(Value::Null) => Ok(ResolverData::default()),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| Error::Storage {
                path: self.path.clone(),
                reason: format!("resolver `{name}`: {e}"),
            }),
        }
    }

    /// Replaces one resolver's data and writes the file (atomically, mode 0600).
    pub fn save(&mut self, name: &str, data: &ResolverData) -> Result<(), Error> {
        let fail = |reason: String| Error::Storage {
            path: self.path.clone(),
            reason,
        };
        let v = serde_json::to_value(data).map_err(|e| fail(e.to_string()))?;
        self.all.insert(name.to_string(), v);
        let text = serde_json::to_vec_pretty(&self.all).map_err(|e| fail(e.to_string()))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        zw_proto::fsutil::write_atomic(&self.path, &[&text], 0o600)
            .map_err(|e| fail(format!("cannot write: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An acme.json as Traefik v3 writes it (its account key shortened).
    const TRAEFIK: &str = r#"{
  "le": {
    "Account": {
      "Email": "ops@example.com",
      "Registration": {"body": {"status": "valid"}, "uri": "https://acme.example/acct/1"},
      "PrivateKey": "MIIJKQIBAAKCAgEA",
      "KeyType": "4096"
    },
    "Certificates": [
      {"domain": {"main": "a.example.com", "sans": ["b.example.com"]},
       "certificate": "LS0tLS1CRUdJTg==", "key": "S0VZ", "Store": "default"}
    ]
  },
  "other": {"Account": null, "Certificates": null}
}"#;

    #[test]
    fn traefiks_file_is_read_and_written_back_with_what_we_do_not_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acme.json");
        std::fs::write(&path, TRAEFIK).unwrap();
        let mut st = Storage::open(&path).unwrap();
        let le = st.resolver("le").unwrap();
        assert_eq!(le.certificates.len(), 1);
        let c = &le.certificates[0];
        assert_eq!(c.names(), vec!["a.example.com", "b.example.com"]);
        assert_eq!(c.certificate, b"-----BEGIN");
        assert_eq!(c.key, b"KEY");
        assert_eq!(c.store, "default");
        assert!(st.resolver("other").unwrap().certificates.is_empty());
        assert!(st.resolver("none").unwrap().certificates.is_empty());

        st.save("le", &le).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let before: Value = serde_json::from_str(TRAEFIK).unwrap();
        // Traefik's account and the other resolver survive untouched.
        assert_eq!(again["le"]["Account"], before["le"]["Account"]);
        assert_eq!(again["other"], before["other"]);
        assert_eq!(
            again["le"]["Certificates"][0]["certificate"],
            before["le"]["Certificates"][0]["certificate"]
        );
    }

    #[test]
    fn a_missing_or_empty_file_is_empty_and_a_broken_one_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acme.json");
        assert!(Storage::open(&path)
            .unwrap()
            .resolver("le")
            .unwrap()
            .certificates
            .is_empty());
        std::fs::write(&path, "").unwrap();
        assert!(Storage::open(&path).is_ok());
        std::fs::write(&path, "{not json").unwrap();
        let e = Storage::open(&path).unwrap_err().to_string();
        assert!(
            e.contains("acme.json") && e.contains("not Traefik's acme.json format"),
            "{e}"
        );
        std::fs::write(&path, r#"{"le": {"Certificates": [{"domain": {"main": "a"}, "certificate": "!!", "key": ""}]}}"#).unwrap();
        let e = Storage::open(&path)
            .unwrap()
            .resolver("le")
            .unwrap_err()
            .to_string();
        assert!(e.contains("resolver `le`"), "{e}");
    }

    proptest::proptest! {
        /// Whatever the certificate bytes, names and stores, what is saved reads back equal.
        #[test]
        fn certificates_round_trip(
            main in "[a-z0-9.-]{1,30}",
            sans in proptest::collection::vec("[a-z0-9.-]{1,30}", 0..4),
            cert in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            key in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            store in "[a-z]{1,10}",
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("acme.json");
            let mut st = Storage::open(&path).unwrap();
            let data = ResolverData {
                certificates: vec![StoredCertificate { domain: Domain { main, sans }, certificate: cert, key, store }],
                ..Default::default()
            };
            st.save("r", &data).unwrap();
            let back = Storage::open(&path).unwrap().resolver("r").unwrap();
            proptest::prop_assert_eq!(back.certificates, data.certificates);
        }
    }
}
