//! Rich notifications: the resource data Graph encrypts for the subscription's
//! certificate.

use aws_lc_rs::cipher::{AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OaepPrivateDecryptingKey, PrivateDecryptingKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::notification::EncryptedContent;

/// Why encrypted content could not be read. Messages hold no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecryptError {
    /// A private key that is not an RSA key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    #[error(
        "notification decryption: the private key of certificate {0:?} is not an RSA key in PKCS#8 PEM"
    )]
    Key(String),
    /// The content names a certificate this decryptor does not hold (an old one
    /// removed too early, or a notification for another service).
    #[error(
        "notification decryption: no private key for certificate {0:?}; keep the previous certificate until its subscriptions are renewed"
    )]
    UnknownCertificate(String),
    /// A field is not base64.
    #[error("notification decryption: {0} is not base64")]
    Base64(&'static str),
    /// The data key did not decrypt with the certificate's private key.
    #[error("notification decryption: the data key does not decrypt with the certificate's key")]
    DataKey,
    /// The data's HMAC-SHA256 under the data key is not `dataSignature`: the data was
    /// changed on the way (nothing was decrypted).
    #[error(
        "notification decryption: dataSignature does not match the data; refused before decrypting"
    )]
    Signature,
    /// The data did not decrypt (bad padding).
    #[error("notification decryption: the data does not decrypt")]
    Cipher,
}

/// Decrypts rich notifications' `encryptedContent` with the private keys of the
/// certificates subscriptions were created with, by `encryptionCertificateId`: keep
/// the previous certificate beside the new one while subscriptions move to it. The data
/// key is RSA-OAEP (SHA-1) encrypted; `dataSignature`, the HMAC-SHA256 of the encrypted
/// data under the data key, is checked (in constant time) before anything is decrypted;
/// the data is AES-256-CBC with PKCS7 padding, its IV the data key's first 16 bytes.
///
/// ```
/// use keel_graph_client::webhook::NotificationDecryptor;
///
/// let decryptor = NotificationDecryptor::new();
/// assert!(decryptor.certificate("2024-cert", "not a key").is_err());
/// ```
#[derive(Default)]
pub struct NotificationDecryptor {
    keys: Vec<(String, OaepPrivateDecryptingKey)>,
}

impl std::fmt::Debug for NotificationDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationDecryptor")
            .field(
                "certificates",
                &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl NotificationDecryptor {
    /// A decryptor with no certificate yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the private key (PKCS#8 PEM) of the certificate given to subscriptions as
    /// `encryptionCertificateId` = `id`.
    ///
    /// # Errors
    /// [`DecryptError::Key`] when the PEM is not an RSA private key in PKCS#8.
    pub fn certificate(self, id: &str, private_key_pem: &str) -> Result<Self, DecryptError> {
        let bad = || DecryptError::Key(id.chars().take(64).collect());
        let der = pem_body(private_key_pem, "PRIVATE KEY").ok_or_else(bad)?;
        self.pkcs8(id, &der)
    }

    /// Adds the private key of a PKCS#12 file (`.pfx`, as Azure Key Vault and Windows
    /// export certificates: AES-256 with PBKDF2, or the legacy 3DES) protected by
    /// `password`, for the certificate given as `encryptionCertificateId` = `id`
    /// (feature `pkcs12`).
    ///
    /// # Errors
    /// [`DecryptError::Key`] when the file does not open with the password or holds no
    /// RSA private key.
    #[cfg(feature = "pkcs12")]
    pub fn certificate_pkcs12(
        self,
        id: &str,
        pfx: &[u8],
        password: &str,
    ) -> Result<Self, DecryptError> {
        let bad = || DecryptError::Key(id.chars().take(64).collect());
        let store = p12_keystore::KeyStore::from_pkcs12(
            pfx,
            password,
            p12_keystore::Pkcs12ImportPolicy::Relaxed,
        )
        .map_err(|_| bad())?;
        let (_, chain) = store.private_key_chain().ok_or_else(bad)?;
        self.pkcs8(id, chain.key().as_der())
    }

    fn pkcs8(mut self, id: &str, der: &[u8]) -> Result<Self, DecryptError> {
        let bad = || DecryptError::Key(id.chars().take(64).collect());
        let key = PrivateDecryptingKey::from_pkcs8(der).map_err(|_| bad())?;
        let key = OaepPrivateDecryptingKey::new(key).map_err(|_| bad())?;
        self.keys.retain(|(known, _)| known != id);
        self.keys.push((id.to_owned(), key));
        Ok(self)
    }

    /// The decrypted resource data (JSON bytes, as Graph encrypted them).
    ///
    /// # Errors
    /// [`DecryptError`]: an unknown certificate, bad base64, a data key that does not
    /// decrypt, a signature that does not match (checked first), bad padding.
    pub fn decrypt(&self, content: &EncryptedContent) -> Result<Vec<u8>, DecryptError> {
        let key = self
            .keys
            .iter()
            .find(|(id, _)| *id == content.encryption_certificate_id)
            .map(|(_, key)| key)
            .ok_or_else(|| {
                DecryptError::UnknownCertificate(
                    content.encryption_certificate_id.chars().take(64).collect(),
                )
            })?;
        let wrapped = STANDARD
            .decode(&content.data_key)
            .map_err(|_| DecryptError::Base64("dataKey"))?;
        let signature = STANDARD
            .decode(&content.data_signature)
            .map_err(|_| DecryptError::Base64("dataSignature"))?;
        let mut data = STANDARD
            .decode(&content.data)
            .map_err(|_| DecryptError::Base64("data"))?;
        let mut buffer = vec![0u8; key.min_output_size()];
        let data_key = key
            .decrypt(&OAEP_SHA1_MGF1SHA1, &wrapped, &mut buffer, None)
            .map_err(|_| DecryptError::DataKey)?;
        if data_key.len() != 32 {
            return Err(DecryptError::DataKey);
        }
        let mac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, data_key);
        aws_lc_rs::hmac::verify(&mac_key, &data, &signature)
            .map_err(|_| DecryptError::Signature)?;
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&data_key[..16]);
        let cipher = UnboundCipherKey::new(&AES_256, data_key)
            .and_then(PaddedBlockDecryptingKey::cbc_pkcs7)
            .map_err(|_| DecryptError::Cipher)?;
        let plain = cipher
            .decrypt(&mut data, DecryptionContext::Iv128(iv.into()))
            .map_err(|_| DecryptError::Cipher)?;
        Ok(plain.to_vec())
    }
}

/// The DER inside a PEM block labelled `label`.
fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::cipher::{EncryptionContext, PaddedBlockEncryptingKey};
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::rsa::{KeySize, OaepPublicEncryptingKey};

    /// A certificate's private key as PKCS#8 PEM, and what Graph would encrypt with.
    fn certificate() -> (String, OaepPublicEncryptingKey) {
        let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let public = OaepPublicEncryptingKey::new(key.public_key()).unwrap();
        let der = key.as_der().unwrap();
        let body = STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        );
        (pem, public)
    }

    /// Encrypts `plain` as Graph does for a rich notification.
    fn encrypt(public: &OaepPublicEncryptingKey, id: &str, plain: &[u8]) -> EncryptedContent {
        let mut data_key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut data_key).unwrap();
        let mut wrapped = vec![0u8; public.ciphertext_size()];
        let wrapped = public
            .encrypt(&OAEP_SHA1_MGF1SHA1, &data_key, &mut wrapped, None)
            .unwrap()
            .to_vec();
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&data_key[..16]);
        let cipher = PaddedBlockEncryptingKey::cbc_pkcs7(
            UnboundCipherKey::new(&AES_256, &data_key).unwrap(),
        )
        .unwrap();
        let mut data = plain.to_vec();
        cipher
            .less_safe_encrypt(&mut data, EncryptionContext::Iv128(iv.into()))
            .unwrap();
        let mac = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &data_key),
            &data,
        );
        EncryptedContent {
            data: STANDARD.encode(&data),
            data_signature: STANDARD.encode(mac.as_ref()),
            data_key: STANDARD.encode(&wrapped),
            encryption_certificate_id: id.to_owned(),
            encryption_certificate_thumbprint: "ab".repeat(20),
        }
    }

    #[test]
    fn round_trip_and_rotation() {
        let (old_pem, old_public) = certificate();
        let (new_pem, new_public) = certificate();
        let decryptor = NotificationDecryptor::new()
            .certificate("2025", &old_pem)
            .unwrap()
            .certificate("2026", &new_pem)
            .unwrap();
        let body = br##"{"@odata.type":"#Microsoft.Graph.ChatMessage","id":"1616990032035","body":{"content":"hello"}}"##;
        assert_eq!(
            decryptor
                .decrypt(&encrypt(&new_public, "2026", body))
                .unwrap(),
            body
        );
        // Encrypted with the previous certificate during the overlap: still read.
        assert_eq!(
            decryptor
                .decrypt(&encrypt(&old_public, "2025", body))
                .unwrap(),
            body
        );
        // Named as the new one but encrypted for the old: the data key does not open.
        assert_eq!(
            decryptor.decrypt(&encrypt(&old_public, "2026", body)),
            Err(DecryptError::DataKey)
        );
        assert!(matches!(
            decryptor.decrypt(&encrypt(&new_public, "2027", body)),
            Err(DecryptError::UnknownCertificate(_))
        ));
        assert!(!format!("{decryptor:?}").contains("PRIVATE"));
    }

    #[test]
    fn tampered_data_is_refused_by_the_signature_before_decrypting() {
        let (pem, public) = certificate();
        let decryptor = NotificationDecryptor::new().certificate("c", &pem).unwrap();
        let good = encrypt(&public, "c", b"{\"id\":\"1\"}");
        // One bit of the ciphertext flipped.
        let mut bytes = STANDARD.decode(&good.data).unwrap();
        bytes[0] ^= 1;
        let tampered = EncryptedContent {
            data: STANDARD.encode(&bytes),
            ..good.clone()
        };
        assert_eq!(decryptor.decrypt(&tampered), Err(DecryptError::Signature));
        // A signature of another message.
        let other = encrypt(&public, "c", b"{\"id\":\"2\"}");
        let swapped = EncryptedContent {
            data_signature: other.data_signature,
            ..good.clone()
        };
        assert_eq!(decryptor.decrypt(&swapped), Err(DecryptError::Signature));
        for (field, content) in [
            (
                "data",
                EncryptedContent {
                    data: "%%%".into(),
                    ..good.clone()
                },
            ),
            (
                "dataKey",
                EncryptedContent {
                    data_key: "%%%".into(),
                    ..good.clone()
                },
            ),
            (
                "dataSignature",
                EncryptedContent {
                    data_signature: "%%%".into(),
                    ..good.clone()
                },
            ),
        ] {
            assert_eq!(
                decryptor.decrypt(&content),
                Err(DecryptError::Base64(field))
            );
        }
        let garbage_key = EncryptedContent {
            data_key: STANDARD.encode([7u8; 256]),
            ..good
        };
        assert_eq!(decryptor.decrypt(&garbage_key), Err(DecryptError::DataKey));
    }
}
