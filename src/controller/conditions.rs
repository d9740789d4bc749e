//! Conditions derived from what the engine saw and did (pure: no client).

use super::*;

use crate::engine::{self, Plan, observe::Ids};
use crate::status::{self, MODEL, PIPELINES};

/// Suspended or Plan mode: the model and pipeline conditions say what the cluster holds now
/// (a pipeline deleted by hand while suspended is not `Installed`), and what would change.
pub(super) fn held_back_conditions(
    report: &mut Report,
    desired: &engine::Desired,
    owned: &Ids,
    plan: &Plan,
    plan_mode: bool,
) {
    use engine::Action;
    let (reason, lead) = if plan_mode {
        ("Planned", "mode Plan; would")
    } else {
        ("Suspended", "suspended; pending")
    };
    let pending = |want: &dyn Fn(&Action) -> bool| -> Vec<String> {
        plan.actions
            .iter()
            .filter(|a| want(a))
            .map(ToString::to_string)
            .collect()
    };
    let model_pending = pending(&|a| matches!(a, Action::PutModel { .. }));
    let model_in = owned.models.contains(&desired.model_id) && model_pending.is_empty();
    if model_in {
        report.set(
            MODEL,
            true,
            "Installed",
            format!("trained model {}", desired.model_id),
        );
    } else {
        report.set(
            MODEL,
            false,
            reason,
            format!("{lead}: {}", model_pending.join("; ")),
        );
    }
    let pipes_pending =
        pending(&|a| matches!(a, Action::PutPipeline { .. } | Action::PutScript { .. }));
    let pipes_in = pipes_pending.is_empty()
        && desired
            .pipelines
            .iter()
            .all(|(id, _)| owned.pipelines.contains(id))
        && desired
            .scripts
            .iter()
            .all(|(id, _)| owned.scripts.contains(id));
    let ids = desired
        .pipelines
        .iter()
        .map(|(id, _)| id.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if pipes_in {
        report.set(PIPELINES, true, "Installed", format!("pipelines {ids}"));
    } else {
        report.set(
            PIPELINES,
            false,
            reason,
            format!("{lead}: {}", pipes_pending.join("; ")),
        );
    }
}

/// `EnrichmentWired`: where the router is called from, and where Fleet's own DGA enrichment
/// already runs so the operator added nothing (documents are never scored twice).
pub(super) fn wired_condition(
    report: &mut Report,
    desired: &engine::Desired,
    observed: &engine::Observed,
    known: &Ids,
    owned: &Ids,
) {
    if desired.hooks.is_empty() && desired.wire_indices.is_empty() {
        report
            .status
            .conditions
            .retain(|c| c.type_ != status::WIRED);
        return;
    }
    let mut ours: Vec<String> = Vec::new();
    ours.extend(owned.hooks.iter().map(|h| format!("pipeline hook {h}")));
    ours.extend(
        owned
            .templates
            .iter()
            .map(|t| format!("index template {t}")),
    );
    if !owned.indices.is_empty() {
        ours.push(format!("{} indices", owned.indices.len()));
    }
    let ours = if ours.is_empty() {
        "nothing wired by this DgaModel".to_string()
    } else {
        format!("{} call {}", ours.join(", "), desired.router)
    };
    let fleet = engine::diff::fleet_enriched(desired, observed, known);
    if fleet.is_empty() {
        report.set(status::WIRED, true, "Wired", ours);
    } else {
        report.set(
            status::WIRED,
            true,
            "FleetEnrichmentPresent",
            format!(
                "Fleet's DGA enrichment already runs there, so the operator added none of its own (documents are scored once): {}; {ours}",
                fleet.join(", ")
            ),
        );
    }
}

/// The `EnrichmentVerified` condition a canary verdict gives. Unproven (the server cannot run a
/// processor, e.g. the stand-in and painless) is Unknown: nothing proven either way, no failure.
pub(super) fn verified_condition(
    v: &engine::verify::Verdict,
) -> (crate::api::ConditionStatus, &'static str, String) {
    use crate::api::ConditionStatus as S;
    use engine::verify::Verdict;
    match v {
        Verdict::Passed(summary) => (S::True, "Verified", summary.clone()),
        Verdict::Unproven(why) => (
            S::Unknown,
            "Unproven",
            format!("the canary run could not be completed: {why}"),
        ),
        Verdict::Failed(problem) => (S::False, "VerificationFailed", problem.clone()),
    }
}

pub(super) fn record_objects(report: &mut Report, ids: &Ids) {
    let o = &mut report.status.objects;
    o.models = ids.models.iter().cloned().collect();
    o.scripts = ids.scripts.iter().cloned().collect();
    o.pipelines = ids.pipelines.iter().cloned().collect();
    o.wired_indices = ids.indices.iter().cloned().collect();
    o.hooks = ids.hooks.iter().cloned().collect();
    o.wired_templates = ids.templates.iter().cloned().collect();
}
