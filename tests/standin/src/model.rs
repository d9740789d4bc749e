//! TEST STAND-IN model generator and evaluator for the ML-DGA trained model.
//!
//! No trained DGA tree-ensemble is public, so tests use a generated one that follows the
//! Elasticsearch trained-model schema (data-frame-analytics classification, tree ensemble,
//! `frequency_encoding` / `one_hot_encoding` preprocessors). The generated model is small-scale
//! "meaningful": frequency maps come from the letter, bigram and trigram frequencies of an
//! embedded word list, and the trees send rare n-grams (digits, `xj`, `qk`, ...) towards class
//! `"1"` (DGA), so random-looking names score higher than dictionary-looking ones.
//!
//! The definition is written streaming (`write_definition`): a 250 MB model never exists in
//! memory, only one tree at a time. `evaluate` implements the inference semantics used by
//! Elasticsearch for such models, enough to stand in for the `inference` ingest processor.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};

use base64::Engine as _;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    pub model_id: String,
    /// Approximate size of the serialized `definition` JSON; the result lands within ±10%.
    pub target_definition_bytes: usize,
    pub seed: u64,
    /// Write the model file as a `GET _ml/trained_models/<id>?include=definition` export of
    /// this Elasticsearch version would read (read-only fields included), not a PUT body.
    pub get_export_of: Option<String>,
}

impl ModelSpec {
    pub fn new(model_id: impl Into<String>, target_definition_bytes: usize, seed: u64) -> Self {
        ModelSpec {
            model_id: model_id.into(),
            target_definition_bytes,
            seed,
            get_export_of: None,
        }
    }
}

/// How the definition travels in the PUT body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelEncoding {
    /// `"definition": {...}`
    Plain,
    /// `"compressed_definition": "<base64(gzip(definition JSON))>"`
    Compressed,
}

/// Number of unigram / bigram / trigram positions the real model takes as input.
pub const UNIGRAM_POSITIONS: usize = 62;
pub const BIGRAM_POSITIONS: usize = 61;
pub const TRIGRAM_POSITIONS: usize = 60;

/// The dynamic-DNS registered domains whose subdomain is scored instead (ML-DGA.md, step 2).
pub const DYNAMIC_DNS: &[&str] = &[
    "avsvmcloud.com",
    "co.cc",
    "cz.cc",
    "ddns.net",
    "dyndns.org",
    "dynserv.com",
    "github.io",
    "mooo.com",
    "mynumber.org",
    "yi.org",
];

/// `input.field_names` of the DGA model: `dns.response_code`, `f.u0..f.u61`, `f.b0..f.b60`,
/// `f.t0..f.t59`, `f.tld`.
pub fn input_field_names() -> Vec<String> {
    let mut v = vec!["dns.response_code".to_string()];
    v.extend((0..UNIGRAM_POSITIONS).map(|i| format!("f.u{i}")));
    v.extend((0..BIGRAM_POSITIONS).map(|i| format!("f.b{i}")));
    v.extend((0..TRIGRAM_POSITIONS).map(|i| format!("f.t{i}")));
    v.push("f.tld".to_string());
    v
}

// ---------------------------------------------------------------------------------------------
// Feature extraction (Rust reference of the `ngrams_create` painless script)
// ---------------------------------------------------------------------------------------------

/// Split a DNS question into `(sld, tld)` following ML-DGA.md step 2. `None` when there is
/// nothing to score (no name at all).
pub fn split_sld_tld(
    question_name: Option<&str>,
    subdomain: Option<&str>,
    registered_domain: Option<&str>,
    top_level_domain: Option<&str>,
) -> Option<(String, String)> {
    match registered_domain {
        None | Some(".") => question_name.map(|n| (n.to_string(), String::new())),
        Some(reg) => {
            let sub = subdomain.filter(|s| !s.is_empty());
            if let (true, Some(sub)) = (DYNAMIC_DNS.contains(&reg), sub) {
                return Some((sub.to_string(), reg.to_string()));
            }
            let tld = top_level_domain.unwrap_or("");
            let suffix = format!(".{tld}");
            let sld = if !tld.is_empty() && reg.ends_with(&suffix) {
                &reg[..reg.len() - suffix.len()]
            } else {
                reg
            };
            Some((sld.to_string(), tld.to_string()))
        }
    }
}

/// The features the `ngrams_create` script writes, as a flat map with literal dotted keys
/// (`"f.tld"`, `"f.u0"`, `"f.b0"`, `"f.t0"`, ...). Substrings of length n at offset i, stopping
/// when `i + n > len` (characters, not bytes). Empty map when there is no name.
pub fn extract_features(
    question_name: Option<&str>,
    subdomain: Option<&str>,
    registered_domain: Option<&str>,
    top_level_domain: Option<&str>,
) -> Map<String, Value> {
    let mut m = Map::new();
    let Some((sld, tld)) = split_sld_tld(
        question_name,
        subdomain,
        registered_domain,
        top_level_domain,
    ) else {
        return m;
    };
    m.insert("f.tld".into(), Value::String(tld));
    let chars: Vec<char> = sld.chars().collect();
    for (n, letter) in [(1usize, 'u'), (2, 'b'), (3, 't')] {
        let mut i = 0;
        while i + n <= chars.len() {
            let s: String = chars[i..i + n].iter().collect();
            m.insert(format!("f.{letter}{i}"), Value::String(s));
            i += 1;
        }
    }
    m
}

/// `extract_features` reading `dns.question.*` out of an event document (nested objects or
/// literal dotted keys).
pub fn extract_features_from_doc(doc: &Value) -> Map<String, Value> {
    let get = |p: &str| lookup_path(doc, p).and_then(Value::as_str);
    extract_features(
        get("dns.question.name"),
        get("dns.question.subdomain"),
        get("dns.question.registered_domain"),
        get("dns.question.top_level_domain"),
    )
}

// ---------------------------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------------------------

/// Small embedded word list: the "dictionary" the n-gram frequencies are learned from.
const WORDS: &str = "the and for are but not you all any can had her was one our out day get has him his how \
man new now old see two way who boy did its let put say she too use mail news shop store cloud \
online service account update secure login bank pay music video photo travel health market \
energy games sports weather search email office school world house water people system \
program network server client windows apple google microsoft amazon facebook twitter youtube \
wikipedia yahoo linkedin netflix instagram github reddit paypal adobe oracle ebay espn cnn \
london paris berlin madrid america canada china india brazil mexico france germany japan \
information community development management education technology university government \
international national business company product customer support download software hardware \
security privacy content media digital mobile phone green blue black white orange yellow \
purple silver golden river mountain forest garden flower summer winter spring autumn morning \
evening kitchen table chair window door light power station street bridge castle island \
ocean planet rocket engine motor bicycle camera picture letter number market answer question \
friend family mother father sister brother children student teacher doctor nurse police \
farmer artist writer reader player singer dancer driver worker manager leader member partner \
report record review result source status travel ticket hotel resort beach coffee pizza bread \
cheese chicken dinner lunch breakfast recipe cooking fashion style beauty design studio \
gallery museum theater cinema concert festival holiday weekend journal daily today tomorrow";

const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz0123456789-";

/// Top-level domains and their (made-up but plausible) frequencies for `f.tld`.
const TLD_FREQ: &[(&str, f64)] = &[
    ("com", 0.452),
    ("net", 0.098),
    ("org", 0.081),
    ("de", 0.034),
    ("uk", 0.021),
    ("co.uk", 0.019),
    ("io", 0.017),
    ("jp", 0.015),
    ("fr", 0.014),
    ("ru", 0.012),
    ("br", 0.011),
    ("it", 0.01),
    ("nl", 0.009),
    ("au", 0.008),
    ("ca", 0.008),
    ("edu", 0.007),
    ("gov", 0.006),
    ("info", 0.005),
    ("in", 0.005),
    ("es", 0.005),
    ("biz", 0.0021),
    ("cc", 0.0012),
    ("ws", 0.0004),
    ("xyz", 0.0011),
    ("top", 0.0009),
    ("su", 0.0003),
    ("", 0.03),
];

const RESPONSE_CODES: &[&str] = &["NOERROR", "NXDOMAIN", "SERVFAIL"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gram {
    U,
    B,
    T,
}

impl Gram {
    fn n(self) -> usize {
        match self {
            Gram::U => 1,
            Gram::B => 2,
            Gram::T => 3,
        }
    }
    fn letter(self) -> char {
        match self {
            Gram::U => 'u',
            Gram::B => 'b',
            Gram::T => 't',
        }
    }
    fn max_positions(self) -> usize {
        match self {
            Gram::U => UNIGRAM_POSITIONS,
            Gram::B => BIGRAM_POSITIONS,
            Gram::T => TRIGRAM_POSITIONS,
        }
    }
}

/// n-gram frequencies of the word list, ascending-sorted distinct values (for thresholds).
struct Stats {
    freq: [BTreeMap<String, f64>; 3],
    sorted: [Vec<f64>; 3],
}

fn word_stats() -> Stats {
    let mut freq: [BTreeMap<String, f64>; 3] = Default::default();
    let mut sorted: [Vec<f64>; 3] = Default::default();
    for (k, n) in [1usize, 2, 3].into_iter().enumerate() {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut total = 0u64;
        for w in WORDS.split_whitespace() {
            let c: Vec<char> = w.chars().collect();
            for i in 0..(c.len() + 1).saturating_sub(n) {
                *counts.entry(c[i..i + n].iter().collect()).or_default() += 1;
                total += 1;
            }
        }
        for (g, c) in counts {
            // Round like the printed value so thresholds compare exactly.
            let f = round6(c as f64 / total as f64);
            freq[k].insert(g, f);
        }
        let mut v: Vec<f64> = freq[k].values().copied().collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        sorted[k] = v;
    }
    Stats { freq, sorted }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// How much of the input the preprocessors cover: `positions` n-gram positions per kind and
/// the frequency-map richness `level` (0: top bigrams/trigrams only, trees split on unigrams,
/// the tld and the response code; 1: all word-list n-grams, 2: + every
/// unigram/bigram over the DNS alphabet, 3: + every trigram).
#[derive(Clone, Copy, Debug)]
struct Plan {
    positions: usize,
    level: u8,
}

const PLANS: &[Plan] = &[
    Plan {
        positions: 1,
        level: 0,
    },
    Plan {
        positions: 2,
        level: 0,
    },
    Plan {
        positions: 4,
        level: 0,
    },
    Plan {
        positions: 8,
        level: 0,
    },
    Plan {
        positions: 1,
        level: 1,
    },
    Plan {
        positions: 2,
        level: 1,
    },
    Plan {
        positions: 4,
        level: 1,
    },
    Plan {
        positions: 8,
        level: 1,
    },
    Plan {
        positions: 16,
        level: 1,
    },
    Plan {
        positions: 32,
        level: 1,
    },
    Plan {
        positions: 62,
        level: 1,
    },
    Plan {
        positions: 62,
        level: 2,
    },
    Plan {
        positions: 62,
        level: 3,
    },
];

/// Pre-rendered `"gram":freq` entries of one frequency map (without braces), per kind.
fn render_map(stats: &Stats, gram: Gram, level: u8, seed: u64) -> String {
    let k = gram.n() - 1;
    let mut entries: BTreeMap<String, String> = BTreeMap::new();
    if level == 0 && gram != Gram::U {
        let mut top: Vec<(&String, &f64)> = stats.freq[k].iter().collect();
        top.sort_by(|a, b| b.1.partial_cmp(a.1).unwrap().then(a.0.cmp(b.0)));
        for (g, f) in top.into_iter().take([12, 16, 16][k]) {
            entries.insert(g.clone(), format!("{f:.6}"));
        }
    } else {
        for (g, f) in &stats.freq[k] {
            entries.insert(g.clone(), format!("{f:.6}"));
        }
        if level >= 2 && (gram != Gram::T || level >= 3) {
            // Synthetic, very rare n-grams: a smoothed map as a trained model would carry.
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x5eed_0000 + k as u64));
            let alpha: Vec<char> = ALPHABET.chars().collect();
            let mut idx = vec![0usize; gram.n()];
            loop {
                let g: String = idx.iter().map(|&i| alpha[i]).collect();
                let v: f64 = rng.random_range(1.0..9.99);
                let e: i32 = rng.random_range(7..9);
                entries.entry(g).or_insert_with(|| format!("{v:.2}e-{e}"));
                // odometer
                let mut p = gram.n();
                loop {
                    if p == 0 {
                        break;
                    }
                    p -= 1;
                    idx[p] += 1;
                    if idx[p] < alpha.len() {
                        break;
                    }
                    idx[p] = 0;
                    if p == 0 {
                        p = usize::MAX;
                        break;
                    }
                }
                if p == usize::MAX {
                    break;
                }
            }
        }
    }
    let mut s = String::new();
    for (i, (g, f)) in entries.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&json_str(g));
        s.push(':');
        s.push_str(f);
    }
    s
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serializes")
}

#[derive(Clone, Debug)]
enum FeatKind {
    /// one-hot of a response code; `polarity` +1: value 0 (left) is DGA-ish.
    OneHot {
        polarity: f64,
    },
    Gram,
    Tld,
}

struct Features {
    level: u8,
    kinds: Vec<FeatKind>,
    /// indices by group for sampling
    onehot: Vec<usize>,
    grams: [Vec<usize>; 3],
    tld: usize,
    /// pre-rendered `["a","b",...]`
    names_json: String,
}

fn features(plan: Plan) -> Features {
    let mut names = Vec::new();
    let mut kinds = Vec::new();
    let mut onehot = Vec::new();
    for code in RESPONSE_CODES {
        onehot.push(names.len());
        names.push(format!("dns.response_code_{code}"));
        let polarity = if *code == "NOERROR" { 1.0 } else { -1.0 };
        kinds.push(FeatKind::OneHot { polarity });
    }
    let mut grams: [Vec<usize>; 3] = Default::default();
    for g in [Gram::U, Gram::B, Gram::T] {
        for i in 0..plan.positions.min(g.max_positions()) {
            grams[g.n() - 1].push(names.len());
            names.push(format!("f.{}{i}_frequency", g.letter()));
            kinds.push(FeatKind::Gram);
        }
    }
    let tld = names.len();
    names.push("f.tld_frequency".into());
    kinds.push(FeatKind::Tld);
    let names_json = serde_json::to_string(&names).unwrap();
    Features {
        level: plan.level,
        kinds,
        onehot,
        grams,
        tld,
        names_json,
    }
}

/// Counts bytes going through.
struct Counting<W: Write> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_preprocessors(
    w: &mut impl Write,
    plan: Plan,
    maps: &[String; 3],
    tld_map: &str,
) -> io::Result<()> {
    w.write_all(b"\"preprocessors\":[")?;
    let hot: Vec<String> = RESPONSE_CODES
        .iter()
        .map(|c| {
            format!(
                "{}:{}",
                json_str(c),
                json_str(&format!("dns.response_code_{c}"))
            )
        })
        .collect();
    write!(
        w,
        "{{\"one_hot_encoding\":{{\"field\":\"dns.response_code\",\"hot_map\":{{{}}}}}}}",
        hot.join(",")
    )?;
    for g in [Gram::U, Gram::B, Gram::T] {
        for i in 0..plan.positions.min(g.max_positions()) {
            let l = g.letter();
            write!(
                w,
                ",{{\"frequency_encoding\":{{\"field\":\"f.{l}{i}\",\"feature_name\":\"f.{l}{i}_frequency\",\"frequency_map\":{{{}}}}}}}",
                maps[g.n() - 1]
            )?;
        }
    }
    write!(
        w,
        ",{{\"frequency_encoding\":{{\"field\":\"f.tld\",\"feature_name\":\"f.tld_frequency\",\"frequency_map\":{{{tld_map}}}}}}}]"
    )?;
    Ok(())
}

fn tld_map() -> String {
    TLD_FREQ
        .iter()
        .map(|(t, f)| format!("{}:{f}", json_str(t)))
        .collect::<Vec<_>>()
        .join(",")
}

/// One split: feature, threshold, polarity (+1: going left is DGA-ish), default_left.
struct Split {
    feature: usize,
    threshold: f64,
    polarity: f64,
    default_left: bool,
}

fn pick_split(rng: &mut ChaCha8Rng, feats: &Features, stats: &Stats) -> Split {
    let r: f64 = rng.random();
    let group = if feats.level == 0 {
        // Only unigram maps are complete at level 0.
        if r < 0.1 {
            3
        } else if r < 0.3 {
            4
        } else {
            0
        }
    } else if r < 0.05 {
        3 // one-hot
    } else if r < 0.13 {
        4 // tld
    } else if r < 0.38 {
        0
    } else if r < 0.69 {
        1
    } else {
        2
    };
    match group {
        3 => {
            let f = feats.onehot[rng.random_range(0..feats.onehot.len())];
            let FeatKind::OneHot { polarity } = feats.kinds[f] else {
                unreachable!()
            };
            // Missing value goes to the benign side.
            Split {
                feature: f,
                threshold: 0.5,
                polarity,
                default_left: polarity < 0.0,
            }
        }
        4 => {
            let t = [0.0015, 0.003, 0.006][rng.random_range(0..3)];
            Split {
                feature: feats.tld,
                threshold: t,
                polarity: 1.0,
                default_left: false,
            }
        }
        k => {
            let pos = &feats.grams[k];
            // Mostly the first positions (every name has them), sometimes any position.
            let i = if rng.random::<f64>() < 0.9 {
                rng.random_range(0..pos.len().min(6))
            } else {
                rng.random_range(0..pos.len())
            };
            let sorted = &stats.sorted[k];
            // Below a low quantile of the seen n-grams' frequencies: unseen and very rare
            // n-grams go left (DGA side), anything the dictionary uses a few times goes right.
            let q: f64 = rng.random_range(0.0..0.3);
            let scale: f64 = rng.random_range(0.3..0.9);
            let threshold = round6(sorted[((sorted.len() - 1) as f64 * q) as usize] * scale);
            Split {
                feature: pos[i],
                threshold,
                polarity: 1.0,
                default_left: false,
            }
        }
    }
}

/// Render one `{"tree":{...}}` of the given depth (full binary tree, breadth-first indices).
fn render_tree(rng: &mut ChaCha8Rng, depth: u32, feats: &Features, stats: &Stats) -> Vec<u8> {
    let internal = (1usize << depth) - 1;
    let total = (1usize << (depth + 1)) - 1;
    let splits: Vec<Split> = (0..internal)
        .map(|_| pick_split(rng, feats, stats))
        .collect();
    let mut out = Vec::with_capacity(total * 140 + feats.names_json.len() + 64);
    out.extend_from_slice(b"{\"tree\":{\"feature_names\":");
    out.extend_from_slice(feats.names_json.as_bytes());
    out.extend_from_slice(b",\"tree_structure\":[");
    let samples = 100_000u64;
    for i in 0..total {
        if i > 0 {
            out.push(b',');
        }
        let level = usize::BITS - 1 - (i + 1).leading_zeros();
        let n_samples = samples >> level;
        if i < internal {
            let s = &splits[i];
            let gain: f64 = rng.random_range(0.5..200.0);
            write!(
                out,
                "{{\"node_index\":{i},\"split_feature\":{},\"split_gain\":{gain:.3},\"threshold\":{:.6},\"decision_type\":\"lte\",\"default_left\":{},\"left_child\":{},\"right_child\":{},\"number_samples\":{n_samples}}}",
                s.feature,
                s.threshold,
                s.default_left,
                2 * i + 1,
                2 * i + 2
            )
            .unwrap();
        } else {
            // Walk up to the root summing the contribution of each turn.
            let mut sum = 0.0;
            let mut node = i;
            while node > 0 {
                let parent = (node - 1) / 2;
                let left = node == 2 * parent + 1;
                let p = splits[parent].polarity;
                // The DGA side weighs more than the benign side: a dictionary word still has
                // a few rare n-grams, a random name rarely has common ones.
                let dga_side = (left && p > 0.0) || (!left && p < 0.0);
                sum += if dga_side { 1.0 } else { -0.6 };
                node = parent;
            }
            let noise: f64 = rng.random_range(0.8..1.2);
            let v = sum / depth as f64 * noise;
            write!(
                out,
                "{{\"node_index\":{i},\"leaf_value\":{v:.4},\"number_samples\":{n_samples}}}"
            )
            .unwrap();
        }
    }
    out.extend_from_slice(b"],\"target_type\":\"regression\"}}");
    out
}

/// Scale of the logistic weights: probability = sigmoid(K * mean(tree outputs)).
const LOGIT_SCALE: f64 = 6.0;

/// Write the model `definition` JSON for `spec` to `out`, streaming; returns the bytes written.
/// Deterministic for a given spec.
pub fn write_definition(spec: &ModelSpec, out: &mut impl Write) -> io::Result<u64> {
    let stats = word_stats();
    let target = spec.target_definition_bytes.max(2_000) as u64;
    let tld_map = tld_map();

    // Pick the richest preprocessor plan whose size stays under half the target.
    let mut chosen: Option<(Plan, [String; 3])> = None;
    for &plan in PLANS {
        let maps = [
            render_map(&stats, Gram::U, plan.level, spec.seed),
            render_map(&stats, Gram::B, plan.level, spec.seed),
            render_map(&stats, Gram::T, plan.level, spec.seed),
        ];
        let mut sink = Counting {
            inner: io::sink(),
            n: 0,
        };
        write_preprocessors(&mut sink, plan, &maps, &tld_map)?;
        let fits = (sink.n as f64) <= target as f64 * 0.5;
        if fits || chosen.is_none() {
            chosen = Some((plan, maps));
        }
        if !fits {
            break;
        }
    }
    let (plan, maps) = chosen.expect("at least one plan");
    let feats = features(plan);

    let mut w = Counting {
        inner: io::BufWriter::with_capacity(1 << 16, out),
        n: 0,
    };
    w.write_all(b"{")?;
    write_preprocessors(&mut w, plan, &maps, &tld_map)?;
    drop(maps);
    w.write_all(b",\"trained_model\":{\"ensemble\":{\"feature_names\":")?;
    w.write_all(feats.names_json.as_bytes())?;
    w.write_all(
        b",\"target_type\":\"classification\",\"classification_labels\":[\"0\",\"1\"],\"trained_models\":[",
    )?;

    // Trees: depth chosen so one tree is ~1/25 of the room left, then stumps to fill up.
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let upper = (target as f64 * 1.04) as u64;
    let node_bytes = 150u64;
    let room = upper.saturating_sub(w.n);
    let mut depth = 1u32;
    while depth < 8
        && ((1u64 << (depth + 2)) - 1) * node_bytes + feats.names_json.len() as u64 <= room / 25
    {
        depth += 1;
    }
    // weights: `1.0e0` style numbers are ~8 bytes each incl. comma; closing ~80 bytes.
    let tail = |n: u64| 80 + 10 * (n + 1);
    let mut n_trees = 0u64;
    loop {
        let tree = render_tree(&mut rng, depth, &feats, &stats);
        let sep = if n_trees > 0 { 1 } else { 0 };
        if n_trees > 0 && w.n + sep + tree.len() as u64 + tail(n_trees + 1) > upper {
            if depth == 1 {
                break;
            }
            depth = 1; // fill the rest with stumps
            continue;
        }
        if sep == 1 {
            w.write_all(b",")?;
        }
        w.write_all(&tree)?;
        n_trees += 1;
    }
    let weight = format!("{:.6}", LOGIT_SCALE / n_trees as f64);
    w.write_all(b"],\"aggregate_output\":{\"logistic_regression\":{\"weights\":[")?;
    for i in 0..n_trees {
        if i > 0 {
            w.write_all(b",")?;
        }
        w.write_all(weight.as_bytes())?;
    }
    w.write_all(b"]}}}}}")?;
    w.flush()?;
    Ok(w.n)
}

/// The `inference_config` the real DGA model stores (real-stack.md): results under
/// `malicious_prediction` as a number, the two classes under `top_classes`. The Fleet pipeline's
/// processor overrides only `num_top_classes: 1`.
pub fn real_inference_config() -> Value {
    json!({"classification": {
        "num_top_classes": 2,
        "prediction_field_type": "number",
        "results_field": "malicious_prediction",
        "top_classes_results_field": "top_classes"
    }})
}

/// Write the full `PUT _ml/trained_models/<id>` body. `model_id` is included.
pub fn write_model_json(
    spec: &ModelSpec,
    encoding: ModelEncoding,
    out: &mut impl Write,
) -> io::Result<()> {
    write_model_json_opts(spec, encoding, true, out).map(|_| ())
}

/// Like `write_model_json`; `include_model_id: false` leaves the `model_id` key out (v1 files,
/// where the id comes from the file name). Returns the size of the definition JSON (before
/// gzip/base64).
pub fn write_model_json_opts(
    spec: &ModelSpec,
    encoding: ModelEncoding,
    include_model_id: bool,
    out: &mut impl Write,
) -> io::Result<u64> {
    let mut head = Map::new();
    if include_model_id {
        head.insert("model_id".into(), json!(spec.model_id));
    }
    head.insert(
        "description".into(),
        json!("TEST STAND-IN DGA model generated by dga-standin (not Elastic's trained model)"),
    );
    head.insert("tags".into(), json!(["dga"]));
    head.insert(
        "metadata".into(),
        json!({"generated_by": "dga-standin", "seed": spec.seed, "target_definition_bytes": spec.target_definition_bytes}),
    );
    head.insert("input".into(), json!({"field_names": input_field_names()}));
    head.insert("inference_config".into(), real_inference_config());
    if let Some(v) = &spec.get_export_of {
        // What GET adds (`TrainedModelConfig.toXContent`, 8.x): generated fields, the sizes the
        // real DGA model reports, and where the definition is stored. `definition` follows as
        // with `include=definition` (decompressed).
        let created = 1_611_725_000_000u64;
        head.insert("model_type".into(), json!("tree_ensemble"));
        head.insert("created_by".into(), json!("api_user"));
        head.insert("version".into(), json!(v));
        head.insert("create_time".into(), json!(created));
        head.insert("model_size_bytes".into(), json!(246_784_104u64));
        head.insert("estimated_operations".into(), json!(5_320u64));
        head.insert("license_level".into(), json!("platinum"));
        head.insert(
            "location".into(),
            json!({"index": {"name": ".ml-inference-native-000002"}}),
        );
    }
    let head = serde_json::to_string(&Value::Object(head)).unwrap();
    // Re-open the object to append the definition last.
    out.write_all(&head.as_bytes()[..head.len() - 1])?;
    let def_bytes;
    match encoding {
        ModelEncoding::Plain => {
            out.write_all(b",\"definition\":")?;
            def_bytes = write_definition(spec, out)?;
        }
        ModelEncoding::Compressed => {
            out.write_all(b",\"compressed_definition\":\"")?;
            let b64 = base64::write::EncoderWriter::new(
                &mut *out,
                &base64::engine::general_purpose::STANDARD,
            );
            let mut gz =
                flate2::write::GzEncoder::new(RetryZero(b64), flate2::Compression::default());
            def_bytes = write_definition(spec, &mut gz)?;
            let RetryZero(mut b64) = gz.finish()?;
            b64.finish()?;
            drop(b64);
            out.write_all(b"\"")?;
        }
    }
    out.write_all(b"}")?;
    out.flush()?;
    Ok(def_bytes)
}

/// base64's `EncoderWriter::write` answers `Ok(0)` for a non-empty buffer when it first has to
/// flush output left from an earlier call; flate2 takes that as `WriteZero`. Asking again makes
/// progress.
struct RetryZero<W: Write>(W);

impl<W: Write> Write for RetryZero<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for _ in 0..16 {
            let n = self.0.write(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "base64 encoder made no progress",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Decode a `compressed_definition` (base64 of gzipped JSON).
pub fn decode_compressed(b64: &str) -> Result<Value, String> {
    let gz = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("compressed_definition is not base64: {e}"))?;
    let rd = flate2::read::GzDecoder::new(&gz[..]);
    serde_json::from_reader(rd)
        .map_err(|e| format!("compressed_definition is not gzipped JSON: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Evaluator
// ---------------------------------------------------------------------------------------------

/// Look a dotted path up in a document: nested objects, literal dotted keys, or any mix.
pub fn lookup_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    if let Some(x) = obj.get(path) {
        return Some(x);
    }
    for (i, _) in path.match_indices('.') {
        if let Some(child) = obj.get(&path[..i])
            && let Some(r) = lookup_path(child, &path[i + 1..])
        {
            return Some(r);
        }
    }
    None
}

fn as_key(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn num(v: &Value, what: &str) -> Result<f64, String> {
    v.as_f64().ok_or_else(|| format!("{what} is not a number"))
}

fn apply_preprocessors(
    pre: &[Value],
    doc: &Value,
    feats: &mut HashMap<String, Value>,
) -> Result<(), String> {
    for p in pre {
        let (kind, body) = p
            .as_object()
            .and_then(|o| o.iter().next())
            .ok_or("preprocessor must be an object with one key")?;
        let field = body.get("field").and_then(Value::as_str);
        let value = field
            .and_then(|f| feats.get(f).or_else(|| lookup_path(doc, f)))
            .and_then(as_key);
        match kind.as_str() {
            "frequency_encoding" | "target_mean_encoding" => {
                let fname = body
                    .get("feature_name")
                    .and_then(Value::as_str)
                    .ok_or(format!("{kind}.feature_name missing"))?;
                let map_key = if kind == "frequency_encoding" {
                    "frequency_map"
                } else {
                    "target_map"
                };
                let map = body
                    .get(map_key)
                    .and_then(Value::as_object)
                    .ok_or(format!("{kind}.{map_key} missing"))?;
                let default = if kind == "target_mean_encoding" {
                    num(
                        body.get("default_value").unwrap_or(&Value::Null),
                        "default_value",
                    )?
                } else {
                    0.0
                };
                if let Some(v) = value {
                    let f = match map.get(&v) {
                        Some(x) => num(x, "map value")?,
                        None => default,
                    };
                    feats.insert(fname.to_string(), json!(f));
                }
            }
            "one_hot_encoding" => {
                let hot = body
                    .get("hot_map")
                    .and_then(Value::as_object)
                    .ok_or("one_hot_encoding.hot_map missing")?;
                if let Some(v) = value {
                    for (k, name) in hot {
                        let name = name.as_str().ok_or("hot_map value must be a string")?;
                        feats.insert(name.to_string(), json!(if *k == v { 1.0 } else { 0.0 }));
                    }
                }
            }
            "n_gram_encoding" => {
                // String features `<prefix>.<n><pos>` for later encoders to consume.
                let prefix = body
                    .get("feature_prefix")
                    .and_then(Value::as_str)
                    .unwrap_or("ngram");
                let ns: Vec<u64> = body
                    .get("n_grams")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_else(|| vec![1]);
                let start = body.get("start").and_then(Value::as_i64).unwrap_or(0);
                let length = body.get("length").and_then(Value::as_u64).unwrap_or(50) as usize;
                if let Some(v) = value {
                    let chars: Vec<char> = v.chars().collect();
                    let s = if start < 0 {
                        chars.len().saturating_sub(start.unsigned_abs() as usize)
                    } else {
                        (start as usize).min(chars.len())
                    };
                    let sub = &chars[s..(s + length).min(chars.len())];
                    for &n in &ns {
                        let n = n as usize;
                        let mut i = 0;
                        while n > 0 && i + n <= sub.len() {
                            feats.insert(
                                format!("{prefix}.{n}{i}"),
                                Value::String(sub[i..i + n].iter().collect()),
                            );
                            i += 1;
                        }
                    }
                }
            }
            other => return Err(format!("unknown preprocessor {other}")),
        }
    }
    Ok(())
}

fn eval_tree(
    tree: &Value,
    feats: &HashMap<String, Value>,
    doc: &Value,
) -> Result<Vec<f64>, String> {
    let names: Vec<&str> = tree
        .get("feature_names")
        .and_then(Value::as_array)
        .ok_or("tree.feature_names missing")?
        .iter()
        .map(|v| v.as_str().unwrap_or(""))
        .collect();
    let nodes = tree
        .get("tree_structure")
        .and_then(Value::as_array)
        .ok_or("tree.tree_structure missing")?;
    let mut by_index: HashMap<i64, &Value> = HashMap::new();
    for (pos, n) in nodes.iter().enumerate() {
        let idx = n
            .get("node_index")
            .and_then(Value::as_i64)
            .unwrap_or(pos as i64);
        by_index.insert(idx, n);
    }
    let mut cur = 0i64;
    for _ in 0..=nodes.len() {
        let node = by_index
            .get(&cur)
            .ok_or(format!("tree has no node {cur}"))?;
        let left = node.get("left_child").and_then(Value::as_i64).unwrap_or(-1);
        if left < 0 {
            return match node.get("leaf_value") {
                Some(Value::Array(a)) => a.iter().map(|x| num(x, "leaf_value")).collect(),
                Some(x) => Ok(vec![num(x, "leaf_value")?]),
                None => Err(format!("leaf {cur} has no leaf_value")),
            };
        }
        let right = node
            .get("right_child")
            .and_then(Value::as_i64)
            .ok_or(format!("node {cur} has left_child but no right_child"))?;
        let sf = node
            .get("split_feature")
            .and_then(Value::as_u64)
            .ok_or(format!("node {cur} has no split_feature"))? as usize;
        let fname = names
            .get(sf)
            .ok_or(format!("split_feature {sf} out of range"))?;
        let threshold = num(node.get("threshold").unwrap_or(&Value::Null), "threshold")?;
        let default_left = node
            .get("default_left")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let x = feats
            .get(*fname)
            .or_else(|| lookup_path(doc, fname))
            .and_then(Value::as_f64);
        let go_left = match x {
            None => default_left,
            Some(x) if x.is_nan() => default_left,
            Some(x) => match node
                .get("decision_type")
                .and_then(Value::as_str)
                .unwrap_or("lte")
            {
                "lte" => x <= threshold,
                "lt" => x < threshold,
                "gt" => x > threshold,
                "gte" => x >= threshold,
                other => return Err(format!("unknown decision_type {other}")),
            },
        };
        cur = if go_left { left } else { right };
    }
    Err("tree has a cycle".into())
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn softmax(v: &[f64]) -> Vec<f64> {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = v.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// Run a tree-ensemble (or single tree) definition on a document. `num_top_classes` as in the
/// inference config; `predicted_value` / `class_name` are the label strings (ES's default
/// `prediction_field_type: string`). See `evaluate_with_config` for the other options.
/// `definition` may also be a whole PUT body (its `definition` or `compressed_definition`).
/// Per-tree outputs, labels, target type, aggregate output and class weights of a model.
type Evaluated<'a> = (
    Vec<Vec<f64>>,
    Vec<Value>,
    String,
    Option<&'a Value>,
    Option<&'a Value>,
);

pub fn evaluate(definition: &Value, doc: &Value, num_top_classes: usize) -> Result<Value, String> {
    evaluate_with_config(
        definition,
        doc,
        &json!({"classification": {"num_top_classes": num_top_classes}}),
    )
}

/// Like `evaluate`, driven by an `inference_config` (`{"classification": {num_top_classes,
/// prediction_field_type: string|number|boolean}}` or `{"regression": {}}`).
pub fn evaluate_with_config(
    definition: &Value,
    doc: &Value,
    inference_config: &Value,
) -> Result<Value, String> {
    let decoded;
    let mut def = definition;
    if def.get("trained_model").is_none() {
        if let Some(d) = definition.get("definition") {
            def = d;
        } else if let Some(c) = definition
            .get("compressed_definition")
            .and_then(Value::as_str)
        {
            decoded = decode_compressed(c)?;
            def = &decoded;
        }
    }
    let mut feats = HashMap::new();
    if let Some(pre) = def.get("preprocessors") {
        let pre = pre.as_array().ok_or("preprocessors must be an array")?;
        apply_preprocessors(pre, doc, &mut feats)?;
    }
    let tm = def
        .get("trained_model")
        .ok_or("definition.trained_model missing")?;
    // An ensemble and a lone tree carry these alike.
    let labels_of = |m: &Value| {
        m.get("classification_labels")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let target_type_of = |m: &Value| {
        m.get("target_type")
            .and_then(Value::as_str)
            .unwrap_or("regression")
            .to_string()
    };
    let (outputs, labels, target_type, aggregate, class_weights): Evaluated<'_> =
        if let Some(ens) = tm.get("ensemble") {
            let models = ens
                .get("trained_models")
                .and_then(Value::as_array)
                .ok_or("ensemble.trained_models missing")?;
            let mut outs = Vec::with_capacity(models.len());
            for m in models {
                let tree = m
                    .get("tree")
                    .ok_or("only tree models are supported in an ensemble")?;
                outs.push(eval_tree(tree, &feats, doc)?);
            }
            (
                outs,
                labels_of(ens),
                target_type_of(ens),
                ens.get("aggregate_output"),
                ens.get("classification_weights"),
            )
        } else if let Some(tree) = tm.get("tree") {
            (
                vec![eval_tree(tree, &feats, doc)?],
                labels_of(tree),
                target_type_of(tree),
                None,
                tree.get("classification_weights"),
            )
        } else {
            return Err("trained_model must hold an ensemble or a tree".into());
        };

    let n = outputs.len();
    let (agg_name, agg_body) = match aggregate
        .and_then(Value::as_object)
        .and_then(|o| o.iter().next())
    {
        Some((k, v)) => (k.as_str(), Some(v)),
        None if target_type == "classification" && n == 1 => ("single_tree", None),
        None => ("weighted_sum", None),
    };
    let weights: Vec<f64> = match agg_body
        .and_then(|b| b.get("weights"))
        .and_then(Value::as_array)
    {
        Some(w) => w
            .iter()
            .map(|x| num(x, "weight"))
            .collect::<Result<_, _>>()?,
        None => vec![1.0; n],
    };
    if weights.len() != n {
        return Err(format!("{} weights for {} models", weights.len(), n));
    }
    let first = |o: &Vec<f64>| o.first().copied().unwrap_or(0.0);

    if target_type != "classification" || inference_config.get("regression").is_some() {
        let s: f64 = outputs
            .iter()
            .zip(&weights)
            .map(|(o, w)| w * first(o))
            .sum();
        let v = if agg_name == "exponent" { s.exp() } else { s };
        let field = inference_config
            .pointer("/regression/results_field")
            .and_then(Value::as_str)
            .unwrap_or("predicted_value");
        return Ok(json!({ field: v }));
    }

    let nclasses = labels.len().max(2);
    let probs: Vec<f64> = match agg_name {
        "logistic_regression" => {
            let s: f64 = outputs
                .iter()
                .zip(&weights)
                .map(|(o, w)| w * first(o))
                .sum();
            let p = sigmoid(s);
            vec![1.0 - p, p]
        }
        // WeightedMode.processValues: multi-valued leaves (eland's forests store log class
        // fractions) are summed per class, weighted, then softmaxed; single values are class
        // votes, and a class no tree voted for starts at -inf (probability 0).
        "weighted_mode" if outputs.first().is_some_and(|o| o.len() > 1) => {
            let mut sums = vec![0.0; outputs[0].len()];
            for (o, w) in outputs.iter().zip(&weights) {
                for (s, v) in sums.iter_mut().zip(o) {
                    *s += v * w;
                }
            }
            softmax(&sums)
        }
        "weighted_mode" => {
            let mut votes = vec![f64::NEG_INFINITY; nclasses];
            for (o, w) in outputs.iter().zip(&weights) {
                let c = first(o).round().max(0.0) as usize;
                if c < nclasses {
                    votes[c] = if votes[c] == f64::NEG_INFINITY {
                        *w
                    } else {
                        votes[c] + w
                    };
                }
            }
            softmax(&votes)
        }
        "single_tree" => {
            let o = &outputs[0];
            if o.len() == nclasses {
                softmax(o)
            } else {
                let p = sigmoid(first(o));
                vec![1.0 - p, p]
            }
        }
        _ => {
            // weighted_sum / exponent used for classification: treat the sum as a logit.
            let s: f64 = outputs
                .iter()
                .zip(&weights)
                .map(|(o, w)| w * first(o))
                .sum();
            let s = if agg_name == "exponent" { s.exp() } else { s };
            let p = sigmoid(s);
            vec![1.0 - p, p]
        }
    };
    let cw: Vec<f64> = match class_weights.and_then(Value::as_array) {
        Some(a) => a.iter().map(|x| x.as_f64().unwrap_or(1.0)).collect(),
        None => vec![1.0; probs.len()],
    };
    let scores: Vec<f64> = probs
        .iter()
        .enumerate()
        .map(|(i, p)| p * cw.get(i).copied().unwrap_or(1.0))
        .collect();
    let label = |i: usize| -> String {
        labels
            .get(i)
            .and_then(as_key)
            .unwrap_or_else(|| i.to_string())
    };
    let cfg = inference_config
        .get("classification")
        .cloned()
        .unwrap_or(json!({}));
    let ftype = cfg
        .get("prediction_field_type")
        .and_then(Value::as_str)
        .unwrap_or("string");
    let typed = |s: String| -> Value {
        match ftype {
            "number" => s
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| s.parse::<f64>().map(Value::from))
                .unwrap_or(Value::String(s)),
            "boolean" => match s.as_str() {
                "1" | "true" => Value::Bool(true),
                "0" | "false" => Value::Bool(false),
                _ => Value::String(s),
            },
            _ => Value::String(s),
        }
    };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| {
        scores[*b]
            .partial_cmp(&scores[*a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let top = order[0];
    // ClassificationConfig: the field names come from the (merged) config; the defaults hold
    // only where neither the model nor the processor set one.
    let results_field = cfg
        .get("results_field")
        .and_then(Value::as_str)
        .unwrap_or("predicted_value");
    let top_field = cfg
        .get("top_classes_results_field")
        .and_then(Value::as_str)
        .unwrap_or("top_classes");
    let mut res = Map::new();
    res.insert(results_field.into(), typed(label(top)));
    res.insert("prediction_probability".into(), json!(probs[top]));
    res.insert("prediction_score".into(), json!(scores[top]));
    let ntop = cfg
        .get("num_top_classes")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let ntop = if ntop < 0 {
        order.len()
    } else {
        (ntop as usize).min(order.len())
    };
    if ntop > 0 {
        let tc: Vec<Value> = order[..ntop]
            .iter()
            .map(|&i| json!({"class_name": typed(label(i)), "class_probability": probs[i], "class_score": scores[i]}))
            .collect();
        res.insert(top_field.into(), Value::Array(tc));
    }
    Ok(Value::Object(res))
}

/// Convenience for tests: features of `dns.question.*` in `doc`, merged with `doc`, then
/// evaluated; returns the probability of class "1".
pub fn dga_probability(definition: &Value, doc: &Value) -> Result<f64, String> {
    let mut merged = doc.as_object().cloned().unwrap_or_default();
    merged.extend(extract_features_from_doc(doc));
    let r = evaluate(definition, &Value::Object(merged), 2)?;
    let tc = r["top_classes"].as_array().cloned().unwrap_or_default();
    Ok(tc
        .iter()
        .find(|c| c["class_name"] == json!("1"))
        .and_then(|c| c["class_probability"].as_f64())
        .unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns_doc(
        name: &str,
        registered: Option<&str>,
        sub: Option<&str>,
        tld: Option<&str>,
    ) -> Value {
        let mut q = json!({"name": name, "type": "A"});
        if let Some(r) = registered {
            q["registered_domain"] = json!(r);
        }
        if let Some(s) = sub {
            q["subdomain"] = json!(s);
        }
        if let Some(t) = tld {
            q["top_level_domain"] = json!(t);
        }
        json!({"type": "dns", "dns": {"question": q, "response_code": "NOERROR"}})
    }

    #[test]
    fn features_follow_the_script_rules() {
        let m = extract_features(
            Some("www.google.com"),
            Some("www"),
            Some("google.com"),
            Some("com"),
        );
        assert_eq!(m["f.tld"], "com");
        assert_eq!(m["f.u0"], "g");
        assert_eq!(m["f.u5"], "e"); // last char kept (the fixed `i+n > len` rule)
        assert!(m.get("f.u6").is_none());
        assert_eq!(m["f.b4"], "le");
        assert!(m.get("f.b5").is_none());
        assert_eq!(m["f.t3"], "gle");
        assert!(m.get("f.t4").is_none());
        // null / "." registered domain: the full name, empty tld
        let m = extract_features(Some("abc.local"), None, None, None);
        assert_eq!(m["f.tld"], "");
        assert_eq!(m["f.u8"], "l");
        let m = extract_features(Some("x"), None, Some("."), None);
        assert_eq!(m["f.u0"], "x");
        assert!(m.get("f.b0").is_none());
        // dynamic DNS with a subdomain
        let m = extract_features(
            Some("abcd.ddns.net"),
            Some("abcd"),
            Some("ddns.net"),
            Some("net"),
        );
        assert_eq!(m["f.tld"], "ddns.net");
        assert_eq!(m["f.t1"], "bcd");
        // dynamic DNS without subdomain: ordinary rule
        let m = extract_features(Some("ddns.net"), None, Some("ddns.net"), Some("net"));
        assert_eq!(m["f.u3"], "s");
        assert_eq!(m["f.tld"], "net");
        // multi-label public suffix
        let m = extract_features(Some("bbc.co.uk"), None, Some("bbc.co.uk"), Some("co.uk"));
        assert_eq!(m["f.t0"], "bbc");
        assert_eq!(m["f.tld"], "co.uk");
        assert!(extract_features(None, None, None, None).is_empty());
    }

    fn hand_model() -> Value {
        json!({
          "preprocessors": [
            {"frequency_encoding": {"field": "f.u0", "feature_name": "f.u0_frequency",
                                    "frequency_map": {"a": 0.5, "b": 0.1}}},
            {"one_hot_encoding": {"field": "dns.response_code",
                                  "hot_map": {"NXDOMAIN": "rc_nx"}}}
          ],
          "trained_model": {"ensemble": {
            "feature_names": ["f.u0_frequency", "rc_nx"],
            "target_type": "classification",
            "classification_labels": ["0", "1"],
            "aggregate_output": {"logistic_regression": {"weights": [1.0, 1.0]}},
            "trained_models": [
              {"tree": {"feature_names": ["f.u0_frequency", "rc_nx"], "target_type": "regression",
                "tree_structure": [
                  {"node_index": 0, "split_feature": 0, "threshold": 0.2, "decision_type": "lte",
                   "default_left": true, "left_child": 1, "right_child": 2},
                  {"node_index": 1, "leaf_value": 2.0},
                  {"node_index": 2, "leaf_value": -2.0}]}},
              {"tree": {"feature_names": ["f.u0_frequency", "rc_nx"], "target_type": "regression",
                "tree_structure": [
                  {"node_index": 0, "split_feature": 1, "threshold": 0.5, "decision_type": "gt",
                   "default_left": false, "left_child": 1, "right_child": 2},
                  {"node_index": 1, "leaf_value": 1.0},
                  {"node_index": 2, "leaf_value": 0.0}]}}
            ]}}
        })
    }

    #[test]
    fn hand_written_model_known_outputs() {
        let m = hand_model();
        // "a": freq 0.5 > 0.2 → right (-2); NOERROR → rc_nx 0 → not > 0.5 → right (0). sum -2
        let doc = json!({"f": {"u0": "a"}, "dns": {"response_code": "NOERROR"}});
        let r = evaluate(&m, &doc, 1).unwrap();
        let p1 = sigmoid(-2.0);
        assert_eq!(r["predicted_value"], "0");
        assert!((r["prediction_probability"].as_f64().unwrap() - (1.0 - p1)).abs() < 1e-12);
        assert_eq!(r["top_classes"].as_array().unwrap().len(), 1);
        assert_eq!(r["top_classes"][0]["class_name"], "0");
        // unknown letter → 0.0 ≤ 0.2 → left (+2); literal dotted keys; NXDOMAIN → gt → left (+1)
        let doc = json!({"f.u0": "z", "dns.response_code": "NXDOMAIN"});
        let r = evaluate(&m, &doc, 2).unwrap();
        assert_eq!(r["predicted_value"], "1");
        assert!((r["prediction_probability"].as_f64().unwrap() - sigmoid(3.0)).abs() < 1e-12);
        assert_eq!(r["top_classes"].as_array().unwrap().len(), 2);
        assert_eq!(r["top_classes"][1]["class_name"], "0");
        // missing everything: tree1 default_left → +2, tree2 default right → 0
        let r = evaluate(&m, &json!({}), 0).unwrap();
        assert!((r["prediction_probability"].as_f64().unwrap() - sigmoid(2.0)).abs() < 1e-12);
        assert!(r.get("top_classes").is_none());
        // number typing
        let r = evaluate_with_config(
            &m,
            &json!({}),
            &json!({"classification": {"num_top_classes": 1, "prediction_field_type": "number"}}),
        )
        .unwrap();
        assert_eq!(r["predicted_value"], json!(1));
        assert_eq!(r["top_classes"][0]["class_name"], json!(1));
        // other aggregations
        let mut ws = m.clone();
        ws["trained_model"]["ensemble"]["target_type"] = json!("regression");
        ws["trained_model"]["ensemble"]["aggregate_output"] =
            json!({"weighted_sum": {"weights": [0.5, 2.0]}});
        let r = evaluate(
            &ws,
            &json!({"f.u0": "z", "dns.response_code": "NXDOMAIN"}),
            1,
        )
        .unwrap();
        assert_eq!(r["predicted_value"], json!(3.0));
        ws["trained_model"]["ensemble"]["aggregate_output"] =
            json!({"exponent": {"weights": [1.0, 1.0]}});
        let r = evaluate(&ws, &json!({"f.u0": "a"}), 1).unwrap();
        assert!((r["predicted_value"].as_f64().unwrap() - (-2.0f64).exp()).abs() < 1e-12);
        let mut wm = m.clone();
        wm["trained_model"]["ensemble"]["aggregate_output"] =
            json!({"weighted_mode": {"weights": [1.0, 3.0]}});
        // tree outputs -2 (→ class 0 clamp) and 1 (class 1, weight 3): class 1 wins
        let r = evaluate(
            &wm,
            &json!({"f.u0": "a", "dns.response_code": "NXDOMAIN"}),
            1,
        )
        .unwrap();
        assert_eq!(r["predicted_value"], "1");
        // errors
        assert!(evaluate(&json!({"trained_model": {}}), &json!({}), 1).is_err());
    }

    #[test]
    fn generated_model_separates_dga_from_words() {
        let spec = ModelSpec::new("dga_test", 300_000, 7);
        let mut buf = Vec::new();
        let n = write_definition(&spec, &mut buf).unwrap();
        assert_eq!(n as usize, buf.len());
        let def: Value = serde_json::from_slice(&buf).unwrap();
        let p = |name: &str, reg: &str, tld: &str| {
            dga_probability(&def, &dns_doc(name, Some(reg), None, Some(tld))).unwrap()
        };
        let dga = [
            p("xjqkw3vbz.biz", "xjqkw3vbz.biz", "biz"),
            p("qzx8kvj2wq.ru", "qzx8kvj2wq.ru", "ru"),
            p("kq3xzvjw7p.com", "kq3xzvjw7p.com", "com"),
        ];
        let words = [
            p("www.google.com", "google.com", "com"),
            p("en.wikipedia.org", "wikipedia.org", "org"),
            p("store.example.com", "market.com", "com"),
        ];
        for d in dga {
            for w in words {
                assert!(d > w, "dga {d} should beat word {w} ({dga:?} vs {words:?})");
            }
        }
        eprintln!("dga {dga:?} words {words:?}");
        assert!(dga.iter().all(|&d| d > 0.5), "{dga:?}");
        assert!(words.iter().all(|&w| w < 0.5), "{words:?}");
    }

    #[test]
    fn sizes_land_within_ten_percent_and_are_deterministic() {
        for target in [5_000usize, 20_000, 120_000, 1_500_000] {
            let spec = ModelSpec::new("m", target, 42);
            let mut buf = Vec::new();
            let n = write_definition(&spec, &mut buf).unwrap() as f64;
            assert!(
                (n - target as f64).abs() <= target as f64 * 0.10,
                "target {target} got {n}"
            );
            let v: Value = serde_json::from_slice(&buf).unwrap();
            let trees = v["trained_model"]["ensemble"]["trained_models"]
                .as_array()
                .unwrap()
                .len();
            let weights = v["trained_model"]["ensemble"]["aggregate_output"]["logistic_regression"]
                ["weights"]
                .as_array()
                .unwrap()
                .len();
            assert_eq!(trees, weights);
            let mut again = Vec::new();
            write_definition(&spec, &mut again).unwrap();
            assert_eq!(buf, again);
        }
        let a = {
            let mut b = Vec::new();
            write_definition(&ModelSpec::new("m", 50_000, 1), &mut b).unwrap();
            b
        };
        let b = {
            let mut b = Vec::new();
            write_definition(&ModelSpec::new("m", 50_000, 2), &mut b).unwrap();
            b
        };
        assert_ne!(a, b);
    }

    #[test]
    fn compressed_model_json_roundtrips() {
        let spec = ModelSpec::new("dga_1611725_2.0", 200_000, 3);
        let mut plain = Vec::new();
        write_model_json(&spec, ModelEncoding::Plain, &mut plain).unwrap();
        let mut comp = Vec::new();
        write_model_json(&spec, ModelEncoding::Compressed, &mut comp).unwrap();
        let plain: Value = serde_json::from_slice(&plain).unwrap();
        let comp: Value = serde_json::from_slice(&comp).unwrap();
        assert_eq!(plain["model_id"], "dga_1611725_2.0");
        assert_eq!(plain["input"]["field_names"].as_array().unwrap().len(), 185);
        assert_eq!(plain["input"]["field_names"][1], "f.u0");
        assert_eq!(plain["input"]["field_names"][184], "f.tld");
        let decoded = decode_compressed(comp["compressed_definition"].as_str().unwrap()).unwrap();
        assert_eq!(decoded, plain["definition"]);
        let doc = dns_doc("xjqkw3vbz.biz", Some("xjqkw3vbz.biz"), None, Some("biz"));
        // evaluate accepts the whole body too
        let a = dga_probability(&comp, &doc).unwrap();
        let b = dga_probability(&decoded, &doc).unwrap();
        assert_eq!(a, b);
        assert!(decode_compressed("not base64!").is_err());
    }

    #[test]
    fn separation_holds_across_sizes() {
        for (target, seed) in [(6_000usize, 1u64), (60_000, 2), (1_000_000, 3)] {
            let mut buf = Vec::new();
            write_definition(&ModelSpec::new("m", target, seed), &mut buf).unwrap();
            let def: Value = serde_json::from_slice(&buf).unwrap();
            let p = |reg: &str, tld: &str| {
                dga_probability(&def, &dns_doc(reg, Some(reg), None, Some(tld))).unwrap()
            };
            let dga = p("xjqkw3vbz.biz", "biz") + p("zq7xkj4vw9.ru", "ru");
            let words = p("google.com", "com") + p("weather.org", "org");
            // A 6 KB model has a handful of stumps: only ask it not to invert the order.
            if target < 10_000 {
                assert!(dga >= words, "target {target}: dga {dga} words {words}");
            } else {
                assert!(
                    dga > words + 0.5,
                    "target {target}: dga {dga} words {words}"
                );
            }
        }
    }

    /// The realistic size: ~250 MB definition, gzip ratio. `cargo test --release -- --ignored`.
    #[test]
    #[ignore]
    fn size_250mb() {
        let spec = ModelSpec::new("m", 250_000_000, 5);
        let mut counted = Counting {
            inner: io::sink(),
            n: 0,
        };
        let mut gz = flate2::write::GzEncoder::new(&mut counted, flate2::Compression::default());
        let t = std::time::Instant::now();
        let n = write_definition(&spec, &mut gz).unwrap();
        gz.finish().unwrap();
        eprintln!(
            "250 MB target: {n} bytes, gzip {} bytes, ratio {:.1}, {:?}",
            counted.n,
            n as f64 / counted.n as f64,
            t.elapsed()
        );
        assert!((n as f64 - 250e6).abs() <= 25e6, "{n}");
    }

    /// Large-ish model: written through gzip into a counting sink (never held whole).
    #[test]
    fn twenty_mb_streams_and_compresses() {
        let spec = ModelSpec::new("m", 20_000_000, 11);
        let mut counted = Counting {
            inner: io::sink(),
            n: 0,
        };
        let mut gz = flate2::write::GzEncoder::new(&mut counted, flate2::Compression::default());
        let n = write_definition(&spec, &mut gz).unwrap();
        gz.finish().unwrap();
        let ratio = n as f64 / counted.n as f64;
        eprintln!(
            "20 MB target: {n} bytes, gzip {} bytes, ratio {ratio:.1}",
            counted.n
        );
        assert!((n as f64 - 20e6).abs() <= 2e6, "{n}");
        assert!((4.0..=20.0).contains(&ratio), "compression ratio {ratio}");
    }
}
