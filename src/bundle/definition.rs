//! Checking a model's definition: that it is an object with a `trained_model`, and for a
//! `compressed_definition` that it is base64 of gzip of such an object.
//!
//! Elasticsearch checks every definition it is sent (and far more thoroughly), so this check
//! is off the install path: opening a release used to gunzip and scan up to 260 MB before the
//! first byte was uploaded, the largest part of an install's time. It runs only when
//! Elasticsearch refuses an upload, to name the problem in the release file, which a generic
//! parse error from the cluster does not.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::thread;

use super::pipe::{self, CHUNK};
use super::{Limited, json_scan};

/// What the checker found: `Err` holds the problem as the bundle error states it.
pub type Verdict = Result<(), String>;

/// The most a `compressed_definition` may inflate to: 16 times the largest real model (about
/// 250 MB), so a gzip bomb costs seconds of checking, not many minutes.
pub const MAX_DECOMPRESSED_BYTES: u64 = 4 << 30;

/// Checks the raw JSON value of `key` (`definition` or `compressed_definition`) kept at `path`.
/// `Err`: the file cannot be opened (so there is no verdict).
pub fn check_file(path: &Path, key: &str) -> io::Result<Verdict> {
    let open = || File::open(path).map(|f| BufReader::with_capacity(CHUNK, f));
    let shape = check_definition(open()?, key, MAX_DECOMPRESSED_BYTES);
    if shape.is_err() {
        return Ok(shape);
    }
    Ok(check_syntax(open()?, key, MAX_DECOMPRESSED_BYTES))
}

/// The scan of `check_definition` copies the large values by their brackets alone (a stray
/// comma or a misspelt `true` inside `trained_model` passes it); this second pass parses every
/// value, so a definition that is not JSON is named as such.
fn check_syntax<R: BufRead + Send>(r: R, key: &str, max_decompressed: u64) -> Verdict {
    use serde::de::IgnoredAny;
    if key == "compressed_definition" {
        let gz = inflate(r, max_decompressed)?;
        serde_json::from_reader::<_, IgnoredAny>(BufReader::with_capacity(CHUNK, gz))
            .map(drop)
            .map_err(|e| format!("{UNDECODABLE}: {e}"))
    } else {
        serde_json::from_reader::<_, IgnoredAny>(r)
            .map(drop)
            .map_err(|e| format!("`definition` is not valid JSON: {e}"))
    }
}

const UNDECODABLE: &str =
    "`compressed_definition` does not decode to a JSON definition (base64 of gzip)";

/// The JSON inside a `compressed_definition` string value (`r` starts at its opening quote),
/// inflating to at most `max_decompressed` bytes.
fn inflate<R: BufRead + Send>(mut r: R, max_decompressed: u64) -> Result<impl Read + Send, String> {
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
    Ok(Limited::new(
        flate2::read::GzDecoder::new(b64),
        max_decompressed,
        "it inflates to more than the largest definition accepted",
    ))
}

/// The definition must be an object with a `trained_model`; a compressed one must decode.
/// `r` holds the raw JSON value of `key`.
fn check_definition<R: BufRead + Send>(r: R, key: &str, max_decompressed: u64) -> Verdict {
    let split = if key == "compressed_definition" {
        let gz = inflate(r, max_decompressed)?;
        // Decoding and scanning cost about the same: one thread each.
        thread::scope(|s| {
            let decoded = pipe::read_ahead(s, gz);
            json_scan::split_object(decoded, json_scan::DEFINITION_LARGE_KEYS, &mut io::sink())
        })
        .map_err(|e| format!("{UNDECODABLE}: {e}"))?
    } else {
        json_scan::split_object(r, json_scan::DEFINITION_LARGE_KEYS, &mut io::sink())
            .map_err(|e| format!("`definition`: {e}"))?
    };
    if !split.large.iter().any(|(k, _)| *k == "trained_model") {
        return Err("the definition has no `trained_model`".into());
    }
    Ok(())
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
    use std::io::Write;

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

    /// The verdict on the raw value of `key`, read in small pieces so that reads split it.
    fn check(key: &str, value: &str) -> Verdict {
        let r = io::BufReader::with_capacity(1000, value.as_bytes());
        check_definition(r, key, MAX_DECOMPRESSED_BYTES)
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
    fn sound_definitions_pass_plain_and_compressed() {
        let plain = big_definition(3 * CHUNK);
        let packed = compressed(&big_definition(6 * CHUNK));
        assert_eq!(check("definition", &plain), Ok(()));
        assert_eq!(check("compressed_definition", &packed), Ok(()));
    }

    #[test]
    fn checks_the_extracted_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.definition");
        std::fs::write(&path, compressed(&big_definition(2 * CHUNK))).unwrap();
        assert_eq!(check_file(&path, "compressed_definition").unwrap(), Ok(()));
        std::fs::write(&path, "\"bm90IGd6aXA=\"").unwrap();
        let e = check_file(&path, "compressed_definition")
            .unwrap()
            .unwrap_err();
        assert!(e.contains("does not decode"), "{e}");
        assert!(check_file(&dir.path().join("gone"), "definition").is_err());
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
            let (key, value) = field.split_once(": ").unwrap();
            let got = check(key.trim_matches('"'), value).unwrap_err();
            assert!(got.starts_with(want), "{field}: {got}");
        }
        let no_model = compressed(r#"{"preprocessors": []}"#);
        assert_eq!(
            check("compressed_definition", &no_model).unwrap_err(),
            "the definition has no `trained_model`"
        );
    }

    #[test]
    fn a_definition_with_a_bad_value_inside_the_model_is_not_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.definition");
        let bad = r#"{"trained_model": {"tree": {"tree_structure": [1,, 2], "ok": tru}}}"#;
        // The bracket scan alone lets it through.
        assert_eq!(check("definition", bad), Ok(()));
        std::fs::write(&path, bad).unwrap();
        let e = check_file(&path, "definition").unwrap().unwrap_err();
        assert!(e.starts_with("`definition` is not valid JSON"), "{e}");
        std::fs::write(&path, compressed(bad)).unwrap();
        let e = check_file(&path, "compressed_definition")
            .unwrap()
            .unwrap_err();
        assert!(e.contains("does not decode"), "{e}");
        std::fs::write(&path, big_definition(2 * CHUNK)).unwrap();
        assert_eq!(check_file(&path, "definition").unwrap(), Ok(()));
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
