//! Who is asking: OpenID Connect ID tokens (JWTs) checked against an issuer's keys and mapped to an
//! [`Identity`].
//!
//! Everything here is pure. [`validate`] takes the token, the issuer's settings, the issuer's current
//! key set and the time, and answers with an identity or one named reason ([`IdentityError`], with a
//! stable snake_case [`code`](IdentityError::code)); it never echoes the token. Fetching keys (OIDC
//! discovery and the JWKS over HTTPS) is I/O and lives at the edge: [`KeyCache`] holds what that I/O
//! brought back and decides, as a function of time, when it may go out again.
//!
//! Signatures are checked by `jsonwebtoken` (aws-lc-rs). The header is read here rather than by
//! `jsonwebtoken::decode_header` so that `alg: none`, HMAC on an asymmetric issuer and unknown
//! algorithms each get their own reason instead of one "invalid token"; the time claims are checked
//! here against the `now` the caller passes, not the system clock, so that decisions can be replayed.

mod keys;
#[cfg(test)]
mod tests;

use std::{fmt, str::FromStr, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jiff::Timestamp;
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::{AlgorithmFamily, DecodingKey};
pub use keys::{
    Discovery, DiscoveryError, Jwks, JwksError, KeyCache, KeyCachePolicy, KeyKind, RefreshDecision,
    VerificationKey,
};
use serde_json::{Map, Value};
use thiserror::Error;

/// Largest clock leeway an issuer may be configured with.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// Leeway when none is configured.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// Largest token accepted when none is configured.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest token size an issuer may be configured with.
pub const MAX_TOKEN_BYTES_LIMIT: usize = 64 * 1024;
/// Smallest HMAC shared secret (RFC 7518 section 3.2: at least the hash output; 32 bytes for HS256).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// The asymmetric algorithms an issuer may allow.
pub const ASYMMETRIC_ALGORITHMS: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Longest piece of attacker-controlled text (a `kid`, an `alg`, an `iss`) quoted in a message.
const MAX_QUOTED: usize = 64;

/// A shared secret for HMAC-signed tokens. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct HmacSecret(Vec<u8>);

impl HmacSecret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for HmacSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HmacSecret([redacted; {} bytes])", self.0.len())
    }
}

/// Where a claim lives in the token: `sub`, `email`, or a dotted path into nested objects such as
/// `realm_access.roles`.
///
/// A claim whose name itself contains dots (`https://example.com/groups`, as Auth0 writes them) is
/// found too: the whole path is first looked up as one top-level name, then walked segment by
/// segment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClaimPath {
    text: String,
}

impl ClaimPath {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this path in `claims`, if any (`null` counts as absent).
    pub fn get<'v>(&self, claims: &'v Map<String, Value>) -> Option<&'v Value> {
        if let Some(value) = claims.get(&self.text) {
            return non_null(value);
        }
        let mut segments = self.text.split('.');
        let mut value = claims.get(segments.next()?)?;
        for segment in segments {
            value = value.as_object()?.get(segment)?;
        }
        non_null(value)
    }
}

fn non_null(value: &Value) -> Option<&Value> {
    (!value.is_null()).then_some(value)
}

impl FromStr for ClaimPath {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() || text.split('.').any(str::is_empty) {
            return Err(format!(
                "claim path {text:?} has an empty segment; write a claim name such as \"groups\" or \
                 a dotted path such as \"realm_access.roles\""
            ));
        }
        if text.chars().any(char::is_whitespace) {
            return Err(format!("claim path {text:?} contains white space"));
        }
        Ok(Self {
            text: text.to_owned(),
        })
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Which claims name the user, their email and their groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimMapping {
    pub subject: ClaimPath,
    pub email: ClaimPath,
    pub groups: ClaimPath,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        let path = |text: &str| ClaimPath {
            text: text.to_owned(),
        };
        Self {
            subject: path("sub"),
            email: path("email"),
            groups: path("groups"),
        }
    }
}

/// What the agent trusts about one identity provider.
#[derive(Clone, Debug)]
pub struct IssuerConfig {
    /// The exact `iss` value, e.g. `https://idp.example.com/realms/corp`.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Signature algorithms accepted from this issuer. HS256/384/512 count only with
    /// [`hmac_secret`](Self::hmac_secret).
    pub algorithms: Vec<Algorithm>,
    /// A shared secret, for issuers that sign with HMAC. Without it, every HMAC token is refused.
    pub hmac_secret: Option<HmacSecret>,
    /// Clock leeway for `exp`, `nbf` and `iat`; never more than [`MAX_LEEWAY`] is applied.
    pub leeway: Duration,
    /// Longest token accepted, in bytes; never more than [`MAX_TOKEN_BYTES_LIMIT`] is applied.
    pub max_token_bytes: usize,
    pub claims: ClaimMapping,
    /// Claims a token must carry besides `iss`, `aud`, `exp` and the subject (e.g. `auth_time`).
    pub required_claims: Vec<ClaimPath>,
}

/// One thing wrong with an [`IssuerConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerConfigProblem {
    /// The setting, e.g. `algorithms`.
    pub key: &'static str,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for IssuerConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl IssuerConfig {
    /// An issuer with the defaults: RS256 only (the OIDC default), [`DEFAULT_LEEWAY`],
    /// [`DEFAULT_MAX_TOKEN_BYTES`], claims `sub`, `email`, `groups`.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audiences,
            algorithms: vec![Algorithm::RS256],
            hmac_secret: None,
            leeway: DEFAULT_LEEWAY,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            claims: ClaimMapping::default(),
            required_claims: Vec::new(),
        }
    }

    /// Every problem with the settings, for the configuration loader to report before the agent
    /// starts. [`validate`] stays safe on unchecked settings (it clamps the leeway and the size and
    /// never accepts HMAC without a secret), but an unchecked mistake would refuse every token.
    pub fn check(&self) -> Result<(), Vec<IssuerConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem =
            |key, message: String| problems.push(IssuerConfigProblem { key, message });
        if !self.issuer.starts_with("https://") || self.issuer.len() <= "https://".len() {
            problem(
                "issuer",
                format!(
                    "{:?} is not an https URL; write the issuer exactly as the IdP puts it in `iss`, \
                     e.g. \"https://idp.example.com/realms/corp\"",
                    self.issuer
                ),
            );
        }
        if self.audiences.is_empty() || self.audiences.iter().any(|a| a.is_empty()) {
            problem(
                "audiences",
                "list the client ids this gateway accepts tokens for (the `aud` claim), none empty"
                    .into(),
            );
        }
        if self.algorithms.is_empty() {
            problem(
                "algorithms",
                "empty; allow the algorithm your IdP signs with, e.g. [\"RS256\"] or [\"ES256\"]"
                    .into(),
            );
        }
        let hmac: Vec<Algorithm> = self
            .algorithms
            .iter()
            .copied()
            .filter(|a| a.family() == AlgorithmFamily::Hmac)
            .collect();
        for alg in &self.algorithms {
            let allowed = ASYMMETRIC_ALGORITHMS.contains(alg)
                || (alg.family() == AlgorithmFamily::Hmac && self.hmac_secret.is_some());
            if !allowed {
                let hint = if alg.family() == AlgorithmFamily::Hmac {
                    "HMAC is allowed only together with a shared secret (hmac_secret)".to_owned()
                } else {
                    format!("choose from {}", algorithm_list(&ASYMMETRIC_ALGORITHMS))
                };
                problem("algorithms", format!("{alg:?} is not allowed: {hint}"));
            }
        }
        match &self.hmac_secret {
            Some(secret) if secret.len() < MIN_HMAC_SECRET_BYTES => problem(
                "hmac_secret",
                format!(
                    "{} bytes is too short; use at least {MIN_HMAC_SECRET_BYTES} random bytes",
                    secret.len()
                ),
            ),
            Some(_) if hmac.is_empty() => problem(
                "hmac_secret",
                "set, but no HS256/HS384/HS512 in algorithms: add one or remove the secret".into(),
            ),
            _ => {}
        }
        if self.leeway > MAX_LEEWAY {
            problem(
                "leeway",
                format!(
                    "{} s is more than the {} s allowed; a large leeway lets expired tokens in",
                    self.leeway.as_secs(),
                    MAX_LEEWAY.as_secs()
                ),
            );
        }
        if !(1024..=MAX_TOKEN_BYTES_LIMIT).contains(&self.max_token_bytes) {
            problem(
                "max_token_bytes",
                format!(
                    "{} is out of range; use between 1024 and {MAX_TOKEN_BYTES_LIMIT}",
                    self.max_token_bytes
                ),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn leeway_seconds(&self) -> i64 {
        self.leeway.min(MAX_LEEWAY).as_secs() as i64
    }

    fn max_bytes(&self) -> usize {
        self.max_token_bytes.min(MAX_TOKEN_BYTES_LIMIT)
    }
}

fn algorithm_list(algorithms: &[Algorithm]) -> String {
    algorithms
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A verified user.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    pub issuer: String,
    /// The mapped subject claim (by default `sub`).
    pub subject: String,
    pub email: Option<String>,
    /// The mapped groups claim, in token order, without repeats.
    pub groups: Vec<String>,
    /// Authentication methods (`amr`, RFC 8176), e.g. `pwd`, `otp`, `hwk`, `mfa`.
    pub amr: Vec<String>,
    /// Authentication context class (`acr`).
    pub acr: Option<String>,
    /// When the user last actually authenticated (`auth_time`).
    pub auth_time: Option<Timestamp>,
    pub issued_at: Option<Timestamp>,
    pub expires_at: Timestamp,
    /// Every verified claim, for rules that match on claims.
    pub claims: Map<String, Value>,
}

impl Identity {
    /// The verified claim at `path`.
    pub fn claim(&self, path: &ClaimPath) -> Option<&Value> {
        path.get(&self.claims)
    }

    /// Whether `amr` names any of `methods`.
    pub fn amr_contains_any(&self, methods: &[String]) -> bool {
        self.amr.iter().any(|m| methods.contains(m))
    }

    /// Whether `acr` is one of `values`.
    pub fn acr_in(&self, values: &[String]) -> bool {
        self.acr.as_ref().is_some_and(|acr| values.contains(acr))
    }

    /// How long ago the user authenticated, if the token says (zero if `auth_time` is ahead of `now`).
    pub fn auth_age(&self, now: Timestamp) -> Option<Duration> {
        self.auth_time.map(|t| seconds_between(t, now))
    }
}

/// Whole seconds from `earlier` to `later`, zero if `later` is not later.
pub(crate) fn seconds_between(earlier: Timestamp, later: Timestamp) -> Duration {
    Duration::from_secs(later.as_second().saturating_sub(earlier.as_second()).max(0) as u64)
}

/// How strongly a user must have authenticated, and how recently.
///
/// Every part that is set must hold: `amr` must name one of [`amr_any`](Self::amr_any), `acr` must
/// be one of [`acr_any`](Self::acr_any), and `auth_time` must be at most
/// [`max_auth_age`](Self::max_auth_age) old.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MfaRequirement {
    pub amr_any: Vec<String>,
    pub acr_any: Vec<String>,
    pub max_auth_age: Option<Duration>,
}

/// Why an identity falls short of an [`MfaRequirement`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MfaFailure {
    /// `amr` names none of the required methods.
    Amr {
        required: Vec<String>,
        found: Vec<String>,
    },
    /// `acr` is missing or not accepted.
    Acr {
        required: Vec<String>,
        found: Option<String>,
    },
    /// `auth_time` is needed to judge the age of the login and the token has none.
    AuthTimeMissing,
    /// The login is older than allowed.
    AuthTooOld { age: Duration, max: Duration },
}

impl MfaFailure {
    /// Stable name: `mfa_required` for the strength of the login, `reauthentication_required` for
    /// its age.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Amr { .. } | Self::Acr { .. } => "mfa_required",
            Self::AuthTimeMissing | Self::AuthTooOld { .. } => "reauthentication_required",
        }
    }
}

impl fmt::Display for MfaFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Amr { required, found } => write!(
                f,
                "the login used [{}], the rule needs one of [{}]",
                found.join(", "),
                required.join(", ")
            ),
            Self::Acr { required, found } => write!(
                f,
                "the login's acr is {}, the rule needs one of [{}]",
                found
                    .as_deref()
                    .map_or("absent".to_owned(), |a| format!("{:?}", quote(a))),
                required.join(", ")
            ),
            Self::AuthTimeMissing => f.write_str(
                "the token has no auth_time, so the age of the login is unknown; sign in again",
            ),
            Self::AuthTooOld { age, max } => write!(
                f,
                "the login is {} s old, the rule allows {} s; sign in again",
                age.as_secs(),
                max.as_secs()
            ),
        }
    }
}

impl MfaRequirement {
    /// Every way `identity` falls short at `now` (empty when it meets the requirement).
    pub fn check(&self, identity: &Identity, now: Timestamp) -> Vec<MfaFailure> {
        let mut failures = Vec::new();
        if !self.amr_any.is_empty() && !identity.amr_contains_any(&self.amr_any) {
            failures.push(MfaFailure::Amr {
                required: self.amr_any.clone(),
                found: identity.amr.iter().map(|m| quote(m)).collect(),
            });
        }
        if !self.acr_any.is_empty() && !identity.acr_in(&self.acr_any) {
            failures.push(MfaFailure::Acr {
                required: self.acr_any.clone(),
                found: identity.acr.clone(),
            });
        }
        if let Some(max) = self.max_auth_age {
            match identity.auth_age(now) {
                None => failures.push(MfaFailure::AuthTimeMissing),
                Some(age) if age > max => failures.push(MfaFailure::AuthTooOld { age, max }),
                Some(_) => {}
            }
        }
        failures
    }
}

/// Why a token was refused. [`code`](Self::code) is stable (for the API, the audit log and metrics);
/// the message is for people and never contains the token.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("the token is {size} bytes, more than the {limit} allowed")]
    Oversized { size: usize, limit: usize },
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token is unsigned (alg \"none\"); unsigned tokens are never accepted")]
    AlgNone,
    #[error(
        "the token is signed with HMAC ({alg:?}) but this issuer has no shared secret: HMAC is \
         refused, since an HMAC keyed with the issuer's public key is the key-confusion attack"
    )]
    HmacKeyConfusion { alg: Algorithm },
    #[error("the token's algorithm {alg:?} is not a JWS algorithm this gateway knows")]
    UnsupportedAlgorithm { alg: String },
    #[error(
        "the token is signed with {alg:?}, which this issuer does not allow (allowed: {allowed})"
    )]
    AlgorithmNotAllowed { alg: Algorithm, allowed: String },
    #[error(
        "the token's header marks {0:?} as critical, an extension this gateway does not implement"
    )]
    UnsupportedCriticalHeader(String),
    #[error("{}", match kid {
        Some(kid) => format!("no key with kid {kid:?} in the issuer's key set"),
        None => "the token names no key (kid) and the issuer's key set has no single key for its algorithm".to_owned(),
    })]
    UnknownKid { kid: Option<String> },
    #[error("key {kid:?} is {key} and cannot verify {alg:?}")]
    KeyAlgorithmMismatch {
        kid: String,
        alg: Algorithm,
        key: String,
    },
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token has no {0} claim")]
    MissingClaim(String),
    #[error("claim {claim} {problem}")]
    InvalidClaim { claim: String, problem: String },
    #[error("the token was issued by {found:?}, not by {expected:?}")]
    WrongIssuer { expected: String, found: String },
    #[error("the token is for audience [{found}], not for [{expected}]")]
    WrongAudience { expected: String, found: String },
    #[error("the token expired at {expired_at} ({} s ago)", .now.as_second() - .expired_at.as_second())]
    Expired {
        expired_at: Timestamp,
        now: Timestamp,
    },
    #[error("the token is not valid before {not_before} ({} s from now)", .not_before.as_second() - .now.as_second())]
    NotYetValid {
        not_before: Timestamp,
        now: Timestamp,
    },
    #[error("the token says it was issued at {issued_at}, {} s in the future; check the clocks", .issued_at.as_second() - .now.as_second())]
    IssuedInFuture {
        issued_at: Timestamp,
        now: Timestamp,
    },
}

impl IdentityError {
    /// Stable snake_case name of the reason.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Oversized { .. } => "token_too_large",
            Self::Malformed(_) => "malformed_token",
            Self::AlgNone => "alg_none",
            Self::HmacKeyConfusion { .. } => "hmac_key_confusion",
            Self::UnsupportedAlgorithm { .. } => "unsupported_algorithm",
            Self::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            Self::UnsupportedCriticalHeader(_) => "unsupported_critical_header",
            Self::UnknownKid { .. } => "unknown_kid",
            Self::KeyAlgorithmMismatch { .. } => "key_algorithm_mismatch",
            Self::BadSignature => "bad_signature",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim { .. } => "invalid_claim",
            Self::WrongIssuer { .. } => "wrong_issuer",
            Self::WrongAudience { .. } => "wrong_audience",
            Self::Expired { .. } => "token_expired",
            Self::NotYetValid { .. } => "token_not_yet_valid",
            Self::IssuedInFuture { .. } => "issued_in_future",
        }
    }
}

/// Attacker-controlled text made safe to quote: printable ASCII only, at most [`MAX_QUOTED`]
/// characters.
pub(crate) fn quote(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_QUOTED)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if text.chars().count() > MAX_QUOTED {
        out.push_str("...");
    }
    out
}

/// The three parts of a compact JWS, decoded as far as needed before the signature is checked.
struct Parts<'t> {
    /// `header.payload`, the signed bytes.
    signing_input: &'t str,
    payload: &'t str,
    signature: &'t str,
    alg: String,
    kid: Option<String>,
}

fn split(token: &str) -> Result<Parts<'_>, IdentityError> {
    let mut pieces = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (pieces.next(), pieces.next(), pieces.next(), pieces.next())
    else {
        return Err(IdentityError::Malformed(
            "expected three base64url parts separated by '.' (a signed JWT)",
        ));
    };
    let signing_input = &token[..header.len() + 1 + payload.len()];
    let header_bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| IdentityError::Malformed("the header is not base64url"))?;
    let header: Map<String, Value> = serde_json::from_slice(&header_bytes)
        .map_err(|_| IdentityError::Malformed("the header is not a JSON object"))?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        Some(_) => return Err(IdentityError::Malformed("the header's alg is not a string")),
        None => return Err(IdentityError::Malformed("the header has no alg")),
    };
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(IdentityError::Malformed("the header's kid is not a string")),
    };
    // RFC 7515 section 4.1.11: a recipient must refuse a token whose critical extensions it does not
    // understand (e.g. "b64": false, which changes what was signed). We understand none.
    if let Some(crit) = header.get("crit") {
        let first = crit
            .as_array()
            .and_then(|names| names.first())
            .and_then(Value::as_str)
            .unwrap_or("crit");
        return Err(IdentityError::UnsupportedCriticalHeader(quote(first)));
    }
    Ok(Parts {
        signing_input,
        payload,
        signature,
        alg,
        kid,
    })
}

/// The `iss` of a token, read WITHOUT checking anything, to pick which [`IssuerConfig`] to validate it
/// against. Never trust it beyond that: [`validate`] checks it again after the signature.
pub fn peek_issuer(token: &str) -> Result<String, IdentityError> {
    if token.len() > MAX_TOKEN_BYTES_LIMIT {
        return Err(IdentityError::Oversized {
            size: token.len(),
            limit: MAX_TOKEN_BYTES_LIMIT,
        });
    }
    let parts = split(token)?;
    let claims = decode_payload(parts.payload)?;
    match claims.get("iss") {
        Some(Value::String(iss)) => Ok(iss.clone()),
        _ => Err(IdentityError::MissingClaim("iss".into())),
    }
}

fn decode_payload(payload: &str) -> Result<Map<String, Value>, IdentityError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| IdentityError::Malformed("the payload is not base64url"))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| IdentityError::Malformed("the payload is not a JSON object"))
}

/// Checks `token` against `issuer` and its key set `jwks` at time `now`.
///
/// Order: size, structure and header, algorithm, key, signature; only then are claims read: `iss`,
/// `aud`, `exp`, `nbf`, `iat`, the mapped subject, email and groups, `amr`, `acr`, `auth_time`, and
/// the configured required claims.
pub fn validate(
    token: &str,
    issuer: &IssuerConfig,
    jwks: &Jwks,
    now: Timestamp,
) -> Result<Identity, IdentityError> {
    let limit = issuer.max_bytes();
    if token.len() > limit {
        return Err(IdentityError::Oversized {
            size: token.len(),
            limit,
        });
    }
    let parts = split(token)?;
    let alg = parts.alg.as_str();
    if alg.eq_ignore_ascii_case("none") {
        return Err(IdentityError::AlgNone);
    }
    let alg = Algorithm::from_str(alg)
        .map_err(|_| IdentityError::UnsupportedAlgorithm { alg: quote(alg) })?;

    let hmac_key;
    let key: &DecodingKey = if alg.family() == AlgorithmFamily::Hmac {
        let Some(secret) = &issuer.hmac_secret else {
            return Err(IdentityError::HmacKeyConfusion { alg });
        };
        if !issuer.algorithms.contains(&alg) {
            return Err(not_allowed(alg, issuer));
        }
        hmac_key = DecodingKey::from_secret(&secret.0)
            .map_err(|_| IdentityError::HmacKeyConfusion { alg })?;
        &hmac_key
    } else {
        if !issuer.algorithms.contains(&alg) {
            return Err(not_allowed(alg, issuer));
        }
        jwks.select(parts.kid.as_deref(), alg)?.decoding_key()
    };

    URL_SAFE_NO_PAD
        .decode(parts.signature)
        .map_err(|_| IdentityError::Malformed("the signature is not base64url"))?;
    match jsonwebtoken::crypto::verify(parts.signature, parts.signing_input.as_bytes(), key, alg) {
        Ok(true) => {}
        // Err: the key could not be used with this algorithm (a corrupt key); nothing verified.
        Ok(false) | Err(_) => return Err(IdentityError::BadSignature),
    }

    let claims = decode_payload(parts.payload)?;
    identity_from_claims(claims, issuer, now)
}

fn not_allowed(alg: Algorithm, issuer: &IssuerConfig) -> IdentityError {
    IdentityError::AlgorithmNotAllowed {
        alg,
        allowed: algorithm_list(&issuer.algorithms),
    }
}

fn identity_from_claims(
    claims: Map<String, Value>,
    issuer: &IssuerConfig,
    now: Timestamp,
) -> Result<Identity, IdentityError> {
    let leeway = issuer.leeway_seconds();

    let iss = match claims.get("iss") {
        Some(Value::String(iss)) => iss,
        Some(_) => return Err(invalid("iss", "is not a string")),
        None => return Err(IdentityError::MissingClaim("iss".into())),
    };
    if *iss != issuer.issuer {
        return Err(IdentityError::WrongIssuer {
            expected: issuer.issuer.clone(),
            found: quote(iss),
        });
    }

    let audiences = match claims.get("aud") {
        None => return Err(IdentityError::MissingClaim("aud".into())),
        Some(value) => string_or_strings(value)
            .ok_or_else(|| invalid("aud", "is neither a string nor an array of strings"))?,
    };
    if !audiences.iter().any(|a| issuer.audiences.contains(a)) {
        return Err(IdentityError::WrongAudience {
            expected: issuer.audiences.join(", "),
            found: audiences
                .iter()
                .map(|a| quote(a))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }

    let expires_at =
        numeric_date(&claims, "exp")?.ok_or_else(|| IdentityError::MissingClaim("exp".into()))?;
    // RFC 7519 section 4.1.4: not accepted on or after `exp`.
    if now.as_second() >= expires_at.as_second().saturating_add(leeway) {
        return Err(IdentityError::Expired {
            expired_at: expires_at,
            now,
        });
    }
    if let Some(not_before) = numeric_date(&claims, "nbf")?
        && now.as_second().saturating_add(leeway) < not_before.as_second()
    {
        return Err(IdentityError::NotYetValid { not_before, now });
    }
    let issued_at = numeric_date(&claims, "iat")?;
    if let Some(issued_at) = issued_at
        && issued_at.as_second() > now.as_second().saturating_add(leeway)
    {
        return Err(IdentityError::IssuedInFuture { issued_at, now });
    }

    let mapping = &issuer.claims;
    let subject = match mapping.subject.get(&claims) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => return Err(invalid(mapping.subject.as_str(), "is empty")),
        Some(_) => return Err(invalid(mapping.subject.as_str(), "is not a string")),
        None => return Err(IdentityError::MissingClaim(mapping.subject.to_string())),
    };
    let email = match mapping.email.get(&claims) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(invalid(mapping.email.as_str(), "is not a string")),
    };
    let groups = match mapping.groups.get(&claims) {
        None => Vec::new(),
        Some(value) => {
            let mut groups = string_or_strings(value).ok_or_else(|| {
                invalid(
                    mapping.groups.as_str(),
                    "is neither a string nor an array of strings",
                )
            })?;
            let mut seen = std::collections::HashSet::new();
            groups.retain(|g| seen.insert(g.clone()));
            groups
        }
    };
    let amr = match claims.get("amr") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => {
            string_or_strings(value).ok_or_else(|| invalid("amr", "is not an array of strings"))?
        }
    };
    let acr = match claims.get("acr") {
        None | Some(Value::Null) => None,
        Some(Value::String(acr)) => Some(acr.clone()),
        Some(_) => return Err(invalid("acr", "is not a string")),
    };
    let auth_time = numeric_date(&claims, "auth_time")?;
    for path in &issuer.required_claims {
        if path.get(&claims).is_none() {
            return Err(IdentityError::MissingClaim(path.to_string()));
        }
    }

    Ok(Identity {
        issuer: issuer.issuer.clone(),
        subject,
        email,
        groups,
        amr,
        acr,
        auth_time,
        issued_at,
        expires_at,
        claims,
    })
}

fn invalid(claim: &str, problem: &str) -> IdentityError {
    IdentityError::InvalidClaim {
        claim: claim.to_owned(),
        problem: problem.to_owned(),
    }
}

fn string_or_strings(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

/// A NumericDate claim (seconds since the epoch; fractions are dropped).
fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
) -> Result<Option<Timestamp>, IdentityError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let seconds = match value {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite())
                .map(|f| f.floor() as i64)
        }),
        _ => None,
    };
    seconds
        .and_then(|s| Timestamp::from_second(s).ok())
        .map(Some)
        .ok_or_else(|| invalid(name, "is not a date (seconds since 1970)"))
}
