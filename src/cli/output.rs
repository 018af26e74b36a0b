//! Printing results: aligned text for people, JSON for scripts.
//!
//! JSON objects use the proto field names (`token_id`, `create_time`, ...),
//! with timestamps as RFC 3339 strings, like the protobuf JSON mapping.

use std::io::Write;

use clap::ValueEnum;
use prost_types::Timestamp;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::printable::printable;
use crate::api::pb::Token;

/// `--output`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned text for people.
    #[default]
    Table,
    /// JSON for scripts (errors too, on stderr).
    Json,
}

/// Prints one token's metadata.
pub fn token(format: OutputFormat, token: &Token) {
    match format {
        OutputFormat::Json => println!("{}", token_json(token)),
        OutputFormat::Table => {
            let rows = [
                ("name", token.name.clone()),
                ("token_id", token.token_id.clone()),
                ("display_name", token.display_name.clone()),
                ("state", state(token).to_owned()),
                ("create_time", time(token.create_time.as_ref())),
                ("update_time", time(token.update_time.as_ref())),
                ("last_resolve", time(token.last_resolve_time.as_ref())),
                ("resolve_count", token.resolve_count.to_string()),
                ("replaces", token.replaces.clone()),
                ("replaced_by", token.replaced_by.clone()),
                ("etag", token.etag.clone()),
            ];
            fields(&rows);
        }
    }
}

/// Prints a listing.
pub fn tokens(format: OutputFormat, parent: &str, tokens: &[Token]) {
    match format {
        OutputFormat::Json => {
            let tokens: Vec<Value> = tokens.iter().map(token_json).collect();
            println!("{}", json!({ "tokens": tokens }));
        }
        OutputFormat::Table if tokens.is_empty() => {
            println!("no tokens in {}", printable(parent));
        }
        OutputFormat::Table => {
            let header = ["TOKEN ID", "DISPLAY NAME", "CREATED", "UPDATED", "ETAG"];
            let rows: Vec<[String; 5]> = tokens
                .iter()
                .map(|t| {
                    [
                        t.token_id.clone(),
                        t.display_name.clone(),
                        time(t.create_time.as_ref()),
                        time(t.update_time.as_ref()),
                        t.etag.clone(),
                    ]
                })
                .collect();
            table(header, &rows);
        }
    }
}

/// Prints the outcome of a removal.
pub fn removed(format: OutputFormat, name: &str) {
    match format {
        OutputFormat::Json => println!("{}", json!({ "name": name, "removed": true })),
        OutputFormat::Table => println!("removed {}", printable(name)),
    }
}

/// Prints a resolved value: bare (plus a newline) in table mode so that
/// `$(aitokens token resolve ...)` yields exactly the value.
pub fn value(format: OutputFormat, name: &str, value: &str) -> std::io::Result<()> {
    // Built by hand (not through a serde_json::Value) so that the one copy of
    // the value sits in a buffer that is zeroized on drop.
    let text = Zeroizing::new(match format {
        OutputFormat::Json => {
            let quoted = Zeroizing::new(serde_json::to_string(value)?);
            format!("{{\"name\":{},\"value\":{}}}", Value::from(name), *quoted)
        }
        OutputFormat::Table => value.to_owned(),
    });
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.write_all(b"\n")?;
    stdout.flush()
}

fn token_json(token: &Token) -> Value {
    json!({
        "name": token.name,
        "token_id": token.token_id,
        "display_name": token.display_name,
        "state": state(token),
        "create_time": time(token.create_time.as_ref()),
        "update_time": time(token.update_time.as_ref()),
        "last_resolve_time": time(token.last_resolve_time.as_ref()),
        "resolve_count": token.resolve_count,
        "replaces": token.replaces,
        "replaced_by": token.replaced_by,
        "etag": token.etag,
    })
}

fn state(token: &Token) -> &'static str {
    match token.state() {
        crate::api::pb::token::State::Disabled => "disabled",
        _ => "enabled",
    }
}

/// `key value` lines for people, skipping empty values (escaped, see
/// [`printable`]).
pub fn fields(rows: &[(&str, String)]) {
    print!("{}", fields_text(rows));
}

/// The text of [`fields`]: every value starts in the same column, one past
/// the longest key shown.
fn fields_text(rows: &[(&str, String)]) -> String {
    let shown: Vec<_> = rows.iter().filter(|(_, v)| !v.is_empty()).collect();
    let width = shown.iter().map(|(key, _)| key.chars().count()).max();
    let width = width.unwrap_or(0);
    shown
        .iter()
        .map(|(key, value)| format!("{key:<width$}  {}\n", printable(value)))
        .collect()
}

/// Prints `rows` under `header` as aligned columns (cells escaped, see
/// [`printable`]).
pub fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|row| row.each_ref().map(|cell| printable(cell).into_owned()))
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text
    };
    println!("{}", line(header));
    for row in &rows {
        println!("{}", line(row.each_ref().map(String::as_str)));
    }
}

/// RFC 3339 in UTC, to the second.
pub fn time(t: Option<&Timestamp>) -> String {
    t.map(|t| {
        Timestamp {
            seconds: t.seconds,
            nanos: 0,
        }
        .to_string()
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_values_line_up_whatever_the_longest_key() {
        let text = fields_text(&[
            ("name", "tenants/acme/tokens/old".to_owned()),
            ("replaced_by", String::new()),
            ("last_superseded", "2026-01-01T00:00:00Z".to_owned()),
            ("window", "86400s".to_owned()),
        ]);
        assert_eq!(
            text,
            "name             tenants/acme/tokens/old\n\
             last_superseded  2026-01-01T00:00:00Z\n\
             window           86400s\n"
        );
    }
}
