//! The approvals page: a small server-rendered site under `/approvals` where an approver
//! signs in with a Latchkey token, lists the access requests waiting for their review,
//! and approves or denies them.
//!
//! The page is another door to the same workflow as `/v1/requests`: a session cookie
//! contains the token, which is authenticated on every request exactly like a bearer token,
//! and decisions go through [`access::requests::review`] with the same rules and the same
//! audit events. Every page view and decision is audited by [`auth::record_response`],
//! like every API call. Pages carry no script, load nothing from elsewhere, and are sent
//! with a strict Content-Security-Policy.

pub mod html;
pub mod session;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use latchkey_core::audit::Outcome;
use zeroize::Zeroizing;

use crate::access::{self, request_uid};
use crate::auth::{self, AuthFailure, FailedAuth, RequestId};
use crate::error::{ApiError, Audited, ErrorCode, current_request_id};
use crate::login::ClientAddr;
use crate::state::{AuditSlot, RequestCtx, SharedState};
use html::{Flash, LoginNotice, Viewer};
use session::{
    COOKIE_PATH, FLASH_COOKIE, FormKey, LOGIN_COOKIE, LOGIN_FORM_LIFETIME, SESSION_COOKIE,
};

const STYLESHEET: &str = include_str!("style.css");
const LOGIN_PATH: &str = "/approvals/login";
/// The resource of sign-in and sign-out events.
const PAGE_RESOURCE: &str = "AuthMethod::\"approvals-page\"";
/// How many of the user's own requests the main page shows.
const OWN_REQUESTS_SHOWN: u32 = 20;
/// How many pending requests the main page looks at.
const PENDING_SHOWN: u32 = 200;

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Builds the page's routes. The routes that need a signed-in user go through [`guard`].
pub fn router(state: SharedState) -> Router<SharedState> {
    let signed_in = Router::new()
        .route("/approvals", get(overview))
        .route("/approvals/requests/{id}", get(detail))
        .route("/approvals/requests/{id}/approve", post(approve))
        .route("/approvals/requests/{id}/deny", post(deny))
        .route("/approvals/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(state, guard));
    Router::new()
        .merge(signed_in)
        .route(LOGIN_PATH, get(login_form).post(login))
        .route("/approvals/style.css", get(stylesheet))
        .layer(middleware::from_fn(security_headers))
}

/// Adds the headers every response of the page carries.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
        .into_response()
}

/// Returns whether cookies get `Secure`: when this server serves HTTPS, or when its public
/// address is https (a TLS proxy in front).
fn secure_cookies(state: &SharedState) -> bool {
    state.settings.tls
        || state
            .settings
            .notify
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
}

fn form_key(state: &SharedState) -> Result<FormKey, ApiError> {
    let root = state.keyring.root().ok_or_else(ApiError::sealed)?;
    FormKey::derive(&root).ok_or_else(|| ApiError::internal("cannot derive the form key"))
}

/// The signed-in session of a request, set by [`guard`]: the SHA-256 of its token.
#[derive(Clone)]
struct Session {
    hash: [u8; 32],
    csrf: String,
}

/// An error shown as a page. It keeps the error's status and code, so the audit event of
/// the request records it as it would for the API.
struct PageError {
    error: ApiError,
    back: Option<String>,
    viewer: Option<(String, String)>,
}

impl PageError {
    fn new(error: ApiError) -> PageError {
        PageError {
            error,
            back: None,
            viewer: None,
        }
    }

    fn back(mut self, to: impl Into<String>) -> PageError {
        self.back = Some(to.into());
        self
    }

    fn for_viewer(mut self, ctx: &RequestCtx, session: &Session) -> PageError {
        self.viewer = Some((ctx.caller.principal.uid_string(), session.csrf.clone()));
        self
    }
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> PageError {
        PageError::new(error)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let error = self.error;
        let heading = match error.status.as_u16() {
            400 => "Not accepted",
            401 => "Sign in again",
            403 => "Not allowed",
            404 => "Not found",
            409 => "Not possible now",
            503 => "Unavailable",
            _ => "Something went wrong",
        };
        let body = html::error(
            heading,
            &error.message,
            &current_request_id(),
            self.back.as_deref(),
        );
        let viewer = self
            .viewer
            .as_ref()
            .map(|(principal, csrf)| Viewer { principal, csrf });
        let mut response = (
            error.status,
            Html(html::page(heading, viewer.as_ref(), None, &body)),
        )
            .into_response();
        response.extensions_mut().insert(ErrorCode(error.code));
        if error.audited {
            response.extensions_mut().insert(Audited);
        }
        response
    }
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn add_cookie(response: &mut Response, value: HeaderValue) {
    response.headers_mut().append(header::SET_COOKIE, value);
}

/// A page path to come back to after signing in; anything else goes to the main page.
fn safe_next(next: Option<&str>) -> String {
    let Some(next) = next else {
        return "/approvals".into();
    };
    let id_ok = |id: &str| {
        !id.is_empty()
            && id.len() <= 100
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    match next.strip_prefix("/approvals/requests/") {
        Some(id) if id_ok(id) => next.to_string(),
        _ => "/approvals".into(),
    }
}

fn query_value(uri: &Uri, name: &str) -> Option<String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// The fields of a posted form. Values are wiped on drop, as one of them may be a token.
struct Form(Vec<(String, Zeroizing<String>)>);

impl Form {
    fn parse(body: &[u8]) -> Form {
        Form(
            url::form_urlencoded::parse(body)
                .map(|(key, value)| (key.into_owned(), Zeroizing::new(value.into_owned())))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

fn forbidden(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

/// Refuses a form post from another site, or without this session's form token.
fn check_form(
    state: &SharedState,
    headers: &HeaderMap,
    form: &Form,
    check: impl FnOnce(&FormKey, &str) -> bool,
) -> Result<(), ApiError> {
    session::check_origin(
        headers,
        state.settings.tls,
        state.settings.notify.public_url.as_deref(),
    )
    .map_err(|origin| {
        forbidden(
            "cross_origin",
            format!(
                "this form was sent from another site ({origin}), so it was refused. Open the approvals page of this server and send the form from there."
            ),
        )
    })?;
    let key = form_key(state)?;
    if !form.get("csrf").is_some_and(|token| check(&key, token)) {
        return Err(forbidden(
            "csrf_failed",
            "this form is out of date or did not come from your session, so nothing was done. Reload the page and send the form again."
                .to_string(),
        ));
    }
    Ok(())
}

/// Authenticates the session cookie like a bearer token and audits the request like an
/// API call. A page view without a valid session is redirected to the sign-in form, and a
/// form post gets 401. Both failures are audited.
async fn guard(State(state): State<SharedState>, mut request: Request, next: Next) -> Response {
    if state.keyring.is_sealed() {
        return PageError::new(ApiError::sealed()).into_response();
    }
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let client = auth::client_addr(&request);
    let fallback_action = auth::route_action(&request);
    let fallback_resource = request.uri().path().to_string();

    let token = session::cookie(request.headers(), SESSION_COOKIE)
        .map(|text| Zeroizing::new(text.to_string()));
    let result = match &token {
        Some(token) => auth::authenticate_token(&state, token).await,
        None => Err((AuthFailure::Missing, None)),
    };
    let caller = match result {
        Ok(caller) => caller,
        Err((AuthFailure::StoreUnavailable, _)) => {
            return PageError::new(ApiError::storage_unavailable()).into_response();
        }
        Err((failure, accessor)) => {
            let failed = FailedAuth {
                request_id,
                client_addr: client,
                action: fallback_action,
                resource: fallback_resource,
                failure,
                accessor,
            };
            if auth::record_auth_failure(&state, failed).await.is_err() {
                return PageError::new(ApiError::audit_unavailable()).into_response();
            }
            return signed_out(&state, &request, token.is_some());
        }
    };

    let key = match form_key(&state) {
        Ok(key) => key,
        Err(error) => return PageError::new(error).into_response(),
    };
    let hash = token
        .as_deref()
        .map(|t| session::session_hash(t))
        .unwrap_or_default();
    drop(token);
    let session = Session {
        hash,
        csrf: key.form_token(&hash),
    };
    let ctx = RequestCtx {
        caller,
        request_id,
        client_addr: client,
        slot: AuditSlot::default(),
    };
    ctx.slot.detail("via", "approvals_page");

    request.extensions_mut().insert(ctx.clone());
    request.extensions_mut().insert(session);
    let response = next.run(request).await;
    let response =
        auth::record_response(&state, &ctx, response, fallback_action, fallback_resource).await;
    page_if_json(response)
}

/// Replaces the API's JSON error, which [`auth::record_response`] returns when the audit
/// write fails, with a page.
fn page_if_json(response: Response) -> Response {
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if json {
        PageError::new(ApiError::audit_unavailable()).into_response()
    } else {
        response
    }
}

/// Builds the response to a request whose session is missing or no longer valid.
fn signed_out(state: &SharedState, request: &Request, had_cookie: bool) -> Response {
    let secure = secure_cookies(state);
    let mut response = if request.method() == axum::http::Method::GET {
        let next = safe_next(Some(request.uri().path()));
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if next != "/approvals" {
            query.append_pair("next", &next);
        }
        if had_cookie {
            query.append_pair("ended", "1");
        }
        let query = query.finish();
        if query.is_empty() {
            see_other(LOGIN_PATH)
        } else {
            see_other(&format!("{LOGIN_PATH}?{query}"))
        }
    } else {
        PageError::new(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "you are not signed in, or your session has ended, so nothing was done. Sign in again and send the form once more.",
        ))
        .back(LOGIN_PATH)
        .into_response()
    };
    if had_cookie {
        add_cookie(
            &mut response,
            session::clear_cookie(SESSION_COOKIE, COOKIE_PATH, secure),
        );
    }
    response
}

/// Takes the flash message of the session from the request's cookies, if any; the
/// response must then clear the cookie.
fn take_flash(
    state: &SharedState,
    headers: &HeaderMap,
    session: &Session,
) -> (Option<Flash>, bool) {
    let Some(value) = session::cookie(headers, FLASH_COOKIE) else {
        return (None, false);
    };
    let flash = form_key(state).ok().and_then(|key| {
        key.open_flash(&session.hash, value, chrono::Utc::now().timestamp())
            .map(|(ok, text)| Flash { ok, text })
    });
    (flash, true)
}

fn page_response(
    state: &SharedState,
    title: &str,
    viewer: &Viewer<'_>,
    headers: &HeaderMap,
    session: &Session,
    body: &str,
) -> Response {
    let (flash, clear) = take_flash(state, headers, session);
    let mut response = Html(html::page(title, Some(viewer), flash.as_ref(), body)).into_response();
    if clear {
        add_cookie(
            &mut response,
            session::clear_cookie(FLASH_COOKIE, COOKIE_PATH, secure_cookies(state)),
        );
    }
    response
}

/// `GET /approvals`: the requests waiting for the user's review, then their own.
async fn overview(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let fail = |e: ApiError| PageError::new(e).for_viewer(&ctx, &session);
    let reviewable: Vec<_> =
        access::requests::list_visible(&state, &ctx, Some("pending"), false, PENDING_SHOWN)
            .await
            .map_err(fail)?
            .into_iter()
            .filter(|view| view.can_review)
            .collect();
    let mine = access::requests::list_visible(&state, &ctx, None, true, OWN_REQUESTS_SHOWN)
        .await
        .map_err(fail)?;
    ctx.slot
        .prepare("list", "AccessRequest::\"*\"", Outcome::Allowed, Vec::new());
    ctx.slot
        .detail("visible_requests", reviewable.len().to_string());
    let principal = ctx.caller.principal.uid_string();
    let viewer = Viewer {
        principal: &principal,
        csrf: &session.csrf,
    };
    let body = html::overview(&reviewable, &mine, &session.csrf);
    Ok(page_response(
        &state,
        "Access requests",
        &viewer,
        &headers,
        &session,
        &body,
    ))
}

/// `GET /approvals/requests/{id}`: one request with its reviews; the link in webhooks.
async fn detail(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let (request, reviewer) = access::requests::load_visible(&state, &ctx, &id)
        .await
        .map_err(|e| PageError::new(e).for_viewer(&ctx, &session))?;
    let view = access::requests::view(&request, state.clock.now(), reviewer);
    let principal = ctx.caller.principal.uid_string();
    let viewer = Viewer {
        principal: &principal,
        csrf: &session.csrf,
    };
    let body = html::request_detail(&view, &session.csrf);
    Ok(page_response(
        &state,
        &format!("Request {}", view.id),
        &viewer,
        &headers,
        &session,
        &body,
    ))
}

async fn approve(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    decide(state, ctx, session, id, headers, body, true).await
}

async fn deny(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    decide(state, ctx, session, id, headers, body, false).await
}

/// Approves or denies through [`access::requests::review`], then redirects to the page the
/// form came from with the outcome as a flash message. A refusal is shown as a page with
/// the API's status and message.
async fn decide(
    state: SharedState,
    ctx: RequestCtx,
    session: Session,
    id: String,
    headers: HeaderMap,
    body: Bytes,
    approve: bool,
) -> Result<Response, PageError> {
    let verdict = if approve { "approve" } else { "deny" };
    let form = Form::parse(&body);
    let back = if form.get("return_to") == Some("list") {
        "/approvals".to_string()
    } else {
        format!("/approvals/requests/{id}")
    };
    let fail = |e: ApiError| {
        PageError::new(e)
            .for_viewer(&ctx, &session)
            .back(back.clone())
    };
    // A refused form is recorded against the request it named.
    ctx.slot
        .prepare(verdict, &request_uid(&id), Outcome::Denied, Vec::new());
    check_form(&state, &headers, &form, |key, token| {
        key.check_form_token(&session.hash, token)
    })
    .map_err(fail)?;

    let comment = form.get("comment").map(str::to_string);
    let view = access::requests::review(&state, &ctx, &id, approve, comment)
        .await
        .map_err(fail)?;

    let text = if !approve {
        format!(
            "You denied request {} by {}; it is now {}.",
            view.id, view.requester, view.status
        )
    } else if view.status == "approved" {
        format!(
            "You approved request {}: {} may use {} for {}.",
            view.id,
            view.requester,
            view.resources.join(" "),
            view.duration
        )
    } else {
        format!(
            "You approved request {}; it has {}/{} approvals and waits for more.",
            view.id, view.approvals, view.approvals_required
        )
    };
    let key = form_key(&state).map_err(fail)?;

    let mut response = see_other(&back);
    add_cookie(
        &mut response,
        session::set_cookie(
            FLASH_COOKIE,
            &key.seal_flash(&session.hash, true, &text, chrono::Utc::now().timestamp()),
            COOKIE_PATH,
            secure_cookies(&state),
            Some(60),
        ),
    );
    Ok(response)
}

/// `POST /approvals/logout`: clears the session cookie. The token stays valid.
async fn logout(
    State(state): State<SharedState>,
    ctx: RequestCtx,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    ctx.slot
        .prepare("logout", PAGE_RESOURCE, Outcome::Denied, Vec::new());
    let form = Form::parse(&body);
    check_form(&state, &headers, &form, |key, token| {
        key.check_form_token(&session.hash, token)
    })
    .map_err(|e| PageError::new(e).for_viewer(&ctx, &session))?;
    ctx.slot
        .prepare("logout", PAGE_RESOURCE, Outcome::Allowed, Vec::new());
    let secure = secure_cookies(&state);
    let mut response = see_other(&format!("{LOGIN_PATH}?signed_out=1"));
    add_cookie(
        &mut response,
        session::clear_cookie(SESSION_COOKIE, COOKIE_PATH, secure),
    );
    add_cookie(
        &mut response,
        session::clear_cookie(FLASH_COOKIE, COOKIE_PATH, secure),
    );
    Ok(response)
}

/// Renders the sign-in form, with the sign-in cookie its token is bound to.
fn login_page(
    state: &SharedState,
    headers: &HeaderMap,
    next: &str,
    notice: LoginNotice,
    status: StatusCode,
) -> Result<Response, PageError> {
    let key = form_key(state)?;
    let existing = session::cookie(headers, LOGIN_COOKIE).map(str::to_string);
    let secret = match existing {
        Some(secret) => secret,
        None => session::new_login_secret()
            .ok_or_else(|| ApiError::internal("no randomness for the sign-in form"))?,
    };
    let csrf = key.login_token(&session::session_hash(&secret));
    let body = html::login(&csrf, next, notice);
    let mut response = (status, Html(html::page("Sign in", None, None, &body))).into_response();
    // Sent again each time, so an open form keeps working for the lifetime from now.
    add_cookie(
        &mut response,
        session::set_cookie(
            LOGIN_COOKIE,
            &secret,
            LOGIN_PATH,
            secure_cookies(state),
            Some(LOGIN_FORM_LIFETIME),
        ),
    );
    Ok(response)
}

/// `GET /approvals/login`: the sign-in form.
async fn login_form(
    State(state): State<SharedState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    if state.keyring.is_sealed() {
        return Err(ApiError::sealed().into());
    }
    let next = safe_next(query_value(&uri, "next").as_deref());
    let notice = if query_value(&uri, "ended").is_some() {
        LoginNotice::Ended
    } else if query_value(&uri, "signed_out").is_some() {
        LoginNotice::SignedOut
    } else {
        LoginNotice::None
    };
    login_page(&state, &headers, &next, notice, StatusCode::OK)
}

/// `POST /approvals/login`: checks the pasted token like a bearer token and, when it is
/// valid, keeps it in the session cookie. A refused token is audited as a failed
/// authentication.
async fn login(
    State(state): State<SharedState>,
    ClientAddr(client): ClientAddr,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    if state.keyring.is_sealed() {
        return Err(ApiError::sealed().into());
    }
    let form = Form::parse(&body);
    let next = safe_next(form.get("next"));

    let login_cookie = session::cookie(&headers, LOGIN_COOKIE).map(session::session_hash);
    check_form(&state, &headers, &form, |key, token| {
        login_cookie.is_some_and(|cookie| key.check_login_token(&cookie, token))
    })
    .map_err(|e| {
        let message = if e.code == "csrf_failed" {
            "this sign-in form is out of date or was not opened in this browser, so nothing was done. Reload the sign-in page and try again.".to_string()
        } else {
            e.message.clone()
        };
        PageError::new(ApiError::new(e.status, e.code, message)).back(LOGIN_PATH)
    })?;

    let token = Zeroizing::new(form.get("token").unwrap_or("").trim().to_string());
    let client_addr = client.map(|c| c.ip().to_string());
    let caller = match auth::authenticate_token(&state, &token).await {
        Ok(caller) => caller,
        Err((AuthFailure::StoreUnavailable, _)) => {
            return Err(ApiError::storage_unavailable().into());
        }
        Err((failure, accessor)) => {
            let failure = if token.is_empty() {
                AuthFailure::Missing
            } else {
                failure
            };
            let failed = FailedAuth {
                request_id: request_id.0,
                client_addr,
                action: "login".into(),
                resource: PAGE_RESOURCE.into(),
                failure,
                accessor,
            };
            if auth::record_auth_failure(&state, failed).await.is_err() {
                return Err(ApiError::audit_unavailable().into());
            }
            return login_page(
                &state,
                &headers,
                &next,
                LoginNotice::Refused,
                StatusCode::UNAUTHORIZED,
            );
        }
    };

    let ctx = RequestCtx {
        caller,
        request_id: request_id.0,
        client_addr,
        slot: AuditSlot::default(),
    };
    ctx.slot
        .prepare("login", PAGE_RESOURCE, Outcome::Allowed, Vec::new());
    ctx.slot.detail("method", "approvals-page:token");
    let secure = secure_cookies(&state);
    let mut response = see_other(&next);
    let mut cookie = session::set_cookie(SESSION_COOKIE, &token, COOKIE_PATH, secure, None);
    cookie.set_sensitive(true);
    add_cookie(&mut response, cookie);
    add_cookie(
        &mut response,
        session::clear_cookie(LOGIN_COOKIE, LOGIN_PATH, secure),
    );
    let response =
        auth::record_response(&state, &ctx, response, "login".into(), PAGE_RESOURCE.into()).await;
    Ok(page_if_json(response))
}
