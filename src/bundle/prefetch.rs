//! Extracting the model entry of a release zip while the zip is still downloading.
//!
//! Inflating and scanning the model file is most of the time to open a release, and it is
//! CPU work that a download at network speed leaves room for. Zip entries are preceded by local
//! headers, so the model entry can be read from the stream as it arrives, into a staging folder.
//! Nothing is trusted from that: once the zip is complete and its sha256 known, the normal open
//! checks the central directory as always and takes the extraction only if the central directory
//! places the model entry at the same offset, with the same sizes, method and CRC-32 (and the
//! CRC-32 of what was extracted agrees). Anything else (a data descriptor, zip64, an entry the
//! stream reader does not handle, a mismatch) and the entry is simply extracted again.

use std::fs;
use std::io::{self, BufReader, Read};
use std::path::Path;

use super::scratch::Scratch;
use super::{Extracted, Limited, Limits, entry_budget, extract_model};

/// Where and how a zip holds an entry, as the central directory (or a local header) says.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryFacts {
    header_start: u64,
    compressed_size: u64,
    size: u64,
    crc32: u32,
    method: zip::CompressionMethod,
}

impl EntryFacts {
    pub fn of<R: Read>(e: &zip::read::ZipFile<'_, R>) -> Self {
        EntryFacts {
            header_start: e.header_start(),
            compressed_size: e.compressed_size(),
            size: e.size(),
            crc32: e.crc32(),
            method: e.compression(),
        }
    }
}

/// A model entry extracted from a download. Dropping it removes its staging folder.
pub struct Prefetched {
    name: String,
    facts: EntryFacts,
    extracted: Option<Extracted>,
    /// Removed with the guard (see `scratch`).
    staging: Scratch,
}

impl Prefetched {
    /// The extraction, moved to `to`, when it is of the entry `name` as `facts` (from the
    /// central directory) describe it.
    pub(super) fn adopt(mut self, name: &str, facts: &EntryFacts, to: &Path) -> Option<Extracted> {
        if self.name != name || self.facts != *facts {
            return None;
        }
        let mut e = self.extracted.take()?;
        if e.crc32 != facts.crc32 {
            return None;
        }
        fs::rename(&e.definition_path, to).ok()?;
        e.definition_path = to.to_path_buf();
        Some(e)
    }
}

/// Reads the zip arriving on `stream` up to its first `*_model.json` entry and extracts that
/// into a new folder under `staging_root`. `None` when the stream ends first or the entry cannot
/// be read this way; the caller then extracts it from the finished zip.
pub fn prefetch_model<R: Read + Send>(
    stream: R,
    staging_root: &Path,
    limits: &Limits,
) -> Option<Prefetched> {
    let staging =
        Scratch::new(staging_root.join(format!(".prefetch-{:016x}", rand::random::<u64>())));
    fs::create_dir_all(staging.path()).ok()?;
    // Owns the staging folder from here on, so every way out removes it.
    let mut out = Prefetched {
        name: String::new(),
        facts: EntryFacts {
            header_start: 0,
            compressed_size: 0,
            size: 0,
            crc32: 0,
            method: zip::CompressionMethod::Stored,
        },
        extracted: None,
        staging,
    };
    let mut r = Counting {
        inner: stream,
        n: 0,
    };
    loop {
        let header_start = r.n;
        let h = LocalHeader::read(&mut r)?;
        let data = (&mut r).take(h.compressed_size);
        if !h.name.ends_with("_model.json") {
            io::copy(&mut { data }, &mut io::sink()).ok()?;
            continue;
        }
        if h.size > limits.max_entry_bytes {
            return None;
        }
        // Inflated here rather than through the zip crate's stream reader, whose 8 KiB input
        // buffer made the inflate (the longest part of the extraction) a tenth slower.
        let (method, mut data): (_, Box<dyn Read + Send + '_>) = match h.method {
            0 => (zip::CompressionMethod::Stored, Box::new(data)),
            8 => (
                zip::CompressionMethod::Deflated,
                Box::new(flate2::bufread::DeflateDecoder::new(
                    BufReader::with_capacity(INFLATE_INPUT, data),
                )),
            ),
            _ => return None,
        };
        out.name = h.name;
        out.facts = EntryFacts {
            header_start,
            compressed_size: h.compressed_size,
            size: h.size,
            crc32: h.crc32,
            method,
        };
        let (budget, message) = entry_budget(&out.name, h.size, limits.max_entry_bytes);
        let mut limited = Limited::new(&mut data, budget, message);
        let path = out.staging.path().join("model.definition");
        out.extracted = Some(extract_model(&out.name, path, &mut limited).ok()?);
        return Some(out);
    }
}

/// Compressed bytes handed to each inflate call.
const INFLATE_INPUT: usize = 256 * 1024;

/// What the stream reader needs of a local file header (APPNOTE 4.3.7).
struct LocalHeader {
    name: String,
    method: u16,
    crc32: u32,
    compressed_size: u64,
    size: u64,
}

impl LocalHeader {
    /// The next header, with its name and extra field read past. `None` at the central
    /// directory, at the end, and for what this reader leaves to the finished zip: encrypted
    /// entries, sizes in a data descriptor, zip64 sizes.
    fn read<R: Read>(r: &mut R) -> Option<LocalHeader> {
        let mut f = [0u8; 30];
        r.read_exact(&mut f).ok()?;
        let u16_at = |i: usize| u16::from_le_bytes([f[i], f[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
        if u32_at(0) != 0x0403_4b50 {
            return None;
        }
        let flags = u16_at(6);
        let (compressed_size, size) = (u32_at(18), u32_at(22));
        let mut name = vec![0u8; usize::from(u16_at(26))];
        r.read_exact(&mut name).ok()?;
        io::copy(&mut r.take(u64::from(u16_at(28))), &mut io::sink()).ok()?;
        let encrypted = flags & 0x1 != 0;
        let sizes_later = flags & 0x8 != 0;
        if encrypted || sizes_later || compressed_size == u32::MAX || size == u32::MAX {
            return None;
        }
        Some(LocalHeader {
            name: String::from_utf8(name).ok()?,
            method: u16_at(8),
            crc32: u32_at(14),
            compressed_size: u64::from(compressed_size),
            size: u64::from(size),
        })
    }
}

/// Counts the bytes read, for the offset of each local header.
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A zip with a small file, then a model entry.
    fn zip_bytes(model: &[u8], method: zip::CompressionMethod) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        w.start_file("T/a_script.json", opts).unwrap();
        w.write_all(br#"{"script": {"source": "x"}}"#).unwrap();
        w.start_file("T/m_model.json", opts).unwrap();
        w.write_all(model).unwrap();
        w.finish().unwrap().into_inner()
    }

    const MODEL: &[u8] =
        br#"{"model_id": "m", "input": {"field_names": ["a"]}, "definition": {"trained_model": {}}}"#;

    fn central_facts(bytes: &[u8], name: &str) -> EntryFacts {
        let mut ar = zip::ZipArchive::new(io::Cursor::new(bytes)).unwrap();
        let e = ar.by_name(name).unwrap();
        EntryFacts::of(&e)
    }

    #[test]
    fn the_model_entry_is_extracted_from_the_stream_and_matches_the_central_directory() {
        for method in [
            zip::CompressionMethod::Deflated,
            zip::CompressionMethod::Stored,
        ] {
            let bytes = zip_bytes(MODEL, method);
            let tmp = tempfile::tempdir().unwrap();
            let p = prefetch_model(&bytes[..], tmp.path(), &Limits::default()).unwrap();
            let facts = central_facts(&bytes, "T/m_model.json");
            assert_eq!(p.facts, facts, "{method:?}");
            let staging = p.staging.path().to_path_buf();
            let to = tmp.path().join("model.definition");
            let e = p.adopt("T/m_model.json", &facts, &to).unwrap();
            assert_eq!(fs::read(&to).unwrap(), br#"{"trained_model": {}}"#);
            assert_eq!(e.crc32, crc32fast::hash(MODEL));
            assert_eq!(e.split.head["model_id"], "m");
            assert!(!staging.exists(), "staging folder removed");
        }
    }

    #[test]
    fn a_model_of_many_inflate_buffers_comes_out_whole() {
        let leaves = r#"{"leaf_value":0.25,"node_index":7},"#.repeat(100_000);
        let model = format!(
            r#"{{"input": {{"field_names": ["a"]}}, "definition": {{"trained_model": [{leaves}{{}}]}}, "model_id": "m"}}"#
        );
        let bytes = zip_bytes(model.as_bytes(), zip::CompressionMethod::Deflated);
        let tmp = tempfile::tempdir().unwrap();
        let p = prefetch_model(&bytes[..], tmp.path(), &Limits::default()).unwrap();
        let facts = central_facts(&bytes, "T/m_model.json");
        let to = tmp.path().join("model.definition");
        let e = p.adopt("T/m_model.json", &facts, &to).unwrap();
        assert_eq!(e.crc32, crc32fast::hash(model.as_bytes()));
        let def = fs::read(&to).unwrap();
        assert!(def.starts_with(br#"{"trained_model": [{"leaf"#) && def.ends_with(b"{}]}"));
        assert_eq!(e.split.head["model_id"], "m");
    }

    #[test]
    fn a_mismatch_or_a_bad_stream_gives_nothing_and_leaves_nothing() {
        let bytes = zip_bytes(MODEL, zip::CompressionMethod::Deflated);
        let facts = central_facts(&bytes, "T/m_model.json");
        let tmp = tempfile::tempdir().unwrap();
        let to = tmp.path().join("model.definition");
        let other = EntryFacts {
            header_start: facts.header_start + 1,
            ..facts.clone()
        };
        let p = prefetch_model(&bytes[..], tmp.path(), &Limits::default()).unwrap();
        assert!(p.adopt("T/m_model.json", &other, &to).is_none());
        let p = prefetch_model(&bytes[..], tmp.path(), &Limits::default()).unwrap();
        assert!(p.adopt("T/other_model.json", &facts, &to).is_none());
        // Cut before the model's data ends; not a zip at all; no model entry.
        let cut = prefetch_model(&bytes[..bytes.len() / 2], tmp.path(), &Limits::default());
        assert!(cut.is_none());
        assert!(prefetch_model(&b"not a zip"[..], tmp.path(), &Limits::default()).is_none());
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        w.start_file("T/x.json", zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(b"{}").unwrap();
        let no_model = w.finish().unwrap().into_inner();
        assert!(prefetch_model(&no_model[..], tmp.path(), &Limits::default()).is_none());
        assert!(!to.exists());
        let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "staging folders left: {left:?}");
    }
}
