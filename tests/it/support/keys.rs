//! Signing material for tests: an HS256 secret and freshly generated RSA and P-256 key pairs,
//! so every JWT in the suite is really signed and really verified.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "vpp-broker-test";
pub const HS_SECRET: &str = "test-secret-that-is-at-least-32-bytes-long!";

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// An asymmetric key pair as PEM (private for signing, public for the service).
pub struct KeyPairPem {
    pub alg: Algorithm,
    pub private_pem: String,
    pub public_pem: String,
    /// For EC keys: the JWK of the public key.
    pub jwk: Option<Value>,
}

pub fn rsa() -> KeyPairPem {
    let kp = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).expect("rsa keygen");
    let private_der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp).expect("pkcs8");
    let public_der = kp.public_key().as_der().expect("spki");
    KeyPairPem {
        alg: Algorithm::RS256,
        private_pem: pem("PRIVATE KEY", private_der.as_ref()),
        public_pem: pem("PUBLIC KEY", public_der.as_ref()),
        jwk: None,
    }
}

pub fn ec(kid: &str) -> KeyPairPem {
    let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("ec keygen");
    let private_der = kp.to_pkcs8v1().expect("pkcs8");
    let public_der = kp.public_key().as_der().expect("spki");
    let point = kp.public_key().as_ref().to_vec(); // 0x04 || x || y
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    KeyPairPem {
        alg: Algorithm::ES256,
        private_pem: pem("PRIVATE KEY", private_der.as_ref()),
        public_pem: pem("PUBLIC KEY", public_der.as_ref()),
        jwk: Some(jwk),
    }
}

/// Claims of a well-formed token, for tests to tweak before signing.
pub fn claims(scope: &str, spaces: &[&str]) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "test-caller",
        "scope": scope, "spaces": spaces,
        "iat": now, "nbf": now - 5, "exp": now + 600,
    })
}

pub fn sign_hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .expect("sign")
}

pub fn sign_with(key: &KeyPairPem, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = kid.map(str::to_owned);
    let encoding = match key.alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(key.private_pem.as_bytes()),
        _ => EncodingKey::from_ec_pem(key.private_pem.as_bytes()),
    }
    .expect("encoding key");
    jsonwebtoken::encode(&header, claims, &encoding).expect("sign")
}

/// A token with `alg: none` and no signature (must always be refused).
pub fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{body}.")
}
