//! Conditions: kstatus (`Ready`, `Reconciling`, `Stalled`) plus one per part of the install.
//! A condition's `lastTransitionTime` moves only when its status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{Condition, ConditionStatus, State};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const ES_REACHABLE: &str = "ElasticsearchReachable";
pub const LICENSE: &str = "LicenseSufficient";
pub const MODEL: &str = "ModelInstalled";
pub const PIPELINES: &str = "PipelinesInstalled";
/// The Fleet package `dga` (the Fleet route): installed at the wanted version.
pub const PACKAGE: &str = "PackageInstalled";
pub const KIBANA_REACHABLE: &str = "KibanaReachable";
pub const RULES: &str = "RulesInstalled";
pub const VERIFIED: &str = "EnrichmentVerified";
/// Where the enrichment is wired in (hooks, data stream templates, indices), or that Fleet's
/// own DGA enrichment already runs there (reason `FleetEnrichmentPresent`).
pub const WIRED: &str = "EnrichmentWired";
/// The anomaly detection job of the `machine_learning` rule: open with its datafeed started
/// (`True`), or open with the datafeed waiting for data to read (`False`, `WaitingForData`).
/// Absent when no such rule is installed.
pub const JOB: &str = "AnomalyJobRunning";
/// `AnomalyJobRunning` reason while no index holds data the datafeed can read.
pub const WAITING_FOR_DATA: &str = "WaitingForData";
/// `mode: Plan` and `suspend`: `True` while changes are computed but not applied; says which.
pub const CHANGES_PENDING: &str = "ChangesPending";

/// `Reconciling` reason of a pass that is changing the cluster (not of a retry after an error).
pub const PROGRESSING: &str = "Progressing";
/// `Stalled` reason of a suspended object with changes held back.
pub const SUSPENDED: &str = "Suspended";

/// Sets a condition, keeping its transition time when the status is unchanged.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: impl Into<ConditionStatus>,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) {
    let status = status.into();
    // kube-apiserver 1.20 reads an empty string inside a merge-patched list as null and then
    // refuses it as "must be of type string"; a condition always says something anyway.
    let mut message = truncate(message.into(), 1024);
    if message.is_empty() {
        message = reason.to_string();
    }
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            last_transition_time: now.clone(),
            observed_generation: generation,
        }),
    }
}

pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == ConditionStatus::True)
}

fn truncate(s: String, n: usize) -> String {
    if s.len() <= n {
        return s;
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Keeps conditions in a stable order so equal statuses compare equal.
pub fn sort(conditions: &mut [Condition]) {
    const ORDER: [&str; 11] = [
        READY,
        RECONCILING,
        STALLED,
        CHANGES_PENDING,
        ES_REACHABLE,
        LICENSE,
        MODEL,
        PIPELINES,
        VERIFIED,
        KIBANA_REACHABLE,
        RULES,
    ];
    conditions.sort_by_key(|c| {
        ORDER
            .iter()
            .position(|o| *o == c.type_)
            .unwrap_or(ORDER.len())
    });
}

/// The state column, read off the conditions so that it never disagrees with what kstatus,
/// Argo CD and `kubectl wait` read from them. `plan`/`suspend` come from the spec the conditions
/// were computed for.
pub fn state(conditions: &[Condition], deleting: bool, plan: bool, suspend: bool) -> State {
    let stalled = get(conditions, STALLED).filter(|c| c.status == ConditionStatus::True);
    let reconciling = get(conditions, RECONCILING).filter(|c| c.status == ConditionStatus::True);
    if deleting {
        State::Deleting
    } else if let Some(c) = stalled {
        if c.reason == SUSPENDED {
            State::Suspended
        } else {
            State::NeedsAttention
        }
    } else if let Some(c) = reconciling {
        if c.reason == PROGRESSING {
            State::Installing
        } else {
            State::Retrying
        }
    } else if is_true(conditions, READY) {
        if plan {
            State::Planned
        } else if suspend {
            State::Suspended
        } else {
            State::Installed
        }
    } else {
        State::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_change() {
        let t1 = Time("2026-01-01T00:00:00Z".parse().unwrap());
        let t2 = Time("2026-01-02T00:00:00Z".parse().unwrap());
        let mut c = Vec::new();
        set(&mut c, READY, false, "Installing", "a", Some(1), &t1);
        set(&mut c, READY, false, "Conflict", "b", Some(2), &t2);
        assert_eq!(c[0].last_transition_time, t1);
        assert_eq!(c[0].reason, "Conflict");
        set(&mut c, READY, true, "Installed", "c", Some(2), &t2);
        assert_eq!(c[0].last_transition_time, t2);
    }
}
