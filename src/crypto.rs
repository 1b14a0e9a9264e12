//! sTokens (and webhook signing secrets) at rest: AES-256-GCM with rotatable keys.
//!
//! Keys come from `VPP_TOKEN_KEYS` as `keyid:base64key[,keyid:base64key…]` (32-byte keys; the
//! first is active for new encryptions, the others still decrypt). Each ciphertext is stored with
//! its key id and a random 96-bit nonce, and the account id is bound in as associated data, so a
//! ciphertext copied onto another account row does not decrypt. Rotation: put the new key first,
//! keep the old one, run `vpp-broker rotate-keys`, then drop the old key.
//!
//! Key material is held in [`secrecy`] wrappers while it is parsed or generated, so it is zeroed
//! when dropped and never printed.
//!
//! `serve` refuses to start without keys; `dev` generates one per run and says so.

use std::collections::HashMap;
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretSlice, SecretString};

use crate::apple::stoken::SToken;

/// A sealed secret as stored in the ledger.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("no token key with id {0:?} is configured (VPP_TOKEN_KEYS)")]
    UnknownKey(String),
    #[error("a stored token does not decrypt with key {0:?} (wrong key or tampered data)")]
    Decrypt(String),
}

/// Why `VPP_TOKEN_KEYS` (or a generated key) is unusable. Messages name the entry or the key id,
/// never the key material.
#[derive(Debug, thiserror::Error)]
pub enum KeySpecError {
    #[error("VPP_TOKEN_KEYS entry #{0} must look like keyid:base64key")]
    Malformed(usize),
    #[error("VPP_TOKEN_KEYS entry #{0}: key id must be 1-32 of [A-Za-z0-9._-]")]
    BadKeyId(usize),
    /// The source says where the base64 breaks (a position and a byte value, not the key).
    #[error("VPP_TOKEN_KEYS key {id:?} is not valid base64")]
    NotBase64 {
        id: String,
        #[source]
        source: base64::DecodeError,
    },
    #[error(
        "VPP_TOKEN_KEYS key {id:?} must be 32 bytes (AES-256), got {len}; \
         generate one with `openssl rand -base64 32`"
    )]
    WrongLength { id: String, len: usize },
    #[error("VPP_TOKEN_KEYS names key {0:?} twice")]
    Duplicate(String),
    #[error("VPP_TOKEN_KEYS holds no key")]
    NoKey,
}

pub struct TokenCipher {
    active: String,
    keys: HashMap<String, Aes256Gcm>,
}

impl fmt::Debug for TokenCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("TokenCipher")
            .field("active", &self.active)
            .field("key_ids", &ids)
            .finish()
    }
}

/// The AES-256-GCM cipher of one 32-byte key.
fn key_cipher(id: &str, key: &[u8]) -> Result<Aes256Gcm, KeySpecError> {
    Aes256Gcm::new_from_slice(key).map_err(|_| KeySpecError::WrongLength {
        id: id.to_owned(),
        len: key.len(),
    })
}

fn valid_key_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl TokenCipher {
    /// Parses `keyid:base64key[,…]`. Errors name the entry, never the key material.
    pub fn from_spec(spec: &str) -> Result<Self, KeySpecError> {
        let mut keys = HashMap::new();
        let mut active = None;
        for (i, entry) in spec
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (id, material) = entry
                .split_once(':')
                .ok_or(KeySpecError::Malformed(i + 1))?;
            if !valid_key_id(id) {
                return Err(KeySpecError::BadKeyId(i + 1));
            }
            let bytes: SecretSlice<u8> = STANDARD
                .decode(material.trim())
                .map_err(|source| KeySpecError::NotBase64 {
                    id: id.to_owned(),
                    source,
                })?
                .into();
            let cipher = key_cipher(id, bytes.expose_secret())?;
            if keys.insert(id.to_owned(), cipher).is_some() {
                return Err(KeySpecError::Duplicate(id.to_owned()));
            }
            active.get_or_insert_with(|| id.to_owned());
        }
        let active = active.ok_or(KeySpecError::NoKey)?;
        Ok(TokenCipher { active, keys })
    }

    /// A fresh random key (for `dev`): returns the cipher and its spec. `key_id` must be 1-32
    /// of `[A-Za-z0-9._-]`.
    pub fn generate(key_id: &str) -> Result<(Self, SecretString), KeySpecError> {
        if !valid_key_id(key_id) {
            return Err(KeySpecError::BadKeyId(1));
        }
        let key = SecretBox::<[u8; 32]>::init_with_mut(|key| rand::rng().fill_bytes(key));
        let spec = SecretString::from(format!("{key_id}:{}", STANDARD.encode(key.expose_secret())));
        let cipher = key_cipher(key_id, key.expose_secret())?;
        let keys = HashMap::from([(key_id.to_owned(), cipher)]);
        let active = key_id.to_owned();
        Ok((TokenCipher { active, keys }, spec))
    }

    pub fn active_key_id(&self) -> &str {
        &self.active
    }

    /// Encrypts `secret` with the active key, binding `aad` (the owning row's id).
    pub fn seal(&self, aad: &[u8], secret: &str) -> Sealed {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let cipher = &self.keys[&self.active];
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad,
                },
            )
            .unwrap_or_else(|_| unreachable!("AES-GCM encryption of a short message cannot fail"));
        Sealed {
            key_id: self.active.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// Decrypts a sealed sToken.
    pub fn open(&self, aad: &[u8], sealed: &Sealed) -> Result<SToken, CryptoError> {
        let text = self.open_text(aad, sealed)?;
        Ok(SToken::new(text))
    }

    /// Decrypts any sealed secret (a webhook signing secret) into a zeroed-on-drop string.
    pub fn open_secret(&self, aad: &[u8], sealed: &Sealed) -> Result<SecretString, CryptoError> {
        self.open_text(aad, sealed).map(SecretString::from)
    }

    fn open_text(&self, aad: &[u8], sealed: &Sealed) -> Result<String, CryptoError> {
        let cipher = self
            .keys
            .get(&sealed.key_id)
            .ok_or_else(|| CryptoError::UnknownKey(sealed.key_id.clone()))?;
        let nonce = Nonce::try_from(&sealed.nonce[..])
            .map_err(|_| CryptoError::Decrypt(sealed.key_id.clone()))?;
        let plain = cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Decrypt(sealed.key_id.clone()))?;
        String::from_utf8(plain).map_err(|_| CryptoError::Decrypt(sealed.key_id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ids: &[&str]) -> String {
        ids.iter()
            .map(|id| format!("{id}:{}", STANDARD.encode([id.len() as u8; 32])))
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn seal_and_open_round_trip_and_bind_the_row() {
        let c = TokenCipher::from_spec(&spec(&["k1"])).unwrap();
        let sealed = c.seal(b"account-1", "the-stoken");
        assert_eq!(sealed.key_id, "k1");
        assert_ne!(sealed.ciphertext, b"the-stoken");
        assert_eq!(
            c.open(b"account-1", &sealed).unwrap().expose(),
            "the-stoken"
        );
        // Another row's id does not open it; neither does a flipped bit.
        assert!(c.open(b"account-2", &sealed).is_err());
        let mut tampered = sealed.clone();
        tampered.ciphertext[0] ^= 1;
        assert!(c.open(b"account-1", &tampered).is_err());
        // Nonces are fresh.
        assert_ne!(c.seal(b"a", "x").nonce, c.seal(b"a", "x").nonce);
    }

    #[test]
    fn rotation_keeps_old_keys_readable() {
        let old = TokenCipher::from_spec(&spec(&["old"])).unwrap();
        let sealed = old.seal(b"row", "secret");
        let rotated = TokenCipher::from_spec(&spec(&["new", "old"])).unwrap();
        assert_eq!(rotated.active_key_id(), "new");
        assert_eq!(rotated.open(b"row", &sealed).unwrap().expose(), "secret");
        assert_eq!(rotated.seal(b"row", "secret").key_id, "new");
        let dropped = TokenCipher::from_spec(&spec(&["new"])).unwrap();
        assert_eq!(
            dropped.open(b"row", &sealed).unwrap_err(),
            CryptoError::UnknownKey("old".into())
        );
    }

    #[test]
    fn bad_specs_are_refused_without_echoing_keys() {
        for bad in [
            "",
            "nokey",
            "k1:not-base64!!",
            "k1:AAAA",
            "bad id:AAAA",
            &format!("{},{}", spec(&["a"]), spec(&["a"])),
        ] {
            let err = TokenCipher::from_spec(bad).unwrap_err().to_string();
            assert!(err.contains("VPP_TOKEN_KEYS"), "{err}");
            assert!(!err.contains("AAAA"), "{err}");
        }
        let (c, spec) = TokenCipher::generate("dev").unwrap();
        let spec = spec.expose_secret();
        assert!(spec.starts_with("dev:"));
        assert_eq!(c.active_key_id(), "dev");
        assert!(!format!("{c:?}").contains(&spec[4..]));
    }
}
