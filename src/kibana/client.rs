//! A small client for the Kibana APIs the operator uses: `GET /api/status` and the
//! detection-engine rules API (2023-10-31 public API). Every request carries `kbn-xsrf: true`;
//! a space other than `default` is addressed with the `/s/{space}` prefix. Transport errors,
//! 401/403, 429 and 5xx are mapped by [`crate::http::send`]; other unexpected statuses become
//! [`Error::Rejected`] with a short summary of Kibana's answer.

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use std::time::Duration;

use crate::error::{Error, Service, Transience};
use crate::http;
use crate::kibana::Auth;

const SVC: Service = Service::Kibana;
const RULES: &str = "/api/detection_engine/rules";
const FIND: &str = "/api/detection_engine/rules/_find";
const BULK: &str = "/api/detection_engine/rules/_bulk_action";
const PREBUILT_REVIEW: &str = "/internal/detection_engine/prebuilt_rules/installation/_review";
const PREBUILT_PERFORM: &str = "/internal/detection_engine/prebuilt_rules/installation/_perform";
/// Page size asked of a paged `installation/_review` (its maximum since kibana PR #264443).
const REVIEW_PAGE: usize = 500;
/// Largest page `_find` is asked for.
const PER_PAGE: usize = 100;
/// Safety bound on paging (100 × 100 rules).
const MAX_PAGES: usize = 100;

/// What `GET /api/status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KibanaStatus {
    /// `version.number`, e.g. `8.17.0`.
    pub version: String,
    /// `status.overall.level` (`available`, `degraded`, `unavailable`, `critical`); for the
    /// 7.x legacy format, `status.overall.state` (`green`, `yellow`, `red`).
    pub level: String,
}

#[derive(Clone)]
pub struct KibanaClient {
    http: reqwest::Client,
    base: String,
    auth: Auth,
}

impl std::fmt::Debug for KibanaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KibanaClient")
            .field("base", &self.base)
            .field("auth", &self.auth)
            .finish()
    }
}

impl KibanaClient {
    /// `base_url` is Kibana's public URL, including any `server.basePath` (`https://h/kibana`).
    pub fn new(http: reqwest::Client, base_url: &str, auth: Auth) -> KibanaClient {
        KibanaClient {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            auth,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The URL for `path` in `space` (`default` or empty: no prefix).
    pub(super) fn url(
        &self,
        space: &str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Url, Error> {
        let prefix = match space {
            "" | "default" => String::new(),
            s if valid_space(s) => format!("/s/{s}"),
            s => {
                return Err(Error::InvalidSpec(format!(
                    "Kibana space id `{s}` is not valid (lowercase letters, digits, `_` and `-` only)"
                )));
            }
        };
        let mut url = Url::parse(&format!("{}{prefix}{path}", self.base)).map_err(|e| {
            Error::InvalidSpec(format!("Kibana URL `{}` is not valid: {e}", self.base))
        })?;
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        Ok(url)
    }

    pub(super) fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let req = self
            .http
            .request(method, url)
            .header("kbn-xsrf", "true")
            .header(reqwest::header::ACCEPT, "application/json");
        self.auth.apply(req)
    }

    /// `GET /api/status`.
    pub async fn status(&self) -> Result<KibanaStatus, Error> {
        let what = "GET /api/status";
        let url = self.url("", "/api/status", &[])?;
        let resp = send(what, self.request(Method::GET, url)).await?;
        let v = ok_json(what, resp).await?;
        let version = v
            .pointer("/version/number")
            .and_then(Value::as_str)
            .ok_or_else(|| rejected(what, 200, "the answer has no version.number".into()))?
            .to_string();
        let level = v
            .pointer("/status/overall/level")
            .or_else(|| v.pointer("/status/overall/state"))
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        Ok(KibanaStatus { version, level })
    }

    /// `GET /api/detection_engine/rules?rule_id=…`; `None` when the space has no such rule.
    pub async fn get_rule(&self, space: &str, rule_id: &str) -> Result<Option<Value>, Error> {
        let what = format!("GET rule {rule_id}");
        let url = self.url(space, RULES, &[("rule_id", rule_id)])?;
        let resp = send(&what, self.request(Method::GET, url)).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        ok_json(&what, resp).await.map(Some)
    }

    /// Every rule in `space` carrying `tag`, through `_find` paged by 100.
    pub async fn find_rules_by_tag(&self, space: &str, tag: &str) -> Result<Vec<Value>, Error> {
        self.find_rules(space, &format!("alert.attributes.tags:{}", kql_quote(tag)))
            .await
    }

    /// Every rule in `space` matching a KQL `filter` over `alert.attributes.*`, paged by 100
    /// and sorted by creation time so the pages are stable.
    pub async fn find_rules(&self, space: &str, filter: &str) -> Result<Vec<Value>, Error> {
        let what = "find rules";
        let mut out: Vec<Value> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for page in 1..=MAX_PAGES {
            let page_s = page.to_string();
            let per_page = PER_PAGE.to_string();
            let url = self.url(
                space,
                FIND,
                &[
                    ("filter", filter),
                    ("sort_field", "created_at"),
                    ("sort_order", "asc"),
                    ("per_page", &per_page),
                    ("page", &page_s),
                ],
            )?;
            let resp = send(what, self.request(Method::GET, url)).await?;
            let v = ok_json(what, resp).await?;
            let data = v
                .get("data")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = v.get("total").and_then(Value::as_u64).unwrap_or(0) as usize;
            let n = data.len();
            for r in data {
                // A rule created while paging can shift a page: never return it twice.
                match r.get("id").and_then(Value::as_str) {
                    Some(id) if !seen.insert(id.to_string()) => {}
                    _ => out.push(r),
                }
            }
            if n < PER_PAGE || out.len() >= total {
                return Ok(out);
            }
        }
        Ok(out)
    }

    /// `POST /api/detection_engine/rules`; a rule with the same `rule_id` → [`Error::Conflict`].
    pub async fn create_rule(&self, space: &str, rule: &Value) -> Result<Value, Error> {
        let rule_id = rule_id_of(rule);
        let what = format!("create rule {rule_id}");
        let url = self.url(space, RULES, &[])?;
        let resp = send(&what, self.request(Method::POST, url).json(rule)).await?;
        if resp.status() == StatusCode::CONFLICT {
            let detail = http::summarize(resp).await;
            return Err(Error::Conflict(format!(
                "Kibana already has a detection rule with rule_id {rule_id} in space {}: {detail}",
                space_name(space)
            )));
        }
        ok_json(&what, resp).await
    }

    /// `PUT /api/detection_engine/rules` (full replacement, addressed by the body's `rule_id`).
    pub async fn update_rule(&self, space: &str, rule: &Value) -> Result<Value, Error> {
        let rule_id = rule_id_of(rule);
        let what = format!("update rule {rule_id}");
        let url = self.url(space, RULES, &[])?;
        let resp = send(&what, self.request(Method::PUT, url).json(rule)).await?;
        ok_json(&what, resp).await
    }

    /// `DELETE /api/detection_engine/rules?rule_id=…`; a rule already gone is fine.
    pub async fn delete_rule(&self, space: &str, rule_id: &str) -> Result<(), Error> {
        let what = format!("delete rule {rule_id}");
        let url = self.url(space, RULES, &[("rule_id", rule_id)])?;
        let resp = send(&what, self.request(Method::DELETE, url)).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        ok_json(&what, resp).await.map(|_| ())
    }
}

impl KibanaClient {
    /// A request to one of Kibana's internal, versioned routes: `elastic-api-version: 1` (the
    /// only version of the prebuilt-rules routes) and the internal-origin header Kibana asks of
    /// callers of internal APIs where `server.restrictInternalApis` is on.
    fn internal(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        self.request(method, url)
            .header("elastic-api-version", "1")
            .header("x-elastic-internal-origin", "Kibana")
    }

    /// Every prebuilt rule Kibana can install in `space`
    /// (`POST …/prebuilt_rules/installation/_review`). Kibanas before the paged review
    /// (kibana PR #247375) ignore the body and list all at once; later ones page (`per_page`
    /// at most 500), followed until `total`.
    pub async fn prebuilt_installable(&self, space: &str) -> Result<Vec<Value>, Error> {
        let what = "review prebuilt-rule installation";
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES {
            let url = self.url(space, PREBUILT_REVIEW, &[])?;
            let body = serde_json::json!({"page": page, "per_page": REVIEW_PAGE});
            let resp = send(what, self.internal(Method::POST, url).json(&body)).await?;
            let v = ok_json(what, resp).await?;
            let rules = v
                .get("rules")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let n = rules.len();
            out.extend(rules);
            match v.get("total").and_then(Value::as_u64) {
                Some(total) if n > 0 && (out.len() as u64) < total => continue,
                _ => return Ok(out),
            }
        }
        Ok(out)
    }

    /// Installs prebuilt rules by rule_id and version
    /// (`POST …/prebuilt_rules/installation/_perform`, mode `SPECIFIC_RULES`); the answer's
    /// `results.created` and `errors`.
    pub async fn prebuilt_install(
        &self,
        space: &str,
        rules: &[(String, u64)],
    ) -> Result<Value, Error> {
        let what = "install prebuilt rules";
        let url = self.url(space, PREBUILT_PERFORM, &[])?;
        let specs: Vec<Value> = rules
            .iter()
            .map(|(id, v)| serde_json::json!({"rule_id": id, "version": v}))
            .collect();
        let body = serde_json::json!({"mode": "SPECIFIC_RULES", "rules": specs});
        let resp = send(what, self.internal(Method::POST, url).json(&body)).await?;
        ok_json(what, resp).await
    }

    /// Enables rules by their object ids (`POST /api/detection_engine/rules/_bulk_action`,
    /// action `enable`): the way to enable a prebuilt rule without customising it.
    pub async fn enable_rules(&self, space: &str, ids: &[String]) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let what = "enable rules";
        let url = self.url(space, BULK, &[])?;
        let body = serde_json::json!({"action": "enable", "ids": ids});
        let resp = send(what, self.request(Method::POST, url).json(&body)).await?;
        ok_json(what, resp).await.map(|_| ())
    }
}

/// How long a starting Kibana asks callers to wait (`Retry-After: 30` on its not-ready answer).
pub const STARTING_RETRY: Duration = Duration::from_secs(30);

/// [`http::send`] for Kibana, with a starting Kibana told apart from a failing one.
async fn send(what: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
    http::send(SVC, what, req).await.map_err(starting)
}

/// A Kibana that is not ready yet answers every route 503 "Kibana server is not ready yet"
/// (`Retry-After: 30`) and, from 8.0, `/api/status` 503 with overall level `unavailable`
/// (kibana core: the not-ready/preboot server, `registerPrebootStatusRoute`; after start the
/// status route answers 503 while the level is `unavailable` or `critical`). That is a waiting
/// state, not a failure: the error stays transient (so the CLI retries it and the controller
/// backs off), says so in words, and asks for at least Kibana's 30 seconds between tries.
fn starting(e: Error) -> Error {
    match e {
        Error::Transient {
            service,
            what,
            detail,
            retry_after,
            cause: Transience::Status(503),
        } if is_not_ready_answer(&detail) => Error::Transient {
            service,
            what: "is starting".into(),
            detail: format!(
                "{what} answered {detail}; waiting for it (tried again every {}s or more); \
                 nothing in Elasticsearch waits for Kibana",
                STARTING_RETRY.as_secs()
            ),
            retry_after: Some(retry_after.unwrap_or(STARTING_RETRY).max(STARTING_RETRY)),
            cause: Transience::Status(503),
        },
        other => other,
    }
}

fn is_not_ready_answer(detail: &str) -> bool {
    let d = detail.replace(' ', "");
    detail.contains("Kibana server is not ready yet")
        || d.contains("\"level\":\"unavailable\"")
        || d.contains("\"level\":\"critical\"")
        || d.contains("\"status\":\"unavailable\"")
}

/// Whether `e` is a Kibana that is still starting (see `starting`).
pub fn is_starting(e: &Error) -> bool {
    matches!(e, Error::Transient { service: Service::Kibana, what, cause: Transience::Status(503), .. } if what == "is starting")
}

/// Kibana space ids: lowercase letters, digits, `_` and `-`.
fn valid_space(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn space_name(space: &str) -> &str {
    if space.is_empty() { "default" } else { space }
}

fn rule_id_of(rule: &Value) -> String {
    rule.get("rule_id")
        .and_then(Value::as_str)
        .unwrap_or("<no rule_id>")
        .to_string()
}

/// A KQL quoted string: `"` and `\` escaped.
pub fn kql_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

pub(super) fn rejected(what: &str, status: u16, detail: String) -> Error {
    Error::Rejected {
        service: SVC,
        what: what.to_string(),
        status,
        detail,
    }
}

/// A 2xx answer's JSON body; any other status is a refusal retrying will not fix.
pub(super) async fn ok_json(what: &str, resp: reqwest::Response) -> Result<Value, Error> {
    let status = resp.status();
    if !status.is_success() {
        // Which Kibana said it: the URL (without userinfo or query) before what it said.
        let url = http::fetch_url(&resp);
        let detail = format!("{url} answered {}", http::summarize(resp).await);
        return Err(rejected(what, status.as_u16(), detail));
    }
    http::json(SVC, what, resp).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = KibanaClient::new(reqwest::Client::new(), "http://k:5601/base/", Auth::None);
        assert_eq!(
            c.url("default", RULES, &[("rule_id", "a b&c")])
                .unwrap()
                .as_str(),
            "http://k:5601/base/api/detection_engine/rules?rule_id=a+b%26c"
        );
        assert_eq!(
            c.url("sec-ops", "/api/status", &[]).unwrap().as_str(),
            "http://k:5601/base/s/sec-ops/api/status"
        );
        assert!(matches!(
            c.url("../x", RULES, &[]),
            Err(Error::InvalidSpec(_))
        ));
    }

    #[test]
    fn kql() {
        assert_eq!(kql_quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(
            kql_quote("dga-operator:owner:ns/n"),
            "\"dga-operator:owner:ns/n\""
        );
    }

    #[test]
    fn a_starting_kibana_waits() {
        let t = |detail: &str, ra| Error::Transient {
            service: SVC,
            what: "GET /api/status".into(),
            detail: detail.into(),
            retry_after: ra,
            cause: Transience::Status(503),
        };
        for (d, ra) in [
            (
                "HTTP 503 from http://k/api/status: Kibana server is not ready yet",
                Some(Duration::from_secs(30)),
            ),
            (
                r#"HTTP 503 from http://k/api/status: {"status":{"overall":{"level":"unavailable"}}}"#,
                None,
            ),
            (
                r#"HTTP 503 from http://k/api/status: {"status":"unavailable"}"#,
                Some(Duration::from_secs(5)),
            ),
        ] {
            let e = starting(t(d, ra));
            assert!(is_starting(&e), "{d}");
            assert_eq!(e.retry_after(), Some(STARTING_RETRY));
            assert!(e.is_transient());
            let msg = e.to_string();
            assert!(
                msg.starts_with("Kibana is starting: GET /api/status answered"),
                "{msg}"
            );
        }
        let busy = starting(t(
            "HTTP 503 from http://k/x: circuit_breaking_exception",
            None,
        ));
        assert!(!is_starting(&busy) && busy.retry_after().is_none());
    }
}
