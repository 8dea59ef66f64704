//! CHAP with MD5 (RFC 1994, as used by RFC 7143 section 12.1.3).
//!
//! Response = MD5(identifier || secret || challenge). Secrets never appear in `Debug` output.

use std::fmt;

use md5::{Digest, Md5};

/// CHAP_A value for MD5, the only algorithm RFC 7143 requires and the only one we offer.
pub const ALGORITHM_MD5: &str = "5";
/// Length of the challenge we send: 16 bytes, the MD5 block of randomness RFC 1994 suggests.
pub const CHALLENGE_LEN: usize = 16;
/// Longest challenge we accept from an initiator (mutual CHAP). RFC 1994 allows any length;
/// 1024 bytes bounds the hash work and fits the 8192-byte large binary value in hex.
pub const PEER_CHALLENGE_LEN_MAX: usize = 1024;
/// Shortest configured secret: RFC 7143 (CHAP considerations) wants secrets of fewer than 96
/// random bits protected by IPsec against offline dictionary attacks; we run no IPsec, so we
/// insist on 12 bytes (a length check: randomness is the operator's duty).
pub const SECRET_LEN_MIN: usize = 12;
/// Longest configured secret (also a user name's limit): an ordinary text value's length.
pub const SECRET_LEN_MAX: usize = 255;
/// Length of an MD5 CHAP response.
pub const RESPONSE_LEN: usize = 16;

/// A CHAP secret. `Debug` prints `<redacted>` so a secret cannot leak into logs, and `==`
/// compares in constant time.
#[derive(Clone, Eq)]
pub struct ChapSecret(Vec<u8>);

impl PartialEq for ChapSecret {
    fn eq(&self, other: &ChapSecret) -> bool {
        self.same_as(other)
    }
}

impl ChapSecret {
    /// Wraps secret bytes (length is checked by [`super::LoginConfig::check`]).
    pub fn new(secret: impl Into<Vec<u8>>) -> ChapSecret {
        ChapSecret(secret.into())
    }

    /// The secret's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares two secrets in constant time (for a given length).
    pub fn same_as(&self, other: &ChapSecret) -> bool {
        constant_time_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for ChapSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChapSecret(<redacted>)")
    }
}

/// A CHAP user name (CHAP_N) and secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChapCredentials {
    /// CHAP_N.
    pub user: String,
    /// The shared secret.
    pub secret: ChapSecret,
}

/// CHAP configuration for a target or for discovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChapAuth {
    /// What the initiator must prove it knows (one-way CHAP).
    pub initiator: ChapCredentials,
    /// What the target proves when the initiator asks (mutual CHAP); `None` refuses mutual.
    pub target: Option<ChapCredentials>,
}

/// MD5(identifier || secret || challenge).
pub fn response(identifier: u8, secret: &ChapSecret, challenge: &[u8]) -> [u8; RESPONSE_LEN] {
    let mut hasher = Md5::new();
    hasher.update([identifier]);
    hasher.update(&secret.0);
    hasher.update(challenge);
    hasher.finalize().into()
}

/// Whether `received` is the right response, compared in constant time so the comparison
/// leaks nothing about how many leading bytes matched.
pub fn verify(identifier: u8, secret: &ChapSecret, challenge: &[u8], received: &[u8]) -> bool {
    constant_time_eq(&response(identifier, secret, challenge), received)
}

/// Constant time for equal lengths; lengths themselves are not secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimizer from turning the fold into an early-exit comparison.
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_is_md5_of_id_secret_challenge() {
        // MD5 of the concatenation, computed by hand through the same crate's one-shot API.
        let secret = ChapSecret::new(b"secretsecret".to_vec());
        let mut input = vec![7u8];
        input.extend_from_slice(b"secretsecret");
        input.extend_from_slice(&[1, 2, 3]);
        let expected: [u8; 16] = Md5::digest(&input).into();
        assert_eq!(response(7, &secret, &[1, 2, 3]), expected);
        assert!(verify(7, &secret, &[1, 2, 3], &expected));
        assert!(!verify(8, &secret, &[1, 2, 3], &expected));
        assert!(!verify(7, &secret, &[1, 2, 3], &expected[..15]));
    }

    #[test]
    fn rfc_1321_vector() {
        // MD5("abc") = 900150983cd24fb0d6963f7d28e17f72: id 'a', secret "b", challenge "c".
        let got = response(b'a', &ChapSecret::new(b"b".to_vec()), b"c");
        assert_eq!(
            crate::login::text::hex_value(&got),
            "0x900150983cd24fb0d6963f7d28e17f72"
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let credentials = ChapCredentials {
            user: "alice".into(),
            secret: ChapSecret::new("hunter2hunter2"),
        };
        let shown = format!("{credentials:?}");
        assert!(shown.contains("alice"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
