//! How the three GitOps readers judge a DgaModel, applied to the real object the apiserver
//! returns:
//! - kstatus (Flux's kustomize-controller and helm-controller): the rules of
//!   kubernetes-sigs/cli-utils `pkg/kstatus/status` implemented from its source, see `kstatus`;
//! - Argo CD: `deploy/argocd/health.lua` run by a Lua 5.1 interpreter (Argo CD's gopher-lua is
//!   Lua 5.1), after the rule Argo CD applies before any Lua (see `argocd`);
//! - `kubectl wait --for=condition=Ready`: the real kubectl, checking once (`--timeout=0s`).
#![allow(dead_code)]

use std::path::Path;

use serde_json::Value;

/// kstatus's `Compute` for a custom resource (no built-in "legacy" rule applies to it), from
/// kubernetes-sigs/cli-utils `pkg/kstatus/status`:
/// 1. `generic.go` `checkGenericProperties`: a `metadata.deletionTimestamp` makes it
///    `Terminating`;
/// 2. `generic.go` `checkGeneration`: a `status.observedGeneration` that is present and differs
///    from `metadata.generation` makes it `InProgress` ("LatestGenerationNotObserved");
/// 3. `generic.go`: the first condition, in list order, that is `Reconciling=True` makes it
///    `InProgress`, or `Stalled=True` makes it `Failed`;
/// 4. `status.go` `checkReadyCondition`: a `Ready` condition `True` makes it `Current`,
///    `False` or `Unknown` makes it `InProgress`;
/// 5. `status.go` `Compute`: otherwise `Current` ("Resource is current").
///
/// Returns (status, message).
pub fn kstatus(obj: &Value) -> (String, String) {
    let r = |s: &str, m: &str| (s.to_string(), m.to_string());
    if obj
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty())
    {
        return r("Terminating", "Resource scheduled for deletion");
    }
    if let (Some(g), Some(o)) = (
        obj.pointer("/metadata/generation").and_then(Value::as_i64),
        obj.pointer("/status/observedGeneration")
            .and_then(Value::as_i64),
    ) && g != o
    {
        return r(
            "InProgress",
            &format!("DgaModel generation is {g}, but latest observed generation is {o}"),
        );
    }
    let conditions = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let field = |c: &Value, k: &str| c[k].as_str().unwrap_or_default().to_string();
    for c in &conditions {
        match (field(c, "type").as_str(), field(c, "status").as_str()) {
            ("Reconciling", "True") => return ("InProgress".into(), field(c, "message")),
            ("Stalled", "True") => return ("Failed".into(), field(c, "message")),
            _ => {}
        }
    }
    for c in &conditions {
        if field(c, "type") != "Ready" {
            continue;
        }
        match field(c, "status").as_str() {
            "True" => return r("Current", "Resource is Ready"),
            "False" | "Unknown" => return ("InProgress".into(), field(c, "message")),
            _ => {}
        }
    }
    r("Current", "Resource is current")
}

/// Argo CD's health of the object: gitops-engine `pkg/health/health.go` `GetResourceHealth`
/// answers `Progressing` / "Pending deletion" for an object with a deletionTimestamp before any
/// custom rule; otherwise the shipped Lua rule decides, with the object as the global `obj`
/// (JSON nulls are absent fields, as in Argo CD's conversion). Returns (status, message).
pub fn argocd(obj: &Value) -> (String, String) {
    if obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        return ("Progressing".into(), "Pending deletion".into());
    }
    run_lua(&health_lua(), obj)
}

pub fn health_lua() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd/health.lua"))
        .expect("deploy/argocd/health.lua")
}

/// Runs a health script as Argo CD does: `obj` set, the returned table's status and message.
pub fn run_lua(script: &str, obj: &Value) -> (String, String) {
    use mlua::{LuaSerdeExt, SerializeOptions, Table};
    let lua = mlua::Lua::new();
    let opts = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let value = lua.to_value_with(obj, opts).expect("object to Lua");
    lua.globals().set("obj", value).expect("set obj");
    let hs: Table = lua
        .load(script)
        .set_name("health.lua")
        .eval()
        .expect("health.lua runs");
    let status: String = hs.get("status").expect("hs.status is a string");
    let message: Option<String> = hs.get("message").expect("hs.message");
    (status, message.unwrap_or_default())
}

/// `kubectl wait --for=condition=Ready --timeout=0s`: true when it returns at once (the
/// condition holds), false when it would wait.
pub fn kubectl_wait_ready(namespace: &str, name: &str) -> bool {
    let out = crate::support::kubectl(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=0s",
        "-n",
        namespace,
        &format!("dgamodel/{name}"),
    ]);
    out.status.success()
}

/// One row of the README's health table (between `<!-- health-table -->` markers).
#[derive(Debug, Clone)]
pub struct Row {
    pub key: String,
    pub state: String,
    /// (type, status, reason) as written, e.g. `Stalled=True (SecretNotFound)`.
    pub conditions: Vec<(String, String, Option<String>)>,
    pub kstatus: String,
    pub argocd: String,
    /// `kubectl wait` returns at once.
    pub wait_returns: bool,
}

pub fn readme_table() -> Vec<Row> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme
        .find("<!-- health-table -->")
        .expect("README has <!-- health-table -->");
    let end = readme
        .find("<!-- /health-table -->")
        .expect("README has <!-- /health-table -->");
    let cond = regex::Regex::new(r"([A-Za-z]+)=(True|False|Unknown)(?: \(([A-Za-z]+)\))?").unwrap();
    let word = regex::Regex::new(r"\*\*([A-Za-z]+)\*\*").unwrap();
    let mut rows = Vec::new();
    for line in readme[start..end].lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `key` what | **State** | conditions | **kstatus** | **Argo** | wait |
        if cells.len() < 8 || !cells[1].starts_with('`') {
            continue;
        }
        let key = cells[1].split('`').nth(1).unwrap().to_string();
        let bold = |c: &str| {
            word.captures(c)
                .unwrap_or_else(|| panic!("no **Word** in `{c}` ({key})"))[1]
                .to_string()
        };
        rows.push(Row {
            state: bold(cells[2]),
            conditions: cond
                .captures_iter(cells[3])
                .map(|c| {
                    (
                        c[1].to_string(),
                        c[2].to_string(),
                        c.get(3).map(|m| m.as_str().to_string()),
                    )
                })
                .collect(),
            kstatus: bold(cells[4]),
            argocd: bold(cells[5]),
            wait_returns: match bold(cells[6]).as_str() {
                "returns" => true,
                "waits" => false,
                other => panic!("kubectl wait cell of {key}: {other}"),
            },
            key,
        });
    }
    rows
}

/// Checks the object against its README row: the state column, each listed condition, and what
/// kstatus, Argo CD and `kubectl wait` make of it. Panics naming the difference.
pub fn assert_reads_as(key: &str, namespace: &str, obj: &Value) {
    let rows = readme_table();
    let row = rows
        .iter()
        .find(|r| r.key == key)
        .unwrap_or_else(|| panic!("README health table has no row `{key}`"));
    let name = obj["metadata"]["name"].as_str().unwrap();
    let state = obj.pointer("/status/state").and_then(Value::as_str);
    assert_eq!(
        state,
        Some(row.state.as_str()),
        "{key}: state column; {obj:#}"
    );
    let conditions = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (t, s, reason) in &row.conditions {
        let c = conditions
            .iter()
            .find(|c| c["type"] == t.as_str())
            .unwrap_or_else(|| panic!("{key}: no condition {t}; {obj:#}"));
        assert_eq!(c["status"], s.as_str(), "{key}: {t}; {obj:#}");
        if let Some(r) = reason {
            assert_eq!(c["reason"], r.as_str(), "{key}: {t} reason; {obj:#}");
        }
    }
    let (ks, km) = kstatus(obj);
    assert_eq!(ks, row.kstatus, "{key}: kstatus ({km}); {obj:#}");
    let (ar, am) = argocd(obj);
    assert_eq!(ar, row.argocd, "{key}: Argo CD ({am}); {obj:#}");
    assert!(!am.is_empty(), "{key}: Argo CD health without a message");
    assert_eq!(
        kubectl_wait_ready(namespace, name),
        row.wait_returns,
        "{key}: kubectl wait --for=condition=Ready; {obj:#}"
    );
}
