//! The `attributes` and `excludedAttributes` query parameters (RFC 7644 section 3.9).

use serde_json::{Map, Value};

use super::path::AttrPath;
use super::{ScimError, find_key};

/// Attributes returned whatever the request asks (RFC 7643 section 3.1: `returned` is
/// `always`).
const ALWAYS_RETURNED: &[&str] = &["id", "schemas"];

/// Parses a comma-separated attribute list such as `userName,name.givenName`.
pub fn parse_attribute_list(text: &str) -> Result<Vec<AttrPath>, ScimError> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(AttrPath::parse)
        .collect()
}

/// Keeps only `attributes` (when not empty) and drops `excluded`, in place. `id` and
/// `schemas` are always kept.
pub fn project(resource: &mut Map<String, Value>, attributes: &[AttrPath], excluded: &[AttrPath]) {
    if !attributes.is_empty() {
        let original = std::mem::take(resource);
        for (key, value) in original {
            if ALWAYS_RETURNED.iter().any(|a| key.eq_ignore_ascii_case(a)) {
                resource.insert(key, value);
                continue;
            }
            if let Some(kept) = keep(&key, value, attributes) {
                resource.insert(key, kept);
            }
        }
    }
    for path in excluded {
        if path.sub.is_none() && ALWAYS_RETURNED.iter().any(|a| path.is(a)) {
            continue;
        }
        remove(resource, path);
    }
}

fn same_schema(path: &AttrPath, key: &str) -> bool {
    path.schema
        .as_deref()
        .is_some_and(|schema| schema.eq_ignore_ascii_case(key))
}

/// Returns the part of top-level `value` at `key` that some requested path names.
fn keep(key: &str, value: Value, attributes: &[AttrPath]) -> Option<Value> {
    // An extension object keeps the attributes named with its URN, or all of them when
    // the URN itself is requested.
    if key.to_ascii_lowercase().starts_with("urn:") {
        if attributes
            .iter()
            .any(|p| p.to_string().eq_ignore_ascii_case(key))
        {
            return Some(value);
        }
        let wanted: Vec<AttrPath> = attributes
            .iter()
            .filter(|p| same_schema(p, key))
            .map(|p| AttrPath {
                schema: None,
                attr: p.attr.clone(),
                sub: p.sub.clone(),
            })
            .collect();
        if wanted.is_empty() {
            return None;
        }
        let Value::Object(mut inner) = value else {
            return None;
        };
        project(&mut inner, &wanted, &[]);
        inner.retain(|k, _| wanted.iter().any(|p| p.attr.eq_ignore_ascii_case(k)));
        return (!inner.is_empty()).then_some(Value::Object(inner));
    }
    let matching: Vec<&AttrPath> = attributes
        .iter()
        .filter(|p| {
            (p.schema.is_none() || !p.schema.as_deref().is_some_and(is_extension))
                && p.attr.eq_ignore_ascii_case(key)
        })
        .collect();
    if matching.is_empty() {
        return None;
    }
    if matching.iter().any(|p| p.sub.is_none()) {
        return Some(value);
    }
    let subs: Vec<&str> = matching.iter().filter_map(|p| p.sub.as_deref()).collect();
    let filter_object = |object: Map<String, Value>| -> Map<String, Value> {
        object
            .into_iter()
            .filter(|(k, _)| subs.iter().any(|s| s.eq_ignore_ascii_case(k)))
            .collect()
    };
    match value {
        Value::Object(object) => Some(Value::Object(filter_object(object))),
        Value::Array(items) => Some(Value::Array(
            items
                .into_iter()
                .map(|item| match item {
                    Value::Object(object) => Value::Object(filter_object(object)),
                    other => other,
                })
                .collect(),
        )),
        other => Some(other),
    }
}

fn is_extension(schema: &str) -> bool {
    !schema
        .to_ascii_lowercase()
        .starts_with("urn:ietf:params:scim:schemas:core:")
}

fn remove(resource: &mut Map<String, Value>, path: &AttrPath) {
    let target = match path.schema.as_deref() {
        Some(schema) if is_extension(schema) => {
            let Some(key) = find_key(resource, schema).cloned() else {
                return;
            };
            match resource.get_mut(&key) {
                Some(Value::Object(inner)) => inner,
                _ => return,
            }
        }
        _ => resource,
    };
    let Some(key) = find_key(target, &path.attr).cloned() else {
        return;
    };
    let Some(sub) = &path.sub else {
        target.remove(&key);
        return;
    };
    match target.get_mut(&key) {
        Some(Value::Object(object)) => {
            if let Some(k) = find_key(object, sub).cloned() {
                object.remove(&k);
            }
        }
        Some(Value::Array(items)) => {
            for item in items {
                if let Value::Object(object) = item
                    && let Some(k) = find_key(object, sub).cloned()
                {
                    object.remove(&k);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user() -> Map<String, Value> {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": "1",
            "userName": "bjensen",
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "emails": [{"value": "a@x", "type": "work"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Tour", "division": "X"}
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    fn keys(resource: &Map<String, Value>) -> Vec<&str> {
        resource.keys().map(String::as_str).collect()
    }

    #[test]
    fn attributes_keep_named_and_always_returned() {
        let mut resource = user();
        project(
            &mut resource,
            &parse_attribute_list("userName,name.givenName").unwrap(),
            &[],
        );
        let mut kept = keys(&resource);
        kept.sort_unstable();
        assert_eq!(kept, ["id", "name", "schemas", "userName"]);
        assert_eq!(resource["name"], json!({"givenName": "Barbara"}));
    }

    #[test]
    fn excluded_attributes_drop_named() {
        let mut resource = user();
        project(
            &mut resource,
            &[],
            &parse_attribute_list("emails,name.familyName,id").unwrap(),
        );
        assert!(!resource.contains_key("emails"));
        assert_eq!(resource["name"], json!({"givenName": "Barbara"}));
        assert!(resource.contains_key("id"), "id is always returned");
    }

    #[test]
    fn extension_attribute_by_urn() {
        let mut resource = user();
        let urn = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
        project(
            &mut resource,
            &parse_attribute_list(&format!("{urn}:department")).unwrap(),
            &[],
        );
        assert_eq!(resource[urn], json!({"department": "Tour"}));
        assert!(!resource.contains_key("userName"));
    }

    #[test]
    fn invalid_attribute_list() {
        assert_eq!(
            parse_attribute_list("user name").unwrap_err().scim_type(),
            "invalidPath"
        );
    }
}
