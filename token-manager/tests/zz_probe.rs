//! Reviewer probe (temporary).
use std::time::Duration;

use keel_resilience::clock::{ManualClock, WallClock as _};
use keel_token_manager::{Algorithm, KeyRing, SigningKey, ValidationError, Validator};

const ISS: &str = "https://auth.example";
const AUD: &str = "https://api.example";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn sign(claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.typ = Some("at+jwt".into());
    header.kid = Some("k".into());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(fixture("rsa-2048.pem").as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn setup(now_ms: u64) -> (ManualClock, Validator) {
    let clock = ManualClock::new(now_ms);
    let ring = KeyRing::new(
        SigningKey::from_pem("k", Algorithm::RS256, &fixture("rsa-2048.pem")).unwrap(),
    )
    .clock(clock.clone());
    let v = Validator::new(ring, ISS, AUD).leeway(Duration::from_secs(60));
    (clock, v)
}

fn claims(exp: serde_json::Value, iat: u64) -> serde_json::Value {
    serde_json::json!({"iss": ISS, "sub": "u", "aud": AUD, "exp": exp, "iat": iat, "jti": "j", "client_id": "c"})
}

#[test]
fn boundaries() {
    let t = 1_800_000_000u64;
    let (_c, v) = setup(t * 1000 + 999);
    println!(
        "exp=t-60: {:?}",
        v.validate(&sign(&claims((t - 60).into(), t - 600)))
            .map(|_| ())
    );
    println!(
        "exp=t-61: {:?}",
        v.validate(&sign(&claims((t - 61).into(), t - 600)))
            .map(|_| ())
    );
    let mut c = claims((t + 600).into(), t);
    c["nbf"] = (t + 60).into();
    println!("nbf=t+60: {:?}", v.validate(&sign(&c)).map(|_| ()));
    c["nbf"] = (t + 61).into();
    println!("nbf=t+61: {:?}", v.validate(&sign(&c)).map(|_| ()));
    c["nbf"] = "tomorrow".into();
    println!("nbf=str: {:?}", v.validate(&sign(&c)).map(|_| ()));
    c["nbf"] = serde_json::json!(-5);
    println!("nbf=-5: {:?}", v.validate(&sign(&c)).map(|_| ()));
    c["nbf"] = serde_json::json!(null);
    println!("nbf=null: {:?}", v.validate(&sign(&c)).map(|_| ()));
    println!(
        "exp=float: {:?}",
        v.validate(&sign(&claims(serde_json::json!((t + 600) as f64 + 0.5), t)))
            .map(|_| ())
    );
    println!(
        "exp=-1: {:?}",
        v.validate(&sign(&claims(serde_json::json!(-1), t)))
            .map(|_| ())
    );
    println!(
        "exp=u64max: {:?}",
        v.validate(&sign(&claims(serde_json::json!(u64::MAX), 0)))
            .map(|_| ())
    );
    println!(
        "iat=t+61: {:?}",
        v.validate(&sign(&claims((t + 600).into(), t + 61)))
            .map(|_| ())
    );
    // Huge leeway
    let v2 = v.clone().leeway(Duration::MAX);
    println!(
        "leeway MAX exp=0: {:?}",
        v2.validate(&sign(&claims(0.into(), 0))).map(|_| ())
    );
}

#[test]
fn precedence_expired_and_wrong_audience() {
    let (_c, v) = setup(jsonwebtoken::get_current_timestamp() * 1000);
    let now = jsonwebtoken::get_current_timestamp();
    let mut c = claims((now - 3600).into(), now - 7200);
    c["aud"] = "https://other.example".into();
    let token = sign(&c);
    println!("validator: {:?}", v.validate(&token).map(|_| ()));
    // What the previous code asked jsonwebtoken for (validate_nbf on, leeway 60, exp on).
    let mut val = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    val.leeway = 60;
    val.validate_nbf = true;
    val.set_issuer(&[ISS]);
    val.set_audience(&[AUD]);
    val.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let key =
        jsonwebtoken::DecodingKey::from_rsa_pem(fixture("rsa-2048.pub.pem").as_bytes()).unwrap();
    println!(
        "jsonwebtoken (old path): {:?}",
        jsonwebtoken::decode::<serde_json::Value>(&token, &key, &val)
            .map(|_| ())
            .map_err(|e| e.into_kind())
    );
}

#[test]
fn manual_clock_wraps() {
    let c = ManualClock::new(1_000);
    c.advance(Duration::MAX);
    println!("after advance(MAX): {} ms", c.now_ms());
    let c = ManualClock::new(u64::MAX - 10);
    c.advance(Duration::from_secs(1));
    println!("after advance(1s) from MAX-10: {} ms", c.now_ms());
}

#[test]
fn distinct_ring_and_validator_errs() {
    let _ = ValidationError::Expired;
}
