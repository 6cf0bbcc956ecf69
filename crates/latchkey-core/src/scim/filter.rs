//! The SCIM filter language (RFC 7644 section 3.4.2.2): parse a filter and evaluate it
//! against a JSON resource.
//!
//! Precedence, from tightest: grouping `( )` and `not ( )`, then `and`, then `or`.
//! Operators and the literals `true`, `false` and `null` are case-insensitive.

use std::cmp::Ordering;
use std::fmt;

use serde_json::Value;

use super::path::AttrPath;
use super::{ScimError, find_key};

/// Maximum nesting of parentheses and value filters, so a hostile filter cannot exhaust
/// the stack.
const MAX_DEPTH: usize = 32;

/// Maximum filter length in bytes.
pub const MAX_FILTER_LEN: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    fn parse(word: &str) -> Option<CompareOp> {
        Some(match word.to_ascii_lowercase().as_str() {
            "eq" => CompareOp::Eq,
            "ne" => CompareOp::Ne,
            "co" => CompareOp::Co,
            "sw" => CompareOp::Sw,
            "ew" => CompareOp::Ew,
            "gt" => CompareOp::Gt,
            "ge" => CompareOp::Ge,
            "lt" => CompareOp::Lt,
            "le" => CompareOp::Le,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Co => "co",
            CompareOp::Sw => "sw",
            CompareOp::Ew => "ew",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
        }
    }

    fn is_ordering(self) -> bool {
        matches!(
            self,
            CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le
        )
    }
}

/// A parsed filter.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// `attr pr`
    Present(AttrPath),
    /// `attr op value`, where value is a string, number, boolean or null.
    Compare(AttrPath, CompareOp, Value),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    /// `attr[filter]`: some element of the multi-valued `attr` matches `filter`.
    ValuePath(AttrPath, Box<Filter>),
}

impl Filter {
    /// Parses a filter such as `userName eq "bjensen" and not (emails co "@example.org")`.
    pub fn parse(text: &str) -> Result<Filter, ScimError> {
        if text.len() > MAX_FILTER_LEN {
            return Err(ScimError::InvalidFilter(format!(
                "the filter is {} bytes long; the maximum is {MAX_FILTER_LEN}",
                text.len()
            )));
        }
        let tokens = tokenize(text)?;
        parse_filter_tokens(&tokens)
    }

    /// Returns true when `resource` matches.
    pub fn matches(&self, resource: &Value) -> bool {
        match self {
            Filter::Present(path) => values_at(resource, path).iter().any(|v| is_present(v)),
            Filter::Compare(path, op, expected) => {
                let exact = is_case_exact(path);
                let found = values_at(resource, path);
                if *op == CompareOp::Ne {
                    return !found
                        .iter()
                        .any(|v| compare(v, CompareOp::Eq, expected, exact));
                }
                found.iter().any(|v| compare(v, *op, expected, exact))
            }
            Filter::And(a, b) => a.matches(resource) && b.matches(resource),
            Filter::Or(a, b) => a.matches(resource) || b.matches(resource),
            Filter::Not(inner) => !inner.matches(resource),
            Filter::ValuePath(path, inner) => elements_at(resource, path)
                .iter()
                .any(|element| inner.matches(element)),
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Present(path) => write!(f, "{path} pr"),
            Filter::Compare(path, op, value) => write!(f, "{path} {} {value}", op.as_str()),
            Filter::And(a, b) => write!(f, "({a} and {b})"),
            Filter::Or(a, b) => write!(f, "({a} or {b})"),
            Filter::Not(inner) => write!(f, "not ({inner})"),
            Filter::ValuePath(path, inner) => write!(f, "{path}[{inner}]"),
        }
    }
}

/// Attributes whose values compare case-sensitively (RFC 7643 sections 3.1 and 8.7.1).
fn is_case_exact(path: &AttrPath) -> bool {
    path.is("id")
        || path.is("externalId")
        || (path.attr.eq_ignore_ascii_case("meta") && path.sub.as_deref() == Some("version"))
}

fn is_present(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// The object a path starts from: the resource itself, or the extension object named by
/// the path's schema URN.
fn base_of<'a>(resource: &'a Value, path: &AttrPath) -> Option<&'a Value> {
    let object = resource.as_object()?;
    match &path.schema {
        Some(schema) => match find_key(object, schema) {
            Some(key) => object.get(key),
            // A core schema URN qualifies attributes at the top level.
            None => Some(resource),
        },
        None => Some(resource),
    }
}

/// The values a path names. A multi-valued attribute contributes each element; a complex
/// element without a sub-attribute contributes its `value`.
pub(crate) fn values_at<'a>(resource: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    let Some(base) = base_of(resource, path).and_then(Value::as_object) else {
        return Vec::new();
    };
    let Some(value) = find_key(base, &path.attr).and_then(|k| base.get(k)) else {
        return Vec::new();
    };
    let elements: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut out = Vec::new();
    for element in elements {
        match (&path.sub, element) {
            (Some(sub), Value::Object(object)) => {
                if let Some(v) = find_key(object, sub).and_then(|k| object.get(k)) {
                    out.push(v);
                }
            }
            (Some(_), _) => {}
            (None, Value::Object(object)) if value.is_array() => {
                if let Some(v) = find_key(object, "value").and_then(|k| object.get(k)) {
                    out.push(v);
                }
            }
            (None, other) => out.push(other),
        }
    }
    out
}

/// The elements of a multi-valued attribute (or the single complex value).
fn elements_at<'a>(resource: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    let Some(base) = base_of(resource, path).and_then(Value::as_object) else {
        return Vec::new();
    };
    match find_key(base, &path.attr).and_then(|k| base.get(k)) {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(other @ Value::Object(_)) => vec![other],
        _ => Vec::new(),
    }
}

fn compare(actual: &Value, op: CompareOp, expected: &Value, case_exact: bool) -> bool {
    match (actual, expected) {
        (Value::String(a), Value::String(e)) => compare_strings(a, op, e, case_exact),
        (Value::Number(a), Value::Number(e)) => {
            let (Some(a), Some(e)) = (a.as_f64(), e.as_f64()) else {
                return false;
            };
            ordering_matches(a.partial_cmp(&e), op)
        }
        (Value::Bool(a), Value::Bool(e)) => op == CompareOp::Eq && a == e,
        // Entra ID stores booleans it sent as strings; compare them as booleans.
        (Value::String(_), Value::Bool(e)) => {
            op == CompareOp::Eq && super::lenient_bool(actual) == Some(*e)
        }
        (Value::Null, Value::Null) => op == CompareOp::Eq,
        _ => false,
    }
}

fn compare_strings(actual: &str, op: CompareOp, expected: &str, case_exact: bool) -> bool {
    let (a, e) = if case_exact {
        (actual.to_string(), expected.to_string())
    } else {
        (actual.to_lowercase(), expected.to_lowercase())
    };
    match op {
        CompareOp::Eq => a == e,
        CompareOp::Ne => a != e,
        CompareOp::Co => a.contains(&e),
        CompareOp::Sw => a.starts_with(&e),
        CompareOp::Ew => a.ends_with(&e),
        _ => {
            // Timestamps compare as instants, so `2024-01-01T00:00:00+01:00` orders before
            // `2024-01-01T00:00:00Z`; other strings compare lexically.
            let instants = (
                chrono::DateTime::parse_from_rfc3339(actual),
                chrono::DateTime::parse_from_rfc3339(expected),
            );
            let ordering = match instants {
                (Ok(a), Ok(e)) => a.cmp(&e),
                _ => a.cmp(&e),
            };
            ordering_matches(Some(ordering), op)
        }
    }
}

fn ordering_matches(ordering: Option<Ordering>, op: CompareOp) -> bool {
    let Some(ordering) = ordering else {
        return false;
    };
    match op {
        CompareOp::Eq => ordering == Ordering::Equal,
        CompareOp::Ne => ordering != Ordering::Equal,
        CompareOp::Gt => ordering == Ordering::Greater,
        CompareOp::Ge => ordering != Ordering::Less,
        CompareOp::Lt => ordering == Ordering::Less,
        CompareOp::Le => ordering != Ordering::Greater,
        // Substring operators on numbers are meaningless; nothing matches.
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => false,
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Token {
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    /// An attribute path, operator, keyword or number.
    Word(String),
    Str(String),
}

/// Splits filter text into tokens. Strings are JSON strings, escapes included.
pub(crate) fn tokenize(text: &str) -> Result<Vec<Token>, ScimError> {
    let mut tokens = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            b')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            b'[' => {
                tokens.push(Token::OpenBracket);
                i += 1;
            }
            b']' => {
                tokens.push(Token::CloseBracket);
                i += 1;
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if i >= bytes.len() {
                    return Err(ScimError::InvalidFilter(
                        "a string is missing its closing `\"`".into(),
                    ));
                }
                i += 1;
                let literal = &text[start..i];
                let value: String = serde_json::from_str(literal).map_err(|_| {
                    ScimError::InvalidFilter(format!("{literal} is not a valid JSON string"))
                })?;
                tokens.push(Token::Str(value));
            }
            _ => {
                let start = i;
                while i < bytes.len() && !b" \t\n\r()[]\"".contains(&bytes[i]) {
                    i += 1;
                }
                tokens.push(Token::Word(text[start..i].to_string()));
            }
        }
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: &'a [Token],
    position: usize,
    depth: usize,
}

/// Parses a whole token list as one filter.
pub(crate) fn parse_filter_tokens(tokens: &[Token]) -> Result<Filter, ScimError> {
    if tokens.is_empty() {
        return Err(ScimError::InvalidFilter("the filter is empty".into()));
    }
    let mut parser = Parser {
        tokens,
        position: 0,
        depth: 0,
    };
    let filter = parser.or_expr()?;
    if let Some(token) = parser.peek() {
        return Err(ScimError::InvalidFilter(format!(
            "unexpected {} after a complete filter",
            describe(token)
        )));
    }
    Ok(filter)
}

fn describe(token: &Token) -> String {
    match token {
        Token::Open => "`(`".into(),
        Token::Close => "`)`".into(),
        Token::OpenBracket => "`[`".into(),
        Token::CloseBracket => "`]`".into(),
        Token::Word(w) => format!("`{w}`"),
        Token::Str(s) => format!("string {s:?}"),
    }
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn next(&mut self) -> Option<&Token> {
        let token = self.tokens.get(self.position);
        self.position += 1;
        token
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(keyword))
    }

    fn expect(&mut self, wanted: Token, what: &str) -> Result<(), ScimError> {
        match self.next() {
            Some(token) if *token == wanted => Ok(()),
            Some(token) => Err(ScimError::InvalidFilter(format!(
                "expected {what}, found {}",
                describe(token)
            ))),
            None => Err(ScimError::InvalidFilter(format!(
                "expected {what} at the end of the filter"
            ))),
        }
    }

    fn enter(&mut self) -> Result<(), ScimError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ScimError::InvalidFilter(format!(
                "the filter nests deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(())
    }

    fn or_expr(&mut self) -> Result<Filter, ScimError> {
        let mut left = self.and_expr()?;
        while self.peek_keyword("or") {
            self.position += 1;
            let right = self.and_expr()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Filter, ScimError> {
        let mut left = self.unary()?;
        while self.peek_keyword("and") {
            self.position += 1;
            let right = self.unary()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, ScimError> {
        if self.peek_keyword("not") && self.tokens.get(self.position + 1) == Some(&Token::Open) {
            self.position += 1;
            return Ok(Filter::Not(Box::new(self.group()?)));
        }
        if self.peek() == Some(&Token::Open) {
            return self.group();
        }
        self.attr_expr()
    }

    fn group(&mut self) -> Result<Filter, ScimError> {
        self.expect(Token::Open, "`(`")?;
        self.enter()?;
        let inner = self.or_expr()?;
        self.depth -= 1;
        self.expect(Token::Close, "`)`")?;
        Ok(inner)
    }

    fn attr_expr(&mut self) -> Result<Filter, ScimError> {
        let path = match self.next() {
            Some(Token::Word(word)) => AttrPath::parse(word).map_err(|_| {
                ScimError::InvalidFilter(format!("`{word}` is not an attribute path"))
            })?,
            Some(token) => {
                return Err(ScimError::InvalidFilter(format!(
                    "expected an attribute path, found {}",
                    describe(token)
                )));
            }
            None => {
                return Err(ScimError::InvalidFilter(
                    "expected an attribute path at the end of the filter".into(),
                ));
            }
        };
        if self.peek() == Some(&Token::OpenBracket) {
            self.position += 1;
            self.enter()?;
            let inner = self.or_expr()?;
            self.depth -= 1;
            self.expect(Token::CloseBracket, "`]`")?;
            if path.sub.is_some() {
                return Err(ScimError::InvalidFilter(format!(
                    "`{path}[...]`: a value filter applies to a multi-valued attribute, not to a sub-attribute"
                )));
            }
            return Ok(Filter::ValuePath(path, Box::new(inner)));
        }
        let operator = match self.next() {
            Some(Token::Word(word)) => word.clone(),
            Some(token) => {
                return Err(ScimError::InvalidFilter(format!(
                    "expected an operator after `{path}`, found {}",
                    describe(token)
                )));
            }
            None => {
                return Err(ScimError::InvalidFilter(format!(
                    "expected an operator after `{path}`"
                )));
            }
        };
        if operator.eq_ignore_ascii_case("pr") {
            return Ok(Filter::Present(path));
        }
        let op = CompareOp::parse(&operator).ok_or_else(|| {
            ScimError::InvalidFilter(format!(
                "unsupported operator `{operator}`: use eq, ne, co, sw, ew, gt, ge, lt, le or pr"
            ))
        })?;
        let value = match self.next() {
            Some(Token::Str(s)) => Value::String(s.clone()),
            Some(Token::Word(w)) => literal(w)?,
            Some(token) => {
                return Err(ScimError::InvalidFilter(format!(
                    "expected a value after `{path} {operator}`, found {}",
                    describe(token)
                )));
            }
            None => {
                return Err(ScimError::InvalidFilter(format!(
                    "expected a value after `{path} {operator}`"
                )));
            }
        };
        if op.is_ordering() && matches!(value, Value::Bool(_) | Value::Null) {
            return Err(ScimError::InvalidFilter(format!(
                "`{operator}` does not apply to {value}: ordering compares strings, numbers and dates"
            )));
        }
        if matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew) && !value.is_string() {
            return Err(ScimError::InvalidFilter(format!(
                "`{operator}` compares strings, not {value}"
            )));
        }
        Ok(Filter::Compare(path, op, value))
    }
}

fn literal(word: &str) -> Result<Value, ScimError> {
    match word.to_ascii_lowercase().as_str() {
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        "null" => return Ok(Value::Null),
        _ => {}
    }
    match serde_json::from_str::<Value>(word) {
        Ok(number @ Value::Number(_)) => Ok(number),
        _ => Err(ScimError::InvalidFilter(format!(
            "`{word}` is not a value: quote strings, as in \"{word}\""
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn user() -> Value {
        json!({
            "userName": "bjensen",
            "externalId": "ABC-1",
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "active": true,
            "emails": [
                {"value": "bjensen@example.com", "type": "work", "primary": true},
                {"value": "babs@home.example.org", "type": "home"}
            ],
            "meta": {"lastModified": "2024-05-13T04:42:34Z", "version": "W/\"3\""},
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Tour"}
        })
    }

    fn matches(filter: &str) -> bool {
        Filter::parse(filter)
            .unwrap_or_else(|e| panic!("{filter}: {e}"))
            .matches(&user())
    }

    #[test]
    fn compare_operators() {
        assert!(matches(r#"userName eq "BJENSEN""#));
        assert!(!matches(r#"userName ne "bjensen""#));
        assert!(matches(r#"userName co "jen""#));
        assert!(matches(r#"userName sw "bj""#));
        assert!(matches(r#"userName ew "sen""#));
        assert!(matches(r#"name.givenName eq "barbara""#));
        assert!(matches(r#"emails co "example.com""#));
        assert!(matches("active eq true"));
        assert!(!matches("active eq false"));
        assert!(!matches("title pr"));
        assert!(matches("emails pr"));
    }

    #[test]
    fn external_id_is_case_exact() {
        assert!(matches(r#"externalId eq "ABC-1""#));
        assert!(!matches(r#"externalId eq "abc-1""#));
    }

    #[test]
    fn dates_compare_as_instants() {
        assert!(matches(r#"meta.lastModified gt "2024-05-13T04:42:33Z""#));
        assert!(matches(
            r#"meta.lastModified ge "2024-05-13T06:42:34+02:00""#
        ));
        assert!(!matches(r#"meta.lastModified lt "2024-05-13T04:42:34Z""#));
        assert!(matches(r#"meta.lastModified le "2024-05-13T04:42:34Z""#));
    }

    #[test]
    fn logic_and_grouping() {
        assert!(matches(
            r#"userName eq "x" or (userName eq "bjensen" and active eq true)"#
        ));
        assert!(matches(r#"not (userName eq "x")"#));
        assert!(!matches(
            r#"userName eq "bjensen" and not (active eq true)"#
        ));
        // `and` binds tighter than `or`.
        assert!(matches(
            r#"userName eq "bjensen" or userName eq "x" and active eq false"#
        ));
    }

    #[test]
    fn value_path_and_urn() {
        assert!(matches(
            r#"emails[type eq "work" and value co "@example.com"]"#
        ));
        assert!(!matches(r#"emails[type eq "other"]"#));
        assert!(matches(
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "tour""#
        ));
        assert!(matches(
            r#"urn:ietf:params:scim:schemas:core:2.0:User:userName eq "bjensen""#
        ));
    }

    #[test]
    fn invalid_filters_are_rejected() {
        for text in [
            "",
            "userName",
            r#"userName xx "a""#,
            r#"userName eq"#,
            r#"userName eq bjensen"#,
            r#"(userName eq "a""#,
            r#"userName eq "a" )"#,
            r#"active gt true"#,
            r#"userName co 5"#,
            r#"emails[type eq "work""#,
            r#"userName eq "unterminated"#,
        ] {
            let error = Filter::parse(text).expect_err(text);
            assert_eq!(error.scim_type(), "invalidFilter", "{text}");
        }
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let text = format!("{}userName pr{}", "(".repeat(40), ")".repeat(40));
        assert_eq!(
            Filter::parse(&text).unwrap_err().scim_type(),
            "invalidFilter"
        );
    }

    fn arb_path() -> impl Strategy<Value = AttrPath> {
        (
            prop::sample::select(vec!["userName", "name", "emails", "active", "meta"]),
            prop::option::of(prop::sample::select(vec!["value", "givenName", "type"])),
        )
            .prop_map(|(attr, sub)| AttrPath {
                schema: None,
                attr: attr.to_string(),
                sub: sub.map(str::to_string),
            })
    }

    fn arb_filter() -> impl Strategy<Value = Filter> {
        let leaf = prop_oneof![
            arb_path().prop_map(Filter::Present),
            (arb_path(), "[a-z@. \"\\\\]{0,8}").prop_map(|(p, s)| Filter::Compare(
                p,
                CompareOp::Eq,
                Value::String(s)
            )),
            (arb_path(), any::<i32>()).prop_map(|(p, n)| Filter::Compare(
                p,
                CompareOp::Gt,
                Value::from(n)
            )),
        ];
        leaf.prop_recursive(4, 32, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone())
                    .prop_map(|(a, b)| Filter::And(Box::new(a), Box::new(b))),
                (inner.clone(), inner.clone())
                    .prop_map(|(a, b)| Filter::Or(Box::new(a), Box::new(b))),
                inner.clone().prop_map(|f| Filter::Not(Box::new(f))),
            ]
        })
    }

    proptest! {
        #[test]
        fn display_parses_back(filter in arb_filter()) {
            let text = filter.to_string();
            let parsed = Filter::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(parsed, filter);
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,64}") {
            let _ = Filter::parse(&text);
        }

        #[test]
        fn not_inverts(filter in arb_filter()) {
            let negated = Filter::Not(Box::new(filter.clone()));
            prop_assert_eq!(negated.matches(&user()), !filter.matches(&user()));
        }
    }
}
