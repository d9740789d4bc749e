//! The Kibana imitation: `GET /api/status` and the detection-engine rules API, per space.

use serde_json::{Map, Value, json};

use crate::server::{Req, Resp, Shared};
use crate::spec::{self, KbMatch};
use crate::util::{self, kibana_error_body};

fn kerr(status: u16, msg: &str) -> Resp {
    Resp::json(status, &kibana_error_body(status, msg))
}

/// Detection-engine style error (`{"status_code":..,"message":..}`).
fn derr(status: u16, msg: &str) -> Resp {
    Resp::json(status, &json!({"status_code": status, "message": msg}))
}

pub(crate) fn handle(sh: &Shared, r: &Req) -> Resp {
    // A starting Kibana answers before authentication, routing or validation.
    if sh.kibana_starting() {
        return crate::kibana_fields::not_ready(crate::prebuilt::kibana_version(sh), &r.path);
    }
    if crate::es::authenticate(sh, r).is_err() {
        let mut resp = kerr(401, "[security_exception]: unable to authenticate user");
        if r.header("authorization").is_none() {
            resp = kerr(401, "Unauthorized");
        }
        return resp.header("www-authenticate", "Basic realm=\"kibana\"");
    }
    // The xsrf check is a platform onPostAuth handler (`createXsrfPostAuthHandler`,
    // src/core/server/http/lifecycle_handlers.ts): it answers before any route validates its body.
    if r.method != "GET"
        && r.method != "HEAD"
        && r.header("kbn-xsrf").is_none()
        && r.header("kbn-version").is_none()
    {
        let mut resp = kerr(400, "Request must contain a kbn-xsrf header.");
        resp.off_spec = Some("missing kbn-xsrf header".into());
        return resp;
    }
    // Internal routes are not in the public OpenAPI document: the prebuilt-rules API is
    // answered per Kibana version (`prebuilt.rs`); any other internal path is 404 below.
    let (space, bare) = spec::kibana_space(&r.path);
    // Fleet's package API and ML's module API are not in the embedded OpenAPI document:
    // answered per Kibana version in `fleet.rs`.
    if let Some(resp) = crate::fleet::handle(sh, r, &bare) {
        return resp;
    }
    if bare.starts_with("/internal/") {
        let who = crate::es::principal(&r.headers).unwrap_or_else(|| "elastic".into());
        if let Some(resp) = crate::prebuilt::internal(sh, r, &space, &bare, &who) {
            return resp;
        }
    }
    let m = match spec::kibana_check(&r.method, &r.path, &r.query, &r.body) {
        Ok(m) => m,
        Err(o) => {
            let mut resp = kerr(o.status, &o.message);
            resp.off_spec = Some(o.message);
            resp.api = o.api;
            return resp;
        }
    };
    let mut resp = route(sh, r, &m);
    resp.api = Some(m.operation_id.clone());
    resp
}

fn route(sh: &Shared, r: &Req, m: &KbMatch) -> Resp {
    let body = if r.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&r.body).unwrap_or(Value::Null)
    };
    let space = m.space.as_str();
    let who = crate::es::principal(&r.headers).unwrap_or_else(|| "elastic".into());
    match m.operation_id.as_str() {
        "get-status" => status(sh),
        "CreateRule" => create_rule(sh, space, body, &who),
        "ReadRule" => match find_rule(sh, space, r.param("id"), r.param("rule_id")) {
            Ok(rule) => Resp::json(200, &rule),
            Err(e) => e,
        },
        "UpdateRule" => update_rule(sh, space, body, false, &who),
        "PatchRule" => update_rule(sh, space, body, true, &who),
        "DeleteRule" => delete_rule(sh, space, r.param("id"), r.param("rule_id")),
        "FindRules" => find_rules(sh, space, r),
        "ImportRules" => import_rules(sh, space, r),
        "InstallPrebuiltRulesAndTimelines" => crate::prebuilt::legacy_install_all(sh, space, &who),
        "ReadPrebuiltRulesAndTimelinesStatus" => crate::prebuilt::legacy_status(sh, space),
        "PerformRulesBulkAction" => bulk_action(sh, space, &body, r.flag("dry_run")),
        "ReadTags" => {
            let st = sh.st();
            let mut tags: Vec<String> = st
                .rules
                .get(space)
                .map(|rs| {
                    rs.iter()
                        .flat_map(|r| r["tags"].as_array().cloned().unwrap_or_default())
                        .filter_map(|t| t.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            tags.sort();
            tags.dedup();
            Resp::json(200, &json!(tags))
        }
        other => kerr(
            501,
            &format!("the dga-standin does not implement [{other}]"),
        ),
    }
}

fn status(sh: &Shared) -> Resp {
    Resp::json(200, &status_body(&sh.cfg.kibana_version))
}

/// `GET /api/status` body, shaped per `core_status_response` (checked in a unit test).
pub(crate) fn status_body(version: &str) -> Value {
    let ok = json!({"level": "available", "summary": "Service is working", "meta": {}});
    json!({
        "name": "kibana",
        "uuid": "5b2de169-2785-441b-ae8c-186a1936b17d",
        "version": {"number": version, "build_hash": "0000000000000000000000000000000000000000", "build_number": 1, "build_snapshot": false, "build_flavor": "traditional", "build_date": "2024-12-11T00:00:00.000Z"},
        "status": {
            "overall": {"level": "available", "summary": "All services are available", "meta": {}},
            "core": {"elasticsearch": ok, "savedObjects": ok},
            "plugins": {}
        },
        "metrics": {
            "last_updated": util::now_iso(),
            "collection_interval_in_millis": 5000,
            "elasticsearch_client": {"totalActiveSockets": 0, "totalIdleSockets": 1, "totalQueuedRequests": 0}
        }
    })
}

fn rules_mut<'a>(st: &'a mut crate::server::State, space: &str) -> &'a mut Vec<Value> {
    st.rules.entry(space.to_string()).or_default()
}

fn find_rule(
    sh: &Shared,
    space: &str,
    id: Option<&str>,
    rule_id: Option<&str>,
) -> Result<Value, Resp> {
    let st = sh.st();
    let rules = st.rules.get(space).cloned().unwrap_or_default();
    match (id, rule_id) {
        (Some(id), _) => rules
            .into_iter()
            .find(|r| r["id"] == json!(id))
            .ok_or_else(|| derr(404, &format!("id: \"{id}\" not found"))),
        (None, Some(rid)) => rules
            .into_iter()
            .find(|r| r["rule_id"] == json!(rid))
            .ok_or_else(|| derr(404, &format!("rule_id: \"{rid}\" not found"))),
        (None, None) => Err(derr(400, "either \"id\" or \"rule_id\" must be set")),
    }
}

/// The defaults Kibana `v` fills in on a stored rule; fields the version does not answer with
/// (`kibana_fields::answered`) are left out.
pub(crate) fn defaults(rule: &mut Map<String, Value>, v: (u32, u32)) {
    let d = [
        ("enabled", json!(true)),
        ("interval", json!("5m")),
        ("from", json!("now-6m")),
        ("to", json!("now")),
        ("max_signals", json!(100)),
        ("tags", json!([])),
        ("references", json!([])),
        ("false_positives", json!([])),
        ("threat", json!([])),
        ("actions", json!([])),
        ("exceptions_list", json!([])),
        ("author", json!([])),
        ("risk_score_mapping", json!([])),
        ("severity_mapping", json!([])),
        ("related_integrations", json!([])),
        ("required_fields", json!([])),
        ("setup", json!("")),
        ("version", json!(1)),
    ];
    for (k, x) in d {
        if crate::kibana_fields::answered(v, k) {
            rule.entry(k.to_string()).or_insert(x);
        }
    }
    if rule.get("type").and_then(|t| t.as_str()).is_some_and(|t| {
        t == "query" || t == "threshold" || t == "new_terms" || t == "threat_match"
    }) {
        rule.entry("language").or_insert(json!("kuery"));
    }
}

fn create_rule(sh: &Shared, space: &str, body: Value, who: &str) -> Resp {
    let Value::Object(mut rule) = body else {
        return kerr(400, "[request body]: expected an object");
    };
    let v = crate::prebuilt::kibana_version(sh);
    let dropped = match crate::kibana_fields::check_body(v, &mut rule) {
        Ok(d) => d,
        Err(e) => return e,
    };
    if rule.contains_key("id") {
        return kerr(
            400,
            "[request body]: id: Unrecognized key; id cannot be set on create",
        );
    }
    let mut st = sh.st();
    let rules = rules_mut(&mut st, space);
    let rule_id = rule
        .get("rule_id")
        .and_then(|r| r.as_str())
        .map(String::from)
        .unwrap_or_else(util::uuid4);
    if rules.iter().any(|r| r["rule_id"] == json!(rule_id)) {
        return derr(409, &format!("rule_id: \"{rule_id}\" already exists"));
    }
    let now = util::now_iso();
    rule.insert("rule_id".into(), json!(rule_id));
    rule.insert("id".into(), json!(util::uuid4()));
    rule.insert("created_at".into(), json!(now));
    rule.insert("updated_at".into(), json!(now));
    rule.insert("created_by".into(), json!(who));
    rule.insert("updated_by".into(), json!(who));
    rule.insert("revision".into(), json!(0));
    rule.insert("immutable".into(), json!(false));
    if crate::kibana_fields::answered(v, "rule_source") {
        rule.insert("rule_source".into(), json!({"type": "internal"}));
    }
    defaults(&mut rule, v);
    let out = Value::Object(rule);
    rules.push(out.clone());
    dropped_note(Resp::json(200, &out), v, &dropped)
}

/// A body field Kibana dropped without a word is still a field the caller should not have sent
/// to that version: counted as off-spec so that tests see it.
fn dropped_note(mut resp: Resp, v: (u32, u32), dropped: &[String]) -> Resp {
    if !dropped.is_empty() {
        resp.off_spec = Some(format!(
            "Kibana {}.{} drops fields it does not know: {}",
            v.0,
            v.1,
            dropped.join(", ")
        ));
    }
    resp
}

fn update_rule(sh: &Shared, space: &str, body: Value, patch: bool, who: &str) -> Resp {
    let Value::Object(mut body) = body else {
        return kerr(400, "[request body]: expected an object");
    };
    let v = crate::prebuilt::kibana_version(sh);
    let dropped = match crate::kibana_fields::check_body(v, &mut body) {
        Ok(d) => d,
        Err(e) => return e,
    };
    let id = body.get("id").and_then(|v| v.as_str()).map(String::from);
    let rule_id = body
        .get("rule_id")
        .and_then(|v| v.as_str())
        .map(String::from);
    let mut st = sh.st();
    let rules = rules_mut(&mut st, space);
    let pos = match (&id, &rule_id) {
        (Some(id), _) => rules
            .iter()
            .position(|r| r["id"] == json!(id))
            .ok_or_else(|| derr(404, &format!("id: \"{id}\" not found"))),
        (None, Some(rid)) => rules
            .iter()
            .position(|r| r["rule_id"] == json!(rid))
            .ok_or_else(|| derr(404, &format!("rule_id: \"{rid}\" not found"))),
        (None, None) => Err(derr(400, "either \"id\" or \"rule_id\" must be set")),
    };
    let pos = match pos {
        Ok(p) => p,
        Err(e) => return e,
    };
    let old = rules[pos].as_object().cloned().unwrap_or_default();
    let mut new = if patch { old.clone() } else { Map::new() };
    for (k, v) in body {
        new.insert(k, v);
    }
    for k in [
        "id",
        "rule_id",
        "created_at",
        "created_by",
        "immutable",
        "rule_source",
    ] {
        if let Some(v) = old.get(k) {
            new.insert(k.into(), v.clone());
        }
    }
    if !patch {
        defaults(&mut new, v);
    }
    // A prebuilt rule edited beyond its enabled state is customised (prebuilt-rule
    // customization, 8.16+: `rule_source.is_customized`).
    if old.get("immutable") == Some(&json!(true))
        && old.contains_key("rule_source")
        && customised(&old, &new)
    {
        new.insert(
            "rule_source".into(),
            json!({"type": "external", "is_customized": true}),
        );
    }
    let rev = old.get("revision").and_then(|r| r.as_i64()).unwrap_or(0) + 1;
    new.insert("revision".into(), json!(rev));
    new.insert("updated_at".into(), json!(util::now_iso()));
    new.insert("updated_by".into(), json!(who));
    let out = Value::Object(new);
    rules[pos] = out.clone();
    dropped_note(Resp::json(200, &out), v, &dropped)
}

/// Whether `new` changes a rule field of `old` other than the ones a person may set without
/// customising a prebuilt rule (`enabled`, `actions`, `exceptions_list`, bookkeeping).
fn customised(old: &Map<String, Value>, new: &Map<String, Value>) -> bool {
    const FREE: &[&str] = &[
        "enabled",
        "actions",
        "exceptions_list",
        "revision",
        "updated_at",
        "updated_by",
        "execution_summary",
    ];
    new.iter()
        .any(|(k, v)| !FREE.contains(&k.as_str()) && old.get(k).is_some_and(|o| o != v))
}

fn delete_rule(sh: &Shared, space: &str, id: Option<&str>, rule_id: Option<&str>) -> Resp {
    let rule = match find_rule(sh, space, id, rule_id) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let mut st = sh.st();
    rules_mut(&mut st, space).retain(|r| r["id"] != rule["id"]);
    Resp::json(200, &rule)
}

/// Filter expression: `alert.attributes.<field>:"X"` / `:X` terms joined by AND / OR
/// (AND binds tighter), optional parentheses around the whole or single terms.
/// Returns Err for unsupported syntax.
fn filter_matches(filter: &str, rule: &Value) -> Result<bool, String> {
    let f = filter.trim();
    if f.is_empty() {
        return Ok(true);
    }
    let mut any = false;
    for or_part in split_kw(f, " OR ") {
        let mut all = true;
        for and_part in split_kw(&or_part, " AND ") {
            all &= term_matches(&and_part, rule)?;
        }
        any |= all;
    }
    Ok(any)
}

fn split_kw(s: &str, kw: &str) -> Vec<String> {
    // Split on keyword outside of quotes (case-insensitive keyword).
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_q = false;
    let chars: Vec<char> = s.chars().collect();
    let kwc: Vec<char> = kw.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            in_q = !in_q;
        }
        if !in_q
            && i + kwc.len() <= chars.len()
            && chars[i..i + kwc.len()]
                .iter()
                .zip(&kwc)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
        {
            out.push(cur.clone());
            cur.clear();
            i += kwc.len();
            continue;
        }
        cur.push(c);
        i += 1;
    }
    out.push(cur);
    out
}

fn term_matches(term: &str, rule: &Value) -> Result<bool, String> {
    let t = term
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .trim();
    let (field, val) = t
        .split_once(':')
        .ok_or_else(|| format!("unsupported filter term [{t}]"))?;
    let field = field.trim();
    let field = field.strip_prefix("alert.attributes.").unwrap_or(field);
    let field = match field {
        "createdBy" => "created_by",
        "updatedBy" => "updated_by",
        "params.ruleId" => "rule_id",
        f => f,
    };
    let val = val.trim();
    let val = val
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(val);
    let got = util::get_field(rule, field).cloned().unwrap_or(Value::Null);
    Ok(match got {
        Value::Array(a) => a.iter().any(|x| scalar_eq(x, val)),
        x => scalar_eq(&x, val),
    })
}

fn scalar_eq(v: &Value, s: &str) -> bool {
    match v {
        Value::String(x) => x == s,
        Value::Bool(b) => b.to_string() == s,
        Value::Number(n) => n.to_string() == s,
        _ => false,
    }
}

fn find_rules(sh: &Shared, space: &str, r: &Req) -> Resp {
    let rules = sh.st().rules.get(space).cloned().unwrap_or_default();
    let filter = r.param("filter").unwrap_or("");
    let mut hits = Vec::new();
    for rule in rules {
        match filter_matches(filter, &rule) {
            Ok(true) => hits.push(rule),
            Ok(false) => {}
            Err(e) => {
                return kerr(
                    400,
                    &format!("The stand-in cannot evaluate this filter: {e}"),
                );
            }
        }
    }
    if let Some(sf) = r.param("sort_field") {
        let key = match sf {
            "createdAt" => "created_at",
            "updatedAt" => "updated_at",
            "enabled" => "enabled",
            "name" => "name",
            other => other,
        }
        .to_string();
        hits.sort_by(|a, b| a[&key].to_string().cmp(&b[&key].to_string()));
        if r.param("sort_order") == Some("desc") {
            hits.reverse();
        }
    }
    let page: usize = r
        .param("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let per_page: usize = r
        .param("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(20);
    let total = hits.len();
    let data: Vec<Value> = hits
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    Resp::json(
        200,
        &json!({"page": page, "perPage": per_page, "total": total, "data": data}),
    )
}

fn bulk_action(sh: &Shared, space: &str, body: &Value, dry_run: bool) -> Resp {
    let action = body["action"].as_str().unwrap_or("");
    if !matches!(action, "delete" | "enable" | "disable") {
        return kerr(
            501,
            &format!("the dga-standin does not implement bulk action [{action}]"),
        );
    }
    let mut st = sh.st();
    let rules = rules_mut(&mut st, space);
    let mut targets: Vec<usize> = Vec::new();
    let mut errors = Vec::new();
    if let Some(ids) = body.get("ids").and_then(|i| i.as_array()) {
        if body.get("query").is_some() {
            return kerr(
                400,
                "Both query and ids are sent. Define either ids or query in request payload.",
            );
        }
        for id in ids {
            match rules.iter().position(|r| r["id"] == *id) {
                Some(p) => targets.push(p),
                None => errors.push(
                    json!({"message": "Rule not found", "status_code": 404, "rules": [{"id": id}]}),
                ),
            }
        }
    } else {
        let q = body.get("query").and_then(|q| q.as_str()).unwrap_or("");
        for (i, r) in rules.iter().enumerate() {
            match filter_matches(q, r) {
                Ok(true) => targets.push(i),
                Ok(false) => {}
                Err(e) => {
                    return kerr(
                        400,
                        &format!("The stand-in cannot evaluate this query: {e}"),
                    );
                }
            }
        }
    }
    let mut updated = Vec::new();
    let mut deleted = Vec::new();
    let mut skipped = Vec::new();
    if !dry_run {
        for &p in &targets {
            match action {
                "delete" => deleted.push(rules[p].clone()),
                "enable" | "disable" => {
                    let want = action == "enable";
                    if rules[p]["enabled"] == json!(want) {
                        skipped.push(json!({"id": rules[p]["id"], "name": rules[p]["name"], "skip_reason": "RULE_NOT_MODIFIED"}));
                        continue;
                    }
                    rules[p]["enabled"] = json!(want);
                    rules[p]["updated_at"] = json!(util::now_iso());
                    updated.push(rules[p].clone());
                }
                _ => {}
            }
        }
        if action == "delete" {
            let ids: Vec<Value> = deleted.iter().map(|r| r["id"].clone()).collect();
            rules.retain(|r| !ids.contains(&r["id"]));
        }
    }
    let succeeded = updated.len() + deleted.len();
    let failed = errors.len();
    let total = targets.len() + failed;
    let status = if failed > 0 { 500 } else { 200 };
    let mut out = json!({
        "success": failed == 0,
        "rules_count": total,
        "attributes": {
            "results": {"updated": updated, "created": [], "deleted": deleted, "skipped": skipped},
            "summary": {"failed": failed, "skipped": skipped.len(), "succeeded": succeeded, "total": total},
            "errors": errors,
        }
    });
    if failed > 0 {
        out["message"] = json!("Bulk edit partially failed");
        out["status_code"] = json!(500);
    }
    Resp::json(status, &out)
}

/// Extract the first file part of a multipart/form-data body.
fn multipart_file(r: &Req) -> Result<Vec<u8>, String> {
    let ct = r.header("content-type").unwrap_or("");
    if !ct.to_ascii_lowercase().starts_with("multipart/form-data") {
        return Err(format!(
            "Unsupported Media Type: expected multipart/form-data, got [{ct}]"
        ));
    }
    let boundary = ct
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"').to_string())
        .ok_or("multipart boundary missing")?;
    let delim = format!("--{boundary}");
    let body = &r.body[..];
    let text = String::from_utf8_lossy(body);
    for part in text.split(delim.as_str()).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let Some((headers, content)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        if headers.contains("name=\"file\"") || headers.contains("filename=") {
            let content = content.strip_suffix("\r\n").unwrap_or(content);
            return Ok(content.as_bytes().to_vec());
        }
    }
    Err("[request body.file]: expected a file part".into())
}

fn import_rules(sh: &Shared, space: &str, r: &Req) -> Resp {
    let data = match multipart_file(r) {
        Ok(d) => d,
        Err(e) => return kerr(400, &e),
    };
    let overwrite = r.flag("overwrite");
    let who = crate::es::principal(&r.headers).unwrap_or_else(|| "elastic".into());
    let doc = &crate::spec::kibana_spec().doc;
    let schema = json!({"$ref": "#/components/schemas/RuleCreateProps"});
    let mut errors = Vec::new();
    let mut ok = 0usize;
    let mut count = 0usize;
    for line in String::from_utf8_lossy(&data)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            errors.push(
                json!({"error": {"status_code": 400, "message": "Unexpected token in JSON"}}),
            );
            count += 1;
            continue;
        };
        if v.get("exported_count").is_some() || v.get("exported_rules_count").is_some() {
            continue; // export details line
        }
        if v.get("list_id").is_some() || v.get("item_id").is_some() {
            continue; // exception lists are not modelled
        }
        count += 1;
        let rule_id = v.get("rule_id").and_then(|x| x.as_str()).map(String::from);
        let Some(rule_id) = rule_id else {
            errors.push(json!({"error": {"status_code": 400, "message": "rule_id: Required"}}));
            continue;
        };
        let mut stripped = v.clone();
        if let Some(o) = stripped.as_object_mut() {
            for k in [
                "id",
                "created_at",
                "updated_at",
                "created_by",
                "updated_by",
                "revision",
                "immutable",
                "rule_source",
                "execution_summary",
            ] {
                o.remove(k);
            }
        }
        if let Err(e) = crate::spec::validate(doc, &schema, &stripped) {
            errors.push(json!({"rule_id": rule_id, "error": {"status_code": 400, "message": e}}));
            continue;
        }
        let exists = sh
            .st()
            .rules
            .get(space)
            .is_some_and(|rs| rs.iter().any(|x| x["rule_id"] == json!(rule_id)));
        let resp = if exists {
            if !overwrite {
                errors.push(json!({"rule_id": rule_id, "error": {"status_code": 409, "message": format!("rule_id: \"{rule_id}\" already exists")}}));
                continue;
            }
            update_rule(sh, space, stripped, false, &who)
        } else {
            create_rule(sh, space, stripped, &who)
        };
        if resp.status == 200 {
            ok += 1;
        } else {
            errors.push(json!({"rule_id": rule_id, "error": {"status_code": resp.status, "message": "import failed"}}));
        }
    }
    Resp::json(
        200,
        &json!({
            "success": errors.is_empty(),
            "success_count": ok,
            "rules_count": count,
            "errors": errors,
            "exceptions_success": true,
            "exceptions_success_count": 0,
            "exceptions_errors": [],
            "action_connectors_success": true,
            "action_connectors_success_count": 0,
            "action_connectors_errors": [],
            "action_connectors_warnings": []
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn status_matches_core_status_schema() {
        let doc: Value = serde_json::from_str(crate::spec::KIBANA_STATUS_SCHEMAS).unwrap();
        let schema = doc["components"]["schemas"]["core_status_response"].clone();
        crate::spec::validate(&doc, &schema, &status_body("8.17.0")).unwrap();
        let mut bad = status_body("8.17.0");
        bad["extra"] = json!(1);
        assert!(crate::spec::validate(&doc, &schema, &bad).is_err());
    }

    #[test]
    fn filters() {
        let r = json!({"tags": ["ML-DGA", "x"], "name": "a b", "enabled": true});
        assert!(filter_matches("alert.attributes.tags:\"ML-DGA\"", &r).unwrap());
        assert!(!filter_matches("alert.attributes.tags:\"nope\"", &r).unwrap());
        assert!(
            filter_matches(
                "alert.attributes.tags:\"nope\" OR alert.attributes.tags:x",
                &r
            )
            .unwrap()
        );
        assert!(
            !filter_matches(
                "alert.attributes.tags:\"nope\" AND alert.attributes.tags:x",
                &r
            )
            .unwrap()
        );
        assert!(filter_matches("alert.attributes.enabled:true", &r).unwrap());
        assert!(filter_matches("alert.attributes.tags:\"Use Case: Domain Generation Algorithm Detection\" OR alert.attributes.tags:\"ML-DGA\"", &r).unwrap());
        assert!(filter_matches("garbage", &r).is_err());
    }
}
