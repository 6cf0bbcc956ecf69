//! PATCH operations (RFC 7644 section 3.5.2) applied to a JSON resource.
//!
//! Accepts the forms identity providers send besides the RFC's own: an `op` in any letter
//! case (`Replace`, `REPLACE`), a no-path `replace` whose value keys are attribute paths
//! (`{"name.givenName": "Ann"}`), and a `remove` of a multi-valued attribute that lists the
//! values to drop (`{"op": "remove", "path": "members", "value": [{"value": "ID"}]}`).

use serde_json::{Map, Value};

use super::path::{AttrPath, PatchPath};
use super::{ScimError, find_key};

/// Schema URN of a PATCH request body.
pub const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// Maximum operations in one PATCH request.
pub const MAX_OPERATIONS: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchOp {
    Add,
    Remove,
    Replace,
}

/// One parsed operation.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchOperation {
    pub op: PatchOp,
    pub path: Option<PatchPath>,
    pub value: Option<Value>,
}

impl PatchOperation {
    /// Parses the `Operations` of a PATCH request body.
    pub fn parse_body(body: &Value) -> Result<Vec<PatchOperation>, ScimError> {
        let object = body.as_object().ok_or_else(|| {
            ScimError::InvalidSyntax("the PATCH body is not a JSON object".into())
        })?;
        let schemas_ok = find_key(object, "schemas")
            .and_then(|k| object.get(k))
            .and_then(Value::as_array)
            .is_some_and(|list| list.iter().any(|s| s.as_str() == Some(PATCH_SCHEMA)));
        if !schemas_ok {
            return Err(ScimError::InvalidSyntax(format!(
                "`schemas` must contain `{PATCH_SCHEMA}`"
            )));
        }
        let operations = find_key(object, "Operations")
            .and_then(|k| object.get(k))
            .and_then(Value::as_array)
            .ok_or_else(|| {
                ScimError::InvalidSyntax("`Operations` is missing or not an array".into())
            })?;
        if operations.is_empty() {
            return Err(ScimError::InvalidSyntax("`Operations` is empty".into()));
        }
        if operations.len() > MAX_OPERATIONS {
            return Err(ScimError::InvalidSyntax(format!(
                "{} operations in one request; the maximum is {MAX_OPERATIONS}",
                operations.len()
            )));
        }
        operations.iter().map(PatchOperation::parse).collect()
    }

    /// Parses one operation object.
    pub fn parse(operation: &Value) -> Result<PatchOperation, ScimError> {
        let object = operation.as_object().ok_or_else(|| {
            ScimError::InvalidSyntax("each PATCH operation must be a JSON object".into())
        })?;
        let field = |name: &str| find_key(object, name).and_then(|k| object.get(k));
        let op_text = field("op").and_then(Value::as_str).ok_or_else(|| {
            ScimError::InvalidSyntax("a PATCH operation is missing its `op`".into())
        })?;
        let op = match op_text.to_ascii_lowercase().as_str() {
            "add" => PatchOp::Add,
            "remove" => PatchOp::Remove,
            "replace" => PatchOp::Replace,
            _ => {
                return Err(ScimError::InvalidSyntax(format!(
                    "unsupported PATCH op `{op_text}`: use add, remove or replace"
                )));
            }
        };
        let path = match field("path") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) if text.trim().is_empty() => None,
            Some(Value::String(text)) => Some(PatchPath::parse(text)?),
            Some(_) => {
                return Err(ScimError::InvalidPath("`path` must be a string".into()));
            }
        };
        let value = field("value").cloned();
        match (op, &path, &value) {
            (PatchOp::Remove, None, _) => Err(ScimError::NoTarget(
                "`remove` needs a `path` naming what to remove".into(),
            )),
            (PatchOp::Add | PatchOp::Replace, _, None) => Err(ScimError::InvalidSyntax(format!(
                "`{op_text}` needs a `value`"
            ))),
            (PatchOp::Add | PatchOp::Replace, None, Some(v)) if !v.is_object() => {
                Err(ScimError::InvalidSyntax(format!(
                    "`{op_text}` without a `path` needs an object `value` of attributes"
                )))
            }
            _ => Ok(PatchOperation { op, path, value }),
        }
    }
}

/// Applies `operations` in order. `read_only` lists top-level attributes the client may not
/// change (compared ignoring case); `id`, `meta` and `schemas` always are.
pub fn apply_patch(
    resource: &mut Map<String, Value>,
    operations: &[PatchOperation],
    read_only: &[&str],
) -> Result<(), ScimError> {
    for operation in operations {
        apply_one(resource, operation, read_only)?;
    }
    Ok(())
}

fn check_writable(path: &AttrPath, read_only: &[&str]) -> Result<(), ScimError> {
    let fixed = ["id", "meta", "schemas"];
    if path.schema.is_none() || is_core_schema(path.schema.as_deref()) {
        for name in fixed.iter().chain(read_only) {
            if path.attr.eq_ignore_ascii_case(name) {
                return Err(ScimError::Mutability(format!(
                    "`{}` is read-only",
                    path.attr
                )));
            }
        }
    }
    Ok(())
}

fn is_core_schema(schema: Option<&str>) -> bool {
    schema.is_some_and(|s| {
        s.to_ascii_lowercase()
            .starts_with("urn:ietf:params:scim:schemas:core:")
    })
}

/// The object an attribute lives in: the resource, or the extension object named by the
/// path's schema URN (created when `create` is set).
fn container<'a>(
    resource: &'a mut Map<String, Value>,
    path: &AttrPath,
    create: bool,
) -> Option<&'a mut Map<String, Value>> {
    match &path.schema {
        Some(schema) if !is_core_schema(Some(schema)) => {
            let key = match find_key(resource, schema) {
                Some(key) => key.clone(),
                None if create => {
                    resource.insert(schema.clone(), Value::Object(Map::new()));
                    schema.clone()
                }
                None => return None,
            };
            resource.get_mut(&key).and_then(Value::as_object_mut)
        }
        _ => Some(resource),
    }
}

/// Returns the key to use for `name` in `object`: the existing spelling, or `name`.
fn key_for(object: &Map<String, Value>, name: &str) -> String {
    find_key(object, name)
        .cloned()
        .unwrap_or_else(|| name.to_string())
}

fn apply_one(
    resource: &mut Map<String, Value>,
    operation: &PatchOperation,
    read_only: &[&str],
) -> Result<(), ScimError> {
    let Some(path) = &operation.path else {
        // Validated in `parse`: add and replace without a path carry an object value.
        let Some(Value::Object(values)) = &operation.value else {
            return Err(ScimError::InvalidSyntax(
                "expected an object `value`".into(),
            ));
        };
        for (key, value) in values {
            if key.to_ascii_lowercase().starts_with("urn:") && value.is_object() {
                // An extension object: apply each of its attributes.
                if let Value::Object(inner) = value {
                    for (sub_key, sub_value) in inner {
                        let path = AttrPath::parse(&format!("{key}:{sub_key}"))?;
                        set_at(resource, &path, sub_value.clone(), operation.op, read_only)?;
                    }
                }
                continue;
            }
            let path = AttrPath::parse(key)?;
            set_at(resource, &path, value.clone(), operation.op, read_only)?;
        }
        return Ok(());
    };
    check_writable(&path.attr, read_only)?;

    match (&path.filter, operation.op) {
        (None, PatchOp::Remove) => remove_at(resource, &path.attr, operation.value.as_ref()),
        (None, op) => {
            let value = operation.value.clone().unwrap_or(Value::Null);
            set_at(resource, &path.attr, value, op, read_only)
        }
        (Some(filter), op) => {
            let Some(object) = container(resource, &path.attr, op == PatchOp::Add) else {
                return no_match(op, path);
            };
            let key = key_for(object, &path.attr.attr);
            let Some(Value::Array(items)) = object.get_mut(&key) else {
                return no_match(op, path);
            };
            if op == PatchOp::Remove && path.sub_after_filter.is_none() {
                items.retain(|item| !filter.matches(item));
                if items.is_empty() {
                    object.remove(&key);
                }
                // Removing what is not there is a success with nothing to do.
                return Ok(());
            }
            let mut matched = false;
            for item in items.iter_mut().filter(|item| filter.matches(item)) {
                matched = true;
                let Value::Object(element) = item else {
                    continue;
                };
                match (&path.sub_after_filter, op) {
                    (Some(sub), PatchOp::Remove) => {
                        let sub_key = key_for(element, sub);
                        element.remove(&sub_key);
                    }
                    (Some(sub), _) => {
                        let sub_key = key_for(element, sub);
                        element.insert(sub_key, operation.value.clone().unwrap_or(Value::Null));
                    }
                    (None, _) => match &operation.value {
                        Some(Value::Object(values)) => {
                            for (k, v) in values {
                                let k = key_for(element, k);
                                element.insert(k, v.clone());
                            }
                        }
                        _ => {
                            return Err(ScimError::InvalidValue(format!(
                                "`{}` with a filtered path and no sub-attribute needs an object `value`",
                                op_name(op)
                            )));
                        }
                    },
                }
            }
            if !matched && op != PatchOp::Remove {
                return no_match(op, path);
            }
            Ok(())
        }
    }
}

fn op_name(op: PatchOp) -> &'static str {
    match op {
        PatchOp::Add => "add",
        PatchOp::Remove => "remove",
        PatchOp::Replace => "replace",
    }
}

fn no_match(op: PatchOp, path: &PatchPath) -> Result<(), ScimError> {
    if op == PatchOp::Remove {
        return Ok(());
    }
    Err(ScimError::NoTarget(format!(
        "the filter of `{}` matched no value",
        path.attr
    )))
}

/// Adds or replaces the value at an unfiltered path.
fn set_at(
    resource: &mut Map<String, Value>,
    path: &AttrPath,
    value: Value,
    op: PatchOp,
    read_only: &[&str],
) -> Result<(), ScimError> {
    check_writable(path, read_only)?;
    let Some(object) = container(resource, path, true) else {
        return Err(ScimError::NoTarget(format!("`{path}` does not exist")));
    };
    let key = key_for(object, &path.attr);
    if let Some(sub) = &path.sub {
        let entry = object
            .entry(key)
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(complex) = entry else {
            return Err(ScimError::InvalidPath(format!(
                "`{path}`: `{}` is not a complex attribute",
                path.attr
            )));
        };
        let sub_key = key_for(complex, sub);
        complex.insert(sub_key, value);
        return Ok(());
    }
    if value.is_null() {
        object.remove(&key);
        return Ok(());
    }
    match (op, object.get_mut(&key), value) {
        (PatchOp::Add, Some(Value::Array(existing)), Value::Array(new)) => {
            for item in new {
                if !existing.contains(&item) {
                    existing.push(item);
                }
            }
        }
        (PatchOp::Add, Some(Value::Array(existing)), single) => {
            if !existing.contains(&single) {
                existing.push(single);
            }
        }
        (_, Some(Value::Object(existing)), Value::Object(new)) => {
            for (k, v) in new {
                let k = key_for(existing, &k);
                existing.insert(k, v);
            }
        }
        (_, _, value) => {
            object.insert(key, value);
        }
    }
    Ok(())
}

/// Removes the value at an unfiltered path, or only the listed values of a multi-valued
/// attribute when `value` lists them.
fn remove_at(
    resource: &mut Map<String, Value>,
    path: &AttrPath,
    value: Option<&Value>,
) -> Result<(), ScimError> {
    let Some(object) = container(resource, path, false) else {
        return Ok(());
    };
    let Some(key) = find_key(object, &path.attr).cloned() else {
        return Ok(());
    };
    if let Some(sub) = &path.sub {
        match object.get_mut(&key) {
            Some(Value::Object(complex)) => {
                if let Some(sub_key) = find_key(complex, sub).cloned() {
                    complex.remove(&sub_key);
                }
            }
            Some(Value::Array(items)) => {
                for item in items.iter_mut() {
                    if let Value::Object(element) = item
                        && let Some(sub_key) = find_key(element, sub).cloned()
                    {
                        element.remove(&sub_key);
                    }
                }
            }
            _ => {}
        }
        return Ok(());
    }
    let listed = match value {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => Some(list.iter().collect::<Vec<_>>()),
        Some(single) => Some(vec![single]),
    };
    let Some(listed) = listed else {
        object.remove(&key);
        return Ok(());
    };
    let Some(Value::Array(items)) = object.get_mut(&key) else {
        return Err(ScimError::InvalidValue(format!(
            "`remove` with a `value` applies to a multi-valued attribute, and `{path}` is not one"
        )));
    };
    let identity = |v: &Value| -> Value {
        match v {
            Value::Object(o) => find_key(o, "value")
                .and_then(|k| o.get(k))
                .cloned()
                .unwrap_or_else(|| v.clone()),
            other => other.clone(),
        }
    };
    let drop: Vec<Value> = listed.into_iter().map(identity).collect();
    items.retain(|item| !drop.contains(&identity(item)));
    if items.is_empty() {
        object.remove(&key);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn group() -> Map<String, Value> {
        json!({
            "displayName": "ops",
            "members": [{"value": "u1"}, {"value": "u2"}, {"value": "u3"}]
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    fn body(operations: Value) -> Value {
        json!({"schemas": [PATCH_SCHEMA], "Operations": operations})
    }

    fn patch(resource: &mut Map<String, Value>, operations: Value) -> Result<(), ScimError> {
        let ops = PatchOperation::parse_body(&body(operations))?;
        apply_patch(resource, &ops, &["groups"])
    }

    fn member_ids(resource: &Map<String, Value>) -> Vec<String> {
        resource
            .get("members")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|m| m["value"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn op_in_any_letter_case() {
        for op in ["replace", "Replace", "REPLACE"] {
            let mut user = json!({"userName": "a", "active": true})
                .as_object()
                .cloned()
                .unwrap();
            patch(
                &mut user,
                json!([{"op": op, "path": "active", "value": false}]),
            )
            .unwrap();
            assert_eq!(user["active"], json!(false), "op {op}");
        }
    }

    #[test]
    fn replace_without_path() {
        let mut user = json!({"userName": "a", "active": true})
            .as_object()
            .cloned()
            .unwrap();
        patch(
            &mut user,
            json!([{"op": "replace", "value": {"active": false}}]),
        )
        .unwrap();
        assert_eq!(user["active"], json!(false));
    }

    #[test]
    fn replace_without_path_dotted_keys() {
        let mut user = json!({"userName": "a", "name": {"familyName": "B"}})
            .as_object()
            .cloned()
            .unwrap();
        patch(
            &mut user,
            json!([{"op": "Replace", "value": {"name.givenName": "Ann"}}]),
        )
        .unwrap();
        assert_eq!(user["name"], json!({"familyName": "B", "givenName": "Ann"}));
    }

    #[test]
    fn remove_member_by_filter() {
        let mut g = group();
        patch(
            &mut g,
            json!([{"op": "remove", "path": "members[value eq \"u2\"]"}]),
        )
        .unwrap();
        assert_eq!(member_ids(&g), ["u1", "u3"]);
    }

    #[test]
    fn remove_members_by_value_list() {
        let mut g = group();
        patch(
            &mut g,
            json!([{"op": "Remove", "path": "members", "value": [{"value": "u1"}, {"value": "u3"}]}]),
        )
        .unwrap();
        assert_eq!(member_ids(&g), ["u2"]);
    }

    #[test]
    fn remove_non_member_is_noop() {
        let mut g = group();
        patch(
            &mut g,
            json!([{"op": "remove", "path": "members[value eq \"nobody\"]"}]),
        )
        .unwrap();
        patch(
            &mut g,
            json!([{"op": "remove", "path": "members", "value": [{"value": "nobody"}]}]),
        )
        .unwrap();
        assert_eq!(member_ids(&g), ["u1", "u2", "u3"]);
    }

    #[test]
    fn add_members_skips_duplicates() {
        let mut g = group();
        patch(
            &mut g,
            json!([{"op": "add", "path": "members", "value": [{"value": "u3"}, {"value": "u4"}]}]),
        )
        .unwrap();
        assert_eq!(member_ids(&g), ["u1", "u2", "u3", "u4"]);
    }

    #[test]
    fn replace_filtered_sub_attribute() {
        let mut user =
            json!({"emails": [{"type": "work", "value": "a@x"}, {"type": "home", "value": "b@x"}]})
                .as_object()
                .cloned()
                .unwrap();
        patch(
            &mut user,
            json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "c@x"}]),
        )
        .unwrap();
        assert_eq!(user["emails"][0]["value"], json!("c@x"));
        assert_eq!(user["emails"][1]["value"], json!("b@x"));
    }

    #[test]
    fn replace_filtered_without_match_is_no_target() {
        let mut user = json!({"emails": [{"type": "work", "value": "a@x"}]})
            .as_object()
            .cloned()
            .unwrap();
        let error = patch(
            &mut user,
            json!([{"op": "replace", "path": "emails[type eq \"home\"].value", "value": "c"}]),
        )
        .unwrap_err();
        assert_eq!(error.scim_type(), "noTarget");
    }

    #[test]
    fn unsupported_op_is_invalid_syntax() {
        let mut g = group();
        let error = patch(&mut g, json!([{"op": "move", "path": "members"}])).unwrap_err();
        assert_eq!(error.scim_type(), "invalidSyntax");
    }

    #[test]
    fn remove_without_path_is_no_target() {
        let mut g = group();
        let error = patch(&mut g, json!([{"op": "remove"}])).unwrap_err();
        assert_eq!(error.scim_type(), "noTarget");
    }

    #[test]
    fn read_only_attributes_are_refused() {
        let mut user = json!({"userName": "a"}).as_object().cloned().unwrap();
        for path in ["id", "meta", "groups"] {
            let error = patch(
                &mut user,
                json!([{"op": "add", "path": path, "value": "x"}]),
            )
            .unwrap_err();
            assert_eq!(error.scim_type(), "mutability", "{path}");
        }
    }

    #[test]
    fn extension_attribute_by_urn() {
        let urn = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
        let mut user = json!({"userName": "a"}).as_object().cloned().unwrap();
        patch(
            &mut user,
            json!([{"op": "add", "path": format!("{urn}:department"), "value": "Ops"}]),
        )
        .unwrap();
        assert_eq!(user[urn]["department"], json!("Ops"));
        patch(
            &mut user,
            json!([{"op": "replace", "value": {urn: {"department": "Dev"}}}]),
        )
        .unwrap();
        assert_eq!(user[urn]["department"], json!("Dev"));
    }

    #[test]
    fn missing_schema_is_invalid_syntax() {
        let error = PatchOperation::parse_body(&json!({"Operations": []})).unwrap_err();
        assert_eq!(error.scim_type(), "invalidSyntax");
    }

    proptest! {
        #[test]
        fn removing_listed_members_keeps_the_rest(
            members in prop::collection::btree_set("[a-z]{1,4}", 0..8),
            remove in prop::collection::btree_set("[a-z]{1,4}", 0..8),
        ) {
            let mut g = json!({"members": members.iter().map(|m| json!({"value": m})).collect::<Vec<_>>()})
                .as_object().cloned().unwrap();
            let list: Vec<Value> = remove.iter().map(|m| json!({"value": m})).collect();
            patch(&mut g, json!([{"op": "remove", "path": "members", "value": list}])).unwrap();
            let expected: Vec<String> = members.difference(&remove).cloned().collect();
            prop_assert_eq!(member_ids(&g), expected);
        }

        #[test]
        fn patch_parse_never_panics(path in "\\PC{0,40}", op in "[a-zA-Z]{0,8}") {
            let _ = PatchOperation::parse(&json!({"op": op, "path": path, "value": "x"}));
        }
    }
}
