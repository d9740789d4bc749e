//! ML-DGA release bundles: where they come from (`fetch`), and what is in them (this module).
//!
//! A bundle is opened once per release zip (keyed by its sha256) into a folder of the cache:
//! the model's small fields and its raw definition are kept on disk so the upload can stream
//! them; scripts, pipelines and rules are small and kept as JSON.

mod definition;
pub mod fetch;
pub mod json_scan;
mod pipe;
mod prefetch;
pub mod scratch;

pub use prefetch::{Prefetched, prefetch_model};

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::thread;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Safety limits for untrusted zips.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_entries: usize,
    pub max_entry_bytes: u64,
    pub max_total_bytes: u64,
    /// Scripts, pipelines, rules and manifests are small; a large one is refused.
    pub max_small_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 256,
            max_entry_bytes: 512 << 20,
            max_total_bytes: 1 << 30,
            max_small_file_bytes: 4 << 20,
        }
    }
}

/// Why a bundle was refused: the file and the problem, for the `InvalidBundle` condition.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[error("{file}: {problem}")]
pub struct BundleError {
    pub file: String,
    pub problem: String,
}

fn bad(file: impl Into<String>, problem: impl Into<String>) -> BundleError {
    BundleError {
        file: file.into(),
        problem: problem.into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    V1,
    V2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PipelineRole {
    /// Decides which documents are enriched and calls the inference pipeline.
    Router,
    /// Runs the scripts and the model.
    Inference,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub id: String,
    pub role: PipelineRole,
    pub body: Value,
}

/// The trained model, kept on disk as its small fields plus the raw definition bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    /// The id the release gives the model.
    pub id: String,
    /// The model file's name in the release, for messages.
    pub file: String,
    /// Every top-level field except the definition (and without `model_id`).
    pub head: serde_json::Map<String, Value>,
    /// `definition` or `compressed_definition`.
    pub definition_key: String,
    pub definition_path: PathBuf,
    pub definition_len: u64,
    /// CRC-32 of the model file as shipped (8 hex digits); tells apart model files that give
    /// the same id. The zip already checks it, so it costs nothing, where a sha256 of the
    /// inflated file took a sixth of the time to open a release; an 8-hex slice of a sha256 was
    /// no stronger.
    pub crc32: String,
}

impl ModelFile {
    /// The problem found after Elasticsearch refused this model (see `explain_refusal`).
    pub fn refusal(&self) -> Option<BundleError> {
        let dir = self.definition_path.parent()?;
        serde_json::from_slice(&fs::read(dir.join(REFUSED_MARKER)).ok()?).ok()
    }
}

/// Looks in the model's definition for why Elasticsearch refused the upload; the definition is
/// not checked before (see `definition`). A problem found is kept beside the opened bundle, so
/// from then on the release is refused at once, by this process and the next, without
/// uploading a definition known to be bad again. `None`: the definition looks sound (the
/// refusal has another cause), or it cannot be read.
pub fn explain_refusal(model: &ModelFile) -> Option<BundleError> {
    let problem = definition::check_file(&model.definition_path, &model.definition_key)
        .ok()?
        .err()?;
    let e = bad(&model.file, problem);
    if let Some(dir) = model.definition_path.parent() {
        let _ = fs::write(
            dir.join(REFUSED_MARKER),
            serde_json::to_vec(&e).expect("bundle error serializes"),
        );
    }
    Some(e)
}

/// An opened, validated release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    pub tag: String,
    pub layout: Layout,
    /// sha256 of the release zip (or of the files, for an unpacked folder).
    pub sha256: String,
    pub model: ModelFile,
    /// Stored scripts by id, as PUT bodies (`{"script": {...}}`).
    pub scripts: BTreeMap<String, Value>,
    pub pipelines: Vec<Pipeline>,
    /// Detection rules shipped with the release (may be empty).
    pub rules: Vec<Value>,
}

impl Bundle {
    pub fn pipeline(&self, role: PipelineRole) -> &Pipeline {
        self.pipelines
            .iter()
            .find(|p| p.role == role)
            .expect("validated bundles have both roles")
    }
}

const OPENED_MARKER: &str = "bundle.json";
const REFUSED_MARKER: &str = "refused.json";

/// Opens a release zip into `dir` (created; reused when already opened for the same sha256).
pub fn open_zip(
    zip_path: &Path,
    sha256: &str,
    dir: &Path,
    limits: &Limits,
) -> Result<Bundle, BundleError> {
    open_zip_prefetched(zip_path, sha256, dir, limits, None)
}

/// `open_zip`, taking the model entry from `prefetched` when it is the entry this zip's central
/// directory describes (otherwise it is extracted again).
pub fn open_zip_prefetched(
    zip_path: &Path,
    sha256: &str,
    dir: &Path,
    limits: &Limits,
    prefetched: Option<Prefetched>,
) -> Result<Bundle, BundleError> {
    if let Some(b) = load_opened(dir, sha256) {
        return b;
    }
    let zip_name = zip_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = File::open(zip_path).map_err(|e| bad(&zip_name, format!("cannot open: {e}")))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| bad(&zip_name, format!("not a valid zip: {e}")))?;
    if archive.len() > limits.max_entries {
        return Err(bad(
            &zip_name,
            format!(
                "{} entries, more than the limit of {}",
                archive.len(),
                limits.max_entries
            ),
        ));
    }
    // Which of two same-named entries an unzip tool keeps differs (the zip crate keeps the
    // last, under the first one's index): refuse to guess.
    if let Some(name) = duplicate_entry(zip_path, archive.central_directory_start())
        .map_err(|e| bad(&zip_name, format!("cannot read the central directory: {e}")))?
    {
        return Err(bad(&name, "appears twice in the zip"));
    }
    // Check every entry before extracting any.
    let mut declared_total: u64 = 0;
    let mut names = Vec::new();
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| bad(&zip_name, format!("entry {i}: {e}")))?;
        let name = entry.name().to_string();
        check_entry_name(&name)?;
        if entry.is_symlink() {
            return Err(bad(
                &name,
                "is a symbolic link; links are not allowed in a release",
            ));
        }
        if entry.is_dir() {
            continue;
        }
        if entry.size() > limits.max_entry_bytes {
            return Err(bad(
                &name,
                format!(
                    "{} bytes uncompressed, more than the limit of {}",
                    entry.size(),
                    limits.max_entry_bytes
                ),
            ));
        }
        declared_total = declared_total.saturating_add(entry.size());
        if declared_total > limits.max_total_bytes {
            return Err(bad(
                &zip_name,
                format!(
                    "more than {} bytes uncompressed in total",
                    limits.max_total_bytes
                ),
            ));
        }
        names.push((i, name));
    }
    let (tag, classified) = classify(names.iter().map(|(_, n)| n.as_str()))?;
    // Removed again unless the bundle opens: a refused release leaves nothing behind.
    let opening = prepare_dir(dir)?;
    let mut src = ZipSource { archive, names };
    let bundle = build_bundle(&tag, sha256, dir, limits, &classified, &mut src, prefetched)?;
    save_opened(dir, &bundle)?;
    opening.keep();
    Ok(bundle)
}

/// The first name that two central directory records share. The zip crate's reader keys
/// entries by name, so it cannot tell; the records are walked here (APPNOTE 4.3.12: a 46-byte
/// fixed part, then name, extra field and comment).
fn duplicate_entry(zip_path: &Path, dir_start: u64) -> io::Result<Option<String>> {
    use std::io::Seek;
    let mut f = BufReader::new(File::open(zip_path)?);
    f.seek(io::SeekFrom::Start(dir_start))?;
    let mut seen = std::collections::HashSet::new();
    // A zip without ZIP64 holds at most 65535 entries; ours are refused far below that.
    for _ in 0..=u16::MAX {
        let mut h = [0u8; 46];
        if f.read_exact(&mut h).is_err() || h[..4] != [0x50, 0x4b, 0x01, 0x02] {
            break;
        }
        let field = |at: usize| u16::from_le_bytes([h[at], h[at + 1]]);
        let mut name = vec![0u8; field(28) as usize];
        f.read_exact(&mut name)?;
        f.seek_relative(i64::from(field(30)) + i64::from(field(32)))?;
        if !seen.insert(name.clone()) {
            return Ok(Some(String::from_utf8_lossy(&name).into_owned()));
        }
    }
    Ok(None)
}

/// What makes a zip file unusable as a zip (`None`: its central directory reads and every entry
/// inflates to its CRC-32): a download that was cut, or an HTML page served for a zip. Inflates
/// everything, so it is asked only after an open failed, to tell a damaged file (download it
/// again) from a release whose content is wrong (the same bytes give the same verdict).
pub fn damage(zip_path: &Path) -> Option<String> {
    let file = match File::open(zip_path) {
        Ok(f) => f,
        Err(e) => return Some(format!("cannot open: {e}")),
    };
    let mut archive = match zip::ZipArchive::new(BufReader::new(file)) {
        Ok(a) => a,
        Err(e) => return Some(format!("not a valid zip: {e}")),
    };
    for i in 0..archive.len() {
        let res = archive
            .by_index(i)
            .map_err(|e| e.to_string())
            .and_then(|mut e| {
                let mut r = Limited::new(&mut e, u64::MAX, String::new());
                io::copy(&mut r, &mut io::sink())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = res {
            return Some(format!("entry {i} cannot be read: {e}"));
        }
    }
    None
}

/// Whether a zip's central directory reads (a cheap check of a download before it is cached).
pub fn is_zip(zip_path: &Path) -> Result<(), String> {
    let file = File::open(zip_path).map_err(|e| format!("cannot open: {e}"))?;
    zip::ZipArchive::new(BufReader::new(file))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Opens an unpacked release folder (the old CLI's `-d DIR`): either the tag folder itself or a
/// folder holding it.
pub fn open_dir(src: &Path, dir: &Path, limits: &Limits) -> Result<Bundle, BundleError> {
    let root_name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rel = Vec::new();
    let mut hasher = sha2::Sha256::default();
    walk(src, src, &mut rel, limits)?;
    rel.sort();
    // If the folder holds only the tag folder, treat its parent as the zip root; otherwise the
    // folder itself is the tag folder.
    let prefixed: Vec<String> = if rel.iter().all(|r| r.contains('/')) && single_top(&rel).is_some()
    {
        rel.clone()
    } else {
        rel.iter().map(|r| format!("{root_name}/{r}")).collect()
    };
    let (tag, classified) = classify(prefixed.iter().map(|s| s.as_str()))?;
    // The folder's name is the release's name in every marker and message: a folder renamed
    // (or a copy named `latest`) must not install under a made-up release.
    if !crate::api::is_release_tag(&tag) {
        return Err(bad(
            format!("{tag}/"),
            "the release folder must be named like its release tag (ML-DGA-YYYYMMDD-N, e.g. ML-DGA-20211124-1); rename it to the tag it was downloaded as",
        ));
    }
    for (i, p) in prefixed.iter().enumerate() {
        use sha2::Digest;
        hasher.update(p.as_bytes());
        let f = File::open(src.join(&rel[i])).map_err(|e| bad(p, e.to_string()))?;
        let mut f = Limited::new(f, u64::MAX, String::new());
        io::copy(&mut f, &mut HashWriter(&mut hasher)).map_err(|e| bad(p, e.to_string()))?;
    }
    use sha2::Digest;
    let sha = hex::encode(hasher.finalize());
    if let Some(b) = load_opened(dir, &sha) {
        return b;
    }
    let opening = prepare_dir(dir)?;
    let mut source = DirSource {
        root: src.to_path_buf(),
        rel: rel.clone(),
        prefixed: prefixed.clone(),
    };
    let bundle = build_bundle(&tag, &sha, dir, limits, &classified, &mut source, None)?;
    save_opened(dir, &bundle)?;
    opening.keep();
    Ok(bundle)
}

struct HashWriter<'a>(&'a mut sha2::Sha256);
impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use sha2::Digest;
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn walk(root: &Path, d: &Path, out: &mut Vec<String>, limits: &Limits) -> Result<(), BundleError> {
    let entries = fs::read_dir(d)
        .map_err(|e| bad(d.display().to_string(), format!("cannot read folder: {e}")))?;
    for e in entries {
        let e = e.map_err(|e| bad(d.display().to_string(), e.to_string()))?;
        let ft = e
            .file_type()
            .map_err(|e| bad(e.to_string(), "cannot stat"))?;
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if ft.is_symlink() {
            return Err(bad(
                rel,
                "is a symbolic link; links are not allowed in a release",
            ));
        } else if ft.is_dir() {
            walk(root, &e.path(), out, limits)?;
        } else if !ft.is_file() {
            // Reading a FIFO would wait forever; a socket or device is no release file either.
            return Err(bad(
                rel,
                "is not a regular file (a FIFO, socket or device); a release folder holds only files and folders",
            ));
        } else {
            out.push(rel);
            if out.len() > limits.max_entries {
                return Err(bad(
                    root.display().to_string(),
                    format!("more than {} files", limits.max_entries),
                ));
            }
        }
    }
    Ok(())
}

fn single_top(rel: &[String]) -> Option<&str> {
    let first = rel.first()?.split('/').next()?;
    rel.iter()
        .all(|r| r.split('/').next() == Some(first))
        .then_some(first)
}

/// Entry names must stay inside the extraction folder.
fn check_entry_name(name: &str) -> Result<(), BundleError> {
    if name.starts_with('/') || name.starts_with('\\') || name.contains('\\') || name.contains('\0')
    {
        return Err(bad(name, "absolute or non-portable path in the zip"));
    }
    if name.len() > 1 && name.as_bytes()[1] == b':' {
        return Err(bad(name, "absolute path in the zip"));
    }
    if name.split('/').any(|c| c == "..") {
        return Err(bad(name, "path leaves the release folder (`..`)"));
    }
    Ok(())
}

/// Files of a release, by role, named as in the zip.
#[derive(Debug, Default)]
struct Classified {
    layout: Option<Layout>,
    model: Option<String>,
    /// (script id, file)
    scripts: Vec<(String, String)>,
    /// (pipeline id, file, v1 role)
    pipelines: Vec<(String, String, Option<PipelineRole>)>,
    rules: Vec<String>,
}

const V1_PATTERNS: [(&str, &str); 5] = [
    ("_model.json", "dga_*_model.json"),
    ("_ngrams_create.json", "dga_*_ngrams_create.json"),
    (
        "_ngrams_transform_delete.json",
        "dga_*_ngrams_transform_delete.json",
    ),
    ("_ingest_pipeline1.json", "dga_*_ingest_pipeline1.json"),
    ("_ingest_pipeline2.json", "dga_*_ingest_pipeline2.json"),
];

fn classify<'a>(names: impl Iterator<Item = &'a str>) -> Result<(String, Classified), BundleError> {
    let names: Vec<&str> = names.collect();
    let files: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !n.ends_with('/'))
        .collect();
    if files.is_empty() {
        return Err(bad("release", "contains no files"));
    }
    let top = files[0].split('/').next().unwrap_or_default();
    for f in &files {
        if !f.contains('/') || f.split('/').next() != Some(top) {
            return Err(bad(
                *f,
                format!(
                    "outside the release folder `{top}/` (a release has one top folder named like its tag)"
                ),
            ));
        }
    }
    let tag = top.to_string();
    let base = |f: &str| f.rsplit('/').next().unwrap_or(f).to_string();
    let json_files: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| f.ends_with(".json"))
        .collect();
    let is_rule =
        |f: &str| f.starts_with(&format!("{top}/rules/")) || base(f).ends_with("_rule.json");

    let v1 = json_files.iter().any(|f| {
        let b = base(f);
        b.starts_with("dga_")
            && (b.ends_with("_ingest_pipeline1.json") || b.ends_with("_ngrams_create.json"))
    });
    let mut c = Classified::default();
    if v1 {
        c.layout = Some(Layout::V1);
        let mut found: [Vec<&str>; 5] = Default::default();
        for f in &json_files {
            if is_rule(f) {
                c.rules.push(f.to_string());
                continue;
            }
            let b = base(f);
            if !b.starts_with("dga_") {
                continue;
            }
            for (i, (suffix, _)) in V1_PATTERNS.iter().enumerate() {
                if b.ends_with(suffix) {
                    found[i].push(f);
                }
            }
        }
        for (i, (_, pattern)) in V1_PATTERNS.iter().enumerate() {
            match found[i].as_slice() {
                [] => {
                    return Err(bad(
                        format!("{top}/{pattern}"),
                        "required file missing (layout v1)",
                    ));
                }
                [one] => {
                    let f = one.to_string();
                    match i {
                        0 => c.model = Some(f),
                        1 => c.scripts.push(("dga_ngrams_create".into(), f)),
                        2 => c.scripts.push(("dga_ngrams_transform_delete".into(), f)),
                        3 => c.pipelines.push((
                            "dns_enrich_pipeline".into(),
                            f,
                            Some(PipelineRole::Router),
                        )),
                        _ => c.pipelines.push((
                            "dns_dga_inference_enrich_pipeline".into(),
                            f,
                            Some(PipelineRole::Inference),
                        )),
                    }
                }
                many => {
                    return Err(bad(
                        many.join(", "),
                        format!("more than one file matches {pattern} (layout v1 has exactly one)"),
                    ));
                }
            }
        }
    } else {
        let mut models = Vec::new();
        for f in &json_files {
            if is_rule(f) {
                c.rules.push(f.to_string());
                continue;
            }
            let b = base(f);
            let stem = b.trim_end_matches(".json");
            match stem.rsplit('_').next() {
                Some("model") => models.push(f.to_string()),
                Some("script") => c.scripts.push((stem.to_string(), f.to_string())),
                Some("pipeline") => c.pipelines.push((stem.to_string(), f.to_string(), None)),
                _ => {}
            }
        }
        if models.is_empty() && c.scripts.is_empty() && c.pipelines.is_empty() {
            return Err(bad(
                format!("{top}/"),
                "unknown layout: no v1 (`dga_*_model.json`, ...) or v2 (`*_model.json`, `*_script.json`, `*_pipeline.json`) files",
            ));
        }
        c.layout = Some(Layout::V2);
        match models.len() {
            0 => {
                return Err(bad(
                    format!("{top}/*_model.json"),
                    "required file missing (layout v2)",
                ));
            }
            1 => c.model = models.pop(),
            _ => {
                return Err(bad(
                    models.join(", "),
                    "more than one model file (layout v2 has exactly one)",
                ));
            }
        }
        if c.pipelines.is_empty() {
            return Err(bad(
                format!("{top}/*_pipeline.json"),
                "required file missing (layout v2)",
            ));
        }
        for list in [
            c.scripts.iter().map(|s| &s.0).collect::<Vec<_>>(),
            c.pipelines.iter().map(|p| &p.0).collect(),
        ] {
            let mut seen = std::collections::BTreeSet::new();
            for id in list {
                if !seen.insert(id) {
                    return Err(bad(format!("{top}/{id}.json"), "duplicated id"));
                }
            }
        }
    }
    Ok((tag, c))
}

/// An empty `dir`, removed again when the guard drops unless kept.
fn prepare_dir(dir: &Path) -> Result<scratch::Scratch, BundleError> {
    let _ = fs::remove_dir_all(dir);
    let guard = scratch::Scratch::new(dir.to_path_buf());
    fs::create_dir_all(dir).map_err(|e| {
        bad(
            dir.display().to_string(),
            format!("cannot create cache folder: {e}"),
        )
    })?;
    Ok(guard)
}

/// A bundle opened before: itself, or the problem found in it since.
fn load_opened(dir: &Path, sha256: &str) -> Option<Result<Bundle, BundleError>> {
    let text = fs::read(dir.join(OPENED_MARKER)).ok()?;
    let b: Bundle = serde_json::from_slice(&text).ok()?;
    if b.sha256 != sha256 || !b.model.definition_path.exists() {
        return None;
    }
    Some(match b.model.refusal() {
        Some(e) => Err(e),
        None => Ok(b),
    })
}

fn save_opened(dir: &Path, b: &Bundle) -> Result<(), BundleError> {
    let tmp = dir.join(format!("{OPENED_MARKER}.tmp"));
    fs::write(&tmp, serde_json::to_vec(b).expect("bundle serializes"))
        .and_then(|_| fs::rename(&tmp, dir.join(OPENED_MARKER)))
        .map_err(|e| {
            bad(
                dir.display().to_string(),
                format!("cannot write cache: {e}"),
            )
        })
}

/// A reader that fails with `too_large` once more than `left` bytes come out of `inner` (zip
/// entries can lie about their size; gzip can inflate without end).
struct Limited<R> {
    inner: R,
    left: u64,
    too_large: String,
}

impl<R> Limited<R> {
    fn new(inner: R, left: u64, too_large: impl Into<String>) -> Self {
        Limited {
            inner,
            left,
            too_large: too_large.into(),
        }
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        scratch::check()?;
        let n = self.inner.read(buf)?;
        self.left = self
            .left
            .checked_sub(n as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, self.too_large.clone()))?;
        Ok(n)
    }
}

/// The error of a file larger than its limit.
fn too_large(name: &str, limit: u64) -> String {
    format!("{name}: larger than the limit of {limit} bytes")
}

/// How much a zip entry may inflate to: what it declares (already checked against the limit),
/// so that a lying entry is stopped after its declared size, not after the limit.
fn entry_budget(name: &str, declared: u64, limit: u64) -> (u64, String) {
    if declared < limit {
        (
            declared,
            format!("{name}: inflates to more than the {declared} bytes its zip entry declares"),
        )
    } else {
        (limit, too_large(name, limit))
    }
}

/// Files of a release, read one at a time through a size-limited reader.
trait Source {
    fn read(
        &mut self,
        name: &str,
        max: u64,
        f: &mut dyn FnMut(&mut (dyn Read + Send)) -> Result<(), BundleError>,
    ) -> Result<(), BundleError>;

    /// Where and how a zip holds the file (for taking a prefetched extraction); `None` for a
    /// folder.
    fn facts(&mut self, _name: &str) -> Option<prefetch::EntryFacts> {
        None
    }
}

struct ZipSource<R: Read + io::Seek> {
    archive: zip::ZipArchive<R>,
    names: Vec<(usize, String)>,
}

impl<R: Read + io::Seek + Send> Source for ZipSource<R> {
    fn read(
        &mut self,
        name: &str,
        max: u64,
        f: &mut dyn FnMut(&mut (dyn Read + Send)) -> Result<(), BundleError>,
    ) -> Result<(), BundleError> {
        let entry = self
            .archive
            .by_index(self.index(name))
            .map_err(|e| bad(name, format!("cannot read: {e}")))?;
        let (budget, message) = entry_budget(name, entry.size(), max);
        f(&mut Limited::new(entry, budget, message))
    }

    fn facts(&mut self, name: &str) -> Option<prefetch::EntryFacts> {
        let e = self.archive.by_index_raw(self.index(name)).ok()?;
        Some(prefetch::EntryFacts::of(&e))
    }
}

impl<R: Read + io::Seek> ZipSource<R> {
    fn index(&self, name: &str) -> usize {
        self.names
            .iter()
            .find(|(_, n)| n == name)
            .map(|(i, _)| *i)
            .expect("classified name exists")
    }
}

struct DirSource {
    root: PathBuf,
    rel: Vec<String>,
    prefixed: Vec<String>,
}

impl Source for DirSource {
    fn read(
        &mut self,
        name: &str,
        max: u64,
        f: &mut dyn FnMut(&mut (dyn Read + Send)) -> Result<(), BundleError>,
    ) -> Result<(), BundleError> {
        let i = self
            .prefixed
            .iter()
            .position(|p| p == name)
            .expect("classified name exists");
        let file =
            File::open(self.root.join(&self.rel[i])).map_err(|e| bad(name, e.to_string()))?;
        f(&mut Limited::new(file, max, too_large(name, max)))
    }
}

fn read_small(src: &mut dyn Source, name: &str, limits: &Limits) -> Result<Value, BundleError> {
    let mut buf = Vec::new();
    src.read(name, limits.max_small_file_bytes, &mut |r| {
        r.read_to_end(&mut buf)
            .map(|_| ())
            .map_err(|e| bad(name, format!("cannot read: {e}")))
    })?;
    let text = std::str::from_utf8(&buf).map_err(|e| bad(name, format!("not UTF-8: {e}")))?;
    serde_json::from_str(text).map_err(|e| bad(name, format!("malformed JSON: {e}")))
}

fn build_bundle(
    tag: &str,
    sha256: &str,
    dir: &Path,
    limits: &Limits,
    c: &Classified,
    open: &mut dyn Source,
    prefetched: Option<Prefetched>,
) -> Result<Bundle, BundleError> {
    let layout = c.layout.expect("classified");
    let model_name = c.model.clone().expect("classified");

    let mut scripts = BTreeMap::new();
    for (id, f) in &c.scripts {
        let v = read_small(open, f, limits)?;
        let source = v.pointer("/script/source").or_else(|| v.get("source"));
        if !source.is_some_and(Value::is_string) {
            return Err(bad(f, "not a stored script: `script.source` missing"));
        }
        // v1 files hold `{"script": {...}}`; accept a bare `{"lang","source"}` too.
        let body = if v.get("script").is_some() {
            v
        } else {
            serde_json::json!({ "script": v })
        };
        scripts.insert(id.clone(), body);
    }

    let mut pipelines = Vec::new();
    for (id, f, role) in &c.pipelines {
        let body = read_small(open, f, limits)?;
        if !body.get("processors").is_some_and(Value::is_array) {
            return Err(bad(f, "not an ingest pipeline: `processors` missing"));
        }
        pipelines.push(Pipeline {
            id: id.clone(),
            role: role.unwrap_or(PipelineRole::Inference),
            body,
        });
    }
    if layout == Layout::V2 {
        assign_v2_roles(tag, &mut pipelines)?;
    }

    let mut rules = Vec::new();
    for f in &c.rules {
        let v = read_small(open, f, limits)?;
        if !v.get("rule_id").is_some_and(Value::is_string) {
            return Err(bad(f, "not a detection rule: `rule_id` missing"));
        }
        rules.push(v);
    }

    let model = open_model(&model_name, layout, dir, limits, open, prefetched)?;
    Ok(Bundle {
        tag: tag.to_string(),
        layout,
        sha256: sha256.to_string(),
        model,
        scripts,
        pipelines,
        rules,
    })
}

/// In layout v2 the router is the pipeline that calls another of the release's pipelines, and
/// the inference pipeline is the one with the `inference` processor.
fn assign_v2_roles(tag: &str, pipelines: &mut [Pipeline]) -> Result<(), BundleError> {
    let ids: Vec<String> = pipelines.iter().map(|p| p.id.clone()).collect();
    let calls_other = |p: &Pipeline| {
        processors_of(&p.body).iter().any(|proc| {
            proc.pointer("/pipeline/name")
                .and_then(Value::as_str)
                .is_some_and(|n| n != p.id && ids.iter().any(|i| i == n))
        })
    };
    let has_inference = |p: &Pipeline| {
        processors_of(&p.body)
            .iter()
            .any(|proc| proc.get("inference").is_some())
    };
    let routers: Vec<usize> = (0..pipelines.len())
        .filter(|i| calls_other(&pipelines[*i]))
        .collect();
    let inferences: Vec<usize> = (0..pipelines.len())
        .filter(|i| has_inference(&pipelines[*i]))
        .collect();
    if inferences.len() != 1 {
        return Err(bad(
            format!("{tag}/*_pipeline.json"),
            format!(
                "expected exactly one pipeline with an `inference` processor, found {}",
                inferences.len()
            ),
        ));
    }
    if pipelines.len() > 2 || routers.len() > 1 || routers.first() == inferences.first() {
        return Err(bad(
            format!("{tag}/*_pipeline.json"),
            "expected a router pipeline calling one inference pipeline",
        ));
    }
    for (i, p) in pipelines.iter_mut().enumerate() {
        p.role = if routers.contains(&i) {
            PipelineRole::Router
        } else {
            PipelineRole::Inference
        };
    }
    if pipelines.len() == 2 && routers.is_empty() {
        return Err(bad(
            format!("{tag}/*_pipeline.json"),
            "two pipelines but neither calls the other",
        ));
    }
    if pipelines.len() == 1 {
        return Err(bad(
            format!("{tag}/*_pipeline.json"),
            "a router pipeline is required besides the inference pipeline",
        ));
    }
    Ok(())
}

/// Top-level processors of a pipeline body (also in `on_failure`).
pub fn processors_of(body: &Value) -> Vec<&Value> {
    ["processors", "on_failure"]
        .iter()
        .filter_map(|k| body.get(*k).and_then(Value::as_array))
        .flatten()
        .collect()
}

/// A model file extracted: its small fields, its large value written to `definition_path`, and
/// the CRC-32 of the whole file.
struct Extracted {
    split: json_scan::Split,
    crc32: u32,
    definition_path: PathBuf,
}

fn extract_model(
    name: &str,
    definition_path: PathBuf,
    reader: &mut (dyn Read + Send),
) -> Result<Extracted, BundleError> {
    let out = File::create(&definition_path)
        .map_err(|e| bad(name, format!("cannot write cache: {e}")))?;
    let mut file = BufWriter::with_capacity(256 * 1024, out);
    let mut hasher = crc32fast::Hasher::new();
    // Inflate on a thread of its own, so that it overlaps the checksum, the scan and the write
    // (inflating is the longer part).
    let split = thread::scope(|s| {
        let inflated = TeeCrc {
            inner: pipe::read_ahead(s, reader),
            hasher: &mut hasher,
        };
        json_scan::split_object(inflated, json_scan::MODEL_LARGE_KEYS, &mut file)
    })
    .map_err(|p| bad(name, format!("malformed JSON: {p}")))?;
    file.flush()
        .map_err(|e| bad(name, format!("cannot write cache: {e}")))?;
    Ok(Extracted {
        split,
        crc32: hasher.finalize(),
        definition_path,
    })
}

fn open_model(
    name: &str,
    layout: Layout,
    dir: &Path,
    limits: &Limits,
    open: &mut dyn Source,
    prefetched: Option<Prefetched>,
) -> Result<ModelFile, BundleError> {
    let definition_path = dir.join("model.definition");
    let adopted = match (prefetched, open.facts(name)) {
        (Some(p), Some(facts)) => {
            let taken = p.adopt(name, &facts, &definition_path);
            tracing::debug!(
                file = name,
                taken = taken.is_some(),
                "model entry extracted during the download"
            );
            taken
        }
        _ => None,
    };
    let Extracted {
        split,
        crc32,
        definition_path,
    } = match adopted {
        Some(e) => e,
        None => {
            let mut out = None;
            open.read(name, limits.max_entry_bytes, &mut |reader| {
                out = Some(extract_model(name, definition_path.clone(), reader)?);
                Ok(())
            })?;
            out.expect("set on success")
        }
    };
    let crc32 = format!("{crc32:08x}");
    let mut head = split.head;

    let field_names = head
        .get("input")
        .and_then(|i| i.get("field_names"))
        .and_then(Value::as_array);
    match field_names {
        Some(f) if !f.is_empty() && f.iter().all(Value::is_string) => {}
        _ => {
            return Err(bad(
                name,
                "model has no `input.field_names` (a non-empty list of field names)",
            ));
        }
    }
    if !head.get("inference_config").is_some_and(Value::is_object) {
        return Err(bad(name, "model has no `inference_config` object"));
    }
    let (definition_key, definition_len) = match split.large.as_slice() {
        [(k, n)] => (k.to_string(), *n),
        [] => {
            return Err(bad(
                name,
                "model has neither `definition` nor `compressed_definition`",
            ));
        }
        _ => {
            return Err(bad(
                name,
                "model has both `definition` and `compressed_definition`",
            ));
        }
    };
    let id_from_file = head.remove("model_id");
    let id = match layout {
        Layout::V1 => {
            let stem = name
                .rsplit('/')
                .next()
                .unwrap_or(name)
                .trim_end_matches(".json");
            stem.rsplit_once('_')
                .map(|(a, _)| a.to_string())
                .unwrap_or_default()
        }
        Layout::V2 => match id_from_file {
            Some(Value::String(s)) => s,
            _ => {
                return Err(bad(
                    name,
                    "model has no `model_id` (layout v2 names the model inside the file)",
                ));
            }
        },
    };
    if !valid_model_id(&id) {
        return Err(bad(
            name,
            format!("model id `{id}` is not a valid Elasticsearch model id"),
        ));
    }
    Ok(ModelFile {
        id,
        file: name.to_string(),
        head,
        definition_key,
        definition_path,
        definition_len,
        crc32,
    })
}

/// Elasticsearch model ids: lowercase alphanumerics, `-`, `_`, `.`, starting and ending with an
/// alphanumeric, at most 64 characters.
pub fn valid_model_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        })
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

struct TeeCrc<'a, R> {
    inner: R,
    hasher: &'a mut crc32fast::Hasher,
}

/// Checksums what is consumed.
impl<R: BufRead> Read for TeeCrc<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for TeeCrc<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        // Still buffered (`n` is at most what the last `fill_buf` gave): this reads nothing.
        if n > 0
            && let Ok(buf) = self.inner.fill_buf()
        {
            self.hasher.update(&buf[..n.min(buf.len())]);
        }
        self.inner.consume(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_must_stay_inside() {
        for bad_name in ["/etc/passwd", "a/../../b", "..", "C:/x", "a\\b"] {
            assert!(check_entry_name(bad_name).is_err(), "{bad_name}");
        }
        assert!(check_entry_name("ML-DGA-20201129-25/dga_1_model.json").is_ok());
    }

    #[test]
    fn model_ids() {
        assert!(valid_model_id("dga_1611725_2.0"));
        assert!(valid_model_id("dga_875109_1.0-ab12cd34"));
        for id in ["", "Dga", "_x", "x_", "a b", &"a".repeat(65)] {
            assert!(!valid_model_id(id), "{id}");
        }
    }
}
