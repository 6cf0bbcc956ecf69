//! `{{ lk://VAULT/SECRET/FIELD }}` templates, rendered by `lk inject`.
//!
//! A placeholder is `{{`, optional spaces or tabs, a reference that starts with `lk://`
//! (case-insensitive, as in [`SecretRef::parse`]), optional spaces or tabs, and `}}`, all on
//! one line. A `{{` that is not followed by `lk://` is ordinary text, so Helm and Go templates
//! such as `{{ .Values.x }}` pass through unchanged. In `{{{ lk://v/s/f }}}` the placeholder
//! starts at the last `{{` and the outer braces are text.
//!
//! The reference ends at the first `}}` and loses its trailing spaces and tabs. A name that
//! contains `}}`, ends with `}`, or ends with a space must therefore write those characters
//! percent-encoded (`%7D`, `%20`). Every placeholder must name a field.
//!
//! NOTE: there is no escape for a literal `{{ lk://` in the output.

use thiserror::Error;

use crate::reference::{ReferenceError, SecretRef};

/// Parsed template: text and placeholders in input order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Placeholder(Placeholder),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Placeholder {
    reference: SecretRef,
    position: Position,
}

/// Position of a placeholder's `{{`: 1-based line, and 1-based column counted in Unicode
/// characters (not bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    line: usize,
    column: usize,
}

/// Error in a template or while rendering it. `line` and `column` point at the placeholder's
/// `{{`, counted from 1, with columns in Unicode characters.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum TemplateError {
    #[error(
        "line {line}, column {column}: the placeholder has no closing `}}}}` on the same line; \
         close it with `}}}}` before the line ends"
    )]
    Unclosed { line: usize, column: usize },

    /// The reference is malformed or does not name a field.
    #[error("line {line}, column {column}: {reason}")]
    InvalidReference {
        line: usize,
        column: usize,
        reason: ReferenceError,
    },

    #[error(
        "line {line}, column {column}: no value for `{reference}`; check that the secret and \
         the field exist"
    )]
    MissingValue {
        line: usize,
        column: usize,
        reference: SecretRef,
    },
}

const BLANKS: [char; 2] = [' ', '\t'];
const OPEN: &str = "{{";
const CLOSE: &str = "}}";

impl Template {
    /// Parses a template, checking every placeholder's reference.
    ///
    /// Returns [`TemplateError::Unclosed`] for a placeholder without `}}` on its line, and
    /// [`TemplateError::InvalidReference`] for a malformed reference or one without a field.
    pub fn parse(input: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut counter = PositionCounter::default();
        // Start of the text not yet stored in `parts`, and where to look for the next `{{`.
        let mut text_start = 0;
        let mut search_start = 0;

        while let Some(found) = input.get(search_start..).and_then(|rest| rest.find(OPEN)) {
            let open = search_start + found;
            let after_open = input.get(open + OPEN.len()..).unwrap_or_default();
            let reference_text = after_open.trim_start_matches(BLANKS);
            if !SecretRef::is_reference(reference_text) {
                // `{` is one byte, so `open + 1` is a character boundary.
                search_start = open + 1;
                continue;
            }

            let position = counter.advance(input, open);
            let line_rest = reference_text.split('\n').next().unwrap_or(reference_text);
            let Some(close) = line_rest.find(CLOSE) else {
                return Err(TemplateError::Unclosed {
                    line: position.line,
                    column: position.column,
                });
            };
            let reference_source = line_rest
                .get(..close)
                .unwrap_or_default()
                .trim_end_matches(BLANKS);
            let reference = parse_field_reference(reference_source, position)?;

            if let Some(text) = input.get(text_start..open).filter(|text| !text.is_empty()) {
                parts.push(Part::Text(text.to_owned()));
            }
            parts.push(Part::Placeholder(Placeholder {
                reference,
                position,
            }));

            // `reference_text` is a suffix of `input`.
            let reference_start = input.len() - reference_text.len();
            text_start = reference_start + close + CLOSE.len();
            search_start = text_start;
        }

        if let Some(text) = input.get(text_start..).filter(|text| !text.is_empty()) {
            parts.push(Part::Text(text.to_owned()));
        }
        Ok(Template { parts })
    }

    /// Returns the placeholders' references in template order, repeated as often as they
    /// appear.
    pub fn references(&self) -> Vec<&SecretRef> {
        self.parts
            .iter()
            .filter_map(|part| match part {
                Part::Placeholder(placeholder) => Some(&placeholder.reference),
                Part::Text(_) => None,
            })
            .collect()
    }

    /// Renders the template, replacing each placeholder with the bytes `lookup` returns for
    /// its reference.
    ///
    /// Every reference is looked up before any output is written, so on
    /// [`TemplateError::MissingValue`] (for the first reference without a value) no secret has
    /// been copied. The output is allocated once at its final size, so no partial copies of it
    /// are left behind by reallocation. It contains secret values and is not zeroized, so the
    /// caller should wrap it, for example in `Zeroizing`.
    pub fn render<'a>(
        &self,
        lookup: impl Fn(&SecretRef) -> Option<&'a [u8]>,
    ) -> Result<Vec<u8>, TemplateError> {
        let mut pieces: Vec<&[u8]> = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            match part {
                Part::Text(text) => pieces.push(text.as_bytes()),
                Part::Placeholder(placeholder) => {
                    let Some(value) = lookup(&placeholder.reference) else {
                        return Err(TemplateError::MissingValue {
                            line: placeholder.position.line,
                            column: placeholder.position.column,
                            reference: placeholder.reference.clone(),
                        });
                    };
                    pieces.push(value);
                }
            }
        }

        let length = pieces.iter().map(|piece| piece.len()).sum();
        let mut output = Vec::with_capacity(length);
        for piece in pieces {
            output.extend_from_slice(piece);
        }
        Ok(output)
    }
}

fn parse_field_reference(source: &str, position: Position) -> Result<SecretRef, TemplateError> {
    let invalid = |reason| TemplateError::InvalidReference {
        line: position.line,
        column: position.column,
        reason,
    };
    let reference = SecretRef::parse(source).map_err(invalid)?;
    reference.require_field().map_err(invalid)?;
    Ok(reference)
}

/// Line and column of a byte offset, counted forward from the previous offset so that a whole
/// template is scanned once.
#[derive(Debug)]
struct PositionCounter {
    offset: usize,
    position: Position,
}

impl Default for PositionCounter {
    fn default() -> Self {
        PositionCounter {
            offset: 0,
            position: Position { line: 1, column: 1 },
        }
    }
}

impl PositionCounter {
    /// Moves to `offset`, which must not be before the previous offset, and returns its
    /// position.
    fn advance(&mut self, input: &str, offset: usize) -> Position {
        let skipped = input.get(self.offset..offset).unwrap_or_default();
        for character in skipped.chars() {
            if character == '\n' {
                self.position.line += 1;
                self.position.column = 1;
            } else {
                self.position.column += 1;
            }
        }
        self.offset = offset;
        self.position
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;

    use super::*;
    use crate::reference::ReferencePart;
    use proptest::prelude::*;

    fn render_with(template: &Template, values: &[(&str, &str)]) -> Result<String, TemplateError> {
        let values: HashMap<SecretRef, Vec<u8>> = values
            .iter()
            .map(|(reference, value)| {
                (
                    SecretRef::parse(reference).unwrap(),
                    value.as_bytes().to_vec(),
                )
            })
            .collect();
        template
            .render(|reference| values.get(reference).map(Vec::as_slice))
            .map(|bytes| String::from_utf8(bytes).unwrap())
    }

    #[test]
    fn render_single_placeholder() {
        let template = Template::parse("password: {{ lk://prod/db/password }}\n").unwrap();
        let output = render_with(&template, &[("lk://prod/db/password", "hunter2")]).unwrap();
        assert_eq!(output, "password: hunter2\n");
    }

    #[test]
    fn render_multiple_per_line() {
        let template =
            Template::parse("{{lk://p/db/user}}:{{\tlk://p/db/pass\t}}@{{ lk://p/db/host }}")
                .unwrap();
        let output = render_with(
            &template,
            &[
                ("lk://p/db/user", "u"),
                ("lk://p/db/pass", "p"),
                ("lk://p/db/host", "h"),
            ],
        )
        .unwrap();
        assert_eq!(output, "u:p@h");
    }

    #[test]
    fn render_non_ascii_around_placeholders() {
        let template =
            Template::parse("clé « {{ lk://équipe/clé/mot de passe }} » ✓ {{ lk://a/b/c }}日本")
                .unwrap();
        let output = render_with(
            &template,
            &[
                ("lk://équipe/clé/mot de passe", "sécret"),
                ("lk://a/b/c", "値"),
            ],
        )
        .unwrap();
        assert_eq!(output, "clé « sécret » ✓ 値日本");
    }

    #[test]
    fn render_repeated_reference() {
        let template = Template::parse("{{ lk://a/b/c }}-{{ lk://a/b/c }}").unwrap();
        assert_eq!(template.references().len(), 2);
        let output = render_with(&template, &[("lk://a/b/c", "x")]).unwrap();
        assert_eq!(output, "x-x");
    }

    #[test]
    fn render_binary_value() {
        let template = Template::parse("[{{ lk://a/b/c }}]").unwrap();
        let value = [0u8, 255, 10];
        let output = template.render(|_| Some(&value[..])).unwrap();
        assert_eq!(output, vec![b'[', 0, 255, 10, b']']);
    }

    #[test]
    fn other_braces_pass_through() {
        let input =
            "name: {{ .Values.name }}\n{{- if .x }}{{ end }}\n{{}} {{ lk }} {{lk:/x}} }} {{";
        let template = Template::parse(input).unwrap();
        assert!(template.references().is_empty());
        assert_eq!(render_with(&template, &[]).unwrap(), input);
    }

    #[test]
    fn triple_braces_keep_outer_braces() {
        let template = Template::parse("{{{ lk://a/b/c }}}").unwrap();
        assert_eq!(
            render_with(&template, &[("lk://a/b/c", "x")]).unwrap(),
            "{x}"
        );
    }

    #[test]
    fn references_in_order() {
        let template =
            Template::parse("{{ lk://a/b/c }} {{ .x }} {{ LK://d/e/f?version=2 }}").unwrap();
        let references = template.references();
        assert_eq!(references.len(), 2);
        assert_eq!(*references[0], SecretRef::field("a", "b", "c"));
        assert_eq!(references[1].to_string(), "lk://d/e/f?version=2");
    }

    #[test]
    fn names_with_spaces_and_braces() {
        let template = Template::parse("{{ lk://prod/my db.conf/a}b%7D }}").unwrap();
        assert_eq!(
            *template.references()[0],
            SecretRef::field("prod", "my db.conf", "a}b}")
        );
    }

    #[test]
    fn empty_and_plain_templates() {
        assert_eq!(render_with(&Template::parse("").unwrap(), &[]).unwrap(), "");
        let plain = "no placeholders here\r\n";
        assert_eq!(
            render_with(&Template::parse(plain).unwrap(), &[]).unwrap(),
            plain
        );
    }

    #[test]
    fn unclosed_placeholder_rejected() {
        let error = Template::parse("a\nbé {{ lk://a/b/c\n}}").unwrap_err();
        assert_eq!(error, TemplateError::Unclosed { line: 2, column: 4 });
        assert_eq!(
            error.to_string(),
            "line 2, column 4: the placeholder has no closing `}}` on the same line; close it \
             with `}}` before the line ends"
        );
        assert_eq!(
            Template::parse("{{ lk://a/b/c }").unwrap_err(),
            TemplateError::Unclosed { line: 1, column: 1 }
        );
    }

    #[test]
    fn malformed_reference_rejected() {
        let error = Template::parse("ok {{ lk://a/b/c }}\n  x: {{ lk://prod//x }}").unwrap_err();
        assert_eq!(
            error,
            TemplateError::InvalidReference {
                line: 2,
                column: 6,
                reason: ReferenceError::EmptyName {
                    input: "lk://prod//x".to_owned(),
                    part: ReferencePart::Secret,
                },
            }
        );
        assert_eq!(
            error.to_string(),
            "line 2, column 6: invalid reference `lk://prod//x`: the secret name is empty; \
             write lk://VAULT/SECRET/FIELD"
        );
    }

    #[test]
    fn placeholder_without_field_rejected() {
        let error = Template::parse("{{ lk://prod/db }}").unwrap_err();
        assert_eq!(
            error,
            TemplateError::InvalidReference {
                line: 1,
                column: 1,
                reason: ReferenceError::MissingPart {
                    input: "lk://prod/db".to_owned(),
                    part: ReferencePart::Field,
                },
            }
        );
    }

    #[test]
    fn carriage_return_inside_placeholder_rejected() {
        let error = Template::parse("{{ lk://a/b/c\r\n}}").unwrap_err();
        assert_eq!(error, TemplateError::Unclosed { line: 1, column: 1 });
    }

    #[test]
    fn missing_value_names_reference() {
        let template = Template::parse("a={{ lk://a/b/c }}\nb={{ lk://a/b/d }}").unwrap();
        let error = render_with(&template, &[("lk://a/b/c", "x")]).unwrap_err();
        assert_eq!(
            error,
            TemplateError::MissingValue {
                line: 2,
                column: 3,
                reference: SecretRef::field("a", "b", "d"),
            }
        );
        assert_eq!(
            error.to_string(),
            "line 2, column 3: no value for `lk://a/b/d`; check that the secret and the field \
             exist"
        );
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_é-][a-zA-Z0-9_.é -]{0,8}[a-zA-Z0-9_é]"
    }

    proptest! {
        #[test]
        fn parse_never_panics(input in any::<String>()) {
            let _ = Template::parse(&input);
        }

        #[test]
        fn parse_of_brace_mix_never_panics(input in "[{} \tlk:/ab%\n.é]{0,40}") {
            let _ = Template::parse(&input);
        }

        #[test]
        fn placeholders_replaced_in_order(
            pieces in prop::collection::vec(
                ("[^{]{0,12}", name_strategy(), name_strategy(), name_strategy()),
                0..5,
            ),
            tail in "[^{]{0,12}",
        ) {
            let mut input = String::new();
            let mut expected = String::new();
            let mut expected_references = Vec::new();
            for (text, vault, secret, field) in &pieces {
                let reference = SecretRef::field(vault.as_str(), secret.as_str(), field.as_str());
                input.push_str(text);
                input.push_str(&format!("{{{{ {reference} }}}}"));
                expected.push_str(text);
                expected.push_str(&format!("<{field}>"));
                expected_references.push(reference);
            }
            input.push_str(&tail);
            expected.push_str(&tail);

            let template = Template::parse(&input).unwrap();
            let references: Vec<SecretRef> =
                template.references().into_iter().cloned().collect();
            prop_assert_eq!(references, expected_references);

            let values: HashMap<SecretRef, Vec<u8>> = template
                .references()
                .into_iter()
                .map(|reference| {
                    let field = reference.field.clone().unwrap_or_default();
                    (reference.clone(), format!("<{field}>").into_bytes())
                })
                .collect();
            let output = template
                .render(|reference| values.get(reference).map(Vec::as_slice))
                .unwrap();
            prop_assert_eq!(String::from_utf8(output).unwrap(), expected);
        }
    }
}
