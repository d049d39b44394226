//! Encryption at rest: AES-256-GCM (ring) with a key ring that can rotate. Sealed values
//! carry the id of the key that sealed them, so old values stay readable after a
//! rotation while new ones use the new key.

use std::fmt;
use std::sync::Arc;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

/// Encryption keys for stored secrets: the first seals, all of them open.
///
/// ```
/// use keel_token_manager::SealingKeys;
///
/// let keys = SealingKeys::generate(1).unwrap();
/// let sealed = keys.seal(b"secret", b"record-7").unwrap();
/// assert_eq!(keys.open(&sealed, b"record-7").unwrap(), b"secret");
/// assert!(keys.open(&sealed, b"record-8").is_err()); // bound to its record
/// ```
#[derive(Clone)]
pub struct SealingKeys {
    keys: Arc<Vec<(u8, LessSafeKey)>>,
    rng: SystemRandom,
}

impl fmt::Debug for SealingKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<u8> = self.keys.iter().map(|(id, _)| *id).collect();
        f.debug_struct("SealingKeys")
            .field("key_ids", &ids)
            .finish_non_exhaustive()
    }
}

/// Sealing or opening failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// A key is not 32 bytes, or no key was given.
    #[error("AES-256-GCM keys are 32 bytes, and at least one is needed")]
    BadKey,
    /// The value was sealed with a key no longer in the ring.
    #[error("sealed with key {0}, which is no longer configured")]
    UnknownKey(u8),
    /// The value was altered, or belongs to another record.
    #[error("the sealed value does not authenticate")]
    Corrupt,
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

impl SealingKeys {
    /// Keys as `(id, 32 bytes)`, the sealing key first.
    ///
    /// # Errors
    /// [`SealError::BadKey`] when a key is not 32 bytes or the list is empty.
    pub fn new(keys: &[(u8, &[u8])]) -> Result<Self, SealError> {
        if keys.is_empty() {
            return Err(SealError::BadKey);
        }
        let keys = keys
            .iter()
            .map(|(id, bytes)| {
                let unbound =
                    UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SealError::BadKey)?;
                Ok((*id, LessSafeKey::new(unbound)))
            })
            .collect::<Result<Vec<_>, SealError>>()?;
        Ok(Self {
            keys: Arc::new(keys),
            rng: SystemRandom::new(),
        })
    }

    /// One fresh random key with id `id` (tests, or a single-instance service).
    ///
    /// # Errors
    /// [`SealError::Random`] when the system random generator fails.
    pub fn generate(id: u8) -> Result<Self, SealError> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| SealError::Random)?;
        Self::new(&[(id, &key)])
    }

    /// Seals `plain`, bound to `context` (authenticated, not stored).
    ///
    /// # Errors
    /// [`SealError::Random`] when no nonce can be drawn.
    pub fn seal(&self, plain: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut buf = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context),
            &mut buf,
        )
        .map_err(|_| SealError::Corrupt)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(*id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens a value sealed with any key of the ring and the same `context`.
    ///
    /// # Errors
    /// [`SealError::UnknownKey`] or [`SealError::Corrupt`].
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 1 + NONCE_LEN + 16 {
            return Err(SealError::Corrupt);
        }
        let id = sealed[0];
        let (_, key) = self
            .keys
            .iter()
            .find(|(k, _)| *k == id)
            .ok_or(SealError::UnknownKey(id))?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1..=NONCE_LEN]);
        let mut buf = sealed[1 + NONCE_LEN..].to_vec();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut buf,
            )
            .map_err(|_| SealError::Corrupt)?;
        Ok(plain.to_vec())
    }
}

impl keel_resilience::Classify for SealError {
    /// Transient when the random generator failed; permanent otherwise (a wrong key, an
    /// altered value).
    fn class(&self) -> keel_resilience::ErrorClass {
        match self {
            SealError::Random => keel_resilience::ErrorClass::Transient,
            _ => keel_resilience::ErrorClass::Permanent,
        }
    }
}
