//! Checking a model's definition while it is extracted. Re-reading the extracted file afterwards
//! cost a second pass over up to 260 MB (for `compressed_definition`: base64, gunzip and a JSON
//! scan) after the extraction had finished; here the definition's bytes are piped to a thread
//! that checks them, so the check runs on the second core alongside the inflate, hash and disk
//! write.

use std::io::{self, BufRead, Read, Write};
use std::mem;
use std::thread::{self, JoinHandle};

use super::json_scan::{self, LargeSink};
use super::pipe::{self, CHUNK, PipeWriter};

/// What the checker found: `Err` holds the problem as the bundle error states it.
pub type Verdict = Result<(), String>;

/// The most a `compressed_definition` may inflate to: 16 times the largest real model (about
/// 250 MB), so a gzip bomb costs seconds of checking, not many minutes.
pub const MAX_DECOMPRESSED_BYTES: u64 = 4 << 30;

/// Writes the large values of the model file to `out` and feeds the first one to a checker
/// thread. A model with two large values is refused by the caller, so only the first needs one.
pub struct CheckingSink<W> {
    out: W,
    feed: Option<Feed>,
    checker: Option<JoinHandle<Verdict>>,
}

/// The open pipe to the checker; bytes are gathered into whole chunks before they are sent.
struct Feed {
    pipe: PipeWriter,
    pending: Vec<u8>,
}

impl<W: Write> CheckingSink<W> {
    pub fn new(out: W) -> Self {
        CheckingSink {
            out,
            feed: None,
            checker: None,
        }
    }

    /// Waits for the checker. `None` when the model had no large value (the caller refuses that).
    pub fn finish(mut self) -> (W, Option<Verdict>) {
        self.end_value();
        let verdict = self.checker.take().map(|h| {
            h.join()
                .unwrap_or_else(|_| Err("the definition check stopped unexpectedly".into()))
        });
        (self.out, verdict)
    }
}

impl Feed {
    fn pass(&mut self, bytes: &[u8]) -> Result<(), ()> {
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= CHUNK {
            return self.flush();
        }
        Ok(())
    }

    /// An error means the checker has stopped: it has its verdict and needs no more bytes.
    fn flush(&mut self) -> Result<(), ()> {
        let chunk = mem::replace(&mut self.pending, Vec::with_capacity(CHUNK));
        self.pipe.send(chunk)
    }
}

impl<W: Write> Write for CheckingSink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write_all(buf)?;
        if let Some(feed) = &mut self.feed
            && feed.pass(buf).is_err()
        {
            self.feed = None;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> LargeSink for CheckingSink<W> {
    fn start_value(&mut self, key: &'static str) {
        if self.checker.is_some() {
            return;
        }
        let (writer, reader) = pipe::pipe();
        self.feed = Some(Feed {
            pipe: writer,
            pending: Vec::with_capacity(CHUNK),
        });
        self.checker = Some(thread::spawn(move || {
            check_definition(reader, key, MAX_DECOMPRESSED_BYTES)
        }));
    }

    /// Closing the pipe is the checker's end of file.
    fn end_value(&mut self) {
        if let Some(mut feed) = self.feed.take() {
            let _ = feed.flush();
        }
    }
}

/// The definition must be an object with a `trained_model`; a compressed one must decode.
/// `r` holds the raw JSON value of `key`.
fn check_definition<R: BufRead + Send>(mut r: R, key: &str, max_decompressed: u64) -> Verdict {
    let split = if key == "compressed_definition" {
        let mut quote = [0u8];
        r.read_exact(&mut quote).map_err(|e| e.to_string())?;
        if quote[0] != b'"' {
            return Err("`compressed_definition` is not a string".into());
        }
        let unquoted = StopAtQuote {
            inner: r,
            done: false,
        };
        let b64 =
            base64::read::DecoderReader::new(unquoted, &base64::engine::general_purpose::STANDARD);
        let gz = Capped {
            inner: flate2::read::GzDecoder::new(b64),
            left: max_decompressed,
        };
        // Decoding and scanning cost about the same: one thread each.
        thread::scope(|s| {
            let decoded = pipe::read_ahead(s, gz);
            json_scan::split_object(decoded, json_scan::DEFINITION_LARGE_KEYS, &mut io::sink())
        })
        .map_err(|e| {
            format!(
                "`compressed_definition` does not decode to a JSON definition (base64 of gzip): {e}"
            )
        })?
    } else {
        json_scan::split_object(r, json_scan::DEFINITION_LARGE_KEYS, &mut io::sink())
            .map_err(|e| format!("`definition`: {e}"))?
    };
    if !split.large.iter().any(|(k, _)| *k == "trained_model") {
        return Err("the definition has no `trained_model`".into());
    }
    Ok(())
}

/// A reader that fails once more than `left` bytes come out of `inner`.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "it inflates to more than the largest definition accepted",
            )
        })?;
        Ok(n)
    }
}

/// Reads a JSON string's content up to its closing quote (base64 has no escapes).
struct StopAtQuote<R> {
    inner: R,
    done: bool,
}

impl<R: BufRead> Read for StopAtQuote<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // A run of only backslashes yields nothing; read on rather than report a false end of
        // file. A loop, not recursion: such a run can be as long as the model file.
        while !self.done && !buf.is_empty() {
            let out = self.copy_run(buf)?;
            if out > 0 {
                return Ok(out);
            }
        }
        Ok(0)
    }
}

impl<R: BufRead> StopAtQuote<R> {
    /// Copies the buffered bytes up to the closing quote; returns how many landed in `buf`.
    fn copy_run(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.inner.fill_buf()?;
        if avail.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "unterminated string",
            ));
        }
        let want = avail.len().min(buf.len());
        let (n, done) = match memchr::memchr(b'"', &avail[..want]) {
            Some(p) => (p, true),
            None => (want, false),
        };
        // JSON may escape `/` as `\/`; base64 never contains a backslash otherwise, so drop them.
        let out = if memchr::memchr(b'\\', &avail[..n]).is_none() {
            buf[..n].copy_from_slice(&avail[..n]);
            n
        } else {
            drop_backslashes(&avail[..n], buf)
        };
        self.done = done;
        self.inner.consume(if done { n + 1 } else { n });
        Ok(out)
    }
}

/// Copies `from` into `to` without its backslashes; returns the bytes copied.
fn drop_backslashes(from: &[u8], to: &mut [u8]) -> usize {
    let mut out = 0;
    for &c in from {
        if c != b'\\' {
            to[out] = c;
            out += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn compressed(definition: &str) -> String {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(definition.as_bytes()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        // As JSON writers may escape it.
        format!("\"{}\"", b64.replace('/', "\\/"))
    }

    /// A definition of about `bytes` bytes, so the pipes carry many chunks.
    fn big_definition(bytes: usize) -> String {
        let leaf = r#"{"leaf_value":0.25,"node_index":7},"#;
        let leaves = leaf.repeat(bytes / leaf.len());
        format!(
            r#"{{"preprocessors":[],"trained_model":{{"tree":{{"tree_structure":[{}{{}}]}}}}}}"#,
            leaves
        )
    }

    /// Splits `model` through a `CheckingSink`: the bytes written and the verdict.
    fn split(model: &str) -> (Result<json_scan::Split, String>, Vec<u8>, Option<Verdict>) {
        let mut sink = CheckingSink::new(Vec::new());
        let split = json_scan::split_object(
            io::BufReader::with_capacity(1000, model.as_bytes()),
            json_scan::MODEL_LARGE_KEYS,
            &mut sink,
        );
        let (written, verdict) = sink.finish();
        (split, written, verdict)
    }

    #[test]
    fn a_definition_that_inflates_past_the_cap_is_refused() {
        let packed = compressed(&big_definition(3 * CHUNK));
        let r = io::BufReader::new(packed.as_bytes());
        let e = check_definition(r, "compressed_definition", CHUNK as u64).unwrap_err();
        assert!(e.contains("inflates to more than"), "{e}");
        let r = io::BufReader::new(packed.as_bytes());
        assert_eq!(
            check_definition(r, "compressed_definition", 4 * CHUNK as u64),
            Ok(())
        );
    }

    #[test]
    fn checks_what_streams_by_and_writes_it_unchanged() {
        let plain = big_definition(3 * CHUNK);
        let packed = compressed(&big_definition(6 * CHUNK));
        for (key, value) in [("definition", &plain), ("compressed_definition", &packed)] {
            let model = format!(r#"{{"{key}": {value}, "input": {{"field_names": ["a"]}}}}"#);
            let (split, written, verdict) = split(&model);
            assert_eq!(split.unwrap().large, vec![(key, value.len() as u64)]);
            assert_eq!(written, value.as_bytes(), "{key}");
            assert_eq!(verdict, Some(Ok(())), "{key}");
        }
    }

    #[test]
    fn refuses_bad_definitions_with_the_same_messages() {
        let cases = [
            (
                r#""definition": {"x": 1}"#,
                "the definition has no `trained_model`",
            ),
            (
                r#""definition": "abc""#,
                "`definition`: line 1: expected `{`",
            ),
            (r#""definition": [1]"#, "`definition`: line 1: expected `{`"),
            (
                r#""compressed_definition": {"a": 1}"#,
                "`compressed_definition` is not a string",
            ),
            (
                r#""compressed_definition": "bm90IGd6aXA=""#,
                "`compressed_definition` does not decode to a JSON definition (base64 of gzip)",
            ),
        ];
        for (field, want) in cases {
            let (split, _, verdict) = split(&format!("{{{field}}}"));
            assert!(split.is_ok(), "{field}");
            let got = verdict.unwrap().unwrap_err();
            assert!(got.starts_with(want), "{field}: {got}");
        }
        let no_model = compressed(r#"{"preprocessors": []}"#);
        let (_, _, verdict) = split(&format!(r#"{{"compressed_definition": {no_model}}}"#));
        assert_eq!(
            verdict.unwrap().unwrap_err(),
            "the definition has no `trained_model`"
        );
    }

    #[test]
    fn an_early_verdict_does_not_stall_the_extraction() {
        // Not base64: the checker stops at once, the file still gets every byte.
        let junk = format!("\"{}\"", "!".repeat(5 * CHUNK));
        let (split, written, verdict) = split(&format!(r#"{{"compressed_definition": {junk}}}"#));
        assert!(split.is_ok());
        assert_eq!(written.len(), junk.len());
        assert!(verdict.unwrap().unwrap_err().contains("does not decode"));
    }

    #[test]
    fn only_the_first_large_value_is_checked() {
        let model = r#"{"definition": {"trained_model": {}}, "compressed_definition": "x"}"#;
        let (split, written, verdict) = split(model);
        assert_eq!(split.unwrap().large.len(), 2);
        assert_eq!(written, br#"{"trained_model": {}}"x""#);
        assert_eq!(verdict, Some(Ok(())));
    }

    #[test]
    fn no_large_value_no_verdict() {
        let (_, written, verdict) = split(r#"{"input": {}}"#);
        assert!(written.is_empty());
        assert_eq!(verdict, None);
    }

    #[test]
    fn a_long_run_of_backslashes_is_refused_without_exhausting_the_stack() {
        let value = format!("\"{}\"", "\\\\".repeat(8 << 20));
        let r = io::BufReader::with_capacity(64, value.as_bytes());
        let err = check_definition(r, "compressed_definition", MAX_DECOMPRESSED_BYTES).unwrap_err();
        assert!(err.contains("does not decode"), "{err}");
    }

    #[test]
    fn escaped_slashes_are_dropped_wherever_reads_split_them() {
        let encoded = compressed(r#"{"trained_model": {"a": "\/\/"}}"#);
        for cap in 1..8 {
            let r = io::BufReader::with_capacity(cap, encoded.as_bytes());
            assert_eq!(
                check_definition(r, "compressed_definition", MAX_DECOMPRESSED_BYTES),
                Ok(()),
                "{cap}"
            );
        }
    }
}
