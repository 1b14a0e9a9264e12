//! Standard Webhooks signatures (rule N6): `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{webhook-id}.{webhook-timestamp}.{body}">`, keyed by the secret's bytes (the base64 after
//! `whsec_`). During a rotation's overlap the header lists both signatures, space-separated, so
//! a receiver holding either secret accepts the message.
//!
//! HMAC (RFC 2104) is written out over `sha2` (already a dependency) rather than adding a crate;
//! the tests check it against RFC 4231's vectors, and the integration tests verify our headers
//! with the independent `standardwebhooks` crate.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::{Digest, Sha256};

/// The prefix of every secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a new secret.
const SECRET_BYTES: usize = 32;

/// A fresh `whsec_…` secret.
pub fn new_secret() -> SecretString {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let secret = SecretString::from(format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes)));
    bytes.fill(0);
    secret
}

/// The signing key of a `whsec_…` secret (its decoded bytes); `None` if it is not one.
pub fn key(secret: &SecretString) -> Option<SecretSlice<u8>> {
    let text = secret.expose_secret();
    let b64 = text.strip_prefix(SECRET_PREFIX)?;
    STANDARD.decode(b64).ok().map(SecretSlice::from)
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for part in message {
        inner.update(part);
    }
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    block.fill(0);
    outer.finalize().into()
}

/// One `v1,<base64>` signature of a message.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = hmac_sha256(key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", STANDARD.encode(mac))
}

/// The `webhook-signature` header: one signature per key, space-separated.
pub fn signature_header(keys: &[SecretSlice<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| sign(k.expose_secret(), id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        let mac = hmac_sha256(
            &[0xaa; 131],
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn secrets_are_whsec_and_decode_to_their_key() {
        let s = new_secret();
        assert!(s.expose_secret().starts_with(SECRET_PREFIX));
        assert_eq!(key(&s).unwrap().expose_secret().len(), SECRET_BYTES);
        assert_ne!(new_secret().expose_secret(), s.expose_secret());
        assert!(key(&SecretString::from("nope")).is_none());
    }

    #[test]
    fn the_standard_webhooks_example_signature() {
        // The example of the Standard Webhooks specification's reference libraries.
        let secret = SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let k = key(&secret).unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(
                k.expose_secret(),
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                body
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let two = signature_header(&[k, key(&secret).unwrap()], "id", 1, b"x");
        assert_eq!(two.split(' ').count(), 2);
    }
}
