//! The one sanitizer of what a server sends before it reaches a terminal: every string the
//! CLI prints for people (summaries, table cells, errors, hints) goes through [`one_line`].
//! `-o json` does not: JSON escapes control characters, and scripts need the exact value.

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
