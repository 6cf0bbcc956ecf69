//! Webhook bodies: the generic JSON object and the Slack-compatible message.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use super::{AccessEvent, AccessEventKind};

/// Slack's limits on a header, a section's text and one field, in characters.
const HEADER_MAX: usize = 150;
const SECTION_MAX: usize = 3000;
const FIELD_MAX: usize = 2000;
/// Longest `text` fallback kept; a notification preview shows far less.
const TEXT_MAX: usize = 1000;

/// Builds the link to the approvers' page of request `request_id`:
/// `{public_url}/approvals/requests/{id}`, with the id encoded as one path segment.
pub fn request_link(public_url: Option<&reqwest::Url>, request_id: &str) -> Option<String> {
    let mut url = public_url?.clone();
    {
        let mut segments = url.path_segments_mut().ok()?;
        segments
            .pop_if_empty()
            .extend(["approvals", "requests", request_id]);
    }
    Some(url.into())
}

#[derive(Serialize)]
struct JsonPayload<'a> {
    /// The kind, also in `kind`; receivers may route on either.
    event: &'static str,
    delivery: &'a str,
    #[serde(flatten)]
    access: &'a AccessEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<&'a str>,
}

/// Builds the generic body: every [`AccessEvent`] field, with `event` (the kind),
/// `delivery` (the `x-latchkey-delivery` id) and `link` when a public URL is configured.
pub fn json_payload(event: &AccessEvent, delivery: &str, link: Option<&str>) -> Value {
    serde_json::to_value(JsonPayload {
        event: event.kind.as_str(),
        delivery,
        access: event,
        link,
    })
    .unwrap_or(Value::Null)
}

/// Builds a Slack-compatible message: a short `text` for notifications and `blocks` with
/// the details. Text from the event is escaped, so a reason cannot mention a channel or
/// hide a link.
pub fn slack_payload(event: &AccessEvent, link: Option<&str>) -> Value {
    let requester = escape(&event.requester);
    let resources = escape(&event.resources.join(", "));
    let duration = human_duration(event.duration_secs);
    let by = event
        .actor
        .as_deref()
        .map(|actor| format!(" by {}", escape(actor)))
        .unwrap_or_default();
    let (header, summary) = match event.kind {
        AccessEventKind::Created => (
            "Access request needs approval".to_owned(),
            format!("{requester} requests {duration} of access to {resources}"),
        ),
        AccessEventKind::Approved => (
            "Access request approved".to_owned(),
            format!("The request from {requester} for {resources} was approved{by}"),
        ),
        AccessEventKind::Denied => (
            "Access request denied".to_owned(),
            format!("The request from {requester} for {resources} was denied{by}"),
        ),
        AccessEventKind::Expired => (
            "Access request expired".to_owned(),
            format!("The request from {requester} for {resources} expired without a decision"),
        ),
        AccessEventKind::Revoked => (
            "Access grant revoked".to_owned(),
            format!("The access of {requester} to {resources} was revoked{by}"),
        ),
        AccessEventKind::BreakGlass => (
            ":rotating_light: BREAK-GLASS ACCESS :rotating_light:".to_owned(),
            format!(
                ":rotating_light: *BREAK-GLASS:* {requester} took {duration} of access to {resources} without approval"
            ),
        ),
        AccessEventKind::AutoApproved => (
            "Access request approved automatically".to_owned(),
            format!(
                "The request from {requester} for {resources} was approved by policy, without an approver"
            ),
        ),
    };

    let mut fields = vec![
        field("Requester", &event.requester),
        field("Resources", &event.resources.join("\n")),
        field("Duration", &duration),
    ];
    if let Some(ticket) = &event.ticket {
        fields.push(field("Ticket", ticket));
    }
    if matches!(
        event.kind,
        AccessEventKind::Created | AccessEventKind::Approved | AccessEventKind::Denied
    ) {
        fields.push(field(
            "Approvals",
            &format!("{} of {}", event.approvals, event.approvals_required),
        ));
    }
    if let Some(actor) = &event.actor {
        let label = match event.kind {
            AccessEventKind::Approved => "Approved by",
            AccessEventKind::Denied => "Denied by",
            AccessEventKind::Revoked => "Revoked by",
            _ => "By",
        };
        fields.push(field(label, actor));
    }
    if let Some(grant) = &event.grant_id {
        fields.push(field("Grant", grant));
    }
    fields.push(field("Request", &event.request_id));

    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": clip(&header, HEADER_MAX), "emoji": true}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": clip(&summary, SECTION_MAX)}}),
        json!({"type": "section", "fields": fields}),
    ];
    if event.kind == AccessEventKind::BreakGlass {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text":
            "*No one approved this access.* Check that the emergency is real, and revoke the grant if it is not."}}));
    }
    if !event.reason.is_empty() {
        blocks.push(section("Reason", &event.reason));
    }
    if let Some(comment) = &event.comment {
        blocks.push(section("Comment", comment));
    }
    if let Some(link) = link {
        let label = if event.kind == AccessEventKind::Created {
            "Review the request"
        } else {
            "Open the request"
        };
        let mut button =
            json!({"type": "button", "text": {"type": "plain_text", "text": label}, "url": link});
        if event.kind == AccessEventKind::BreakGlass {
            button["style"] = json!("danger");
        }
        blocks.push(json!({"type": "actions", "elements": [button]}));
    }
    blocks.push(json!({"type": "context", "elements": [
        {"type": "mrkdwn", "text": escape(&format!("{} · {}", event.kind.as_str(), event.time))}
    ]}));

    let mut text = clip(&summary, TEXT_MAX);
    if let Some(link) = link {
        text.push_str(&format!(": {}", escape(link)));
    }
    json!({"text": text, "blocks": blocks})
}

/// `*label*` over the escaped value, within Slack's limit for a field.
fn field(label: &str, value: &str) -> Value {
    let text = format!("*{label}*\n{}", escape(value));
    json!({"type": "mrkdwn", "text": clip(&text, FIELD_MAX)})
}

fn section(label: &str, value: &str) -> Value {
    let text = format!("*{label}*\n{}", escape(value));
    json!({"type": "section", "text": {"type": "mrkdwn", "text": clip(&text, SECTION_MAX)}})
}

/// Escapes the three characters Slack's markup gives meaning to.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

/// Cuts `text` to at most `max` characters, ending with `…` when cut. It never cuts an
/// escape such as `&amp;` in two.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut count = 0;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let unit = match c {
            '&' => rest
                .find(';')
                .filter(|end| *end <= 5)
                .map_or("&", |end| &rest[..=end]),
            _ => &rest[..c.len_utf8()],
        };
        let width = unit.chars().count();
        if count + width > max - 1 {
            break;
        }
        out.push_str(unit);
        count += width;
        rest = &rest[unit.len()..];
    }
    out.push('…');
    out
}

/// `1h`, `1h30m`, `2d`: the syntax of `--ttl` and the config file.
fn human_duration(seconds: u64) -> String {
    latchkey_core::duration::format_duration(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn event(kind: AccessEventKind) -> AccessEvent {
        AccessEvent {
            kind,
            request_id: "req_42".into(),
            requester: "User::\"alice\"".into(),
            resources: vec!["lk://prod/db".into(), "lk://prod/cache".into()],
            duration_secs: 5400,
            reason: "restore <!channel> & fix".into(),
            ticket: Some("INC-7".into()),
            actor: Some("User::\"bob\"".into()),
            comment: Some("ok for an hour".into()),
            grant_id: Some("grt_9".into()),
            approvals: 1,
            approvals_required: 2,
            time: "2026-03-01T10:00:00.000000Z".into(),
        }
    }

    #[test]
    fn links_encode_id_as_segment() {
        let base = reqwest::Url::parse("https://lk.example.com/base/").unwrap();
        assert_eq!(
            request_link(Some(&base), "req_1").unwrap(),
            "https://lk.example.com/base/approvals/requests/req_1"
        );
        assert_eq!(
            request_link(Some(&base), "a/b?c").unwrap(),
            "https://lk.example.com/base/approvals/requests/a%2Fb%3Fc"
        );
        let root = reqwest::Url::parse("https://lk.example.com").unwrap();
        assert_eq!(
            request_link(Some(&root), "req_1").unwrap(),
            "https://lk.example.com/approvals/requests/req_1"
        );
        assert_eq!(request_link(None, "req_1"), None);
    }

    #[test]
    fn json_carries_every_field() {
        let body = json_payload(
            &event(AccessEventKind::Approved),
            "dlv",
            Some("https://x/approvals/requests/req_42"),
        );
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        for key in [
            "event",
            "delivery",
            "link",
            "kind",
            "request_id",
            "requester",
            "resources",
            "duration_secs",
            "reason",
            "ticket",
            "actor",
            "comment",
            "grant_id",
            "approvals",
            "approvals_required",
            "time",
        ] {
            assert!(keys.contains(&key), "{key} in {body}");
        }
        assert_eq!(keys.len(), 16, "{body}");
        assert_eq!(body["event"], "request.approved");
        assert_eq!(body["kind"], "request.approved");
        assert_eq!(body["duration_secs"], 5400);
        let without_link = json_payload(&event(AccessEventKind::Created), "dlv", None);
        assert!(without_link.get("link").is_none());
    }

    #[test]
    fn slack_escapes_event_text() {
        let body = slack_payload(&event(AccessEventKind::Created), None);
        let text = body.to_string();
        assert!(!text.contains("<!channel>"), "{text}");
        assert!(
            text.contains("restore &lt;!channel&gt; &amp; fix"),
            "{text}"
        );
        assert!(text.contains("1h30m"), "{text}");
        assert!(
            body["blocks"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["type"] != "actions")
        );
    }

    #[test]
    fn slack_break_glass_is_loud() {
        let body = slack_payload(
            &event(AccessEventKind::BreakGlass),
            Some("https://x/approvals/requests/req_42"),
        );
        assert!(body["text"].as_str().unwrap().contains("BREAK-GLASS"));
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert!(
            blocks[0]["text"]["text"]
                .as_str()
                .unwrap()
                .contains("BREAK-GLASS")
        );
        let actions = blocks.iter().find(|b| b["type"] == "actions").unwrap();
        assert_eq!(actions["elements"][0]["style"], "danger");
        assert_eq!(
            actions["elements"][0]["url"],
            "https://x/approvals/requests/req_42"
        );
    }

    #[test]
    fn clip_keeps_escapes_whole() {
        assert_eq!(clip("short", 10), "short");
        let escaped = escape(&"&".repeat(10));
        let clipped = clip(&escaped, 12);
        assert_eq!(clipped, "&amp;&amp;…");
        let long = "é".repeat(200);
        assert_eq!(clip(&long, 150).chars().count(), 150);
    }
}
