//! Splits a trained-model JSON file into its small top-level fields and its (possibly 250 MB)
//! definition without holding the definition in memory. The definition's raw bytes are copied to
//! a file so the upload can stream them back.

use std::io::{self, BufRead, Write};

/// The model file's keys whose values are copied raw instead of being parsed.
pub const MODEL_LARGE_KEYS: &[&str] = &["definition", "compressed_definition"];
/// The definition's keys that can be large.
pub const DEFINITION_LARGE_KEYS: &[&str] = &["trained_model", "preprocessors"];
/// A small field larger than this is refused (a model's metadata is a few KB).
const SMALL_FIELD_LIMIT: usize = 4 << 20;
/// Nesting deeper than this is refused (serde_json's own limit is 128).
const MAX_DEPTH: usize = 512;

/// The bytes outside strings that the structure scan acts on (a table keeps the skip loop tight).
const STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 6 {
        t[b"\"{}[]\n"[i] as usize] = true;
        i += 1;
    }
    t
};

/// The bytes inside strings that the scan acts on: the end, escapes, and control characters.
const IN_STRING: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

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
    let mut s = Scanner { r, line: 1 };
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
}

impl<R: BufRead> Scanner<R> {
    fn fill(&mut self) -> Result<&[u8], String> {
        loop {
            match self.r.fill_buf() {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read error: {e}")),
            }
        }
        // Already buffered: this second call does not read.
        self.r.fill_buf().map_err(|e| format!("read error: {e}"))
    }

    fn peek(&mut self) -> Result<Option<u8>, String> {
        Ok(self.fill()?.first().copied())
    }

    fn next(&mut self) -> Result<Option<u8>, String> {
        let b = self.peek()?;
        if let Some(c) = b {
            if c == b'\n' {
                self.line += 1;
            }
            self.r.consume(1);
        }
        Ok(b)
    }

    fn skip_ws(&mut self) -> Result<(), String> {
        loop {
            let buf = self.fill()?;
            if buf.is_empty() {
                return Ok(());
            }
            let n = buf
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(buf.len());
            let lines = buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
            let all = n == buf.len();
            self.line += lines;
            self.r.consume(n);
            if !all {
                return Ok(());
            }
        }
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
    ///
    /// Works on the reader's buffered slices (`fill_buf`/`consume`): runs of ordinary bytes are
    /// scanned in tight loops and written to `out` a whole buffer at a time, so a 250 MB
    /// definition costs one pass over memory and a buffer's worth of RAM.
    fn copy_value<W: Write>(&mut self, out: &mut W, limit: usize) -> Result<(), String> {
        let mut sink = Sink {
            out,
            written: 0,
            limit,
        };
        match self.peek()? {
            Some(b'"' | b'{' | b'[') => self.copy_structured(&mut sink),
            Some(_) => {
                // A scalar: runs until a delimiter, which stays for the caller.
                loop {
                    let buf = self.fill()?;
                    if buf.is_empty() {
                        return Ok(());
                    }
                    let end = buf.iter().position(|b| {
                        matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                    });
                    let n = end.unwrap_or(buf.len());
                    sink.write(&buf[..n])?;
                    self.r.consume(n);
                    if end.is_some() {
                        return Ok(());
                    }
                }
            }
            None => Err(format!(
                "line {}: expected a value, found end of file",
                self.line
            )),
        }
    }

    /// Copies a string, object or array starting at the next byte.
    fn copy_structured<W: Write>(&mut self, sink: &mut Sink<'_, W>) -> Result<(), String> {
        let string_only = self.peek()? == Some(b'"');
        let mut stack: Vec<u8> = Vec::new();
        let mut in_str = false;
        let mut escaped = false;
        loop {
            let buf = match self.r.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read error: {e}")),
            };
            if buf.is_empty() {
                return Err(if in_str {
                    format!("line {}: unterminated string", self.line)
                } else {
                    format!("line {}: unexpected end of file inside a value", self.line)
                });
            }
            let mut i = 0;
            let mut done = false;
            while i < buf.len() {
                if in_str {
                    if escaped {
                        escaped = false;
                        i += 1;
                        continue;
                    }
                    // Skip ordinary string bytes in one go.
                    match next_in_string(&buf[i..]) {
                        None => {
                            i = buf.len();
                            break;
                        }
                        Some(p) => i += p,
                    }
                    match buf[i] {
                        b'"' => {
                            in_str = false;
                            if string_only {
                                i += 1;
                                done = true;
                                break;
                            }
                        }
                        b'\\' => escaped = true,
                        _ => {
                            return Err(format!("line {}: control character in string", self.line));
                        }
                    }
                    i += 1;
                } else {
                    // Numbers, commas, colons and spaces need no look: skip them in one go.
                    match next_structural(&buf[i..]) {
                        None => {
                            i = buf.len();
                            break;
                        }
                        Some(p) => i += p,
                    }
                    let c = buf[i];
                    match c {
                        b'"' => in_str = true,
                        b'{' | b'[' => {
                            if stack.len() >= MAX_DEPTH {
                                return Err(format!(
                                    "line {}: nested deeper than {MAX_DEPTH} levels",
                                    self.line
                                ));
                            }
                            stack.push(if c == b'{' { b'}' } else { b']' });
                        }
                        b'}' | b']' => {
                            if stack.pop() != Some(c) {
                                return Err(format!(
                                    "line {}: mismatched `{}`",
                                    self.line, c as char
                                ));
                            }
                            if stack.is_empty() {
                                i += 1;
                                done = true;
                                break;
                            }
                        }
                        b'\n' => self.line += 1,
                        _ => {}
                    }
                    i += 1;
                }
            }
            sink.write(&buf[..i])?;
            self.r.consume(i);
            if done {
                return Ok(());
            }
        }
    }
}

/// Finding the next byte that matters, eight bytes at a time: a 94 MB definition is mostly
/// short numbers and keys between such bytes, and a byte-by-byte table loop was the larger part
/// of the time to open a release with a plain definition.
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` that is zero. Above the lowest such byte there may be false
/// positives (a borrow runs on), so only the lowest set bit may be trusted.
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The index of the first byte of `buf` in `table`, looking at whole words through `hits` (whose
/// lowest set high bit marks the first such byte of a word).
#[inline(always)]
fn find(buf: &[u8], table: &[bool; 256], hits: impl Fn(u64) -> u64) -> Option<usize> {
    let mut words = buf.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        let m = hits(u64::from_le_bytes(w.try_into().expect("eight bytes")));
        if m != 0 {
            return Some(at + (m.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&c| table[c as usize])
        .map(|p| at + p)
}

/// The next byte in `STRUCTURAL`: `"`, `{` or `[` (0x7b, 0x5b: alike but for bit 0x20), `}` or
/// `]` (0x7d, 0x5d), or a newline.
fn next_structural(buf: &[u8]) -> Option<usize> {
    find(buf, &STRUCTURAL, |x| {
        let folded = x | (ONES * 0x20);
        zero_bytes(x ^ (ONES * b'"' as u64))
            | zero_bytes(folded ^ (ONES * b'{' as u64))
            | zero_bytes(folded ^ (ONES * b'}' as u64))
            | zero_bytes(x ^ (ONES * b'\n' as u64))
    })
}

/// The next byte in `IN_STRING`: `"`, a backslash, or a control character (below 0x20).
fn next_in_string(buf: &[u8]) -> Option<usize> {
    find(buf, &IN_STRING, |x| {
        zero_bytes(x ^ (ONES * b'"' as u64))
            | zero_bytes(x ^ (ONES * b'\\' as u64))
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGHS)
    })
}

struct Sink<'a, W: Write> {
    out: &'a mut W,
    written: usize,
    limit: usize,
}

impl<W: Write> Sink<'_, W> {
    fn write(&mut self, b: &[u8]) -> Result<(), String> {
        self.written = self.written.saturating_add(b.len());
        if self.written > self.limit {
            return Err(format!("value larger than {} bytes", self.limit));
        }
        self.out
            .write_all(b)
            .map_err(|e| format!("write error: {e}"))
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

    /// The word-at-a-time search finds what a byte-by-byte search finds, at every alignment
    /// and with every byte value around the match.
    #[test]
    fn word_search_agrees_with_the_tables() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|_| match next() % 4 {
                    0 => b"\"{}[]\n\\:,0a \x01\x1f\x7f\xff"[(next() % 16) as usize],
                    _ => (next() % 256) as u8,
                })
                .collect();
            for from in 0..=buf.len() {
                let b = &buf[from..];
                let want = b.iter().position(|&c| STRUCTURAL[c as usize]);
                assert_eq!(next_structural(b), want, "{b:?}");
                let want = b.iter().position(|&c| IN_STRING[c as usize]);
                assert_eq!(next_in_string(b), want, "{b:?}");
            }
        }
        for c in 0..=255u8 {
            let mut b = [b'x'; 16];
            b[11] = c;
            let want = STRUCTURAL[c as usize].then_some(11);
            assert_eq!(next_structural(&b), want, "{c:#x}");
            let want = IN_STRING[c as usize].then_some(11);
            assert_eq!(next_in_string(&b), want, "{c:#x}");
        }
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
    fn same_result_whatever_the_buffer_boundaries() {
        let text = r#" { "model_id": "m\u00e9", "input": {"field_names": ["a", "b"]}, "definition": {"x": [1, {"y": "}\\"}], "z": "\"{"},
 "n": 12.5e3, "t": true , "compressed_definition" : "H4sI\/AAA" } "#;
        let mut want_sink = Vec::new();
        let want = split_object(text.as_bytes(), MODEL_LARGE_KEYS, &mut want_sink).unwrap();
        for cap in 1..24 {
            let mut sink = Vec::new();
            let got = split_object(
                io::BufReader::with_capacity(cap, text.as_bytes()),
                MODEL_LARGE_KEYS,
                &mut sink,
            )
            .unwrap();
            assert_eq!(sink, want_sink, "capacity {cap}");
            assert_eq!(got.head, want.head, "capacity {cap}");
            assert_eq!(got.large, want.large, "capacity {cap}");
        }
        assert_eq!(want.head["model_id"], "m\u{e9}");
        for bad in [
            r#"{"a": "x
y"}"#,
            r#"{"definition": {"a": "b\"}}"#,
        ] {
            for cap in 1..8 {
                let r = split_object(
                    io::BufReader::with_capacity(cap, bad.as_bytes()),
                    MODEL_LARGE_KEYS,
                    &mut io::sink(),
                );
                assert!(r.is_err(), "accepted {bad:?} with capacity {cap}");
            }
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
