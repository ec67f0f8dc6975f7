//! Printing rows as an aligned table or as CSV, shared by the commands that offer both.
//!
//! Cells often hold client-supplied text (a device id, a user id, an audit reason), so every cell
//! of a table or CSV row goes through [`cell`] before it is printed:
//!
//! - **Control characters are escaped**, never emitted: C0 controls (tab, CR, LF, ESC, …), DEL,
//!   C1 controls (U+0080–U+009F), the bidirectional embedding/override/isolate characters
//!   (U+202A–U+202E, U+2066–U+2069) and marks (U+200E, U+200F, U+061C), and the line and paragraph
//!   separators (U+2028, U+2029) print as `\u{1b}` (Rust's spelling, lower-case hex). A backslash
//!   prints as `\\`, so every backslash in the output starts an escape and the output reads back
//!   unambiguously. A value can therefore never start a terminal escape sequence, hyperlink, or
//!   reorder the text around it.
//! - **Formula injection is neutralised** (OWASP "CSV injection"): a cell whose value begins with
//!   `=`, `+`, `-`, `@`, tab or CR gets a leading `'`, so a spreadsheet shows it as text instead of
//!   evaluating it. A negative number such as `-5` is neutralised too (`'-5`): the numeric columns
//!   piivault prints (key versions, counts) are never negative, so only client text is affected,
//!   and a rule without exceptions cannot be tricked (`-2+3`, `-1+cmd|…`). A value that itself
//!   begins with `'` gets one more `'`, so stripping exactly one leading `'` from any cell that
//!   begins with one gives the value back. Tables apply the same rule, since a table is often
//!   pasted into a spreadsheet.
//! - CSV cells are then quoted per RFC 4180 when they contain `,` or `"`.
//!
//! JSON output does not come through here: it carries the exact values, escaped by JSON itself.

use std::fmt::Write as _;

use super::print_line;
use crate::error::Error;

/// Prints `header` and `rows` as columns two spaces apart, each as wide as its widest cell.
/// Every row cell is made safe with [`cell`].
pub fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> Result<(), Error> {
    let header = header.map(String::from);
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|row| row.each_ref().map(|c| cell(c)))
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        print_line(cells.join("  ").trim_end())?;
    }
    Ok(())
}

/// Prints `header` and `rows` as RFC 4180 CSV. Every row cell is made safe with [`cell`].
pub fn print_csv<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> Result<(), Error> {
    let header: Vec<String> = header.iter().map(|h| csv_field(h)).collect();
    print_line(&header.join(","))?;
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| csv_field(&cell(c))).collect();
        print_line(&cells.join(","))?;
    }
    Ok(())
}

/// A value made safe for a table or CSV cell: control and bidi characters escaped, and a leading
/// formula character neutralised with `'` (see the module documentation).
pub fn cell(value: &str) -> String {
    let escaped = escape(value);
    match value.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r' | '\'') => format!("'{escaped}"),
        _ => escaped,
    }
}

/// `value` with backslashes doubled and every [unsafe](is_unsafe) character written as
/// `\u{<hex>}`.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// Characters a terminal or text viewer acts on instead of showing: C0, DEL and C1 controls
/// (`char::is_control`), bidi embeddings, overrides, isolates and marks, and the Unicode line and
/// paragraph separators.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{061c}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// RFC 4180 quoting when a field needs it.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a CSV row cell becomes.
    fn csv(value: &str) -> String {
        csv_field(&cell(value))
    }

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv("a,b"), "\"a,b\"");
        assert_eq!(csv("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn normal_values_are_unchanged() {
        for value in [
            "",
            "593-47-5928",
            "199.172.111.135",
            "::1",
            "2001:db8::1",
            "424cdd21-063a-43a7-b91b-7ca1a833afae",
            "v1:AbC-_x",
            "file-0123abcd-7",
            "2026-11-01T00:00:00.000000Z",
            "42",
            "dé-📱 ok",
            "a=b+c-d@e",
        ] {
            assert_eq!(cell(value), value);
            assert_eq!(csv(value), value);
        }
    }

    #[test]
    fn escape_sequences_never_reach_the_output() {
        let osc8 = "\u{1b}]8;;http://x\u{7}click\u{1b}]8;;\u{7}";
        let out = cell(osc8);
        assert_eq!(out, "\\u{1b}]8;;http://x\\u{7}click\\u{1b}]8;;\\u{7}");
        assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'));
        assert_eq!(cell("\u{1b}[2J\u{1b}[31mred"), "\\u{1b}[2J\\u{1b}[31mred");
        assert_eq!(cell("a\nb\rc"), "a\\u{a}b\\u{d}c");
        assert_eq!(cell("x\u{0}y\u{7f}"), "x\\u{0}y\\u{7f}");
        // A newline in a CSV cell is escaped, so the row stays one line and needs no quotes.
        assert_eq!(csv("a\nb"), "a\\u{a}b");
    }

    #[test]
    fn c1_controls_are_escaped() {
        // U+009B is the single-character CSI: some terminals act on it like ESC [.
        assert_eq!(cell("a\u{9b}31mb"), "a\\u{9b}31mb");
        assert_eq!(cell("\u{80}\u{85}\u{9f}"), "\\u{80}\\u{85}\\u{9f}");
        assert_eq!(cell("\u{a0}"), "\u{a0}", "NO-BREAK SPACE is not a control");
    }

    #[test]
    fn bidi_controls_are_escaped() {
        assert_eq!(cell("user\u{202e}gpj.exe"), "user\\u{202e}gpj.exe");
        for c in ('\u{202a}'..='\u{202e}').chain('\u{2066}'..='\u{2069}') {
            let out = cell(&format!("a{c}b"));
            assert_eq!(out, format!("a\\u{{{:x}}}b", u32::from(c)));
            assert!(!out.contains(c));
        }
        assert_eq!(cell("\u{200f}"), "\\u{200f}");
    }

    #[test]
    fn backslashes_are_escaped_so_output_is_unambiguous() {
        assert_eq!(cell("a\\b"), "a\\\\b");
        // The text `\u{1b}` and a real ESC print differently.
        assert_eq!(cell("\\u{1b}"), "\\\\u{1b}");
        assert_ne!(cell("\\u{1b}"), cell("\u{1b}"));
    }

    #[test]
    fn each_formula_prefix_is_neutralised() {
        assert_eq!(
            csv("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        assert_eq!(cell("=1+1"), "'=1+1");
        assert_eq!(cell("+1+1"), "'+1+1");
        assert_eq!(cell("-1+cmd|' /C calc'!A0"), "'-1+cmd|' /C calc'!A0");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("\t=1"), "'\\u{9}=1");
        assert_eq!(cell("\r=1"), "'\\u{d}=1");
        for value in ["=x", "+x", "-x", "@x", "\tx", "\rx"] {
            assert!(cell(value).starts_with('\''), "{value:?}");
            assert!(csv(value).starts_with('\''), "{value:?}");
        }
        // Only the first character counts.
        assert_eq!(cell(" =1"), " =1");
    }

    #[test]
    fn negative_numbers_are_neutralised_too() {
        assert_eq!(cell("-5"), "'-5");
        assert_eq!(csv("-5"), "'-5");
        assert_eq!(cell("-"), "'-");
    }

    #[test]
    fn a_leading_quote_is_doubled_so_one_strip_restores_the_value() {
        assert_eq!(cell("'=x"), "''=x");
        assert_eq!(cell("'plain"), "''plain");
        for value in ["=x", "'=x", "''", "-5", "plain"] {
            let out = cell(value);
            let back = out.strip_prefix('\'').unwrap_or(&out);
            assert_eq!(back, value);
        }
    }
}
