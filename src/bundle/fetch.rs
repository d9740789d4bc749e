//! Getting a release onto local disk: resolve the tag (GitHub releases API, a mirror URL, or a
//! local folder), download streamed into a cache keyed by sha256, verify, open.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::scratch::Scratch;
use super::{Bundle, Limits, Prefetched};
use crate::api::{DEFAULT_REPOSITORY, ReleaseSource};
use crate::error::{Error, Service, Transience};
use crate::http;

/// Where releases come from, shared by every reconcile.
pub struct Fetcher {
    http: reqwest::Client,
    /// GitHub API base, e.g. `https://api.github.com` (mirrors, GitHub Enterprise, tests).
    pub github_api: String,
    pub github_token: Option<String>,
    /// Unpacked local releases, `<dir>/<tag>/` (air-gapped installs, the old CLI's `-d`).
    pub bundle_dir: Option<PathBuf>,
    pub cache_dir: PathBuf,
    pub limits: Limits,
    /// Called while a release zip downloads with (bytes so far, declared length): once before
    /// the first byte, then after every chunk. Front doors use it for progress bars.
    pub on_download: Option<DownloadProgress>,
    /// One open at a time per bundle folder.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Releases opened by this process, by zip sha256: every resync of every DgaModel asks for
    /// its release, and the answer does not change (releases are immutable).
    opened: Mutex<HashMap<String, Bundle>>,
    /// Zip sha256 by source (the on-disk `sources/` index, remembered).
    sources: Mutex<HashMap<String, String>>,
    /// Fleet package archives opened by this process, by url (each resync of a DgaModel on
    /// the air-gapped route asks again).
    packages: Mutex<HashMap<String, crate::engine::package::Archive>>,
}

/// See `Fetcher::on_download`.
pub type DownloadProgress = Arc<dyn Fn(u64, Option<u64>) + Send + Sync>;

/// What a DgaModel asks for.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub tag: &'a str,
    pub source: Option<&'a ReleaseSource>,
}

impl Fetcher {
    pub fn new(http: reqwest::Client, github_api: &str, cache_dir: PathBuf) -> Self {
        Fetcher {
            http,
            github_api: github_api.trim_end_matches('/').to_string(),
            github_token: None,
            bundle_dir: None,
            cache_dir,
            limits: Limits::default(),
            on_download: None,
            locks: Mutex::new(HashMap::new()),
            opened: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            packages: Mutex::new(HashMap::new()),
        }
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("lock map")
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// Returns the opened bundle, downloading only what the cache lacks.
    pub async fn fetch(&self, req: Request<'_>) -> Result<Bundle, Error> {
        if let Some(dir) = &self.bundle_dir {
            let local = dir.join(req.tag);
            if local.is_dir() {
                return self.open_dir(&local).await;
            }
            let zip = dir.join(format!("{}.zip", req.tag));
            if zip.is_file() {
                let sha = sha256_file(&zip).await?;
                return self.open_zip(&zip, &sha, req.tag).await;
            }
        }
        let pinned = req
            .source
            .and_then(|s| s.sha256.as_deref())
            .map(str::to_ascii_lowercase);
        let key = source_key(&req);
        // A pinned sha256 already in the cache needs no network at all.
        if let Some(sha) = &pinned
            && let Some(b) = self.open_cached(sha, req.tag, &key).await?
        {
            return Ok(b);
        }
        let remembered = self.sources.lock().expect("sources").get(&key).cloned();
        if pinned.is_none()
            && let Some(sha) = remembered
            && let Some(b) = self.open_cached(&sha, req.tag, &key).await?
        {
            return Ok(b);
        }
        let lock = self.lock_for(&key);
        let _guard = lock.lock().await;
        // A source we already downloaded (releases are immutable): reuse its zip.
        if pinned.is_none()
            && let Ok(sha) = tokio::fs::read_to_string(self.index_path(&key)).await
        {
            let sha = sha.trim().to_string();
            if let Some(b) = self.open_cached(&sha, req.tag, &key).await? {
                self.remember_source(key, &sha);
                return Ok(b);
            }
        }
        let (zip_url, manifest_url) = match req.source.and_then(|s| s.url.as_deref()) {
            Some(url) => (url.to_string(), None),
            None => self.resolve_github(&req).await?,
        };
        let (sha, prefetched) = self.download(&zip_url, pinned.as_deref()).await?;
        if let Some(url) = manifest_url {
            self.check_manifest(&url, req.tag, &sha).await?;
        }
        let zip = self.zip_path(&sha);
        let opened = self
            .open_zip_prefetched(&zip, &sha, req.tag, prefetched)
            .await;
        // Kept for the tag only when it opened or its content is what is wrong: a damaged
        // download is dropped, and the next attempt asks the host again.
        if opened.is_err() && self.drop_if_damaged(&sha, &key).await {
            return opened;
        }
        write_atomic(&self.index_path(&key), sha.as_bytes()).await?;
        self.remember_source(key, &sha);
        opened
    }

    /// Opens the cached zip of `sha`; `None` when there is none, or when it was damaged (then
    /// it is gone, with its index entry, and the caller downloads again).
    async fn open_cached(&self, sha: &str, tag: &str, key: &str) -> Result<Option<Bundle>, Error> {
        let zip = self.zip_path(sha);
        if !zip.is_file() {
            return Ok(None);
        }
        match self.open_zip(&zip, sha, tag).await {
            Ok(b) => Ok(Some(b)),
            Err(e) => {
                if self.drop_if_damaged(sha, key).await {
                    tracing::info!(sha, error = %e, "cached release zip is damaged: downloading it again");
                    return Ok(None);
                }
                Err(e)
            }
        }
    }

    /// After an open failed: when the zip itself is unreadable (cut, not a zip), removes it,
    /// its opened folder and the source's index entry; true when it did.
    async fn drop_if_damaged(&self, sha: &str, key: &str) -> bool {
        let zip = self.zip_path(sha);
        let probe = zip.clone();
        let damaged = tokio::task::spawn_blocking(move || super::damage(&probe))
            .await
            .ok()
            .flatten();
        if damaged.is_none() {
            return false;
        }
        let _ = tokio::fs::remove_file(&zip).await;
        let _ = tokio::fs::remove_dir_all(self.cache_dir.join("bundles").join(sha)).await;
        let _ = tokio::fs::remove_file(self.index_path(key)).await;
        self.sources.lock().expect("sources").remove(key);
        self.opened.lock().expect("opened").remove(sha);
        true
    }

    fn remember_source(&self, key: String, sha: &str) {
        self.sources
            .lock()
            .expect("sources")
            .insert(key, sha.to_string());
    }

    fn zip_path(&self, sha: &str) -> PathBuf {
        self.cache_dir.join("zips").join(format!("{sha}.zip"))
    }

    fn index_path(&self, key: &str) -> PathBuf {
        let h = hex::encode(Sha256::digest(key.as_bytes()));
        self.cache_dir.join("sources").join(&h[..32])
    }

    async fn open_zip(&self, zip: &Path, sha: &str, tag: &str) -> Result<Bundle, Error> {
        self.open_zip_prefetched(zip, sha, tag, None).await
    }

    async fn open_zip_prefetched(
        &self,
        zip: &Path,
        sha: &str,
        tag: &str,
        prefetched: Option<Prefetched>,
    ) -> Result<Bundle, Error> {
        // Still there on disk: the upload streams the definition from it.
        let known = self.opened.lock().expect("opened").get(sha).cloned();
        if let Some(b) = known.filter(|b| b.model.definition_path.exists()) {
            if let Some(e) = b.model.refusal() {
                return Err(e.into());
            }
            check_tag(&b, tag)?;
            return Ok(b);
        }
        let dir = self.cache_dir.join("bundles").join(sha);
        let lock = self.lock_for(sha);
        let _g = lock.lock().await;
        let (zip, sha2, limits) = (zip.to_path_buf(), sha.to_string(), self.limits.clone());
        let bundle = tokio::task::spawn_blocking(move || {
            super::open_zip_prefetched(&zip, &sha2, &dir, &limits, prefetched)
        })
        .await
        .map_err(|e| Error::Internal(format!("bundle task: {e}")))??;
        self.opened
            .lock()
            .expect("opened")
            .insert(sha.to_string(), bundle.clone());
        check_tag(&bundle, tag)?;
        Ok(bundle)
    }

    async fn open_dir(&self, src: &Path) -> Result<Bundle, Error> {
        let tag = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = self.cache_dir.join("bundles").join(format!(
            "dir-{}",
            hex::encode(Sha256::digest(src.as_os_str().as_encoded_bytes()))
        ));
        let lock = self.lock_for(&dir.to_string_lossy());
        let _g = lock.lock().await;
        let (src, limits) = (src.to_path_buf(), self.limits.clone());
        let bundle = tokio::task::spawn_blocking(move || super::open_dir(&src, &dir, &limits))
            .await
            .map_err(|e| Error::Internal(format!("bundle task: {e}")))??;
        check_tag(&bundle, &tag)?;
        Ok(bundle)
    }

    fn github(&self, url: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .get(url)
            .header("Accept", "application/vnd.github+json")
            .header("User-Agent", "dga-operator");
        if let Some(t) = &self.github_token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn resolve_github(&self, req: &Request<'_>) -> Result<(String, Option<String>), Error> {
        let repo = req
            .source
            .and_then(|s| s.repository.as_deref())
            .unwrap_or(DEFAULT_REPOSITORY);
        let url = format!("{}/repos/{repo}/releases/tags/{}", self.github_api, req.tag);
        let what = format!(
            "looking up release {} in {repo} at {}",
            req.tag,
            redact_url(&url)
        );
        let resp = http::send(Service::Releases, &what, self.github(&url)).await?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Err(Error::ReleaseNotFound {
                tag: req.tag.to_string(),
                detail: format!(
                    "no such release in {repo} ({} answered HTTP 404)",
                    redact_url(&url)
                ),
            });
        }
        if !resp.status().is_success() {
            let detail = http::summarize(resp).await;
            return Err(Error::Rejected {
                service: Service::Releases,
                what,
                status,
                detail,
            });
        }
        let release = http::json(Service::Releases, &what, resp).await?;
        let assets = release
            .get("assets")
            .and_then(|a| a.as_array())
            .cloned()
            .unwrap_or_default();
        let name_of = |a: &serde_json::Value| {
            a.get("name")
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let url_of = |a: &serde_json::Value| {
            a.get("browser_download_url")
                .and_then(|n| n.as_str())
                .map(str::to_string)
        };
        let zips: Vec<&serde_json::Value> = assets
            .iter()
            .filter(|a| name_of(a).starts_with("ML-DGA") && name_of(a).ends_with(".zip"))
            .collect();
        let zip = match zips.as_slice() {
            [one] => url_of(one).ok_or_else(|| {
                Error::InvalidRelease(format!("asset {} has no download URL", name_of(one)))
            })?,
            [] => {
                return Err(Error::InvalidRelease(format!(
                    "release {} in {repo} has no ML-DGA*.zip asset",
                    req.tag
                )));
            }
            many => {
                let names: Vec<String> = many.iter().map(|a| name_of(a)).collect();
                return Err(Error::InvalidRelease(format!(
                    "release {} in {repo} has {} ML-DGA*.zip assets ({}); expected one",
                    req.tag,
                    many.len(),
                    names.join(", ")
                )));
            }
        };
        let manifest_name = format!("manifest-{}.json", req.tag);
        let manifest = assets
            .iter()
            .find(|a| name_of(a) == manifest_name)
            .and_then(url_of);
        Ok((zip, manifest))
    }

    /// Streams `url` into the cache (nothing partial is ever left under the final name); returns
    /// its sha256, and its model entry when that could be extracted while the zip arrived (see
    /// `prefetch`).
    async fn download(
        &self,
        url: &str,
        expected: Option<&str>,
    ) -> Result<(String, Option<Prefetched>), Error> {
        let what = &format!("downloading the release from {}", redact_url(url));
        let resp = http::send(
            Service::Releases,
            what,
            self.github(url)
                .header("Accept", "application/octet-stream"),
        )
        .await?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Err(Error::InvalidRelease(format!(
                "{} answered HTTP 404",
                redact_url(url)
            )));
        }
        if !resp.status().is_success() {
            let detail = http::summarize(resp).await;
            return Err(Error::Rejected {
                service: Service::Releases,
                what: what.into(),
                status,
                detail,
            });
        }
        let declared = resp.content_length();
        if declared.is_some_and(|n| n > self.limits.max_total_bytes) {
            return Err(Error::InvalidRelease(format!(
                "the release zip at {} is {} bytes, more than the limit of {} bytes",
                redact_url(url),
                declared.unwrap(),
                self.limits.max_total_bytes
            )));
        }
        let tmp_dir = self.cache_dir.join("zips");
        tokio::fs::create_dir_all(&tmp_dir).await.map_err(io_err)?;
        let tmp = tmp_dir.join(format!(".download-{:016x}", rand::random::<u64>()));
        // Removes the partial file on any way out but the rename, including a dropped future
        // (the CLI drops the download when the cluster refuses it first, or on Ctrl-C).
        let partial = Scratch::new(tmp.clone());
        // The model entry is extracted from the arriving bytes on a thread of its own. The
        // queue is bounded: when extracting is slower than the network, the download waits.
        let (sender, queue) = tokio::sync::mpsc::channel(PREFETCH_QUEUE);
        let (staging, limits) = (tmp_dir.clone(), self.limits.clone());
        let prefetch = tokio::task::spawn_blocking(move || {
            super::prefetch_model(QueueReader::new(queue), &staging, &limits)
        });
        let result = async {
            // Chunks arrive a few KB at a time: batch them into 1 MiB writes (bounded memory,
            // far fewer trips to the blocking pool than one write per chunk).
            // Created here, not on the blocking pool: a create still in flight when the future
            // is dropped would put the file there after the guard removed it.
            let created = std::fs::File::create(&tmp).map_err(io_err)?;
            let mut file =
                tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(created));
            let mut hasher = Sha256::new();
            let mut n: u64 = 0;
            let mut stream = resp.bytes_stream();
            let mut to_prefetch = Some(sender);
            // Chunks vary from a few KB to hundreds: the queue takes whole batches, so that
            // its length bounds the memory it holds.
            let mut batch = bytes::BytesMut::new();
            if let Some(f) = &self.on_download {
                f(0, declared);
            }
            while let Some(chunk) = stream.next().await {
                let chunk =
                    chunk.map_err(|e| http::transport_error(Service::Releases, what, &e))?;
                n += chunk.len() as u64;
                if n > self.limits.max_total_bytes {
                    return Err(Error::InvalidRelease(format!(
                        "the release zip at {} is more than the limit of {} bytes",
                        redact_url(url),
                        self.limits.max_total_bytes
                    )));
                }
                hasher.update(&chunk);
                if let Some(q) = &to_prefetch {
                    batch.extend_from_slice(&chunk);
                    if batch.len() >= PREFETCH_BATCH
                        && q.send(batch.split().freeze()).await.is_err()
                    {
                        // Done (the model entry is behind it) or given up.
                        to_prefetch = None;
                    }
                }
                file.write_all(&chunk).await.map_err(io_err)?;
                if let Some(f) = &self.on_download {
                    f(n, declared);
                }
            }
            if declared.is_some_and(|d| d != n) {
                return Err(Error::Transient {
                    service: Service::Releases,
                    what: what.into(),
                    detail: format!(
                        "truncated download from {}: {n} of {} bytes",
                        redact_url(url),
                        declared.unwrap()
                    ),
                    retry_after: None,
                    cause: Transience::Dropped,
                });
            }
            if let Some(q) = to_prefetch
                && !batch.is_empty()
            {
                let _ = q.send(batch.freeze()).await;
            }
            file.flush().await.map_err(io_err)?;
            file.get_ref().sync_all().await.map_err(io_err)?;
            let sha = hex::encode(hasher.finalize());
            if let Some(want) = expected
                && !want.eq_ignore_ascii_case(&sha)
            {
                return Err(Error::ChecksumMismatch(format!(
                    "the release zip has sha256 {sha}, but spec.source.sha256 is {want}"
                )));
            }
            // Only a zip is cached: an HTML page or a cut file served with status 200 is not
            // kept (the next attempt asks again).
            let probe = tmp.clone();
            if let Ok(Err(why)) = tokio::task::spawn_blocking(move || super::is_zip(&probe)).await {
                // The release's zip is what is wrong (InvalidBundle, as when a cached zip does
                // not open), named as the URL's last segment.
                let file = reqwest::Url::parse(url)
                    .ok()
                    .and_then(|u| u.path_segments()?.next_back().map(str::to_string))
                    .unwrap_or_else(|| "the release zip".into());
                return Err(Error::InvalidBundle(super::BundleError {
                    file,
                    problem: format!(
                        "not a valid zip: the download from {} is not a zip file ({n} bytes: {why})",
                        redact_url(url)
                    ),
                }));
            }
            tokio::fs::rename(&tmp, self.zip_path(&sha))
                .await
                .map_err(io_err)?;
            partial.keep();
            Ok(sha)
        }
        .await;
        // The queue is closed by now, so the thread ends soon; on an error, waiting for it
        // means its staging folder is gone when the error is returned.
        let prefetched = prefetch.await.ok().flatten();
        Ok((result?, prefetched))
    }

    async fn check_manifest(&self, url: &str, tag: &str, sha: &str) -> Result<(), Error> {
        let what = &format!("downloading the release manifest from {}", redact_url(url));
        let resp = http::send(Service::Releases, what, self.github(url)).await?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let detail = http::summarize(resp).await;
            return Err(Error::Rejected {
                service: Service::Releases,
                what: what.into(),
                status,
                detail,
            });
        }
        let manifest = http::json(Service::Releases, what, resp).await?;
        let expected = manifest_zip_sha(&manifest, tag).ok_or_else(|| {
            Error::InvalidRelease(format!(
                "manifest-{tag}.json names no zipped_sha256 for {tag}.zip"
            ))
        })?;
        if !expected.eq_ignore_ascii_case(sha) {
            let _ = tokio::fs::remove_file(self.zip_path(sha)).await;
            return Err(Error::ChecksumMismatch(format!(
                "the release zip has sha256 {sha}, but manifest-{tag}.json says {expected}"
            )));
        }
        Ok(())
    }
}

/// The zip's sha256 from a release manifest: `assets["<tag>.zip"].zipped_sha256` as the
/// detection-rules release tooling wrote it, or a top-level `zipped_sha256`.
pub fn manifest_zip_sha(manifest: &serde_json::Value, tag: &str) -> Option<String> {
    manifest
        .pointer(&format!("/assets/{tag}.zip/zipped_sha256"))
        .or_else(|| manifest.get("zipped_sha256"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

fn check_tag(bundle: &Bundle, tag: &str) -> Result<(), Error> {
    if bundle.tag != tag {
        return Err(Error::InvalidBundle(crate::bundle::BundleError {
            file: format!("{}/", bundle.tag),
            problem: format!(
                "the release folder is named {}, but the spec asks for {tag}",
                bundle.tag
            ),
        }));
    }
    Ok(())
}

fn source_key(req: &Request<'_>) -> String {
    match req.source.and_then(|s| s.url.as_deref()) {
        Some(url) => format!("url {url}"),
        None => {
            let repo = req
                .source
                .and_then(|s| s.repository.as_deref())
                .unwrap_or(DEFAULT_REPOSITORY);
            format!("github {repo} {}", req.tag)
        }
    }
}

fn io_err(e: std::io::Error) -> Error {
    Error::Internal(format!("bundle cache: {e}"))
}

async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    if let Some(p) = path.parent() {
        tokio::fs::create_dir_all(p).await.map_err(io_err)?;
    }
    let tmp = path.with_extension(format!("tmp{:08x}", rand::random::<u32>()));
    tokio::fs::write(&tmp, bytes).await.map_err(io_err)?;
    tokio::fs::rename(&tmp, path).await.map_err(io_err)
}

pub async fn sha256_file(path: &Path) -> Result<String, Error> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path).map_err(io_err)?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).map_err(io_err)?;
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
}

/// URLs in messages lose any userinfo and query (which may carry tokens).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => http::redact(&u),
        Err(_) => "<invalid url>".to_string(),
    }
}

/// Batches of a download waiting for the prefetch thread: at most about 1.25 MiB.
const PREFETCH_QUEUE: usize = 4;
const PREFETCH_BATCH: usize = 256 * 1024;

/// The download's chunks as a blocking reader (the prefetch thread's end of the queue).
struct QueueReader {
    queue: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    chunk: bytes::Bytes,
}

impl QueueReader {
    fn new(queue: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Self {
        QueueReader {
            queue,
            chunk: bytes::Bytes::new(),
        }
    }
}

impl std::io::Read for QueueReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.queue.blocking_recv() {
                Some(c) => self.chunk = c,
                // The download ended (or failed): end of file here.
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

impl Fetcher {
    /// The Fleet route's air-gapped source: the `dga` package archive at `url` (a mirror),
    /// checked like a release (sha256 when given, Kibana's 100 MB upload limit, a zip with the
    /// asked version's manifest) and cached by sha256; a url already downloaded needs no network
    /// again (package versions are immutable).
    pub async fn fetch_package(
        &self,
        url: &str,
        sha256: Option<&str>,
        version: &str,
    ) -> Result<crate::engine::package::Archive, Error> {
        use crate::engine::package::{Archive, MAX_ARCHIVE_BYTES};
        let pinned = sha256.map(str::to_ascii_lowercase);
        let key = format!("package {url}");
        let remembered = self.packages.lock().expect("packages").get(&key).cloned();
        if let Some(a) = remembered
            && a.version == version
            && pinned.as_ref().is_none_or(|p| *p == a.sha256)
        {
            return Ok(a);
        }
        let shown = redact_url(url);
        let path_of = |sha: &str| self.cache_dir.join("packages").join(format!("{sha}.zip"));
        let cached = |sha: String| async move {
            let bytes = tokio::fs::read(path_of(&sha)).await.ok()?;
            // The file is named by its content: a damaged one is read again from the source.
            (hex::encode(Sha256::digest(&bytes)) == sha).then_some((bytes, sha))
        };
        let lock = self.lock_for(&key);
        let _guard = lock.lock().await;
        let mut hit = None;
        if let Some(sha) = &pinned {
            hit = cached(sha.clone()).await;
        } else if let Ok(sha) = tokio::fs::read_to_string(self.index_path(&key)).await {
            hit = cached(sha.trim().to_string()).await;
        }
        let (bytes, sha) = match hit {
            Some(h) => h,
            None => {
                let what = format!("downloading the package archive from {shown}");
                let resp = http::send(
                    Service::Releases,
                    &what,
                    self.http
                        .get(url)
                        .header("Accept", "application/zip, application/octet-stream")
                        .header("User-Agent", "dga-operator"),
                )
                .await?;
                let status = resp.status().as_u16();
                if !resp.status().is_success() {
                    let detail = http::summarize(resp).await;
                    return Err(if status == 404 {
                        Error::InvalidRelease(format!("{shown} answered HTTP 404"))
                    } else {
                        Error::Rejected {
                            service: Service::Releases,
                            what,
                            status,
                            detail,
                        }
                    });
                }
                let too_big = || {
                    Error::InvalidRelease(format!(
                        "the package archive at {shown} is more than Kibana's upload limit of {MAX_ARCHIVE_BYTES} bytes"
                    ))
                };
                if resp.content_length().is_some_and(|n| n > MAX_ARCHIVE_BYTES) {
                    return Err(too_big());
                }
                let mut bytes = Vec::new();
                let mut stream = resp.bytes_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk =
                        chunk.map_err(|e| http::transport_error(Service::Releases, &what, &e))?;
                    if bytes.len() as u64 + chunk.len() as u64 > MAX_ARCHIVE_BYTES {
                        return Err(too_big());
                    }
                    bytes.extend_from_slice(&chunk);
                }
                let sha = hex::encode(Sha256::digest(&bytes));
                if let Some(want) = &pinned
                    && *want != sha
                {
                    return Err(Error::ChecksumMismatch(format!(
                        "the package archive at {shown} has sha256 {sha}, but spec.fleetPackage.sha256 is {want}"
                    )));
                }
                (bytes, sha)
            }
        };
        let archive = Archive::open(bytes, sha.clone(), &shown, version)?;
        // Cached only once it opened as the version asked for.
        let path = path_of(&sha);
        if tokio::fs::metadata(&path).await.is_err() {
            write_atomic(&path, &archive.bytes).await?;
        }
        write_atomic(&self.index_path(&key), sha.as_bytes()).await?;
        self.packages
            .lock()
            .expect("packages")
            .insert(key, archive.clone());
        Ok(archive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A download abandoned half-way (the future dropped, as the CLI does when the cluster
    /// refuses it first) leaves no partial file in the cache.
    #[tokio::test]
    async fn an_abandoned_download_leaves_nothing_behind() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut conn, &mut buf).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/zip\r\ncontent-length: 10000000\r\n\r\n";
            conn.write_all(head.as_bytes()).await.unwrap();
            conn.write_all(&vec![0u8; 256 * 1024]).await.unwrap();
            // Stall with the body unfinished.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let cache = tempfile::tempdir().unwrap();
        let fetcher = Fetcher::new(
            reqwest::Client::new(),
            "http://127.0.0.1:9",
            cache.path().to_path_buf(),
        );
        let source = ReleaseSource {
            repository: None,
            url: Some(format!("http://{addr}/ML-DGA-20210126-1.zip")),
            sha256: Some("ab".repeat(32)),
        };
        let partials = || -> Vec<String> {
            std::fs::read_dir(cache.path().join("zips"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".download-"))
                .collect()
        };
        let mut fetch = Box::pin(fetcher.fetch(Request {
            tag: "ML-DGA-20210126-1",
            source: Some(&source),
        }));
        // Wait until the partial file exists, then abandon the download.
        let started = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                tokio::select! {
                    r = &mut fetch => panic!("the stalled download ended: {:?}", r.err()),
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
                if !partials().is_empty() {
                    break;
                }
            }
        })
        .await;
        assert!(started.is_ok(), "the download never started");
        drop(fetch);
        assert_eq!(partials(), Vec::<String>::new());
    }
}
