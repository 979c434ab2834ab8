//! `--jwt-secret FILE`: who may read (and so advance) a user's feed.
//!
//! Every `/feed/{id}` must carry `Authorization: Bearer <JWT>`, a JSON Web
//! Token (RFC 7519) signed HS256 with the file's secret, whose `sub` is the
//! decimal user id and whose `exp` is in the future: the tokens gateways
//! already mint. The algorithm is pinned: the header must say
//! `"alg":"HS256"` (`none` and every other algorithm are refused), and the
//! signature is checked with `hmac`'s constant-time comparison before any
//! claim is read. A refused request changes no progress: the check runs
//! before the store is asked.
//!
//! A connection keeps the last token that passed ([`TokenCache`]): a
//! keep-alive client repeating its token pays for the signature once; only
//! `exp` is checked again.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Largest token accepted: a gateway's token is a few hundred bytes.
const MAX_TOKEN: usize = 4096;

/// Why a request's token was refused with `401`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// No `Authorization` header, or not `Bearer`.
    Missing,
    /// Not three base64url parts of JSON, or a claim of the wrong type.
    Malformed,
    /// `alg` is not `HS256` (or the header has `crit`).
    Algorithm,
    /// The signature does not match the secret.
    Signature,
    /// `exp` is missing or not in the future, or `nbf` is.
    Expired,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `401` with `WWW-Authenticate: Bearer`.
    Unauthorized(Problem),
    /// `403`: a valid token, for another user.
    Forbidden,
}

/// What a valid token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// `sub` as a user id; `None`: a `sub` that is no user id (valid, but
    /// for no feed).
    pub user: Option<u32>,
    /// `exp`, seconds since the epoch.
    pub expires: u64,
}

/// Checks tokens against one secret. Shared by every connection.
pub struct Verifier {
    /// Keyed once: each check clones it instead of hashing the key again.
    mac: HmacSha256,
}

#[derive(serde::Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: std::borrow::Cow<'a, str>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct Claims<'a> {
    #[serde(borrow)]
    sub: Option<std::borrow::Cow<'a, str>>,
    exp: Option<f64>,
    nbf: Option<f64>,
}

impl Verifier {
    /// The secret is the file's bytes, without a final line ending.
    pub fn from_file(path: &Path) -> Result<Verifier, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("--jwt-secret {}: cannot read: {e}", path.display()))?;
        let secret = bytes
            .strip_suffix(b"\n")
            .map(|s| s.strip_suffix(b"\r").unwrap_or(s))
            .unwrap_or(&bytes);
        if secret.is_empty() {
            return Err(format!(
                "--jwt-secret {}: the file is empty: put the HS256 secret in it",
                path.display()
            ));
        }
        Ok(Verifier::new(secret))
    }

    pub fn new(secret: &[u8]) -> Verifier {
        Verifier {
            mac: HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length"),
        }
    }

    /// Checks a compact JWT at `now` (seconds since the epoch).
    pub fn verify(&self, token: &[u8], now: u64) -> Result<Grant, Problem> {
        use Problem::*;
        if token.len() > MAX_TOKEN {
            return Err(Malformed);
        }
        let mut parts = token.split(|&b| b == b'.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Malformed);
        };
        let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| Malformed)?;
        let header: Header = serde_json::from_slice(&header).map_err(|_| Malformed)?;
        if header.alg != "HS256" || header.crit.is_some() {
            return Err(Algorithm);
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| Malformed)?;
        let signed = &token[..token.len() - signature_len(token)];
        let mut mac = self.mac.clone();
        mac.update(signed);
        mac.verify_slice(&signature).map_err(|_| Signature)?;
        // Signed by the secret's holder: now the claims may be read.
        let claims = URL_SAFE_NO_PAD.decode(claims).map_err(|_| Malformed)?;
        let claims: Claims = serde_json::from_slice(&claims).map_err(|_| Malformed)?;
        let expires = match claims.exp {
            Some(exp) if exp.is_finite() && exp > now as f64 => exp as u64,
            _ => return Err(Expired),
        };
        if claims.nbf.is_some_and(|nbf| nbf > now as f64) {
            return Err(Expired);
        }
        let user = claims
            .sub
            .and_then(|s| crate::decimal::parse_u32(s.as_bytes()).ok());
        Ok(Grant { user, expires })
    }
}

/// Bytes of the `.signature` part at the end of a token that has three
/// parts (the dot included).
fn signature_len(token: &[u8]) -> usize {
    token.len() - memchr::memrchr(b'.', token).expect("three parts")
}

/// The token from an `Authorization` header value: `Bearer <token>`
/// (scheme case-insensitive, RFC 9110).
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, token) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !token.first()?.is_ascii_whitespace() {
        return None;
    }
    Some(token.trim_ascii_start()).filter(|t| !t.is_empty())
}

/// One connection's last accepted token. Empty (and allocation-free) until
/// a connection sends one.
#[derive(Default)]
pub struct TokenCache {
    token: Vec<u8>,
    grant: Option<Grant>,
}

impl TokenCache {
    /// May the request with this `Authorization` header value read `user`'s
    /// feed?
    pub fn check(
        &mut self,
        verifier: &Verifier,
        authorization: Option<&[u8]>,
        user: u32,
    ) -> Result<(), Refusal> {
        let token = authorization
            .and_then(bearer)
            .ok_or(Refusal::Unauthorized(Problem::Missing))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let grant = match self.grant {
            // The same bytes as a token that passed on this connection: its
            // signature holds; only time moved.
            Some(grant) if self.token == token => {
                if grant.expires <= now {
                    return Err(Refusal::Unauthorized(Problem::Expired));
                }
                grant
            }
            _ => {
                self.grant = None;
                let grant = verifier.verify(token, now).map_err(Refusal::Unauthorized)?;
                self.token.clear();
                self.token.extend_from_slice(token);
                self.grant = Some(grant);
                grant
            }
        };
        if grant.user == Some(user) {
            Ok(())
        } else {
            Err(Refusal::Forbidden)
        }
    }

    /// Full checks made on this connection (test builds: the cache works).
    #[cfg(any(test, feature = "testing"))]
    pub fn holds(&self, token: &[u8]) -> bool {
        self.grant.is_some() && self.token == token
    }
}

/// Mints an HS256 token (tests, benchmarks): `header` and `claims` are the
/// JSON texts.
pub fn sign(secret: &[u8], header: &str, claims: &str) -> String {
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = HmacSha256::new_from_slice(secret).expect("any key length");
    mac.update(signed.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signed}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test secret";
    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
    const NOW: u64 = 1_800_000_000;

    fn token(header: &str, claims: &str) -> String {
        sign(SECRET, header, claims)
    }

    fn check(t: &str) -> Result<Grant, Problem> {
        Verifier::new(SECRET).verify(t.as_bytes(), NOW)
    }

    #[test]
    fn a_valid_token_grants_its_user() {
        let t = token(HS256, r#"{"sub":"42","exp":1800000100}"#);
        assert_eq!(
            check(&t),
            Ok(Grant {
                user: Some(42),
                expires: 1_800_000_100
            })
        );
        let t = token(r#"{"alg":"HS256"}"#, r#"{"sub":"x","exp":1.9e9,"iat":1}"#);
        assert_eq!(check(&t).unwrap().user, None, "a sub that is no user id");
    }

    #[test]
    fn refusals() {
        use Problem::*;
        let claims = r#"{"sub":"42","exp":1800000100}"#;
        let good = token(HS256, claims);
        let (signed, _) = good.rsplit_once('.').unwrap();
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let other_key = sign(b"another secret", HS256, claims);
        let cases: Vec<(String, Problem)> = vec![
            ("".into(), Malformed),
            ("a.b".into(), Malformed),
            (format!("{good}.x"), Malformed),
            (format!("{signed}.!!!"), Malformed),
            (none, Algorithm),
            (token(r#"{"alg":"HS512"}"#, claims), Algorithm),
            (token(r#"{"alg":"hs256"}"#, claims), Algorithm),
            (token(r#"{"alg":"HS256","crit":["x"]}"#, claims), Algorithm),
            (token(r#"{"typ":"JWT"}"#, claims), Malformed),
            (other_key, Signature),
            (format!("{signed}.{}", "A".repeat(43)), Signature),
            (token(HS256, r#"{"sub":"42"}"#), Expired),
            (token(HS256, r#"{"sub":"42","exp":1800000000}"#), Expired),
            (token(HS256, r#"{"sub":"42","exp":"soon"}"#), Malformed),
            (
                token(HS256, r#"{"sub":"42","exp":1800000100,"nbf":1800000050}"#),
                Expired,
            ),
            (token(HS256, "[1]"), Malformed),
        ];
        for (t, want) in cases {
            assert_eq!(check(&t), Err(want), "{t}");
        }
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc "), Some(&b"abc"[..]));
        for bad in [&b"Basic abc"[..], b"Bearer", b"Bearer ", b"Bearerabc", b""] {
            assert_eq!(bearer(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_connection_pays_once_for_a_repeated_token() {
        let v = Verifier::new(SECRET);
        let far = 4_000_000_000u64;
        let t = token(HS256, &format!(r#"{{"sub":"7","exp":{far}}}"#));
        let header = format!("Bearer {t}");
        let mut cache = TokenCache::default();
        assert_eq!(cache.check(&v, Some(header.as_bytes()), 7), Ok(()));
        assert!(cache.holds(t.as_bytes()));
        assert_eq!(
            cache.check(&v, Some(header.as_bytes()), 8),
            Err(Refusal::Forbidden)
        );
        assert_eq!(
            cache.check(&v, None, 7),
            Err(Refusal::Unauthorized(Problem::Missing))
        );
        let bad = format!("Bearer {}x", t);
        assert_eq!(
            cache.check(&v, Some(bad.as_bytes()), 7),
            Err(Refusal::Unauthorized(Problem::Signature))
        );
        assert!(!cache.holds(t.as_bytes()), "a failed check forgets");
        let expired = token(HS256, r#"{"sub":"7","exp":1000}"#);
        assert_eq!(
            cache.check(&v, Some(format!("Bearer {expired}").as_bytes()), 7),
            Err(Refusal::Unauthorized(Problem::Expired))
        );
    }
}
