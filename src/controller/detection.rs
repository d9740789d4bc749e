//! The detection side of a pass (rules, Elastic's prebuilt rules, the anomaly job), planned and
//! applied by `engine::detection`; here only its inputs from the spec and its conditions.

use super::*;

use crate::api::DgaModel;
use crate::elasticsearch::Elasticsearch;
use crate::engine::{self, Owner};
use crate::error::Error;
use crate::status::{self, JOB, KIBANA_REACHABLE, RULES, WAITING_FOR_DATA};
use crate::target::Target;

/// `AnomalyJobRunning` after a pass that ensured (or glanced at) the job: `True` when its
/// datafeed runs, `False`/`WaitingForData` while Elasticsearch has nothing for it to read (a
/// fresh stack: not an error, Ready stays as the rest of the install says). Fleet's module job
/// is Kibana's to run: no condition.
pub(super) fn job_condition(
    report: &mut Report,
    job: &engine::mljob::JobChoice,
    index: &[String],
    waiting: Option<&str>,
    ctx: &Context,
) {
    if job.fleet {
        report.status.conditions.retain(|c| c.type_ != JOB);
        return;
    }
    let feed = engine::mljob::datafeed_id(&job.id);
    match waiting {
        None => report.set(
            JOB,
            true,
            "Running",
            format!(
                "anomaly detection job {} is open; datafeed {feed} is started",
                job.id
            ),
        ),
        Some(why) => {
            let was_waiting = status::get(&report.status.conditions, JOB)
                .is_some_and(|c| c.reason == WAITING_FOR_DATA);
            let msg = format!(
                "anomaly detection job {} is open; datafeed {feed} waits for DNS data in {}: Elasticsearch refused to start it ({why}); it is started at the first resync (every {}s) after such data arrives",
                job.id,
                index.join(", "),
                ctx.settings.resync.as_secs()
            );
            if !was_waiting {
                report.event(false, WAITING_FOR_DATA, "StartDatafeed", msg.clone());
            }
            report.set(JOB, false, WAITING_FOR_DATA, msg);
        }
    }
}

/// What the detection side is built from: the release's rules (none on the Fleet route, where
/// Elastic's own are installed) and, on the Fleet route, the package's ML module for the job.
pub(super) struct Source<'a> {
    pub(super) rules: &'a [serde_json::Value],
    pub(super) module: Option<&'a str>,
}

/// The Kibana side (the detection rules, and the anomaly job the ML rule needs), planned and
/// applied by the engine's detection part: [`prepare`] observes and diffs, nothing written yet;
/// [`finish`] applies what it planned.
pub(super) struct Prepared {
    client: crate::kibana::KibanaClient,
    desired: engine::detection::Desired,
    plan: engine::detection::Plan,
    enable_new: bool,
    wanted: bool,
    space: String,
    kibana_version: String,
}

/// Observes and diffs the detection side (Kibana's version and what it offers, the rules, the
/// job). `None`: nothing to apply (no Kibana known, or suspended / `mode: Plan`, whose plan is
/// reported here). What is in the way (a rule, the job) is returned as [`Error::Conflict`]
/// before anything is written, in every mode.
#[allow(clippy::too_many_arguments)]
pub(super) async fn prepare(
    obj: &DgaModel,
    ctx: &Context,
    target: &Target,
    source: &Source<'_>,
    es: &Elasticsearch,
    owner: &Owner,
    marker: &engine::Marker,
    glanced: bool,
    report: &mut Report,
) -> Result<Option<Prepared>, Error> {
    use crate::kibana::{self, KibanaClient};
    use engine::detection::{self, JobLook, Recorded};
    let spec = obj.spec.rules.clone().unwrap_or_default();
    let settings = detection::Settings {
        space: spec.space.clone().unwrap_or_else(|| "default".into()),
        wanted: spec.enabled.unwrap_or(true),
        selected: spec.rule_ids.clone(),
        index: spec
            .index
            .clone()
            .unwrap_or_else(kibana::rules::default_index),
        enable_new: spec.enable_new_rules.unwrap_or(true),
    };
    let space = settings.space.clone();
    let Some(kb) = &target.kibana else {
        report.status.rules = None;
        if spec.enabled == Some(true) {
            let e = Error::InvalidSpec(
                "spec.rules.enabled is true but no Kibana is known: set spec.kibanaRef (ECK) or add `kibana-url` to the cluster Secret".into(),
            );
            report.set(RULES, false, "NoKibana", e.to_string());
            return Err(e);
        }
        report.set(
            RULES,
            false,
            "NoKibana",
            "no Kibana known (set spec.kibanaRef to an ECK Kibana, or add `kibana-url` to the cluster Secret); rules not installed",
        );
        return Ok(None);
    };
    let http = kb.http_client(ctx.settings.request_timeout)?;
    let client = KibanaClient::new(http, &kb.url, kb.auth.clone());
    // Kibana's version decides which fields its rules accept and which job Elastic ships
    // (cached like the cluster's, so a glance pass rarely asks again).
    let kstatus = kibana_status(ctx, &client, &kb.cache_key(), report).await?;
    let features = detection::features(&kstatus.version)?;
    let mut desired = detection::build(source.rules, owner, marker, &settings, features)
        .inspect_err(|e| report.set(RULES, false, e.reason(), e.to_string()))?;
    desired.module = source.module.map(str::to_string);
    // A glance that checked the job's tasks proved it open and fed.
    let checked = glanced && report.settle.as_ref().is_some_and(|s| s.job);
    let look = match report.status.objects.jobs.first() {
        Some(id) if checked => JobLook::Proven(id.clone()),
        _ => JobLook::Read,
    };
    // A rule, prebuilt rule, job or datafeed created again where the status records them
    // installed was removed by hand: a repair, counted and reported as one.
    let same_space = report.status.objects.rules_space.as_deref() == Some(space.as_str());
    let recorded = Recorded {
        rules: same_space,
        prebuilt: if same_space {
            report.status.objects.prebuilt_rules.clone()
        } else {
            Vec::new()
        },
        jobs: report.status.objects.jobs.clone(),
    };
    // What Kibana offers of Elastic's rules: asked on every full pass, reused from the cache on
    // a quiet resync (one Kibana read per resync stays one).
    let offer_key = format!("{} prebuilt {space}", kb.cache_key());
    let known = match ctx.cached(&offer_key) {
        Some(CachedInfo::Prebuilt(a)) if glanced => Some(a),
        _ => None,
    };
    let overwrite = obj.spec.overwrite;
    let plan = detection::plan(&client, es, &desired, known, look, &recorded, overwrite).await?;
    ctx.remember(offer_key, CachedInfo::Prebuilt(plan.route.offer.clone()));
    if !plan.conflicts.is_empty() {
        let e = Error::Conflict(plan.conflict_details().join("; "));
        report.set(RULES, false, "Conflict", e.to_string());
        return Err(e);
    }
    if let Some(c) = &plan.job_conflict {
        return Err(Error::Conflict(c.clone()));
    }
    let suspended = obj.spec.suspend || obj.spec.mode == crate::api::Mode::Plan;
    if suspended {
        if let Some(job) = &plan.job {
            job_condition(report, job, &plan.index, None, ctx);
            if let Some(s) = report.settle.as_mut() {
                s.job = true;
            }
        }
        let done = plan.lines();
        let plan_mode = obj.spec.mode == crate::api::Mode::Plan;
        let (reason, msg) = match (plan_mode, done.is_empty()) {
            (true, true) => ("InSync", "mode Plan; rules are current".to_string()),
            (true, false) => ("Planned", format!("mode Plan; would: {}", done.join("; "))),
            (false, true) => ("Suspended", "suspended; rules are current".to_string()),
            (false, false) => (
                "Suspended",
                format!("suspended; pending: {}", done.join("; ")),
            ),
        };
        report.set(RULES, done.is_empty(), reason, msg);
        if let Some(p) = report.suspended.as_mut() {
            p.detection = Some(plan);
        }
        return Ok(None);
    }
    Ok(Some(Prepared {
        client,
        desired,
        plan,
        enable_new: settings.enable_new,
        wanted: settings.wanted,
        space,
        kibana_version: kstatus.version.clone(),
    }))
}

/// Applies what [`prepare`] planned, then the conditions, the record and the events.
pub(super) async fn finish(
    ctx: &Context,
    es: &Elasticsearch,
    p: Prepared,
    report: &mut Report,
) -> Result<(), Error> {
    use engine::detection;
    let Prepared {
        client,
        desired,
        plan,
        enable_new,
        wanted,
        space,
        kibana_version,
    } = p;
    let in_kibana: Vec<String> = plan
        .steps
        .iter()
        .filter(|s| s.action.service() == crate::error::Service::Kibana)
        .map(ToString::to_string)
        .collect();
    if !in_kibana.is_empty() {
        report
            .progress(ctx, format!("applying in Kibana: {}", in_kibana.join("; ")))
            .await;
    }
    let (applied, failed) =
        match detection::apply(Some(&client), es, &desired, &plan, enable_new).await {
            Ok(a) => (a, None),
            Err((a, f)) => (a, Some(f)),
        };
    if let Some(r) = &applied.prebuilt_record {
        // Recorded with its space at once: a pass that fails after installing (the enable
        // step) must leave the next one knowing these installs are ours.
        if !r.is_empty() {
            report.status.objects.rules_space = Some(space.clone());
        }
        report.status.objects.prebuilt_rules = r.clone();
    }
    if let Some(f) = failed {
        if f.in_rules {
            report.set(RULES, false, f.error.reason(), f.error.to_string());
        }
        return Err(f.error);
    }
    let done: Vec<String> = applied.done.iter().map(ToString::to_string).collect();
    let repairs = applied.done.iter().filter(|s| s.repair).count();
    match &plan.job {
        Some(job) => {
            job_condition(report, job, &plan.index, applied.waiting.as_deref(), ctx);
            // A datafeed waiting for data is not settled: the next resync tries to start it
            // again (one refused `_start`, no backoff).
            if let Some(s) = report.settle.as_mut() {
                s.job = applied.waiting.is_none();
            }
            // Only a job this DgaModel holds is recorded (and removed on delete); Fleet's is not.
            report.status.objects.jobs = if job.fleet {
                Vec::new()
            } else {
                vec![job.id.clone()]
            };
        }
        None => {
            report.status.objects.jobs.clear();
            report.status.conditions.retain(|c| c.type_ != JOB);
        }
    }
    report.status.objects.rules_space =
        (wanted || !report.status.objects.prebuilt_rules.is_empty()).then(|| space.clone());
    report.status.rules = Some(format!("{}/{}", plan.rules, plan.rules));
    if !done.is_empty() {
        report.applied_something = true;
        ctx.metrics.drift_repaired(repairs); // metrics
        let reason = if repairs > 0 {
            "DriftRepaired"
        } else {
            "RulesSynced"
        };
        report.event(false, reason, "Apply", done.join("; "));
    }
    let msg = if wanted {
        let note = match &plan.job {
            Some(job) => format!(
                "; the machine_learning rule watches {}{}",
                job.id,
                if job.fleet {
                    " (Fleet's DGA module job)"
                } else {
                    ""
                }
            ),
            None => " (the machine_learning rule is not selected: no anomaly job)".to_string(),
        };
        plan.route_message(&kibana_version) + &note
    } else {
        "rules disabled by spec.rules.enabled".to_string()
    };
    report.set(
        RULES,
        true,
        if wanted { "Installed" } else { "Disabled" },
        msg,
    );
    Ok(())
}

/// Kibana's version and health, cached like the cluster's, reported as a condition.
pub(super) async fn kibana_status(
    ctx: &Context,
    client: &crate::kibana::KibanaClient,
    key: &str,
    report: &mut Report,
) -> Result<crate::kibana::KibanaStatus, Error> {
    let status = match ctx.cached(key) {
        Some(CachedInfo::Kibana(s)) => Ok(s),
        _ => client
            .status()
            .await
            .inspect(|s| ctx.remember(key.to_string(), CachedInfo::Kibana(s.clone()))),
    };
    match status {
        Ok(s) => {
            report.set(
                KIBANA_REACHABLE,
                true,
                "Reachable",
                format!("Kibana {} ({})", s.version, s.level),
            );
            Ok(s)
        }
        Err(e) => {
            report.set(KIBANA_REACHABLE, false, e.reason(), e.to_string());
            report.set(RULES, false, e.reason(), format!("Kibana: {e}"));
            Err(e)
        }
    }
}
