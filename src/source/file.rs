//! Backfill input: a JSON array of message bodies, or one body per line (JSON lines), plain or
//! gzip-compressed, streamed so that memory stays flat whatever the file's size.
//!
//! Message ids come from the content — `file-<sha256 of the decompressed content, 32 hex>-<position>`
//! — so loading the same file again (compressed or not) adds nothing, while identical bodies (a
//! user logging in twice from the same device) stay distinct rows, within a file and across
//! files. A file with more lines appended is a new file: load only the new lines.
//!
//! A file is read twice: [`InputFile::open`] hashes it and checks its structure, so a broken
//! array is refused before any row is written (a corrected file gets new ids and would otherwise
//! be loaded on top of a partial load); [`InputFile::for_each`] then streams the bodies.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::de::{Deserializer as _, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::{Received, SourceError};

/// Longest first line read when deciding whether a file is JSON lines of arrays.
const FIRST_LINE_MAX: u64 = 1 << 20;

/// How the bodies are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// One JSON array; every element is a body.
    Array,
    /// Every non-blank line is a body (a malformed line becomes a quarantined message).
    Lines,
}

/// An input file whose structure has been checked and whose content id is known.
#[derive(Debug)]
pub struct InputFile {
    path: PathBuf,
    layout: Layout,
    file_id: String,
    loaded_at: DateTime<Utc>,
    size: u64,
    read: Arc<AtomicU64>,
}

impl InputFile {
    /// Reads the file once: hashes its (decompressed) content and checks its layout.
    pub fn open(path: &Path) -> Result<InputFile, SourceError> {
        let mut reader = HashingReader::new(open_decompressed(path)?);
        let layout = detect_layout(path, &mut reader)?;
        io::copy(&mut reader, &mut io::sink()).map_err(read_error(path))?;
        Ok(InputFile {
            path: path.to_owned(),
            layout,
            size: reader.len,
            file_id: hex::encode(&reader.hasher.finalize()[..16]),
            loaded_at: Utc::now(),
            read: Arc::default(),
        })
    }

    /// Size of the (decompressed) content in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes [`InputFile::for_each`] has read so far, for a progress display.
    pub fn bytes_read(&self) -> Arc<AtomicU64> {
        self.read.clone()
    }

    /// Streams every body in file order to `sink`, which returns `false` to stop early.
    /// Returns how many bodies were passed on.
    pub fn for_each(&self, mut sink: impl FnMut(Received) -> bool) -> Result<u64, SourceError> {
        let counted = CountingReader {
            inner: open_decompressed(&self.path)?,
            read: self.read.clone(),
        };
        let mut reader = BufReader::with_capacity(1 << 16, counted);
        skip_bom(&mut reader).map_err(read_error(&self.path))?;
        let mut position = 0u64;
        let mut emit = |body: String| {
            position += 1;
            sink(Received {
                message_id: format!("file-{}-{position}", self.file_id),
                receipt_handle: None,
                sent_at: self.loaded_at,
                body,
            })
        };
        match self.layout {
            Layout::Lines => {
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader
                        .read_line(&mut line)
                        .map_err(read_error(&self.path))?
                        == 0
                    {
                        break;
                    }
                    let body = line.strip_suffix('\n').unwrap_or(&line);
                    let body = body.strip_suffix('\r').unwrap_or(body);
                    if !body.trim().is_empty() && !emit(body.to_owned()) {
                        break;
                    }
                }
            }
            Layout::Array => {
                let mut de = serde_json::Deserializer::from_reader(reader);
                match de.deserialize_seq(Elements(&mut emit)) {
                    Ok(()) => {}
                    Err(e) if e.to_string().starts_with(STOPPED) => {}
                    Err(e) => return Err(self.format_error(&e)),
                }
            }
        }
        Ok(position)
    }

    fn format_error(&self, e: &serde_json::Error) -> SourceError {
        SourceError::FileFormat {
            path: self.path.display().to_string(),
            detail: format!("error at line {}, column {}", e.line(), e.column()),
        }
    }
}

/// The error a sink's "stop" travels as through serde (never shown to a user).
const STOPPED: &str = "piivault: input stopped";

/// Passes each array element, as its exact text, to the sink.
struct Elements<'a, F>(&'a mut F);

impl<'de, F: FnMut(String) -> bool> Visitor<'de> for Elements<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of message bodies")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            if !(self.0)(String::from(Box::<str>::from(raw))) {
                return Err(serde::de::Error::custom(STOPPED));
            }
        }
        Ok(())
    }
}

/// A file starting with `[` that parses as one array is an array of bodies; otherwise every
/// non-blank line is a body, provided the first one is JSON (lines of arrays, say).
fn detect_layout(path: &Path, reader: &mut HashingReader) -> Result<Layout, SourceError> {
    let mut buffered = BufReader::new(reader);
    skip_bom(&mut buffered).map_err(read_error(path))?;
    let first = loop {
        let chunk = buffered.fill_buf().map_err(read_error(path))?;
        match chunk.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => break Some(chunk[i]),
            None if chunk.is_empty() => break None,
            None => {
                let n = chunk.len();
                buffered.consume(n);
            }
        }
    };
    if first != Some(b'[') {
        drain(buffered, path)?;
        return Ok(Layout::Lines);
    }
    let mut de = serde_json::Deserializer::from_reader(&mut buffered);
    let array = <IgnoredAny as serde::Deserialize>::deserialize(&mut de).and_then(|_| de.end());
    drain(buffered, path)?;
    match array {
        Ok(()) => Ok(Layout::Array),
        Err(_) if first_line_is_json(path)? => Ok(Layout::Lines), // lines that are arrays
        Err(array_error) => Err(SourceError::FileFormat {
            path: path.display().to_string(),
            detail: format!(
                "error at line {}, column {}",
                array_error.line(),
                array_error.column()
            ),
        }),
    }
}

/// Reads the rest of a buffered reader so the hash covers the whole file.
fn drain<R: Read>(mut reader: R, path: &Path) -> Result<(), SourceError> {
    io::copy(&mut reader, &mut io::sink()).map_err(read_error(path))?;
    Ok(())
}

fn first_line_is_json(path: &Path) -> Result<bool, SourceError> {
    let mut reader = BufReader::new(open_decompressed(path)?.take(FIRST_LINE_MAX));
    skip_bom(&mut reader).map_err(read_error(path))?;
    let mut line = String::new();
    while line.trim().is_empty() {
        line.clear();
        if reader.read_line(&mut line).map_err(read_error(path))? == 0 {
            return Ok(false);
        }
    }
    Ok(serde_json::from_str::<IgnoredAny>(&line).is_ok())
}

/// Skips a UTF-8 byte-order mark at the start.
fn skip_bom<R: BufRead>(reader: &mut R) -> io::Result<()> {
    if reader.fill_buf()?.starts_with(b"\xEF\xBB\xBF") {
        reader.consume(3);
    }
    Ok(())
}

/// The file's content, gunzipped when it starts with the gzip magic bytes.
fn open_decompressed(path: &Path) -> Result<Box<dyn Read + Send>, SourceError> {
    let mut file = BufReader::new(File::open(path).map_err(read_error(path))?);
    let gzip = file
        .fill_buf()
        .map_err(read_error(path))?
        .starts_with(&[0x1f, 0x8b]);
    Ok(if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    })
}

fn read_error(path: &Path) -> impl Fn(io::Error) -> SourceError + '_ {
    move |source| SourceError::FileRead {
        path: path.display().to_string(),
        source,
    }
}

/// Hashes and counts every byte read through it.
struct HashingReader {
    inner: Box<dyn Read + Send>,
    hasher: Sha256,
    len: u64,
}

impl HashingReader {
    fn new(inner: Box<dyn Read + Send>) -> HashingReader {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Publishes how many bytes have been read through it.
struct CountingReader {
    inner: Box<dyn Read + Send>,
    read: Arc<AtomicU64>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> Result<Vec<Received>, SourceError> {
        let input = InputFile::open(path)?;
        let mut all = Vec::new();
        input.for_each(|r| {
            all.push(r);
            true
        })?;
        Ok(all)
    }

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
    fn ids_match_the_sha256_of_the_content() {
        let text = "\u{feff}{\"user_id\":\"a\"}\r\n{\"user_id\":\"b\"}";
        let expected = hex::encode(&Sha256::digest(text.as_bytes())[..16]);
        assert_eq!(
            ids(text),
            vec![format!("file-{expected}-1"), format!("file-{expected}-2")]
        );
    }

    #[test]
    fn bodies_are_the_exact_element_and_line_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.json");
        std::fs::write(&path, "\u{feff}[ {\"a\": 1} ,\n  \"x\\n\", null]").unwrap();
        let bodies: Vec<String> = read(&path).unwrap().into_iter().map(|r| r.body).collect();
        assert_eq!(bodies, ["{\"a\": 1}", "\"x\\n\"", "null"]);
        std::fs::write(&path, "{\"a\": 1}\r\n  \n{\"b\":2}").unwrap();
        let bodies: Vec<String> = read(&path).unwrap().into_iter().map(|r| r.body).collect();
        assert_eq!(bodies, ["{\"a\": 1}", "{\"b\":2}"]);
    }

    #[test]
    fn a_gzipped_file_has_the_ids_and_bodies_of_the_plain_one() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let text = "[{\"user_id\":\"a\"},{\"user_id\":\"b\"}]";
        let plain = dir.path().join("in.json");
        std::fs::write(&plain, text).unwrap();
        let gz = dir.path().join("in.json.gz");
        let mut encoder =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), Default::default());
        encoder.write_all(text.as_bytes()).unwrap();
        encoder.finish().unwrap();
        let pairs = |p: &Path| -> Vec<(String, String)> {
            read(p)
                .unwrap()
                .into_iter()
                .map(|r| (r.message_id, r.body))
                .collect()
        };
        assert_eq!(pairs(&gz), pairs(&plain));
        assert_eq!(pairs(&gz).len(), 2);
        let input = InputFile::open(&gz).unwrap();
        assert_eq!(input.size(), text.len() as u64, "the decompressed size");
        input.for_each(|_| true).unwrap();
        assert_eq!(
            input.bytes_read().load(Ordering::Relaxed),
            text.len() as u64
        );
    }

    #[test]
    fn a_sink_can_stop_early() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.json");
        std::fs::write(&path, "[1,2,3,4]").unwrap();
        let input = InputFile::open(&path).unwrap();
        let mut seen = 0;
        let passed = input
            .for_each(|_| {
                seen += 1;
                seen < 2
            })
            .unwrap();
        assert_eq!((seen, passed), (2, 2));
    }

    #[test]
    fn a_broken_array_is_an_error_before_anything_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.json");
        std::fs::write(&path, "[\n{\"user_id\":\"a\"},\n").unwrap();
        assert!(matches!(
            InputFile::open(&path),
            Err(SourceError::FileFormat { .. })
        ));
    }
}
