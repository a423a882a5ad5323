//! Secrets: sealed here with the operator's key before the store sees them, opened only
//! on the way to the agent that runs the instance (over its mutually authenticated
//! channel). The purpose a value is sealed for names its deployment and variable, so a
//! sealed value copied to another deployment or name does not open.

use std::collections::BTreeMap;

use zw_proto::agent::Assignment;
use zw_store::SealedAssignment;

fn purpose(deployment: &str, name: &str) -> String {
    format!("secret:{deployment}:{name}")
}

/// Seals `set`'s values for `deployment`.
pub(crate) fn seal(
    key: &zw_pki::SealingKey,
    deployment: &str,
    set: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, zw_pki::PkiError> {
    set.into_iter()
        .map(|(name, value)| {
            let sealed = key.seal(value.as_bytes(), &purpose(deployment, &name))?;
            Ok((name, sealed))
        })
        .collect()
}

/// The assignment the agent gets: the release's environment with its secrets opened into
/// it (a secret wins over a plain variable of the same name). A secret that does not open
/// (the operator's key changed) is left out, and said so without its value.
pub(crate) fn open(key: &zw_pki::SealingKey, a: &SealedAssignment) -> Assignment {
    let mut out = a.assignment.clone();
    for (name, s) in &a.secrets {
        match key.open(&s.sealed, &purpose(&out.deployment, name)) {
            Ok(value) => {
                out.env
                    .insert(name.clone(), String::from_utf8_lossy(&value).into_owned());
            }
            Err(e) => tracing::error!(
                deployment = %out.deployment,
                secret = %name,
                error = %e,
                "a secret does not open with this operator's sealing key; the instance starts without it (set it again: `zeitwork secrets set`)"
            ),
        }
    }
    out
}
