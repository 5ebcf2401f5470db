//! JWT validation tests: an attack corpus, each token refused with its reason, and valid tokens of
//! every allowed algorithm. Keys are generated when the tests run (aws-lc-rs), never checked in.

use std::{sync::OnceLock, time::Duration};

use aws_lc_rs::{
    encoding::AsDer,
    rsa::{KeyPair as RsaKeyPair, KeySize},
    signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
        Ed25519KeyPair, KeyPair,
    },
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use jiff::Timestamp;
use jsonwebtoken::EncodingKey;
use serde_json::{Value, json};

use super::*;

const ISSUER: &str = "https://idp.test/realms/corp";
const AUDIENCE: &str = "ztna-gateway";
/// The test clock: 2025-01-01T00:00:00Z.
const NOW: i64 = 1_735_689_600;

fn now() -> Timestamp {
    Timestamp::from_second(NOW).unwrap()
}

/// A signing key of the test IdP and the JWK it publishes.
struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    /// For RSA keys: the public key as PEM, what an attacker HMACs with in the key-confusion attack.
    public_pem: Option<String>,
}

impl TestKey {
    fn sign(&self, header: &Value, claims: &Value) -> String {
        sign_with(&self.encoding, self.alg, header, claims)
    }

    /// A token with the standard header for this key.
    fn token(&self, claims: &Value) -> String {
        self.sign(
            &json!({"alg": alg_name(self.alg), "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }
}

fn alg_name(alg: Algorithm) -> String {
    format!("{alg:?}")
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn encode_parts(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn sign_with(key: &EncodingKey, alg: Algorithm, header: &Value, claims: &Value) -> String {
    let input = encode_parts(header, claims);
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{signature}")
}

/// Reads one DER TLV at the start of `der`: (tag, contents, rest).
fn der_tlv(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = der[0];
    let (len, header) = if der[1] < 0x80 {
        (usize::from(der[1]), 2)
    } else {
        let n = usize::from(der[1] & 0x7f);
        let len = der[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    (tag, &der[header..header + len], &der[header + len..])
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo` (jsonwebtoken signs with PKCS#1).
fn pkcs8_to_pkcs1(pkcs8: &[u8]) -> Vec<u8> {
    let (tag, info, _) = der_tlv(pkcs8);
    assert_eq!(tag, 0x30);
    let (_, _, rest) = der_tlv(info); // version
    let (_, _, rest) = der_tlv(rest); // algorithm identifier
    let (tag, private_key, _) = der_tlv(rest);
    assert_eq!(tag, 0x04);
    private_key.to_vec()
}

/// The test RSA key: private key (PKCS#1), modulus, exponent, public key (SubjectPublicKeyInfo).
struct RsaMaterial {
    pkcs1: Vec<u8>,
    n: Vec<u8>,
    e: Vec<u8>,
    spki: Vec<u8>,
}

fn rsa_key(kid: &str, alg: Algorithm) -> TestKey {
    // One RSA key per test binary: generating them is the slow part of these tests.
    static RSA: OnceLock<RsaMaterial> = OnceLock::new();
    let RsaMaterial { pkcs1, n, e, spki } = RSA.get_or_init(|| {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let pkcs8 = AsDer::as_der(&pair).unwrap();
        let public = pair.public_key();
        let spki = AsDer::as_der(public).unwrap();
        RsaMaterial {
            pkcs1: pkcs8_to_pkcs1(pkcs8.as_ref()),
            n: public.modulus().big_endian_without_leading_zero().to_vec(),
            e: public.exponent().big_endian_without_leading_zero().to_vec(),
            spki: spki.as_ref().to_vec(),
        }
    });
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD
            .encode(spki)
            .as_bytes()
            .chunks(64)
            .map(|line| std::str::from_utf8(line).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    );
    TestKey {
        kid: kid.into(),
        alg,
        encoding: EncodingKey::from_rsa_der(pkcs1),
        jwk: json!({"kty": "RSA", "use": "sig", "kid": kid, "n": b64(n), "e": b64(e)}),
        public_pem: Some(pem),
    }
}

fn ec_key(kid: &str, alg: Algorithm) -> TestKey {
    let (signing, curve) = match alg {
        Algorithm::ES256 => (&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256"),
        Algorithm::ES384 => (&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384"),
        _ => unreachable!(),
    };
    let pair = EcdsaKeyPair::generate(signing).unwrap();
    let pkcs8 = pair.to_pkcs8v1().unwrap();
    let point = pair.public_key().as_ref();
    let (x, y) = point[1..].split_at((point.len() - 1) / 2);
    TestKey {
        kid: kid.into(),
        alg,
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": curve, "kid": kid, "x": b64(x), "y": b64(y)}),
        public_pem: None,
    }
}

fn ed_key(kid: &str) -> TestKey {
    let pair = Ed25519KeyPair::generate().unwrap();
    let pkcs8 = pair.to_pkcs8().unwrap();
    TestKey {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key().as_ref())}),
        public_pem: None,
    }
}

fn jwks_of(keys: &[&TestKey]) -> Jwks {
    let document = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    Jwks::from_json(&document.to_string()).unwrap()
}

fn issuer(algorithms: &[Algorithm]) -> IssuerConfig {
    let mut config = IssuerConfig::new(ISSUER, vec![AUDIENCE.into()]);
    config.algorithms = algorithms.to_vec();
    config
}

fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "u-1234",
        "email": "alice@example.com",
        "groups": ["engineering", "oncall"],
        "amr": ["pwd", "otp"],
        "acr": "urn:corp:loa:2",
        "iat": NOW - 60,
        "nbf": NOW - 60,
        "auth_time": NOW - 600,
        "exp": NOW + 3600,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

/// The fixture most attacks start from: an ES256 issuer with one key, and an RSA key beside it.
struct Fixture {
    es: TestKey,
    rs: TestKey,
    jwks: Jwks,
    issuer: IssuerConfig,
}

fn fixture() -> Fixture {
    let es = ec_key("es-1", Algorithm::ES256);
    let rs = rsa_key("rs-1", Algorithm::RS256);
    let jwks = jwks_of(&[&es, &rs]);
    Fixture {
        es,
        rs,
        jwks,
        issuer: issuer(&[Algorithm::ES256, Algorithm::RS256]),
    }
}

/// Validates and expects a refusal with `code`; checks that the message never quotes the token.
fn refused(token: &str, issuer: &IssuerConfig, jwks: &Jwks, code: &str) -> IdentityError {
    let error = match validate(token, issuer, jwks, now()) {
        Ok(identity) => panic!("expected {code}, got {identity:?}"),
        Err(e) => e,
    };
    assert_eq!(error.code(), code, "{error}");
    let message = error.to_string();
    for part in token.split('.').filter(|p| p.len() >= 8) {
        assert!(
            !message.contains(part),
            "message echoes the token: {message}"
        );
    }
    error
}

// --- valid tokens --------------------------------------------------------------------------------

#[test]
fn a_valid_es256_token_maps_to_an_identity() {
    let f = fixture();
    let identity = validate(&f.es.token(&claims()), &f.issuer, &f.jwks, now()).unwrap();
    assert_eq!(identity.issuer, ISSUER);
    assert_eq!(identity.subject, "u-1234");
    assert_eq!(identity.email.as_deref(), Some("alice@example.com"));
    assert_eq!(identity.groups, ["engineering", "oncall"]);
    assert_eq!(identity.amr, ["pwd", "otp"]);
    assert_eq!(identity.acr.as_deref(), Some("urn:corp:loa:2"));
    assert_eq!(
        identity.auth_time,
        Some(Timestamp::from_second(NOW - 600).unwrap())
    );
    assert_eq!(
        identity.issued_at,
        Some(Timestamp::from_second(NOW - 60).unwrap())
    );
    assert_eq!(
        identity.expires_at,
        Timestamp::from_second(NOW + 3600).unwrap()
    );
    assert_eq!(identity.claims["sub"], "u-1234");
}

#[test]
fn every_allowed_algorithm_verifies() {
    let keys = [
        rsa_key("rs256", Algorithm::RS256),
        rsa_key("rs384", Algorithm::RS384),
        rsa_key("rs512", Algorithm::RS512),
        rsa_key("ps256", Algorithm::PS256),
        ec_key("es256", Algorithm::ES256),
        ec_key("es384", Algorithm::ES384),
        ed_key("eddsa"),
    ];
    let jwks = jwks_of(&keys.iter().collect::<Vec<_>>());
    let issuer = issuer(&ASYMMETRIC_ALGORITHMS);
    for key in &keys {
        let identity = validate(&key.token(&claims()), &issuer, &jwks, now())
            .unwrap_or_else(|e| panic!("{:?}: {e}", key.alg));
        assert_eq!(identity.subject, "u-1234");
    }
}

#[test]
fn a_token_without_kid_uses_the_only_key_that_fits() {
    let ed = ed_key("ed-1");
    let es = ec_key("es-1", Algorithm::ES256);
    let jwks = jwks_of(&[&ed, &es]);
    let issuer = issuer(&[Algorithm::EdDSA, Algorithm::ES256]);
    let token = ed.sign(&json!({"alg": "EdDSA"}), &claims());
    assert!(validate(&token, &issuer, &jwks, now()).is_ok());

    // Two EdDSA keys: the token would get to pick; refused.
    let other = ed_key("ed-2");
    let jwks = jwks_of(&[&ed, &other]);
    let error = refused(&token, &issuer, &jwks, "unknown_kid");
    assert!(error.to_string().contains("names no key"), "{error}");
}

#[test]
fn hs256_is_accepted_only_with_a_configured_secret() {
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    let mut issuer = issuer(&[Algorithm::HS256]);
    issuer.hmac_secret = Some(HmacSecret::new(secret.clone()));
    issuer.check().unwrap();
    let token = sign_with(
        &EncodingKey::from_secret(&secret).unwrap(),
        Algorithm::HS256,
        &json!({"alg": "HS256"}),
        &claims(),
    );
    let empty = Jwks::default();
    assert_eq!(
        validate(&token, &issuer, &empty, now()).unwrap().subject,
        "u-1234"
    );

    let wrong = sign_with(
        &EncodingKey::from_secret(b"another secret of thirty-two bytes!").unwrap(),
        Algorithm::HS256,
        &json!({"alg": "HS256"}),
        &claims(),
    );
    refused(&wrong, &issuer, &empty, "bad_signature");

    let hs512 = sign_with(
        &EncodingKey::from_secret(&secret).unwrap(),
        Algorithm::HS512,
        &json!({"alg": "HS512"}),
        &claims(),
    );
    refused(&hs512, &issuer, &empty, "algorithm_not_allowed");
}

#[test]
fn leeway_accepts_small_clock_skew() {
    let f = fixture();
    let just_expired = with(claims(), "exp", json!(NOW - 30));
    assert!(validate(&f.es.token(&just_expired), &f.issuer, &f.jwks, now()).is_ok());
    let early = with(claims(), "nbf", json!(NOW + 30));
    assert!(validate(&f.es.token(&early), &f.issuer, &f.jwks, now()).is_ok());
    // Boundaries: refused on or after exp + leeway; nbf and iat accepted up to now + leeway.
    let edge = with(claims(), "exp", json!(NOW - 59));
    assert!(validate(&f.es.token(&edge), &f.issuer, &f.jwks, now()).is_ok());
    let over = with(claims(), "exp", json!(NOW - 60));
    refused(&f.es.token(&over), &f.issuer, &f.jwks, "token_expired");
    let edge = with(
        with(claims(), "nbf", json!(NOW + 60)),
        "iat",
        json!(NOW + 60),
    );
    assert!(validate(&f.es.token(&edge), &f.issuer, &f.jwks, now()).is_ok());
    refused(
        &f.es.token(&with(claims(), "nbf", json!(NOW + 61))),
        &f.issuer,
        &f.jwks,
        "token_not_yet_valid",
    );
    refused(
        &f.es.token(&with(claims(), "iat", json!(NOW + 61))),
        &f.issuer,
        &f.jwks,
        "issued_in_future",
    );
    let fractional = with(claims(), "exp", json!(NOW as f64 + 100.5));
    assert!(validate(&f.es.token(&fractional), &f.issuer, &f.jwks, now()).is_ok());
}

// --- the attack corpus ---------------------------------------------------------------------------

#[test]
fn attack_alg_none_is_refused() {
    let f = fixture();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let unsigned = format!(
            "{}.",
            encode_parts(&json!({"alg": alg, "kid": "es-1"}), &claims())
        );
        refused(&unsigned, &f.issuer, &f.jwks, "alg_none");
        // Even with a signature attached.
        let signed = format!("{unsigned}c2lnbmF0dXJl");
        refused(&signed, &f.issuer, &f.jwks, "alg_none");
    }
}

#[test]
fn attack_hs256_signed_with_the_rsa_public_key_is_refused() {
    let f = fixture();
    let pem = f.rs.public_pem.as_ref().unwrap();
    // The classic key confusion: the attacker takes the published RSA key and uses it as an HMAC
    // secret, hoping the verifier feeds the same bytes to HMAC.
    let der = STANDARD
        .decode(
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    for secret in [pem.as_bytes(), der.as_slice()] {
        let token = sign_with(
            &EncodingKey::from_secret(secret).unwrap(),
            Algorithm::HS256,
            &json!({"alg": "HS256", "kid": "rs-1"}),
            &claims(),
        );
        let error = refused(&token, &f.issuer, &f.jwks, "hmac_key_confusion");
        assert!(error.to_string().contains("key-confusion"), "{error}");

        // Listing HS256 without a secret does not open the door either.
        let mut careless = f.issuer.clone();
        careless.algorithms.push(Algorithm::HS256);
        assert!(careless.check().is_err());
        refused(&token, &careless, &f.jwks, "hmac_key_confusion");

        // An issuer with a real shared secret: the forged token does not verify.
        let mut with_secret = issuer(&[Algorithm::HS256, Algorithm::RS256]);
        with_secret.hmac_secret = Some(HmacSecret::new(vec![7; 32]));
        refused(&token, &with_secret, &f.jwks, "bad_signature");
    }
}

#[test]
fn attack_algorithm_not_allowed_for_the_issuer_is_refused() {
    let f = fixture();
    let rs_only = issuer(&[Algorithm::RS256]);
    let error = refused(
        &f.es.token(&claims()),
        &rs_only,
        &f.jwks,
        "algorithm_not_allowed",
    );
    assert!(
        error.to_string().contains("ES256") && error.to_string().contains("RS256"),
        "{error}"
    );

    // The same RSA key, but PS256 which the issuer does not list.
    let ps = rsa_key("rs-1", Algorithm::PS256);
    refused(
        &ps.token(&claims()),
        &rs_only,
        &f.jwks,
        "algorithm_not_allowed",
    );
}

#[test]
fn attack_unknown_algorithm_names_are_refused() {
    let f = fixture();
    for alg in ["RS1", "HS1", "ES512", "rs256", "", "A\u{7}B"] {
        let token = format!(
            "{}.c2ln",
            encode_parts(&json!({"alg": alg, "kid": "es-1"}), &claims())
        );
        let error = refused(&token, &f.issuer, &f.jwks, "unsupported_algorithm");
        assert!(
            !error.to_string().contains('\u{7}'),
            "control character quoted: {error}"
        );
    }
}

#[test]
fn attack_expired_token_is_refused() {
    let f = fixture();
    let expired = with(claims(), "exp", json!(NOW - 61));
    let error = refused(&f.es.token(&expired), &f.issuer, &f.jwks, "token_expired");
    assert!(error.to_string().contains("61 s ago"), "{error}");
}

#[test]
fn the_leeway_is_bounded_even_when_misconfigured() {
    let f = fixture();
    let mut lax = f.issuer.clone();
    lax.leeway = Duration::from_secs(86_400);
    assert!(
        lax.check().unwrap_err()[0]
            .to_string()
            .starts_with("leeway:")
    );
    let expired = with(claims(), "exp", json!(NOW - 301));
    refused(&f.es.token(&expired), &lax, &f.jwks, "token_expired");
    let within = with(claims(), "exp", json!(NOW - 299));
    assert!(validate(&f.es.token(&within), &lax, &f.jwks, now()).is_ok());
}

#[test]
fn attack_nbf_in_the_future_is_refused() {
    let f = fixture();
    let early = with(claims(), "nbf", json!(NOW + 120));
    let error = refused(
        &f.es.token(&early),
        &f.issuer,
        &f.jwks,
        "token_not_yet_valid",
    );
    assert!(error.to_string().contains("120 s from now"), "{error}");
}

#[test]
fn attack_iat_in_the_future_is_refused() {
    let f = fixture();
    let future = with(claims(), "iat", json!(NOW + 600));
    refused(&f.es.token(&future), &f.issuer, &f.jwks, "issued_in_future");
}

#[test]
fn attack_wrong_issuer_is_refused() {
    let f = fixture();
    for iss in [
        "https://evil.test/realms/corp",
        "https://idp.test/realms/corp/",
        "https://IDP.test/realms/corp",
    ] {
        let error = refused(
            &f.es.token(&with(claims(), "iss", json!(iss))),
            &f.issuer,
            &f.jwks,
            "wrong_issuer",
        );
        assert!(error.to_string().contains(ISSUER), "{error}");
    }
    refused(
        &f.es.token(&with(claims(), "iss", json!(42))),
        &f.issuer,
        &f.jwks,
        "invalid_claim",
    );
}

#[test]
fn attack_wrong_audience_is_refused() {
    let f = fixture();
    refused(
        &f.es.token(&with(claims(), "aud", json!("another-app"))),
        &f.issuer,
        &f.jwks,
        "wrong_audience",
    );
    refused(
        &f.es.token(&with(claims(), "aud", json!(["a", "b"]))),
        &f.issuer,
        &f.jwks,
        "wrong_audience",
    );
    refused(
        &f.es.token(&with(claims(), "aud", json!([]))),
        &f.issuer,
        &f.jwks,
        "wrong_audience",
    );
    // One of several audiences is enough.
    let several = with(claims(), "aud", json!(["another-app", AUDIENCE]));
    assert!(validate(&f.es.token(&several), &f.issuer, &f.jwks, now()).is_ok());
}

#[test]
fn attack_bad_signature_is_refused() {
    let f = fixture();
    let token = f.es.token(&claims());
    let (input, signature) = token.rsplit_once('.').unwrap();

    // The payload changed after signing: a privilege escalation attempt.
    let (header, _) = input.split_once('.').unwrap();
    let forged_claims = with(claims(), "groups", json!(["admins"]));
    let tampered = format!(
        "{header}.{}.{signature}",
        b64(forged_claims.to_string().as_bytes())
    );
    refused(&tampered, &f.issuer, &f.jwks, "bad_signature");

    // Signed by another key that claims the issuer's kid.
    let impostor = ec_key("es-1", Algorithm::ES256);
    refused(
        &impostor.token(&claims()),
        &f.issuer,
        &f.jwks,
        "bad_signature",
    );

    // A cut or flipped signature.
    refused(
        &format!("{input}.{}", &signature[..20]),
        &f.issuer,
        &f.jwks,
        "bad_signature",
    );
    let mut flipped = signature.as_bytes().to_vec();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    refused(
        &format!("{input}.{}", String::from_utf8(flipped).unwrap()),
        &f.issuer,
        &f.jwks,
        "bad_signature",
    );
    refused(&format!("{input}."), &f.issuer, &f.jwks, "bad_signature");

    // RSA too.
    let rs_token = f.rs.token(&claims());
    let rs_tampered = format!("{}A", &rs_token[..rs_token.len() - 1]);
    if rs_tampered != rs_token {
        refused(&rs_tampered, &f.issuer, &f.jwks, "bad_signature");
    }
}

#[test]
fn attack_unknown_kid_is_refused() {
    let f = fixture();
    let stranger = ec_key("es-2", Algorithm::ES256);
    let error = refused(
        &stranger.token(&claims()),
        &f.issuer,
        &f.jwks,
        "unknown_kid",
    );
    assert!(error.to_string().contains("\"es-2\""), "{error}");

    // A kid built to mess up logs is quoted safely.
    let nasty = "x\n\u{1b}[31m".repeat(40);
    let token = stranger.sign(&json!({"alg": "ES256", "kid": nasty}), &claims());
    let error = refused(&token, &f.issuer, &f.jwks, "unknown_kid");
    let message = error.to_string();
    assert!(
        !message.contains('\n') && !message.contains('\u{1b}') && message.len() < 200,
        "{message}"
    );
}

#[test]
fn attack_kid_of_a_key_of_another_type_is_refused() {
    let f = fixture();
    // An RS256 token naming the EC key: whatever it is signed with, the EC key cannot verify RS256.
    let rs_as_es = rsa_key("es-1", Algorithm::RS256);
    let error = refused(
        &rs_as_es.token(&claims()),
        &f.issuer,
        &f.jwks,
        "key_algorithm_mismatch",
    );
    assert!(error.to_string().contains("P-256"), "{error}");

    // A JWK that pins RS256 cannot be used for PS256.
    let pinned = rsa_key("pinned", Algorithm::RS256);
    let mut jwk = pinned.jwk.clone();
    jwk["alg"] = json!("RS256");
    let jwks = Jwks::from_json(&json!({"keys": [jwk]}).to_string()).unwrap();
    let ps = rsa_key("pinned", Algorithm::PS256);
    let both = issuer(&[Algorithm::RS256, Algorithm::PS256]);
    refused(&ps.token(&claims()), &both, &jwks, "key_algorithm_mismatch");
    assert!(validate(&pinned.token(&claims()), &both, &jwks, now()).is_ok());
}

#[test]
fn attack_oversized_token_is_refused_before_parsing() {
    let f = fixture();
    let big = with(
        claims(),
        "padding",
        json!("x".repeat(DEFAULT_MAX_TOKEN_BYTES)),
    );
    let error = refused(&f.es.token(&big), &f.issuer, &f.jwks, "token_too_large");
    assert!(
        error
            .to_string()
            .contains(&format!("the {DEFAULT_MAX_TOKEN_BYTES} allowed")),
        "{error}"
    );
    // Garbage of that size is refused for its size, not parsed.
    let garbage = "!".repeat(DEFAULT_MAX_TOKEN_BYTES + 1);
    refused(&garbage, &f.issuer, &f.jwks, "token_too_large");
    // A misconfigured limit is capped.
    let mut lax = f.issuer.clone();
    lax.max_token_bytes = usize::MAX;
    refused(
        &"!".repeat(MAX_TOKEN_BYTES_LIMIT + 1),
        &lax,
        &f.jwks,
        "token_too_large",
    );
}

#[test]
fn attack_malformed_tokens_are_refused() {
    let f = fixture();
    let good = f.es.token(&claims());
    let (header, rest) = good.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let cases = [
        String::new(),
        "not a token".to_owned(),
        format!("{header}.{payload}"),
        format!("{good}.extra"),
        format!("!!!.{payload}.{signature}"),
        format!("{}.{payload}.{signature}", b64(b"not json")),
        format!("{}.{payload}.{signature}", b64(b"[\"alg\"]")),
        format!("{}.{payload}.{signature}", b64(br#"{"typ":"JWT"}"#)),
        format!("{}.{payload}.{signature}", b64(br#"{"alg":256}"#)),
        format!(
            "{}.{payload}.{signature}",
            b64(br#"{"alg":"ES256","kid":7}"#)
        ),
        format!("{header}.{payload}.not*base64"),
        // Padded base64 is not base64url.
        format!("{header}=.{payload}.{signature}"),
    ];
    for token in &cases {
        refused(token, &f.issuer, &f.jwks, "malformed_token");
    }
    // A correctly signed payload that is not a JSON object.
    let header = json!({"alg": "ES256", "kid": "es-1"});
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(b"[1,2,3]"));
    let signature =
        jsonwebtoken::crypto::sign(input.as_bytes(), &f.es.encoding, Algorithm::ES256).unwrap();
    refused(
        &format!("{input}.{signature}"),
        &f.issuer,
        &f.jwks,
        "malformed_token",
    );
}

#[test]
fn attack_critical_header_extensions_are_refused() {
    let f = fixture();
    let token = f.es.sign(
        &json!({"alg": "ES256", "kid": "es-1", "b64": false, "crit": ["b64"]}),
        &claims(),
    );
    let error = refused(&token, &f.issuer, &f.jwks, "unsupported_critical_header");
    assert!(error.to_string().contains("\"b64\""), "{error}");
}

#[test]
fn attack_missing_claims_are_refused() {
    let f = fixture();
    for claim in ["iss", "aud", "exp", "sub"] {
        let error = refused(
            &f.es.token(&without(claims(), claim)),
            &f.issuer,
            &f.jwks,
            "missing_claim",
        );
        assert_eq!(error, IdentityError::MissingClaim(claim.into()));
    }
    refused(
        &f.es.token(&with(claims(), "sub", json!(null))),
        &f.issuer,
        &f.jwks,
        "missing_claim",
    );
    refused(
        &f.es.token(&with(claims(), "sub", json!(""))),
        &f.issuer,
        &f.jwks,
        "invalid_claim",
    );

    let mut strict = f.issuer.clone();
    strict.required_claims = vec![
        "auth_time".parse().unwrap(),
        "realm_access.roles".parse().unwrap(),
    ];
    let error = refused(&f.es.token(&claims()), &strict, &f.jwks, "missing_claim");
    assert_eq!(
        error.to_string(),
        "the token has no realm_access.roles claim"
    );
}

#[test]
fn claims_of_the_wrong_type_are_refused() {
    let f = fixture();
    for (claim, value) in [
        ("exp", json!("tomorrow")),
        ("exp", json!(1e300)),
        ("nbf", json!(true)),
        ("groups", json!(42)),
        ("groups", json!(["ok", 1])),
        ("email", json!(["a@b"])),
        ("amr", json!({"pwd": true})),
        ("acr", json!(2)),
        ("auth_time", json!("yesterday")),
    ] {
        let error = refused(
            &f.es.token(&with(claims(), claim, value)),
            &f.issuer,
            &f.jwks,
            "invalid_claim",
        );
        assert!(
            error.to_string().starts_with(&format!("claim {claim} ")),
            "{error}"
        );
    }
}

#[test]
fn error_codes_are_distinct() {
    let errors = [
        IdentityError::Oversized { size: 2, limit: 1 },
        IdentityError::Malformed("x"),
        IdentityError::AlgNone,
        IdentityError::HmacKeyConfusion {
            alg: Algorithm::HS256,
        },
        IdentityError::UnsupportedAlgorithm { alg: "x".into() },
        IdentityError::AlgorithmNotAllowed {
            alg: Algorithm::ES256,
            allowed: String::new(),
        },
        IdentityError::UnsupportedCriticalHeader("b64".into()),
        IdentityError::UnknownKid { kid: None },
        IdentityError::KeyAlgorithmMismatch {
            kid: "k".into(),
            alg: Algorithm::ES256,
            key: "k".into(),
        },
        IdentityError::BadSignature,
        IdentityError::MissingClaim("sub".into()),
        IdentityError::InvalidClaim {
            claim: "exp".into(),
            problem: "x".into(),
        },
        IdentityError::WrongIssuer {
            expected: "a".into(),
            found: "b".into(),
        },
        IdentityError::WrongAudience {
            expected: "a".into(),
            found: "b".into(),
        },
        IdentityError::Expired {
            expired_at: now(),
            now: now(),
        },
        IdentityError::NotYetValid {
            not_before: now(),
            now: now(),
        },
        IdentityError::IssuedInFuture {
            issued_at: now(),
            now: now(),
        },
    ];
    let codes: std::collections::BTreeSet<&str> = errors.iter().map(IdentityError::code).collect();
    assert_eq!(codes.len(), errors.len());
    assert!(
        codes
            .iter()
            .all(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'))
    );
}

// --- claim mapping -------------------------------------------------------------------------------

#[test]
fn claims_map_through_nested_and_dotted_paths() {
    let f = fixture();
    let mut issuer = f.issuer.clone();
    issuer.claims = ClaimMapping {
        subject: "preferred_username".parse().unwrap(),
        email: "profile.contact.mail".parse().unwrap(),
        groups: "realm_access.roles".parse().unwrap(),
    };
    let keycloak = json!({
        "iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 60, "sub": "0f6c-uuid",
        "preferred_username": "alice",
        "profile": {"contact": {"mail": "alice@corp.test"}},
        "realm_access": {"roles": ["db-admin", "offline_access", "db-admin"]},
    });
    let identity = validate(&f.es.token(&keycloak), &issuer, &f.jwks, now()).unwrap();
    assert_eq!(identity.subject, "alice");
    assert_eq!(identity.email.as_deref(), Some("alice@corp.test"));
    assert_eq!(
        identity.groups,
        ["db-admin", "offline_access"],
        "repeats removed, order kept"
    );
    assert_eq!(
        identity
            .claim(&"realm_access.roles".parse().unwrap())
            .unwrap()[0],
        "db-admin"
    );

    // Auth0 style: a namespaced claim whose name contains dots.
    issuer.claims.groups = "https://corp.test/groups".parse().unwrap();
    let auth0 = json!({
        "iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 60, "preferred_username": "bob",
        "https://corp.test/groups": "admins",
    });
    let identity = validate(&f.es.token(&auth0), &issuer, &f.jwks, now()).unwrap();
    assert_eq!(identity.groups, ["admins"], "a single string is one group");
    assert_eq!(identity.email, None);

    // Missing groups are no groups; a missing mapped subject is refused by its path.
    let none = json!({"iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 60, "sub": "x"});
    let error = validate(&f.es.token(&none), &issuer, &f.jwks, now()).unwrap_err();
    assert_eq!(
        error,
        IdentityError::MissingClaim("preferred_username".into())
    );
}

#[test]
fn claim_paths_are_checked() {
    assert!("realm_access.roles".parse::<ClaimPath>().is_ok());
    for bad in ["", ".roles", "realm_access.", "a..b", "has space"] {
        assert!(bad.parse::<ClaimPath>().is_err(), "{bad:?}");
    }
    let claims = json!({"a": {"b": {"c": 1}}, "n": null})
        .as_object()
        .unwrap()
        .clone();
    let path = |p: &str| p.parse::<ClaimPath>().unwrap();
    assert_eq!(path("a.b.c").get(&claims), Some(&json!(1)));
    assert_eq!(path("a.b.d").get(&claims), None);
    assert_eq!(path("a.b.c.d").get(&claims), None);
    assert_eq!(path("n").get(&claims), None);
}

// --- MFA -----------------------------------------------------------------------------------------

fn identity_with(amr: &[&str], acr: Option<&str>, auth_time: Option<i64>) -> Identity {
    Identity {
        issuer: ISSUER.into(),
        subject: "alice".into(),
        email: None,
        groups: Vec::new(),
        amr: amr.iter().map(|s| s.to_string()).collect(),
        acr: acr.map(str::to_owned),
        auth_time: auth_time.map(|t| Timestamp::from_second(t).unwrap()),
        issued_at: None,
        expires_at: Timestamp::from_second(NOW + 3600).unwrap(),
        claims: Map::new(),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn mfa_helpers() {
    let id = identity_with(&["pwd", "hwk"], Some("loa2"), Some(NOW - 3600));
    assert!(id.amr_contains_any(&strings(&["otp", "hwk"])));
    assert!(!id.amr_contains_any(&strings(&["otp", "mfa"])));
    assert!(id.acr_in(&strings(&["loa2", "loa3"])));
    assert!(!id.acr_in(&strings(&["loa3"])));
    assert!(!identity_with(&[], None, None).acr_in(&strings(&["loa2"])));
    assert_eq!(id.auth_age(now()), Some(Duration::from_secs(3600)));
    assert_eq!(
        identity_with(&[], None, Some(NOW + 10)).auth_age(now()),
        Some(Duration::ZERO)
    );
    assert_eq!(identity_with(&[], None, None).auth_age(now()), None);
}

#[test]
fn mfa_requirement_lists_every_shortfall() {
    let requirement = MfaRequirement {
        amr_any: strings(&["otp", "hwk", "mfa"]),
        acr_any: strings(&["loa2"]),
        max_auth_age: Some(Duration::from_secs(1800)),
    };
    assert!(
        requirement
            .check(
                &identity_with(&["pwd", "otp"], Some("loa2"), Some(NOW - 1800)),
                now()
            )
            .is_empty()
    );

    let failures = requirement.check(
        &identity_with(&["pwd"], Some("loa1"), Some(NOW - 1801)),
        now(),
    );
    let codes: Vec<&str> = failures.iter().map(MfaFailure::code).collect();
    assert_eq!(
        codes,
        ["mfa_required", "mfa_required", "reauthentication_required"]
    );
    assert_eq!(
        failures[0].to_string(),
        "the login used [pwd], the rule needs one of [otp, hwk, mfa]"
    );
    assert_eq!(
        failures[2].to_string(),
        "the login is 1801 s old, the rule allows 1800 s; sign in again"
    );

    let failures = requirement.check(&identity_with(&["otp"], Some("loa2"), None), now());
    assert_eq!(failures, [MfaFailure::AuthTimeMissing]);
    assert!(
        MfaRequirement::default()
            .check(&identity_with(&[], None, None), now())
            .is_empty()
    );
}

// --- issuer settings -----------------------------------------------------------------------------

#[test]
fn issuer_settings_are_checked() {
    assert!(issuer(&[Algorithm::ES256]).check().is_ok());
    let mut bad = IssuerConfig::new("http://idp.test", Vec::new());
    bad.algorithms = vec![Algorithm::HS256, Algorithm::PS512];
    bad.leeway = Duration::from_secs(301);
    bad.max_token_bytes = 10;
    let problems = bad.check().unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key).collect();
    assert_eq!(
        keys,
        [
            "issuer",
            "audiences",
            "algorithms",
            "algorithms",
            "leeway",
            "max_token_bytes"
        ]
    );
    assert!(
        problems[2]
            .message
            .contains("only together with a shared secret"),
        "{}",
        problems[2]
    );
    assert!(
        problems[3].message.contains("choose from RS256"),
        "{}",
        problems[3]
    );

    let mut short = issuer(&[Algorithm::HS256]);
    short.hmac_secret = Some(HmacSecret::new(b"short".to_vec()));
    assert_eq!(short.check().unwrap_err()[0].key, "hmac_secret");
    let mut unused = issuer(&[Algorithm::ES256]);
    unused.hmac_secret = Some(HmacSecret::new(vec![1; 32]));
    assert!(unused.check().unwrap_err()[0].message.contains("no HS256"));
    assert_eq!(
        format!("{:?}", unused.hmac_secret.unwrap()),
        "HmacSecret([redacted; 32 bytes])"
    );
}

#[test]
fn peek_issuer_reads_iss_without_trusting_it() {
    let f = fixture();
    assert_eq!(peek_issuer(&f.es.token(&claims())).unwrap(), ISSUER);
    assert_eq!(
        peek_issuer(&f.es.token(&without(claims(), "iss")))
            .unwrap_err()
            .code(),
        "missing_claim"
    );
    assert_eq!(peek_issuer("a.b").unwrap_err().code(), "malformed_token");
}

// --- key sets ------------------------------------------------------------------------------------

#[test]
fn key_sets_keep_signature_keys_and_say_why_others_are_skipped() {
    let es = ec_key("es-1", Algorithm::ES256);
    let mut enc = ec_key("enc-1", Algorithm::ES256).jwk;
    enc["use"] = json!("enc");
    let small_rsa = json!({"kty": "RSA", "kid": "rsa-1024", "n": b64(&[0xc5; 128]), "e": "AQAB"});
    let p521 = json!({"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"});
    let oct = json!({"kty": "oct", "kid": "hmac", "k": b64(b"secret")});
    let short_x = json!({"kty": "EC", "crv": "P-256", "kid": "short", "x": b64(&[1; 31]), "y": b64(&[1; 32])});
    let wrapped = json!({"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": rsa_key("x", Algorithm::RS256).jwk["n"], "e": "AQAB"});
    let ops = json!({"kty": "OKP", "crv": "Ed25519", "kid": "sign-only", "key_ops": ["sign"], "x": b64(&[0; 32])});
    let document = json!({"keys": [es.jwk, enc, small_rsa, p521, oct, short_x, wrapped, ops, {"kty": "XYZ"}, {"kty": "EC", "kid": 5}]});
    let jwks = Jwks::from_json(&document.to_string()).unwrap();
    assert_eq!(jwks.len(), 1);
    assert!(jwks.contains_kid("es-1"));
    assert_eq!(jwks.keys()[0].kind, KeyKind::P256);
    let skipped = jwks.skipped().join("\n");
    for expected in [
        "key \"enc-1\": use \"enc\" is not \"sig\"",
        "key \"rsa-1024\": RSA modulus of 1024 bits is shorter than 2048",
        "key \"p521\": curve P-521 is not supported",
        "key \"hmac\": symmetric (oct) keys are never taken",
        "key \"short\": x has 31 bytes, the curve needs 32",
        "key \"oaep\": alg RSA_OAEP is not a signature algorithm",
        "key \"sign-only\": key_ops does not include \"verify\"",
        "keys[8]: key type is not RSA, EC or OKP",
        "keys[9]: not a JWK this gateway understands",
    ] {
        assert!(
            skipped.contains(expected),
            "missing {expected:?} in:\n{skipped}"
        );
    }
}

#[test]
fn unusable_key_sets_are_errors() {
    assert!(matches!(Jwks::from_json("{"), Err(JwksError::NotJson(_))));
    assert_eq!(
        Jwks::from_json("{\"kid\": 1}").unwrap_err(),
        JwksError::NotAKeySet
    );
    let error = Jwks::from_json(r#"{"keys": [{"kty": "oct", "k": "AA"}]}"#).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("no usable signature key (keys[0]: symmetric"),
        "{error}"
    );
    assert_eq!(
        Jwks::from_json(r#"{"keys": []}"#).unwrap_err(),
        JwksError::NoUsableKeys { skipped: vec![] }
    );
}

#[test]
fn an_empty_key_set_refuses_every_asymmetric_token() {
    let es = ec_key("es-1", Algorithm::ES256);
    refused(
        &es.token(&claims()),
        &issuer(&[Algorithm::ES256]),
        &Jwks::default(),
        "unknown_kid",
    );
}

// --- key cache -----------------------------------------------------------------------------------

fn at(offset: i64) -> Timestamp {
    Timestamp::from_second(NOW + offset).unwrap()
}

#[test]
fn unknown_kid_refreshes_are_rate_limited() {
    let mut cache = KeyCache::new(KeyCachePolicy::default());
    assert_eq!(cache.on_unknown_kid(at(0)), RefreshDecision::Now);
    cache.start_refresh(at(0));
    cache.refresh_succeeded(jwks_of(&[&ec_key("es-1", Algorithm::ES256)]), at(1));
    // A flood of made-up kids: at most one fetch per 30 s.
    assert_eq!(
        cache.on_unknown_kid(at(5)),
        RefreshDecision::NotBefore(at(31))
    );
    assert_eq!(
        cache.on_unknown_kid(at(30)),
        RefreshDecision::NotBefore(at(31))
    );
    assert_eq!(cache.on_unknown_kid(at(31)), RefreshDecision::Now);
}

#[test]
fn failed_refreshes_keep_the_last_good_keys_and_back_off() {
    let mut cache = KeyCache::new(KeyCachePolicy::default());
    let es = ec_key("es-1", Algorithm::ES256);
    cache.start_refresh(at(0));
    cache.refresh_succeeded(jwks_of(&[&es]), at(0));

    let mut t = 0;
    let mut gaps = Vec::new();
    for _ in 0..6 {
        let RefreshDecision::NotBefore(next) = cache.on_unknown_kid(at(t)) else {
            panic!("a fetch just happened")
        };
        gaps.push(next.as_second() - at(t).as_second());
        t = next.as_second() - NOW;
        assert_eq!(cache.on_unknown_kid(at(t)), RefreshDecision::Now);
        cache.start_refresh(at(t));
        cache.refresh_failed("connection refused", at(t));
    }
    assert_eq!(gaps, [30, 60, 120, 240, 300, 300]);
    assert_eq!(cache.consecutive_failures(), 6);
    assert_eq!(cache.last_error(), Some("connection refused"));
    // The IdP is down, but tokens signed with known keys still validate.
    let keys = cache.keys().unwrap();
    assert!(
        validate(
            &es.token(&claims()),
            &issuer(&[Algorithm::ES256]),
            &keys,
            now()
        )
        .is_ok()
    );
    assert_eq!(cache.fetched_at(), Some(at(0)));

    cache.refresh_succeeded(jwks_of(&[&es]), at(t + 1));
    assert_eq!(cache.consecutive_failures(), 0);
    assert_eq!(
        cache.on_unknown_kid(at(t + 20)),
        RefreshDecision::NotBefore(at(t + 31))
    );
}

#[test]
fn periodic_refresh_is_due_after_the_interval() {
    let mut cache = KeyCache::new(KeyCachePolicy::default());
    assert_eq!(cache.periodic(at(0)), RefreshDecision::Now, "no keys yet");
    cache.start_refresh(at(0));
    cache.refresh_failed("timeout", at(0));
    assert_eq!(
        cache.periodic(at(10)),
        RefreshDecision::NotBefore(at(60)),
        "no keys, but backing off"
    );
    cache.start_refresh(at(60));
    cache.refresh_succeeded(jwks_of(&[&ed_key("ed")]), at(60));
    assert_eq!(cache.periodic(at(61)), RefreshDecision::NotBefore(at(3660)));
    assert_eq!(cache.periodic(at(3660)), RefreshDecision::Now);
}

// --- discovery -----------------------------------------------------------------------------------

#[test]
fn discovery_documents_must_name_the_configured_issuer() {
    let document = json!({
        "issuer": ISSUER,
        "jwks_uri": "https://idp.test/realms/corp/protocol/openid-connect/certs",
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    });
    let discovery = Discovery::from_json(&document.to_string(), ISSUER).unwrap();
    assert_eq!(
        discovery.jwks_uri,
        "https://idp.test/realms/corp/protocol/openid-connect/certs"
    );
    assert_eq!(discovery.signing_algorithms, ["RS256", "ES256"]);
    assert_eq!(
        Discovery::url_for("https://idp.test/realms/corp/"),
        "https://idp.test/realms/corp/.well-known/openid-configuration"
    );

    let evil = with(document.clone(), "issuer", json!("https://evil.test"));
    assert!(matches!(
        Discovery::from_json(&evil.to_string(), ISSUER),
        Err(DiscoveryError::IssuerMismatch { .. })
    ));
    let plain = with(document.clone(), "jwks_uri", json!("http://idp.test/certs"));
    assert!(matches!(
        Discovery::from_json(&plain.to_string(), ISSUER),
        Err(DiscoveryError::InsecureJwksUri(_))
    ));
    let missing = without(document, "jwks_uri");
    assert_eq!(
        Discovery::from_json(&missing.to_string(), ISSUER),
        Err(DiscoveryError::Missing("jwks_uri"))
    );
    assert_eq!(
        Discovery::from_json("[]", ISSUER),
        Err(DiscoveryError::NotJson)
    );
}
