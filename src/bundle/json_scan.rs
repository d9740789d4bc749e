//! Splits a trained-model JSON file into its small top-level fields and its (possibly 250 MB)
//! definition without holding the definition in memory. The definition's raw bytes are copied to
//! a file so the upload can stream them back.

use std::io::{self, BufRead, Read, Write};

/// The model file's keys whose values are copied raw instead of being parsed.
pub const MODEL_LARGE_KEYS: &[&str] = &["definition", "compressed_definition"];
/// The definition's keys that can be large.
pub const DEFINITION_LARGE_KEYS: &[&str] = &["trained_model", "preprocessors"];
/// A small field larger than this is refused (a model's metadata is a few KB).
const SMALL_FIELD_LIMIT: usize = 4 << 20;
/// Nesting deeper than this is refused (serde_json's own limit is 128).
const MAX_DEPTH: usize = 512;

#[derive(Debug)]
pub struct Split {
    /// Every top-level field except the large ones.
    pub head: serde_json::Map<String, serde_json::Value>,
    /// The large keys present, in file order, with the bytes of each value written to the sink.
    pub large: Vec<(&'static str, u64)>,
}

/// Reads one JSON object: small fields are parsed into `head`, the values of `large_keys` are
/// copied raw to `large_sink` (one after the other) and never held in memory.
pub fn split_object<R: BufRead, W: Write>(
    r: R,
    large_keys: &[&'static str],
    large_sink: &mut W,
) -> Result<Split, String> {
    let mut s = Scanner {
        r,
        line: 1,
        peeked: None,
    };
    s.skip_ws()?;
    s.expect(b'{')?;
    let mut head = serde_json::Map::new();
    let mut large = Vec::new();
    s.skip_ws()?;
    if s.peek()? == Some(b'}') {
        s.next()?;
    } else {
        loop {
            s.skip_ws()?;
            let key = s.string_value()?;
            s.skip_ws()?;
            s.expect(b':')?;
            s.skip_ws()?;
            if let Some(k) = large_keys.iter().find(|k| **k == key) {
                if large.iter().any(|(seen, _)| seen == k) {
                    return Err(format!("duplicate key `{key}`"));
                }
                let mut counter = CountingWriter {
                    inner: &mut *large_sink,
                    n: 0,
                };
                s.copy_value(&mut counter, usize::MAX)?;
                large.push((*k, counter.n));
            } else {
                let mut buf = Vec::new();
                s.copy_value(&mut buf, SMALL_FIELD_LIMIT)?;
                let v: serde_json::Value =
                    serde_json::from_slice(&buf).map_err(|e| format!("field `{key}`: {e}"))?;
                if head.insert(key.clone(), v).is_some() {
                    return Err(format!("duplicate key `{key}`"));
                }
            }
            s.skip_ws()?;
            match s.next()? {
                Some(b',') => continue,
                Some(b'}') => break,
                other => return Err(s.unexpected(other, "`,` or `}`")),
            }
        }
    }
    s.skip_ws()?;
    if let Some(b) = s.next()? {
        return Err(s.unexpected(Some(b), "end of file"));
    }
    Ok(Split { head, large })
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Scanner<R> {
    r: R,
    line: u64,
    peeked: Option<u8>,
}

impl<R: BufRead> Scanner<R> {
    fn next(&mut self) -> Result<Option<u8>, String> {
        if let Some(b) = self.peeked.take() {
            return Ok(Some(b));
        }
        let mut b = [0u8];
        match self.r.read(&mut b) {
            Ok(0) => Ok(None),
            Ok(_) => {
                if b[0] == b'\n' {
                    self.line += 1;
                }
                Ok(Some(b[0]))
            }
            Err(e) => Err(format!("read error: {e}")),
        }
    }

    fn peek(&mut self) -> Result<Option<u8>, String> {
        if self.peeked.is_none() {
            self.peeked = self.next()?;
        }
        Ok(self.peeked)
    }

    fn skip_ws(&mut self) -> Result<(), String> {
        while let Some(b) = self.peek()? {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.peeked = None;
            } else {
                break;
            }
        }
        Ok(())
    }

    fn unexpected(&self, got: Option<u8>, wanted: &str) -> String {
        match got {
            Some(b) => format!(
                "line {}: expected {wanted}, found `{}`",
                self.line,
                (b as char).escape_default()
            ),
            None => format!("line {}: expected {wanted}, found end of file", self.line),
        }
    }

    fn expect(&mut self, want: u8) -> Result<(), String> {
        let got = self.next()?;
        if got == Some(want) {
            Ok(())
        } else {
            Err(self.unexpected(got, &format!("`{}`", want as char)))
        }
    }

    fn string_value(&mut self) -> Result<String, String> {
        let mut raw = Vec::new();
        if self.peek()? != Some(b'"') {
            let got = self.next()?;
            return Err(self.unexpected(got, "a string key"));
        }
        self.copy_value(&mut raw, SMALL_FIELD_LIMIT)?;
        serde_json::from_slice(&raw).map_err(|e| format!("line {}: bad key: {e}", self.line))
    }

    /// Copies one JSON value's bytes, checking its bracket/string structure but not numbers or
    /// literals in detail (serde_json checks small values; Elasticsearch checks the definition).
    fn copy_value<W: Write>(&mut self, out: &mut W, limit: usize) -> Result<(), String> {
        let mut sink = Sink {
            out,
            buf: Vec::with_capacity(64 * 1024),
            written: 0,
            limit,
        };
        match self.peek()? {
            Some(b'"') => {
                self.next()?;
                self.copy_string_rest(&mut sink)?;
            }
            Some(b'{' | b'[') => {
                let mut stack: Vec<u8> = Vec::new();
                loop {
                    let Some(b) = self.next()? else {
                        return Err(format!(
                            "line {}: unexpected end of file inside a value",
                            self.line
                        ));
                    };
                    match b {
                        b'"' => self.copy_string_rest(&mut sink)?,
                        b'{' | b'[' => {
                            if stack.len() >= MAX_DEPTH {
                                return Err(format!(
                                    "line {}: nested deeper than {MAX_DEPTH} levels",
                                    self.line
                                ));
                            }
                            stack.push(if b == b'{' { b'}' } else { b']' });
                            sink.push(b)?;
                        }
                        b'}' | b']' => {
                            if stack.pop() != Some(b) {
                                return Err(format!(
                                    "line {}: mismatched `{}`",
                                    self.line, b as char
                                ));
                            }
                            sink.push(b)?;
                            if stack.is_empty() {
                                break;
                            }
                        }
                        _ => sink.push(b)?,
                    }
                }
            }
            Some(_) => {
                // A scalar: runs until a delimiter, which stays for the caller.
                while let Some(b) = self.peek()? {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.peeked = None;
                    sink.push(b)?;
                }
            }
            None => {
                return Err(format!(
                    "line {}: expected a value, found end of file",
                    self.line
                ));
            }
        }
        sink.finish()
    }

    /// Copies the rest of a string whose opening quote was just read.
    fn copy_string_rest<W: Write>(&mut self, sink: &mut Sink<'_, W>) -> Result<(), String> {
        sink.push(b'"')?;
        loop {
            let Some(c) = self.next()? else {
                return Err(format!("line {}: unterminated string", self.line));
            };
            if c < 0x20 {
                return Err(format!("line {}: control character in string", self.line));
            }
            sink.push(c)?;
            match c {
                b'\\' => {
                    let Some(e) = self.next()? else {
                        return Err(format!("line {}: unterminated string", self.line));
                    };
                    sink.push(e)?;
                }
                b'"' => return Ok(()),
                _ => {}
            }
        }
    }
}

struct Sink<'a, W: Write> {
    out: &'a mut W,
    buf: Vec<u8>,
    written: usize,
    limit: usize,
}

impl<W: Write> Sink<'_, W> {
    fn push(&mut self, b: u8) -> Result<(), String> {
        self.written += 1;
        if self.written > self.limit {
            return Err(format!("value larger than {} bytes", self.limit));
        }
        self.buf.push(b);
        if self.buf.len() >= 64 * 1024 {
            self.out
                .write_all(&self.buf)
                .map_err(|e| format!("write error: {e}"))?;
            self.buf.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), String> {
        self.out
            .write_all(&self.buf)
            .map_err(|e| format!("write error: {e}"))?;
        self.buf.clear();
        Ok(())
    }
}

/// Counts the bytes a reader yields.
pub struct CountingReader<R> {
    pub inner: R,
    pub n: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Result<(Split, String), String> {
        let mut sink = Vec::new();
        let r = split_object(
            io::BufReader::new(s.as_bytes()),
            MODEL_LARGE_KEYS,
            &mut sink,
        )?;
        Ok((r, String::from_utf8(sink).unwrap()))
    }

    #[test]
    fn splits_head_from_definition() {
        let (s, def) = split(
            r#" { "model_id": "m", "input": {"field_names": ["a", "b"]}, "definition": {"x": [1, {"y": "}"}], "z": "\"{"}, "n": 12.5e3, "t": true } "#,
        )
        .unwrap();
        assert_eq!(def, r#"{"x": [1, {"y": "}"}], "z": "\"{"}"#);
        assert_eq!(s.large, vec![("definition", def.len() as u64)]);
        assert_eq!(s.head["model_id"], "m");
        assert_eq!(s.head["n"], 12500.0);
        assert_eq!(s.head["t"], true);
        assert_eq!(s.head["input"]["field_names"][1], "b");
    }

    #[test]
    fn compressed_definition_is_copied_as_a_string() {
        let (s, def) =
            split(r#"{"compressed_definition":"H4sI\/AAA","inference_config":{}}"#).unwrap();
        assert_eq!(def, r#""H4sI\/AAA""#);
        assert_eq!(s.large, vec![("compressed_definition", def.len() as u64)]);
        assert!(s.head.contains_key("inference_config"));
    }

    #[test]
    fn refuses_malformed_input() {
        for bad in [
            "",
            "[]",
            r#"{"a": 1"#,
            r#"{"a": [1, 2}"#,
            r#"{"definition": {"a": "unterminated}}"#,
            r#"{"a": 1} trailing"#,
            r#"{"a": 1, "a": 2}"#,
            r#"{"definition": {}, "definition": {}}"#,
            r#"{"a": tru}"#,
            r#"{a: 1}"#,
        ] {
            assert!(split(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn refuses_deep_nesting_without_recursing() {
        let deep = format!(
            r#"{{"definition": {}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let err = split(&deep).unwrap_err();
        assert!(err.contains("nested deeper"), "{err}");
    }
}
