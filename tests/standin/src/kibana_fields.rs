//! Kibana, version by version: which detection-rule fields a Kibana accepts in create/update
//! bodies and returns in rule responses, what it does with a field it does not know, and how it
//! answers while it is starting. The one place that says it; `CONFORMANCE.md` ("Kibana rule
//! fields and start-up per version") repeats it with the test of each row.
//!
//! Traced to elastic/kibana:
//! - Fields before the rule-schema rewrite: io-ts `t.exact` types checked by `exactCheck`
//!   (`packages/kbn-securitysolution-io-ts-utils/src/exact_check/index.ts`, called by
//!   `buildRouteValidation`, `server/utils/build_validation/route_validation.ts`): an unknown
//!   key fails validation with `invalid keys "a,b"`; the core router prefixes the validation
//!   namespace (`[request body]: `) and answers Boom 400.
//! - From 8.12 the rule routes validate with zod object schemas that strip unknown keys
//!   (kibana PR #170861 "Make rule schema forward-compatible", merged 2023-11; the first release
//!   after the merge is inferred from its date): an unknown field is dropped without a word.
//! - `setup`, `related_integrations`, `required_fields` appear in rule responses from 8.3 (PR
//!   #132409); create/update bodies accept `setup` from 8.14 (PR #178131),
//!   `related_integrations` and `required_fields` from 8.15 (PRs #178295, #180682).
//! - `investigation_fields` (custom highlighted fields) from 8.10 (PR #163235).
//! - `rule_source` is a response field from 8.16 (prebuilt-rule customization, #175680); no
//!   version accepts it in a body.

use serde_json::{Map, Value, json};

use crate::server::Resp;
use crate::util::kibana_error_body;

/// A rule field that exists only from some Kibana version on.
pub(crate) struct VersionedField {
    pub name: &'static str,
    /// First version whose create/update (and patch) bodies accept it; `None`: never.
    pub accepted: Option<(u32, u32)>,
    /// First version whose rule responses carry it.
    pub answered: (u32, u32),
    pub source: &'static str,
}

pub(crate) const FIELDS: &[VersionedField] = &[
    VersionedField {
        name: "setup",
        accepted: Some((8, 14)),
        answered: (8, 3),
        source: "kibana PRs #178131 (bodies), #132409 (responses)",
    },
    VersionedField {
        name: "related_integrations",
        accepted: Some((8, 15)),
        answered: (8, 3),
        source: "kibana PRs #178295 (bodies), #132409 (responses)",
    },
    VersionedField {
        name: "required_fields",
        accepted: Some((8, 15)),
        answered: (8, 3),
        source: "kibana PRs #180682 (bodies), #132409 (responses)",
    },
    VersionedField {
        name: "investigation_fields",
        accepted: Some((8, 10)),
        answered: (8, 10),
        source: "kibana PR #163235",
    },
    VersionedField {
        name: "rule_source",
        accepted: None,
        answered: (8, 16),
        source: "kibana #175680 (prebuilt-rule customization)",
    },
];

/// From this version unknown body fields are dropped instead of refused (PR #170861).
pub(crate) const STRIPS_UNKNOWN: (u32, u32) = (8, 12);

/// Whether a Kibana of version `v` returns `field` in its rule responses.
pub(crate) fn answered(v: (u32, u32), field: &str) -> bool {
    FIELDS
        .iter()
        .find(|f| f.name == field)
        .is_none_or(|f| v >= f.answered)
}

/// Checks a create/update/patch body against what Kibana `v` knows. Fields it does not know
/// are refused as its io-ts validation refuses them (before 8.12) or removed from `body` as
/// its zod schemas strip them (8.12 on). `Ok` carries the names dropped.
pub(crate) fn check_body(
    v: (u32, u32),
    body: &mut Map<String, Value>,
) -> Result<Vec<String>, Resp> {
    let unknown: Vec<String> = body
        .keys()
        .filter(|k| {
            FIELDS
                .iter()
                .any(|f| f.name == k.as_str() && f.accepted.is_none_or(|since| v < since))
        })
        .cloned()
        .collect();
    if unknown.is_empty() {
        return Ok(unknown);
    }
    if v < STRIPS_UNKNOWN {
        let msg = format!("[request body]: invalid keys \"{}\"", unknown.join(","));
        let why: Vec<String> = FIELDS
            .iter()
            .filter(|f| unknown.iter().any(|u| u == f.name))
            .map(|f| format!("{}: {}", f.name, f.source))
            .collect();
        let mut resp = Resp::json(400, &kibana_error_body(400, &msg));
        resp.off_spec = Some(format!(
            "Kibana {}.{} refuses {msg} ({})",
            v.0,
            v.1,
            why.join("; ")
        ));
        return Err(resp);
    }
    for k in &unknown {
        body.remove(k);
    }
    Ok(unknown)
}

/// How a starting Kibana answers `path`: before its HTTP server is ready every route gets 503
/// `Kibana server is not ready yet` as text with `Retry-After: 30` (the not-ready server,
/// `src/core/server/http/http_service.ts` `runNotReadyServer` in 7.x; the preboot server's
/// catch-all in 8.x+, `core-http-server-internal`). From 8.0 `/api/status` is a preboot route
/// of its own answering 503 with the redacted status `{"status":{"overall":{"level":
/// "unavailable"}}}` (`registerPrebootStatusRoute`, `core-status-server-internal`). Neither
/// asks for credentials.
pub(crate) fn not_ready(v: (u32, u32), path: &str) -> Resp {
    if v >= (8, 0) && path.trim_end_matches('/').ends_with("/api/status") {
        return Resp::json(
            503,
            &json!({"status": {"overall": {"level": "unavailable"}}}),
        )
        .api("get-status");
    }
    let mut r = Resp::json(503, &Value::Null).header("retry-after", "30");
    r.headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case("content-type"));
    r.headers
        .push(("content-type".into(), "text/plain; charset=utf-8".into()));
    r.body = crate::server::RespBody::Bytes(bytes::Bytes::from_static(
        b"Kibana server is not ready yet",
    ));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(v: (u32, u32), b: &mut Map<String, Value>) -> Vec<String> {
        match check_body(v, b) {
            Ok(d) => d,
            Err(e) => panic!("refused: {:?}", e.off_spec),
        }
    }

    fn body(keys: &[&str]) -> Map<String, Value> {
        keys.iter().map(|k| (k.to_string(), json!("x"))).collect()
    }

    #[test]
    fn fields_per_version() {
        let mut b = body(&["name", "setup"]);
        let e = check_body((8, 11), &mut b).unwrap_err();
        assert_eq!(e.status, 400);
        let mut b = body(&["name", "setup", "required_fields"]);
        assert_eq!(
            ok((8, 13), &mut b),
            vec!["required_fields".to_string(), "setup".to_string()]
        );
        assert_eq!(b.len(), 1);
        let mut b = body(&["setup", "investigation_fields"]);
        assert!(ok((8, 14), &mut b).is_empty());
        let mut b = body(&["required_fields"]);
        assert_eq!(ok((8, 14), &mut b).len(), 1);
        assert!(ok((8, 15), &mut body(&["required_fields"])).is_empty());
        assert!(check_body((7, 17), &mut body(&["investigation_fields"])).is_err());
        assert!(!answered((7, 17), "setup") && answered((8, 3), "setup"));
        assert!(!answered((8, 15), "rule_source") && answered((8, 16), "rule_source"));
        assert!(answered((7, 17), "name"));
    }
}
