//! `X-Hub-Signature-256`: `sha256=<hex HMAC-SHA256(app_secret, raw body bytes)>`.
//!
//! Checked over the exact bytes received, before any parsing, and compared in constant time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header Meta signs posts with.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
const PREFIX: &str = "sha256=";
const DIGEST_HEX_LEN: usize = 64;

/// Why a post's signature was refused. None of these carries the header's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    #[error("the X-Hub-Signature-256 header is missing")]
    Missing,
    /// Not `sha256=` (a legacy `sha1=` is not accepted).
    #[error("the signature is not of the form sha256=<hex>")]
    UnsupportedAlgorithm,
    /// Not 64 hex digits.
    #[error("the signature is not {DIGEST_HEX_LEN} hex digits")]
    WrongLength,
    /// Not hex.
    #[error("the signature is not hexadecimal")]
    MalformedHex,
    /// The HMAC does not match the body.
    #[error("the signature does not match the body")]
    Mismatch,
    /// The app secret cannot key an HMAC.
    #[error("the app secret cannot key an HMAC")]
    UnusableSecret,
}

/// Checks `header` (the `X-Hub-Signature-256` value, if any) against `body`.
pub fn verify_signature(
    app_secret: &[u8],
    header: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header
        .strip_prefix(PREFIX)
        .ok_or(SignatureError::UnsupportedAlgorithm)?;
    if hex_digest.len() != DIGEST_HEX_LEN {
        return Err(SignatureError::WrongLength);
    }
    let expected = hex::decode(hex_digest).map_err(|_| SignatureError::MalformedHex)?;
    let mut mac = new_mac(app_secret)?;
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// The header value Meta would send for `body`; for the sandbox's sender and for tests.
pub fn sign(app_secret: &[u8], body: &[u8]) -> Result<String, SignatureError> {
    let mut mac = new_mac(app_secret)?;
    mac.update(body);
    Ok(format!(
        "{PREFIX}{}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

fn new_mac(key: &[u8]) -> Result<Hmac<Sha256>, SignatureError> {
    // HMAC takes keys of any length, so this does not fail in practice; the error path
    // exists because the trait's signature allows it.
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).map_err(|_| SignatureError::UnusableSecret)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"key";
    const BODY: &[u8] = b"The quick brown fox jumps over the lazy dog";
    // HMAC-SHA256("key", BODY), the widely published vector (RFC 4231 style), computed
    // independently of this code.
    const GOOD: &str = "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8";

    #[test]
    fn accepts_the_published_vector() {
        assert_eq!(verify_signature(SECRET, Some(GOOD), BODY), Ok(()));
        assert_eq!(sign(SECRET, BODY).unwrap(), GOOD);
    }

    #[test]
    fn accepts_upper_case_hex() {
        let upper = format!("sha256={}", GOOD[7..].to_uppercase());
        assert_eq!(verify_signature(SECRET, Some(&upper), BODY), Ok(()));
    }

    #[test]
    fn refuses_tampered_bodies() {
        let mut tampered = BODY.to_vec();
        tampered[4] ^= 0x01;
        assert_eq!(
            verify_signature(SECRET, Some(GOOD), &tampered),
            Err(SignatureError::Mismatch)
        );
        let mut longer = BODY.to_vec();
        longer.push(b' ');
        assert_eq!(
            verify_signature(SECRET, Some(GOOD), &longer),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(SECRET, Some(GOOD), b""),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn refuses_another_secret() {
        assert_eq!(
            verify_signature(b"other", Some(GOOD), BODY),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn refuses_every_malformed_header() {
        let hex = &GOOD[7..];
        let cases: Vec<(Option<String>, SignatureError)> = vec![
            (None, SignatureError::Missing),
            (Some(String::new()), SignatureError::UnsupportedAlgorithm),
            (Some(hex.to_string()), SignatureError::UnsupportedAlgorithm),
            (
                Some(format!("sha1={}", &hex[..40])),
                SignatureError::UnsupportedAlgorithm,
            ),
            (
                Some(format!("SHA256={hex}")),
                SignatureError::UnsupportedAlgorithm,
            ),
            (
                Some(format!(" sha256={hex}")),
                SignatureError::UnsupportedAlgorithm,
            ),
            (
                Some(format!("sha512={hex}{hex}")),
                SignatureError::UnsupportedAlgorithm,
            ),
            (Some("sha256=".into()), SignatureError::WrongLength),
            (
                Some(format!("sha256={}", &hex[..63])),
                SignatureError::WrongLength,
            ),
            (Some(format!("sha256={hex}0")), SignatureError::WrongLength),
            (Some(format!("sha256={hex} ")), SignatureError::WrongLength),
            (
                Some(format!("sha256={}zz", &hex[..62])),
                SignatureError::MalformedHex,
            ),
            (
                Some(format!("sha256={}é", &hex[..62])),
                SignatureError::MalformedHex,
            ),
            (
                Some(format!("sha256={}", "0".repeat(64))),
                SignatureError::Mismatch,
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(
                verify_signature(SECRET, header.as_deref(), BODY),
                Err(expected),
                "header {header:?}"
            );
        }
    }
}
