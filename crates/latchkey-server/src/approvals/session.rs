//! Cookies, form tokens and the origin check of the approvals page.
//!
//! The session cookie contains the token the user pasted; the server keeps nothing else.
//! Every form carries a token that is an HMAC-SHA256, under a key derived from the root
//! key, over a purpose and the SHA-256 of the session's token. Every server of a cluster
//! derives the same key, so a form rendered by one server is accepted by another, and a
//! token never outlives its session.

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey_core::crypto::{Key256, sha256};
use ring::{hkdf, hmac};

/// The cookie that contains the signed-in user's token.
pub const SESSION_COOKIE: &str = "latchkey_session";
/// The random value that the sign-in form's token is bound to, before there is a session.
pub const LOGIN_COOKIE: &str = "latchkey_login";
/// A one-time message for the page after a form was sent.
pub const FLASH_COOKIE: &str = "latchkey_flash";

/// The path of the page's cookies, so browsers send them to no other part of the server.
pub const COOKIE_PATH: &str = "/approvals";

/// The purpose of the form tokens of a signed-in session.
const FORM_PURPOSE: &[u8] = b"approvals form";
/// The purpose of the sign-in form's token.
const LOGIN_PURPOSE: &[u8] = b"approvals login";
const FLASH_PURPOSE: &[u8] = b"approvals flash";

/// How long a sign-in form stays usable, in seconds.
pub const LOGIN_FORM_LIFETIME: i64 = 3600;
/// How long a flash message waits for the next page, in seconds.
const FLASH_LIFETIME: i64 = 60;

/// Returns the value of cookie `name` in the request, if it has one.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// Builds a `Set-Cookie` value for one of the page's cookies. A cookie without `max_age`
/// lasts as long as the browser session.
pub fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    secure: bool,
    max_age: Option<i64>,
) -> HeaderValue {
    let mut text = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict");
    if let Some(seconds) = max_age {
        text.push_str(&format!("; Max-Age={seconds}"));
    }
    if secure {
        text.push_str("; Secure");
    }
    // Names, paths and values are base62 or base64url text, which a header value takes;
    // anything else yields a cookie that clears itself.
    HeaderValue::from_str(&text)
        .unwrap_or_else(|_| HeaderValue::from_static("latchkey_invalid=; Max-Age=0"))
}

/// Builds a `Set-Cookie` value that removes a cookie.
pub fn clear_cookie(name: &str, path: &str, secure: bool) -> HeaderValue {
    set_cookie(name, "", path, secure, Some(0))
}

/// Hashes a session's secret (the token, or the sign-in cookie's value) with SHA-256. Form
/// tokens are bound to the hash.
pub fn session_hash(secret: &str) -> [u8; 32] {
    sha256(secret.as_bytes())
}

/// The key of form tokens and flash messages. No `Debug`; ring keeps the key material.
pub struct FormKey(hmac::Key);

struct KeyLength;

impl hkdf::KeyType for KeyLength {
    fn len(&self) -> usize {
        32
    }
}

impl FormKey {
    /// Derives the key from the root key with HKDF-SHA256.
    pub fn derive(root: &Key256) -> Option<FormKey> {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"latchkey approvals page");
        let prk = salt.extract(root.expose());
        let okm = prk.expand(&[b"form tokens"], KeyLength).ok()?;
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        okm.fill(bytes.as_mut()).ok()?;
        Some(FormKey(hmac::Key::new(hmac::HMAC_SHA256, bytes.as_ref())))
    }

    fn tag(&self, purpose: &[u8], session: &[u8; 32], extra: &[u8]) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(&(purpose.len() as u64).to_be_bytes());
        context.update(purpose);
        context.update(session);
        context.update(extra);
        context.sign()
    }

    fn verify(&self, purpose: &[u8], session: &[u8; 32], extra: &[u8], submitted: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(submitted.trim()) else {
            return false;
        };
        let mut message = Vec::with_capacity(8 + purpose.len() + 32 + extra.len());
        message.extend_from_slice(&(purpose.len() as u64).to_be_bytes());
        message.extend_from_slice(purpose);
        message.extend_from_slice(session);
        message.extend_from_slice(extra);
        // ring compares in constant time.
        hmac::verify(&self.0, &message, &tag).is_ok()
    }

    /// Computes the form token of a signed-in session.
    pub fn form_token(&self, session: &[u8; 32]) -> String {
        URL_SAFE_NO_PAD.encode(self.tag(FORM_PURPOSE, session, &[]).as_ref())
    }

    pub fn check_form_token(&self, session: &[u8; 32], submitted: &str) -> bool {
        self.verify(FORM_PURPOSE, session, &[], submitted)
    }

    /// Computes the token of the sign-in form, bound to the sign-in cookie.
    pub fn login_token(&self, login_cookie: &[u8; 32]) -> String {
        URL_SAFE_NO_PAD.encode(self.tag(LOGIN_PURPOSE, login_cookie, &[]).as_ref())
    }

    pub fn check_login_token(&self, login_cookie: &[u8; 32], submitted: &str) -> bool {
        self.verify(LOGIN_PURPOSE, login_cookie, &[], submitted)
    }

    /// Seals a flash message into a cookie value: the message, when it was made, and a tag
    /// that binds both to the session, so only this server can put words on the page.
    pub fn seal_flash(&self, session: &[u8; 32], ok: bool, text: &str, now: i64) -> String {
        let body = format!("{}{now}:{text}", if ok { '+' } else { '-' });
        let tag = self.tag(FLASH_PURPOSE, session, body.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(body.as_bytes()),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// Opens a flash cookie of this session made in the last minute.
    pub fn open_flash(&self, session: &[u8; 32], value: &str, now: i64) -> Option<(bool, String)> {
        let (body, tag) = value.split_once('.')?;
        let body = String::from_utf8(URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
        if !self.verify(FLASH_PURPOSE, session, body.as_bytes(), tag) {
            return None;
        }
        let ok = body.starts_with('+');
        let (made, text) = body.get(1..)?.split_once(':')?;
        let made: i64 = made.parse().ok()?;
        (now >= made && now - made <= FLASH_LIFETIME).then(|| (ok, text.to_string()))
    }
}

/// Generates a fresh random value for the sign-in cookie.
pub fn new_login_secret() -> Option<String> {
    latchkey_core::crypto::random_bytes::<32>()
        .ok()
        .map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
}

/// Checks where a form post came from, and rejects it when the browser reports another
/// site. Returns a description of the refused origin.
///
/// The `Origin` header, when present, must be this server: the request's `Host` with
/// https when the server serves TLS, and with http or https otherwise (a TLS proxy in front
/// changes the scheme the browser uses), or the origin of `[notify] public_url`. The
/// page's `Referrer-Policy: no-referrer` makes browsers send `Origin: null` even for the
/// page's own forms, so `null` is accepted only with `Sec-Fetch-Site: same-origin`, which
/// browsers set and pages cannot. A `Sec-Fetch-Site` other than `same-origin` (or `none`,
/// a navigation the user started) is refused whatever the origin says. Without either
/// header the form token alone decides.
pub fn check_origin(
    headers: &HeaderMap,
    tls: bool,
    public_url: Option<&str>,
) -> Result<(), String> {
    let fetch_site = headers
        .get("sec-fetch-site")
        .map(|v| v.to_str().unwrap_or("(not text)"));
    if let Some(site) = fetch_site
        && site != "same-origin"
        && site != "none"
    {
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .unwrap_or("unnamed");
        return Err(format!("origin {origin}, Sec-Fetch-Site {site}"));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("(not text)").to_string();
    if origin == "null" {
        return if fetch_site == Some("same-origin") {
            Ok(())
        } else {
            Err("origin null".to_string())
        };
    }
    if let Some(public) = public_url.and_then(|u| url::Url::parse(u).ok())
        && public.origin().ascii_serialization() == origin
    {
        return Ok(());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    let matches = |scheme: &str| {
        host.as_deref()
            .is_some_and(|host| origin.eq_ignore_ascii_case(&format!("{scheme}://{host}")))
    };
    if matches("https") || (!tls && matches("http")) {
        Ok(())
    } else {
        Err(format!("origin {origin}"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn key() -> FormKey {
        FormKey::derive(&Key256::from_bytes([7; 32])).unwrap()
    }

    #[test]
    fn form_tokens_are_bound_to_their_session() {
        let key = key();
        let alice = session_hash("lkt_alice");
        let bob = session_hash("lkt_bob");
        let token = key.form_token(&alice);
        assert!(key.check_form_token(&alice, &token));
        assert!(!key.check_form_token(&bob, &token));
        assert!(!key.check_form_token(&alice, ""));
        assert!(!key.check_form_token(&alice, "not base64 !"));
        assert!(!key.check_form_token(&alice, &key.login_token(&alice)));
        let other = FormKey::derive(&Key256::from_bytes([8; 32])).unwrap();
        assert!(!other.check_form_token(&alice, &token));
    }

    #[test]
    fn flash_opens_only_for_its_session_and_briefly() {
        let key = key();
        let session = session_hash("lkt_a");
        let value = key.seal_flash(&session, true, "You approved req_1: done.", 1000);
        assert_eq!(
            key.open_flash(&session, &value, 1010),
            Some((true, "You approved req_1: done.".to_string()))
        );
        assert_eq!(key.open_flash(&session, &value, 1061), None);
        assert_eq!(key.open_flash(&session_hash("lkt_b"), &value, 1010), None);
        let (body, tag) = value.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(b"+1000:You approved nothing");
        assert_eq!(
            key.open_flash(&session, &format!("{forged}.{tag}"), 1010),
            None
        );
        assert!(key.open_flash(&session, body, 1010).is_none());
    }

    #[test]
    fn origin_must_be_this_server() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8740"));
        assert!(check_origin(&headers, false, None).is_ok());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8740"),
        );
        assert!(check_origin(&headers, false, None).is_ok());
        assert!(check_origin(&headers, true, None).is_err());

        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9999"),
        );
        assert_eq!(
            check_origin(&headers, false, None),
            Err("origin http://127.0.0.1:9999".to_string())
        );

        // The page's own forms, under `Referrer-Policy: no-referrer`.
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(check_origin(&headers, false, None).is_err());
        headers.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(check_origin(&headers, false, None).is_ok());
        for site in ["same-site", "cross-site"] {
            headers.insert("sec-fetch-site", HeaderValue::from_static(site));
            assert!(check_origin(&headers, false, None).is_err(), "{site}");
            headers.insert(
                header::ORIGIN,
                HeaderValue::from_static("http://127.0.0.1:8740"),
            );
            assert!(check_origin(&headers, false, None).is_err(), "{site}");
            headers.remove(header::ORIGIN);
            assert!(check_origin(&headers, false, None).is_err(), "{site}");
            headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        }
        headers.remove("sec-fetch-site");
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://latchkey.example.com"),
        );
        assert!(check_origin(&headers, true, None).is_err());
        assert!(check_origin(&headers, true, Some("https://latchkey.example.com/")).is_ok());
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; latchkey_session=lkt_x"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("lkt_x"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "latchkey"), None);
        let value = set_cookie(SESSION_COOKIE, "lkt_x", COOKIE_PATH, true, None);
        assert_eq!(
            value.to_str().unwrap(),
            "latchkey_session=lkt_x; Path=/approvals; HttpOnly; SameSite=Strict; Secure"
        );
    }
}
