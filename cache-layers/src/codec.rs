//! How values become bytes for L2: a pluggable [`Codec`] (compact binary by default) and
//! [`Compression`] above a size threshold.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::CodecError;

/// Turns values into bytes for L2 and back. Only L2 uses it: an L1 hit never decodes.
///
/// A value that no longer decodes (say, after a change of its type without a
/// [schema version](crate::CacheBuilder::schema_version) bump) is treated as a miss.
///
/// ```
/// use keel_cache_layers::{Codec, CodecError};
///
/// /// Plain UTF-8 strings, readable with `redis-cli`.
/// #[derive(Debug)]
/// struct Utf8;
///
/// impl Codec<String> for Utf8 {
///     fn encode(&self, value: &String, out: &mut Vec<u8>) -> Result<(), CodecError> {
///         out.extend_from_slice(value.as_bytes());
///         Ok(())
///     }
///     fn decode(&self, bytes: &[u8]) -> Result<String, CodecError> {
///         String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::new("not UTF-8"))
///     }
/// }
/// let mut out = Vec::new();
/// Utf8.encode(&"hi".to_owned(), &mut out).unwrap();
/// assert_eq!(Utf8.decode(&out).unwrap(), "hi");
/// ```
pub trait Codec<V>: Send + Sync + std::fmt::Debug + 'static {
    /// Appends the encoding of `value` to `out`.
    ///
    /// # Errors
    /// When the value cannot be encoded.
    fn encode(&self, value: &V, out: &mut Vec<u8>) -> Result<(), CodecError>;

    /// Decodes a value.
    ///
    /// # Errors
    /// When the bytes are not a valid encoding; the cache then treats the entry as a miss.
    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError>;
}

/// The default codec: [postcard](https://docs.rs/postcard), a compact binary serde format
/// (varints, no field names), for any `Serialize + DeserializeOwned` type.
///
/// ```
/// use keel_cache_layers::{Codec, Postcard};
///
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct User { id: u64, name: String }
///
/// let mut bytes = Vec::new();
/// Postcard.encode(&User { id: 7, name: "Ada".into() }, &mut bytes).unwrap();
/// assert_eq!(bytes.len(), 5); // 1 byte id, 1 byte length, 3 bytes name
/// let back: User = Postcard.decode(&bytes).unwrap();
/// assert_eq!(back, User { id: 7, name: "Ada".into() });
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Postcard;

impl<V: Serialize + DeserializeOwned> Codec<V> for Postcard {
    fn encode(&self, value: &V, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let taken = std::mem::take(out);
        *out = postcard::to_extend(value, taken)
            .map_err(|e| CodecError::new(format!("postcard could not encode the value: {e}")))?;
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        postcard::from_bytes(bytes)
            .map_err(|e| CodecError::new(format!("postcard could not decode the value: {e}")))
    }
}

/// LZ4 compression of encoded values at or above a size threshold.
///
/// ```
/// use keel_cache_layers::Compression;
///
/// let compression = Compression::above(1024); // the default
/// assert_eq!(compression.threshold(), Some(1024));
/// assert_eq!(Compression::off().threshold(), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compression {
    threshold: Option<usize>,
}

impl Default for Compression {
    /// LZ4 above 1 KiB.
    fn default() -> Self {
        Self::above(1024)
    }
}

impl Compression {
    /// Compresses encoded values of `bytes` or more (when that makes them smaller).
    #[must_use]
    pub fn above(bytes: usize) -> Self {
        Self {
            threshold: Some(bytes),
        }
    }

    /// Never compresses.
    #[must_use]
    pub fn off() -> Self {
        Self { threshold: None }
    }

    /// The threshold, if compression is on.
    #[must_use]
    pub fn threshold(&self) -> Option<usize> {
        self.threshold
    }
}
