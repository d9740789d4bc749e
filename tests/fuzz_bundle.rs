//! Bounded fuzzing of the bundle parser: mutated release zips (byte flips, truncation, entry
//! renames and content edits) and random JSON never panic `open_zip` / `split_object`; they
//! either open or return an error. Valid JSON objects split exactly as serde_json parses them.

use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;

use dga_operator::bundle::{Limits, json_scan, open_zip};
use dga_standin::bundle::{self, BundleSpec, Layout};
use proptest::prelude::*;
use serde_json::Value;

/// A zip's bytes and its entries (name, bytes).
type Zip = (Vec<u8>, Vec<(String, Vec<u8>)>);

struct Base {
    _dir: tempfile::TempDir,
    zips: Vec<Zip>,
}

fn base() -> &'static Base {
    static B: OnceLock<Base> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut zips = Vec::new();
        for (tag, layout) in [
            ("ML-DGA-20210126-1", Layout::V2),
            ("ML-DGA-20200701-1", Layout::V1),
        ] {
            let spec = BundleSpec::small(tag, layout).with_model_bytes(8_000);
            let rel = bundle::write_release(&spec, &dir.path().join(tag)).unwrap();
            let bytes = std::fs::read(&rel.zip_path).unwrap();
            let mut ar = zip::ZipArchive::new(std::io::Cursor::new(bytes.clone())).unwrap();
            let mut entries = Vec::new();
            for i in 0..ar.len() {
                let mut f = ar.by_index(i).unwrap();
                if f.is_dir() {
                    continue;
                }
                let mut b = Vec::new();
                f.read_to_end(&mut b).unwrap();
                entries.push((f.name().to_string(), b));
            }
            zips.push((bytes, entries));
        }
        Base { _dir: dir, zips }
    })
}

/// Opens `bytes` as a release zip in a fresh cache folder; must not panic.
fn open(bytes: &[u8]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let zip: PathBuf = dir.path().join("r.zip");
    std::fs::write(&zip, bytes).unwrap();
    let sha = format!("{:064x}", rand::random::<u128>());
    let limits = Limits {
        max_entry_bytes: 64 << 20,
        max_total_bytes: 128 << 20,
        ..Limits::default()
    };
    open_zip(&zip, &sha, &dir.path().join("open"), &limits)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: prop::sample::Index,
        xor: u8,
    },
    Truncate(prop::sample::Index),
    Rename {
        entry: prop::sample::Index,
        name: String,
    },
    Content {
        entry: prop::sample::Index,
        at: prop::sample::Index,
        junk: Vec<u8>,
    },
    CutEntry {
        entry: prop::sample::Index,
        at: prop::sample::Index,
    },
    Drop(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let names = prop_oneof![
        Just("../evil.json".to_string()),
        Just("/abs/x_model.json".to_string()),
        Just("C:\\win\\x_pipeline.json".to_string()),
        Just("".to_string()),
        Just("a/b/c/d_script.json".to_string()),
        "[a-z_/.]{1,30}",
        "\\PC{0,20}",
    ];
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (any::<prop::sample::Index>(), names)
            .prop_map(|(entry, name)| Mutation::Rename { entry, name }),
        (
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>(),
            prop::collection::vec(any::<u8>(), 0..16)
        )
            .prop_map(|(entry, at, junk)| Mutation::Content { entry, at, junk }),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(entry, at)| Mutation::CutEntry { entry, at }),
        any::<prop::sample::Index>().prop_map(Mutation::Drop),
    ]
}

fn apply(which: usize, muts: &[Mutation]) -> Vec<u8> {
    let (bytes, entries) = &base().zips[which];
    let raw = muts
        .iter()
        .all(|m| matches!(m, Mutation::Flip { .. } | Mutation::Truncate(_)));
    if raw {
        let mut b = bytes.clone();
        for m in muts {
            match m {
                Mutation::Flip { at, xor } if !b.is_empty() => {
                    let i = at.index(b.len());
                    b[i] ^= xor;
                }
                Mutation::Truncate(at) => {
                    let n = at.index(b.len().max(1));
                    b.truncate(n);
                }
                _ => {}
            }
        }
        return b;
    }
    let mut e = entries.clone();
    for m in muts {
        if e.is_empty() {
            break;
        }
        match m {
            Mutation::Rename { entry, name } => {
                let i = entry.index(e.len());
                e[i].0 = name.clone();
            }
            Mutation::Content { entry, at, junk } => {
                let i = entry.index(e.len());
                let b = &mut e[i].1;
                let p = at.index(b.len().max(1)).min(b.len());
                let end = (p + junk.len()).min(b.len());
                b.splice(p..end, junk.iter().copied());
            }
            Mutation::CutEntry { entry, at } => {
                let i = entry.index(e.len());
                let n = at.index(e[i].1.len().max(1));
                e[i].1.truncate(n);
            }
            Mutation::Drop(i) => {
                let i = i.index(e.len());
                e.remove(i);
            }
            _ => {}
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.zip");
    let refs: Vec<(&str, &[u8])> = e.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    // Some names are refused by the writer itself: then there is nothing to test.
    if bundle::write_custom_zip(&out, &refs).is_err() {
        return Vec::new();
    }
    std::fs::read(&out).unwrap()
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
        Just(Value::String(
            "quote \" backslash \\ \u{1F600} \u{0000} \n".into()
        )),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                "[a-z_]{0,8}|definition|compressed_definition|\\PC{0,6}",
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn split(bytes: &[u8]) -> Result<(json_scan::Split, Vec<u8>), String> {
    let mut sink = Vec::new();
    let r = json_scan::split_object(
        std::io::BufReader::with_capacity(7, bytes),
        json_scan::MODEL_LARGE_KEYS,
        &mut sink,
    )?;
    Ok((r, sink))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, max_shrink_iters: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_release_zips_open_or_fail_cleanly(which in 0usize..2, muts in prop::collection::vec(mutation(), 1..4)) {
        let bytes = apply(which, &muts);
        let _ = open(&bytes);
    }

    #[test]
    fn random_bytes_never_panic_split_object(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = split(&bytes);
    }

    #[test]
    fn valid_objects_split_like_serde(v in prop::collection::btree_map("[a-z_]{0,8}|definition|compressed_definition", json_value(), 0..6), pretty in any::<bool>(), flip in any::<Option<(prop::sample::Index, u8)>>()) {
        let obj = Value::Object(v.into_iter().collect());
        let mut text = if pretty { serde_json::to_vec_pretty(&obj).unwrap() } else { serde_json::to_vec(&obj).unwrap() };
        if let Some((at, xor)) = flip {
            // A corrupted variant: must not panic; no claim about the result.
            let i = at.index(text.len());
            text[i] ^= xor | 1;
            let _ = split(&text);
            return Ok(());
        }
        let (s, sink) = split(&text).map_err(|e| TestCaseError::fail(format!("valid object refused: {e}: {}", String::from_utf8_lossy(&text))))?;
        // Compare with serde_json's own parse of the text (its float parsing is not exact).
        let obj: Value = serde_json::from_slice(&text).unwrap();
        let mut expect = obj.as_object().unwrap().clone();
        let mut large = Vec::new();
        for k in json_scan::MODEL_LARGE_KEYS {
            if let Some(v) = expect.remove(*k) {
                large.push(v);
            }
        }
        prop_assert_eq!(&s.head, &expect);
        prop_assert_eq!(s.large.len(), large.len());
        // The sink holds the large values' raw bytes one after the other, `s.large` their lengths.
        prop_assert_eq!(s.large.iter().map(|(_, n)| *n).sum::<u64>(), sink.len() as u64);
        let mut at = 0usize;
        for (key, n) in &s.large {
            let want = &obj[*key];
            let part = &sink[at..at + *n as usize];
            at += *n as usize;
            let got: Value = serde_json::from_slice(part).map_err(|e| TestCaseError::fail(format!("sink part not JSON: {e}")))?;
            prop_assert_eq!(&got, want);
        }
        prop_assert_eq!(s.large.iter().map(|(_, n)| *n).sum::<u64>(), sink.len() as u64);
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow(depth in 100usize..200_000, key in "metadata|definition") {
        let text = format!("{{\"{key}\": {}1{}}}", "[".repeat(depth), "]".repeat(depth));
        let r = split(text.as_bytes());
        if depth > 600 && key == "metadata" {
            prop_assert!(r.is_err());
        }
    }
}
