//! Signing keys (RS256, ES256, EdDSA), the key ring that rotates them, and the JWKS
//! document that publishes their public halves.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use keel_resilience::clock::{SystemClock, WallClock};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair,
};
use serde::{Deserialize, Serialize};

use crate::untrusted::shown;

/// The signature algorithms Keel issues and accepts. There is deliberately no `none` and
/// no HMAC: a public key can never be mistaken for a shared secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RSA 2048 bits and up).
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl Algorithm {
    /// The JOSE name (`"RS256"`, `"ES256"`, `"EdDSA"`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// Parses a JOSE name; `None` for anything else, `none` and HMAC included.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(Algorithm::RS256),
            "ES256" => Some(Algorithm::ES256),
            "EdDSA" => Some(Algorithm::EdDSA),
            _ => None,
        }
    }

    pub(crate) fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key could not be loaded or generated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The PEM text has no `-----BEGIN PRIVATE KEY-----` block (PKCS#8).
    #[error(
        "expected a PKCS#8 PEM block (-----BEGIN PRIVATE KEY-----); convert with `openssl pkcs8 -topk8 -nocrypt`"
    )]
    NotPkcs8Pem,
    /// The key does not suit the algorithm (wrong type, size or encoding).
    #[error("the key is not a valid {algorithm} private key: {reason}")]
    Rejected {
        /// The algorithm asked for.
        algorithm: Algorithm,
        /// What the crypto library said (never key material).
        reason: String,
    },
    /// The `kid` is empty or too long.
    #[error("a key id must be 1 to 128 printable ASCII characters")]
    BadKid,
    /// A JWK or JWKS could not be read.
    #[error("invalid JWK: {0}")]
    Jwk(String),
    /// Two keys with one `kid`: in a key ring (a rotation to a `kid` still in use) or in
    /// a JWKS. Which one a token means would be ambiguous; give the new key a new id.
    #[error("the key id {0:?} is already in use")]
    DuplicateKid(String),
    /// The PEM text holds more than one private key: which one signs and which one is
    /// published would be a guess. Give one key per PEM.
    #[error("the PEM text holds more than one private key; give exactly one")]
    SeveralPemKeys,
}

/// One public key as a JSON Web Key (RFC 7517), as published in a JWKS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `RSA`, `EC` or `OKP`.
    pub kty: String,
    /// The key id.
    pub kid: String,
    /// `sig` for signature keys (ours always say so); a key with another `use` never
    /// verifies a token.
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// What the key may do (RFC 7517 §4.3); when present, it must include `verify` for
    /// the key to verify a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ops: Option<Vec<String>>,
    /// The algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// RSA modulus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA exponent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// `P-256` or `Ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// EC / OKP x coordinate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC y coordinate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

impl Jwk {
    /// Whether `use` and `key_ops` allow verifying signatures with this key (both absent
    /// allows it, as RFC 7517 does).
    #[must_use]
    pub fn verifies_signatures(&self) -> bool {
        self.use_.as_deref().is_none_or(|u| u == "sig")
            && self
                .key_ops
                .as_ref()
                .is_none_or(|ops| ops.iter().any(|op| op == "verify"))
    }

    /// The algorithm this key verifies, from `alg` or else from `kty`/`crv`.
    #[must_use]
    pub fn algorithm(&self) -> Option<Algorithm> {
        if let Some(alg) = &self.alg {
            return Algorithm::parse(alg);
        }
        match (self.kty.as_str(), self.crv.as_deref()) {
            ("RSA", _) => Some(Algorithm::RS256),
            ("EC", Some("P-256")) => Some(Algorithm::ES256),
            ("OKP", Some("Ed25519")) => Some(Algorithm::EdDSA),
            _ => None,
        }
    }

    /// The verification key.
    ///
    /// # Errors
    /// [`KeyError::Jwk`] when a component is missing or invalid, or the type and the
    /// algorithm disagree.
    pub(crate) fn decoding_key(&self) -> Result<(Algorithm, DecodingKey), KeyError> {
        let missing =
            |what: &str| KeyError::Jwk(format!("kid {:?}: missing {what}", shown(&self.kid)));
        let algorithm = self.algorithm().ok_or_else(|| {
            KeyError::Jwk(format!(
                "kid {:?}: unsupported key type or algorithm",
                shown(&self.kid)
            ))
        })?;
        let key = match (algorithm, self.kty.as_str()) {
            (Algorithm::RS256, "RSA") => DecodingKey::from_rsa_components(
                self.n.as_deref().ok_or_else(|| missing("n"))?,
                self.e.as_deref().ok_or_else(|| missing("e"))?,
            ),
            (Algorithm::ES256, "EC") => DecodingKey::from_ec_components(
                self.x.as_deref().ok_or_else(|| missing("x"))?,
                self.y.as_deref().ok_or_else(|| missing("y"))?,
            ),
            (Algorithm::EdDSA, "OKP") => {
                DecodingKey::from_ed_components(self.x.as_deref().ok_or_else(|| missing("x"))?)
            }
            _ => {
                return Err(KeyError::Jwk(format!(
                    "kid {:?}: kty and alg disagree",
                    shown(&self.kid)
                )));
            }
        }
        .map_err(|e| KeyError::Jwk(format!("kid {:?}: {e}", shown(&self.kid))))?;
        Ok((algorithm, key))
    }
}

/// A JSON Web Key Set: what a service publishes at `/.well-known/jwks.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// Parses a JWKS document.
    ///
    /// # Errors
    /// [`KeyError::Jwk`] when it is not a JWKS.
    pub fn from_json(json: &str) -> Result<Self, KeyError> {
        serde_json::from_str(json).map_err(|e| KeyError::Jwk(shown(&e.to_string())))
    }

    /// The document as JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{\"keys\":[]}".to_owned())
    }
}

/// A private signing key with its `kid`. `Debug` shows the id and algorithm only.
#[derive(Clone)]
pub struct SigningKey {
    kid: Arc<str>,
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: Jwk,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn check_kid(kid: &str) -> Result<(), KeyError> {
    if kid.is_empty() || kid.len() > 128 || !kid.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KeyError::BadKid);
    }
    Ok(())
}

/// The DER inside a `-----BEGIN PRIVATE KEY-----` block, the only private key of `pem`.
fn pkcs8_der(pem: &str) -> Result<Vec<u8>, KeyError> {
    // Any kind of private key counts (PKCS#8, PKCS#1 RSA, SEC1 EC, encrypted): the
    // signer must never load one key while the JWKS publishes another.
    let private_keys = pem
        .match_indices("-----BEGIN ")
        .filter(|(at, _)| {
            pem[*at..]
                .lines()
                .next()
                .is_some_and(|line| line.contains("PRIVATE KEY-----"))
        })
        .count();
    if private_keys > 1 {
        return Err(KeyError::SeveralPemKeys);
    }
    let start = pem
        .find("-----BEGIN PRIVATE KEY-----")
        .ok_or(KeyError::NotPkcs8Pem)?;
    let body = &pem[start + "-----BEGIN PRIVATE KEY-----".len()..];
    let end = body
        .find("-----END PRIVATE KEY-----")
        .ok_or(KeyError::NotPkcs8Pem)?;
    let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(b64).map_err(|_| KeyError::NotPkcs8Pem)
}

impl SigningKey {
    /// Loads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    ///
    /// # Errors
    /// [`KeyError`] when the PEM, the key or the `kid` is not valid for `algorithm`.
    pub fn from_pem(kid: &str, algorithm: Algorithm, pem: &str) -> Result<Self, KeyError> {
        let der = pkcs8_der(pem)?;
        Self::from_pkcs8_der(kid, algorithm, &der)
    }

    /// Loads a private JWK: `kty` `EC` with `crv` `P-256` (ES256) or `kty` `OKP` with `crv`
    /// `Ed25519` (EdDSA), with `d` and its `kid`. RSA keys load from PEM.
    ///
    /// # Errors
    /// [`KeyError::Jwk`] for a JWK that is not such a private key, [`KeyError::Rejected`]
    /// when `d` and the public part disagree.
    pub fn from_jwk(json: &str) -> Result<Self, KeyError> {
        #[derive(Deserialize)]
        struct PrivateJwk {
            kty: String,
            kid: String,
            #[serde(default)]
            crv: Option<String>,
            #[serde(default)]
            d: Option<String>,
            #[serde(default)]
            x: Option<String>,
            #[serde(default)]
            y: Option<String>,
        }
        let jwk: PrivateJwk =
            serde_json::from_str(json).map_err(|e| KeyError::Jwk(shown(&e.to_string())))?;
        let part = |value: &Option<String>, name: &str, len: usize| -> Result<Vec<u8>, KeyError> {
            let bytes = value
                .as_deref()
                .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
                .ok_or_else(|| {
                    KeyError::Jwk(format!(
                        "kid {:?}: missing or invalid {name}",
                        shown(&jwk.kid)
                    ))
                })?;
            if bytes.len() != len {
                return Err(KeyError::Jwk(format!(
                    "kid {:?}: {name} must be {len} bytes",
                    shown(&jwk.kid)
                )));
            }
            Ok(bytes)
        };
        match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("OKP", Some("Ed25519")) => {
                // PKCS#8 v1 (RFC 8410) around the 32-byte seed.
                let mut der = vec![
                    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04,
                    0x22, 0x04, 0x20,
                ];
                der.extend_from_slice(&part(&jwk.d, "d", 32)?);
                Self::from_pkcs8_der(&jwk.kid, Algorithm::EdDSA, &der)
            }
            ("EC", Some("P-256")) => {
                // PKCS#8 around an RFC 5915 ECPrivateKey with its public point.
                let mut der = vec![
                    0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48,
                    0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01,
                    0x07, 0x04, 0x6d, 0x30, 0x6b, 0x02, 0x01, 0x01, 0x04, 0x20,
                ];
                der.extend_from_slice(&part(&jwk.d, "d", 32)?);
                der.extend_from_slice(&[0xa1, 0x44, 0x03, 0x42, 0x00, 0x04]);
                der.extend_from_slice(&part(&jwk.x, "x", 32)?);
                der.extend_from_slice(&part(&jwk.y, "y", 32)?);
                Self::from_pkcs8_der(&jwk.kid, Algorithm::ES256, &der)
            }
            ("RSA", _) => Err(KeyError::Jwk(
                "load RSA private keys from PKCS#8 PEM".into(),
            )),
            _ => Err(KeyError::Jwk(format!(
                "kid {:?}: not a P-256 or Ed25519 private key",
                shown(&jwk.kid)
            ))),
        }
    }

    /// Generates a fresh ES256 or EdDSA key (ring cannot generate RSA keys: load those
    /// with [`from_pem`](Self::from_pem), e.g. from `openssl genpkey -algorithm RSA`).
    ///
    /// # Errors
    /// [`KeyError::Rejected`] for RS256.
    pub fn generate(kid: &str, algorithm: Algorithm) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let rejected = |reason: &str| KeyError::Rejected {
            algorithm,
            reason: reason.to_owned(),
        };
        let der = match algorithm {
            Algorithm::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| rejected("key generation failed"))?
            }
            Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| rejected("key generation failed"))?,
            Algorithm::RS256 => {
                return Err(rejected("RSA keys cannot be generated here; load a PEM"));
            }
        };
        Self::from_pkcs8_der(kid, algorithm, der.as_ref())
    }

    fn from_pkcs8_der(kid: &str, algorithm: Algorithm, der: &[u8]) -> Result<Self, KeyError> {
        check_kid(kid)?;
        let rejected = |reason: String| KeyError::Rejected { algorithm, reason };
        let mut jwk = Jwk {
            kty: String::new(),
            kid: kid.to_owned(),
            use_: Some("sig".to_owned()),
            key_ops: None,
            alg: Some(algorithm.as_str().to_owned()),
            n: None,
            e: None,
            crv: None,
            x: None,
            y: None,
        };
        let encoding = match algorithm {
            Algorithm::RS256 => {
                let pair = RsaKeyPair::from_pkcs8(der).map_err(|e| rejected(e.to_string()))?;
                let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
                jwk.kty = "RSA".into();
                jwk.n = Some(b64(&public.n));
                jwk.e = Some(b64(&public.e));
                // Only the block the JWK was made from: jsonwebtoken's loader takes the
                // first block of a PEM, which in a bundle may be a certificate.
                let block = format!(
                    "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                    STANDARD.encode(der)
                );
                EncodingKey::from_rsa_pem(block.as_bytes()).map_err(|e| rejected(e.to_string()))?
            }
            Algorithm::ES256 => {
                let pair = EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &SystemRandom::new(),
                )
                .map_err(|e| rejected(e.to_string()))?;
                let point = pair.public_key().as_ref();
                if point.len() != 65 {
                    return Err(rejected("unexpected P-256 public key length".into()));
                }
                jwk.kty = "EC".into();
                jwk.crv = Some("P-256".into());
                jwk.x = Some(b64(&point[1..33]));
                jwk.y = Some(b64(&point[33..65]));
                EncodingKey::from_ec_der(der)
            }
            Algorithm::EdDSA => {
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|e| rejected(e.to_string()))?;
                jwk.kty = "OKP".into();
                jwk.crv = Some("Ed25519".into());
                jwk.x = Some(b64(pair.public_key().as_ref()));
                EncodingKey::from_ed_der(der)
            }
        };
        let (_, decoding) = jwk.decoding_key()?;
        Ok(Self {
            kid: Arc::from(kid),
            algorithm,
            encoding,
            decoding,
            jwk,
        })
    }

    /// The key id.
    #[must_use]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The public half as a JWK.
    #[must_use]
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    pub(crate) fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }

    pub(crate) fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }
}

/// A public key that verifies (from our ring or from a JWKS).
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    pub(crate) algorithm: Algorithm,
    pub(crate) key: DecodingKey,
}

#[derive(Clone)]
struct Slot {
    key: Arc<SigningKey>,
    verifying: Arc<VerifyingKey>,
    /// When this key stops verifying (set when a newer key takes over).
    retire_at: Option<SystemTime>,
}

impl Slot {
    fn new(key: SigningKey) -> Self {
        let verifying = Arc::new(VerifyingKey {
            algorithm: key.algorithm(),
            key: key.decoding().clone(),
        });
        Self {
            key: Arc::new(key),
            verifying,
            retire_at: None,
        }
    }

    fn live(&self, now: SystemTime) -> bool {
        self.retire_at.is_none_or(|t| now < t)
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("key", &self.key)
            .field("retire_at", &self.retire_at)
            .finish()
    }
}

/// The signing keys of an issuer: one active key signs; keys it replaced keep verifying
/// for an overlap (so tokens they signed stay valid until they expire), then drop out.
///
/// ```
/// use keel_token_manager::{Algorithm, KeyRing, SigningKey};
/// use std::time::Duration;
///
/// let ring = KeyRing::new(SigningKey::generate("2026-11", Algorithm::ES256).unwrap());
/// ring.rotate(SigningKey::generate("2026-12", Algorithm::EdDSA).unwrap(), Duration::from_secs(900)).unwrap();
/// assert_eq!(ring.active().kid(), "2026-12");
/// let jwks = ring.jwks();
/// assert_eq!(jwks.keys.len(), 2); // the old key still verifies during the overlap
/// ```
#[derive(Debug, Clone)]
pub struct KeyRing {
    slots: Arc<RwLock<Vec<Slot>>>,
    clock: Arc<dyn WallClock>,
}

impl KeyRing {
    /// A ring with one active key, on the system's clock.
    #[must_use]
    pub fn new(active: SigningKey) -> Self {
        Self {
            slots: Arc::new(RwLock::new(vec![Slot::new(active)])),
            clock: Arc::new(SystemClock),
        }
    }

    /// Reads the time for overlaps from `clock` (default [`SystemClock`]). An
    /// [`AccessTokenIssuer`](crate::AccessTokenIssuer) or a [`Validator`](crate::Validator)
    /// built on this ring reads the same clock unless given another.
    ///
    /// ```
    /// use keel_resilience::clock::ManualClock;
    /// use keel_token_manager::{Algorithm, KeyRing, SigningKey};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::starting_now();
    /// let ring = KeyRing::new(SigningKey::generate("a", Algorithm::EdDSA).unwrap()).clock(clock.clone());
    /// ring.rotate(SigningKey::generate("b", Algorithm::EdDSA).unwrap(), Duration::from_secs(900)).unwrap();
    /// assert_eq!(ring.jwks().keys.len(), 2);
    /// clock.advance(Duration::from_secs(901));
    /// assert_eq!(ring.jwks().keys.len(), 1); // "a" no longer verifies
    /// ```
    #[must_use]
    pub fn clock(mut self, clock: impl WallClock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The clock the ring reads.
    pub(crate) fn wall_clock(&self) -> Arc<dyn WallClock> {
        self.clock.clone()
    }

    /// Makes `next` the signing key; the current ones keep verifying for `overlap` (make
    /// it at least the access-token lifetime), then are dropped from the ring. Keys whose
    /// overlap has passed are dropped here too, so the ring holds only what verifies.
    ///
    /// # Errors
    /// [`KeyError::DuplicateKid`] when a key the ring still holds has `next`'s `kid`
    /// (the active key, or one still verifying): nothing changes.
    pub fn rotate(&self, next: SigningKey, overlap: Duration) -> Result<(), KeyError> {
        let now = self.clock.now();
        // Past the clock's range: the current keys keep verifying (until a later
        // rotation with a bounded overlap).
        let retire_at = now.checked_add(overlap);
        let mut slots = self
            .slots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.retain(|s| s.live(now));
        if slots.iter().any(|s| s.key.kid() == next.kid()) {
            return Err(KeyError::DuplicateKid(next.kid().to_owned()));
        }
        for slot in slots.iter_mut() {
            slot.retire_at = match (slot.retire_at, retire_at) {
                (Some(t), Some(r)) => Some(t.min(r)),
                (t, r) => t.or(r),
            };
        }
        slots.insert(0, Slot::new(next));
        Ok(())
    }

    /// The ids of the keys the ring holds, the signing key first: those that still
    /// verify, and retired ones until the next [`rotate`](Self::rotate) drops them.
    ///
    /// ```
    /// use keel_token_manager::{Algorithm, KeyRing, SigningKey};
    /// use std::time::Duration;
    ///
    /// let ring = KeyRing::new(SigningKey::generate("a", Algorithm::EdDSA).unwrap());
    /// ring.rotate(SigningKey::generate("b", Algorithm::EdDSA).unwrap(), Duration::ZERO).unwrap();
    /// ring.rotate(SigningKey::generate("c", Algorithm::EdDSA).unwrap(), Duration::ZERO).unwrap();
    /// assert_eq!(ring.key_ids(), ["c", "b"]); // "a" retired before this rotation: gone
    /// ```
    #[must_use]
    pub fn key_ids(&self) -> Vec<String> {
        let slots = self
            .slots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.iter().map(|s| s.key.kid().to_owned()).collect()
    }

    /// The key that signs now.
    #[must_use]
    pub fn active(&self) -> Arc<SigningKey> {
        let slots = self
            .slots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots[0].key.clone()
    }

    /// The verification key of `kid`, while it is live.
    pub(crate) fn verifying(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        let now = self.clock.now();
        let slots = self
            .slots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots
            .iter()
            .find(|s| s.key.kid() == kid && s.live(now))
            .map(|s| s.verifying.clone())
    }

    /// The JWKS to publish: every key that still verifies.
    #[must_use]
    pub fn jwks(&self) -> Jwks {
        let now = self.clock.now();
        let slots = self
            .slots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Jwks {
            keys: slots
                .iter()
                .filter(|s| s.live(now))
                .map(|s| s.key.jwk().clone())
                .collect(),
        }
    }
}

impl keel_resilience::Classify for KeyError {
    /// Always permanent: the key material or the set is wrong.
    fn class(&self) -> keel_resilience::ErrorClass {
        keel_resilience::ErrorClass::Permanent
    }
}
