//! An issuer's signing keys: the JWKS document, key selection by `kid`, OIDC discovery documents,
//! and the cache that decides, as a pure function of time, when the keys may be fetched again.

use std::{fmt, sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jiff::{SignedDuration, Timestamp};
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm},
};
use serde_json::Value;
use thiserror::Error;

use super::{IdentityError, quote};

/// Smallest RSA modulus accepted from a key set (NIST SP 800-131A: 2048 bits).
pub const MIN_RSA_BITS: usize = 2048;

/// What kind of public key a JWK holds, which decides the algorithms it can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa { bits: usize },
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this kind can verify `alg`.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Self::Rsa { .. } => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Self::P256 => alg == ES256,
            Self::P384 => alg == ES384,
            Self::Ed25519 => alg == EdDSA,
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rsa { bits } => write!(f, "an RSA-{bits} key"),
            Self::P256 => f.write_str("a P-256 key"),
            Self::P384 => f.write_str("a P-384 key"),
            Self::Ed25519 => f.write_str("an Ed25519 key"),
        }
    }
}

/// One usable signature key of a key set.
#[derive(Clone, Debug)]
pub struct VerificationKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The algorithm the JWK pins itself to (`alg`), if it does.
    pub alg: Option<Algorithm>,
    key: DecodingKey,
}

impl VerificationKey {
    pub(super) fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }

    fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }

    fn describe(&self) -> String {
        match self.alg {
            Some(alg) => format!("{} pinned to {alg:?}", self.kind),
            None => self.kind.to_string(),
        }
    }
}

/// Why a JWKS document cannot be used.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("the key set is not JSON: {0}")]
    NotJson(String),
    #[error("the document is not a key set: it has no \"keys\" array")]
    NotAKeySet,
    #[error("the key set has no usable signature key{}", if .skipped.is_empty() { String::new() } else { format!(" ({})", .skipped.join("; ")) })]
    NoUsableKeys { skipped: Vec<String> },
}

/// The public keys of one issuer, parsed from its JWKS document (RFC 7517).
///
/// Only signature keys (RSA of at least [`MIN_RSA_BITS`], P-256, P-384, Ed25519) are kept. Keys for
/// encryption, symmetric (`oct`) keys, and keys this gateway cannot use are skipped and listed in
/// [`skipped`](Self::skipped): an IdP often publishes some, and one odd key must not make the whole
/// set unusable.
#[derive(Clone, Debug, Default)]
pub struct Jwks {
    keys: Vec<VerificationKey>,
    skipped: Vec<String>,
}

impl Jwks {
    /// Parses a JWKS document.
    pub fn from_json(text: &str) -> Result<Self, JwksError> {
        let document: Value =
            serde_json::from_str(text).map_err(|e| JwksError::NotJson(e.to_string()))?;
        let Some(raw_keys) = document.get("keys").and_then(Value::as_array) else {
            return Err(JwksError::NotAKeySet);
        };
        let mut set = Self::default();
        for (index, raw) in raw_keys.iter().enumerate() {
            match parse_key(raw) {
                Ok(key) => set.keys.push(key),
                Err(why) => {
                    let name = match raw.get("kid").and_then(Value::as_str) {
                        Some(kid) => format!("key {:?}", quote(kid)),
                        None => format!("keys[{index}]"),
                    };
                    set.skipped.push(format!("{name}: {why}"));
                }
            }
        }
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKeys {
                skipped: set.skipped,
            });
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[VerificationKey] {
        &self.keys
    }

    /// The keys that were left out, and why.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Whether some key has this `kid`.
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The key that verifies a token with header `kid` and algorithm `alg`.
    ///
    /// A token without `kid` is accepted only when exactly one key of the set fits its algorithm: with
    /// several candidates, trying each would let a token pick its key.
    pub fn select(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<&VerificationKey, IdentityError> {
        match kid {
            Some(kid) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .peekable();
                let Some(first) = named.peek().copied() else {
                    return Err(IdentityError::UnknownKid {
                        kid: Some(quote(kid)),
                    });
                };
                named
                    .find(|k| k.accepts(alg))
                    .ok_or_else(|| IdentityError::KeyAlgorithmMismatch {
                        kid: quote(kid),
                        alg,
                        key: first.describe(),
                    })
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.accepts(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(only), None) => Ok(only),
                    _ => Err(IdentityError::UnknownKid { kid: None }),
                }
            }
        }
    }
}

fn parse_key(raw: &Value) -> Result<VerificationKey, String> {
    if raw.get("kty").and_then(Value::as_str) == Some("oct") {
        return Err("symmetric (oct) keys are never taken from a key set".into());
    }
    if let Some(key_use) = raw.get("use")
        && key_use.as_str() != Some("sig")
    {
        return Err(format!("use {key_use} is not \"sig\""));
    }
    if let Some(ops) = raw.get("key_ops")
        && !ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")))
    {
        return Err("key_ops does not include \"verify\"".into());
    }
    let jwk: Jwk = serde_json::from_value(raw.clone())
        .map_err(|_| "not a JWK this gateway understands".to_owned())?;
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let n = URL_SAFE_NO_PAD
                .decode(&rsa.n)
                .map_err(|_| "modulus n is not base64url".to_owned())?;
            let bits = significant_bits(&n);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "RSA modulus of {bits} bits is shorter than {MIN_RSA_BITS}"
                ));
            }
            KeyKind::Rsa { bits }
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            let (kind, size) = match ec.curve {
                EllipticCurve::P256 => (KeyKind::P256, 32),
                EllipticCurve::P384 => (KeyKind::P384, 48),
                ref other => return Err(format!("curve {} is not supported", curve_name(other))),
            };
            for (name, coordinate) in [("x", &ec.x), ("y", &ec.y)] {
                let bytes = URL_SAFE_NO_PAD
                    .decode(coordinate)
                    .map_err(|_| format!("{name} is not base64url"))?;
                if bytes.len() != size {
                    return Err(format!(
                        "{name} has {} bytes, the curve needs {size}",
                        bytes.len()
                    ));
                }
            }
            kind
        }
        AlgorithmParameters::OctetKeyPair(okp) => {
            if okp.curve != EllipticCurve::Ed25519 {
                return Err(format!("curve {} is not supported", curve_name(&okp.curve)));
            }
            let x = URL_SAFE_NO_PAD
                .decode(&okp.x)
                .map_err(|_| "x is not base64url".to_owned())?;
            if x.len() != 32 {
                return Err(format!("x has {} bytes, Ed25519 needs 32", x.len()));
            }
            KeyKind::Ed25519
        }
        _ => return Err("key type is not RSA, EC or OKP".into()),
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(pinned) => Some(signature_algorithm(pinned).ok_or_else(|| {
            format!("alg {pinned:?} is not a signature algorithm this gateway supports")
        })?),
    };
    if let Some(alg) = alg
        && !kind.fits(alg)
    {
        return Err(format!("{kind} cannot verify its own alg {alg:?}"));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok(VerificationKey {
        kid: jwk.common.key_id.clone(),
        kind,
        alg,
        key,
    })
}

/// The curve's JOSE name (`P-521`), as the key set wrote it.
fn curve_name(curve: &EllipticCurve) -> String {
    serde_json::to_value(curve)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{curve:?}"))
}

fn signature_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    use Algorithm as A;
    Some(match alg {
        KeyAlgorithm::ES256 => A::ES256,
        KeyAlgorithm::ES384 => A::ES384,
        KeyAlgorithm::RS256 => A::RS256,
        KeyAlgorithm::RS384 => A::RS384,
        KeyAlgorithm::RS512 => A::RS512,
        KeyAlgorithm::PS256 => A::PS256,
        KeyAlgorithm::PS384 => A::PS384,
        KeyAlgorithm::PS512 => A::PS512,
        KeyAlgorithm::EdDSA => A::EdDSA,
        _ => return None,
    })
}

/// Bit length of a big-endian unsigned integer.
fn significant_bits(bytes: &[u8]) -> usize {
    match bytes.iter().position(|b| *b != 0) {
        None => 0,
        Some(first) => (bytes.len() - first) * 8 - bytes[first].leading_zeros() as usize,
    }
}

/// The parts of an OIDC discovery document (`/.well-known/openid-configuration`) the agent uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    /// `id_token_signing_alg_values_supported`, for a warning when it and the configured algorithms
    /// have nothing in common.
    pub signing_algorithms: Vec<String>,
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DiscoveryError {
    #[error("the discovery document is not a JSON object")]
    NotJson,
    #[error("the discovery document has no {0}")]
    Missing(&'static str),
    #[error(
        "the discovery document names issuer {found:?}, not the configured {expected:?}; \
         they must match exactly (OpenID Connect Discovery 1.0, section 4.3)"
    )]
    IssuerMismatch { expected: String, found: String },
    #[error("jwks_uri {0:?} is not an https URL")]
    InsecureJwksUri(String),
}

impl Discovery {
    /// Where the discovery document of `issuer` lives.
    pub fn url_for(issuer: &str) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        )
    }

    /// Parses a discovery document fetched for `expected_issuer`.
    pub fn from_json(text: &str, expected_issuer: &str) -> Result<Self, DiscoveryError> {
        let document: serde_json::Map<String, Value> =
            serde_json::from_str(text).map_err(|_| DiscoveryError::NotJson)?;
        let string = |name: &'static str| {
            document
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or(DiscoveryError::Missing(name))
        };
        let issuer = string("issuer")?;
        if issuer != expected_issuer {
            return Err(DiscoveryError::IssuerMismatch {
                expected: expected_issuer.to_owned(),
                found: quote(&issuer),
            });
        }
        let jwks_uri = string("jwks_uri")?;
        if !jwks_uri.starts_with("https://") {
            return Err(DiscoveryError::InsecureJwksUri(quote(&jwks_uri)));
        }
        let signing_algorithms = document
            .get("id_token_signing_alg_values_supported")
            .and_then(Value::as_array)
            .map(|algs| {
                algs.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            issuer,
            jwks_uri,
            signing_algorithms,
        })
    }
}

/// How often a [`KeyCache`] may go to the IdP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyCachePolicy {
    /// Regular refresh, to pick up rotated keys ahead of their use.
    pub refresh_interval: Duration,
    /// Shortest gap between two fetches, whatever asks for them: a flood of tokens with made-up
    /// `kid`s must not turn into a flood of requests to the IdP.
    pub min_refresh_interval: Duration,
    /// After failures the gap doubles, up to this.
    pub max_failure_backoff: Duration,
}

impl Default for KeyCachePolicy {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(3600),
            min_refresh_interval: Duration::from_secs(30),
            max_failure_backoff: Duration::from_secs(300),
        }
    }
}

/// Whether a fetch may start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshDecision {
    /// Fetch now.
    Now,
    /// Not before this time (rate limit, back-off, or simply not due).
    NotBefore(Timestamp),
}

/// The last good key set of one issuer, and the bookkeeping that rate-limits fetching it.
///
/// The I/O side asks [`on_unknown_kid`](Self::on_unknown_kid) or [`periodic`](Self::periodic),
/// calls [`start_refresh`](Self::start_refresh) when it goes, and reports
/// [`refresh_succeeded`](Self::refresh_succeeded) or [`refresh_failed`](Self::refresh_failed).
/// A failed fetch never drops the keys: during an IdP outage, tokens signed with known keys keep
/// validating.
#[derive(Clone, Debug)]
pub struct KeyCache {
    policy: KeyCachePolicy,
    keys: Option<Arc<Jwks>>,
    fetched_at: Option<Timestamp>,
    last_attempt: Option<Timestamp>,
    consecutive_failures: u32,
    last_error: Option<String>,
}

impl KeyCache {
    pub fn new(policy: KeyCachePolicy) -> Self {
        Self {
            policy,
            keys: None,
            fetched_at: None,
            last_attempt: None,
            consecutive_failures: 0,
            last_error: None,
        }
    }

    /// The last good key set, if any fetch ever succeeded.
    pub fn keys(&self) -> Option<Arc<Jwks>> {
        self.keys.clone()
    }

    pub fn fetched_at(&self) -> Option<Timestamp> {
        self.fetched_at
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Earliest time the next fetch may start: the minimum gap after the last attempt, doubled per
    /// consecutive failure up to the maximum back-off.
    pub fn earliest_attempt(&self) -> Option<Timestamp> {
        let last = self.last_attempt?;
        let doublings = self.consecutive_failures.min(16);
        let gap = self
            .policy
            .min_refresh_interval
            .saturating_mul(1 << doublings)
            .min(self.policy.max_failure_backoff)
            .max(self.policy.min_refresh_interval);
        Some(add(last, gap))
    }

    /// A token names a `kid` the cached set lacks (perhaps the IdP rotated its keys): may we fetch?
    pub fn on_unknown_kid(&self, now: Timestamp) -> RefreshDecision {
        match self.earliest_attempt() {
            Some(earliest) if now < earliest => RefreshDecision::NotBefore(earliest),
            _ => RefreshDecision::Now,
        }
    }

    /// Is the regular refresh due? Immediately when there are no keys yet (within the rate limit).
    pub fn periodic(&self, now: Timestamp) -> RefreshDecision {
        let due = match self.fetched_at {
            Some(fetched) if self.keys.is_some() => add(fetched, self.policy.refresh_interval),
            _ => now,
        };
        let at = match self.earliest_attempt() {
            Some(earliest) => due.max(earliest),
            None => due,
        };
        if now >= at {
            RefreshDecision::Now
        } else {
            RefreshDecision::NotBefore(at)
        }
    }

    /// A fetch starts at `now`.
    pub fn start_refresh(&mut self, now: Timestamp) {
        self.last_attempt = Some(now);
    }

    /// The fetch brought `keys`.
    pub fn refresh_succeeded(&mut self, keys: Jwks, now: Timestamp) {
        self.keys = Some(Arc::new(keys));
        self.fetched_at = Some(now);
        self.last_attempt = Some(self.last_attempt.map_or(now, |t| t.max(now)));
        self.consecutive_failures = 0;
        self.last_error = None;
    }

    /// The fetch failed; the last good keys stay.
    pub fn refresh_failed(&mut self, error: impl Into<String>, now: Timestamp) {
        self.last_attempt = Some(self.last_attempt.map_or(now, |t| t.max(now)));
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_error = Some(error.into());
    }
}

fn add(at: Timestamp, duration: Duration) -> Timestamp {
    let duration = SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX);
    at.saturating_add(duration).unwrap_or(at)
}
