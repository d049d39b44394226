//! Change-notification subscriptions, as Graph documents them: `POST /subscriptions`
//! runs the validation handshake against the notification URL (and the lifecycle URL)
//! before it answers 201; the expiry must lie within the resource's maximum lifetime;
//! `PATCH` renews, `DELETE` removes, `GET` lists the app's own. Changes to users made
//! through the emulator are posted to the subscriptions on `users` (with their
//! `clientState`), retried a few times when the receiver does not answer 2xx; lifecycle
//! events are posted to the lifecycle URL on demand.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, State as Shared};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::State;
use super::graph::{READ_USERS, authorize, bad_request, error, ok};

/// The longest lifetime of a subscription, in minutes, by resource (Graph's documented
/// maxima; directory objects 41,760 minutes, 29 days).
pub(crate) const MAX_LIFETIME_MINUTES: &[(&str, u64)] = &[("users", 41_760), ("groups", 41_760)];

/// How long the handshake may take, and how many times a notification is posted.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DELIVERY_ATTEMPTS: u32 = 4;

/// A subscription the emulator holds (its `Debug` leaves the `clientState` out).
#[derive(Clone)]
pub(crate) struct Subscription {
    pub(crate) id: String,
    pub(crate) tenant: String,
    pub(crate) app: String,
    pub(crate) resource: String,
    pub(crate) change_types: Vec<String>,
    pub(crate) notification_url: String,
    pub(crate) lifecycle_url: Option<String>,
    pub(crate) client_state: Option<String>,
    pub(crate) expires: SystemTime,
    /// For rich notifications: the certificate's public key (DER SubjectPublicKeyInfo)
    /// and the id the subscriber gave it.
    pub(crate) encryption: Option<(Vec<u8>, String)>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.app,
            "changeType": self.change_types.join(","),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": rfc3339(self.expires),
            "latestSupportedTlsVersion": "v1_2",
            "includeResourceData": self.encryption.is_some(),
            "encryptionCertificateId": self.encryption.as_ref().map(|(_, id)| id),
        })
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// What the emulator counts of its deliveries.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    pub(crate) list: Mutex<Vec<Subscription>>,
    pub(crate) delivered: std::sync::atomic::AtomicU64,
    pub(crate) failed: std::sync::atomic::AtomicU64,
    pub(crate) next_id: std::sync::atomic::AtomicU64,
    /// The last validation token sent with a rich notification.
    pub(crate) last_token: Mutex<Option<String>>,
}

impl Subscriptions {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Subscription>> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/{version}/subscriptions", post(create).get(list))
        .route(
            "/{version}/subscriptions/{id}",
            get(read).patch(renew).delete(remove),
        )
        .route(
            "/{version}/subscriptions/{id}/reauthorize",
            post(reauthorize),
        )
}

/// The caller's tenant and app id, its token checked.
fn caller<'s>(
    state: &'s State,
    headers: &HeaderMap,
    roles: &[&str],
) -> Result<(&'s super::directory::Tenant, String), Box<Response>> {
    let tenant = authorize(state, headers, roles)?;
    let app = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| state.validator.validate(t).ok())
        .map(|c| c.client_id)
        .unwrap_or_default();
    Ok((tenant, app))
}

fn field<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get(name).and_then(Value::as_str)
}

/// A URL the emulator will post to: HTTPS, or HTTP on loopback (for tests).
fn url_ok(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z').split('.').next()?)
        .ok()
        .or_else(|| humantime::parse_rfc3339(text).ok())
}

/// The expiry asked for, checked against now and the resource's maximum.
fn expiry(now: SystemTime, resource: &str, text: Option<&str>) -> Result<SystemTime, String> {
    let at = text
        .and_then(parse_time)
        .ok_or("expirationDateTime is missing or not a date.")?;
    if at <= now {
        return Err("Subscription expiration must be in the future.".into());
    }
    let max = MAX_LIFETIME_MINUTES
        .iter()
        .find(|(r, _)| *r == resource)
        .map_or(4_230, |(_, m)| *m);
    if at > now + Duration::from_secs(max * 60 + 60) {
        return Err(format!(
            "Subscription expiration can only be {max} minutes in the future."
        ));
    }
    Ok(at)
}

/// Posts `?validationToken=` to `url` and checks the echo.
async fn handshake(url: &str) -> bool {
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let mut target = url.to_owned();
    target.push(if url.contains('?') { '&' } else { '?' });
    target.push_str("validationToken=");
    crate::request::encode_query_value(&token, &mut target);
    let Ok(client) = reqwest::Client::builder()
        .timeout(HANDSHAKE_TIMEOUT)
        .build()
    else {
        return false;
    };
    match client
        .post(&target)
        .header("content-type", "text/plain; charset=utf-8")
        .send()
        .await
    {
        Ok(response) if response.status() == 200 => {
            response.text().await.is_ok_and(|body| body == token)
        }
        _ => false,
    }
}

async fn create(
    Shared(state): Shared<Arc<State>>,
    Path(_version): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (tenant, app) = match caller(&state, &headers, READ_USERS) {
        Ok(caller) => caller,
        Err(refused) => return *refused,
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_request(&state, &headers, "The request body is not JSON.");
    };
    let resource = field(&body, "resource")
        .unwrap_or_default()
        .trim_start_matches('/');
    if !MAX_LIFETIME_MINUTES.iter().any(|(r, _)| *r == resource) {
        return bad_request(
            &state,
            &headers,
            "Resource not supported by the emulator's subscriptions.",
        );
    }
    let change_types: Vec<String> = field(&body, "changeType")
        .unwrap_or_default()
        .split(',')
        .map(|c| c.trim().to_owned())
        .collect();
    if change_types.is_empty()
        || !change_types
            .iter()
            .all(|c| ["created", "updated", "deleted"].contains(&c.as_str()))
    {
        return bad_request(
            &state,
            &headers,
            "changeType must be created, updated and/or deleted.",
        );
    }
    let Some(notification_url) = field(&body, "notificationUrl").filter(|u| url_ok(u)) else {
        return bad_request(&state, &headers, "notificationUrl must be an https URL.");
    };
    let lifecycle_url = match field(&body, "lifecycleNotificationUrl") {
        None => None,
        Some(u) if url_ok(u) => Some(u.to_owned()),
        Some(_) => {
            return bad_request(
                &state,
                &headers,
                "lifecycleNotificationUrl must be an https URL.",
            );
        }
    };
    let client_state = field(&body, "clientState").map(str::to_owned);
    if client_state.as_ref().is_some_and(|s| s.len() > 128) {
        return bad_request(
            &state,
            &headers,
            "clientState must be at most 128 characters.",
        );
    }
    let expires = match expiry(
        state.clock.now(),
        resource,
        field(&body, "expirationDateTime"),
    ) {
        Ok(at) => at,
        Err(message) => return bad_request(&state, &headers, &message),
    };
    let encryption = if body.get("includeResourceData").and_then(Value::as_bool) == Some(true) {
        let key = field(&body, "encryptionCertificate")
            .and_then(|c| {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, c).ok()
            })
            .and_then(|der| subject_public_key_info(&der).map(<[u8]>::to_vec))
            .filter(|spki| aws_lc_rs::rsa::PublicEncryptingKey::from_der(spki).is_ok());
        let (Some(key), Some(id)) = (key, field(&body, "encryptionCertificateId")) else {
            return bad_request(
                &state,
                &headers,
                "A subscription with resource data needs encryptionCertificate (a base64 X.509 certificate with an RSA key) and encryptionCertificateId.",
            );
        };
        Some((key, id.to_owned()))
    } else {
        None
    };
    for url in std::iter::once(notification_url).chain(lifecycle_url.as_deref()) {
        if !handshake(url).await {
            return bad_request(
                &state,
                &headers,
                "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.",
            );
        }
    }
    let n = state.subscriptions.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let subscription = Subscription {
        id: format!("{:08x}-5b5b-4c4c-8d8d-{n:012x}", std::process::id()),
        tenant: tenant.seed.id.clone(),
        app,
        resource: resource.to_owned(),
        change_types,
        notification_url: notification_url.to_owned(),
        lifecycle_url,
        client_state,
        expires,
        encryption,
    };
    let answer = subscription.json();
    state.subscriptions.lock().push(subscription);
    let mut response = ok(&state, &headers, &answer);
    *response.status_mut() = StatusCode::CREATED;
    response
}

/// The caller's subscription `id`, if it is theirs and alive.
fn find(state: &State, tenant: &str, app: &str, id: &str) -> Option<Subscription> {
    let now = state.clock.now();
    state
        .subscriptions
        .lock()
        .iter()
        .find(|s| s.id == id && s.tenant == tenant && s.app == app && s.expires > now)
        .cloned()
}

fn not_found(state: &State, headers: &HeaderMap, id: &str) -> Response {
    error(
        state,
        headers,
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!(
            "The object was not found. Subscription '{}' does not exist.",
            super::graph::shorten(id)
        ),
    )
}

async fn list(Shared(state): Shared<Arc<State>>, headers: HeaderMap) -> Response {
    let (tenant, app) = match caller(&state, &headers, &[]) {
        Ok(caller) => caller,
        Err(refused) => return *refused,
    };
    let now = state.clock.now();
    let value: Vec<Value> = state
        .subscriptions
        .lock()
        .iter()
        .filter(|s| s.tenant == tenant.seed.id && s.app == app && s.expires > now)
        .map(Subscription::json)
        .collect();
    ok(&state, &headers, &json!({ "value": value }))
}

async fn read(
    Shared(state): Shared<Arc<State>>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (tenant, app) = match caller(&state, &headers, &[]) {
        Ok(caller) => caller,
        Err(refused) => return *refused,
    };
    match find(&state, &tenant.seed.id, &app, &id) {
        Some(s) => ok(&state, &headers, &s.json()),
        None => not_found(&state, &headers, &id),
    }
}

async fn renew(
    Shared(state): Shared<Arc<State>>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (tenant, app) = match caller(&state, &headers, &[]) {
        Ok(caller) => caller,
        Err(refused) => return *refused,
    };
    let Some(found) = find(&state, &tenant.seed.id, &app, &id) else {
        return not_found(&state, &headers, &id);
    };
    let body = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    let expires = match expiry(
        state.clock.now(),
        &found.resource,
        field(&body, "expirationDateTime"),
    ) {
        Ok(at) => at,
        Err(message) => return bad_request(&state, &headers, &message),
    };
    let mut list = state.subscriptions.lock();
    let Some(subscription) = list.iter_mut().find(|s| s.id == id) else {
        drop(list);
        return not_found(&state, &headers, &id);
    };
    subscription.expires = expires;
    let answer = subscription.json();
    drop(list);
    ok(&state, &headers, &answer)
}

async fn remove(
    Shared(state): Shared<Arc<State>>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (tenant, app) = match caller(&state, &headers, &[]) {
        Ok(caller) => caller,
        Err(refused) => return *refused,
    };
    if find(&state, &tenant.seed.id, &app, &id).is_none() {
        return not_found(&state, &headers, &id);
    }
    state.subscriptions.lock().retain(|s| s.id != id);
    StatusCode::NO_CONTENT.into_response()
}

async fn reauthorize(
    Shared(state): Shared<Arc<State>>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (tenant, app) = match caller(&state, &headers, &[]) {
        Ok(caller) => caller,
        Err(refused) => return *refused,
    };
    match find(&state, &tenant.seed.id, &app, &id) {
        Some(_) => StatusCode::OK.into_response(),
        None => not_found(&state, &headers, &id),
    }
}

/// Posts a change of `resource_id` in `collection` to every live subscription of the
/// tenant on that collection whose change types include `change`.
pub(crate) fn notify(
    state: &Arc<State>,
    tenant: &str,
    collection: &str,
    change: &str,
    resource_id: &str,
) {
    let now = state.clock.now();
    let targets: Vec<Subscription> = state
        .subscriptions
        .lock()
        .iter()
        .filter(|s| {
            s.tenant == tenant
                && s.resource == collection
                && s.expires > now
                && s.change_types.iter().any(|c| c == change)
        })
        .cloned()
        .collect();
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let odata_type = if collection == "groups" {
        "#Microsoft.Graph.Group"
    } else {
        "#Microsoft.Graph.User"
    };
    for s in targets {
        let resource = format!(
            "{}{}/{resource_id}",
            &collection[..1].to_ascii_uppercase(),
            &collection[1..]
        );
        let n = state.subscriptions.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut body = json!({"value": [{
            "id": format!("{n:016x}"),
            "subscriptionId": s.id,
            "subscriptionExpirationDateTime": rfc3339(s.expires),
            "clientState": s.client_state,
            "changeType": change,
            "resource": resource,
            "resourceData": {
                "@odata.type": odata_type,
                "@odata.id": resource,
                "id": resource_id,
                "organizationId": s.tenant,
            },
            "tenantId": s.tenant,
        }]});
        if let Some((key, certificate_id)) = &s.encryption {
            let data = state
                .tenant(&s.tenant)
                .and_then(|t| t.users().find(resource_id).cloned())
                .map_or_else(|| json!({"id": resource_id}), Value::Object);
            if let Some(content) = encrypt(key, certificate_id, &data.to_string()) {
                body["value"][0]["encryptedContent"] = content;
                let token = validation_token(state, &s);
                state
                    .subscriptions
                    .last_token
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone_from(&token);
                body["validationTokens"] = json!(token.into_iter().collect::<Vec<_>>());
            }
        }
        runtime.spawn(deliver(state.clone(), s.notification_url.clone(), body));
    }
}

/// The change-tracking publisher, in `azp` / `appid` of validation tokens.
pub(crate) const PUBLISHER: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";

/// A validation token for a rich notification: issued by the tenant's issuer, for the
/// subscribing app, to the change-tracking publisher, signed by the emulator's keys.
fn validation_token(state: &State, s: &Subscription) -> Option<String> {
    keel_token_manager::AccessTokenIssuer::new(
        state.keys.clone(),
        format!("{}/{}/v2.0", state.base, s.tenant),
        s.app.clone(),
    )
    .ttl(Duration::from_secs(3_600))
    .issue(
        &keel_token_manager::Grant::new(PUBLISHER, PUBLISHER).tenant(s.tenant.to_ascii_lowercase()),
    )
    .ok()
    .map(|issued| issued.token)
}

/// `data` encrypted as Graph encrypts resource data: a random AES-256 key, RSA-OAEP
/// (SHA-1) wrapped with the subscriber's public key; AES-CBC with PKCS7, the IV the
/// key's first 16 bytes; HMAC-SHA256 of the encrypted data.
fn encrypt(spki: &[u8], certificate_id: &str, data: &str) -> Option<Value> {
    use aws_lc_rs::cipher::{
        AES_256, EncryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey,
    };
    use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OaepPublicEncryptingKey, PublicEncryptingKey};
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    let public = OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(spki).ok()?).ok()?;
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).ok()?;
    let mut wrapped = vec![0u8; public.ciphertext_size()];
    let wrapped = public
        .encrypt(&OAEP_SHA1_MGF1SHA1, &key, &mut wrapped, None)
        .ok()?
        .to_vec();
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&key[..16]);
    let mut encrypted = data.as_bytes().to_vec();
    PaddedBlockEncryptingKey::cbc_pkcs7(UnboundCipherKey::new(&AES_256, &key).ok()?)
        .ok()?
        .less_safe_encrypt(&mut encrypted, EncryptionContext::Iv128(iv.into()))
        .ok()?;
    let mac = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key),
        &encrypted,
    );
    Some(json!({
        "data": STANDARD.encode(&encrypted),
        "dataSignature": STANDARD.encode(mac.as_ref()),
        "dataKey": STANDARD.encode(&wrapped),
        "encryptionCertificateId": certificate_id,
        "encryptionCertificateThumbprint": "",
    }))
}

/// One DER element: its tag, its contents, its whole encoding, and what follows.
type Element<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

fn der(input: &[u8]) -> Option<Element<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let length = rest[..n]
            .iter()
            .fold(0usize, |l, b| (l << 8) | usize::from(*b));
        (length, &rest[n..])
    };
    if rest.len() < length {
        return None;
    }
    let header = input.len() - rest.len();
    Some((
        tag,
        &rest[..length],
        &input[..header + length],
        &rest[length..],
    ))
}

/// The SubjectPublicKeyInfo of an X.509 certificate (DER).
fn subject_public_key_info(certificate: &[u8]) -> Option<&[u8]> {
    let (0x30, body, _, _) = der(certificate)? else {
        return None;
    };
    let (0x30, tbs, _, _) = der(body)? else {
        return None;
    };
    let mut rest = tbs;
    // An explicit version first, if any.
    let (tag, _, _, after) = der(rest)?;
    if tag == 0xA0 {
        rest = after;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        rest = der(rest)?.3;
    }
    let (0x30, _, whole, _) = der(rest)? else {
        return None;
    };
    Some(whole)
}

/// Posts a lifecycle event to a subscription's lifecycle URL; `subscriptionRemoved`
/// removes it. False when there is no such subscription or it has no lifecycle URL.
pub(crate) fn lifecycle(state: &Arc<State>, id: &str, event: &str) -> bool {
    let found = {
        let mut list = state.subscriptions.lock();
        let found = list.iter().find(|s| s.id == id).cloned();
        if event == "subscriptionRemoved" {
            list.retain(|s| s.id != id);
        }
        found
    };
    let Some(s) = found else { return false };
    let Some(url) = s.lifecycle_url.clone() else {
        return false;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    let body = json!({"value": [{
        "subscriptionId": s.id,
        "subscriptionExpirationDateTime": rfc3339(s.expires),
        "clientState": s.client_state,
        "lifecycleEvent": event,
        "resource": s.resource,
        "tenantId": s.tenant,
        "organizationId": s.tenant,
    }]});
    runtime.spawn(deliver(state.clone(), url, body));
    true
}

/// Posts `body`, again after a pause when the receiver does not answer 2xx.
async fn deliver(state: Arc<State>, url: String, body: Value) {
    let client = reqwest::Client::new();
    for attempt in 0..DELIVERY_ATTEMPTS {
        let answer = client
            .post(&url)
            .timeout(Duration::from_secs(3))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            state
                .subscriptions
                .delivered
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
    }
    state.subscriptions.failed.fetch_add(1, Ordering::Relaxed);
}
