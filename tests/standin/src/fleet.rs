//! TEST STAND-IN for Kibana's Fleet package API (`/api/fleet/epm/packages...`) and Kibana ML's
//! module API (`/api/ml/modules/...`), answering as Kibana's source does per `--kibana-version`.
//!
//! Sources (elastic/kibana, reference only): Fleet `server/routes/epm/{index,handlers}.ts`,
//! `server/services/epm/packages/{install,get,remove}.ts`, `services/epm/registry/{index,
//! requests}.ts`, `server/errors/handlers.ts`, `services/epm/elasticsearch/{meta.ts,
//! ml_model/install.ts}` (`x-pack/platform/plugins/shared/fleet/...` from 8.18/9.0,
//! `x-pack/plugins/fleet/...` before); ML `server/models/data_recognizer/data_recognizer.ts`.
//!
//! What Fleet would write to Elasticsearch goes through the stand-in's own Elasticsearch
//! handlers (`es::handle`), so the same checks apply; these internal calls are not in the
//! request log (a real Kibana's calls to Elasticsearch are not the operator's either).
//! Not modelled: index/component templates (the stand-in has no `_component_template`), tar.gz
//! uploads, package policies, prerelease channels, bundled packages, signature verification.

use bytes::Bytes;
use semver::Version;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::fleet_package::{self as pkg, PACKAGE, Package};
use crate::server::{Req, Resp, Shared};

/// Fleet's upload limit (`MAX_FILE_SIZE_BYTES` in `routes/epm/index.ts`: 100MB).
const MAX_UPLOAD: usize = 104_857_600;
/// `UPLOAD_RETRY_AFTER_MS` (install.ts): one upload per 10 s, from 8.15 (kibana PR #184036).
const UPLOAD_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Fleet and ML state kept by the stand-in's Kibana.
#[derive(Debug, Default)]
pub(crate) struct FleetState {
    /// Generated registry packages (lazily, from `StandinConfig::fleet_packages`).
    pub registry: Option<BTreeMap<Version, Package>>,
    /// Kibana cannot reach its package registry (`xpack.fleet.registryUrl` down or firewalled).
    pub registry_unreachable: bool,
    /// `epm-packages` saved objects by package name.
    pub installations: BTreeMap<String, Installation>,
    /// Other saved objects Fleet installed: (type, id) → the saved object.
    pub saved_objects: BTreeMap<(String, String), Value>,
    pub last_upload: Option<Instant>,
}

#[derive(Debug, Clone)]
pub(crate) struct Installation {
    pub name: String,
    pub version: Version,
    pub install_source: String,
    pub installed_es: Vec<Value>,
    pub installed_kibana: Vec<Value>,
    pub created_at: String,
    pub updated_at: String,
    pub manifest: Value,
    /// The package's files (relative to `<name>-<version>/`): what the file route serves.
    pub files: std::collections::BTreeMap<String, Vec<u8>>,
}

/// A Kibana version as semver (`8.17` → 8.17.0; unparsable → 8.17.0).
fn kibana(sh: &Shared) -> Version {
    let raw = sh.cfg.kibana_version.split('-').next().unwrap_or("");
    let mut parts: Vec<u64> = raw.split('.').filter_map(|p| p.parse().ok()).collect();
    parts.resize(3, 0);
    if parts[0] == 0 {
        return Version::new(8, 17, 0);
    }
    Version::new(parts[0], parts[1], parts[2])
}

fn at_least(sh: &Shared, major: u64, minor: u64) -> bool {
    let k = kibana(sh);
    (k.major, k.minor) >= (major, minor)
}

/// Kibana's error body (`response.customError` / Boom): `{statusCode, error, message}`.
fn kerr(status: u16, message: &str) -> Resp {
    let error = match status {
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        413 => "Request Entity Too Large",
        403 => "Forbidden",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "Error",
    };
    Resp::json(
        status,
        &json!({"statusCode": status, "error": error, "message": message}),
    )
}

/// Call the stand-in's Elasticsearch as Kibana would (same credentials as the Kibana request).
fn es(
    sh: &Shared,
    r: &Req,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Value) {
    es_raw(
        sh,
        r,
        method,
        path,
        query,
        body.map(|b| Bytes::from(serde_json::to_vec(b).unwrap_or_default())),
    )
}

fn es_raw(
    sh: &Shared,
    r: &Req,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    body: Option<Bytes>,
) -> (u16, Value) {
    let mut headers = hyper::HeaderMap::new();
    if let Some(a) = r.headers.get("authorization") {
        headers.insert("authorization", a.clone());
    }
    headers.insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    let req = Req {
        method: method.into(),
        path: path.into(),
        query: query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        headers,
        body: body.unwrap_or_default(),
    };
    let resp = crate::es::handle(sh, &req);
    let v = match &resp.body {
        crate::server::RespBody::Bytes(b) => serde_json::from_slice(b).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (resp.status, v)
}

/// Route a Kibana request to Fleet or ML when the path is theirs (`space`-less `bare` path).
pub(crate) fn handle(sh: &Shared, r: &Req, bare: &str) -> Option<Resp> {
    let segs: Vec<&str> = bare.trim_matches('/').split('/').collect();
    let m = r.method.as_str();
    let resp = match (m, segs.as_slice()) {
        ("GET", ["api", "fleet", "epm", "packages", key]) => {
            let (name, version) = split_key(sh, key);
            get_info(sh, &name, version.as_deref())
        }
        ("GET", ["api", "fleet", "epm", "packages", name, version]) => {
            get_info(sh, name, Some(version))
        }
        ("POST", ["api", "fleet", "epm", "packages"]) => upload(sh, r),
        ("GET", ["api", "fleet", "epm", "packages", name, version, path @ ..])
            if !path.is_empty() =>
        {
            get_file(sh, name, version, &path.join("/"))
        }
        ("POST", ["api", "fleet", "epm", "packages", key]) => {
            let (name, version) = split_key(sh, key);
            install_from_registry(sh, r, &name, version.as_deref())
        }
        ("POST", ["api", "fleet", "epm", "packages", name, version]) => {
            install_from_registry(sh, r, name, Some(version))
        }
        ("DELETE", ["api", "fleet", "epm", "packages", key]) => {
            let (name, _) = split_key(sh, key);
            uninstall(sh, r, &name)
        }
        ("DELETE", ["api", "fleet", "epm", "packages", name, _version]) => uninstall(sh, r, name),
        ("POST", ["api", "ml", "modules", "setup", id]) => module_setup(sh, r, id),
        ("GET", ["api", "ml", "modules", "get_module", id]) => get_module(sh, id),
        (_, ["api", "fleet", "epm", "packages", ..]) | (_, ["api", "ml", "modules", ..]) => {
            kerr(404, "Not Found")
        }
        _ => return None,
    };
    let api = match segs.get(1) {
        Some(&"fleet") => "fleet.epm",
        _ => "ml.modules",
    };
    Some(resp.api(api))
}

/// One path segment: 8.x still routes the deprecated `{pkgkey}` form (`dga-2.3.7`); 9.0 removed
/// it (kibana PR #198434), where the segment is only a name.
fn split_key(sh: &Shared, key: &str) -> (String, Option<String>) {
    if !at_least(sh, 9, 0)
        && let Some((n, v)) = key.rsplit_once('-')
        && Version::parse(v).is_ok()
    {
        return (n.to_string(), Some(v.to_string()));
    }
    (key.to_string(), None)
}

/// The newest registry version whose constraint this Kibana meets, as Fleet's
/// `fetchFindLatestPackageOrThrow` finds it (`/search?package=dga&kibana.version=<kibana>`,
/// one retry; any registry error is logged and counts as "no package").
fn latest(sh: &Shared, ignore_constraints: bool) -> Option<Version> {
    if sh.st().fleet.registry_unreachable {
        return None;
    }
    let k = kibana(sh);
    let hits = pkg::search(sh, (!ignore_constraints).then_some(&k), false);
    hits.first()
        .and_then(|h| h["version"].as_str())
        .and_then(|v| Version::parse(v).ok())
}

fn registry_package(sh: &Shared, v: &Version) -> Option<Package> {
    if sh.st().fleet.registry_unreachable {
        return None;
    }
    pkg::registry(sh).get(v).cloned()
}

// ---- GET /api/fleet/epm/packages/{name}[/{version}]

fn get_info(sh: &Shared, name: &str, version: Option<&str>) -> Resp {
    if let Some(v) = version
        && Version::parse(v).is_err()
    {
        return kerr(400, "Package version is not a valid semver");
    }
    let inst = sh.st().fleet.installations.get(name).cloned();
    let latest = if name == PACKAGE {
        latest(sh, false)
    } else {
        None
    };
    if inst.is_none() && latest.is_none() {
        return kerr(
            404,
            &format!("[{name}] package not installed or found in registry"),
        );
    }
    // `getPackageInfo`: no version given → the installed version, else the latest.
    let resolved = match version {
        Some(v) => Version::parse(v).expect("checked"),
        None => inst
            .as_ref()
            .map(|i| i.version.clone())
            .or_else(|| latest.clone())
            .expect("one of them"),
    };
    let manifest = match (registry_package(sh, &resolved), &inst) {
        (Some(p), _) => p.manifest,
        (None, Some(i)) if i.version == resolved => i.manifest.clone(),
        _ => return kerr(404, &format!("{name}@{resolved} not found")),
    };
    let mut item = json!({
        "name": name,
        "title": manifest["title"],
        "version": resolved.to_string(),
        "release": "ga",
        "description": manifest["description"],
        "type": "integration",
        "format_version": manifest["format_version"],
        "categories": manifest["categories"],
        "owner": manifest["owner"],
        "download": format!("/epr/{name}/{name}-{resolved}.zip"),
        "path": format!("/package/{name}/{resolved}"),
        "conditions": {"kibana": {"version": pkg::constraint_of(&manifest)}},
        "latestVersion": latest.as_ref().or(inst.as_ref().map(|i| &i.version)).map(|v| v.to_string()),
        "keepPoliciesUpToDate": false,
        "status": if inst.is_some() { "installed" } else { "not_installed" },
    });
    if let Some(i) = &inst {
        // 8.9 added `installationInfo` and deprecated `savedObject` (kibana PR #159396); 9.0
        // removed `savedObject` (kibana PR #198434).
        if at_least(sh, 8, 9) {
            item["installationInfo"] = installation_info(i);
        }
        if !at_least(sh, 9, 0) {
            item["savedObject"] = saved_object(i);
        }
    }
    Resp::json(200, &json!({"item": item}))
}

fn installation_info(i: &Installation) -> Value {
    json!({
        "type": "epm-packages",
        "created_at": i.created_at,
        "updated_at": i.updated_at,
        "namespaces": [],
        "installed_kibana": i.installed_kibana,
        "installed_kibana_space_id": "default",
        "installed_es": i.installed_es,
        "install_status": "installed",
        "install_source": i.install_source,
        "name": i.name,
        "version": i.version.to_string(),
        "verification_status": if i.install_source == "upload" { "unknown" } else { "unverified" },
        "experimental_data_stream_features": [],
        "latest_install_failed_attempts": [],
    })
}

fn saved_object(i: &Installation) -> Value {
    json!({
        "id": i.name,
        "type": "epm-packages",
        "namespaces": [],
        "updated_at": i.updated_at,
        "created_at": i.created_at,
        "version": "WzEsMV0=",
        "references": [],
        "attributes": {
            "installed_kibana": i.installed_kibana,
            "installed_kibana_space_id": "default",
            "installed_es": i.installed_es,
            "package_assets": [],
            "es_index_patterns": {},
            "name": i.name,
            "version": i.version.to_string(),
            "install_version": i.version.to_string(),
            "install_status": "installed",
            "install_started_at": i.created_at,
            "install_source": i.install_source,
            "removable": true,
            "keep_policies_up_to_date": false,
            "verification_status": if i.install_source == "upload" { "unknown" } else { "unverified" },
        }
    })
}

// ---- GET /api/fleet/epm/packages/{name}/{version}/{filePath*}

/// `getFileHandler`: the installed version's file from the installation (404 text "installed
/// package file not found: {filePath}"), any other version's proxied from the registry
/// (its status; 404 when the registry has no such file or cannot be reached).
fn get_file(sh: &Shared, name: &str, version: &str, path: &str) -> Resp {
    let content_type = if path.ends_with(".json") {
        "application/json; charset=utf-8"
    } else if path.ends_with(".yml") || path.ends_with(".yaml") {
        "text/yaml; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    let raw = |status: u16, bytes: Vec<u8>, ct: &str| {
        let mut resp = Resp::json(status, &Value::Null);
        resp.body = crate::server::RespBody::Bytes(bytes.into());
        resp.headers = vec![("content-type".into(), ct.into())];
        resp
    };
    let serve = |bytes: &[u8]| raw(200, bytes.to_vec(), content_type);
    let not_found = |body: String| raw(404, body.into_bytes(), "text/plain; charset=utf-8");
    let installed = sh.st().fleet.installations.get(name).cloned();
    if let Some(i) = installed.filter(|i| i.version.to_string() == version) {
        return match i.files.get(path) {
            Some(b) => serve(b),
            None => not_found(format!("installed package file not found: {path}")),
        };
    }
    let found = Version::parse(version)
        .ok()
        .filter(|_| name == PACKAGE)
        .and_then(|v| registry_package(sh, &v))
        .and_then(|p| p.files.get(path).cloned());
    match found {
        Some(b) => serve(&b),
        None => not_found("Not Found".into()),
    }
}

// ---- POST /api/fleet/epm/packages/{name}[/{version}]

/// `InstallPackageFromRegistryRequestSchema.body`: nullable `{force?, ignore_constraints?}`.
fn install_body(r: &Req) -> Result<(bool, bool), Resp> {
    if r.body.is_empty() {
        return Ok((false, false));
    }
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| {
        kerr(
            400,
            &format!("[request body]: could not parse object value from json input: {e}"),
        )
    })?;
    if v.is_null() {
        return Ok((false, false));
    }
    let Some(o) = v.as_object() else {
        return Err(kerr(
            400,
            "[request body]: expected a plain object value, but found [Array] instead.",
        ));
    };
    let mut out = (false, false);
    for (k, val) in o {
        let b = val.as_bool().ok_or_else(|| {
            kerr(
                400,
                &format!(
                    "[request body.{k}]: expected value of type [boolean] but got [{}]",
                    type_name(val)
                ),
            )
        })?;
        match k.as_str() {
            "force" => out.0 = b,
            "ignore_constraints" => out.1 = b,
            _ => {
                return Err(kerr(
                    400,
                    &format!("[request body.{k}]: definition for this key is missing"),
                ));
            }
        }
    }
    Ok(out)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "Array",
        Value::Object(_) => "Object",
    }
}

fn install_from_registry(sh: &Shared, r: &Req, name: &str, version: Option<&str>) -> Resp {
    let (force, ignore_constraints) = match install_body(r) {
        Ok(x) => x,
        Err(e) => return e,
    };
    if let Some(v) = version
        && Version::parse(v).is_err()
    {
        return kerr(400, "Package version is not a valid semver");
    }
    let pkgkey = match version {
        Some(v) => format!("{name}-{v}"),
        None => name.to_string(),
    };
    // `fetchFindLatestPackageOrThrow`: the constraint enters here and only here.
    let latest = if name == PACKAGE {
        latest(sh, ignore_constraints)
    } else {
        None
    };
    let Some(latest) = latest else {
        return kerr(404, &format!("[{name}] package not found in registry"));
    };
    let version = version
        .map(|v| Version::parse(v).expect("checked"))
        .unwrap_or(latest.clone());
    let installed = sh.st().fleet.installations.get(name).cloned();
    // Same version already installed and no `force`: the existing asset references.
    if let Some(i) = &installed
        && i.version == version
        && !force
    {
        let mut items = i.installed_es.clone();
        items.extend(i.installed_kibana.clone());
        return Resp::json(200, &install_answer(sh, items, &i.install_source, name));
    }
    let Some(p) = registry_package(sh, &version) else {
        return kerr(404, &format!("{name}@{version} not found"));
    };
    // An older version than the newest compatible one is refused unless `force`
    // (`PackageOutdatedError`, 400). Kibana never compares the requested version's own
    // `conditions.kibana.version` with itself: a newer, incompatible version installs.
    if version < latest && !force {
        return kerr(
            400,
            &format!("{pkgkey} is out-of-date and cannot be installed or updated"),
        );
    }
    match install(sh, r, &p, "registry") {
        Ok(items) => Resp::json(200, &install_answer(sh, items, "registry", name)),
        Err(e) => e,
    }
}

/// `InstallPackageResponse`: `{items, _meta: {install_source[, name]}}`. `_meta.name` (kibana
/// issue #185932) is in the 9.x handlers and not in the last 8.x tree read (which already has
/// the 8.15 upload rate limit): from 9.0 here. 8.x's upload answer still repeats `items` as the
/// deprecated `response` (removed in 9.0, kibana PR #198434).
fn install_answer(sh: &Shared, items: Vec<Value>, source: &str, name: &str) -> Value {
    let mut meta = json!({"install_source": source});
    if at_least(sh, 9, 0) {
        meta["name"] = json!(name);
    }
    let mut out = json!({"items": items, "_meta": meta});
    if source == "upload" && !at_least(sh, 9, 0) {
        out["response"] = out["items"].clone();
    }
    out
}

// ---- POST /api/fleet/epm/packages (upload)

fn upload(sh: &Shared, r: &Req) -> Resp {
    let ct = r.header("content-type").unwrap_or("").to_ascii_lowercase();
    // The route accepts only these two body types (hapi answers 415 before the handler).
    if !(ct.starts_with("application/zip") || ct.starts_with("application/gzip")) {
        return kerr(415, "Unsupported Media Type");
    }
    if r.body.len() > MAX_UPLOAD {
        return kerr(
            413,
            &format!("Payload content length greater than maximum allowed: {MAX_UPLOAD}"),
        );
    }
    // 7.10 to 8.8.1: uploads only with an enterprise licence (or a trial, which has every
    // feature): `licenseService.isEnterprise()` first in `installPackageByUploadHandler` (kibana
    // PR #79653); removed in 8.8.2 / 8.9.0 (kibana PR #159280).
    if kibana(sh) < Version::new(8, 8, 2) {
        let lic = sh.st().license_type.clone();
        if !matches!(lic.as_str(), "enterprise" | "trial") {
            return kerr(403, "Requires Enterprise license");
        }
    }
    if at_least(sh, 8, 15) {
        let mut st = sh.st();
        if let Some(t) = st.fleet.last_upload
            && t.elapsed() < UPLOAD_RETRY_AFTER
        {
            return kerr(
                429,
                "Too many requests. Please wait 10s before uploading again.",
            )
            .header("retry-after", "10");
        }
        st.fleet.last_upload = Some(Instant::now());
    }
    if ct.starts_with("application/gzip") {
        return kerr(
            400,
            "TEST STAND-IN: tar.gz uploads are not modelled; upload the zip",
        );
    }
    let p = match pkg::read_zip(&r.body) {
        Ok(p) => p,
        Err(e) => return kerr(400, &e),
    };
    let name = p.manifest["name"].as_str().unwrap_or_default().to_string();
    // Upload has an implicit `force`: no registry, no constraint, no out-of-date check.
    match install(sh, r, &p, "upload") {
        Ok(items) => Resp::json(200, &install_answer(sh, items, "upload", &name)),
        Err(e) => e,
    }
}

// ---- the install itself

/// Install `p` as Fleet's state machine does for these asset types: the ML model (an existing
/// model id is kept: `resource_already_exists_exception` is swallowed), the version-prefixed
/// pipelines with Fleet's `_meta`, then the Kibana saved objects (the previous version's are
/// replaced). Returns the asset references.
fn install(sh: &Shared, r: &Req, p: &Package, source: &str) -> Result<Vec<Value>, Resp> {
    let name = p.manifest["name"].as_str().unwrap_or_default().to_string();
    let v = p.version.to_string();
    let previous = sh.st().fleet.installations.get(&name).cloned();
    let mut es_refs = Vec::new();
    let mut kibana_refs = Vec::new();
    let fail = |what: &str, status: u16, body: &Value| {
        let reason = body
            .pointer("/error/reason")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        kerr(
            500,
            &format!("Failure to install package [{name}]: {what} answered {status}: {reason}"),
        )
    };
    // ML models: `elasticsearch/ml_model/<model_id>.json`.
    for (path, bytes) in &p.files {
        if let Some(file) = path.strip_prefix("elasticsearch/ml_model/") {
            let id = file.trim_end_matches(".json");
            let (st, body) = es_raw(
                sh,
                r,
                "PUT",
                &format!("/_ml/trained_models/{id}"),
                &[("defer_definition_decompression", "true")],
                Some(Bytes::from(bytes.clone())),
            );
            let exists =
                body.pointer("/error/type") == Some(&json!("resource_already_exists_exception"));
            if st != 200 && !exists {
                return Err(fail(&format!("PUT _ml/trained_models/{id}"), st, &body));
            }
            es_refs.push(json!({"id": id, "type": "ml_model"}));
        }
    }
    // Ingest pipelines: `<version>-<file stem>`, `{{ IngestPipeline "x" }}` → `<version>-x`.
    let meta = json!({"managed_by": "fleet", "managed": true, "package": {"name": name}});
    for (path, bytes) in &p.files {
        if let Some(file) = path.strip_prefix("elasticsearch/ingest_pipeline/") {
            let stem = file.rsplit_once('.').map(|(s, _)| s).unwrap_or(file);
            let id = format!("{v}-{stem}");
            let text = String::from_utf8_lossy(bytes);
            let text = rewrite_pipeline_refs(&text, &v);
            let mut body: Value = if file.ends_with(".json") {
                serde_json::from_str(&text).unwrap_or(Value::Null)
            } else {
                serde_yaml::from_str(&text).unwrap_or(Value::Null)
            };
            if let Some(o) = body.as_object_mut() {
                o.insert("_meta".into(), meta.clone());
            }
            let (st, resp) = es(
                sh,
                r,
                "PUT",
                &format!("/_ingest/pipeline/{id}"),
                &[],
                Some(&body),
            );
            if st != 200 {
                return Err(fail(&format!("PUT _ingest/pipeline/{id}"), st, &resp));
            }
            es_refs.push(json!({"id": id, "type": "ingest_pipeline"}));
        }
    }
    // Kibana assets: saved objects (`ml-module`, `security-rule`).
    let mut sos = Vec::new();
    for (path, bytes) in &p.files {
        let Some(rest) = path.strip_prefix("kibana/") else {
            continue;
        };
        let Some((kind, _)) = rest.split_once('/') else {
            continue;
        };
        let so: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        let id = so["id"].as_str().unwrap_or_default().to_string();
        let so_type = so["type"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| kind.replace('_', "-"));
        // `installed_kibana` names the saved object type (`KibanaSavedObjectType`:
        // `security-rule`, `ml-module`), not the asset folder (`KibanaAssetType`).
        kibana_refs.push(json!({"id": id, "type": so_type}));
        sos.push(((so_type, id), so));
    }
    // An update deletes the previous version's pipelines only when the package has no
    // top-level pipelines: top-level ones (dga's) stay, "as of ml model package addition which
    // requires previous assets to remain installed" (kibana issue #115035; step
    // `stepInstallIngestPipelines` / `_install_package.ts`). Their references stay in
    // `installed_es`, so an uninstall removes them too.
    let top_level = p
        .files
        .keys()
        .any(|f| f.starts_with("elasticsearch/ingest_pipeline/"));
    let mut kept = Vec::new();
    if let Some(prev) = &previous {
        for a in &prev.installed_es {
            if es_refs.contains(a) {
                continue;
            }
            if a["type"] == "ingest_pipeline" && !top_level {
                let id = a["id"].as_str().unwrap_or_default();
                es(
                    sh,
                    r,
                    "DELETE",
                    &format!("/_ingest/pipeline/{id}"),
                    &[],
                    None,
                );
            } else if a["type"] == "ingest_pipeline" {
                kept.push(a.clone());
            }
        }
    }
    let now = crate::util::now_iso();
    let mut st = sh.st();
    if let Some(prev) = &previous {
        for a in &prev.installed_kibana {
            let key = (
                so_type_of(a),
                a["id"].as_str().unwrap_or_default().to_string(),
            );
            st.fleet.saved_objects.remove(&key);
        }
    }
    for (k, so) in sos {
        st.fleet.saved_objects.insert(k, so);
    }
    st.fleet.installations.insert(
        name.clone(),
        Installation {
            name,
            version: p.version.clone(),
            install_source: source.into(),
            installed_es: es_refs.iter().chain(&kept).cloned().collect(),
            installed_kibana: kibana_refs.clone(),
            created_at: previous
                .as_ref()
                .map(|i| i.created_at.clone())
                .unwrap_or(now.clone()),
            updated_at: now,
            manifest: p.manifest.clone(),
            files: p.files.clone(),
        },
    );
    let mut items = kibana_refs;
    items.extend(es_refs);
    Ok(items)
}

/// Asset reference type → saved-object type (`ml_module` → `ml-module`).
fn so_type_of(a: &Value) -> String {
    a["type"].as_str().unwrap_or_default().replace('_', "-")
}

/// Fleet's pipeline templating: `{{ IngestPipeline "x" }}` names pipeline `x` of this version.
fn rewrite_pipeline_refs(text: &str, version: &str) -> String {
    let re = regex::Regex::new(r#"\{\{\s*IngestPipeline\s+['"]([^'"]+)['"]\s*\}\}"#)
        .expect("static regex");
    re.replace_all(text, |c: &regex::Captures| format!("{version}-{}", &c[1]))
        .into_owned()
}

// ---- DELETE /api/fleet/epm/packages/{name}[/{version}]

fn uninstall(sh: &Shared, r: &Req, name: &str) -> Resp {
    let Some(i) = sh.st().fleet.installations.get(name).cloned() else {
        // `removeInstallation`: PackageRemovalError (400).
        return kerr(400, &format!("{name} is not installed"));
    };
    // Pipelines first (they reference the model), then the model (`force`), then Kibana assets.
    for a in i
        .installed_es
        .iter()
        .filter(|a| a["type"] == "ingest_pipeline")
    {
        let id = a["id"].as_str().unwrap_or_default();
        es(
            sh,
            r,
            "DELETE",
            &format!("/_ingest/pipeline/{id}"),
            &[],
            None,
        );
    }
    for a in i.installed_es.iter().filter(|a| a["type"] == "ml_model") {
        let id = a["id"].as_str().unwrap_or_default();
        es(
            sh,
            r,
            "DELETE",
            &format!("/_ml/trained_models/{id}"),
            &[("force", "true")],
            None,
        );
    }
    let mut st = sh.st();
    for a in &i.installed_kibana {
        let key = (
            so_type_of(a),
            a["id"].as_str().unwrap_or_default().to_string(),
        );
        st.fleet.saved_objects.remove(&key);
    }
    st.fleet.installations.remove(name);
    let mut items = i.installed_kibana.clone();
    items.extend(i.installed_es.clone());
    Resp::json(200, &json!({"items": items}))
}

// ---- Kibana ML modules

/// A module as `getModule` returns it: the saved object's attributes with `prefix` applied to
/// job and datafeed ids (`datafeed-<prefix><rest>`).
fn module(sh: &Shared, id: &str, prefix: &str) -> Result<Value, Resp> {
    let so = sh
        .st()
        .fleet
        .saved_objects
        .get(&("ml-module".to_string(), id.to_string()))
        .cloned();
    let Some(so) = so else {
        return Err(kerr(404, &format!("Module with the id \"{id}\" not found")));
    };
    let mut m = so["attributes"].clone();
    if let Some(jobs) = m["jobs"].as_array_mut() {
        for j in jobs {
            j["id"] = json!(format!("{prefix}{}", j["id"].as_str().unwrap_or_default()));
        }
    }
    if let Some(dfs) = m["datafeeds"].as_array_mut() {
        for d in dfs {
            let job_id = format!("{prefix}{}", d["job_id"].as_str().unwrap_or_default());
            let did = d["id"].as_str().unwrap_or_default();
            let did = match did.strip_prefix("datafeed-") {
                Some(rest) => format!("datafeed-{prefix}{rest}"),
                None => format!("{prefix}{did}"),
            };
            d["id"] = json!(did);
            d["job_id"] = json!(job_id);
            d["config"]["job_id"] = json!(job_id);
        }
    }
    m["kibana"] = json!({});
    Ok(m)
}

fn get_module(sh: &Shared, id: &str) -> Resp {
    match module(sh, id, "") {
        Ok(m) => Resp::json(200, &m),
        Err(e) => e,
    }
}

const SETUP_KEYS: &[&str] = &[
    "prefix",
    "groups",
    "indexPatternName",
    "query",
    "useDedicatedIndex",
    "startDatafeed",
    "start",
    "end",
    "jobOverrides",
    "datafeedOverrides",
    "estimateModelMemory",
    "applyToAllSpaces",
];

/// lodash `merge` for overrides; arrays in the override replace the module's (as
/// `processArrayValues` does after the merge).
fn merge(dst: &mut Value, src: &Value) {
    match (dst, src) {
        (Value::Object(d), Value::Object(s)) => {
            for (k, v) in s {
                merge(d.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (d, s) => *d = s.clone(),
    }
}

fn overrides(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Null => vec![],
        o => vec![o.clone()],
    }
}

fn module_setup(sh: &Shared, r: &Req, id: &str) -> Resp {
    let body: Value = if r.body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&r.body) {
            Ok(v) => v,
            Err(e) => {
                return kerr(
                    400,
                    &format!("[request body]: could not parse object value from json input: {e}"),
                );
            }
        }
    };
    let Some(b) = body.as_object() else {
        return kerr(400, "[request body]: expected a plain object value");
    };
    if let Some(k) = b.keys().find(|k| !SETUP_KEYS.contains(&k.as_str())) {
        return kerr(
            400,
            &format!("[request body.{k}]: definition for this key is missing"),
        );
    }
    let prefix = b.get("prefix").and_then(Value::as_str).unwrap_or("");
    let mut m = match module(sh, id, prefix) {
        Ok(m) => m,
        Err(e) => return e,
    };
    let index = match b
        .get("indexPatternName")
        .and_then(Value::as_str)
        .or(m["defaultIndexPattern"].as_str())
    {
        Some(i) => i.to_string(),
        None => {
            return kerr(
                400,
                &format!(
                    "No index pattern configured in \"{id}\" configuration file and no index pattern passed to the endpoint"
                ),
            );
        }
    };
    let job_overrides = overrides(b.get("jobOverrides").unwrap_or(&Value::Null));
    let df_overrides = overrides(b.get("datafeedOverrides").unwrap_or(&Value::Null));
    let jobs = m["jobs"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let dfs = m["datafeeds"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut job_results = Vec::new();
    for mut j in jobs {
        let jid = j["id"].as_str().unwrap_or_default().to_string();
        for o in &job_overrides {
            match o.get("job_id").and_then(Value::as_str) {
                None => merge(&mut j["config"], o),
                Some(t) if format!("{prefix}{t}") == jid => {
                    let mut o = o.clone();
                    o.as_object_mut().map(|x| x.remove("job_id"));
                    merge(&mut j["config"], &o);
                }
                _ => {}
            }
        }
        if let Some(g) = b.get("groups").filter(|g| g.is_array()) {
            j["config"]["groups"] = g.clone();
        }
        if b.get("useDedicatedIndex") == Some(&json!(true)) {
            j["config"]["results_index_name"] = json!(jid);
        }
        let (st, resp) = es(
            sh,
            r,
            "PUT",
            &format!("/_ml/anomaly_detectors/{jid}"),
            &[],
            Some(&j["config"]),
        );
        job_results.push(if st == 200 {
            json!({"id": jid, "success": true})
        } else {
            json!({"id": jid, "success": false, "error": resp})
        });
    }
    let mut df_results = Vec::new();
    for mut d in dfs {
        let did = d["id"].as_str().unwrap_or_default().to_string();
        for o in &df_overrides {
            match o.get("job_id").and_then(Value::as_str) {
                None => merge(&mut d["config"], o),
                Some(t) if format!("{prefix}{t}") == d["job_id"].as_str().unwrap_or_default() => {
                    let mut o = o.clone();
                    o.as_object_mut().map(|x| x.remove("job_id"));
                    merge(&mut d["config"], &o);
                }
                _ => {}
            }
        }
        // INDEX_PATTERN_NAME → the given pattern(s), split on commas.
        let indices: Vec<Value> = d["config"]["indices"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .flat_map(|i| {
                if i == "INDEX_PATTERN_NAME" {
                    index
                        .split(',')
                        .map(|s| json!(s.trim()))
                        .collect::<Vec<_>>()
                } else {
                    vec![i]
                }
            })
            .collect();
        d["config"]["indices"] = json!(indices);
        if let Some(q) = b.get("query").filter(|q| q.is_object()) {
            d["config"]["query"] = q.clone();
        }
        let (st, resp) = es(
            sh,
            r,
            "PUT",
            &format!("/_ml/datafeeds/{did}"),
            &[],
            Some(&d["config"]),
        );
        let mut res = json!({"id": did, "success": st == 200, "started": false, "awaitingMlNodeAllocation": false});
        if st != 200 {
            res["error"] = resp;
        } else if b.get("startDatafeed") == Some(&json!(true)) {
            start_datafeed(sh, r, &d, b, &mut res);
        }
        df_results.push(res);
    }
    Resp::json(
        200,
        &json!({"jobs": job_results, "datafeeds": df_results, "kibana": {}}),
    )
}

/// `_startDatafeed`: open the job (409 = already open), then start the datafeed; a refusal is
/// the datafeed entry's `error` (Elasticsearch's error body) and the job stays.
fn start_datafeed(sh: &Shared, r: &Req, d: &Value, b: &Map<String, Value>, res: &mut Value) {
    let job_id = d["job_id"].as_str().unwrap_or_default();
    let did = d["id"].as_str().unwrap_or_default();
    let (st, resp) = es(
        sh,
        r,
        "POST",
        &format!("/_ml/anomaly_detectors/{job_id}/_open"),
        &[],
        None,
    );
    if st != 200 && st != 409 {
        res["error"] = resp;
        return;
    }
    let start = b.get("start").map(|s| s.to_string()).unwrap_or("0".into());
    let end = b.get("end").map(|s| s.to_string());
    let mut q: Vec<(&str, &str)> = vec![("start", start.as_str())];
    if let Some(e) = &end {
        q.push(("end", e.as_str()));
    }
    let (st, resp) = es(
        sh,
        r,
        "POST",
        &format!("/_ml/datafeeds/{did}/_start"),
        &q,
        None,
    );
    if st == 200 {
        res["started"] = resp["started"].clone();
        res["awaitingMlNodeAllocation"] = json!(resp["node"].as_str() == Some(""));
    } else {
        res["error"] = resp;
    }
}

// ---- test and admin handles

impl crate::server::Standin {
    /// Make Kibana's package registry unreachable for Kibana (or reachable again). The registry
    /// endpoints stay served on the GitHub listener: a mirror the operator may still reach.
    pub fn set_fleet_registry_reachable(&self, reachable: bool) {
        self.shared_state().st().fleet.registry_unreachable = !reachable;
    }
    /// Base URL of the stand-in's package registry (`/search`, `/package/..`, `/epr/..`).
    pub fn fleet_registry_url(&self) -> String {
        self.github_url()
    }
    /// The archive of a registry package (`dga-VERSION` or `VERSION`), as the registry serves it.
    pub fn fleet_package_zip(&self, spec: &str) -> Result<Vec<u8>, String> {
        let v = pkg::parse_spec(spec)?;
        if let Some(p) = pkg::registry(self.shared_state()).get(&v) {
            return Ok(p.zip.to_vec());
        }
        pkg::build(&v).map(|p| p.zip.to_vec())
    }
    /// The installed version of a Fleet package, if any.
    pub fn fleet_installed_version(&self, name: &str) -> Option<String> {
        self.shared_state()
            .st()
            .fleet
            .installations
            .get(name)
            .map(|i| i.version.to_string())
    }
    /// Kibana saved objects Fleet installed, of `so_type` (`ml-module`, `security-rule`), by id.
    pub fn fleet_saved_objects(&self, so_type: &str) -> BTreeMap<String, Value> {
        self.shared_state()
            .st()
            .fleet
            .saved_objects
            .iter()
            .filter(|((t, _), _)| t == so_type)
            .map(|((_, id), so)| (id.clone(), so.clone()))
            .collect()
    }
    /// Forget the last upload time (Fleet's 10 s upload rate limit, 8.15+).
    pub fn fleet_reset_upload_rate_limit(&self) {
        self.shared_state().st().fleet.last_upload = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_references_take_the_version_prefix() {
        assert_eq!(
            rewrite_pipeline_refs(
                "name: '{{ IngestPipeline \"ml_dga_inference_pipeline\" }}'",
                "2.3.7"
            ),
            "name: '2.3.7-ml_dga_inference_pipeline'"
        );
    }

    #[test]
    fn overrides_merge_and_replace_arrays() {
        let mut c = json!({"groups": ["a", "b"], "analysis_limits": {"x": 1}});
        merge(
            &mut c,
            &json!({"groups": ["z"], "analysis_limits": {"model_memory_limit": "20mb"}}),
        );
        assert_eq!(
            c,
            json!({"groups": ["z"], "analysis_limits": {"x": 1, "model_memory_limit": "20mb"}})
        );
    }
}
