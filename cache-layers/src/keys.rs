//! Redis key names: namespaced, carrying the schema version and the namespace's
//! generation (bumped by `clear`, so clearing never scans keys).
//!
//! ```text
//! keel:<ns>:v<schema>:g<gen>:k:<key>    an entry (string: the envelope)
//! keel:<ns>:v<schema>:g<gen>:t:{<h>}<tag>   the keys written with a tag (set)
//! keel:<ns>:v<schema>:g<gen>:tv:{<h>}<tag>  the tag's version (raised by each invalidation)
//!                                        <h>: a hash of the tag, so a tag's two keys
//!                                        share a cluster slot
//! keel:<ns>:v<schema>:g<gen>:l:<key>    the distributed load lock of a key
//! keel:{<ns>}:seq / :log / :gen / :epoch  the backplane's sequence, log, generation
//!                                        and epoch, in one cluster slot
//! keel:<ns>:bp                          the pub/sub channel
//! ```
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

/// The key names of one namespace and schema version.
#[derive(Clone, Debug)]
pub(crate) struct KeySpace {
    entry_prefix: String,
    shared: String,
    channel: String,
}

impl KeySpace {
    pub(crate) fn new(namespace: &str, schema: u32) -> Self {
        Self {
            entry_prefix: format!("keel:{namespace}:v{schema}:g"),
            shared: format!("keel:{{{namespace}}}:"),
            channel: format!("keel:{namespace}:bp"),
        }
    }

    fn scoped(&self, generation: u64, kind: char, name: &str) -> String {
        let mut s = String::with_capacity(self.entry_prefix.len() + name.len() + 24);
        s.push_str(&self.entry_prefix);
        s.push_str(&generation.to_string());
        s.push(':');
        s.push(kind);
        s.push(':');
        s.push_str(name);
        s
    }

    pub(crate) fn entry(&self, generation: u64, key: &str) -> String {
        self.scoped(generation, 'k', key)
    }

    pub(crate) fn tag(&self, generation: u64, tag: &str) -> String {
        self.scoped(generation, 't', &slotted(tag))
    }

    pub(crate) fn tag_version(&self, generation: u64, tag: &str) -> String {
        let mut key = self.scoped(generation, 't', &slotted(tag));
        key.insert(key.len() - tag.len() - 19, 'v');
        key
    }

    pub(crate) fn lock(&self, generation: u64, key: &str) -> String {
        self.scoped(generation, 'l', key)
    }

    pub(crate) fn shared(&self, what: &str) -> String {
        format!("{}{what}", self.shared)
    }

    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }
}

/// `{<16 hex digits>}<tag>`: a stable hash of the tag as the cluster hash tag (the tag
/// itself may hold braces).
fn slotted(tag: &str) -> String {
    // FNV-1a, 64 bits: the same in every process and version.
    let hash = tag.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{{{hash:016x}}}{tag}")
}

/// Whether a namespace is safe in Redis keys and channel names.
pub(crate) fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 64
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced_versioned_and_generational() {
        let keys = KeySpace::new("users", 3);
        assert_eq!(keys.entry(7, "42"), "keel:users:v3:g7:k:42");
        assert_eq!(keys.tag(0, "t"), "keel:users:v3:g0:t:{af63e94c860202a3}t");
        assert_eq!(
            keys.tag_version(0, "t"),
            "keel:users:v3:g0:tv:{af63e94c860202a3}t"
        );
        assert_eq!(keys.lock(1, "x"), "keel:users:v3:g1:l:x");
        assert_eq!(keys.shared("seq"), "keel:{users}:seq");
        assert_eq!(keys.channel(), "keel:users:bp");
        assert!(valid_namespace("graph.users-v1_x"));
        assert!(!valid_namespace(""));
        assert!(!valid_namespace("a b"));
        assert!(!valid_namespace("a{b}"));
        assert!(!valid_namespace(&"a".repeat(65)));
    }
}
