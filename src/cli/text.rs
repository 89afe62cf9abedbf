//! The one sanitizer of what a server sends before it reaches a terminal: every string the
//! CLI prints for people (summaries, table cells, errors, hints) goes through [`one_line`].
//! `-o json` keeps the exact values scripts need, and goes through [`json_escaped`], which
//! writes the same characters as JSON `\u` escapes instead.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// What takes the place of a character that must not reach the terminal: visible, one
/// column wide, so a disguised value shows that it is one.
pub const REPLACEMENT: char = '\u{FFFD}';

/// Returns `text` safe to print on one line: line breaks, tabs and other whitespace become
/// one space (runs of them too; none at the ends); control characters (ESC and the other
/// C0 and C1 codes, DEL) and format characters (bidi embeddings, overrides and isolates,
/// zero-width spaces and joiners, the BOM, tag characters) become [`REPLACEMENT`].
pub fn one_line(text: &str) -> String {
    let mut line = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            space = !line.is_empty();
            continue;
        }
        if space {
            line.push(' ');
            space = false;
        }
        line.push(if hidden(c) { REPLACEMENT } else { c });
    }
    line
}

/// Returns serialized JSON with every character [`one_line`] would hide written as a `\u`
/// escape (a UTF-16 surrogate pair above U+FFFF): the same JSON value, so `jq` reads back
/// the exact strings, but no DEL, C1 control, bidi override or zero-width character
/// reaches the terminal raw (serde_json escapes only the C0 controls). Such characters can
/// only be inside strings, since JSON's structure is ASCII; the line breaks between
/// members are kept.
pub fn json_escaped(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c != '\n' && hidden(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a character changes how the terminal shows what follows, or shows as nothing.
fn hidden(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_its_value_and_loses_the_hidden_characters() {
        let value = serde_json::json!({
            "note": "a\u{202e}b\u{85}c\u{7f}d\u{e0041}e\u{2028}",
            "plain": "é ü \\ \"q\""
        });
        let text = json_escaped(&serde_json::to_string_pretty(&value).unwrap());
        for raw in ['\u{202e}', '\u{85}', '\u{7f}', '\u{e0041}', '\u{2028}'] {
            assert!(!text.contains(raw), "{raw:?} in {text}");
        }
        assert!(
            text.contains("\\u202e") && text.contains("\\udb40\\udc41"),
            "{text}"
        );
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
        assert!(text.contains('\n'), "still pretty");
    }

    #[test]
    fn controls_and_format_characters_are_replaced_and_whitespace_is_one_space() {
        assert_eq!(one_line("a\u{1b}[2Jb"), "a\u{FFFD}[2Jb");
        assert_eq!(one_line(" a\n\tb\r\n c \u{2028}"), "a b c");
        for hidden in [
            '\u{0}',
            '\u{7}',
            '\u{7f}',
            '\u{9b}',
            '\u{ad}',
            '\u{200b}',
            '\u{200d}',
            '\u{200e}',
            '\u{202a}',
            '\u{202e}',
            '\u{2066}',
            '\u{2069}',
            '\u{2060}',
            '\u{feff}',
            '\u{e0041}',
        ] {
            assert_eq!(one_line(&format!("x{hidden}y")), "x\u{FFFD}y", "{hidden:?}");
        }
        assert_eq!(one_line("Schlüssel – ключ 鍵 ✓"), "Schlüssel – ключ 鍵 ✓");
        assert_eq!(one_line(""), "");
    }
}
