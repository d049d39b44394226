//! Rich notifications end to end: a subscription with resource data and our
//! certificate; the emulator encrypts the changed user for it and signs validation
//! tokens; the receiver checks the tokens (keys through OpenID discovery) before it
//! believes the POST; the decryptor reads the user. Tokens with a wrong audience, a
//! wrong publisher or a broken signature are refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keel_graph_client::emulator::{Emulator, GRAPH_AUDIENCE, TenantSeed};
use keel_graph_client::webhook::{
    MemoryQueue, NotificationDecryptor, NotificationQueue, SharedClientState, ValidationTokenError,
    ValidationTokenValidator, WebhookReceiver,
};
use keel_graph_client::{GraphClient, GraphRequest};
use keel_token_manager::client::{
    Authority, CachingProvider, ClientSecretCredential, TokenProvider, TokenRequest,
};

const TENANT_ID: &str = "7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c0001";
const TENANT: &str = "contoso.onmicrosoft.com";
const SECRET: &str = "9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a";

/// A certificate (base64 DER) and its private key (PKCS#8 PEM).
fn certificate() -> (String, String) {
    let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
    let pkcs8 = key.as_der().unwrap().as_ref().to_vec();
    let signing = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
        &rcgen::PKCS_RSA_SHA256,
    )
    .unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["notify.contoso.example".into()])
        .unwrap()
        .self_signed(&signing)
        .unwrap();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(&pkcs8)
    );
    (STANDARD.encode(certificate.der()), pem)
}

/// A PKCS#12 file of `key_pem` and `certificate` (base64 DER), written by Python's
/// `cryptography`.
#[cfg(feature = "pkcs12")]
fn pkcs12_from_python(key_pem: &str, certificate: &str, password: &str, legacy: bool) -> Vec<u8> {
    let script = r"
import base64, sys
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
key_pem, cert_b64, password, legacy = sys.stdin.read().split('\x00')
key = serialization.load_pem_private_key(key_pem.encode(), None)
cert = x509.load_der_x509_certificate(base64.b64decode(cert_b64))
if legacy == '1':
    encryption = (serialization.PrivateFormat.PKCS12.encryption_builder()
        .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .build(password.encode()))
else:
    encryption = serialization.BestAvailableEncryption(password.encode())
sys.stdout.write(base64.b64encode(pkcs12.serialize_key_and_certificates(b'notify', key, cert, None, encryption)).decode())
";
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with cryptography (apt-get install python3-cryptography)");
    use std::io::Write as _;
    let input = format!(
        "{key_pem}\0{certificate}\0{password}\0{}",
        if legacy { "1" } else { "0" }
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python3 failed");
    STANDARD.decode(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rich_notifications_are_believed_on_their_validation_tokens_and_decrypted() {
    let graph = Emulator::builder()
        .tenant(
            TenantSeed::new(TENANT_ID, TENANT)
                .client("app", "secret", ["User.Read.All"])
                .users(10),
        )
        .start()
        .await
        .unwrap();
    let credential = Arc::new(CachingProvider::new(
        ClientSecretCredential::new(
            Authority::Custom(graph.base_url().to_owned()),
            TENANT,
            "app",
            "secret",
        )
        .unwrap(),
    ));
    let client = GraphClient::builder(graph.cloud())
        .tenant("contoso", credential.clone())
        .build()
        .unwrap();
    let validator = Arc::new(
        ValidationTokenValidator::discover(graph.base_url(), "app", &[TENANT_ID])
            .await
            .unwrap(),
    );
    let queue = Arc::new(MemoryQueue::new(100));
    let app: axum::Router = WebhookReceiver::builder(
        Arc::new(SharedClientState::new(SECRET)),
        queue.clone() as Arc<dyn NotificationQueue>,
    )
    .validation_tokens(validator.clone())
    .build()
    .router("/notify");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notify", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (certificate, private_key) = certificate();
    let expires = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + Duration::from_secs(3_600),
    )
    .to_string();
    let created = client
        .send(
            "contoso",
            &GraphRequest::post("/subscriptions").json(&serde_json::json!({
                "changeType": "updated",
                "notificationUrl": url,
                "resource": "users",
                "expirationDateTime": expires,
                "clientState": SECRET,
                "includeResourceData": true,
                "encryptionCertificate": certificate,
                "encryptionCertificateId": "notify-2026",
            })),
        )
        .await
        .unwrap();
    assert_eq!(created.status, 201);

    let users: serde_json::Value = client
        .send("contoso", &GraphRequest::get("/users").top(1))
        .await
        .unwrap()
        .json()
        .unwrap();
    let id = users["value"][0]["id"].as_str().unwrap().to_owned();
    assert!(graph.update_user(
        TENANT,
        &id,
        serde_json::json!({"displayName": "Encrypted Ada"})
    ));
    let started = Instant::now();
    while queue.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no notification"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delivery = queue.next().await.unwrap().unwrap();
    let content = delivery.notification.encrypted_content.clone().unwrap();
    let decryptor = NotificationDecryptor::new()
        .certificate("notify-2026", &private_key)
        .unwrap();
    let user: serde_json::Value =
        serde_json::from_slice(&decryptor.decrypt(&content).unwrap()).unwrap();
    assert_eq!(user["id"], id.as_str());
    assert_eq!(user["displayName"], "Encrypted Ada");
    #[cfg(feature = "pkcs12")]
    {
        // The same key from PKCS#12 files written by Python's `cryptography` (an
        // independent implementation): modern (AES-256, PBKDF2) and legacy (3DES).
        for legacy in [false, true] {
            let pfx = pkcs12_from_python(&private_key, &certificate, "p12-secret", legacy);
            let from_pfx = NotificationDecryptor::new()
                .certificate_pkcs12("notify-2026", &pfx, "p12-secret")
                .unwrap();
            let again: serde_json::Value =
                serde_json::from_slice(&from_pfx.decrypt(&content).unwrap()).unwrap();
            assert_eq!(again, user, "legacy: {legacy}");
            assert!(
                NotificationDecryptor::new()
                    .certificate_pkcs12("notify-2026", &pfx, "wrong")
                    .is_err()
            );
        }
        assert!(
            NotificationDecryptor::new()
                .certificate_pkcs12("x", b"not a pfx", "p")
                .is_err()
        );
    }

    // What the emulator signed passes; a token for another app, a token not issued to
    // Graph's publisher, and a forged signature do not.
    let body = serde_json::json!({"value": [{
        "subscriptionId": delivery.notification.subscription_id,
        "clientState": SECRET, "changeType": "updated", "resource": format!("Users/{id}"),
        "encryptedContent": {
            "data": content.data, "dataSignature": content.data_signature, "dataKey": content.data_key,
            "encryptionCertificateId": content.encryption_certificate_id,
            "encryptionCertificateThumbprint": "",
        },
    }]});
    let post = |tokens: Vec<String>| {
        let mut body = body.clone();
        body["validationTokens"] = serde_json::json!(tokens);
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .post(&url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(post(Vec::new()).await, 403);
    let other_app = ValidationTokenValidator::discover(graph.base_url(), "other-app", &[TENANT_ID])
        .await
        .unwrap();
    let app_token = credential
        .token(&TokenRequest::new([graph.cloud().default_scope()]))
        .await
        .unwrap()
        .secret()
        .to_owned();
    let graphs_audience =
        ValidationTokenValidator::discover(graph.base_url(), GRAPH_AUDIENCE, &[TENANT_ID])
            .await
            .unwrap();
    assert!(matches!(
        graphs_audience
            .check(std::slice::from_ref(&app_token))
            .await,
        Err(ValidationTokenError::WrongPublisher)
    ));
    assert_eq!(post(vec![app_token]).await, 403);
    let other_tenant = ValidationTokenValidator::discover(
        graph.base_url(),
        "app",
        &["3c9e8d7f-6a5b-4c3d-9e2f-1a0b9c8d0002"],
    )
    .await
    .unwrap();
    // A genuine validation token, from a fresh notification.
    assert!(graph.update_user(TENANT, &id, serde_json::json!({"displayName": "Again"})));
    let started = Instant::now();
    while queue.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no notification"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(queue.next().await.unwrap().unwrap());
    let genuine = graph.last_validation_token().unwrap();
    assert!(
        validator
            .check(std::slice::from_ref(&genuine))
            .await
            .is_ok()
    );
    assert!(matches!(
        other_app.check(std::slice::from_ref(&genuine)).await,
        Err(ValidationTokenError::Invalid(_))
    ));
    assert!(matches!(
        other_tenant.check(std::slice::from_ref(&genuine)).await,
        Err(ValidationTokenError::Invalid(_))
    ));
    // PyJWT, an independent library, verifies the emulator's validation token with
    // the keys its discovery document names.
    let script = r#"
import json, sys, urllib.request, jwt
jwks = json.load(urllib.request.urlopen(sys.argv[1]))
token = sys.argv[2]
kid = jwt.get_unverified_header(token)["kid"]
key = next(k for k in jwks["keys"] if k["kid"] == kid)
claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=[key["alg"]], audience="app", issuer=sys.argv[3])
print(claims.get("azp") or claims.get("client_id"))
"#;
    let out = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(format!("{}/common/discovery/v2.0/keys", graph.base_url()))
        .arg(&genuine)
        .arg(format!("{}/{TENANT_ID}/v2.0", graph.base_url()))
        .output()
        .expect("python3 with PyJWT (apt-get install python3-jwt python3-cryptography)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        keel_graph_client::webhook::CHANGE_TRACKING_PUBLISHER
    );
    // A character in the middle of the signature changed (not its last, whose low
    // bits may be padding).
    let signature_at = genuine.rfind('.').unwrap() + 10;
    let mut forged: Vec<char> = genuine.chars().collect();
    forged[signature_at] = if forged[signature_at] == 'A' {
        'B'
    } else {
        'A'
    };
    let forged: String = forged.into_iter().collect();
    assert!(
        validator
            .check(std::slice::from_ref(&forged))
            .await
            .is_err()
    );
    assert_eq!(post(vec![forged]).await, 403);
    assert_eq!(post(vec![genuine]).await, 202);
}
