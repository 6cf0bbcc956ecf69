//! Human tables and `--format json`.

use std::io::Write;

use clap::ValueEnum;

/// Writes to standard output for [`out!`] and [`outln!`]. A closed pipe ends the process
/// with exit code 0, and any other write error with exit code 1 and a message.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    let Err(error) = std::io::stdout().lock().write_fmt(args) else {
        return;
    };
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("lk: writing to standard output failed: {error}");
    std::process::exit(crate::error::EXIT_ERROR);
}

/// The global `--format`. Most commands print a table or JSON; `lk audit export` also
/// writes JSON Lines or CSV, and `lk report access` Markdown, CSV or HTML.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Jsonl,
    Csv,
    Md,
    Html,
}

impl Format {
    /// True for the formats every command prints: a table or JSON.
    pub fn is_output(self) -> bool {
        matches!(self, Format::Table | Format::Json)
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Json => "json",
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Md => "md",
            Format::Html => "html",
        }
    }
}

/// Prints rows as aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<&str>| -> String {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        text.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

pub fn json(value: &impl serde::Serialize) {
    if let Ok(text) = serde_json::to_string_pretty(value) {
        outln!("{text}");
    }
}

pub fn tags_text(tags: &serde_json::Map<String, serde_json::Value>) -> String {
    tags.iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",")
}
