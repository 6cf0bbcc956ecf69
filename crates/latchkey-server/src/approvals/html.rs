//! The HTML of the approvals page: escaping, the page frame, and the request cards.
//!
//! Every piece of text that a user or the store supplied goes through [`escape`]. The
//! markup has no script and no inline style; `/approvals/style.css` is the only stylesheet.

use std::fmt::Write as _;

use crate::access::requests::RequestView;

/// Escapes text for HTML element content and for quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// Renders a ticket: a link when it is an http(s) URL, plain text otherwise.
pub fn ticket(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => format!(
            r#"<a href="{}" rel="noreferrer noopener">{}</a>"#,
            escape(url.as_str()),
            escape(text)
        ),
        _ => escape(text),
    }
}

/// Escapes multi-line text (reasons, comments) and keeps its line breaks.
fn lines(text: &str) -> String {
    escape(text).replace('\n', "<br>")
}

/// The signed-in user, as the header of every page shows them.
pub struct Viewer<'a> {
    /// The principal, such as `User::"bob"`.
    pub principal: &'a str,
    /// The form token of the session.
    pub csrf: &'a str,
}

/// A one-time message shown at the top of a page after a form was sent.
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

/// Wraps `body` in the page frame.
pub fn page(title: &str, viewer: Option<&Viewer<'_>>, flash: Option<&Flash>, body: &str) -> String {
    let mut out = String::new();
    out.push_str("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(out, "<title>{} - Latchkey approvals</title>", escape(title));
    out.push_str("<link rel=\"stylesheet\" href=\"/approvals/style.css\">\n</head>\n<body>\n");

    out.push_str(
        "<header class=\"top\">\n<a class=\"brand\" href=\"/approvals\">Latchkey approvals</a>\n",
    );
    if let Some(viewer) = viewer {
        let _ = writeln!(
            out,
            "<span class=\"who\">Signed in as <strong>{}</strong></span>",
            escape(viewer.principal)
        );
        let _ = writeln!(
            out,
            "<form class=\"logout\" method=\"post\" action=\"/approvals/logout\">{}<button type=\"submit\">Sign out</button></form>",
            csrf_field(viewer.csrf)
        );
    }
    out.push_str("</header>\n<main>\n");

    if let Some(flash) = flash {
        let _ = writeln!(
            out,
            "<p class=\"flash {}\" role=\"status\">{}</p>",
            if flash.ok { "ok" } else { "error" },
            escape(&flash.text)
        );
    }
    out.push_str(body);
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(csrf)
    )
}

/// Writes the detail rows of a request.
fn facts(out: &mut String, view: &RequestView, full: bool) {
    out.push_str("<dl class=\"facts\">\n");

    let mut row = |name: &str, value: String| {
        let _ = writeln!(out, "<dt>{name}</dt><dd>{value}</dd>");
    };
    row("Requester", escape(&view.requester));
    let resources = view
        .resources
        .iter()
        .map(|r| format!("<li><code>{}</code></li>", escape(r)))
        .collect::<String>();
    row(
        "Resources",
        format!("<ul class=\"resources\">{resources}</ul>"),
    );

    row("Duration", escape(&view.duration));
    row(
        "Reason",
        if view.reason.is_empty() {
            "<span class=\"none\">none given</span>".to_string()
        } else {
            lines(&view.reason)
        },
    );
    row(
        "Ticket",
        match &view.ticket {
            Some(text) => ticket(text),
            None => "<span class=\"none\">none</span>".to_string(),
        },
    );
    row(
        "Approvals",
        format!("{}/{}", view.approvals, view.approvals_required),
    );

    if full {
        row("Requested", escape(&view.created_at));
    }
    if view.status == "pending" {
        row("Expires", escape(&view.expires_at));
    }
    if full {
        if let Some(at) = &view.decided_at {
            row("Decided", escape(at));
        }
        if let Some(by) = &view.decided_by {
            row("Decided by", escape(by));
        }
        if let Some(grant) = &view.grant {
            row("Grant", format!("<code>{}</code>", escape(grant)));
        }
    }
    out.push_str("</dl>\n");
}

fn reviews(out: &mut String, view: &RequestView) {
    if view.reviews.is_empty() {
        out.push_str("<p class=\"none\">No reviews yet.</p>\n");
        return;
    }
    out.push_str("<ul class=\"reviews\">\n");
    for review in &view.reviews {
        let verdict = if review.verdict == "approve" {
            "approved"
        } else {
            "denied"
        };
        let _ = write!(
            out,
            "<li><strong>{}</strong> {verdict} at {}",
            escape(&review.reviewer),
            escape(&review.time)
        );
        if let Some(comment) = &review.comment {
            let _ = write!(out, ": <q>{}</q>", lines(comment));
        }
        out.push_str("</li>\n");
    }
    out.push_str("</ul>\n");
}

/// Writes the approve and deny buttons of a request, which share one comment field. The
/// comment is a text area, so pressing Enter in it never sends the form.
fn review_form(out: &mut String, view: &RequestView, csrf: &str, return_to: &str) {
    let id = escape(&view.id);
    let _ = write!(
        out,
        "<form class=\"review\" method=\"post\" action=\"/approvals/requests/{id}/approve\">\n\
         {}\n<input type=\"hidden\" name=\"return_to\" value=\"{}\">\n\
         <label for=\"comment-{id}\">Comment</label>\n\
         <textarea id=\"comment-{id}\" name=\"comment\" rows=\"2\" maxlength=\"1000\"></textarea>\n\
         <div class=\"buttons\">\
         <button type=\"submit\" class=\"approve\">Approve</button> \
         <button type=\"submit\" class=\"deny\" formaction=\"/approvals/requests/{id}/deny\">Deny</button>\
         </div>\n</form>\n",
        csrf_field(csrf),
        escape(return_to),
    );
}

/// Renders one request as a card: its facts, and the review form when the viewer may
/// review it.
pub fn request_card(view: &RequestView, csrf: Option<&str>, return_to: &str) -> String {
    let mut out = String::new();
    let id = escape(&view.id);
    let _ = writeln!(
        out,
        "<article class=\"request\" id=\"request-{id}\">\n<h3><a href=\"/approvals/requests/{id}\">{id}</a> <span class=\"status {}\">{}</span></h3>",
        status_class(&view.status),
        escape(&view.status)
    );
    facts(&mut out, view, false);
    if view.can_review
        && let Some(csrf) = csrf
    {
        review_form(&mut out, view, csrf, return_to);
    }
    out.push_str("</article>\n");
    out
}

/// Renders one request in full, with its reviews.
pub fn request_detail(view: &RequestView, csrf: &str) -> String {
    let mut out = String::new();
    let id = escape(&view.id);
    let _ = writeln!(
        out,
        "<p class=\"back\"><a href=\"/approvals\">All requests</a></p>\n<article class=\"request detail\" id=\"request-{id}\">\n<h1>Request <code>{id}</code> <span class=\"status {}\">{}</span></h1>",
        status_class(&view.status),
        escape(&view.status)
    );
    facts(&mut out, view, true);
    out.push_str("<h2>Reviews</h2>\n");
    reviews(&mut out, view);
    if view.can_review {
        review_form(&mut out, view, csrf, "request");
    } else if view.status == "pending" {
        out.push_str("<p class=\"note\">You cannot review this request: it is your own, or no policy lets you approve it.</p>\n");
    }
    let _ = writeln!(
        out,
        "<p class=\"cli\">On the command line: <code>lk requests {id}</code></p>\n</article>"
    );
    out
}

/// Returns the CSS class of a status. Unknown statuses get `other`.
fn status_class(status: &str) -> &'static str {
    match status {
        "pending" => "pending",
        "approved" => "approved",
        "denied" => "denied",
        "expired" => "expired",
        "cancelled" => "cancelled",
        _ => "other",
    }
}

/// Renders the signed-in user's main page: the requests waiting for their review, then
/// their own.
pub fn overview(reviewable: &[RequestView], mine: &[RequestView], csrf: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<h1>Waiting for your review <span class=\"count\">{}</span></h1>",
        reviewable.len()
    );
    if reviewable.is_empty() {
        out.push_str("<p class=\"none\">No pending request waits for your review.</p>\n");
    }
    for view in reviewable {
        out.push_str(&request_card(view, Some(csrf), "list"));
    }
    out.push_str("<h2>Your recent requests</h2>\n");
    if mine.is_empty() {
        out.push_str("<p class=\"none\">You have made no access requests. Ask with <code>lk request lk://VAULT/SECRET --for 1h --reason \"...\"</code>.</p>\n");
    } else {
        out.push_str("<table class=\"mine\">\n<thead><tr><th>Request</th><th>Status</th><th>Resources</th><th>Duration</th><th>Approvals</th><th>Requested</th></tr></thead>\n<tbody>\n");
        for view in mine {
            let id = escape(&view.id);
            let _ = writeln!(
                out,
                "<tr><td><a href=\"/approvals/requests/{id}\">{id}</a></td><td><span class=\"status {}\">{}</span></td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td></tr>",
                status_class(&view.status),
                escape(&view.status),
                view.resources
                    .iter()
                    .map(|r| format!("<code>{}</code>", escape(r)))
                    .collect::<Vec<_>>()
                    .join(" "),
                escape(&view.duration),
                view.approvals,
                view.approvals_required,
                escape(&view.created_at),
            );
        }
        out.push_str("</tbody>\n</table>\n");
    }
    out.push_str("<p class=\"cli\">On the command line: <code>lk requests --pending</code> lists the same requests, and <code>lk approve ID</code> or <code>lk deny ID</code> reviews one.</p>\n");
    out
}

/// The notice at the top of the sign-in form.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LoginNotice {
    None,
    /// The session cookie's token is no longer accepted.
    Ended,
    SignedOut,
    /// The pasted token was refused.
    Refused,
}

/// Renders the sign-in form.
pub fn login(csrf: &str, next: &str, notice: LoginNotice) -> String {
    let mut out = String::from("<h1>Sign in</h1>\n");
    // Fixed texts, written as HTML.
    let message = match notice {
        LoginNotice::None => None,
        LoginNotice::Ended => Some((
            "error",
            "Your session has ended: its token expired or was revoked, or its user was deactivated. Sign in again with a valid token.",
        )),
        LoginNotice::SignedOut => Some((
            "ok",
            "You are signed out. The token itself stays valid until it expires; revoke it with <code>lk token revoke</code> if you no longer need it.",
        )),
        LoginNotice::Refused => Some((
            "error",
            "That token was not accepted: it is mistyped, unknown, expired or revoked, or its user is deactivated. Paste a valid Latchkey token (it starts with <code>lkt_</code>).",
        )),
    };
    if let Some((class, text)) = message {
        let _ = writeln!(out, "<p class=\"flash {class}\" role=\"status\">{text}</p>");
    }
    let _ = write!(
        out,
        "<form class=\"login\" method=\"post\" action=\"/approvals/login\">\n\
         {}\n<input type=\"hidden\" name=\"next\" value=\"{}\">\n\
         <label for=\"token\">Latchkey token</label>\n\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" spellcheck=\"false\" required>\n\
         <button type=\"submit\">Sign in</button>\n</form>\n",
        csrf_field(csrf),
        escape(next)
    );
    out.push_str(
        "<div class=\"help\">\n<p>Paste a Latchkey token. <code>lk login</code> keeps its token to itself; an administrator prints one with <code>lk token create --user NAME --ttl 8h</code>.</p>\n\
         <p>The page keeps the token in a cookie for this browser session, which only this server reads. Signing out forgets it here; it does not revoke it.</p>\n\
         <p>Without a browser, <code>lk requests --pending</code> lists the requests you may review, and <code>lk approve ID</code> or <code>lk deny ID</code> reviews one.</p>\n</div>\n",
    );
    out
}

/// Renders the page of an error or a refusal: what happened and what to do.
pub fn error(heading: &str, message: &str, request_id: &str, back: Option<&str>) -> String {
    let mut out = String::new();
    // Messages are written to follow a code or a colon; on their own they start a sentence.
    let mut chars = message.chars();
    let message = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "<h1>{}</h1>\n<p class=\"flash error\" role=\"alert\">{}</p>",
        escape(heading),
        escape(&message)
    );
    if let Some(back) = back {
        let _ = writeln!(
            out,
            "<p class=\"back\"><a href=\"{}\">Back</a></p>",
            escape(back)
        );
    } else {
        out.push_str(
            "<p class=\"back\"><a href=\"/approvals\">Back to the approvals page</a></p>\n",
        );
    }
    if !request_id.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"cli\">Request id <code>{}</code>: an administrator finds it with <code>lk audit search --request-id {}</code>.</p>",
            escape(request_id),
            escape(request_id)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::requests::ReviewView;

    fn sample(reason: &str, ticket: Option<&str>) -> RequestView {
        RequestView {
            id: "req_1".into(),
            requester: "User::\"d'a<ve>\"".into(),
            resources: vec!["lk://prod/<db>".into()],
            duration: "1h".into(),
            duration_seconds: 3600,
            reason: reason.into(),
            ticket: ticket.map(str::to_string),
            kind: "review".into(),
            status: "pending".into(),
            approvals: 0,
            approvals_required: 1,
            created_at: "2030-01-01T00:00:00Z".into(),
            expires_at: "2030-01-02T00:00:00Z".into(),
            decided_at: None,
            decided_by: None,
            grant: None,
            reviews: vec![ReviewView {
                reviewer: "User::\"bob\"".into(),
                verdict: "deny".into(),
                comment: Some("</q><script>x()</script>".into()),
                time: "2030-01-01T00:01:00Z".into(),
            }],
            can_review: true,
        }
    }

    #[test]
    fn escape_covers_markup_and_both_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x" + 'y')</script> & more"#),
            "&lt;script&gt;alert(&quot;x&quot; + &#39;y&#39;)&lt;/script&gt; &amp; more"
        );
    }

    #[test]
    fn reason_markup_is_escaped() {
        let reason = "<script>alert(\"pwned\")</script> it's \"urgent\"";
        let view = sample(reason, Some("\" onmouseover=\"x"));
        for html in [
            request_card(&view, Some("tok\"en"), "list"),
            request_detail(&view, "tok\"en"),
        ] {
            assert!(!html.contains("<script>"), "{html}");
            assert!(!html.contains("it's"), "{html}");
            assert!(
                html.contains(
                    "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; it&#39;s &quot;urgent&quot;"
                ),
                "{html}"
            );
            assert!(
                html.contains("User::&quot;d&#39;a&lt;ve&gt;&quot;"),
                "{html}"
            );
            assert!(html.contains("lk://prod/&lt;db&gt;"), "{html}");
            assert!(html.contains("&quot; onmouseover=&quot;x"), "{html}");
            assert!(html.contains("value=\"tok&quot;en\""), "{html}");
        }
        let detail = request_detail(&view, "t");
        assert!(
            detail.contains("&lt;/q&gt;&lt;script&gt;x()&lt;/script&gt;"),
            "{detail}"
        );
    }

    #[test]
    fn only_http_tickets_become_links() {
        assert_eq!(
            ticket("https://tickets.example.com/INC-1?a=1&b=2"),
            r#"<a href="https://tickets.example.com/INC-1?a=1&amp;b=2" rel="noreferrer noopener">https://tickets.example.com/INC-1?a=1&amp;b=2</a>"#
        );
        assert!(ticket("http://tickets.example.com/x").starts_with("<a href="));
        for text in [
            "javascript:alert(1)",
            "data:text/html,<b>x</b>",
            "INC-4211",
            "//evil.example/x",
            "file:///etc/passwd",
        ] {
            let html = ticket(text);
            assert!(!html.contains("<a "), "{text}: {html}");
            assert_eq!(html, escape(text));
        }
    }

    #[test]
    fn review_form_only_for_reviewers() {
        let mut view = sample("r", None);
        assert!(request_card(&view, Some("c"), "list").contains("<form"));
        view.can_review = false;
        let card = request_card(&view, Some("c"), "list");
        assert!(!card.contains("<form"), "{card}");
        let detail = request_detail(&view, "c");
        assert!(!detail.contains("<form"), "{detail}");
        assert!(
            detail.contains("You cannot review this request"),
            "{detail}"
        );
    }
}
