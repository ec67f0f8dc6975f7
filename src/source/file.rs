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
//!
//! No body is held whole unless it fits [`BODY_MAX_BYTES`]. A line longer than that, or a line of
//! invalid UTF-8, is a message like any other and is quarantined: of an oversized line only the
//! first `BODY_MAX_BYTES + 1` bytes are read and sealed (one byte over the limit, so a replay of
//! it is still too large), the rest is skipped unread into memory. In an array, invalid UTF-8 or
//! an element over the limit makes the file malformed: it is refused before any row is written.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::de::{Deserializer as _, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::{Body, Received, SourceError};
use crate::event::{BODY_MAX_BYTES, Rejection};

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
        let mut emit = |body: Body| {
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
                // Sized once: a line never takes more than this (see `next_line`).
                let mut line = Vec::with_capacity(LINE_READ_MAX);
                while let Some(read) =
                    next_line(&mut reader, &mut line).map_err(read_error(&self.path))?
                {
                    let body = match read {
                        LineRead::Whole => {
                            let text = line.strip_suffix(b"\n").unwrap_or(&line);
                            let text = text.strip_suffix(b"\r").unwrap_or(text);
                            match std::str::from_utf8(text) {
                                Ok(text) if text.trim().is_empty() => continue,
                                Ok(text) => Body::Text(text.to_owned()),
                                Err(_) => Body::Unreadable {
                                    bytes: text.to_vec(),
                                    rejection: Rejection::NotUtf8,
                                },
                            }
                        }
                        // Blank lines are never messages, however long (ids stay positional).
                        LineRead::TooLong { blank: true, .. } => continue,
                        LineRead::TooLong {
                            bytes,
                            blank: false,
                        } => Body::Unreadable {
                            bytes: line.clone(),
                            rejection: Rejection::LineTooLong {
                                bytes,
                                max: BODY_MAX_BYTES,
                                kept: line.len(),
                            },
                        },
                    };
                    if !emit(body) {
                        break;
                    }
                }
            }
            Layout::Array => {
                let bound = ElementBound::new(reader);
                let since = bound.since.clone();
                let mut de = serde_json::Deserializer::from_reader(bound);
                let mut element =
                    |raw: Box<RawValue>| emit(Body::Text(String::from(Box::<str>::from(raw))));
                match de.deserialize_seq(Elements(&mut element, &since)) {
                    Ok(()) => {}
                    Err(e) if e.to_string().starts_with(STOPPED) => {}
                    Err(e) => return Err(array_error(&self.path, &e, &since)),
                }
            }
        }
        Ok(position)
    }
}

/// Most bytes of one line held in memory: one over [`BODY_MAX_BYTES`] tells a line that fits from
/// one that does not.
const LINE_READ_MAX: usize = BODY_MAX_BYTES + 1;

/// How [`next_line`] read a line.
#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// The buffer holds the whole line, end of line included.
    Whole,
    /// The line is longer than [`BODY_MAX_BYTES`]: the buffer holds its first [`LINE_READ_MAX`]
    /// bytes and the rest was skipped. `bytes` is its length without the `\n`; `blank` says
    /// whether it was all ASCII whitespace.
    TooLong { bytes: u64, blank: bool },
}

/// Reads the next line into `line` (cleared first), never holding more than [`LINE_READ_MAX`]
/// bytes of it; `None` at the end of the input.
fn next_line<R: BufRead>(reader: &mut R, line: &mut Vec<u8>) -> io::Result<Option<LineRead>> {
    line.clear();
    let n = reader
        .by_ref()
        .take(LINE_READ_MAX as u64)
        .read_until(b'\n', line)?;
    if n == 0 {
        return Ok(None);
    }
    if n < LINE_READ_MAX || line.ends_with(b"\n") {
        return Ok(Some(LineRead::Whole));
    }
    // A line of exactly the limit followed by "\r\n" (or a final "\r") fits once "\r" is cut.
    if line.ends_with(b"\r") {
        match reader.fill_buf()?.first() {
            None => return Ok(Some(LineRead::Whole)),
            Some(b'\n') => {
                reader.consume(1);
                return Ok(Some(LineRead::Whole));
            }
            Some(_) => {}
        }
    }
    let mut bytes = n as u64;
    let mut blank = line.iter().all(u8::is_ascii_whitespace);
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        let end = chunk.iter().position(|&b| b == b'\n');
        let rest = &chunk[..end.unwrap_or(chunk.len())];
        bytes += rest.len() as u64;
        blank &= rest.iter().all(u8::is_ascii_whitespace);
        let used = end.map_or(rest.len(), |i| i + 1);
        reader.consume(used);
        if end.is_some() {
            break;
        }
    }
    Ok(Some(LineRead::TooLong { bytes, blank }))
}

/// Bytes read since the last array element ended (so counting the separator and whitespace
/// before an element); `None` once the array is closed.
type Since = Rc<Cell<Option<u64>>>;

/// Fails a read once more than [`BODY_MAX_BYTES`] bytes have passed since the last array element
/// ended (`since`, reset by [`Elements`]): serde_json buffers an element whole, so a huge one
/// must not be read to its end.
struct ElementBound<R> {
    inner: R,
    since: Since,
}

impl<R> ElementBound<R> {
    fn new(inner: R) -> ElementBound<R> {
        ElementBound {
            inner,
            since: Rc::new(Cell::new(Some(0))),
        }
    }
}

impl<R: Read> Read for ElementBound<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(since) = self.since.get() {
            let since = since + n as u64;
            self.since.set(Some(since));
            if since > BODY_MAX_BYTES as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "an array element is too long",
                ));
            }
        }
        Ok(n)
    }
}

/// Whether [`ElementBound`] stopped the read.
fn too_long(since: &Since) -> bool {
    since.get().is_some_and(|n| n > BODY_MAX_BYTES as u64)
}

/// The error for a malformed array: positions and fixed texts only, never input.
fn array_error(path: &Path, e: &serde_json::Error, since: &Since) -> SourceError {
    let detail = if too_long(since) {
        format!(
            "an element is longer than the {BODY_MAX_BYTES} bytes a body may have, at line {}, column {}",
            e.line(),
            e.column()
        )
    } else if e.is_syntax() || e.is_eof() {
        // Syntax errors are fixed texts with a position ("invalid unicode code point at …").
        e.to_string()
    } else {
        format!("error at line {}, column {}", e.line(), e.column())
    };
    SourceError::FileFormat {
        path: path.display().to_string(),
        detail,
    }
}

/// The error a sink's "stop" travels as through serde (never shown to a user).
const STOPPED: &str = "piivault: input stopped";

/// Passes each array element, as its exact text, to the sink, and restarts the element bound.
struct Elements<'a, F>(&'a mut F, &'a Since);

impl<'de, F: FnMut(Box<RawValue>) -> bool> Visitor<'de> for Elements<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of message bodies")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            self.1.set(Some(0));
            if !(self.0)(raw) {
                return Err(serde::de::Error::custom(STOPPED));
            }
        }
        // Whatever follows the array is not an element.
        self.1.set(None);
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
    let bound = ElementBound::new(&mut buffered);
    let since = bound.since.clone();
    let mut de = serde_json::Deserializer::from_reader(bound);
    // Elements are read as the load reads them, so invalid UTF-8 in one is found here.
    let array = de
        .deserialize_seq(Elements(&mut |_: Box<RawValue>| true, &since))
        .and_then(|()| de.end());
    drain(buffered, path)?;
    match array {
        Ok(()) => Ok(Layout::Array),
        // An array with a huge element is still an array, not one long line.
        Err(e) if too_long(&since) => Err(array_error(path, &e, &since)),
        Err(_) if first_line_is_json(path)? => Ok(Layout::Lines), // lines that are arrays
        Err(e) => Err(array_error(path, &e, &since)),
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
    // Bytes, not a String: a first line of invalid UTF-8 is not JSON, not an unreadable file.
    let mut line = Vec::new();
    while std::str::from_utf8(&line).is_ok_and(|text| text.trim().is_empty()) {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .map_err(read_error(path))?
            == 0
        {
            return Ok(false);
        }
    }
    Ok(serde_json::from_slice::<IgnoredAny>(&line).is_ok())
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

    /// The text of a body that must be text.
    fn text_of(body: Body) -> String {
        match body {
            Body::Text(text) => text,
            Body::Unreadable { rejection, .. } => panic!("unreadable: {rejection}"),
        }
    }

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
        let bodies: Vec<String> = read(&path)
            .unwrap()
            .into_iter()
            .map(|r| text_of(r.body))
            .collect();
        assert_eq!(bodies, ["{\"a\": 1}", "\"x\\n\"", "null"]);
        std::fs::write(&path, "{\"a\": 1}\r\n  \n{\"b\":2}").unwrap();
        let bodies: Vec<String> = read(&path)
            .unwrap()
            .into_iter()
            .map(|r| text_of(r.body))
            .collect();
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
                .map(|r| (r.message_id, text_of(r.body)))
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

    fn write(text: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.json");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn gzip(text: &[u8], path: &Path) {
        use std::io::Write;
        let mut encoder =
            flate2::write::GzEncoder::new(File::create(path).unwrap(), Default::default());
        encoder.write_all(text).unwrap();
        encoder.finish().unwrap();
    }

    /// A line of JSON lines with a bad-UTF-8 line and an oversized line between good ones.
    fn mixed_lines(long: usize) -> Vec<u8> {
        let mut text =
            b"{\"user_id\":\"a\"}\n{\"user_id\":\"b\xff\xfe\"}\r\n{\"user_id\":\"c\"}\n".to_vec();
        text.extend_from_slice(b"{\"user_id\":\"d\",\"device_id\":\"");
        text.resize(text.len() + long, b'x');
        text.extend_from_slice(b"\"}\n\n{\"user_id\":\"e\"}\n");
        text
    }

    #[test]
    fn a_bad_utf8_line_and_an_oversized_line_are_messages_in_their_place() {
        let long = 3 * BODY_MAX_BYTES;
        let text = mixed_lines(long);
        let (dir, path) = write(&text);
        let messages = read(&path).unwrap();
        let ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
        let file_id = hex::encode(&Sha256::digest(&text)[..16]);
        let expected: Vec<String> = (1..=5).map(|i| format!("file-{file_id}-{i}")).collect();
        assert_eq!(ids, expected, "positional ids, the blank line skipped");
        let bodies: Vec<&Body> = messages.iter().map(|m| &m.body).collect();
        assert!(matches!(bodies[0], Body::Text(t) if t == "{\"user_id\":\"a\"}"));
        let Body::Unreadable { bytes, rejection } = bodies[1] else {
            panic!("bad UTF-8 decoded")
        };
        assert_eq!(
            (&bytes[..], rejection),
            (&b"{\"user_id\":\"b\xff\xfe\"}"[..], &Rejection::NotUtf8),
            "the line's exact bytes, without its end of line"
        );
        assert!(matches!(bodies[2], Body::Text(t) if t == "{\"user_id\":\"c\"}"));
        let Body::Unreadable { bytes, rejection } = bodies[3] else {
            panic!("oversized line decoded")
        };
        let line_len = "{\"user_id\":\"d\",\"device_id\":\"\"}".len() + long;
        assert_eq!(
            rejection,
            &Rejection::LineTooLong {
                bytes: line_len as u64,
                max: BODY_MAX_BYTES,
                kept: LINE_READ_MAX
            }
        );
        assert_eq!(
            rejection.to_string(),
            format!(
                "body is {line_len} bytes, more than the 65536 allowed (only its first 65537 bytes are sealed)"
            )
        );
        let start = text
            .windows(14)
            .position(|w| w == b"{\"user_id\":\"d\"")
            .unwrap();
        assert!(
            bytes[..] == text[start..][..LINE_READ_MAX],
            "the line's first bytes"
        );
        assert!(matches!(bodies[4], Body::Text(t) if t == "{\"user_id\":\"e\"}"));

        let again: Vec<String> = read(&path)
            .unwrap()
            .into_iter()
            .map(|m| m.message_id)
            .collect();
        assert_eq!(again, expected, "the same file, the same ids");
        let gz = dir.path().join("in.json.gz");
        gzip(&text, &gz);
        let zipped = read(&gz).unwrap();
        let zipped_ids: Vec<&str> = zipped.iter().map(|m| m.message_id.as_str()).collect();
        assert_eq!(zipped_ids, expected, "gzip goes through the same reading");
        assert!(matches!(
            &zipped[3].body,
            Body::Unreadable { bytes, .. } if bytes.len() == LINE_READ_MAX
        ));
    }

    #[test]
    fn a_line_holds_at_most_one_byte_over_the_limit() {
        let max = BODY_MAX_BYTES;
        let mut text = vec![b'x'; max];
        text.extend_from_slice(b"\r\n");
        text.extend(std::iter::repeat_n(b'y', max + 1));
        text.push(b'\n');
        text.extend(std::iter::repeat_n(b' ', 5 * max));
        text.extend_from_slice(b"\nz\n");
        text.extend(std::iter::repeat_n(b'w', 5 * max));
        let mut reader = BufReader::with_capacity(1 << 16, &text[..]);
        let mut line = Vec::with_capacity(LINE_READ_MAX);
        let mut reads = Vec::new();
        while let Some(read) = next_line(&mut reader, &mut line).unwrap() {
            assert!(
                line.capacity() <= LINE_READ_MAX,
                "never grown past the limit"
            );
            reads.push((read, line.len()));
        }
        assert_eq!(
            reads,
            [
                (LineRead::Whole, max + 1), // exactly the limit, then "\r\n"
                (
                    LineRead::TooLong {
                        bytes: max as u64 + 1,
                        blank: false
                    },
                    LINE_READ_MAX
                ),
                (
                    LineRead::TooLong {
                        bytes: 5 * max as u64,
                        blank: true
                    },
                    LINE_READ_MAX
                ),
                (LineRead::Whole, 2),
                (
                    LineRead::TooLong {
                        bytes: 5 * max as u64,
                        blank: false
                    },
                    LINE_READ_MAX
                ),
            ]
        );
        let (_dir, path) = write(&text);
        assert_eq!(
            read(&path).unwrap().len(),
            4,
            "a long blank line is not a message"
        );
    }

    #[test]
    fn an_array_with_bad_utf8_or_a_huge_element_is_refused_before_anything_is_read() {
        let refused = |text: &[u8]| {
            let (_dir, path) = write(text);
            match InputFile::open(&path) {
                Err(SourceError::FileFormat { detail, .. }) => detail,
                other => panic!("not refused: {:?}", other.map(|f| f.layout)),
            }
        };
        let detail = refused(b"[{\"user_id\":\"a\"},\n {\"user_id\":\"b\xff\"}]");
        assert!(
            detail.starts_with("invalid unicode code point at line 2"),
            "{detail}"
        );
        let mut huge = b"[{\"user_id\":\"a\"},{\"user_id\":\"".to_vec();
        huge.extend(std::iter::repeat_n(b'x', 2 * BODY_MAX_BYTES));
        huge.extend_from_slice(b"\"}]");
        let detail = refused(&huge);
        assert!(
            detail.starts_with("an element is longer than the 65536 bytes"),
            "{detail}"
        );
        let gz = tempfile::tempdir().unwrap();
        gzip(&huge, &gz.path().join("in.gz"));
        assert!(matches!(
            InputFile::open(&gz.path().join("in.gz")),
            Err(SourceError::FileFormat { .. })
        ));

        let mut padded = b"[{\"user_id\":\"a\"}]".to_vec();
        padded.extend(std::iter::repeat_n(b'\n', 2 * BODY_MAX_BYTES));
        let (_dir, path) = write(&padded);
        assert_eq!(
            read(&path).unwrap().len(),
            1,
            "what follows the array is free"
        );
    }
}
