//! Text from the server or the database, made safe to print on a terminal.
//!
//! Display names, binding purposes, caller identities, audit fields and
//! error details are chosen by whoever wrote them, and may hold control
//! characters: an escape sequence in a display name could rewrite the
//! screen, retitle the terminal or hide a line. Every human-readable printer
//! passes such text through [`printable`]; JSON output needs no help (JSON
//! escapes control characters itself).

use std::borrow::Cow;

/// `text` with every control character (C0, DEL, C1) and every Unicode
/// bidirectional control escaped as Rust writes them (`\n`, `\u{1b}`,
/// `\u{202e}`); borrowed unchanged when there is none.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(
            printable("OpenAI prod – ünïcode"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            printable("a\u{1b}[2J\u{1b}]0;x\u{7}b\nc\td\r\u{7f}\u{9b}"),
            "a\\u{1b}[2J\\u{1b}]0;x\\u{7}b\\nc\\td\\r\\u{7f}\\u{9b}"
        );
        assert_eq!(printable("abc\u{202e}fed"), "abc\\u{202e}fed");
        // A backslash is not a control character: kept as it is.
        assert_eq!(printable("C:\\path"), "C:\\path");
    }
}
