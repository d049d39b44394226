//! Client credentials with a certificate: a signed client assertion (RFC 7523).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use keel_resilience::ErrorClass;
use ring::rand::SecureRandom as _;
use serde::Serialize;

use super::credential::{Authority, client_assertion_request, http_client};
use super::{AccessToken, TokenError, TokenFuture, TokenProvider, TokenRequest};

const PROVIDER: &str = "client certificate credential";
/// How long a client assertion is valid (Entra ID accepts up to 10 minutes).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// A certificate and its RSA private key, as a PEM bundle holds them (the format of
/// `AZURE_CLIENT_CERTIFICATE_PATH`). The key never leaves it; `Debug` shows only the
/// thumbprint.
///
/// ```
/// # let pem = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa-2048.crt.pem")).unwrap()
/// #     + &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa-2048.pem")).unwrap();
/// use keel_token_manager::client::ClientCertificate;
///
/// let certificate = ClientCertificate::from_pem(&pem).unwrap();
/// assert_eq!(certificate.thumbprint_sha256().len(), 43); // base64url of SHA-256
/// ```
#[derive(Clone)]
pub struct ClientCertificate {
    key: jsonwebtoken::EncodingKey,
    thumbprint: String,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("x5t#S256", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

fn pem_block<'a>(pem: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)?;
    let stop = pem[start..].find(&end)? + start + end.len();
    Some(&pem[start..stop])
}

impl ClientCertificate {
    /// From a PEM text holding the certificate and its RSA private key (PKCS#8
    /// `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`), in either order.
    ///
    /// # Errors
    /// [`TokenError::Unavailable`] when either is missing or does not parse.
    pub fn from_pem(pem: &str) -> Result<Self, TokenError> {
        let certificate = pem_block(pem, "CERTIFICATE")
            .ok_or_else(|| TokenError::unavailable(PROVIDER, "no CERTIFICATE in the PEM"))?;
        let der_base64: String = certificate
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = STANDARD.decode(der_base64).map_err(|_| {
            TokenError::unavailable(PROVIDER, "the certificate is not valid base64")
        })?;
        let thumbprint = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &der));
        let key = pem_block(pem, "PRIVATE KEY")
            .or_else(|| pem_block(pem, "RSA PRIVATE KEY"))
            .ok_or_else(|| TokenError::unavailable(PROVIDER, "no private key in the PEM"))?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(key.as_bytes())
            .map_err(|_| TokenError::unavailable(PROVIDER, "the private key is not an RSA key"))?;
        Ok(Self { key, thumbprint })
    }

    /// A client assertion for `client_id` at `audience` (the token endpoint): PS256,
    /// `x5t#S256`, 5 minutes, a fresh `jti`.
    pub(super) fn assertion(&self, client_id: &str, audience: &str) -> Result<String, TokenError> {
        let mut jti = [0_u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut jti)
            .map_err(|_| {
                TokenError::failed(
                    PROVIDER,
                    ErrorClass::Transient,
                    std::io::Error::other("no randomness"),
                )
            })?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = AssertionClaims {
            aud: audience,
            iss: client_id,
            sub: client_id,
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME.as_secs(),
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::PS256);
        header.x5t_s256 = Some(self.thumbprint.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| TokenError::failed(PROVIDER, ErrorClass::Permanent, e))
    }

    /// The certificate's SHA-256 thumbprint, base64url (the assertion's `x5t#S256`).
    #[must_use]
    pub fn thumbprint_sha256(&self) -> &str {
        &self.thumbprint
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

/// The client credentials grant with a certificate: each token request carries a
/// fresh client assertion, a JWT signed PS256 with the certificate's key, with
/// `x5t#S256`, audience the token endpoint, issuer and subject the client id, a
/// 5-minute lifetime and a new `jti` (Microsoft's certificate credential format).
///
/// ```
/// # let pem = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa-2048.crt.pem")).unwrap()
/// #     + &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa-2048.pem")).unwrap();
/// use keel_token_manager::client::{Authority, ClientCertificate, ClientCertificateCredential};
///
/// let certificate = ClientCertificate::from_pem(&pem).unwrap();
/// let credential = ClientCertificateCredential::new(Authority::AzurePublic, "contoso.onmicrosoft.com", "app-id", certificate).unwrap();
/// assert!(!format!("{credential:?}").contains("PRIVATE"));
/// ```
#[derive(Clone)]
pub struct ClientCertificateCredential {
    authority: Authority,
    tenant: String,
    client_id: String,
    certificate: ClientCertificate,
    http: reqwest::Client,
}

impl fmt::Debug for ClientCertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificateCredential")
            .field("authority", &self.authority)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

impl ClientCertificateCredential {
    /// For `client_id` in `tenant` with `certificate`.
    ///
    /// # Errors
    /// [`TokenError::Unavailable`] for an invalid tenant or an empty client id.
    pub fn new(
        authority: Authority,
        tenant: impl Into<String>,
        client_id: impl Into<String>,
        certificate: ClientCertificate,
    ) -> Result<Self, TokenError> {
        let (tenant, client_id) = super::credential::registration(tenant, client_id, PROVIDER)?;
        Ok(Self {
            authority,
            tenant,
            client_id,
            certificate,
            http: http_client(PROVIDER)?,
        })
    }

    async fn request(&self, request: &TokenRequest) -> Result<AccessToken, TokenError> {
        let tenant = super::credential::requested_tenant(request, &self.tenant, PROVIDER)?;
        let endpoint = self.authority.token_endpoint(tenant);
        let assertion = self.certificate.assertion(&self.client_id, &endpoint)?;
        client_assertion_request(
            &self.http,
            &endpoint,
            &self.client_id,
            &assertion,
            request,
            PROVIDER,
        )
        .await
    }
}

impl TokenProvider for ClientCertificateCredential {
    fn token<'a>(&'a self, request: &'a TokenRequest) -> TokenFuture<'a> {
        Box::pin(self.request(request))
    }

    fn identity(&self) -> Option<String> {
        Some(super::credential::client_identity(
            &self.authority,
            &self.tenant,
            &self.client_id,
        ))
    }
}
