//! Every `user_id` a raw message body names, found by a lenient scan: the body of a rejected
//! message may be truncated, followed by garbage, an array, deeply nested, or repeat its keys,
//! and erasure must still find it. Pure text work: no JSON parser, no keys, no SQL.

/// Every value that follows a `user_id` key anywhere in `body` — JSON strings (escapes decoded,
/// a truncated string up to where it stops), bare scalars (`"user_id": 42`), and unquoted keys
/// (`{user_id: "x"}`) — sorted and without repeats. `null` and empty values are skipped.
pub fn user_ids_in(body: &str) -> Vec<String> {
    let bytes = body.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let (key, after_key) = match bytes[i] {
            b'"' => read_string(body, i + 1),
            b'u' if is_bare_key(body, i) => ("user_id".to_owned(), i + "user_id".len()),
            _ => {
                i += 1;
                continue;
            }
        };
        i = after_key;
        if key != "user_id" {
            continue;
        }
        let colon = skip_whitespace(bytes, after_key);
        if bytes.get(colon) != Some(&b':') {
            continue;
        }
        let start = skip_whitespace(bytes, colon + 1);
        let (value, end) = match bytes.get(start) {
            Some(b'"') => read_string(body, start + 1),
            Some(_) => read_scalar(body, start),
            None => break,
        };
        if !value.is_empty() && value != "null" {
            found.push(value);
        }
        i = end;
    }
    found.sort_unstable();
    found.dedup();
    found
}

/// `user_id` spelled without quotes at `at`, as a whole word.
fn is_bare_key(body: &str, at: usize) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = body.as_bytes();
    body[at..].starts_with("user_id")
        && (at == 0 || !word(bytes[at - 1]))
        && bytes.get(at + "user_id".len()).is_none_or(|&b| !word(b))
}

fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

/// A bare value: up to the next delimiter.
fn read_scalar(body: &str, start: usize) -> (String, usize) {
    let end = body[start..]
        .find(|c: char| matches!(c, ',' | '}' | ']' | '{' | '[' | '"') || c.is_whitespace())
        .map_or(body.len(), |n| start + n);
    (body[start..end].to_owned(), end)
}

/// A JSON string starting after its opening quote at `start`: the decoded text and the index
/// after the closing quote (or the end of the body when it never closes).
fn read_string(body: &str, start: usize) -> (String, usize) {
    let mut out = String::new();
    let mut chars = body[start..].char_indices().peekable();
    while let Some((offset, c)) = chars.next() {
        match c {
            '"' => return (out, start + offset + 1),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, 'b')) => out.push('\u{8}'),
                Some((_, 'f')) => out.push('\u{c}'),
                Some((_, 'u')) => {
                    let unit = hex4(&mut chars);
                    match unit {
                        Some(high @ 0xD800..=0xDBFF) => {
                            let low = (chars.peek().map(|&(_, c)| c) == Some('\\'))
                                .then(|| {
                                    let mut ahead = chars.clone();
                                    ahead.next();
                                    (ahead.next().map(|(_, c)| c) == Some('u'))
                                        .then(|| hex4(&mut ahead).map(|low| (low, ahead)))
                                        .flatten()
                                })
                                .flatten();
                            match low {
                                Some((low @ 0xDC00..=0xDFFF, ahead)) => {
                                    chars = ahead;
                                    let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                                    out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                                }
                                _ => out.push('\u{fffd}'),
                            }
                        }
                        Some(code) => out.push(char::from_u32(code).unwrap_or('\u{fffd}')),
                        None => out.push('\u{fffd}'),
                    }
                }
                Some((_, other)) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    (out, body.len())
}

fn hex4(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) -> Option<u32> {
    let mut code = 0;
    for _ in 0..4 {
        let (_, c) = chars.next_if(|(_, c)| c.is_ascii_hexdigit())?;
        code = code * 16 + c.to_digit(16)?;
    }
    Some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(body: &str) -> Vec<String> {
        user_ids_in(body)
    }

    #[test]
    fn every_shape_that_names_the_user_is_found() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        for body in [
            r#"{"user_id":"victim","ip":"10.0.0.1"}"#,
            r#"{"user_id":"victim","ip":"10.0.0"#,
            r#"{"user_id": "victim"} trailing garbage"#,
            r#"[{"user_id":"victim"},{"user_id":"victim"}]"#,
            r#"{"a":{"b":{"c":[{"user_id":"victim"}]}}}"#,
            r#"{"user\u005fid":"vi\u0063tim"}"#,
            r#"{user_id: "victim"}"#,
            r#"{"user_id":"victim" /* comment */}"#,
        ] {
            assert_eq!(ids(body), v(&["victim"]), "{body}");
        }
        assert_eq!(
            ids(r#"{"user_id":"u-a","user_id":"u-b","ip":"x"}"#),
            v(&["u-a", "u-b"]),
            "repeated keys: both"
        );
        assert_eq!(ids(r#"{"user_id": 42}"#), v(&["42"]));
        assert_eq!(ids(r#"{"user_id":"trunc"#), v(&["trunc"]));
        assert_eq!(ids(r#"{"user_id":"\ud83d\ude00x"}"#), v(&["\u{1f600}x"]));
        assert_eq!(ids(r#"{"user_id":"\ud83dx"}"#), v(&["\u{fffd}x"]));
    }

    #[test]
    fn values_named_like_the_key_are_not_keys() {
        assert!(ids(r#"{"note":"user_id","user_idx":"a","xuser_id":"b"}"#).is_empty());
        assert!(ids(r#"{"note":"the user_id: c"}"#).is_empty());
        assert!(ids(r#"{"user_id":null}"#).is_empty());
        assert!(ids(r#"{"user_id":""}"#).is_empty());
        assert!(ids("").is_empty());
        assert!(ids("\"").is_empty());
        assert!(ids("{\"user_id\"").is_empty());
        assert!(ids("{\"user_id\":").is_empty());
        assert!(ids("user_id").is_empty());
    }
}
