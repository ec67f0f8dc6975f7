//! Printing rows as an aligned table or as CSV, shared by the commands that offer both.

use super::print_line;
use crate::error::Error;

/// Prints `header` and `rows` as columns two spaces apart, each as wide as its widest cell.
pub fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> Result<(), Error> {
    let header = header.map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        print_line(cells.join("  ").trim_end())?;
    }
    Ok(())
}

/// Prints `header` and `rows` as RFC 4180 CSV.
pub fn print_csv<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> Result<(), Error> {
    print_line(&header.join(","))?;
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| csv_field(c)).collect();
        print_line(&cells.join(","))?;
    }
    Ok(())
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

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
