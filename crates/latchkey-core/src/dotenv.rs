//! Dotenv (`.env`) files: a parser and a writer whose output the parser reads back unchanged.
//!
//! Syntax accepted by [`parse`]:
//!
//! - A UTF-8 byte order mark at the start of the input is skipped. Lines end in LF or CRLF.
//! - Blank lines, and lines whose first non-blank character is `#`, are skipped. Blanks are
//!   spaces and tabs.
//! - Each other line is `KEY=VALUE`, optionally preceded by `export `. Keys match
//!   `[A-Za-z_][A-Za-z0-9_]*`. Blanks around `=` are allowed, and `KEY=` gives an empty value.
//! - An unquoted value is the rest of the line with blanks trimmed from both ends. A `#` that
//!   follows a blank starts a comment, and any other `#` or `=` is part of the value.
//! - A single-quoted value is literal, with no escapes, and may span lines.
//! - A double-quoted value may span lines (PEM keys, for example) and understands the escapes
//!   `\n`, `\r`, `\t`, `\"`, `\\` and `\$`. Any other backslash is kept together with the
//!   character after it, so `\d` stays `\d`.
//! - Inside either kind of quotes, a CRLF line break becomes LF and every other character is
//!   kept as written. A lone CR is kept.
//! - After a closing quote, only blanks or a `# comment` may follow on that line.
//!
//! Values are often secrets, so no error message contains a value.
//!
//! NOTE: the returned strings, and the copies made while parsing or rendering, are not
//! zeroized. Callers that hold secret values should move them into `Zeroizing` buffers.

use std::fmt::Write as _;

use thiserror::Error;

/// Error in a dotenv file. Lines are numbered from 1, and keys in messages are shortened to
/// 40 characters with control characters escaped.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DotenvError {
    #[error(
        "line {line}: invalid key `{}`: keys start with a letter or `_` and contain only \
         letters, digits and `_`",
        shorten(.key)
    )]
    InvalidKey { line: usize, key: String },

    #[error("line {line}: missing key before `=`; write KEY=VALUE")]
    MissingKey { line: usize },

    #[error(
        "line {line}: missing `=`; write KEY=VALUE, or start the line with `#` to make it a \
         comment"
    )]
    MissingEquals { line: usize },

    /// `line` is the line where the value starts.
    #[error(
        "line {line}: the {} value of `{}` is never closed; add the closing {quote}",
        quote_name(*.quote),
        shorten(.key)
    )]
    UnterminatedQuote {
        line: usize,
        key: String,
        quote: char,
    },

    /// `line` is the line of the closing quote.
    #[error(
        "line {line}: unexpected text after the closing quote of `{}`; only blanks or a \
         `# comment` may follow it",
        shorten(.key)
    )]
    TextAfterQuote { line: usize, key: String },
}

impl DotenvError {
    /// Returns the 1-based line number the error points at.
    pub fn line(&self) -> usize {
        match self {
            DotenvError::InvalidKey { line, .. }
            | DotenvError::MissingKey { line }
            | DotenvError::MissingEquals { line }
            | DotenvError::UnterminatedQuote { line, .. }
            | DotenvError::TextAfterQuote { line, .. } => *line,
        }
    }
}

const BLANKS: [char; 2] = [' ', '\t'];
const BYTE_ORDER_MARK: char = '\u{feff}';

/// Parses a dotenv file into `(key, value)` pairs in file order.
///
/// Duplicate keys are all returned, in order, and the caller decides which one counts.
/// `lk run` uses the last one, as a shell would.
pub fn parse(input: &str) -> Result<Vec<(String, String)>, DotenvError> {
    let text = input.strip_prefix(BYTE_ORDER_MARK).unwrap_or(input);
    let mut entries = Vec::new();
    // Byte offset of the start of the current line in `text`, and its 1-based number.
    let mut position = 0;
    let mut line = 1;

    while let Some(rest) = text.get(position..).filter(|rest| !rest.is_empty()) {
        let (content, next_line_start) = split_line(rest);
        let trimmed = content.trim_start_matches(BLANKS);
        if trimmed.is_empty() || trimmed.starts_with('#') {
            position += next_line_start;
            line += 1;
            continue;
        }

        let assignment = strip_export(trimmed);
        let Some((raw_key, raw_value)) = assignment.split_once('=') else {
            return Err(DotenvError::MissingEquals { line });
        };
        let key = raw_key.trim_end_matches(BLANKS);
        check_key(key, line)?;

        let value_text = raw_value.trim_start_matches(BLANKS);
        let quote = value_text
            .chars()
            .next()
            .filter(|c| matches!(c, '\'' | '"'));
        let Some(quote) = quote else {
            let value = strip_inline_comment(raw_value).trim_matches(BLANKS);
            entries.push((key.to_owned(), value.to_owned()));
            position += next_line_start;
            line += 1;
            continue;
        };

        // `value_text` is a suffix of `content`, which starts at `position`.
        let quote_start = position + (content.len() - value_text.len());
        let after_quote = quote_start + quote.len_utf8();
        let body = text.get(after_quote..).unwrap_or_default();
        let unterminated = || DotenvError::UnterminatedQuote {
            line,
            key: key.to_owned(),
            quote,
        };
        let (value, body_length) = if quote == '"' {
            read_double_quoted(body).ok_or_else(unterminated)?
        } else {
            read_single_quoted(body).ok_or_else(unterminated)?
        };

        let closing_quote = after_quote + body_length;
        line += text
            .get(quote_start..closing_quote)
            .unwrap_or_default()
            .matches('\n')
            .count();
        let after_closing = closing_quote + 1;
        let (trailing, trailing_line_length) =
            split_line(text.get(after_closing..).unwrap_or_default());
        let trailing = trailing.trim_start_matches(BLANKS);
        if !trailing.is_empty() && !trailing.starts_with('#') {
            return Err(DotenvError::TextAfterQuote {
                line,
                key: key.to_owned(),
            });
        }

        entries.push((key.to_owned(), value));
        position = after_closing + trailing_line_length;
        line += 1;
    }

    Ok(entries)
}

/// Writes `entries` as a dotenv file, one `KEY=VALUE` line each, ending with a newline.
///
/// A value is written bare when it is empty or contains only ASCII letters, digits and
/// `_-./:@%+,=~`. Any other value is double-quoted. Inside the quotes, `\`, `"` and `$` are
/// escaped, so tools that expand `$VAR` in double quotes leave the value alone. CR and tab are
/// written `\r` and `\t`. Line feeds stay literal, which keeps PEM keys readable.
///
/// Keys are written as given and must match `[A-Za-z_][A-Za-z0-9_]*` for [`parse`] to read
/// the output back.
pub fn render(entries: &[(String, String)]) -> String {
    let mut output = String::new();
    for (key, value) in entries {
        output.push_str(key);
        output.push('=');
        if value.chars().all(is_bare_character) {
            output.push_str(value);
        } else {
            write_double_quoted(&mut output, value);
        }
        output.push('\n');
    }
    output
}

/// Returns the first line of `text` without its LF or CRLF ending, and the offset where the
/// next line starts.
fn split_line(text: &str) -> (&str, usize) {
    let (line, next_line_start) = match text.find('\n') {
        Some(end) => (text.get(..end).unwrap_or_default(), end + 1),
        None => (text, text.len()),
    };
    (line.strip_suffix('\r').unwrap_or(line), next_line_start)
}

/// Removes a leading `export` keyword, unless `export` is itself the key (`export=1`).
fn strip_export(line: &str) -> &str {
    let Some(rest) = line.strip_prefix("export") else {
        return line;
    };
    if !rest.starts_with(BLANKS) {
        return line;
    }
    let rest = rest.trim_start_matches(BLANKS);
    if rest.starts_with('=') { line } else { rest }
}

fn check_key(key: &str, line: usize) -> Result<(), DotenvError> {
    let mut characters = key.chars();
    let Some(first) = characters.next() else {
        return Err(DotenvError::MissingKey { line });
    };
    let valid = (first.is_ascii_alphabetic() || first == '_')
        && characters.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(DotenvError::InvalidKey {
            line,
            key: key.to_owned(),
        })
    }
}

/// Cuts an unquoted value at the first `#` that follows a blank.
fn strip_inline_comment(value: &str) -> &str {
    let mut previous_is_blank = false;
    for (index, character) in value.char_indices() {
        if character == '#' && previous_is_blank {
            return value.get(..index).unwrap_or(value);
        }
        previous_is_blank = BLANKS.contains(&character);
    }
    value
}

/// Reads a single-quoted value from the text after the opening quote. Returns the value and
/// the byte length up to the closing quote, or `None` when there is no closing quote.
fn read_single_quoted(body: &str) -> Option<(String, usize)> {
    let length = body.find('\'')?;
    let value = body.get(..length)?.replace("\r\n", "\n");
    Some((value, length))
}

/// Reads a double-quoted value from the text after the opening quote, applying escapes.
/// Returns the value and the byte length up to the closing quote, or `None` when there is no
/// closing quote.
fn read_double_quoted(body: &str) -> Option<(String, usize)> {
    let mut value = String::new();
    let mut characters = body.char_indices().peekable();
    while let Some((index, character)) = characters.next() {
        match character {
            '"' => return Some((value, index)),
            '\\' => {
                let (_, next) = *characters.peek()?;
                let escaped = match next {
                    'n' => Some('\n'),
                    'r' => Some('\r'),
                    't' => Some('\t'),
                    '"' | '\\' | '$' => Some(next),
                    _ => None,
                };
                match escaped {
                    Some(escaped) => {
                        value.push(escaped);
                        characters.next();
                    }
                    // Keep the backslash; the next character is read on the next pass.
                    None => value.push('\\'),
                }
            }
            '\r' if characters.peek().is_some_and(|&(_, next)| next == '\n') => {}
            _ => value.push(character),
        }
    }
    None
}

fn is_bare_character(character: char) -> bool {
    character.is_ascii_alphanumeric() || "_-./:@%+,=~".contains(character)
}

fn write_double_quoted(output: &mut String, value: &str) {
    output.push('"');
    for character in value.chars() {
        match character {
            '\\' => output.push_str("\\\\"),
            '"' => output.push_str("\\\""),
            '$' => output.push_str("\\$"),
            '\r' => output.push_str("\\r"),
            '\t' => output.push_str("\\t"),
            _ => output.push(character),
        }
    }
    output.push('"');
}

/// Shortens a key for an error message and escapes its control characters. A line without a
/// valid key may hold something pasted by mistake, so the message shows only its start.
fn shorten(key: &str) -> String {
    const MAX_SHOWN_CHARACTERS: usize = 40;
    let mut escaped = String::new();
    for (count, character) in key.chars().enumerate() {
        if count == MAX_SHOWN_CHARACTERS {
            escaped.push('…');
            break;
        }
        if character.is_control() {
            let _ = write!(escaped, "{}", character.escape_default());
        } else {
            escaped.push(character);
        }
    }
    escaped
}

fn quote_name(quote: char) -> &'static str {
    if quote == '\'' {
        "single-quoted"
    } else {
        "double-quoted"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
        MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n\
        MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n\
        +/abc==\n\
        -----END PRIVATE KEY-----";

    #[test]
    fn parse_simple_lines() {
        let input = "A=1\nB = two\n  C=three  \n";
        assert_eq!(
            parse(input).unwrap(),
            pairs(&[("A", "1"), ("B", "two"), ("C", "three")])
        );
    }

    #[test]
    fn parse_skips_blank_and_comment_lines() {
        let input = "# header\n\n   \n\t# indented comment\nA=1\n";
        assert_eq!(parse(input).unwrap(), pairs(&[("A", "1")]));
    }

    #[test]
    fn parse_empty_values() {
        let input = "A=\nB=   \nC=''\nD=\"\"\nE= # only a comment\n";
        assert_eq!(
            parse(input).unwrap(),
            pairs(&[("A", ""), ("B", ""), ("C", ""), ("D", ""), ("E", "")])
        );
    }

    #[test]
    fn parse_keeps_equals_in_value() {
        let input = "URL=postgres://u:p@h/db?sslmode=require&x=1\n";
        assert_eq!(
            parse(input).unwrap(),
            pairs(&[("URL", "postgres://u:p@h/db?sslmode=require&x=1")])
        );
    }

    #[test]
    fn parse_inline_comments() {
        let input = "A=value # comment\nB=val#ue\nC=val\t#tab comment\nD=#start\n";
        assert_eq!(
            parse(input).unwrap(),
            pairs(&[
                ("A", "value"),
                ("B", "val#ue"),
                ("C", "val"),
                ("D", "#start")
            ])
        );
    }

    #[test]
    fn parse_export_prefix() {
        let input = "export A=1\nexport\tB=2\nexport=3\nexport  =4\nexported=5\n";
        assert_eq!(
            parse(input).unwrap(),
            pairs(&[
                ("A", "1"),
                ("B", "2"),
                ("export", "3"),
                ("export", "4"),
                ("exported", "5")
            ])
        );
    }

    #[test]
    fn parse_keeps_duplicates_in_order() {
        let input = "A=1\nB=2\nA=3\n";
        assert_eq!(
            parse(input).unwrap(),
            pairs(&[("A", "1"), ("B", "2"), ("A", "3")])
        );
    }

    #[test]
    fn parse_single_quoted_is_literal() {
        let input = "A='a \\n $HOME \"x\" # not a comment'\nB='two\nlines'\n";
        assert_eq!(
            parse(input).unwrap(),
            pairs(&[
                ("A", "a \\n $HOME \"x\" # not a comment"),
                ("B", "two\nlines")
            ])
        );
    }

    #[test]
    fn parse_double_quoted_escapes() {
        let input = r#"A="line1\nline2\r\ttab \"q\" back\\slash \$HOME""#;
        assert_eq!(
            parse(input).unwrap(),
            pairs(&[("A", "line1\nline2\r\ttab \"q\" back\\slash $HOME")])
        );
    }

    #[test]
    fn parse_unknown_escape_kept() {
        let input = r#"A="C:\dir\x \u00e9 end\\""#;
        assert_eq!(
            parse(input).unwrap(),
            pairs(&[("A", r"C:\dir\x \u00e9 end\")])
        );
    }

    #[test]
    fn parse_escaped_quotes_in_double_quotes() {
        let input = "A=\"say \\\"hi\\\"\"\nB=\"it's\"\n";
        assert_eq!(
            parse(input).unwrap(),
            pairs(&[("A", "say \"hi\""), ("B", "it's")])
        );
    }

    #[test]
    fn parse_pem_key_exactly() {
        let input = format!("# key\nTLS_KEY=\"{PEM}\"\nAFTER=1\n");
        assert_eq!(
            parse(&input).unwrap(),
            pairs(&[("TLS_KEY", PEM), ("AFTER", "1")])
        );
    }

    #[test]
    fn pem_key_round_trips() {
        let entries = pairs(&[("TLS_KEY", PEM), ("OTHER", "x")]);
        let rendered = render(&entries);
        assert_eq!(rendered, format!("TLS_KEY=\"{PEM}\"\nOTHER=x\n"));
        assert_eq!(parse(&rendered).unwrap(), entries);
    }

    #[test]
    fn parse_non_ascii() {
        let input = "A=\"héllo wörld ✓\"\nB=日本語\nC='ÿ'\n";
        assert_eq!(
            parse(input).unwrap(),
            pairs(&[("A", "héllo wörld ✓"), ("B", "日本語"), ("C", "ÿ")])
        );
    }

    #[test]
    fn parse_crlf_line_endings() {
        let input =
            "A=1\r\nB=two words \r\nC=\"x\r\ny\"\r\nD='p\r\nq'\r\n# c\r\nE=\"lone\rcr\"\r\n";
        assert_eq!(
            parse(input).unwrap(),
            pairs(&[
                ("A", "1"),
                ("B", "two words"),
                ("C", "x\ny"),
                ("D", "p\nq"),
                ("E", "lone\rcr")
            ])
        );
    }

    #[test]
    fn parse_skips_byte_order_mark() {
        let input = "\u{feff}A=1\n";
        assert_eq!(parse(input).unwrap(), pairs(&[("A", "1")]));
    }

    #[test]
    fn parse_comment_after_closing_quote() {
        let input = "A=\"x\"  # note\nB='y'# note\nC=\"z\"\t\n";
        assert_eq!(
            parse(input).unwrap(),
            pairs(&[("A", "x"), ("B", "y"), ("C", "z")])
        );
    }

    #[test]
    fn parse_without_final_newline() {
        assert_eq!(parse("A=1").unwrap(), pairs(&[("A", "1")]));
        assert_eq!(parse("A=\"1\"").unwrap(), pairs(&[("A", "1")]));
        assert_eq!(parse("").unwrap(), pairs(&[]));
    }

    #[test]
    fn invalid_key_rejected() {
        let input = "A=1\nB=2\n\n1BAD=3\n";
        let error = parse(input).unwrap_err();
        assert_eq!(
            error,
            DotenvError::InvalidKey {
                line: 4,
                key: "1BAD".to_owned()
            }
        );
        assert_eq!(
            error.to_string(),
            "line 4: invalid key `1BAD`: keys start with a letter or `_` and contain only \
             letters, digits and `_`"
        );
    }

    #[test]
    fn invalid_key_characters_rejected() {
        for key in ["MY-KEY", "MY KEY", "clé", "A.B"] {
            let error = parse(&format!("{key}=1")).unwrap_err();
            assert_eq!(
                error,
                DotenvError::InvalidKey {
                    line: 1,
                    key: key.to_owned()
                },
                "{key}"
            );
        }
    }

    #[test]
    fn invalid_key_shortened_in_message() {
        let key = format!("{}\u{1b}", "x".repeat(39));
        let error = parse(&format!("{key}-{}=1", "y".repeat(100))).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "line 1: invalid key `{}\\u{{1b}}…`: keys start with a letter or `_` and \
                 contain only letters, digits and `_`",
                "x".repeat(39)
            )
        );
    }

    #[test]
    fn missing_key_rejected() {
        assert_eq!(
            parse("A=1\n=value\n").unwrap_err(),
            DotenvError::MissingKey { line: 2 }
        );
    }

    #[test]
    fn missing_equals_rejected() {
        let error = parse("A=1\nsk_live_abcdef\n").unwrap_err();
        assert_eq!(error, DotenvError::MissingEquals { line: 2 });
        assert!(!error.to_string().contains("sk_live"));
        assert_eq!(
            parse("export A\n").unwrap_err(),
            DotenvError::MissingEquals { line: 1 }
        );
    }

    #[test]
    fn unterminated_quotes_rejected() {
        let error = parse("A=1\nB=\"never\nclosed\nC=3\n").unwrap_err();
        assert_eq!(
            error,
            DotenvError::UnterminatedQuote {
                line: 2,
                key: "B".to_owned(),
                quote: '"'
            }
        );
        assert_eq!(
            error.to_string(),
            "line 2: the double-quoted value of `B` is never closed; add the closing \""
        );

        let error = parse("A='open").unwrap_err();
        assert_eq!(
            error,
            DotenvError::UnterminatedQuote {
                line: 1,
                key: "A".to_owned(),
                quote: '\''
            }
        );
        assert_eq!(
            parse("A=\"ends in backslash\\").unwrap_err(),
            DotenvError::UnterminatedQuote {
                line: 1,
                key: "A".to_owned(),
                quote: '"'
            }
        );
    }

    #[test]
    fn text_after_quote_rejected() {
        let error = parse("A=1\nB=\"x\ny\"z\n").unwrap_err();
        assert_eq!(
            error,
            DotenvError::TextAfterQuote {
                line: 3,
                key: "B".to_owned()
            }
        );
        assert_eq!(
            parse("A='a' 'b'\n").unwrap_err(),
            DotenvError::TextAfterQuote {
                line: 1,
                key: "A".to_owned()
            }
        );
    }

    #[test]
    fn line_numbers_after_multiline_value() {
        let error = parse("A=\"1\n2\n3\"\nB=ok\n9X=1\n").unwrap_err();
        assert_eq!(error.line(), 5);
    }

    #[test]
    fn errors_never_show_values() {
        let error = parse("A=\"s3cr3t\"tail\n").unwrap_err();
        assert!(!error.to_string().contains("s3cr3t"));
        let error = parse("A=\"s3cr3t\n").unwrap_err();
        assert!(!error.to_string().contains("s3cr3t"));
    }

    #[test]
    fn render_bare_and_quoted() {
        let entries = pairs(&[
            ("REF", "lk://prod/db/password"),
            ("EMPTY", ""),
            ("SPACE", "two words"),
            ("QUOTES", "say \"hi\" it's"),
            ("DOLLAR", "$HOME\\x"),
            ("CONTROL", "a\tb\rc"),
            ("HASH", "a#b"),
        ]);
        let rendered = render(&entries);
        assert_eq!(
            rendered,
            "REF=lk://prod/db/password\n\
             EMPTY=\n\
             SPACE=\"two words\"\n\
             QUOTES=\"say \\\"hi\\\" it's\"\n\
             DOLLAR=\"\\$HOME\\\\x\"\n\
             CONTROL=\"a\\tb\\rc\"\n\
             HASH=\"a#b\"\n"
        );
        assert_eq!(parse(&rendered).unwrap(), entries);
    }

    #[test]
    fn render_crlf_value_round_trips() {
        let entries = pairs(&[("A", "x\r\ny"), ("B", " lead"), ("C", "trail\t")]);
        assert_eq!(parse(&render(&entries)).unwrap(), entries);
    }

    fn value_strategy() -> impl Strategy<Value = String> {
        let character = prop_oneof![
            3 => any::<char>().prop_filter("no NUL", |c| *c != '\0'),
            2 => prop::sample::select(vec![
                '"', '\'', '\\', '$', '#', '=', ' ', '\t', '\r', '\n', 'n', 'é', '\u{feff}'
            ]),
        ];
        prop::collection::vec(character, 0..40).prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #[test]
        fn render_parse_round_trip(
            entries in prop::collection::vec(("[A-Za-z_][A-Za-z0-9_]{0,15}", value_strategy()), 0..8)
        ) {
            let rendered = render(&entries);
            prop_assert_eq!(parse(&rendered), Ok(entries));
        }

        #[test]
        fn parse_never_panics(input in any::<String>()) {
            let _ = parse(&input);
        }

        #[test]
        fn parse_of_syntax_mix_never_panics(input in "[A=\"'\\\\#\r\n \texport]{0,60}") {
            let _ = parse(&input);
        }
    }
}
