//! Access tokens end to end: every algorithm, key rotation, JWKS, the rejection matrix,
//! arbitrary input, step-up, and interoperability with PyJWT.

#[cfg(feature = "axum")]
mod bearer;
mod client;
mod client_review;
mod credential;
mod interop;
mod oidc;
mod session;
#[cfg(feature = "redis")]
mod shared;
#[cfg(feature = "redis")]
mod shared_review;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel_token_manager::{
    AccessTokenIssuer, Algorithm, Grant, Jwks, KeyError, KeyRing, SealingKeys, SigningKey, StepUp,
    ValidationError, Validator,
};
use proptest::prelude::*;

pub(crate) const ISSUER: &str = "https://auth.example";
pub(crate) const AUDIENCE: &str = "https://api.example";

pub(crate) fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

pub(crate) fn fixture_dir() -> String {
    format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn pem_key(kid: &str, algorithm: Algorithm) -> SigningKey {
    let file = match algorithm {
        Algorithm::RS256 => "rsa-2048.pem",
        Algorithm::ES256 => "ec-p256.pem",
        Algorithm::EdDSA => "ed25519.pem",
    };
    SigningKey::from_pem(kid, algorithm, &fixture(file)).unwrap()
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs arbitrary claims with the RSA fixture and an arbitrary header, as an attacker or
/// a misconfigured issuer would.
pub(crate) fn forge(
    alg: jsonwebtoken::Algorithm,
    typ: Option<&str>,
    kid: Option<&str>,
    claims: &serde_json::Value,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.typ = typ.map(str::to_owned);
    header.kid = kid.map(str::to_owned);
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(fixture("rsa-2048.pem").as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

pub(crate) fn claims(exp: u64) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER, "sub": "user-1", "aud": AUDIENCE, "exp": exp, "iat": now(),
        "jti": "j-1", "client_id": "web"
    })
}

#[test]
fn every_algorithm_round_trips_from_pem_and_generated_keys() {
    let mut keys = vec![
        pem_key("rsa", Algorithm::RS256),
        pem_key("ec", Algorithm::ES256),
        pem_key("ed", Algorithm::EdDSA),
    ];
    keys.push(SigningKey::generate("ec-gen", Algorithm::ES256).unwrap());
    keys.push(SigningKey::generate("ed-gen", Algorithm::EdDSA).unwrap());
    for key in keys {
        let kid = key.kid().to_owned();
        let algorithm = key.algorithm();
        let ring = KeyRing::new(key);
        let issuer = AccessTokenIssuer::new(ring.clone(), ISSUER, AUDIENCE);
        let grant = Grant::new("user-42", "web-app")
            .scope("orders:read orders:write")
            .acr("mfa")
            .amr(["pwd", "otp"]);
        let issued = issuer.issue(&grant).unwrap();
        let header = jsonwebtoken::decode_header(&issued.token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
        assert_eq!(
            header.alg,
            match algorithm {
                Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
                Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
                Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            }
        );
        let claims = Validator::new(ring, ISSUER, AUDIENCE)
            .validate(&issued.token)
            .unwrap();
        assert_eq!(claims.sub, "user-42");
        assert_eq!(claims.client_id, "web-app");
        assert!(claims.has_scope("orders:write") && !claims.has_scope("orders"));
        assert_eq!(claims.amr, ["pwd", "otp"]);
        assert_eq!(claims.jti, issued.jti);
        // RFC 9068 default lifetime: 15 minutes.
        assert_eq!(claims.exp - claims.iat, 900);
        assert!(
            !format!("{issued:?}").contains(&issued.token),
            "Debug never shows the token"
        );
    }
}

#[test]
fn a_rotated_key_verifies_during_the_overlap_only() {
    let ring = KeyRing::new(pem_key("old", Algorithm::RS256));
    let issuer = AccessTokenIssuer::new(ring.clone(), ISSUER, AUDIENCE);
    let validator = Validator::new(ring.clone(), ISSUER, AUDIENCE);
    let old_token = issuer.issue(&Grant::new("u", "c")).unwrap().token;

    ring.rotate(
        SigningKey::generate("new", Algorithm::ES256).unwrap(),
        Duration::from_secs(900),
    )
    .unwrap();
    let new_token = issuer.issue(&Grant::new("u", "c")).unwrap().token;
    assert_eq!(
        jsonwebtoken::decode_header(&new_token)
            .unwrap()
            .kid
            .as_deref(),
        Some("new")
    );
    assert!(
        validator.validate(&old_token).is_ok(),
        "old key still verifies"
    );
    assert!(validator.validate(&new_token).is_ok());
    let kids: Vec<String> = ring.jwks().keys.into_iter().map(|k| k.kid).collect();
    assert_eq!(kids, ["new", "old"]);

    // Rotating again with no overlap retires both older keys at once.
    ring.rotate(
        SigningKey::generate("newest", Algorithm::EdDSA).unwrap(),
        Duration::ZERO,
    )
    .unwrap();
    assert_eq!(
        validator.validate(&old_token),
        Err(ValidationError::UnknownKey("old".into()))
    );
    assert_eq!(
        validator.validate(&new_token),
        Err(ValidationError::UnknownKey("new".into()))
    );
    assert_eq!(ring.jwks().keys.len(), 1);
    // Retired keys leave the ring at the next rotation: it does not grow forever.
    for i in 0..50 {
        ring.rotate(
            SigningKey::generate(&format!("k{i}"), Algorithm::EdDSA).unwrap(),
            Duration::ZERO,
        )
        .unwrap();
    }
    assert_eq!(ring.key_ids(), ["k49", "k48"]);
}

/// The ring, the issuer and the validator read one injected clock: an overlap ends, a
/// token expires, a token from the future or not yet valid is refused, all without
/// sleeping; and a stepped-back clock does not revive a retired key's tokens' validity
/// beyond what the times in them say.
#[test]
fn the_ring_the_issuer_and_the_validator_follow_an_injected_clock() {
    use keel_resilience::clock::{ManualClock, WallClock as _};
    let clock = ManualClock::starting_now();
    let ring = KeyRing::new(pem_key("old", Algorithm::RS256)).clock(clock.clone());
    let issuer =
        AccessTokenIssuer::new(ring.clone(), ISSUER, AUDIENCE).ttl(Duration::from_secs(600));
    let validator = Validator::new(ring.clone(), ISSUER, AUDIENCE).leeway(Duration::from_secs(30));
    let old_token = issuer.issue(&Grant::new("u", "c")).unwrap().token;
    ring.rotate(pem_key("new", Algorithm::EdDSA), Duration::from_secs(900))
        .unwrap();
    clock.advance(Duration::from_secs(600 + 29));
    assert!(validator.validate(&old_token).is_ok(), "within the leeway");
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        validator.validate(&old_token),
        Err(ValidationError::Expired)
    );
    // The overlap ends on the ring's clock, not the system's.
    assert_eq!(ring.jwks().keys.len(), 2);
    clock.advance(Duration::from_secs(900));
    assert_eq!(ring.key_ids(), ["new", "old"]);
    assert_eq!(ring.jwks().keys.len(), 1, "the old key no longer verifies");
    assert_eq!(
        validator.validate(&old_token),
        Err(ValidationError::UnknownKey("old".into()))
    );

    // A token issued by an issuer whose clock is ahead: refused as from the future
    // beyond the leeway, accepted within it.
    let ahead = ManualClock::new(clock.now_ms() + 31_000);
    let fast = AccessTokenIssuer::new(ring.clone(), ISSUER, AUDIENCE).clock(ahead);
    let early = fast.issue(&Grant::new("u", "c")).unwrap().token;
    assert_eq!(
        validator.validate(&early),
        Err(ValidationError::IssuedInFuture)
    );
    clock.advance(Duration::from_secs(1));
    assert!(validator.validate(&early).is_ok());

    // `nbf` is read on the validator's clock too.
    let nbf = clock.now_secs() + 120;
    let mut claims = serde_json::json!({
        "iss": ISSUER, "sub": "u", "aud": AUDIENCE, "exp": nbf + 600,
        "iat": clock.now_secs(), "nbf": nbf, "jti": "j", "client_id": "c",
    });
    let not_yet = sign_with(&ring, &claims);
    assert_eq!(
        validator.validate(&not_yet),
        Err(ValidationError::NotYetValid)
    );
    clock.advance(Duration::from_secs(91));
    assert!(validator.validate(&not_yet).is_ok());
    claims["exp"] = serde_json::json!(0);
    assert_eq!(
        validator.validate(&sign_with(&ring, &claims)),
        Err(ValidationError::Expired)
    );

    // A step-up's max_age reads the time it is given.
    let claims = validator
        .validate(
            &issuer
                .issue(&Grant::new("u", "c").auth_time(clock.now()))
                .unwrap()
                .token,
        )
        .unwrap();
    let step_up = StepUp::acr(Vec::<String>::new()).max_age(Duration::from_secs(300));
    assert!(step_up.check_at(&claims, clock.now()).is_ok());
    clock.advance(Duration::from_secs(301));
    assert!(step_up.check_at(&claims, clock.now()).is_err());
}

/// Refusal reasons keep jsonwebtoken's order (exp, nbf, iss, aud) now that the times
/// are read on the validator's clock: an expired token for another issuer and audience
/// is refused as expired (the review found it reported as the wrong audience).
#[test]
fn refusal_reasons_keep_their_order() {
    use keel_resilience::clock::ManualClock;
    let clock = ManualClock::starting_now();
    let ring = KeyRing::new(pem_key("k", Algorithm::EdDSA)).clock(clock.clone());
    let foreign =
        AccessTokenIssuer::new(ring.clone(), "https://other.example", "https://other-api")
            .ttl(Duration::from_secs(60));
    let token = foreign.issue(&Grant::new("u", "c")).unwrap().token;
    let validator = Validator::new(ring.clone(), ISSUER, AUDIENCE).leeway(Duration::ZERO);
    assert_eq!(
        validator.validate(&token),
        Err(ValidationError::WrongIssuer)
    );
    let wrong_audience = AccessTokenIssuer::new(ring, ISSUER, "https://other-api")
        .issue(&Grant::new("u", "c"))
        .unwrap()
        .token;
    assert_eq!(
        validator.validate(&wrong_audience),
        Err(ValidationError::WrongAudience)
    );
    clock.advance(Duration::from_secs(61));
    assert_eq!(validator.validate(&token), Err(ValidationError::Expired));
}

/// Signs `claims` as an `at+jwt` with the Ed25519 fixture, the ring's active key.
fn sign_with(ring: &KeyRing, claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some(ring.active().kid().to_owned());
    let key = jsonwebtoken::EncodingKey::from_ed_pem(fixture("ed25519.pem").as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

#[test]
fn a_key_ring_refuses_a_second_key_with_a_kid_it_holds() {
    let ring = KeyRing::new(SigningKey::generate("a", Algorithm::EdDSA).unwrap());
    let issuer = AccessTokenIssuer::new(ring.clone(), ISSUER, AUDIENCE);
    let validator = Validator::new(ring.clone(), ISSUER, AUDIENCE);
    let token = issuer.issue(&Grant::new("u", "c")).unwrap().token;
    // Same kid as the active key, and as a key still verifying: refused, nothing changes.
    let err = ring
        .rotate(
            SigningKey::generate("a", Algorithm::EdDSA).unwrap(),
            Duration::from_secs(60),
        )
        .unwrap_err();
    assert!(
        matches!(&err, KeyError::DuplicateKid(kid) if kid == "a"),
        "{err}"
    );
    ring.rotate(
        SigningKey::generate("b", Algorithm::EdDSA).unwrap(),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(matches!(
        ring.rotate(
            SigningKey::generate("a", Algorithm::ES256).unwrap(),
            Duration::from_secs(60)
        ),
        Err(KeyError::DuplicateKid(_))
    ));
    assert_eq!(ring.active().kid(), "b");
    assert!(
        validator.validate(&token).is_ok(),
        "the original key still verifies"
    );
}

#[test]
fn a_pem_with_more_than_one_private_key_is_refused() {
    let two = format!("{}\n{}", fixture("ec-p256.pem"), fixture("ed25519.pem"));
    assert!(matches!(
        SigningKey::from_pem("k", Algorithm::ES256, &two),
        Err(KeyError::SeveralPemKeys)
    ));
    let rsa_and_pkcs1 = format!(
        "{}\n-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        fixture("rsa-2048.pem")
    );
    assert!(matches!(
        SigningKey::from_pem("k", Algorithm::RS256, &rsa_and_pkcs1),
        Err(KeyError::SeveralPemKeys)
    ));
    // One key, with a certificate beside it, is fine.
    let with_cert = format!(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n{}",
        fixture("ec-p256.pem")
    );
    assert!(SigningKey::from_pem("k", Algorithm::ES256, &with_cert).is_ok());
}

#[test]
fn a_jwks_with_duplicate_kids_or_non_signature_keys_is_handled_safely() {
    let ring = KeyRing::new(pem_key("ec", Algorithm::ES256));
    let mut jwks = ring.jwks();
    let mut twin = jwks.keys[0].clone();
    jwks.keys.push(twin.clone());
    assert!(matches!(
        Validator::from_jwks(&jwks, ISSUER, AUDIENCE),
        Err(KeyError::DuplicateKid(_))
    ));

    let token = AccessTokenIssuer::new(ring, ISSUER, AUDIENCE)
        .issue(&Grant::new("u", "c"))
        .unwrap()
        .token;
    twin.use_ = Some("enc".into());
    let enc = Validator::from_jwks(
        &Jwks {
            keys: vec![twin.clone()],
        },
        ISSUER,
        AUDIENCE,
    )
    .unwrap();
    assert_eq!(
        enc.validate(&token),
        Err(ValidationError::UnknownKey("ec".into())),
        "an encryption key never verifies"
    );
    twin.use_ = None;
    twin.key_ops = Some(vec!["encrypt".into()]);
    let ops = Validator::from_jwks(
        &Jwks {
            keys: vec![twin.clone()],
        },
        ISSUER,
        AUDIENCE,
    )
    .unwrap();
    assert!(ops.validate(&token).is_err());
    twin.key_ops = Some(vec!["verify".into()]);
    let verify = Validator::from_jwks(&Jwks { keys: vec![twin] }, ISSUER, AUDIENCE).unwrap();
    assert!(verify.validate(&token).is_ok());
}

/// Signs any header JSON (fields jsonwebtoken's `Header` cannot express, like `crit`)
/// with the RSA fixture.
fn sign_raw(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(fixture("rsa-2048.pem").as_bytes()).unwrap();
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &key,
        jsonwebtoken::Algorithm::RS256,
    )
    .unwrap();
    format!("{signing_input}.{signature}")
}

/// Header values are bounded and contain only visible ASCII (RFC 9110 field values).
fn assert_bounded(e: &ValidationError) {
    let header = e.www_authenticate();
    assert!(header.len() < 400, "{} bytes", header.len());
    assert!(header.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
    assert!(e.to_string().len() < 300);
}

#[test]
fn forged_headers_and_time_claims_are_refused_with_bounded_messages() {
    let ring = KeyRing::new(pem_key("rsa", Algorithm::RS256));
    let validator = Validator::new(ring, ISSUER, AUDIENCE);
    let header = |extra: serde_json::Value| {
        let mut h = serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": "rsa"});
        h.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        h
    };
    let good = sign_raw(&header(serde_json::json!({})), &claims(now() + 600));
    assert!(validator.validate(&good).is_ok());

    // crit naming anything (RFC 7515 §4.1.11): no extension is implemented.
    for crit in [
        serde_json::json!(["urn:x:unknown"]),
        serde_json::json!(["exp"]),
        serde_json::json!([]),
        serde_json::json!("b64"),
    ] {
        let token = sign_raw(
            &header(serde_json::json!({"crit": crit, "urn:x:unknown": true})),
            &claims(now() + 600),
        );
        assert_eq!(
            validator.validate(&token),
            Err(ValidationError::CriticalHeader)
        );
    }

    // Attacker-sized text comes back bounded and escaped.
    let huge_kid = "k\"\r\n".repeat(25_000); // 100,000 characters, as in the review
    let token = sign_raw(
        &header(serde_json::json!({"kid": huge_kid})),
        &claims(now() + 600),
    );
    assert_eq!(validator.validate(&token), Err(ValidationError::TooLarge));
    let roomy = validator.clone().max_token_len(1 << 20);
    let err = roomy.validate(&token).unwrap_err();
    assert!(matches!(&err, ValidationError::UnknownKey(k) if k.len() <= 131 && k.ends_with("...")));
    assert_bounded(&err);
    let err = validator
        .validate(&sign_raw(
            &header(serde_json::json!({"alg": "X".repeat(10_000)})),
            &claims(now() + 600),
        ))
        .unwrap_err();
    assert!(matches!(&err, ValidationError::AlgorithmNotAllowed(a) if a.len() <= 131));
    assert_bounded(&err);
    let err = validator
        .validate(&sign_raw(
            &header(serde_json::json!({"typ": "\u{1F600}".repeat(1_000)})),
            &claims(now() + 600),
        ))
        .unwrap_err();
    assert!(matches!(&err, ValidationError::WrongType(Some(t)) if t.len() <= 131 && t.is_ascii()));
    assert_bounded(&err);
    let mut odd = claims(now() + 600);
    odd["amr"] = serde_json::json!("x\"".repeat(1_500)); // serde echoes the string back
    let err = validator
        .validate(&sign_raw(&header(serde_json::json!({})), &odd))
        .unwrap_err();
    assert!(matches!(err, ValidationError::InvalidClaims(_)), "{err:?}");
    assert_bounded(&err);
    assert_eq!(
        validator.validate(&format!("{good}{}", "A".repeat(20_000))),
        Err(ValidationError::TooLarge)
    );

    // iat ahead of now beyond the leeway.
    let mut future = claims(now() + 7200);
    future["iat"] = serde_json::json!(now() + 3600);
    let future = sign_raw(&header(serde_json::json!({})), &future);
    assert_eq!(
        validator.validate(&future),
        Err(ValidationError::IssuedInFuture)
    );
    let mut skewed = claims(now() + 600);
    skewed["iat"] = serde_json::json!(now() + 30);
    assert!(
        validator
            .validate(&sign_raw(&header(serde_json::json!({})), &skewed))
            .is_ok(),
        "within the leeway"
    );

    // A maximum lifetime for tokens from other issuers.
    let long = sign_raw(&header(serde_json::json!({})), &claims(now() + 86_400));
    assert!(validator.validate(&long).is_ok());
    let capped = validator.max_lifetime(Duration::from_secs(3600));
    assert_eq!(
        capped.validate(&long),
        Err(ValidationError::LifetimeTooLong)
    );
    assert!(capped.validate(&good).is_ok());

    let reasons: std::collections::HashSet<&str> = [
        ValidationError::CriticalHeader,
        ValidationError::TooLarge,
        ValidationError::IssuedInFuture,
        ValidationError::LifetimeTooLong,
        ValidationError::Malformed,
    ]
    .iter()
    .map(ValidationError::reason)
    .collect();
    assert_eq!(reasons.len(), 5, "each refusal has its own reason");
}

#[test]
fn the_published_jwks_is_enough_to_validate() {
    let ring = KeyRing::new(pem_key("rsa", Algorithm::RS256));
    ring.rotate(pem_key("ec", Algorithm::ES256), Duration::from_secs(60))
        .unwrap();
    ring.rotate(pem_key("ed", Algorithm::EdDSA), Duration::from_secs(60))
        .unwrap();
    let json = ring.jwks().to_json();
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    for key in keys {
        assert_eq!(key["use"], "sig");
        assert!(
            key.get("d").is_none() && key.get("p").is_none(),
            "no private parts: {key}"
        );
    }
    assert_eq!(keys[0]["kty"], "OKP");
    assert_eq!(keys[0]["crv"], "Ed25519");
    assert_eq!(keys[1]["kty"], "EC");
    assert_eq!(keys[1]["crv"], "P-256");
    assert_eq!(keys[2]["kty"], "RSA");
    assert_eq!(keys[2]["e"], "AQAB");

    let validator =
        Validator::from_jwks(&Jwks::from_json(&json).unwrap(), ISSUER, AUDIENCE).unwrap();
    for kid in ["rsa", "ec", "ed"] {
        let ring = KeyRing::new(pem_key(
            kid,
            match kid {
                "rsa" => Algorithm::RS256,
                "ec" => Algorithm::ES256,
                _ => Algorithm::EdDSA,
            },
        ));
        let token = AccessTokenIssuer::new(ring, ISSUER, AUDIENCE)
            .issue(&Grant::new("u", "c"))
            .unwrap()
            .token;
        assert!(validator.validate(&token).is_ok(), "{kid}");
    }
}

#[test]
fn each_bad_token_is_refused_for_its_own_reason() {
    let ring = KeyRing::new(pem_key("rsa", Algorithm::RS256));
    ring.rotate(pem_key("ec", Algorithm::ES256), Duration::from_secs(600))
        .unwrap();
    let validator = Validator::new(ring.clone(), ISSUER, AUDIENCE).leeway(Duration::from_secs(5));
    let good = forge(
        jsonwebtoken::Algorithm::RS256,
        Some("at+jwt"),
        Some("rsa"),
        &claims(now() + 600),
    );
    assert!(validator.validate(&good).is_ok());

    // alg none, with a valid-looking body.
    let b64 = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "none", "typ": "at+jwt", "kid": "rsa"})),
        b64(&claims(now() + 600))
    );
    assert_eq!(
        validator.validate(&none),
        Err(ValidationError::AlgorithmNone)
    );

    // Algorithm confusion: HS256 keyed with the RSA public key as a shared secret.
    let public_n = ring
        .jwks()
        .keys
        .iter()
        .find(|k| k.kid == "rsa")
        .unwrap()
        .n
        .clone()
        .unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.typ = Some("at+jwt".into());
    header.kid = Some("rsa".into());
    let hs = jsonwebtoken::encode(
        &header,
        &claims(now() + 600),
        &jsonwebtoken::EncodingKey::from_secret(public_n.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        validator.validate(&hs),
        Err(ValidationError::AlgorithmNotAllowed("HS256".into()))
    );

    // An RS256 signature presented as ES256 under the EC key's id.
    let mismatch = {
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[0] = b64(&serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": "rsa"}));
        parts.join(".")
    };
    assert_eq!(
        validator.validate(&mismatch),
        Err(ValidationError::AlgorithmMismatch)
    );

    let wrong_typ = forge(
        jsonwebtoken::Algorithm::RS256,
        Some("JWT"),
        Some("rsa"),
        &claims(now() + 600),
    );
    assert_eq!(
        validator.validate(&wrong_typ),
        Err(ValidationError::WrongType(Some("JWT".into())))
    );
    let no_typ = forge(
        jsonwebtoken::Algorithm::RS256,
        None,
        Some("rsa"),
        &claims(now() + 600),
    );
    assert_eq!(
        validator.validate(&no_typ),
        Err(ValidationError::WrongType(None))
    );
    let no_kid = forge(
        jsonwebtoken::Algorithm::RS256,
        Some("at+jwt"),
        None,
        &claims(now() + 600),
    );
    assert_eq!(
        validator.validate(&no_kid),
        Err(ValidationError::MissingKeyId)
    );
    let unknown = forge(
        jsonwebtoken::Algorithm::RS256,
        Some("at+jwt"),
        Some("nope"),
        &claims(now() + 600),
    );
    assert_eq!(
        validator.validate(&unknown),
        Err(ValidationError::UnknownKey("nope".into()))
    );

    let expired = forge(
        jsonwebtoken::Algorithm::RS256,
        Some("at+jwt"),
        Some("rsa"),
        &claims(now() - 60),
    );
    assert_eq!(validator.validate(&expired), Err(ValidationError::Expired));
    let mut early = claims(now() + 600);
    early["nbf"] = serde_json::json!(now() + 300);
    let early = forge(
        jsonwebtoken::Algorithm::RS256,
        Some("at+jwt"),
        Some("rsa"),
        &early,
    );
    assert_eq!(
        validator.validate(&early),
        Err(ValidationError::NotYetValid)
    );

    let other_audience = Validator::new(ring.clone(), ISSUER, "https://other.example");
    assert_eq!(
        other_audience.validate(&good),
        Err(ValidationError::WrongAudience)
    );
    let other_issuer = Validator::new(ring, "https://evil.example", AUDIENCE);
    assert_eq!(
        other_issuer.validate(&good),
        Err(ValidationError::WrongIssuer)
    );

    let mut missing = claims(now() + 600);
    missing.as_object_mut().unwrap().remove("client_id");
    let missing = forge(
        jsonwebtoken::Algorithm::RS256,
        Some("at+jwt"),
        Some("rsa"),
        &missing,
    );
    assert!(
        matches!(validator.validate(&missing), Err(ValidationError::InvalidClaims(m)) if m.contains("client_id"))
    );

    // Tampering: a changed claim, or a changed signature.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut body = claims(now() + 600);
    body["sub"] = serde_json::json!("admin");
    parts[1] = b64(&body);
    assert_eq!(
        validator.validate(&parts.join(".")),
        Err(ValidationError::BadSignature)
    );
    // A character well inside the signature (the last one may carry only padding bits).
    let mut sig: Vec<char> = good.chars().collect();
    let i = sig.len() - 10;
    sig[i] = if sig[i] == 'A' { 'B' } else { 'A' };
    let sig: String = sig.into_iter().collect();
    assert_eq!(validator.validate(&sig), Err(ValidationError::BadSignature));

    assert_eq!(
        validator.validate("not a token"),
        Err(ValidationError::Malformed)
    );
    assert!(
        ValidationError::Expired
            .www_authenticate()
            .starts_with("Bearer error=\"invalid_token\"")
    );
}

#[test]
fn step_up_demands_the_right_acr_and_a_recent_login() {
    let ring = KeyRing::new(SigningKey::generate("k", Algorithm::EdDSA).unwrap());
    let issuer = AccessTokenIssuer::new(ring.clone(), ISSUER, AUDIENCE);
    let validator = Validator::new(ring, ISSUER, AUDIENCE);
    let requirement = StepUp::acr(["urn:example:mfa"]).max_age(Duration::from_secs(300));

    let weak = issuer
        .issue(
            &Grant::new("u", "c")
                .acr("urn:example:pwd")
                .auth_time(SystemTime::now()),
        )
        .unwrap();
    let challenge = requirement
        .check(&validator.validate(&weak.token).unwrap())
        .unwrap_err();
    assert!(
        challenge
            .www_authenticate()
            .contains("error=\"insufficient_user_authentication\"")
    );
    assert!(
        challenge
            .www_authenticate()
            .contains("acr_values=\"urn:example:mfa\"")
    );

    let stale = issuer
        .issue(
            &Grant::new("u", "c")
                .acr("urn:example:mfa")
                .auth_time(SystemTime::now() - Duration::from_secs(3600)),
        )
        .unwrap();
    assert!(
        requirement
            .check(&validator.validate(&stale.token).unwrap())
            .is_err()
    );

    let strong = issuer
        .issue(
            &Grant::new("u", "c")
                .acr("urn:example:mfa")
                .auth_time(SystemTime::now()),
        )
        .unwrap();
    assert!(
        requirement
            .check(&validator.validate(&strong.token).unwrap())
            .is_ok()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_input_never_panics_the_validator(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let ring = KeyRing::new(SigningKey::generate("k", Algorithm::ES256).unwrap());
        let validator = Validator::new(ring, ISSUER, AUDIENCE);
        let text = String::from_utf8_lossy(&bytes);
        prop_assert!(validator.validate(&text).is_err());
    }

    #[test]
    fn arbitrary_jws_shaped_input_never_panics(header in any::<Vec<u8>>(), body in any::<Vec<u8>>(), sig in any::<Vec<u8>>()) {
        let ring = KeyRing::new(SigningKey::generate("k", Algorithm::ES256).unwrap());
        let validator = Validator::new(ring, ISSUER, AUDIENCE);
        let token = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(body), URL_SAFE_NO_PAD.encode(sig));
        prop_assert!(validator.validate(&token).is_err());
    }
}

proptest! {
    // Each case signs with RSA: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_header_fields_are_refused_with_bounded_messages(
        alg in prop_oneof![Just("RS256".to_owned()), any::<String>()],
        typ in prop_oneof![Just("at+jwt".to_owned()), any::<String>()],
        kid in prop_oneof![Just("rsa".to_owned()), any::<String>(), "[a-z\"\\\\]{100,3000}"],
        crit in any::<bool>(),
    ) {
        let ring = KeyRing::new(pem_key("rsa", Algorithm::RS256));
        let validator = Validator::new(ring, ISSUER, AUDIENCE);
        let mut header = serde_json::json!({"alg": alg, "typ": typ, "kid": kid});
        if crit {
            header["crit"] = serde_json::json!(["urn:x"]);
        }
        let token = sign_raw(&header, &claims(now() + 600));
        match validator.validate(&token) {
            Ok(_) => prop_assert!(!crit && alg == "RS256" && typ == "at+jwt" && kid == "rsa"),
            Err(e) => {
                prop_assert!(!crit || e == ValidationError::CriticalHeader || e == ValidationError::Malformed, "{e:?}");
                let value = e.www_authenticate();
                prop_assert!(value.len() < 400);
                prop_assert!(value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
            }
        }
    }
}

/// A `crit` that is present counts, whatever its value: `"crit": null` is not "no
/// crit" (RFC 7515 §4.1.11 makes any `crit` that is not a list of understood names
/// invalid), and the check must not depend on how a JSON `null` deserializes.
#[test]
fn a_null_crit_header_is_refused_too() {
    let ring = KeyRing::new(pem_key("rsa", Algorithm::RS256));
    let validator = Validator::new(ring, ISSUER, AUDIENCE);
    let token = sign_raw(
        &serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": "rsa", "crit": null}),
        &claims(now() + 600),
    );
    assert_eq!(
        validator.validate(&token),
        Err(ValidationError::CriticalHeader)
    );
}

/// A PEM bundle with the certificate before the key (a common layout) holds one private
/// key, and `from_pem` accepts it. The key that signs must be the key the JWK was made
/// from: jsonwebtoken's RSA loader takes the *first* PEM block (here the certificate),
/// so every token failed to sign (or, with another public key first, signing and the
/// published JWK would disagree).
#[test]
fn an_rsa_pem_bundle_with_its_certificate_first_signs_with_its_key() {
    let bundle = format!("{}{}", fixture("rsa-2048.crt.pem"), fixture("rsa-2048.pem"));
    let key = SigningKey::from_pem("rsa", Algorithm::RS256, &bundle).unwrap();
    let ring = KeyRing::new(key);
    let issued =
        AccessTokenIssuer::new(ring.clone(), ISSUER, AUDIENCE).issue(&Grant::new("u", "c"));
    let token = match issued {
        Ok(issued) => issued.token,
        Err(e) => panic!("a key that loaded does not sign: {e}"),
    };
    let validator = Validator::from_jwks(&ring.jwks(), ISSUER, AUDIENCE).unwrap();
    assert!(validator.validate(&token).is_ok());
}

/// A JWKS may hold keys for algorithms this validator does not accept (RS512, ES384, an
/// `oct` key, an encryption key that names its `alg` but no `use`). They can never
/// verify a token it accepts; one of them must not make the whole set unusable.
#[test]
fn a_jwks_with_a_key_of_another_algorithm_still_serves_its_other_keys() {
    let ring = KeyRing::new(pem_key("ec", Algorithm::ES256));
    let token = AccessTokenIssuer::new(ring.clone(), ISSUER, AUDIENCE)
        .issue(&Grant::new("u", "c"))
        .unwrap()
        .token;
    let ours = serde_json::to_value(&ring.jwks().keys[0]).unwrap();
    for other in [
        serde_json::json!({"kty": "EC", "kid": "p384", "use": "sig", "crv": "P-384", "x": "AA", "y": "AA"}),
        serde_json::json!({"kty": "RSA", "kid": "rs512", "alg": "RS512", "n": "AQAB", "e": "AQAB"}),
        serde_json::json!({"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP-256", "n": "AQAB", "e": "AQAB"}),
        serde_json::json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}),
    ] {
        let json = serde_json::json!({"keys": [other.clone(), ours.clone()]}).to_string();
        let jwks = Jwks::from_json(&json).unwrap();
        let validator = match Validator::from_jwks(&jwks, ISSUER, AUDIENCE) {
            Ok(v) => v,
            Err(e) => panic!("{other}: the whole set was refused: {e}"),
        };
        assert!(validator.validate(&token).is_ok(), "{other}");
    }
    // A key of an accepted algorithm that is broken still refuses the set.
    let broken = serde_json::json!({"kty": "EC", "kid": "bad", "crv": "P-256", "x": "AA"});
    let json = serde_json::json!({"keys": [broken, ours]}).to_string();
    assert!(matches!(
        Validator::from_jwks(&Jwks::from_json(&json).unwrap(), ISSUER, AUDIENCE),
        Err(KeyError::Jwk(_))
    ));
}

/// An overlap too long to add to the clock ("keep verifying for ever") must not panic.
#[test]
fn a_rotation_with_an_unbounded_overlap_does_not_panic() {
    let ring = KeyRing::new(SigningKey::generate("a", Algorithm::EdDSA).unwrap());
    let old = AccessTokenIssuer::new(ring.clone(), ISSUER, AUDIENCE)
        .issue(&Grant::new("u", "c"))
        .unwrap()
        .token;
    let rotated = std::panic::catch_unwind(|| {
        ring.rotate(
            SigningKey::generate("b", Algorithm::EdDSA).unwrap(),
            Duration::MAX,
        )
    });
    assert!(matches!(rotated, Ok(Ok(()))), "rotate panicked or failed");
    assert_eq!(ring.active().kid(), "b");
    let validator = Validator::new(ring, ISSUER, AUDIENCE);
    assert!(
        validator.validate(&old).is_ok(),
        "the old key still verifies"
    );
}

/// Every token-manager error answers keel-resilience's `Classify` (issue 13), and keeps
/// its cause as a source rather than in its message.
#[test]
fn token_errors_are_classified_and_keep_their_source() {
    use keel_resilience::{Classify, ErrorClass};
    use keel_token_manager::SealError;
    assert_eq!(ValidationError::Expired.class(), ErrorClass::Permanent);
    assert_eq!(
        KeyError::DuplicateKid("k".into()).class(),
        ErrorClass::Permanent
    );
    assert_eq!(SealError::Random.class(), ErrorClass::Transient);
    assert_eq!(SealError::Corrupt.class(), ErrorClass::Permanent);
    let keys = SealingKeys::generate(1).unwrap();
    let other = SealingKeys::generate(2).unwrap();
    let sealed = keys.seal(b"x", b"ctx").unwrap();
    let refused = other.open(&sealed, b"ctx").unwrap_err();
    assert_eq!(refused.class(), ErrorClass::Permanent);
}
