//! TEST STAND-IN release bundles: writes ML-DGA release zips (layout v1 or v2) and their
//! `manifest-<tag>.json`, like the assets the detection-rules repository published, with a
//! generated model (see `model`). Also writes deliberately broken bundles for negative tests.
//!
//! Everything is streamed: the model entry goes through the model generator straight into the
//! zip (and through gzip + base64 for a compressed definition), so a 250 MB model never sits in
//! memory.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipArchive, ZipWriter};

use crate::model::{self, ModelEncoding, ModelSpec};

/// Release layouts of the ML-DGA package (see ML-DGA.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// 2020–2021: `dga_*_model.json`, `dga_*_ngrams_create.json`, ... fixed ids.
    V1,
    /// 2021–2025: kind = last `_` part of the stem, ids = file stems, model id inside.
    V2,
}

#[derive(Clone, Debug)]
pub struct BundleSpec {
    /// `ML-DGA-YYYYMMDD-N`
    pub tag: String,
    pub layout: Layout,
    pub encoding: ModelEncoding,
    pub model: ModelSpec,
    /// Include detection-rule files (`<tag>/rules/*_rule.json`).
    pub rules: bool,
}

/// Model ids of the real releases, reused for the generated stand-ins.
pub const V1_MODEL_ID: &str = "dga_875109_1.0";
pub const V2_MODEL_ID: &str = "dga_1611725_2.0";

impl BundleSpec {
    /// A small (~60 KB model) bundle: v1 with a plain `definition` and the real v1 model id,
    /// v2 with a `compressed_definition`, the real v2 model id and rule files. Seed derived
    /// from the tag, so the same tag gives the same bytes.
    pub fn small(tag: &str, layout: Layout) -> Self {
        let seed = u64::from_be_bytes(Sha256::digest(tag.as_bytes())[..8].try_into().unwrap());
        let (model_id, encoding, rules) = match layout {
            Layout::V1 => (V1_MODEL_ID, ModelEncoding::Plain, false),
            Layout::V2 => (V2_MODEL_ID, ModelEncoding::Compressed, true),
        };
        BundleSpec {
            tag: tag.to_string(),
            layout,
            encoding,
            model: ModelSpec::new(model_id, 60_000, seed),
            rules,
        }
    }

    /// Same release, with the model file written as a GET export of Elasticsearch 8.17 (read-only
    /// fields `created_by`, `version`, `create_time`, `license_level`, `location`, ... included;
    /// `definition` in plain JSON, as `include=definition` gives it).
    pub fn as_get_export(mut self) -> Self {
        self.model.get_export_of = Some("8.17.0".into());
        self.encoding = ModelEncoding::Plain;
        self
    }

    /// Same, with a model definition of about `bytes`.
    pub fn with_model_bytes(mut self, bytes: usize) -> Self {
        self.model.target_definition_bytes = bytes;
        self
    }
}

/// One zip entry as listed by the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Base name (the manifest keys entries by base name, as the detection-rules tool did).
    pub name: String,
    /// Full path inside the zip (`<tag>/...`).
    pub path: String,
    pub size: u64,
    pub compress_size: u64,
    pub sha256: String,
}

#[derive(Clone, Debug)]
pub struct Release {
    pub tag: String,
    /// The zip (for `write_unpacked`: the `<dir>/<tag>` folder).
    pub zip_path: PathBuf,
    /// sha256 of the zip file (empty for `write_unpacked`).
    pub zip_sha256: String,
    /// `manifest-<tag>.json` (empty path for `write_unpacked`).
    pub manifest_path: PathBuf,
    pub model_id: String,
    pub files: Vec<ManifestEntry>,
    pub script_ids: Vec<String>,
    pub pipeline_ids: Vec<String>,
    pub router_pipeline: String,
    pub inference_pipeline: String,
    /// `rule_id`s of the rule files (empty without `rules`).
    pub rule_ids: Vec<String>,
    /// Bytes of the model's definition JSON (before gzip/base64).
    pub definition_bytes: u64,
}

/// The file names and ids of a layout.
#[derive(Clone, Debug)]
pub struct Names {
    pub model_file: String,
    pub create_script_file: String,
    pub create_script_id: String,
    pub delete_script_file: String,
    pub delete_script_id: String,
    pub router_file: String,
    pub router_id: String,
    pub inference_file: String,
    pub inference_id: String,
}

/// File names (relative to `<tag>/`) and ids for a layout and model id.
pub fn names(layout: Layout, model_id: &str) -> Names {
    match layout {
        // The real v1 release named its scripts `<model>_dga_ngrams_create.json` etc.
        Layout::V1 => Names {
            model_file: format!("{model_id}_model.json"),
            create_script_file: format!("{model_id}_dga_ngrams_create.json"),
            create_script_id: "dga_ngrams_create".into(),
            delete_script_file: format!("{model_id}_dga_ngrams_transform_delete.json"),
            delete_script_id: "dga_ngrams_transform_delete".into(),
            router_file: format!("{model_id}_ingest_pipeline1.json"),
            router_id: "dns_enrich_pipeline".into(),
            inference_file: format!("{model_id}_ingest_pipeline2.json"),
            inference_id: "dns_dga_inference_enrich_pipeline".into(),
        },
        Layout::V2 => Names {
            model_file: format!("{model_id}_model.json"),
            create_script_file: "ml_dga_ngrams_create_script.json".into(),
            create_script_id: "ml_dga_ngrams_create_script".into(),
            delete_script_file: "ml_dga_ngrams_transform_delete_script.json".into(),
            delete_script_id: "ml_dga_ngrams_transform_delete_script".into(),
            router_file: "ml_dga_ingest_pipeline.json".into(),
            router_id: "ml_dga_ingest_pipeline".into(),
            inference_file: "ml_dga_inference_pipeline.json".into(),
            inference_id: "ml_dga_inference_pipeline".into(),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The painless scripts and pipelines (ML-DGA.md, "The enrichment logic")
// ---------------------------------------------------------------------------------------------

/// Step 2: split the DNS question into sld/tld and write the n-gram features under `f`.
pub fn ngrams_create_source() -> String {
    let dynamic = model::DYNAMIC_DNS
        .iter()
        .map(|d| format!("'{d}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"// ML-DGA step 2: n-gram features of the queried domain for the DGA model.
def dns = ctx.dns;
if (dns == null || !(dns instanceof Map)) {{ return; }}
def q = dns.question;
if (q == null || !(q instanceof Map)) {{ return; }}
String name = q.name == null ? null : q.name.toString();
String registered = q.registered_domain == null ? null : q.registered_domain.toString();
String subdomain = q.subdomain == null ? null : q.subdomain.toString();
String topLevel = q.top_level_domain == null ? '' : q.top_level_domain.toString();
List dynamicDns = [{dynamic}];
String sld;
String tld;
if (registered == null || registered == '.') {{
  // No registered domain: score the whole name.
  if (name == null) {{ return; }}
  sld = name;
  tld = '';
}} else if (dynamicDns.contains(registered) && subdomain != null && subdomain != '') {{
  // Dynamic-DNS providers: the customer-chosen label is the subdomain.
  sld = subdomain;
  tld = registered;
}} else {{
  tld = topLevel;
  String suffix = '.' + topLevel;
  if (topLevel != '' && registered.endsWith(suffix)) {{
    sld = registered.substring(0, registered.length() - suffix.length());
  }} else {{
    sld = registered;
  }}
}}
Map f = new HashMap();
f.put('tld', tld);
int len = sld.length();
// Substrings of length 1, 2, 3 at every offset i, while i + n <= len.
for (int i = 0; i + 1 <= len; i++) {{ f.put('u' + i, sld.substring(i, i + 1)); }}
for (int i = 0; i + 2 <= len; i++) {{ f.put('b' + i, sld.substring(i, i + 2)); }}
for (int i = 0; i + 3 <= len; i++) {{ f.put('t' + i, sld.substring(i, i + 3)); }}
ctx.f = f;
"#
    )
}

/// Step 4: keep `malicious_prediction` (0/1) and `malicious_probability`, drop `f`. Reads what
/// the real model writes (its stored `inference_config`, real-stack.md): the Fleet pipeline's
/// script takes `ml_is_dga.malicious_prediction` and the probability of class 1 from
/// `ml_is_dga.top_classes`.
pub fn ngrams_transform_delete_source() -> String {
    r#"// ML-DGA step 4: reduce the inference result to the two verdict fields, drop the features.
def r = ctx.ml_is_dga;
if (r != null && r instanceof Map) {
  def pred = r.malicious_prediction;
  int malicious = 0;
  if (pred instanceof Number) {
    malicious = ((Number) pred).doubleValue() == 1.0 ? 1 : 0;
  } else if (pred != null) {
    String s = pred.toString();
    malicious = (s == '1' || s == '1.0' || s == 'true') ? 1 : 0;
  }
  double probability = 0.0;
  if (malicious == 1 && r.top_classes instanceof List) {
    for (def c : r.top_classes) {
      if (c != null && c.class_name != null && c.class_probability instanceof Number) {
        def n = c.class_name;
        boolean one = n instanceof Number ? ((Number) n).doubleValue() == 1.0 : n.toString() == '1';
        if (one) { probability = ((Number) c.class_probability).doubleValue(); }
      }
    }
  }
  ctx.ml_is_dga = ['malicious_prediction': malicious, 'malicious_probability': probability];
}
ctx.remove('f');
"#
    .to_string()
}

/// Stored-script body: `{"script":{"lang":"painless","source":...}}`.
pub fn script_json(source: &str) -> Value {
    json!({"script": {"lang": "painless", "source": source}})
}

/// Router pipeline: run the inference pipeline for DNS questions that are not PTR lookups.
pub fn router_pipeline_json(inference_pipeline: &str) -> Value {
    json!({
        "description": "ML-DGA: route DNS events to the DGA inference pipeline (dga-standin test bundle)",
        "processors": [
            {"pipeline": {
                "name": inference_pipeline,
                "if": "ctx.type == 'dns' && ctx.dns?.question?.type != 'PTR'"
            }}
        ],
        "on_failure": [
            {"set": {"field": "error.message", "value": "{{ _ingest.on_failure_message }}"}}
        ]
    })
}

/// Inference pipeline: features script → inference → verdict script.
pub fn inference_pipeline_json(create_script: &str, model_id: &str, delete_script: &str) -> Value {
    json!({
        "description": "ML-DGA: score the DNS question with the DGA model (dga-standin test bundle)",
        "processors": [
            {"script": {"id": create_script}},
            {"inference": {
                "if": "ctx.f != null",
                "model_id": model_id,
                "target_field": "ml_is_dga",
                "field_map": {},
                "inference_config": {"classification": {"num_top_classes": 1}}
            }},
            {"script": {"id": delete_script}}
        ],
        "on_failure": [
            {"set": {"field": "event.kind", "value": "pipeline_error"}},
            {"set": {"field": "error.message", "value": "{{ _ingest.on_failure_message }}"}}
        ]
    })
}

/// Detection rules shipped with v2 bundles when `rules` is set: `(file stem, rule JSON)`.
pub fn rules_json() -> Vec<(String, Value)> {
    let tags = json!([
        "ML-DGA",
        "Use Case: Domain Generation Algorithm Detection",
        "Domain: Network"
    ]);
    let index = json!([
        "logs-endpoint.events.*",
        "logs-network_traffic.*",
        "packetbeat-*"
    ]);
    let threat = json!([{
        "framework": "MITRE ATT&CK",
        "tactic": {"id": "TA0011", "name": "Command and Control", "reference": "https://attack.mitre.org/tactics/TA0011/"},
        "technique": [
            {"id": "T1568", "name": "Dynamic Resolution", "reference": "https://attack.mitre.org/techniques/T1568/",
             "subtechnique": [{"id": "T1568.002", "name": "Domain Generation Algorithms", "reference": "https://attack.mitre.org/techniques/T1568/002/"}]},
            {"id": "T1071", "name": "Application Layer Protocol", "reference": "https://attack.mitre.org/techniques/T1071/",
             "subtechnique": [{"id": "T1071.004", "name": "DNS", "reference": "https://attack.mitre.org/techniques/T1071/004/"}]}
        ]
    }]);
    let query_rule = |rule_id: &str, name: &str, query: &str, risk: u32, severity: &str| {
        json!({
            "rule_id": rule_id, "name": name, "type": "query", "language": "kuery",
            "description": format!("{name} (dga-standin test rule)"),
            "query": query, "index": index, "risk_score": risk, "severity": severity,
            "from": "now-10m", "interval": "5m", "enabled": false, "version": 1,
            "author": ["Elastic"], "license": "Elastic License v2", "tags": tags, "threat": threat
        })
    };
    vec![
        (
            "dga_predicted_rule".into(),
            query_rule(
                "f3403393-1fd9-4686-8f6e-596c58bc00b4",
                "Test release rule: DNS question predicted DGA",
                "ml_is_dga.malicious_prediction:1 and not dns.question.registered_domain:avsvmcloud.com",
                21,
                "low",
            ),
        ),
        (
            "dga_high_probability_rule".into(),
            query_rule(
                "da7f5803-1cd4-42fd-a890-0173ae80ac69",
                "Test release rule: DNS question with a high DGA probability",
                "ml_is_dga.malicious_probability > 0.98",
                21,
                "low",
            ),
        ),
        (
            "dga_sunburst_rule".into(),
            query_rule(
                "bcaa15ce-2d41-44d7-a322-918f9db77766",
                "Test release rule: DGA-looking lookup of the SUNBURST domain",
                "ml_is_dga.malicious_prediction:1 and dns.question.registered_domain:avsvmcloud.com",
                73,
                "high",
            ),
        ),
        (
            "dga_high_sum_probability_rule".into(),
            json!({
                "rule_id": "ff0d807d-869b-4a0d-a493-52bc46d2f1b1",
                "name": "Test release rule: unusual sum of DGA probability per source", "type": "machine_learning",
                "description": "Rule shipped in a dga-standin test release.",
                "machine_learning_job_id": "dga_high_sum_probability", "anomaly_threshold": 70,
                "risk_score": 21, "severity": "low", "from": "now-45m", "interval": "15m",
                "enabled": false, "version": 1, "author": ["Elastic"], "license": "Elastic License v2",
                "tags": tags, "threat": threat
            }),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Counts and hashes what goes through.
struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
    n: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.hash.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn zerr(e: zip::result::ZipError) -> io::Error {
    io::Error::other(e)
}

/// `(year, month, day)` of a `ML-DGA-YYYYMMDD-N` tag; 2021-01-01 when the tag has no date.
fn tag_date(tag: &str) -> (u16, u8, u8) {
    let digits: String = tag
        .split('-')
        .find(|p| p.len() == 8 && p.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or("20210101")
        .to_string();
    let y = digits[0..4].parse().unwrap_or(2021);
    let m = digits[4..6].parse().unwrap_or(1);
    let d = digits[6..8].parse().unwrap_or(1);
    if (1980..2100).contains(&y) && (1..=12).contains(&m) && (1..=28).contains(&d) {
        (y, m, d)
    } else {
        (2021, 1, 1)
    }
}

fn file_options(tag: &str) -> SimpleFileOptions {
    let (y, m, d) = tag_date(tag);
    SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(DateTime::from_date_and_time(y, m, d, 12, 0, 0).unwrap_or_default())
        .unix_permissions(0o644)
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).unwrap();
    b.push(b'\n');
    b
}

/// One file of a bundle: small JSON bytes, or the (streamed) model.
enum Content {
    Bytes(Vec<u8>),
    Model,
}

struct Plan {
    names: Names,
    model_id: String,
    files: Vec<(String, Content)>,
    rule_ids: Vec<String>,
}

fn plan(spec: &BundleSpec) -> Plan {
    let model_id = spec.model.model_id.clone();
    let n = names(spec.layout, &model_id);
    let mut files = vec![
        (n.model_file.clone(), Content::Model),
        (
            n.create_script_file.clone(),
            Content::Bytes(pretty(&script_json(&ngrams_create_source()))),
        ),
        (
            n.delete_script_file.clone(),
            Content::Bytes(pretty(&script_json(&ngrams_transform_delete_source()))),
        ),
        (
            n.router_file.clone(),
            Content::Bytes(pretty(&router_pipeline_json(&n.inference_id))),
        ),
        (
            n.inference_file.clone(),
            Content::Bytes(pretty(&inference_pipeline_json(
                &n.create_script_id,
                &model_id,
                &n.delete_script_id,
            ))),
        ),
    ];
    let mut rule_ids = Vec::new();
    if spec.rules {
        for (stem, rule) in rules_json() {
            rule_ids.push(rule["rule_id"].as_str().unwrap().to_string());
            files.push((format!("rules/{stem}.json"), Content::Bytes(pretty(&rule))));
        }
    }
    Plan {
        names: n,
        model_id,
        files,
        rule_ids,
    }
}

fn write_model_entry(spec: &BundleSpec, w: &mut impl Write) -> io::Result<u64> {
    // v1 files carry no model_id (the id comes from the file name); v2 files carry it.
    let include_id = spec.layout == Layout::V2;
    model::write_model_json_opts(&spec.model, spec.encoding, include_id, w)
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

fn base_name(p: &str) -> String {
    p.rsplit('/').next().unwrap_or(p).to_string()
}

/// Write `<out_dir>/<tag>.zip` and `<out_dir>/manifest-<tag>.json`.
pub fn write_release(spec: &BundleSpec, out_dir: &Path) -> io::Result<Release> {
    fs::create_dir_all(out_dir)?;
    let p = plan(spec);
    let zip_path = out_dir.join(format!("{}.zip", spec.tag));
    let opts = file_options(&spec.tag);
    let mut zip = ZipWriter::new(BufWriter::new(File::create(&zip_path)?));
    zip.add_directory(format!("{}/", spec.tag), opts)
        .map_err(zerr)?;
    let mut entries = Vec::new();
    let mut definition_bytes = 0;
    for (name, content) in &p.files {
        let path = format!("{}/{}", spec.tag, name);
        zip.start_file(path.clone(), opts).map_err(zerr)?;
        let mut w = Hashing {
            inner: &mut zip,
            hash: Sha256::new(),
            n: 0,
        };
        match content {
            Content::Bytes(b) => w.write_all(b)?,
            Content::Model => definition_bytes = write_model_entry(spec, &mut w)?,
        }
        let (size, sha) = (w.n, hex::encode(w.hash.finalize()));
        entries.push(ManifestEntry {
            name: base_name(&path),
            path,
            size,
            compress_size: 0,
            sha256: sha,
        });
    }
    zip.finish().map_err(zerr)?.flush()?;

    // compressed sizes from the central directory
    let mut ar = ZipArchive::new(File::open(&zip_path)?).map_err(zerr)?;
    for e in &mut entries {
        e.compress_size = ar.by_name(&e.path).map_err(zerr)?.compressed_size();
    }
    let zip_sha256 = sha256_file(&zip_path)?;
    let manifest_path = out_dir.join(format!("manifest-{}.json", spec.tag));
    fs::write(
        &manifest_path,
        pretty(&manifest_json(spec, &p.model_id, &entries, &zip_sha256)),
    )?;

    Ok(release(
        spec,
        p,
        zip_path,
        zip_sha256,
        manifest_path,
        entries,
        definition_bytes,
    ))
}

fn release(
    spec: &BundleSpec,
    p: Plan,
    zip_path: PathBuf,
    zip_sha256: String,
    manifest_path: PathBuf,
    files: Vec<ManifestEntry>,
    definition_bytes: u64,
) -> Release {
    Release {
        tag: spec.tag.clone(),
        zip_path,
        zip_sha256,
        manifest_path,
        model_id: p.model_id,
        files,
        script_ids: vec![
            p.names.create_script_id.clone(),
            p.names.delete_script_id.clone(),
        ],
        pipeline_ids: vec![p.names.router_id.clone(), p.names.inference_id.clone()],
        router_pipeline: p.names.router_id,
        inference_pipeline: p.names.inference_id,
        rule_ids: p.rule_ids,
        definition_bytes,
    }
}

/// The same files unpacked into `<dir>/<tag>/` (the old CLI's `-d DIR`). `zip_path` is that
/// folder, `zip_sha256` is empty, `manifest_path` is empty, `compress_size == size`.
pub fn write_unpacked(spec: &BundleSpec, dir: &Path) -> io::Result<Release> {
    let p = plan(spec);
    let root = dir.join(&spec.tag);
    let mut entries = Vec::new();
    let mut definition_bytes = 0;
    for (name, content) in &p.files {
        let target = root.join(name);
        fs::create_dir_all(target.parent().unwrap())?;
        let mut bw = BufWriter::new(File::create(&target)?);
        let mut w = Hashing {
            inner: &mut bw,
            hash: Sha256::new(),
            n: 0,
        };
        match content {
            Content::Bytes(b) => w.write_all(b)?,
            Content::Model => definition_bytes = write_model_entry(spec, &mut w)?,
        }
        let (size, sha) = (w.n, hex::encode(w.hash.finalize()));
        bw.flush()?;
        let path = format!("{}/{}", spec.tag, name);
        entries.push(ManifestEntry {
            name: base_name(&path),
            path,
            size,
            compress_size: size,
            sha256: sha,
        });
    }
    Ok(release(
        spec,
        p,
        root,
        String::new(),
        PathBuf::new(),
        entries,
        definition_bytes,
    ))
}

/// The release manifest, in the shape of detection-rules' `etc/release_manifests/<name>.json`
/// (its `Manifest` class in `detection_rules/misc.py`): release metadata plus, per asset,
/// `entries` keyed by base name (`compress_size, created_at, name, sha256, size`) and the
/// asset's `zipped_sha256`.
pub fn manifest_json(
    spec: &BundleSpec,
    model_id: &str,
    entries: &[ManifestEntry],
    zip_sha256: &str,
) -> Value {
    let (y, m, d) = tag_date(&spec.tag);
    let at = format!("{y:04}-{m:02}-{d:02}T12:00:00Z");
    let repo = "elastic/detection-rules";
    let id = u64::from_be_bytes(Sha256::digest(spec.tag.as_bytes())[..8].try_into().unwrap())
        % 100_000_000;
    let zip_name = format!("{}.zip", spec.tag);
    let mut es = Map::new();
    for e in entries {
        es.insert(
            e.name.clone(),
            json!({"compress_size": e.compress_size, "created_at": at, "name": e.name, "sha256": e.sha256, "size": e.size}),
        );
    }
    let model_sha = entries
        .iter()
        .find(|e| e.name.ends_with("_model.json"))
        .map(|e| e.sha256.clone())
        .unwrap_or_default();
    json!({
        "assets": {
            zip_name.clone(): {
                "created_at": at,
                "description": zip_name,
                "entries": es,
                "relative_url": format!("https://github.com/{repo}/releases/download/{}/{zip_name}", spec.tag),
                "zipped_sha256": zip_sha256
            }
        },
        "assets_url": format!("https://api.github.com/repos/{repo}/releases/{id}/assets"),
        "author": "dga-standin",
        "created_at": at,
        "description": format!("model_name: {model_id}\n\n----\n\n\ndate: {at}\nmodel_sha256: {model_sha}\n\n----\n\nTEST STAND-IN bundle generated by dga-standin"),
        "html_url": format!("https://github.com/{repo}/releases/tag/{}", spec.tag),
        "id": id,
        "name": spec.tag,
        "published_at": at,
        "tag_name": spec.tag,
        "url": format!("https://api.github.com/repos/{repo}/releases/{id}"),
        "zipball_url": format!("https://api.github.com/repos/{repo}/zipball/{}", spec.tag)
    })
}

// ---------------------------------------------------------------------------------------------
// Bad inputs
// ---------------------------------------------------------------------------------------------

/// A zip with exactly these entries (deflated, names as given — including `..` or `/abs`).
pub fn write_custom_zip(out: &Path, entries: &[(&str, &[u8])]) -> io::Result<()> {
    let mut zip = ZipWriter::new(BufWriter::new(File::create(out)?));
    let opts = file_options("x");
    for (name, bytes) in entries {
        zip.start_file(*name, opts).map_err(zerr)?;
        zip.write_all(bytes)?;
    }
    zip.finish().map_err(zerr)?.flush()
}

/// What is wrong with a bad release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Defect {
    /// An extra `<tag>/../../<model file>` entry.
    ParentTraversal,
    /// An extra `/tmp/<model file>` entry (absolute path).
    AbsolutePath,
    /// The router pipeline file is a symlink entry (unix mode S_IFLNK) to `/etc/passwd`.
    Symlink,
    /// The model file is `bytes` of JSON whitespace followed by the model: tiny compressed,
    /// huge uncompressed.
    ZipBomb { bytes: u64 },
    /// `ZipBomb` whose model entry declares 1000 bytes uncompressed (local header and central
    /// directory both), so only a reader that stops at the declared size is safe.
    LyingZipBomb { bytes: u64 },
    /// A second file of the model kind (`dga_999999_9.9_model.json`).
    DuplicateModel,
    /// The inference pipeline file is truncated JSON.
    MalformedJson,
    /// The model JSON has no `input`.
    ModelMissingInput,
    /// The inference pipeline file is missing.
    MissingPipeline,
    /// The model's definition is a `compressed_definition` that is base64 but not of gzip:
    /// only a parse of the definition (Elasticsearch's, or ours after a refusal) finds it.
    UndecodableDefinition,
    /// The model's `definition` is plain JSON with balanced brackets but a bad value inside
    /// `trained_model` (`[1,, 2]`): a scan for its structure passes, a JSON parser does not.
    InvalidJsonDefinition,
    /// The router pipeline file appears twice under the same name, the second copy with another
    /// `description` (written under a name of the same length, then renamed in place: the zip
    /// crate's writer refuses duplicates).
    DuplicateEntry,
}

/// Zip entries in memory: name and bytes.
type Entries = Vec<(String, Vec<u8>)>;

/// The small files plus the model, in memory (for bad bundles; keep `spec.model` small).
fn materialize(spec: &BundleSpec) -> io::Result<(Plan, Entries)> {
    let p = plan(spec);
    let mut out = Vec::new();
    for (name, c) in &p.files {
        let bytes = match c {
            Content::Bytes(b) => b.clone(),
            Content::Model => {
                let mut b = Vec::new();
                write_model_entry(spec, &mut b)?;
                b
            }
        };
        out.push((format!("{}/{}", spec.tag, name), bytes));
    }
    Ok((p, out))
}

/// Write `<out_dir>/<tag>.zip`: a small valid bundle for `spec` with one `defect`. No
/// manifest. Returns the zip path.
pub fn write_bad_release(spec: &BundleSpec, defect: Defect, out_dir: &Path) -> io::Result<PathBuf> {
    fs::create_dir_all(out_dir)?;
    let (p, mut files) = materialize(spec)?;
    let model_path = format!("{}/{}", spec.tag, p.names.model_file);
    let model_pos = files.iter().position(|(n, _)| *n == model_path).unwrap();
    let inf_path = format!("{}/{}", spec.tag, p.names.inference_file);
    let router_path = format!("{}/{}", spec.tag, p.names.router_file);
    let zip_path = out_dir.join(format!("{}.zip", spec.tag));
    let opts = file_options(&spec.tag);
    let mut zip = ZipWriter::new(BufWriter::new(File::create(&zip_path)?));
    let mut symlink = None;
    let mut bomb = None;
    let mut duplicate: Option<(String, String)> = None;
    match &defect {
        Defect::ParentTraversal => {
            let b = files[model_pos].1.clone();
            files.push((format!("{}/../../{}", spec.tag, p.names.model_file), b));
        }
        Defect::AbsolutePath => {
            let b = files[model_pos].1.clone();
            files.push((format!("/tmp/{}", p.names.model_file), b));
        }
        Defect::Symlink => {
            files.retain(|(n, _)| *n != router_path);
            symlink = Some(router_path.clone());
        }
        Defect::ZipBomb { bytes } | Defect::LyingZipBomb { bytes } => {
            let (_, model) = files.remove(model_pos);
            bomb = Some((model_path.clone(), *bytes, model));
        }
        Defect::DuplicateModel => {
            let mut other = spec.clone();
            other.model.model_id = "dga_999999_9.9".into();
            other.model.seed ^= 1;
            let mut b = Vec::new();
            write_model_entry(&other, &mut b)?;
            files.push((format!("{}/dga_999999_9.9_model.json", spec.tag), b));
        }
        Defect::MalformedJson => {
            let f = files.iter_mut().find(|(n, _)| *n == inf_path).unwrap();
            let cut = f.1.len() / 2;
            f.1.truncate(cut);
        }
        Defect::ModelMissingInput => {
            let mut v: Value = serde_json::from_slice(&files[model_pos].1)?;
            v.as_object_mut().unwrap().remove("input");
            files[model_pos].1 = serde_json::to_vec(&v)?;
        }
        Defect::MissingPipeline => files.retain(|(n, _)| *n != inf_path),
        Defect::UndecodableDefinition => {
            let mut v: Value = serde_json::from_slice(&files[model_pos].1)?;
            let m = v.as_object_mut().unwrap();
            m.remove("definition");
            m.insert("compressed_definition".into(), "bm90IGd6aXA=".into());
            files[model_pos].1 = serde_json::to_vec(&v)?;
        }
        Defect::InvalidJsonDefinition => {
            let mut v: Value = serde_json::from_slice(&files[model_pos].1)?;
            let m = v.as_object_mut().unwrap();
            m.remove("compressed_definition");
            m.insert("definition".into(), "@definition@".into());
            let text = serde_json::to_string(&v)?.replace(
                "\"@definition@\"",
                r#"{"trained_model": {"tree": {"feature_names": ["a"], "tree_structure": [1,, 2]}}}"#,
            );
            files[model_pos].1 = text.into_bytes();
        }
        Defect::DuplicateEntry => {
            let router = files.iter().find(|(n, _)| *n == router_path).unwrap();
            let mut v: Value = serde_json::from_slice(&router.1)?;
            v["description"] = "the second copy".into();
            let twin = format!("{}X", &router_path[..router_path.len() - 1]);
            files.push((twin.clone(), serde_json::to_vec(&v)?));
            duplicate = Some((twin, router_path.clone()));
        }
    }
    zip.add_directory(format!("{}/", spec.tag), opts)
        .map_err(zerr)?;
    for (name, bytes) in &files {
        zip.start_file(name.clone(), opts).map_err(zerr)?;
        zip.write_all(bytes)?;
    }
    if let Some(name) = symlink {
        zip.add_symlink(name, "/etc/passwd", opts).map_err(zerr)?;
    }
    if let Some((name, bytes, model)) = bomb {
        zip.start_file(name, opts.large_file(bytes > u32::MAX as u64 / 2))
            .map_err(zerr)?;
        let chunk = vec![b' '; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let k = left.min(chunk.len() as u64) as usize;
            zip.write_all(&chunk[..k])?;
            left -= k as u64;
        }
        zip.write_all(&model)?;
    }
    zip.finish().map_err(zerr)?.flush()?;
    if let Defect::LyingZipBomb { bytes } = defect {
        assert!(bytes < u32::MAX as u64 / 2, "no zip64 sizes to patch");
        let mut b = fs::read(&zip_path)?;
        let name = model_path.as_bytes();
        let lie = 1000u32.to_le_bytes();
        // APPNOTE 4.3.7 / 4.3.12: uncompressed size at offset 22 of a local header, 24 of a
        // central directory header; the name at 30 and 46.
        for i in 0..b.len().saturating_sub(46) {
            if b[i..].starts_with(&[0x50, 0x4b, 0x03, 0x04]) && b[i + 30..].starts_with(name) {
                b[i + 22..i + 26].copy_from_slice(&lie);
            }
            if b[i..].starts_with(&[0x50, 0x4b, 0x01, 0x02]) && b[i + 46..].starts_with(name) {
                b[i + 24..i + 28].copy_from_slice(&lie);
            }
        }
        fs::write(&zip_path, b)?;
    }
    if let Some((twin, name)) = duplicate {
        // Same length, so every offset in the zip stays right; names are outside the CRC.
        let bytes = fs::read(&zip_path)?;
        let (from, to) = (twin.as_bytes(), name.as_bytes());
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i..].starts_with(from) {
                out.extend_from_slice(to);
                i += from.len();
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        fs::write(&zip_path, out)?;
    }
    Ok(zip_path)
}

/// Read a zip entry fully (test helper; small entries only).
pub fn read_entry(zip_path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let mut ar = ZipArchive::new(File::open(zip_path)?).map_err(zerr)?;
    let mut f = ar.by_name(name).map_err(zerr)?;
    let mut b = Vec::new();
    f.read_to_end(&mut b)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("dga-standin-bundle-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn check_release(spec: &BundleSpec, r: &Release) {
        // Entries re-read with the zip crate; sha256/size/compress_size match the manifest.
        let manifest: Value = serde_json::from_slice(&fs::read(&r.manifest_path).unwrap()).unwrap();
        let asset = &manifest["assets"][format!("{}.zip", spec.tag)];
        assert_eq!(
            asset["zipped_sha256"],
            json!(sha256_file(&r.zip_path).unwrap())
        );
        assert_eq!(manifest["tag_name"], json!(spec.tag));
        let mut ar = ZipArchive::new(File::open(&r.zip_path).unwrap()).unwrap();
        let mut seen = 0;
        for i in 0..ar.len() {
            let mut f = ar.by_index(i).unwrap();
            assert!(
                f.name().starts_with(&format!("{}/", spec.tag)),
                "{}",
                f.name()
            );
            if f.is_dir() {
                continue;
            }
            seen += 1;
            let base = f.name().rsplit('/').next().unwrap().to_string();
            let e = &asset["entries"][&base];
            assert_eq!(e["size"], json!(f.size()));
            assert_eq!(e["compress_size"], json!(f.compressed_size()));
            let mut h = Sha256::new();
            io::copy(&mut f, &mut h).unwrap();
            assert_eq!(e["sha256"], json!(hex::encode(h.finalize())));
        }
        assert_eq!(seen, asset["entries"].as_object().unwrap().len());
        assert_eq!(seen, r.files.len());
    }

    #[test]
    fn v1_layout() {
        let dir = tmp("v1");
        let spec = BundleSpec::small("ML-DGA-20201129-25", Layout::V1);
        let r = write_release(&spec, &dir).unwrap();
        check_release(&spec, &r);
        assert_eq!(r.zip_path, dir.join("ML-DGA-20201129-25.zip"));
        assert_eq!(
            r.manifest_path,
            dir.join("manifest-ML-DGA-20201129-25.json")
        );
        assert_eq!(r.model_id, "dga_875109_1.0");
        assert_eq!(
            r.script_ids,
            ["dga_ngrams_create", "dga_ngrams_transform_delete"]
        );
        assert_eq!(r.router_pipeline, "dns_enrich_pipeline");
        assert_eq!(r.inference_pipeline, "dns_dga_inference_enrich_pipeline");
        let names: Vec<&str> = r.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "ML-DGA-20201129-25/dga_875109_1.0_model.json",
                "ML-DGA-20201129-25/dga_875109_1.0_dga_ngrams_create.json",
                "ML-DGA-20201129-25/dga_875109_1.0_dga_ngrams_transform_delete.json",
                "ML-DGA-20201129-25/dga_875109_1.0_ingest_pipeline1.json",
                "ML-DGA-20201129-25/dga_875109_1.0_ingest_pipeline2.json",
            ]
        );
        let model: Value =
            serde_json::from_slice(&read_entry(&r.zip_path, names[0]).unwrap()).unwrap();
        assert!(model.get("model_id").is_none());
        assert!(model.get("definition").is_some());
        let router: Value =
            serde_json::from_slice(&read_entry(&r.zip_path, names[3]).unwrap()).unwrap();
        assert_eq!(
            router["processors"][0]["pipeline"]["name"],
            "dns_dga_inference_enrich_pipeline"
        );
        let inf: Value =
            serde_json::from_slice(&read_entry(&r.zip_path, names[4]).unwrap()).unwrap();
        assert_eq!(inf["processors"][0]["script"]["id"], "dga_ngrams_create");
        assert_eq!(
            inf["processors"][1]["inference"]["model_id"],
            "dga_875109_1.0"
        );
        assert_eq!(
            inf["processors"][2]["script"]["id"],
            "dga_ngrams_transform_delete"
        );
        let s: Value = serde_json::from_slice(&read_entry(&r.zip_path, names[1]).unwrap()).unwrap();
        assert_eq!(s["script"]["lang"], "painless");
        assert!(
            s["script"]["source"]
                .as_str()
                .unwrap()
                .contains("ctx.f = f")
        );
        // determinism
        let dir2 = tmp("v1b");
        let r2 = write_release(&spec, &dir2).unwrap();
        assert_eq!(r.zip_sha256, r2.zip_sha256);
        assert_eq!(
            fs::read(&r.manifest_path).unwrap(),
            fs::read(&r2.manifest_path).unwrap()
        );
        let _ = fs::remove_dir_all(dir);
        let _ = fs::remove_dir_all(dir2);
    }

    #[test]
    fn v2_layout_with_rules_and_compressed_model() {
        let dir = tmp("v2");
        let spec = BundleSpec::small("ML-DGA-20210506-3", Layout::V2);
        let r = write_release(&spec, &dir).unwrap();
        check_release(&spec, &r);
        assert_eq!(r.model_id, "dga_1611725_2.0");
        assert_eq!(
            r.script_ids,
            [
                "ml_dga_ngrams_create_script",
                "ml_dga_ngrams_transform_delete_script"
            ]
        );
        assert_eq!(
            r.pipeline_ids,
            ["ml_dga_ingest_pipeline", "ml_dga_inference_pipeline"]
        );
        assert_eq!(r.rule_ids.len(), 4);
        let t = &spec.tag;
        for f in &r.files[1..5] {
            // ids are the file stems; kind is the last `_` part
            let stem = f.name.trim_end_matches(".json");
            let kind = stem.rsplit('_').next().unwrap();
            assert!(kind == "script" || kind == "pipeline", "{stem}");
            assert!(
                r.script_ids
                    .iter()
                    .chain(&r.pipeline_ids)
                    .any(|id| id == stem)
            );
        }
        assert!(
            r.files
                .iter()
                .any(|f| f.path == format!("{t}/rules/dga_sunburst_rule.json"))
        );
        let model: Value = serde_json::from_slice(
            &read_entry(&r.zip_path, &format!("{t}/dga_1611725_2.0_model.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(model["model_id"], "dga_1611725_2.0");
        let def =
            model::decode_compressed(model["compressed_definition"].as_str().unwrap()).unwrap();
        let probe = |name: &str, reg: &str, tld: &str| {
            let doc = json!({"type": "dns", "dns": {"response_code": "NOERROR",
                "question": {"name": name, "registered_domain": reg, "top_level_domain": tld}}});
            model::dga_probability(&def, &doc).unwrap()
        };
        assert!(
            probe("xjqkw3vbz.biz", "xjqkw3vbz.biz", "biz")
                > probe("www.google.com", "google.com", "com")
        );
        // evaluate output shape as the inference processor writes it
        let mut doc = json!({"dns": {"response_code": "NXDOMAIN"}});
        doc.as_object_mut().unwrap().extend(model::extract_features(
            Some("a1b2c3d4.info"),
            None,
            Some("a1b2c3d4.info"),
            Some("info"),
        ));
        let out = model::evaluate(&def, &doc, 1).unwrap();
        assert!(out["predicted_value"].is_string());
        assert_eq!(out["top_classes"].as_array().unwrap().len(), 1);
        let inf: Value = serde_json::from_slice(
            &read_entry(&r.zip_path, &format!("{t}/ml_dga_inference_pipeline.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            inf["processors"][0]["script"]["id"],
            "ml_dga_ngrams_create_script"
        );
        assert_eq!(inf["on_failure"][0]["set"]["value"], "pipeline_error");
        // The Fleet contract: the model's own config names the results, the processor overrides
        // only num_top_classes, the verdict script reads what the model writes.
        assert_eq!(model["inference_config"], model::real_inference_config());
        assert_eq!(
            inf["processors"][1]["inference"]["inference_config"],
            json!({"classification": {"num_top_classes": 1}})
        );
        let verdict = ngrams_transform_delete_source();
        assert!(verdict.contains("r.malicious_prediction") && verdict.contains("r.top_classes"));
        assert!(!verdict.contains("predicted_value"));
        let cfg = json!({"classification": {"results_field": "malicious_prediction",
            "top_classes_results_field": "top_classes", "num_top_classes": 1,
            "prediction_field_type": "number"}});
        let out = model::evaluate_with_config(&def, &doc, &cfg).unwrap();
        assert!(out["malicious_prediction"].is_number(), "{out}");
        // unpacked copy has the same bytes
        let up = tmp("v2-unpacked");
        let u = write_unpacked(&spec, &up).unwrap();
        assert_eq!(u.zip_path, up.join(t));
        for (a, b) in r.files.iter().zip(&u.files) {
            assert_eq!((&a.path, a.size, &a.sha256), (&b.path, b.size, &b.sha256));
            assert_eq!(sha256_file(&up.join(&b.path)).unwrap(), b.sha256);
        }
        let _ = fs::remove_dir_all(dir);
        let _ = fs::remove_dir_all(up);
    }

    /// ~20 MB model definition through the zip, streaming; lands within ±10%.
    #[test]
    fn twenty_mb_release() {
        let dir = tmp("big");
        let spec = BundleSpec::small("ML-DGA-20201129-25", Layout::V1).with_model_bytes(20_000_000);
        let r = write_release(&spec, &dir).unwrap();
        let d = r.definition_bytes as f64;
        assert!((d - 20e6).abs() <= 2e6, "{d}");
        let m = &r.files[0];
        eprintln!(
            "20 MB model entry: size {} compress_size {} ratio {:.1}",
            m.size,
            m.compress_size,
            m.size as f64 / m.compress_size as f64
        );
        assert!(m.size as f64 / m.compress_size as f64 > 4.0);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_releases() {
        let dir = tmp("bad");
        let spec = BundleSpec::small("ML-DGA-20201129-25", Layout::V1).with_model_bytes(8_000);
        let t = &spec.tag;
        let list = |p: &Path| -> Vec<(String, Option<u32>, u64)> {
            let mut ar = ZipArchive::new(File::open(p).unwrap()).unwrap();
            (0..ar.len())
                .map(|i| {
                    let f = ar.by_index_raw(i).unwrap();
                    (f.name().to_string(), f.unix_mode(), f.size())
                })
                .collect()
        };
        let sub = |n: &str| {
            let d = dir.join(n);
            fs::create_dir_all(&d).unwrap();
            d
        };
        let z = write_bad_release(&spec, Defect::ParentTraversal, &sub("a")).unwrap();
        assert!(list(&z).iter().any(|(n, _, _)| n.contains("/../../")));
        let z = write_bad_release(&spec, Defect::AbsolutePath, &sub("b")).unwrap();
        assert!(list(&z).iter().any(|(n, _, _)| n.starts_with("/tmp/")));
        let z = write_bad_release(&spec, Defect::Symlink, &sub("c")).unwrap();
        let l = list(&z);
        let (_, mode, _) = l
            .iter()
            .find(|(n, _, _)| n.ends_with("_ingest_pipeline1.json"))
            .unwrap();
        assert_eq!(mode.unwrap() & 0o170000, 0o120000);
        let z = write_bad_release(&spec, Defect::ZipBomb { bytes: 50_000_000 }, &sub("d")).unwrap();
        assert!(fs::metadata(&z).unwrap().len() < 1_000_000);
        assert!(
            list(&z)
                .iter()
                .any(|(n, _, s)| n.ends_with("_model.json") && *s > 50_000_000)
        );
        let z = write_bad_release(&spec, Defect::LyingZipBomb { bytes: 50_000_000 }, &sub("l"))
            .unwrap();
        assert!(
            list(&z)
                .iter()
                .any(|(n, _, s)| n.ends_with("_model.json") && *s == 1000)
        );
        let z = write_bad_release(&spec, Defect::DuplicateModel, &sub("e")).unwrap();
        assert_eq!(
            list(&z)
                .iter()
                .filter(|(n, _, _)| n.ends_with("_model.json"))
                .count(),
            2
        );
        let z = write_bad_release(&spec, Defect::MalformedJson, &sub("f")).unwrap();
        let b = read_entry(&z, &format!("{t}/dga_875109_1.0_ingest_pipeline2.json")).unwrap();
        assert!(serde_json::from_slice::<Value>(&b).is_err());
        let z = write_bad_release(&spec, Defect::ModelMissingInput, &sub("g")).unwrap();
        let b = read_entry(&z, &format!("{t}/dga_875109_1.0_model.json")).unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert!(v.get("input").is_none() && v.get("definition").is_some());
        let z = write_bad_release(&spec, Defect::MissingPipeline, &sub("h")).unwrap();
        assert_eq!(list(&z).len(), 5); // dir + 4 files
        let z = write_bad_release(&spec, Defect::UndecodableDefinition, &sub("i")).unwrap();
        let b = read_entry(&z, &format!("{t}/dga_875109_1.0_model.json")).unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert!(v.get("definition").is_none() && v["compressed_definition"] == "bm90IGd6aXA=");
        let z = write_bad_release(&spec, Defect::InvalidJsonDefinition, &sub("j")).unwrap();
        let b = read_entry(&z, &format!("{t}/dga_875109_1.0_model.json")).unwrap();
        assert!(serde_json::from_slice::<Value>(&b).is_err());
        let text = String::from_utf8(b).unwrap();
        assert!(text.contains(r#""definition":{"trained_model""#), "{text}");
        let z = write_bad_release(&spec, Defect::DuplicateEntry, &sub("k")).unwrap();
        // The central directory holds the name twice (the reader keeps one of them).
        let bytes = fs::read(&z).unwrap();
        let name = format!("{t}/dga_875109_1.0_ingest_pipeline1.json");
        let mut central = 0;
        for i in 0..bytes.len().saturating_sub(46) {
            if bytes[i..].starts_with(&[0x50, 0x4b, 0x01, 0x02])
                && bytes[i + 46..].starts_with(name.as_bytes())
            {
                central += 1;
            }
        }
        assert_eq!(central, 2);
        assert!(!String::from_utf8_lossy(&bytes).contains(".jsoX"));
        let z = dir.join("custom.zip");
        write_custom_zip(&z, &[("x/../y.json", b"{}"), ("/abs.json", b"[]")]).unwrap();
        assert_eq!(list(&z).len(), 2);
        let _ = fs::remove_dir_all(dir);
    }
}
