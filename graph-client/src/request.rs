//! A request to any Graph path: method, OData query options, headers and body, turned
//! into a URL on a cloud only after every part was checked.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::cloud::{ApiVersion, Cloud};

/// A request to Graph, built before it is sent.
///
/// ```
/// use keel_graph_client::{ApiVersion, Cloud, GraphRequest};
///
/// let request = GraphRequest::get("/users")
///     .select(["id", "displayName"])
///     .filter("startswith(displayName,'Ad')")
///     .top(50)
///     .count();
/// assert_eq!(
///     request.url(&Cloud::Global, ApiVersion::V1).unwrap(),
///     "https://graph.microsoft.com/v1.0/users?$select=id,displayName&$filter=startswith(displayName,%27Ad%27)&$top=50&$count=true"
/// );
/// // `$count` on directory objects needs eventual consistency: added for you.
/// assert_eq!(request.headers()["consistencylevel"], "eventual");
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct GraphRequest {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    version: Option<ApiVersion>,
    problem: Option<RequestError>,
    /// The mailboxes a `$batch` request's items address (one entry per item).
    pub(crate) mailboxes: Option<Vec<String>>,
    /// Whether a repeat is safe, when the method alone does not say (a `$batch` of
    /// reads).
    pub(crate) idempotent: Option<bool>,
    /// No retry waits past this (a `$batch` request shares its batch's time).
    pub(crate) deadline: Option<tokio::time::Instant>,
}

/// A request that cannot be sent as built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The path is not a Graph path: it must start with `/` and hold no scheme, no
    /// `..` segment, no query or fragment, no whitespace or control characters (pass
    /// query options through the builder).
    #[error(
        "not a Graph path: start with `/`, no scheme, `..`, `?`, `#`, whitespace or control characters"
    )]
    InvalidPath,
    /// A header name or value that HTTP does not allow.
    #[error("invalid header `{0}`")]
    InvalidHeader(String),
    /// A Planner update or delete for an item read without its `@odata.etag`: read it
    /// again (Graph sends the ETag on every Planner item).
    #[error("the Planner item has no @odata.etag to send as If-Match: read it again")]
    MissingEtag,
    /// The body could not be serialised to JSON.
    #[error("the request body could not be serialised to JSON")]
    Body,
}

impl keel_resilience::Classify for RequestError {
    /// Always permanent: the request is wrong.
    fn class(&self) -> keel_resilience::ErrorClass {
        keel_resilience::ErrorClass::Permanent
    }
}

/// The header Graph's advanced directory queries need.
const CONSISTENCY_LEVEL: &str = "consistencylevel";

impl GraphRequest {
    /// A request with any method.
    pub fn new(method: Method, path: &str) -> Self {
        let problem = (!valid_path(path)).then_some(RequestError::InvalidPath);
        GraphRequest {
            method,
            path: path.to_owned(),
            query: Vec::new(),
            headers: HeaderMap::new(),
            body: None,
            version: None,
            problem,
            mailboxes: None,
            idempotent: None,
            deadline: None,
        }
    }

    /// The API version the request set for itself, if any.
    #[must_use]
    pub(crate) fn own_version(&self) -> Option<ApiVersion> {
        self.version
    }

    /// The path, as given.
    #[must_use]
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// Whether sending the request twice is safe: by its method (RFC 9110: GET, HEAD,
    /// OPTIONS, PUT, DELETE), or a PATCH guarded by `If-Match` with an ETag (not `*`):
    /// a repeat after a lost answer meets a changed ETag and gets 412, never a second
    /// write. A POST never is, `If-Match` or not.
    #[must_use]
    pub(crate) fn is_idempotent(&self) -> bool {
        if let Some(explicit) = self.idempotent {
            return explicit;
        }
        if keel_resilience::retry::Idempotency::of_method(&self.method)
            == keel_resilience::retry::Idempotency::Idempotent
        {
            return true;
        }
        self.method == Method::PATCH
            && self
                .headers
                .get(http::header::IF_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|etag| !etag.trim().is_empty() && etag.trim() != "*")
    }

    /// `GET path`.
    pub fn get(path: &str) -> Self {
        Self::new(Method::GET, path)
    }

    /// `POST path`.
    pub fn post(path: &str) -> Self {
        Self::new(Method::POST, path)
    }

    /// `PATCH path`.
    pub fn patch(path: &str) -> Self {
        Self::new(Method::PATCH, path)
    }

    /// `PUT path`.
    pub fn put(path: &str) -> Self {
        Self::new(Method::PUT, path)
    }

    /// `DELETE path`.
    pub fn delete(path: &str) -> Self {
        Self::new(Method::DELETE, path)
    }

    /// `$select`: only these properties.
    pub fn select<I, S>(self, fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let list = join(fields);
        self.option("$select", list)
    }

    /// `$expand`: these relationships inline.
    pub fn expand<I, S>(self, relations: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let list = join(relations);
        self.option("$expand", list)
    }

    /// `$filter`, as OData writes it (`startswith(displayName,'A')`, `mail eq 'x'`).
    /// Filters Graph counts as advanced queries on directory objects (`endswith`,
    /// `ne`, `not`) also send `ConsistencyLevel: eventual`.
    pub fn filter(self, expression: &str) -> Self {
        let lower = expression.to_ascii_lowercase();
        let advanced = lower.contains("endswith(")
            || lower.contains(" ne ")
            || lower.contains("not(")
            || lower.contains("not ");
        let request = self.option("$filter", expression.to_owned());
        if advanced {
            request.eventual()
        } else {
            request
        }
    }

    /// `$orderby`: `"displayName"` or `"createdDateTime desc"`.
    pub fn order_by(self, order: &str) -> Self {
        self.option("$orderby", order.to_owned())
    }

    /// `$top`: at most `n` items per page.
    pub fn top(self, n: u32) -> Self {
        self.option("$top", n.to_string())
    }

    /// `$count=true`, with `ConsistencyLevel: eventual` as directory objects need it.
    pub fn count(self) -> Self {
        self.option("$count", "true".to_owned()).eventual()
    }

    /// `$search`, quoted as Graph wants it (`"displayName:room"`), with
    /// `ConsistencyLevel: eventual` as directory objects need it.
    pub fn search(self, terms: &str) -> Self {
        let quoted = format!("\"{}\"", terms.trim_matches('"').replace('"', "\\\""));
        self.option("$search", quoted).eventual()
    }

    /// Sends `ConsistencyLevel: eventual` (advanced queries on directory objects).
    pub fn eventual(mut self) -> Self {
        self.headers.insert(
            HeaderName::from_static(CONSISTENCY_LEVEL),
            HeaderValue::from_static("eventual"),
        );
        self
    }

    /// Adds a `Prefer` preference (`return=representation`,
    /// `outlook.timezone="UTC"`, `odata.maxpagesize=100`), kept with any already set.
    pub fn prefer(self, preference: &str) -> Self {
        let value = match self.headers.get("prefer") {
            Some(old) => format!("{}, {preference}", old.to_str().unwrap_or_default()),
            None => preference.to_owned(),
        };
        self.set("prefer", &value)
    }

    /// `If-Match`: the write applies only to the item as last read (Planner requires
    /// it on updates and deletes, with the item's `@odata.etag`).
    pub fn if_match(self, etag: &str) -> Self {
        self.set(http::header::IF_MATCH.as_str(), etag)
    }

    /// Any other header.
    pub fn header(self, name: &str, value: &str) -> Self {
        self.set(name, value)
    }

    /// A JSON body.
    pub fn json<T: serde::Serialize + ?Sized>(mut self, body: &T) -> Self {
        match serde_json::to_vec(body) {
            Ok(bytes) => {
                self.body = Some(bytes);
                self.headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            Err(_) => self.problem = self.problem.or(Some(RequestError::Body)),
        }
        self
    }

    /// This request on another API version than the client's (`beta` for a preview).
    pub fn version(mut self, version: ApiVersion) -> Self {
        self.version = Some(version);
        self
    }

    /// The method.
    #[must_use]
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The headers set so far.
    #[must_use]
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The JSON body, if any.
    #[must_use]
    pub fn body(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }

    /// The path, relative to the version (`/users`), with its query options: what a
    /// `$batch` item's `url` holds.
    ///
    /// # Errors
    /// The first [`RequestError`] met while building.
    pub fn relative_url(&self) -> Result<String, RequestError> {
        if let Some(problem) = &self.problem {
            return Err(problem.clone());
        }
        let mut url = encode_path(&self.path);
        for (i, (key, value)) in self.query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(key);
            url.push('=');
            encode_query_value(value, &mut url);
        }
        Ok(url)
    }

    /// The absolute URL on `cloud`, with `version` unless the request set its own.
    ///
    /// # Errors
    /// The first [`RequestError`] met while building.
    pub fn url(&self, cloud: &Cloud, version: ApiVersion) -> Result<String, RequestError> {
        let version = self.version.unwrap_or(version);
        Ok(format!(
            "{}/{}{}",
            cloud.graph_base(),
            version.as_str(),
            self.relative_url()?
        ))
    }

    /// `$deltatoken=latest`: a delta query that starts from now.
    pub(crate) fn delta_from_now(self) -> Self {
        self.option("$deltatoken", "latest".to_owned())
    }

    fn option(mut self, key: &'static str, value: String) -> Self {
        match self.query.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.query.push((key, value)),
        }
        self
    }

    fn set(mut self, name: &str, value: &str) -> Self {
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(name), Ok(value)) => {
                self.headers.insert(name, value);
            }
            _ => {
                let shown: String = name.chars().take(64).filter(|c| !c.is_control()).collect();
                self.problem = self.problem.or(Some(RequestError::InvalidHeader(shown)));
            }
        }
        self
    }
}

fn join<I, S>(items: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::new();
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item.as_ref().trim());
    }
    out
}

fn valid_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path.contains("://")
        && !path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '\\'))
        && !path
            .split('/')
            .any(|segment| segment == ".." || segment == ".")
}

/// Percent-encodes what a path segment may not hold raw (non-ASCII included), keeping
/// `/` and what Graph's paths use (`'`, `(`, `)`, `=`, `,`, `@`, `:`, `$`).
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(
                byte,
                b'/' | b'-'
                    | b'.'
                    | b'_'
                    | b'~'
                    | b'\''
                    | b'('
                    | b')'
                    | b'='
                    | b','
                    | b'@'
                    | b':'
                    | b'$'
                    | b'!'
                    | b'*'
                    | b';'
            )
        {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// `%XX` decoded, and `+` as a space when `form` (a form body or a query string; in a
/// path `+` is itself). `None` for a bad escape or bytes that are not UTF-8.
pub(crate) fn percent_decode(text: &str, form: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if form => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Whether `id` has a GUID's shape (8-4-4-4-12 hex digits).
#[cfg(any(feature = "correlation", feature = "emulator"))]
pub(crate) fn is_guid(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Percent-encodes a query option's value: everything but unreserved characters and
/// what OData expressions use freely (`(`, `)`, `,`, `:`, `$`, `/`), so `&`, `=`, `+`,
/// `#`, `%`, `'`, quotes and spaces can never change the query's structure.
pub(crate) fn encode_query_value(value: &str, out: &mut String) {
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(
                byte,
                b'-' | b'.' | b'_' | b'~' | b'(' | b')' | b',' | b':' | b'$' | b'/'
            )
        {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        for ok in [
            "/users",
            "/users/ada@contoso.com",
            "/planner/tasks/abc",
            "/users('id')/photo/$value",
        ] {
            assert!(valid_path(ok), "{ok}");
        }
        for bad in [
            "users",
            "//evil.example/x",
            "/a/../b",
            "/a/./b",
            "/a?b=1",
            "/a#f",
            "/a b",
            "https://x/y",
            "/a\\b",
            "/a\n",
        ] {
            assert!(!valid_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_plus_is_a_space_in_a_form_and_itself_in_a_path() {
        assert_eq!(
            percent_decode("ada+x%40contoso.com", false).as_deref(),
            Some("ada+x@contoso.com")
        );
        assert_eq!(percent_decode("a+b%2B", true).as_deref(), Some("a b+"));
        assert_eq!(percent_decode("%4", false), None);
        assert_eq!(percent_decode("%ff", false), None);
    }

    #[test]
    fn values_cannot_change_the_query_structure() {
        let url = GraphRequest::get("/users")
            .filter("displayName eq 'a&$top=1#x'")
            .relative_url()
            .unwrap();
        assert_eq!(
            url,
            "/users?$filter=displayName%20eq%20%27a%26$top%3D1%23x%27"
        );
        assert_eq!(
            encode_path("/users/\u{e9}t\u{e9} x"),
            "/users/%C3%A9t%C3%A9%20x"
        );
    }
}
