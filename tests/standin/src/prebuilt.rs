//! Kibana's prebuilt detection rules (the `security_detection_engine` package), per Kibana version.
//!
//! Traced to elastic/kibana `x-pack/(solutions/security/)plugins/security_solution`:
//! `common/api/detection_engine/prebuilt_rules/urls.ts` (routes),
//! `server/lib/detection_engine/prebuilt_rules/api/get_prebuilt_rules_status/`,
//! `.../review_rule_installation/`, `.../perform_rule_installation/` (internal, versioned `1`,
//! from 8.9) and `.../install_prebuilt_rules_and_timelines/` + `get_prebuilt_rules_and_timelines_status/`
//! (the public legacy `PUT /api/detection_engine/rules/prepackaged` and its `_status`).
//! Versioned-route handling: `packages/core/http/core-http-router-server-internal/src/versioned_router/core_versioned_route.ts`.
//!
//! The catalogue: Elastic's four DGA rules as recorded in `fixtures/elastic-dga-content.json`
//! (from 8.9, when `StandinConfig::kibana_prebuilt_dga` is on), plus filler rules standing for
//! the rest of the package (named `A stand-in prebuilt rule NN`, so that they sort before the DGA
//! rules and a paged `_review` has to be followed). With the switch off the package is absent
//! (an air-gapped Kibana without it): nothing is installable.

use serde_json::{Map, Value, json};

use crate::server::{Req, Resp, Shared};
use crate::util::{self, kibana_error_body};

const BASE: &str = "/internal/detection_engine/prebuilt_rules";
/// How many filler rules stand for the rest of the package.
const FILLERS: usize = 30;

/// A Kibana version as (major, minor); unparsable → the default 8.17.
pub(crate) fn kibana_version(sh: &Shared) -> (u32, u32) {
    let mut it = sh
        .cfg
        .kibana_version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(a), Some(b)) => (a, b),
        _ => (8, 17),
    }
}

/// What each Kibana version offers (the one place that says it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offer {
    /// Internal prebuilt-rules API (`status`, `installation/_review`, `installation/_perform`):
    /// 8.9 (kibana #148185 and the 8.9 release of the new prebuilt-rules workflow).
    pub internal_api: bool,
    /// Elastic's DGA rules are prebuilt rules of `security_detection_engine` from 8.9
    /// (detection-rules; Fleet dga 2.0.0 dropped its package rules, needs ^8.9.0).
    pub dga_in_package: bool,
    /// `installation/_review` is paged (`page`, `per_page` ≤ 500, default 20; answers `page`,
    /// `per_page`, `total`): kibana PR #247375 (merged 2025-12-23) and #264443; taken from 9.4.
    pub review_paged: bool,
    /// `installation/_perform` answers `results.created` as `{rule_id, version}` instead of whole
    /// rules: kibana PR #264443 (merged 2026-04-20); taken from 9.5.
    pub perform_brief: bool,
    /// Rule responses carry `rule_source` (`{type: external, is_customized}` for prebuilt rules):
    /// prebuilt-rule customization (kibana #175680, 8.16).
    pub rule_source: bool,
}

pub(crate) fn offer(sh: &Shared) -> Offer {
    let v = kibana_version(sh);
    Offer {
        internal_api: v >= (8, 9),
        dga_in_package: v >= (8, 9) && sh.cfg.kibana_prebuilt_dga,
        review_paged: v >= (9, 4),
        perform_brief: v >= (9, 5),
        rule_source: v >= (8, 16),
    }
}

fn facts() -> Value {
    serde_json::from_str(include_str!("../fixtures/elastic-dga-content.json"))
        .expect("fixture parses")
}

fn threat(f: &Value) -> Value {
    let tactic = f["tactic"].as_str().unwrap_or("TA0011");
    let ids: Vec<&str> = f["techniques"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let technique: Vec<Value> = ids
        .iter()
        .filter(|t| !t.contains('.'))
        .map(|t| {
            let subs: Vec<Value> = ids
                .iter()
                .filter(|s| s.starts_with(&format!("{t}.")))
                .map(|s| {
                    json!({"id": s, "name": s, "reference": format!("https://attack.mitre.org/techniques/{}/", s.replace('.', "/"))})
                })
                .collect();
            json!({"id": t, "name": t, "reference": format!("https://attack.mitre.org/techniques/{t}/"), "subtechnique": subs})
        })
        .collect();
    json!([{
        "framework": "MITRE ATT&CK",
        "tactic": {"id": tactic, "name": "Command and Control", "reference": format!("https://attack.mitre.org/tactics/{tactic}/")},
        "technique": technique
    }])
}

/// The package's rule assets for Kibana `v` (Elastic's DGA rules as the fixture records them:
/// the ML rule's job and version follow the 9.4 split).
pub(crate) fn catalogue(sh: &Shared) -> Vec<Value> {
    if !sh.cfg.kibana_prebuilt_dga {
        return Vec::new();
    }
    let v = kibana_version(sh);
    let off = offer(sh);
    let mut out: Vec<Value> = (1..=FILLERS)
        .map(|n| {
            json!({
                "rule_id": format!("00000000-5eed-4000-8000-{n:012}"),
                "version": 1,
                "name": format!("A stand-in prebuilt rule {n:02}"),
                "description": "Stands for the rest of Elastic's prebuilt rules (dga-standin).",
                "type": "query", "language": "kuery", "query": "event.kind:alert",
                "index": ["logs-*"], "risk_score": 21, "severity": "low",
                "tags": ["Stand-in"], "author": ["Elastic"], "license": "Elastic License v2"
            })
        })
        .collect();
    if !off.dga_in_package {
        return out;
    }
    let ea = v >= (9, 4);
    for f in facts()["rules"].as_array().cloned().unwrap_or_default() {
        let version = if ea {
            f["version"].clone()
        } else {
            f.get("version_before_9_4")
                .cloned()
                .unwrap_or(f["version"].clone())
        };
        let mut a = json!({
            "rule_id": f["rule_id"], "version": version, "name": f["name"],
            "description": format!("{} (Elastic prebuilt rule; dga-standin catalogue)", f["name"].as_str().unwrap_or("")),
            "type": f["type"], "risk_score": f["risk_score"], "severity": f["severity"],
            "from": f["from"], "tags": f["tags"], "threat": threat(&f),
            "author": ["Elastic"], "license": "Elastic License v2",
        });
        let o = a.as_object_mut().expect("object");
        if let Some(i) = f["interval"].as_str() {
            o.insert("interval".into(), json!(i));
        }
        if f["type"] == "machine_learning" {
            let job = if ea {
                f["machine_learning_job_id"].clone()
            } else {
                f["machine_learning_job_id_before_9_4"].clone()
            };
            o.insert("machine_learning_job_id".into(), json!([job]));
            o.insert("anomaly_threshold".into(), f["anomaly_threshold"].clone());
        } else {
            for k in ["query", "language", "index", "timestamp_override"] {
                o.insert(k.into(), f[k].clone());
            }
        }
        out.push(a);
    }
    out
}

fn kerr(status: u16, msg: &str) -> Resp {
    Resp::json(status, &kibana_error_body(status, msg))
}

fn is_immutable(r: &Value) -> bool {
    r["immutable"] == json!(true)
}

/// Installed prebuilt rules of a space: Kibana counts only `immutable` rules
/// (`fetchInstalledRuleVersions`, `KQL_FILTER_IMMUTABLE_RULES`), so a custom rule that holds a
/// prebuilt rule_id does not make it installed (kibana #180198: two rules, one rule_id).
fn installed(sh: &Shared, space: &str) -> Vec<Value> {
    sh.st()
        .rules
        .get(space)
        .map(|rs| rs.iter().filter(|r| is_immutable(r)).cloned().collect())
        .unwrap_or_default()
}

fn installable(sh: &Shared, space: &str) -> Vec<Value> {
    let have = installed(sh, space);
    let mut out: Vec<Value> = catalogue(sh)
        .into_iter()
        .filter(|a| !have.iter().any(|r| r["rule_id"] == a["rule_id"]))
        .collect();
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    out
}

/// Creates the rule Kibana creates from a prebuilt asset: `immutable`, disabled, Elastic's
/// version, `rule_source` external where the version has it.
fn install(sh: &Shared, space: &str, asset: &Value, who: &str) -> Value {
    let mut rule: Map<String, Value> = asset.as_object().cloned().unwrap_or_default();
    let now = util::now_iso();
    rule.insert("id".into(), json!(util::uuid4()));
    rule.insert("created_at".into(), json!(now));
    rule.insert("updated_at".into(), json!(now));
    rule.insert("created_by".into(), json!(who));
    rule.insert("updated_by".into(), json!(who));
    rule.insert("revision".into(), json!(0));
    rule.insert("immutable".into(), json!(true));
    rule.insert("enabled".into(), json!(false));
    if offer(sh).rule_source {
        rule.insert(
            "rule_source".into(),
            json!({"type": "external", "is_customized": false}),
        );
    }
    crate::kibana::defaults(&mut rule, kibana_version(sh));
    let v = Value::Object(rule);
    sh.st()
        .rules
        .entry(space.to_string())
        .or_default()
        .push(v.clone());
    v
}

/// The internal routes under `/internal/detection_engine/prebuilt_rules/` (already
/// authenticated and xsrf-checked). `None`: not one of them (the caller answers 404).
pub(crate) fn internal(sh: &Shared, r: &Req, space: &str, bare: &str, who: &str) -> Option<Resp> {
    let tail = bare.strip_prefix(BASE)?;
    let off = offer(sh);
    let (api, method) = match tail {
        "/status" => ("prebuilt_rules.status", "GET"),
        "/installation/_review" => ("prebuilt_rules.installation._review", "POST"),
        "/installation/_perform" => ("prebuilt_rules.installation._perform", "POST"),
        _ => return None,
    };
    if !off.internal_api || r.method != method {
        return None;
    }
    // Versioned internal route: the `elastic-api-version` header picks the handler; only `1`.
    let version = r.header("elastic-api-version");
    let mut resp = match version {
        None => kerr(
            400,
            "Please specify a version via elastic-api-version header. Available versions: [1]",
        ),
        Some("1") => {
            let body: Value = if r.body.is_empty() {
                Value::Null
            } else {
                match serde_json::from_slice(&r.body) {
                    Ok(v) => v,
                    Err(e) => return Some(kerr(400, &format!("[request body]: {e}"))),
                }
            };
            match tail {
                "/status" => status(sh, space),
                "/installation/_review" => review(sh, space, &body, off),
                _ => perform(sh, space, &body, off, who),
            }
        }
        Some(v) => kerr(
            400,
            &format!(
                "No version \"{v}\" available for [{}] [{bare}]. Available versions are: [1]",
                method.to_lowercase()
            ),
        ),
    };
    resp.api = Some(api.into());
    Some(resp)
}

fn status(sh: &Shared, space: &str) -> Resp {
    let cat = catalogue(sh);
    let have = installed(sh, space);
    let current = have
        .iter()
        .filter(|r| cat.iter().any(|a| a["rule_id"] == r["rule_id"]))
        .count();
    let upgrade = have
        .iter()
        .filter(|r| {
            cat.iter().any(|a| {
                a["rule_id"] == r["rule_id"] && a["version"].as_u64() > r["version"].as_u64()
            })
        })
        .count();
    Resp::json(
        200,
        &json!({"stats": {
            "num_prebuilt_rules_installed": current,
            "num_prebuilt_rules_to_install": installable(sh, space).len(),
            "num_prebuilt_rules_to_upgrade": upgrade,
            "num_prebuilt_rules_total_in_package": cat.len(),
        }}),
    )
}

/// The review form of an asset (`convertPrebuiltRuleAssetToRuleResponse`).
fn review_form(a: &Value, v: (u32, u32)) -> Value {
    let mut r = a.as_object().cloned().unwrap_or_default();
    r.insert("immutable".into(), json!(true));
    r.insert("enabled".into(), json!(false));
    crate::kibana::defaults(&mut r, v);
    Value::Object(r)
}

fn review(sh: &Shared, space: &str, body: &Value, off: Offer) -> Resp {
    let all = installable(sh, space);
    let mut tags: Vec<String> = all
        .iter()
        .flat_map(|a| a["tags"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(String::from))
        .collect();
    tags.sort();
    tags.dedup();
    let stats = json!({"num_rules_to_install": all.len(), "tags": tags});
    if !off.review_paged {
        // Before paging the body is not validated (`validate: {}`) and every rule is listed.
        let rules: Vec<Value> = all
            .iter()
            .map(|a| review_form(a, kibana_version(sh)))
            .collect();
        return Resp::json(200, &json!({"stats": stats, "rules": rules}));
    }
    let num = |k: &str, default: i64| -> Result<i64, Resp> {
        match body.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_i64()
                .ok_or_else(|| kerr(400, &format!("[request body]: {k}: Expected number"))),
        }
    };
    let page = match num("page", 1) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let per_page = match num("per_page", 20) {
        Ok(p) => p,
        Err(e) => return e,
    };
    if page < 1 {
        return kerr(
            400,
            "[request body]: page: Number must be greater than or equal to 1",
        );
    }
    if !(0..=500).contains(&per_page) {
        return kerr(
            400,
            "[request body]: per_page: Number must be between 0 and 500",
        );
    }
    let (page, per_page) = (page as usize, per_page as usize);
    let rules: Vec<Value> = all
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|a| review_form(a, kibana_version(sh)))
        .collect();
    Resp::json(
        200,
        &json!({"page": page, "per_page": per_page, "total": all.len(), "stats": stats, "rules": rules}),
    )
}

/// `PerformRuleInstallationRequestBody`: `{mode: ALL_RULES}` or `{mode: SPECIFIC_RULES, rules:
/// [{rule_id: string, version: number}]}` (io-ts `exact`: extra keys are dropped).
fn parse_perform(body: &Value) -> Result<Option<Vec<(String, u64)>>, String> {
    match body.get("mode").and_then(Value::as_str) {
        Some("ALL_RULES") => Ok(None),
        Some("SPECIFIC_RULES") => {
            let rules = body
                .get("rules")
                .and_then(Value::as_array)
                .ok_or("rules: Required")?;
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let id = r.get("rule_id").and_then(Value::as_str);
                    let v = r.get("version").and_then(Value::as_u64);
                    match (id, v) {
                        (Some(id), Some(v)) => Ok((id.to_string(), v)),
                        (None, _) => Err(format!("rules.{i}.rule_id: Required")),
                        (_, None) => Err(format!("rules.{i}.version: Required")),
                    }
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        }
        _ => Err("mode: Invalid literal value, expected ALL_RULES or SPECIFIC_RULES".into()),
    }
}

fn perform(sh: &Shared, space: &str, body: &Value, off: Offer, who: &str) -> Resp {
    let wanted = match parse_perform(body) {
        Ok(w) => w,
        Err(e) => return kerr(400, &format!("[request body]: {e}")),
    };
    let cat = catalogue(sh);
    let have = installed(sh, space);
    let mut queue: Vec<Value> = Vec::new();
    let mut skipped = Vec::new();
    let mut errors: Vec<Value> = Vec::new();
    match wanted {
        None => queue = installable(sh, space),
        Some(list) => {
            for (id, v) in list {
                if have.iter().any(|r| r["rule_id"] == json!(id)) {
                    skipped.push(json!({"rule_id": id, "reason": "ALREADY_INSTALLED"}));
                    continue;
                }
                match cat
                    .iter()
                    .find(|a| a["rule_id"] == json!(id) && a["version"].as_u64() == Some(v))
                {
                    Some(a) => queue.push(a.clone()),
                    None => errors.push(json!({
                        "message": format!("Rule with ID \"{id}\" and version \"{v}\" not found"),
                        "rules": [{"rule_id": id}]
                    })),
                }
            }
        }
    }
    let failed = errors.len();
    let created: Vec<Value> = queue
        .iter()
        .map(|a| {
            let r = install(sh, space, a, who);
            if off.perform_brief {
                json!({"rule_id": r["rule_id"], "version": r["version"]})
            } else {
                r
            }
        })
        .collect();
    Resp::json(
        200,
        &json!({
            "summary": {"total": created.len() + skipped.len() + failed, "succeeded": created.len(), "skipped": skipped.len(), "failed": failed},
            "results": {"created": created, "skipped": skipped},
            "errors": errors,
        }),
    )
}

/// `PUT /api/detection_engine/rules/prepackaged`: installs every prebuilt rule not installed
/// (updates are not modelled: the catalogue has one version); timelines are not modelled.
pub(crate) fn legacy_install_all(sh: &Shared, space: &str, who: &str) -> Resp {
    let assets = installable(sh, space);
    for a in &assets {
        install(sh, space, a, who);
    }
    let n = assets.len();
    Resp::json(
        200,
        &json!({"rules_installed": n, "rules_updated": 0, "timelines_installed": 0, "timelines_updated": 0}),
    )
}

/// `GET /api/detection_engine/rules/prepackaged/_status`.
pub(crate) fn legacy_status(sh: &Shared, space: &str) -> Resp {
    let custom = sh
        .st()
        .rules
        .get(space)
        .map(|rs| rs.iter().filter(|r| !is_immutable(r)).count())
        .unwrap_or(0);
    let cat = catalogue(sh);
    let current = installed(sh, space)
        .iter()
        .filter(|r| cat.iter().any(|a| a["rule_id"] == r["rule_id"]))
        .count();
    Resp::json(
        200,
        &json!({
            "rules_custom_installed": custom,
            "rules_installed": current,
            "rules_not_installed": installable(sh, space).len(),
            "rules_not_updated": 0,
            "timelines_installed": 0,
            "timelines_not_installed": 0,
            "timelines_not_updated": 0,
        }),
    )
}
