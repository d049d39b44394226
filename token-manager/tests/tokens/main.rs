//! Access tokens end to end: every algorithm, key rotation, JWKS, the rejection matrix,
//! arbitrary input, step-up, and interoperability with PyJWT.

mod interop;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel_token_manager::{
    AccessTokenIssuer, Algorithm, Grant, Jwks, KeyRing, SigningKey, StepUp, ValidationError,
    Validator,
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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs arbitrary claims with the RSA fixture and an arbitrary header, as an attacker or
/// a misconfigured issuer would.
fn forge(
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

fn claims(exp: u64) -> serde_json::Value {
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
    );
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
    );
    assert_eq!(
        validator.validate(&old_token),
        Err(ValidationError::UnknownKey("old".into()))
    );
    assert_eq!(
        validator.validate(&new_token),
        Err(ValidationError::UnknownKey("new".into()))
    );
    assert_eq!(ring.jwks().keys.len(), 1);
}

#[test]
fn the_published_jwks_is_enough_to_validate() {
    let ring = KeyRing::new(pem_key("rsa", Algorithm::RS256));
    ring.rotate(pem_key("ec", Algorithm::ES256), Duration::from_secs(60));
    ring.rotate(pem_key("ed", Algorithm::EdDSA), Duration::from_secs(60));
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
    ring.rotate(pem_key("ec", Algorithm::ES256), Duration::from_secs(600));
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
