//! Secrets at rest: values the operator keeps in its store (the platform CA's private key
//! first) are sealed with a key that lives outside the store, so that a copy of the
//! database — a backup, a replica's disk, a leaked dump — holds no usable secret.
//!
//! ChaCha20-Poly1305 (aws-lc-rs) with a random 96-bit nonce per value; the value's purpose is
//! the associated data, so a sealed CA key cannot be swapped in for another secret. The
//! text form is `zwseal1:` followed by the hex of nonce ‖ ciphertext ‖ tag.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::{PkiError, Result};

const PREFIX: &str = "zwseal1:";
/// Sealed values are small (a PEM key is about 250 bytes); refuse absurd input before
/// decoding it.
const MAX_SEALED: usize = 1 << 20;

/// A 256-bit sealing key. Its `Debug` does not show it.
#[derive(Clone)]
pub struct SealingKey([u8; 32]);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(…)")
    }
}

impl SealingKey {
    pub fn generate() -> Result<SealingKey> {
        let mut k = [0u8; 32];
        SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| PkiError::Invalid("the system random source failed".into()))?;
        Ok(SealingKey(k))
    }

    /// The key as 64 hex digits (surrounding whitespace ignored), as [`SealingKey::to_hex`]
    /// writes it.
    pub fn from_hex(text: &str) -> Result<SealingKey> {
        let bytes = hex::decode(text.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| PkiError::Invalid("a sealing key is 64 hex digits".into()))?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&bytes);
        Ok(SealingKey(k))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn aead(&self) -> LessSafeKey {
        // CHACHA20_POLY1305 takes exactly 32 bytes, which is what we hold
        LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &self.0).unwrap_or_else(|_| unreachable!()),
        )
    }

    /// Seals `plaintext` for `purpose` (e.g. `"platform_ca.key"`).
    pub fn seal(&self, plaintext: &[u8], purpose: &str) -> Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| PkiError::Invalid("the system random source failed".into()))?;
        let mut buf = plaintext.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut buf,
            )
            .map_err(|_| PkiError::Invalid("sealing failed".into()))?;
        let mut out = String::with_capacity(PREFIX.len() + 2 * (NONCE_LEN + buf.len()));
        out.push_str(PREFIX);
        out.push_str(&hex::encode(nonce));
        out.push_str(&hex::encode(&buf));
        Ok(out)
    }

    /// Opens what [`SealingKey::seal`] made for the same `purpose`. Fails on another key,
    /// another purpose, or any change to the text.
    pub fn open(&self, sealed: &str, purpose: &str) -> Result<Vec<u8>> {
        let wrong = || {
            PkiError::Invalid(format!(
                "cannot open the sealed {purpose}: it was sealed with another key, or changed"
            ))
        };
        if sealed.len() > MAX_SEALED {
            return Err(wrong());
        }
        let body = sealed.strip_prefix(PREFIX).ok_or_else(wrong)?;
        let mut bytes = hex::decode(body).map_err(|_| wrong())?;
        if bytes.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(wrong());
        }
        let mut ciphertext = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| wrong())?;
        let plain = self
            .aead()
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut ciphertext)
            .map_err(|_| wrong())?;
        Ok(plain.to_vec())
    }
}

/// Whether `text` is a sealed value (rather than a secret kept in clear by an older
/// version).
pub fn is_sealed(text: &str) -> bool {
    text.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_purpose() {
        let k = SealingKey::generate().unwrap();
        let sealed = k.seal(b"-----BEGIN PRIVATE KEY-----", "ca").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("PRIVATE"));
        assert_eq!(
            k.open(&sealed, "ca").unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert!(k.open(&sealed, "other").is_err());
        let other = SealingKey::generate().unwrap();
        assert!(other.open(&sealed, "ca").is_err());
        // two seals of one value differ (fresh nonce), both open
        let again = k.seal(b"-----BEGIN PRIVATE KEY-----", "ca").unwrap();
        assert_ne!(sealed, again);
        assert!(k.open(&again, "ca").is_ok());
        let back = SealingKey::from_hex(&format!(" {}\n", k.to_hex())).unwrap();
        assert_eq!(
            back.open(&sealed, "ca").unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert!(SealingKey::from_hex("abcd").is_err());
        assert!(!format!("{k:?}").contains(&k.to_hex()));
    }

    proptest! {
        /// Any change to a sealed value is detected, never a panic.
        #[test]
        fn tampering_is_refused(
            plain in proptest::collection::vec(any::<u8>(), 0..300),
            at in any::<prop::sample::Index>(),
            c in "[0-9a-fz:é]",
        ) {
            let k = SealingKey::generate().unwrap();
            let sealed = k.seal(&plain, "p").unwrap();
            prop_assert_eq!(k.open(&sealed, "p").unwrap(), plain);
            let mut chars: Vec<char> = sealed.chars().collect();
            let i = at.index(chars.len());
            let old = chars[i];
            chars[i] = c.chars().next().unwrap();
            let changed: String = chars.into_iter().collect();
            if changed != sealed {
                prop_assert!(k.open(&changed, "p").is_err(), "{} → {}", old, c);
            }
        }

        #[test]
        fn any_text_opens_or_errs(text in "\\PC{0,200}") {
            let k = SealingKey::generate().unwrap();
            let _ = k.open(&text, "p");
            let _ = k.open(&format!("{PREFIX}{text}"), "p");
        }
    }
}
