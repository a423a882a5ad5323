//! Files the platform must never leave half-written: instance records, the edge's
//! last-known-good snapshot, certificates and keys, secrets.

use std::io::Write;
use std::path::Path;

/// Writes `parts` to `path` so that a crash at any moment leaves either the old file or
/// the new one, never a mix: a temporary file in the same directory (created with `mode`,
/// so a secret is never readable by others, not even for a moment), fsync, rename over
/// `path`, fsync of the directory.
pub fn write_atomic(path: &Path, parts: &[&[u8]], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".zeitwork-")
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    for p in parts {
        tmp.write_all(p)?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_files_with_the_mode_asked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub").join("secret");
        write_atomic(&f, &[b"one", b"\n"], 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "one\n");
        write_atomic(&f, &[b"two"], 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "two");
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // nothing temporary is left behind
        let names: Vec<_> = std::fs::read_dir(f.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
    }
}
