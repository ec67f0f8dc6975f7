//! Backfill input: a JSON array of message bodies, or one body per line (JSON lines).
//!
//! A file is loaded as a unit. Message ids come from its content — `file-<sha256 of the whole
//! file, 32 hex>-<position>` — so loading the same file again adds nothing, while identical
//! bodies (a user logging in twice from the same device) stay distinct rows, within a file and
//! across files. A file with more lines appended is a new file: load only the new lines.
//! TODO(issue 8): stream the file (and `.gz`) instead of reading it whole.

use std::path::Path;

use chrono::Utc;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::{Received, SourceError};

/// Reads every body of an input file, in file order.
pub fn read(path: &Path) -> Result<Vec<Received>, SourceError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SourceError::FileRead {
        path: shown.clone(),
        source,
    })?;
    let bodies =
        split_bodies(text.strip_prefix('\u{feff}').unwrap_or(&text)).map_err(|detail| {
            SourceError::FileFormat {
                path: shown,
                detail,
            }
        })?;
    let now = Utc::now();
    let file_id = hex::encode(&Sha256::digest(text.as_bytes())[..16]);
    Ok(bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| Received {
            message_id: format!("file-{file_id}-{}", i + 1),
            receipt_handle: None,
            sent_at: now,
            body,
        })
        .collect())
}

/// A file starting with `[` that parses as one array is an array of bodies; otherwise every
/// non-blank line is a body (a malformed line becomes a quarantined message, not a lost one).
fn split_bodies(text: &str) -> Result<Vec<String>, String> {
    if text.trim_start().starts_with('[') {
        match serde_json::from_str::<Vec<Box<RawValue>>>(text) {
            Ok(items) => return Ok(items.into_iter().map(|raw| raw.get().to_owned()).collect()),
            Err(array_error) => {
                let first_line = text
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or_default();
                if serde_json::from_str::<&RawValue>(first_line).is_err() {
                    return Err(format!(
                        "error at line {}, column {}",
                        array_error.line(),
                        array_error.column()
                    ));
                }
            }
        }
    }
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(text: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.json");
        std::fs::write(&path, text).unwrap();
        read(&path)
            .unwrap()
            .into_iter()
            .map(|r| r.message_id)
            .collect()
    }

    #[test]
    fn ids_are_stable_per_file_and_distinct_across_files() {
        let array = ids(r#"[{"user_id":"a"}, {"user_id":"b"}, {"user_id":"a"}]"#);
        assert_eq!(array.len(), 3);
        assert_ne!(array[0], array[2], "identical bodies stay distinct");
        assert!(array[0].ends_with("-1") && array[2].ends_with("-3"));
        assert_eq!(
            array,
            ids(r#"[{"user_id":"a"}, {"user_id":"b"}, {"user_id":"a"}]"#),
            "same file, same ids"
        );
        let other = ids(r#"[{"user_id":"a"}]"#);
        assert_ne!(
            other[0], array[0],
            "the same body in another file is another message"
        );
        let lines = ids("{\"user_id\":\"a\"}\n\n{\"user_id\":\"b\"}\nnot json\n");
        assert_eq!(
            lines.len(),
            3,
            "blank lines skipped, a bad line is still a message"
        );
        assert_eq!(ids("[1, 2]\n[3]\n").len(), 2, "lines that are arrays");
    }

    #[test]
    fn a_broken_array_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.json");
        std::fs::write(&path, "[\n{\"user_id\":\"a\"},\n").unwrap();
        assert!(matches!(read(&path), Err(SourceError::FileFormat { .. })));
    }
}
