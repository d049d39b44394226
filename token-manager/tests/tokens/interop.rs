//! Interoperability with PyJWT (Debian's `python3-jwt` with `python3-cryptography`,
//! which `.ci/run` installs): it verifies our tokens through our published JWKS, and we
//! validate tokens it signs.

use std::process::Command;
use std::time::Duration;

use keel_token_manager::{
    AccessTokenIssuer, Algorithm, Grant, KeyRing, ValidationError, Validator,
};

use crate::{AUDIENCE, ISSUER, pem_key};

const PYTHON: &str = "/usr/bin/python3";

fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{PYTHON} is needed (apt-get install python3-jwt python3-cryptography): {e}")
        });
    assert!(
        out.status.success(),
        "PyJWT failed (apt-get install python3-jwt python3-cryptography):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ring() -> KeyRing {
    let ring = KeyRing::new(pem_key("rsa", Algorithm::RS256));
    ring.rotate(pem_key("ec", Algorithm::ES256), Duration::from_secs(600));
    ring.rotate(pem_key("ed", Algorithm::EdDSA), Duration::from_secs(600));
    ring
}

#[test]
fn pyjwt_verifies_our_tokens_through_our_jwks() {
    let dir = tempfile_dir();
    let jwks_path = dir.join("jwks.json");
    let ring = ring();
    std::fs::write(&jwks_path, ring.jwks().to_json()).unwrap();
    let mut tokens = Vec::new();
    for (kid, algorithm) in [
        ("rsa", Algorithm::RS256),
        ("ec", Algorithm::ES256),
        ("ed", Algorithm::EdDSA),
    ] {
        let signer =
            AccessTokenIssuer::new(KeyRing::new(pem_key(kid, algorithm)), ISSUER, AUDIENCE);
        let token = signer
            .issue(&Grant::new(format!("user-{kid}"), "web").scope("a b"))
            .unwrap()
            .token;
        tokens.push(serde_json::json!({"alg": algorithm.as_str(), "token": token}));
    }
    let tokens_path = dir.join("tokens.json");
    std::fs::write(&tokens_path, serde_json::to_string(&tokens).unwrap()).unwrap();
    let script = r#"
import json, sys, jwt
jwks = json.load(open(sys.argv[1]))
keyset = jwt.PyJWKSet.from_dict(jwks)
for t in json.load(open(sys.argv[2])):
    header = jwt.get_unverified_header(t["token"])
    assert header["typ"] == "at+jwt", header
    key = next(k for k in keyset.keys if k.key_id == header["kid"])
    claims = jwt.decode(t["token"], key.key, algorithms=[t["alg"]], audience=sys.argv[3], issuer=sys.argv[4])
    print(t["alg"], claims["sub"], claims["client_id"], claims["scope"])
"#;
    let out = python(
        script,
        &[
            jwks_path.to_str().unwrap(),
            tokens_path.to_str().unwrap(),
            AUDIENCE,
            ISSUER,
        ],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "RS256 user-rsa web a b",
            "ES256 user-ec web a b",
            "EdDSA user-ed web a b"
        ]
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn we_validate_tokens_pyjwt_signs() {
    let dir = crate::fixture_dir();
    let script = r#"
import sys, time, jwt
now = int(time.time())
def sign(alg, pem, kid, aud):
    claims = {"iss": sys.argv[2], "sub": "py-" + kid, "aud": aud, "exp": now + 300, "iat": now,
              "jti": "py-" + kid, "client_id": "py", "scope": "read"}
    key = open(sys.argv[1] + "/" + pem).read()
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "at+jwt"})
for alg, pem, kid in [("RS256", "rsa-2048.pem", "rsa"), ("ES256", "ec-p256.pem", "ec"), ("EdDSA", "ed25519.pem", "ed")]:
    print(sign(alg, pem, kid, sys.argv[3]))
print(sign("RS256", "rsa-2048.pem", "rsa", "https://elsewhere.example"))
"#;
    let out = python(script, &[dir.as_str(), ISSUER, AUDIENCE]);
    let tokens: Vec<&str> = out.lines().collect();
    assert_eq!(tokens.len(), 4);
    let validator = Validator::new(ring(), ISSUER, AUDIENCE);
    for (token, kid) in tokens.iter().zip(["rsa", "ec", "ed"]) {
        let claims = validator
            .validate(token)
            .unwrap_or_else(|e| panic!("{kid}: {e}"));
        assert_eq!(claims.sub, format!("py-{kid}"));
    }
    assert_eq!(
        validator.validate(tokens[3]),
        Err(ValidationError::WrongAudience)
    );
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "keel-pyjwt-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
