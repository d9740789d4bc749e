//! Elastic's current route for DGA: the Fleet integration package `dga`, installed through
//! Kibana's Fleet package API, and its ML module's job set up through Kibana's ML module API.
//!
//! Facts (real-stack.md "Fleet"; Kibana's Fleet plugin `server/routes/epm`, `services/epm/
//! packages/{install,get,remove}.ts`, ML's `data_recognizer.ts`):
//! - `GET /api/fleet/epm/packages/{name}[/{version}]` answers `{item: {version, status,
//!   latestVersion, conditions, …}}`; `status` says whether *a* version of the package is
//!   installed, and which one is in `item.installationInfo.version` (8.9 on) or
//!   `item.savedObject.attributes.version` (8.0–8.x; removed in 9.0). 404 when the package is
//!   neither installed nor found in the registry (also what an unreachable registry looks like).
//! - Installing from the registry does not check the *requested* version's
//!   `conditions.kibana.version`: it refuses only a version older than the newest compatible one
//!   (400 "… is out-of-date …" without `force`) and answers 404 "\[dga\] package not found in
//!   registry" when nothing is compatible or the registry cannot be reached. A newer,
//!   incompatible version installs, so the constraint is checked here ([`kibana_satisfies`]).
//! - Upload (`POST /api/fleet/epm/packages`, `application/zip`) needs no registry and checks no
//!   constraint; from 8.15 one upload per 10 s (429 with `retry-after`).
//! - Uninstall of a package that is not installed: 400 "{name} is not installed".

use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};

use super::client::{KibanaClient, ok_json, rejected};
use crate::error::{Error, Service};
use crate::http;

const PACKAGES: &str = "/api/fleet/epm/packages";

/// What Kibana says of a package (and of one version of it, when asked).
#[derive(Debug, Clone, PartialEq)]
pub struct PackageState {
    /// The version installed, if any.
    pub installed: Option<String>,
    /// `registry` or `upload` (how the installed version came).
    pub install_source: Option<String>,
    /// The version the answer describes: the one asked for, else the installed one, else the
    /// newest the registry offers.
    pub version: String,
    /// That version's `conditions.kibana.version` (a semver range such as `^8.9.0 || ^9.0.0`).
    pub kibana_constraint: Option<String>,
    /// The newest version the registry offers this Kibana.
    pub latest: Option<String>,
    /// The installed version's Elasticsearch assets, `(type, id)` (`ml_model`,
    /// `ingest_pipeline`, ...), from `installed_es`.
    pub assets: Vec<(String, String)>,
    /// The installed version's Kibana assets, `(type, id)` (`security-rule`, `ml-module`, ...),
    /// from `installed_kibana`.
    pub kibana_assets: Vec<(String, String)>,
}

/// One job or datafeed in a module setup's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct SetupItem {
    pub id: String,
    pub success: bool,
    /// Datafeeds only: whether it started.
    pub started: bool,
    /// Kibana's or Elasticsearch's reason when `success` is false or a datafeed did not start.
    pub error: Option<String>,
}

/// What `POST /api/ml/modules/setup/{id}` answered.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SetupAnswer {
    pub jobs: Vec<SetupItem>,
    pub datafeeds: Vec<SetupItem>,
}

/// The body of a module setup (only the keys Kibana's schema knows; an unknown key is a 400).
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModuleSetup {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_pattern_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<Value>,
    pub start_datafeed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_overrides: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datafeed_overrides: Option<Value>,
}

impl KibanaClient {
    /// `GET /api/fleet/epm/packages/{name}[/{version}]`; `None` when Kibana knows no such
    /// package (not installed, and not in a registry it can reach).
    pub async fn fleet_package(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<PackageState>, Error> {
        let what = "GET Fleet package";
        let path = match version {
            Some(v) => format!("{PACKAGES}/{name}/{v}"),
            None => format!("{PACKAGES}/{name}"),
        };
        let url = self.url("", &path, &[])?;
        let resp = http::send(Service::Kibana, what, self.request(Method::GET, url)).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let v = ok_json(what, resp).await?;
        let item = v
            .get("item")
            .ok_or_else(|| rejected(what, 200, "the answer has no `item`".into()))?;
        Ok(Some(package_state(item)))
    }

    /// A file of a package version (`GET /api/fleet/epm/packages/{name}/{version}/{path}`,
    /// `getFileHandler`): the installed version's from the installation, another's proxied
    /// from the registry. `None` on 404.
    pub async fn fleet_file(
        &self,
        name: &str,
        version: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, Error> {
        let what = format!("GET Fleet package file {name} {version} {path}");
        let url = self.url("", &format!("{PACKAGES}/{name}/{version}/{path}"), &[])?;
        let resp = http::send(Service::Kibana, &what, self.request(Method::GET, url)).await?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(rejected(&what, status, http::summarize(resp).await));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| http::transport_error(Service::Kibana, &what, &e))?;
        Ok(Some(bytes.to_vec()))
    }

    /// Installs `name` at `version` from the registry Kibana is configured with
    /// (`POST /api/fleet/epm/packages/{name}/{version}`); the installed assets.
    pub async fn fleet_install(
        &self,
        name: &str,
        version: &str,
        force: bool,
    ) -> Result<Vec<Value>, Error> {
        let what = format!("install Fleet package {name} {version}");
        let url = self.url("", &format!("{PACKAGES}/{name}/{version}"), &[])?;
        let body = json!({"force": force});
        let resp = http::send(
            Service::Kibana,
            &what,
            self.request(Method::POST, url).json(&body),
        )
        .await?;
        let v = ok_json(&what, resp).await?;
        Ok(items(&v))
    }

    /// Installs a package archive (zip) by upload (`POST /api/fleet/epm/packages`): the
    /// air-gapped route, no registry involved.
    pub async fn fleet_upload(
        &self,
        archive: impl Into<bytes::Bytes>,
    ) -> Result<Vec<Value>, Error> {
        let what = "upload Fleet package";
        let url = self.url("", PACKAGES, &[])?;
        let req = self
            .request(Method::POST, url)
            .header(reqwest::header::CONTENT_TYPE, "application/zip")
            .body(archive.into());
        let resp = http::send(Service::Kibana, what, req).await?;
        let v = ok_json(what, resp).await?;
        Ok(items(&v))
    }

    /// Uninstalls `name` at `version` (`DELETE /api/fleet/epm/packages/{name}/{version}`);
    /// a package that is not installed is already gone.
    pub async fn fleet_uninstall(&self, name: &str, version: &str) -> Result<(), Error> {
        let what = format!("uninstall Fleet package {name} {version}");
        let url = self.url("", &format!("{PACKAGES}/{name}/{version}"), &[])?;
        let resp = http::send(Service::Kibana, &what, self.request(Method::DELETE, url)).await?;
        if resp.status() == reqwest::StatusCode::BAD_REQUEST {
            let v = http::json(Service::Kibana, &what, resp)
                .await
                .unwrap_or_default();
            let msg = v.get("message").and_then(Value::as_str).unwrap_or_default();
            if msg.ends_with("is not installed") {
                return Ok(());
            }
            return Err(rejected(&what, 400, msg.to_string()));
        }
        ok_json(&what, resp).await.map(drop)
    }

    /// Creates a module's jobs and datafeeds in `space` (`POST /api/ml/modules/setup/{id}`),
    /// as Security's ML job settings do; Kibana answers per job and datafeed.
    pub async fn ml_module_setup(
        &self,
        space: &str,
        module: &str,
        setup: &ModuleSetup,
    ) -> Result<SetupAnswer, Error> {
        let what = format!("set up ML module {module}");
        let url = self.url(space, &format!("/api/ml/modules/setup/{module}"), &[])?;
        let resp = http::send(
            Service::Kibana,
            &what,
            self.request(Method::POST, url).json(setup),
        )
        .await?;
        let v = ok_json(&what, resp).await?;
        let list = |k: &str| -> Vec<SetupItem> {
            v.get(k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(setup_item)
                .collect()
        };
        Ok(SetupAnswer {
            jobs: list("jobs"),
            datafeeds: list("datafeeds"),
        })
    }
}

fn package_state(item: &Value) -> PackageState {
    let s = |p: &str| item.pointer(p).and_then(Value::as_str).map(str::to_string);
    let installed = if s("/status").as_deref() == Some("installed") {
        s("/installationInfo/version").or_else(|| s("/savedObject/attributes/version"))
    } else {
        None
    };
    let install_source = installed.as_ref().and_then(|_| {
        s("/installationInfo/install_source")
            .or_else(|| s("/savedObject/attributes/install_source"))
    });
    let refs = |key: &str| -> Vec<(String, String)> {
        item.pointer(&format!("/installationInfo/{key}"))
            .or_else(|| item.pointer(&format!("/savedObject/attributes/{key}")))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|_| installed.is_some())
            .filter_map(|a| {
                Some((
                    a.get("type")?.as_str()?.to_string(),
                    a.get("id")?.as_str()?.to_string(),
                ))
            })
            .collect()
    };
    PackageState {
        assets: refs("installed_es"),
        kibana_assets: refs("installed_kibana"),
        installed,
        install_source,
        version: s("/version").unwrap_or_default(),
        kibana_constraint: s("/conditions/kibana/version"),
        latest: s("/latestVersion"),
    }
}

fn items(v: &Value) -> Vec<Value> {
    v.get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn setup_item(v: &Value) -> SetupItem {
    // Kibana puts Elasticsearch's error body (or its own message) under `error`.
    let error = v.get("error").map(|e| {
        e.pointer("/error/reason")
            .or_else(|| e.pointer("/body/error/reason"))
            .or_else(|| e.get("reason"))
            .or_else(|| e.get("message"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| e.to_string())
    });
    SetupItem {
        id: v
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        success: v.get("success").and_then(Value::as_bool).unwrap_or(false),
        started: v.get("started").and_then(Value::as_bool).unwrap_or(false),
        error,
    }
}

/// Whether a Kibana of version `kibana` meets a package's `conditions.kibana.version`, a semver
/// range whose alternatives are joined by `||` (`^8.9.0 || ^9.0.0`). Fleet itself does not check
/// this for the version it is asked to install, so the operator must.
pub fn kibana_satisfies(constraint: &str, kibana: &str) -> Result<bool, String> {
    let v = semver::Version::parse(kibana.trim())
        .map_err(|e| format!("Kibana version `{kibana}` is not semver: {e}"))?;
    // A pre-release Kibana (a snapshot) is judged by its release: ranges skip pre-releases.
    let v = semver::Version::new(v.major, v.minor, v.patch);
    for alt in constraint.split("||") {
        let req = semver::VersionReq::parse(alt.trim())
            .map_err(|e| format!("package constraint `{constraint}` is not a semver range: {e}"))?;
        if req.matches(&v) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_of_the_dga_package_versions() {
        // real-stack.md "Fleet": the ranges the dga package versions carry.
        let cases = [
            ("^8.0.0", "8.8.2", true),
            ("^8.0.0", "9.2.0", false),
            ("^8.9.0", "8.8.2", false),
            ("^8.9.0", "8.17.0", true),
            ("^8.9.0 || ^9.0.0", "9.2.0", true),
            ("^8.9.0 || ^9.0.0", "8.8.0", false),
            ("^9.4.0", "9.2.0", false),
            ("^9.4.0", "9.4.1", true),
            ("^9.4.0", "9.5.0-SNAPSHOT", true),
        ];
        for (c, k, want) in cases {
            assert_eq!(kibana_satisfies(c, k), Ok(want), "{c} vs {k}");
        }
        assert!(kibana_satisfies("^8.9.0", "eight").is_err());
        assert!(kibana_satisfies("not a range", "8.17.0").is_err());
    }

    #[test]
    fn the_installed_version_is_read_where_each_kibana_puts_it() {
        // 9.x: installationInfo only.
        let v9 = json!({"version": "2.3.7", "status": "installed", "latestVersion": "2.3.7",
            "conditions": {"kibana": {"version": "^8.9.0 || ^9.0.0"}},
            "installationInfo": {"version": "2.3.6", "install_source": "upload"}});
        let st = package_state(&v9);
        assert_eq!(st.installed.as_deref(), Some("2.3.6"));
        assert_eq!(st.install_source.as_deref(), Some("upload"));
        assert_eq!(st.version, "2.3.7");
        assert_eq!(st.kibana_constraint.as_deref(), Some("^8.9.0 || ^9.0.0"));
        // 8.0–8.8: savedObject only.
        let v8 = json!({"version": "1.1.0", "status": "installed",
            "savedObject": {"attributes": {"version": "1.1.0", "install_source": "registry"}}});
        assert_eq!(package_state(&v8).installed.as_deref(), Some("1.1.0"));
        // Not installed: no installed version, whatever else the item holds.
        let none = json!({"version": "2.3.7", "status": "not_installed"});
        assert_eq!(package_state(&none).installed, None);
    }
}
