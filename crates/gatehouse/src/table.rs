//! Readable tables for terminals.

/// Renders rows under headers with columns padded to their widest cell.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i >= widths.len() {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// Makes a cell of arbitrary text safe for one table line: control characters are escaped
/// so statement text cannot forge rows or move the terminal cursor.
pub fn cell(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.chars().count() >= max {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push(' '),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let t = render(&["A", "BBB"], &[vec!["xx".into(), "y".into()]]);
        assert_eq!(t, "A   BBB\nxx  y\n");
    }

    #[test]
    fn rows_wider_than_the_headers_do_not_panic() {
        let t = render(&["A"], &[vec!["x".into(), "extra".into()]]);
        assert!(t.contains("extra"));
    }

    #[test]
    fn control_characters_cannot_break_a_line() {
        assert_eq!(cell("a\nb\x1b[2J", 100), "a\\nb\\u{1b}[2J");
        assert_eq!(cell("abcdef", 3), "abc…");
    }
}
