//! Secrets at rest: write-only values (admin passwords, later protected settings) are sealed with
//! ChaCha20-Poly1305 under a key kept in a 0600 file beside the database, so the database alone
//! (or a backup of it) reveals nothing.

use crate::{BackendError, CodecError, StoreError};
use chacha20poly1305::{
    aead::{Aead, KeyInit},
    ChaCha20Poly1305, Key, Nonce,
};
use rand::RngCore;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Seals and opens secret values.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    /// Derived from the key (not the key itself): the salt of [`Sealer::digest`].
    digest_salt: [u8; 32],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// Reads the key from `path`, creating a new random key (mode 0600) if the file is absent.
    pub fn load_or_create(path: &Path) -> Result<Self, StoreError> {
        let io = |source| StoreError::from(BackendError::Io { what: format!("secret key {}", path.display()), source });
        let key = match std::fs::read(path) {
            Ok(k) if k.len() == 32 => k,
            Ok(_) => return Err(BackendError::SecretKeySize(path.to_path_buf()).into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = vec![0u8; 32];
                rand::rng().fill_bytes(&mut k);
                let mut f =
                    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
                f.write_all(&k).map_err(io)?;
                k
            }
            Err(e) => return Err(io(e)),
        };
        Ok(Self::from_key(&key))
    }

    fn from_key(key: &[u8]) -> Self {
        use sha2::Digest;
        let salt = sha2::Sha256::new().chain_update(b"herd digest salt v1").chain_update(key).finalize();
        let mut digest_salt = [0u8; 32];
        digest_salt.copy_from_slice(&salt);
        Self { cipher: ChaCha20Poly1305::new(Key::from_slice(key)), digest_salt }
    }

    /// A keyed, one-way digest of a secret (hex, 16 bytes): lets herd notice that a secret
    /// changed (to re-run an extension) without keeping a comparable copy of it.
    pub fn digest(&self, data: &[u8]) -> String {
        use sha2::Digest;
        let d = sha2::Sha256::new().chain_update(self.digest_salt).chain_update(data).finalize();
        hex::encode(&d[..16])
    }

    /// A sealer with a random key that lives only in memory (tests).
    pub fn ephemeral() -> Self {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        Self::from_key(&k)
    }

    /// Encrypts `value` into `{"sealed": "<hex nonce><hex ciphertext>"}`.
    pub fn seal<T: Serialize>(&self, value: &T) -> Result<Value, StoreError> {
        let plain = serde_json::to_vec(value).map_err(CodecError::Json)?;
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plain.as_slice())
            .map_err(|_| StoreError::Codec(CodecError::Seal))?;
        Ok(json!({ "sealed": format!("{}{}", hex::encode(nonce), hex::encode(ct)) }))
    }

    /// Decrypts what [`seal`](Self::seal) produced.
    pub fn open<T: DeserializeOwned>(&self, sealed: &Value) -> Result<T, StoreError> {
        let bad = || StoreError::Codec(CodecError::Unseal);
        let text = sealed.get("sealed").and_then(Value::as_str).ok_or_else(bad)?;
        let bytes = hex::decode(text).map_err(|_| bad())?;
        if bytes.len() < 12 {
            return Err(bad());
        }
        let (nonce, ct) = bytes.split_at(12);
        let plain = self.cipher.decrypt(Nonce::from_slice(nonce), ct).map_err(|_| bad())?;
        serde_json::from_slice(&plain).map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_hides_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let s = Sealer::load_or_create(&path).unwrap();
        let sealed = s.seal(&json!({"adminPassword": "hunter2-hunter2"})).unwrap();
        assert!(!sealed.to_string().contains("hunter2"));
        let again = Sealer::load_or_create(&path).unwrap();
        let v: Value = again.open(&sealed).unwrap();
        assert_eq!(v["adminPassword"], "hunter2-hunter2");
        assert!(Sealer::ephemeral().open::<Value>(&sealed).is_err(), "another key cannot open it");
        assert_eq!(s.digest(b"pw"), again.digest(b"pw"), "same key, same digest");
        assert_ne!(s.digest(b"pw"), Sealer::ephemeral().digest(b"pw"), "the digest is keyed");
        assert_ne!(s.digest(b"pw"), s.digest(b"pw2"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
