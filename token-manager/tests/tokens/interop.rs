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
    ring.rotate(pem_key("ec", Algorithm::ES256), Duration::from_secs(600))
        .unwrap();
    ring.rotate(pem_key("ed", Algorithm::EdDSA), Duration::from_secs(600))
        .unwrap();
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

#[test]
fn private_jwks_exported_by_pyjwt_load_as_the_same_keys() {
    let script = r#"
import json, sys, jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key
for pem, kid, alg in [("ec-p256.pem", "ec", jwt.algorithms.ECAlgorithm), ("ed25519.pem", "ed", jwt.algorithms.OKPAlgorithm)]:
    key = load_pem_private_key(open(sys.argv[1] + "/" + pem, "rb").read(), password=None)
    jwk = json.loads(alg.to_jwk(key))
    jwk["kid"] = kid
    print(json.dumps(jwk))
"#;
    let out = python(script, &[crate::fixture_dir().as_str()]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2);
    for (line, (kid, algorithm)) in lines
        .iter()
        .zip([("ec", Algorithm::ES256), ("ed", Algorithm::EdDSA)])
    {
        assert!(line.contains("\"d\""), "a private JWK");
        let from_jwk = keel_token_manager::SigningKey::from_jwk(line).unwrap();
        let from_pem = pem_key(kid, algorithm);
        assert_eq!(from_jwk.algorithm(), algorithm);
        assert_eq!(from_jwk.jwk(), from_pem.jwk(), "{kid}: the same public key");
        // And it signs tokens the PEM key's public half verifies.
        let token = AccessTokenIssuer::new(KeyRing::new(from_jwk), ISSUER, AUDIENCE)
            .issue(&Grant::new("u", "c"))
            .unwrap()
            .token;
        assert!(
            Validator::new(KeyRing::new(from_pem), ISSUER, AUDIENCE)
                .validate(&token)
                .is_ok()
        );
    }
    let rsa = r#"{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB","d":"AQAB"}"#;
    assert!(keel_token_manager::SigningKey::from_jwk(rsa).is_err());
    let short = r#"{"kty":"OKP","crv":"Ed25519","kid":"e","d":"AQAB"}"#;
    assert!(
        keel_token_manager::SigningKey::from_jwk(short)
            .unwrap_err()
            .to_string()
            .contains("32 bytes")
    );
}
