//! OCI image layouts, unpacked locally (no registry is reachable from a node): a layout
//! directory or a tar archive of one → a root filesystem directory.
//!
//! The index's first manifest is used (an index of indexes is followed to its first
//! image). Every blob is checked against its digest before use. Layers (`tar` or
//! `tar+gzip`) are applied in order with OCI whiteouts (`.wh.NAME` removes `NAME`,
//! `.wh..wh..opq` empties its directory); entries are unpacked with paths confined to the
//! root (no `..`, no absolute paths).

use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Index and manifest documents larger than this are refused.
const MAX_JSON: u64 = 4 << 20;
/// Nested indexes followed at most this deep.
const MAX_DEPTH: usize = 4;

/// Why an OCI layout could not be unpacked. Every case is the image's (or its path's):
/// the same layout fails the same way again.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}: not a tar archive of an OCI layout: {source} (give a layout directory, or a tar \
         of one such as `skopeo copy docker://IMAGE oci-archive:FILE` writes)",
        path.display()
    )]
    NotATar {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: larger than {MAX_JSON} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{0} lists no manifest")]
    NoManifest(&'static str),
    #[error("indexes nested more than {MAX_DEPTH} deep")]
    TooDeep,
    #[error("unsupported digest `{0}` (only sha256 is)")]
    Digest(String),
    #[error("blob {digest}: {source}")]
    Blob {
        digest: String,
        source: std::io::Error,
    },
    #[error("blob {0} does not match its digest")]
    Mismatch(String),
    #[error("layer {digest}: entry `{}` leaves the root", entry.display())]
    Escapes { digest: String, entry: PathBuf },
    #[error("layer {digest}: {detail}")]
    Layer { digest: String, detail: String },
    #[error("the unpacking task ended: {0}")]
    Task(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
    move |source| OciError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    layers: Vec<Descriptor>,
}

/// The root filesystem of the layout at `source`, unpacked once into `work/rootfs`.
pub async fn unpacked(source: &Path, work: &Path) -> Result<PathBuf, OciError> {
    let source = source.to_path_buf();
    let work = work.to_path_buf();
    tokio::task::spawn_blocking(move || unpack(&source, &work))
        .await
        .map_err(|e| OciError::Task(e.to_string()))?
}

fn unpack(source: &Path, work: &Path) -> Result<PathBuf, OciError> {
    let root = work.join("rootfs");
    let done = work.join("rootfs.done");
    if done.exists() {
        return Ok(root);
    }
    let layout = if source.is_dir() {
        source.to_path_buf()
    } else {
        let dir = work.join("oci-layout");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let f = File::open(source).map_err(io(source))?;
        tar::Archive::new(f)
            .unpack(&dir)
            .map_err(|source_err| OciError::NotATar {
                path: source.to_path_buf(),
                source: source_err,
            })?;
        dir
    };
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    let index: Index = read_json(&layout.join("index.json"))?;
    let mut manifest_desc = index
        .manifests
        .into_iter()
        .next()
        .ok_or(OciError::NoManifest("index.json"))?;
    let mut depth = 0;
    while manifest_desc.media_type.contains("image.index")
        || manifest_desc.media_type.contains("manifest.list")
    {
        depth += 1;
        if depth > MAX_DEPTH {
            return Err(OciError::TooDeep);
        }
        let nested: Index = read_json(&blob(&layout, &manifest_desc.digest)?)?;
        manifest_desc = nested
            .manifests
            .into_iter()
            .next()
            .ok_or(OciError::NoManifest("a nested index"))?;
    }
    let manifest: Manifest = read_json(&blob(&layout, &manifest_desc.digest)?)?;
    for layer in &manifest.layers {
        let path = blob(&layout, &layer.digest)?;
        let f = File::open(&path).map_err(io(&path))?;
        let reader: Box<dyn Read> = if layer.media_type.ends_with("gzip") {
            Box::new(flate2::read::GzDecoder::new(f))
        } else {
            Box::new(f)
        };
        apply_layer(reader, &root, &layer.digest)?;
    }
    std::fs::write(&done, manifest_desc.digest.as_bytes()).map_err(io(&done))?;
    Ok(root)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, OciError> {
    let f = File::open(path).map_err(io(path))?;
    let mut text = Vec::new();
    f.take(MAX_JSON + 1)
        .read_to_end(&mut text)
        .map_err(io(path))?;
    if text.len() as u64 > MAX_JSON {
        return Err(OciError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    serde_json::from_slice(&text).map_err(|source| OciError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// The blob for `digest`, checked against it.
fn blob(layout: &Path, digest: &str) -> Result<PathBuf, OciError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| OciError::Digest(zw_proto::abbreviate(digest, 80).to_string()))?;
    let path = layout.join("blobs/sha256").join(hex);
    let blob_err = |source| OciError::Blob {
        digest: digest.to_string(),
        source,
    };
    let mut f = File::open(&path).map_err(blob_err)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(blob_err)?;
    if hex::encode(hasher.finalize()) != hex.to_ascii_lowercase() {
        return Err(OciError::Mismatch(digest.to_string()));
    }
    Ok(path)
}

/// A relative path with only normal components, or `None` for anything else.
fn confined(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn apply_layer(reader: impl Read, root: &Path, digest: &str) -> Result<(), OciError> {
    let layer_err = |detail: String| OciError::Layer {
        digest: digest.to_string(),
        detail,
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(|e| layer_err(e.to_string()))? {
        let mut entry = entry.map_err(|e| layer_err(e.to_string()))?;
        let raw = entry
            .path()
            .map_err(|e| layer_err(e.to_string()))?
            .into_owned();
        let Some(rel) = confined(&raw) else {
            return Err(OciError::Escapes {
                digest: digest.to_string(),
                entry: raw,
            });
        };
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == ".wh..wh..opq" {
            let dir = root.join(rel.parent().unwrap_or(Path::new("")));
            if let Ok(children) = std::fs::read_dir(&dir) {
                for child in children.flatten() {
                    let p = child.path();
                    let _ = if p.is_dir() && !p.is_symlink() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
            continue;
        }
        if let Some(target) = name.strip_prefix(".wh.") {
            let p = root
                .join(rel.parent().unwrap_or(Path::new("")))
                .join(target);
            let _ = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            continue;
        }
        // `unpack_in` refuses paths (and link targets written through) outside `root`.
        entry
            .unpack_in(root)
            .map_err(|e| layer_err(format!("{}: {e}", raw.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_blob(layout: &Path, bytes: &[u8]) -> String {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    }

    fn layer(files: &[(&str, &[u8])], gzip: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        if !gzip {
            return tar;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    fn layout(dir: &Path, layers: &[(Vec<u8>, bool)]) {
        let descs: Vec<String> = layers
            .iter()
            .map(|(bytes, gz)| {
                let d = add_blob(dir, bytes);
                let mt = if *gz {
                    "application/vnd.oci.image.layer.v1.tar+gzip"
                } else {
                    "application/vnd.oci.image.layer.v1.tar"
                };
                format!(
                    r#"{{"mediaType":"{mt}","digest":"{d}","size":{}}}"#,
                    bytes.len()
                )
            })
            .collect();
        let manifest = format!(r#"{{"schemaVersion":2,"layers":[{}]}}"#, descs.join(","));
        let md = add_blob(dir, manifest.as_bytes());
        std::fs::write(
            dir.join("index.json"),
            format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}"}}]}}"#),
        )
        .unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let src = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        layout(
            src.path(),
            &[
                (
                    layer(
                        &[("bin/app", b"v1"), ("etc/old", b"x"), ("var/cache/a", b"1")],
                        true,
                    ),
                    true,
                ),
                (
                    layer(
                        &[
                            ("bin/app", b"v2"),
                            ("etc/.wh.old", b""),
                            ("var/cache/.wh..wh..opq", b""),
                        ],
                        false,
                    ),
                    false,
                ),
            ],
        );
        let root = unpack(src.path(), work.path()).unwrap();
        assert_eq!(std::fs::read(root.join("bin/app")).unwrap(), b"v2");
        assert!(!root.join("etc/old").exists());
        assert!(root.join("var/cache").is_dir());
        assert!(!root.join("var/cache/a").exists());
        // Unpacked once: a second call does not redo it.
        std::fs::write(root.join("bin/app"), b"changed").unwrap();
        unpack(src.path(), work.path()).unwrap();
        assert_eq!(std::fs::read(root.join("bin/app")).unwrap(), b"changed");
    }

    #[test]
    fn a_tampered_blob_or_an_escaping_entry_is_refused() {
        let src = tempfile::tempdir().unwrap();
        layout(src.path(), &[(layer(&[("a", b"1")], false), false)]);
        // flip a byte of the layer blob
        let blobs: Vec<_> = std::fs::read_dir(src.path().join("blobs/sha256"))
            .unwrap()
            .flatten()
            .collect();
        for b in &blobs {
            let mut bytes = std::fs::read(b.path()).unwrap();
            if bytes.first() == Some(&b'a') {
                bytes[0] = b'b';
                std::fs::write(b.path(), bytes).unwrap();
            }
        }
        let work = tempfile::tempdir().unwrap();
        let err = unpack(src.path(), work.path()).unwrap_err().to_string();
        assert!(err.contains("does not match its digest"), "{err}");

        // A symlink pointing out of the root, then a file written through it.
        let outside = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "escape", outside.path()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "escape/planted", &b"bad"[..])
            .unwrap();
        let root = tempfile::tempdir().unwrap();
        let _ = apply_layer(&b.into_inner().unwrap()[..], root.path(), "sha256:test");
        assert!(
            !outside.path().join("planted").exists(),
            "nothing is written through a link out of the root"
        );

        assert_eq!(confined(Path::new("../etc/passwd")), None);
        assert_eq!(
            confined(Path::new("/etc/passwd")),
            Some(PathBuf::from("etc/passwd"))
        );
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn component() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("..".to_string()),
                Just(".".to_string()),
                Just("".to_string()),
                "[a-z.]{1,6}",
            ]
        }

        proptest! {
            /// Whatever a layer names, what is kept stays below the root.
            #[test]
            fn confined_paths_stay_below_the_root(parts in proptest::collection::vec(component(), 0..6), absolute in any::<bool>()) {
                let joined = parts.join("/");
                let raw = if absolute { format!("/{joined}") } else { joined };
                if let Some(p) = confined(Path::new(&raw)) {
                    prop_assert!(p.components().all(|c| matches!(c, Component::Normal(_))), "{p:?}");
                    prop_assert!(!raw.split('/').any(|c| c == ".."), "{raw} kept as {p:?}");
                }
            }

            /// Arbitrary bytes as a layer: an error or a tree, never a panic, and nothing
            /// written beside the root.
            #[test]
            fn any_layer_bytes_are_refused_or_applied_inside_the_root(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
                let dir = tempfile::tempdir().unwrap();
                let root = dir.path().join("root");
                std::fs::create_dir_all(&root).unwrap();
                let _ = apply_layer(&bytes[..], &root, "sha256:test");
                let beside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
                prop_assert_eq!(beside, vec![std::ffi::OsString::from("root")]);
            }
        }
    }
}
