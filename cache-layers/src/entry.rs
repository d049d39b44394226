//! One cached entry, as L1 holds it and as L2 stores it (the envelope).

use std::sync::Arc;

use crate::codec::{Codec, Compression};
use crate::error::CodecError;
use crate::options::Deadlines;

/// An entry: the value (or its absence, for negative caching), the version it was written
/// with, its deadlines and its tags. L1 holds entries by value: a hit copies the deadlines
/// and increments the value's `Arc` (and the tags' only when there are tags).
#[derive(Debug)]
pub(crate) struct Entry<V> {
    pub(crate) value: Option<Arc<V>>,
    pub(crate) version: u64,
    pub(crate) deadlines: Deadlines,
    pub(crate) tags: Tags,
}

impl<V> Clone for Entry<V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            version: self.version,
            deadlines: self.deadlines,
            tags: self.tags.clone(),
        }
    }
}

/// An entry's tags; no allocation (and no reference count to touch) when there are none.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tags(Option<Arc<[Arc<str>]>>);

impl Tags {
    pub(crate) fn from(tags: &Arc<[Arc<str>]>) -> Self {
        Self((!tags.is_empty()).then(|| tags.clone()))
    }

    pub(crate) fn as_slice(&self) -> &[Arc<str>] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl std::ops::Deref for Tags {
    type Target = [Arc<str>];

    fn deref(&self) -> &[Arc<str>] {
        self.as_slice()
    }
}

impl<V> Entry<V> {
    #[inline]
    pub(crate) fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms < self.deadlines.fresh_until
    }

    #[inline]
    pub(crate) fn is_servable(&self, now_ms: u64) -> bool {
        now_ms < self.deadlines.stale_until
    }

    /// The same value with new deadlines (fail-safe throttling, eager-refresh backoff).
    pub(crate) fn with_deadlines(&self, deadlines: Deadlines) -> Self {
        Self {
            value: self.value.clone(),
            version: self.version,
            deadlines,
            tags: self.tags.clone(),
        }
    }
}

/// The envelope layout. The version comes first as 20 ASCII digits so the compare-and-set
/// script can read it with `GETRANGE key 0 19`:
///
/// ```text
/// 0..20   version (zero-padded decimal)
/// 20      flags: 1 value present, 2 compressed, 4 tombstone
/// 21..45  fresh_until, refresh_at, stale_until (u64 big-endian, ms since the epoch)
/// 45..47  tag count (u16), then each tag as u16 length + UTF-8
/// ...     payload (the codec's bytes, LZ4 block with a u32 length prefix if compressed)
/// ```
pub(crate) const VERSION_DIGITS: usize = 20;
const HEADER: usize = VERSION_DIGITS + 1 + 24 + 2;
const VALUE: u8 = 1;
const COMPRESSED: u8 = 2;
pub(crate) const TOMBSTONE: u8 = 4;

/// What an L2 record turned out to be.
#[derive(Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Decoded<V> {
    Entry(Entry<V>),
    Tombstone { version: u64 },
}

/// Encodes an entry for L2.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn encode<V: 'static>(
    entry: &Entry<V>,
    codec: &dyn Codec<V>,
    compression: Compression,
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    let mut flags = 0;
    write_header(&mut out, entry.version, entry.deadlines, &entry.tags)?;
    if let Some(value) = &entry.value {
        flags |= VALUE;
        let start = out.len();
        codec.encode(value, &mut out)?;
        let len = out.len() - start;
        if compression.threshold().is_some_and(|t| len >= t) {
            let compressed = lz4_flex::block::compress(&out[start..]);
            if compressed.len() + 4 < len {
                out.truncate(start);
                let original = u32::try_from(len)
                    .map_err(|_| CodecError::new("values over 4 GiB cannot be stored"))?;
                out.extend_from_slice(&original.to_le_bytes());
                out.extend_from_slice(&compressed);
                flags |= COMPRESSED;
            }
        }
    }
    out[VERSION_DIGITS] = flags;
    Ok(out)
}

/// Encodes a tombstone: "invalidated at `version`".
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn encode_tombstone(version: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER);
    let deadlines = Deadlines {
        fresh_until: 0,
        refresh_at: 0,
        stale_until: 0,
    };
    // A header without tags cannot fail.
    let _ = write_header(&mut out, version, deadlines, &[]);
    out[VERSION_DIGITS] = TOMBSTONE;
    out
}

fn write_header(
    out: &mut Vec<u8>,
    version: u64,
    d: Deadlines,
    tags: &[Arc<str>],
) -> Result<(), CodecError> {
    use std::io::Write as _;
    write!(out, "{version:0width$}", width = VERSION_DIGITS)
        .map_err(|e| CodecError::new(e.to_string()))?;
    out.push(0);
    out.extend_from_slice(&d.fresh_until.to_be_bytes());
    out.extend_from_slice(&d.refresh_at.to_be_bytes());
    out.extend_from_slice(&d.stale_until.to_be_bytes());
    let count = u16::try_from(tags.len()).map_err(|_| CodecError::new("too many tags"))?;
    out.extend_from_slice(&count.to_be_bytes());
    for tag in tags {
        let len = u16::try_from(tag.len()).map_err(|_| CodecError::new("tag too long"))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(tag.as_bytes());
    }
    Ok(())
}

/// Decodes an L2 record. Any malformation is an error (which the cache counts as a miss),
/// never a panic.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn decode<V: 'static>(
    bytes: &[u8],
    codec: &dyn Codec<V>,
    max_value_bytes: usize,
) -> Result<Decoded<V>, CodecError> {
    let mut r = Reader(bytes);
    let digits = r.take(VERSION_DIGITS)?;
    let version = std::str::from_utf8(digits)
        .ok()
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| CodecError::new("the record's version is not a number"))?;
    let flags = r.u8()?;
    if flags & TOMBSTONE != 0 {
        return Ok(Decoded::Tombstone { version });
    }
    let deadlines = Deadlines {
        fresh_until: r.u64()?,
        refresh_at: r.u64()?,
        stale_until: r.u64()?,
    };
    let count = r.u16()?;
    let mut tags = Vec::with_capacity(usize::from(count).min(64));
    for _ in 0..count {
        let len = r.u16()?;
        let tag = std::str::from_utf8(r.take(usize::from(len))?)
            .map_err(|_| CodecError::new("a tag is not UTF-8"))?;
        tags.push(Arc::<str>::from(tag));
    }
    let value = if flags & VALUE == 0 {
        None
    } else if flags & COMPRESSED != 0 {
        let original = u32::from_le_bytes(
            r.take(4)?
                .try_into()
                .map_err(|_| CodecError::new("truncated"))?,
        ) as usize;
        if original > max_value_bytes {
            return Err(CodecError::new(format!(
                "the record claims {original} bytes, over the {max_value_bytes}-byte limit"
            )));
        }
        let raw = lz4_flex::block::decompress(r.0, original)
            .map_err(|e| CodecError::new(format!("LZ4: {e}")))?;
        Some(Arc::new(codec.decode(&raw)?))
    } else {
        Some(Arc::new(codec.decode(r.0)?))
    };
    Ok(Decoded::Entry(Entry {
        value,
        version,
        deadlines,
        tags: Tags::from(&tags.into()),
    }))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::new("the record is truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Postcard;

    fn entry(value: Option<String>, tags: &[&str]) -> Entry<String> {
        Entry {
            value: value.map(Arc::new),
            version: 1_700_000_000_000_001,
            deadlines: Deadlines {
                fresh_until: 10,
                refresh_at: 8,
                stale_until: 20,
            },
            tags: Tags::from(&tags.iter().map(|t| Arc::<str>::from(*t)).collect()),
        }
    }

    fn round_trip(e: &Entry<String>, compression: Compression) -> (Vec<u8>, Entry<String>) {
        let bytes = encode(e, &Postcard, compression).unwrap();
        match decode::<String>(&bytes, &Postcard, 1 << 20).unwrap() {
            Decoded::Entry(back) => (bytes, back),
            Decoded::Tombstone { .. } => panic!("not a tombstone"),
        }
    }

    #[test]
    fn entries_round_trip_with_and_without_compression() {
        let small = entry(Some("hello".into()), &["a", "tenant:1"]);
        let (bytes, back) = round_trip(&small, Compression::default());
        assert_eq!(bytes[VERSION_DIGITS], VALUE);
        assert_eq!(&bytes[..VERSION_DIGITS], b"00001700000000000001");
        assert_eq!(back.value.as_deref().map(String::as_str), Some("hello"));
        assert_eq!(back.deadlines, small.deadlines);
        assert_eq!(&*back.tags[1], "tenant:1");

        let big = entry(Some("abc".repeat(2_000)), &[]);
        let (bytes, back) = round_trip(&big, Compression::above(100));
        assert_eq!(bytes[VERSION_DIGITS], VALUE | COMPRESSED);
        assert!(bytes.len() < 500, "{} bytes", bytes.len());
        assert_eq!(back.value, big.value);

        let absent = entry(None, &[]);
        let (_, back) = round_trip(&absent, Compression::default());
        assert!(back.value.is_none());
    }

    #[test]
    fn tombstones_carry_their_version() {
        let bytes = encode_tombstone(42);
        assert!(matches!(
            decode::<String>(&bytes, &Postcard, 1024),
            Ok(Decoded::Tombstone { version: 42 })
        ));
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let good = encode(
            &entry(Some("x".repeat(3_000)), &["t"]),
            &Postcard,
            Compression::above(10),
        )
        .unwrap();
        for cut in 0..good.len() {
            let _ = decode::<String>(&good[..cut], &Postcard, 1 << 20);
        }
        let mut bad = good.clone();
        bad[0] = b'x';
        assert!(decode::<String>(&bad, &Postcard, 1 << 20).is_err());
        // A compressed record claiming a huge size is refused before allocating.
        assert!(
            decode::<String>(&good, &Postcard, 100)
                .unwrap_err()
                .to_string()
                .contains("limit")
        );
        // Garbage never panics.
        let mut seed = 7u64;
        for len in 0..300 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    (seed >> 33) as u8
                })
                .collect();
            let _ = decode::<String>(&junk, &Postcard, 1 << 20);
        }
    }
}
