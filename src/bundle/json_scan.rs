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
                // Whole blocks of 32 bytes at once where the CPU allows (the bulk of a plain
                // definition); a block it cannot settle falls through to the byte loop below.
                if !escaped
                    && !string_only
                    && let Some(block) = buf.get(i..i + BLOCK)
                    && let Some(masks) = block_masks(block)
                {
                    match scan_block(block, masks, &mut self.line, &mut in_str, &mut stack)? {
                        Some(end) => {
                            i += end + 1;
                            done = true;
                            break;
                        }
                        None => {
                            i += BLOCK;
                            continue;
                        }
                    }
                }
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

/// Scans one block with its byte masks: `Some(p)` when the value ends at `p`, `None` when it goes
/// on. Blocks with a backslash never come here (`block_masks` refuses them), so every quote is
/// real and the string state follows from their count.
fn scan_block(
    block: &[u8],
    m: Masks,
    at_line: &mut u64,
    in_str: &mut bool,
    stack: &mut Vec<u8>,
) -> Result<Option<usize>, String> {
    // Bit p set: byte p is inside a string (an opening quote counts as inside, a closing
    // one as outside).
    let mut strings = prefix_xor(m.quote);
    if *in_str {
        strings = !strings;
    }
    if m.control & strings != 0 {
        // A control character in a string: the byte loop reports it with its line.
        return Err(control_in_block(block, *at_line, *in_str));
    }
    let newlines = m.newline & !strings;
    let mut events = (m.open | m.close) & !strings;
    while events != 0 {
        let p = events.trailing_zeros() as usize;
        events &= events - 1;
        let line = *at_line + u64::from((newlines & ((1u32 << p) - 1)).count_ones());
        let c = block[p];
        if m.open & (1 << p) != 0 {
            if stack.len() >= MAX_DEPTH {
                return Err(format!(
                    "line {line}: nested deeper than {MAX_DEPTH} levels"
                ));
            }
            stack.push(if c == b'{' { b'}' } else { b']' });
        } else {
            if stack.pop() != Some(c) {
                return Err(format!("line {line}: mismatched `{}`", c as char));
            }
            if stack.is_empty() {
                *at_line = line;
                return Ok(Some(p));
            }
        }
    }
    *at_line += u64::from(newlines.count_ones());
    *in_str = strings >> (BLOCK - 1) & 1 == 1;
    Ok(None)
}

/// The message for a control character inside a string of `block`.
fn control_in_block(block: &[u8], mut line: u64, mut in_str: bool) -> String {
    for &c in block {
        match c {
            b'"' => in_str = !in_str,
            c if c < 0x20 && in_str => break,
            b'\n' => line += 1,
            _ => {}
        }
    }
    format!("line {line}: control character in string")
}

/// Bytes looked at together by `block_masks`.
const BLOCK: usize = 32;

/// Which bytes of a block are what, one bit per byte.
#[derive(Clone, Copy)]
struct Masks {
    quote: u32,
    open: u32,
    close: u32,
    newline: u32,
    control: u32,
}

/// Bit p set for every p whose bits 0..=p of `x` hold an odd number of ones.
fn prefix_xor(mut x: u32) -> u32 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x
}

/// The masks of a `BLOCK`-byte slice, or `None` where the CPU lacks AVX2 or the block holds a
/// backslash (escapes are left to the byte loop).
fn block_masks(block: &[u8]) -> Option<Masks> {
    #[cfg(test)]
    if tests::BYTES_ONLY.get() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present (checked above) and `block` holds `BLOCK` bytes.
            return unsafe { avx2::masks(block) };
        }
    }
    let _ = block;
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, Masks};

    /// # Safety
    /// The CPU must support AVX2; `block` must hold at least `BLOCK` bytes.
    #[target_feature(enable = "avx2")]
    pub unsafe fn masks(block: &[u8]) -> Option<Masks> {
        debug_assert!(block.len() >= BLOCK);
        // SAFETY: `block` holds at least 32 bytes (the caller's promise); unaligned load.
        let v = unsafe { _mm256_loadu_si256(block.as_ptr().cast()) };
        let bits = |m: __m256i| _mm256_movemask_epi8(m) as u32;
        if bits(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8))) != 0 {
            return None;
        }
        // `{` and `[` differ only in bit 0x20, as do `}` and `]`.
        let folded = _mm256_or_si256(v, _mm256_set1_epi8(0x20));
        Some(Masks {
            quote: bits(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8))),
            open: bits(_mm256_cmpeq_epi8(folded, _mm256_set1_epi8(b'{' as i8))),
            close: bits(_mm256_cmpeq_epi8(folded, _mm256_set1_epi8(b'}' as i8))),
            newline: bits(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\n' as i8))),
            // Below 0x20: unchanged by a minimum with 0x1f.
            control: bits(_mm256_cmpeq_epi8(
                _mm256_min_epu8(v, _mm256_set1_epi8(0x1f)),
                v,
            )),
        })
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

    thread_local! {
        /// Set: the scan runs the byte loop only, for comparing it with the block scan.
        pub static BYTES_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    fn split_with(s: &[u8], bytes_only: bool) -> Result<(Split, Vec<u8>), String> {
        BYTES_ONLY.set(bytes_only);
        let mut sink = Vec::new();
        let r = split_object(
            io::BufReader::with_capacity(97, s),
            MODEL_LARGE_KEYS,
            &mut sink,
        );
        BYTES_ONLY.set(false);
        r.map(|split| (split, sink))
    }

    /// The block scan and the byte loop agree on long documents, sound or broken anywhere:
    /// same split, same bytes copied, same error and line.
    #[test]
    fn block_scan_agrees_with_the_byte_loop() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pieces: &[&[u8]] = &[
            br#"{"node_index":12,"split_feature":3,"threshold":0.25,"left_child":1}"#,
            br#"[1,2.5e3,-7,true,null,"x"]"#,
            br#""key with } and ] inside""#,
            b"\n",
            b" ",
            b",",
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"",
            b"\\",
            b"\\\"",
            b"\t",
            b"\x01",
            br#"{"a":{"b":[{"c":"d"}]}}"#,
        ];
        let (mut sound, mut broken) = (0, std::collections::BTreeSet::new());
        for round in 0..3000 {
            let mut def = Vec::from(&b"{\"trained_model\":["[..]);
            let n = next() % 60;
            for _ in 0..n {
                // Mostly sound pieces joined by commas; now and then a stray one.
                if next() % 8 == 0 {
                    def.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
                } else {
                    def.extend_from_slice(pieces[(next() % 2) as usize]);
                    def.push(b',');
                }
            }
            def.extend_from_slice(b"0]}");
            if round % 3 == 0 {
                // Corrupt one byte somewhere.
                let at = (next() % def.len() as u64) as usize;
                def[at] = pieces[3 + (next() % 11) as usize][0];
            }
            let doc = [
                b"{\"input\": 1,\n\"definition\": ".as_slice(),
                &def,
                b",\n\"x\": [2]}",
            ]
            .concat();
            let blocks = split_with(&doc, false);
            let bytes = split_with(&doc, true);
            match (&blocks, &bytes) {
                (Ok((a, sa)), Ok((b, sb))) => {
                    assert_eq!(a.large, b.large);
                    assert_eq!(a.head, b.head);
                    assert_eq!(sa, sb);
                    sound += 1;
                }
                (Err(a), Err(b)) => {
                    assert_eq!(a, b, "{}", String::from_utf8_lossy(&doc));
                    // The kind of error, without its line.
                    broken.insert(a.split_once(": ").map_or(a.as_str(), |x| x.1).to_string());
                }
                _ => panic!(
                    "{:?} vs {:?} on {}",
                    blocks.as_ref().map(|r| &r.0.large),
                    bytes.as_ref().map(|r| &r.0.large),
                    String::from_utf8_lossy(&doc)
                ),
            }
        }
        assert!(sound > 500, "{sound} sound documents");
        assert!(broken.len() >= 4, "kinds of errors met: {broken:?}");
    }

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
