//! The anomaly detection job (and its datafeed) behind the package's `machine_learning` rule,
//! as Elastic's Fleet module `dga-ml` ships it for the stack version: before 9.4 job
//! `dga_high_sum_probability` (elastic/integrations `packages/dga/kibana/ml_module/dga-ml.json`
//! at 3da17216), from 9.4 `dga_high_sum_probability_ea` (Fleet dga 3.x; the fields below are
//! those of the job that module creates, recorded in
//! `tests/standin/fixtures/elastic-dga-content.json` with their source). A job of Fleet's module
//! already in the cluster (`custom_settings.created_by: ml-module-dga`) is used as it is, not
//! duplicated.

use serde_json::{Value, json};

use super::{Holder, MARKER_KEY, Marker, Owner, holder};
use crate::elasticsearch::Elasticsearch;
use crate::error::Error;
use crate::kibana::version::KibanaFeatures;

/// Elastic's job before 9.4.
pub const JOB_ID: &str = "dga_high_sum_probability";
/// Elastic's job from 9.4 (Entity Analytics influencers, Beats' own lookups excluded).
pub const JOB_ID_EA: &str = "dga_high_sum_probability_ea";
/// `custom_settings.created_by` of the jobs Kibana's module setup creates from Fleet's module.
pub const FLEET_CREATED_BY: &str = "ml-module-dga";

pub fn datafeed_id(job: &str) -> String {
    format!("datafeed-{job}")
}

/// Elastic's job id for a stack of this version.
pub fn job_id_for(k: &KibanaFeatures) -> &'static str {
    if k.ea_job() { JOB_ID_EA } else { JOB_ID }
}

fn ea(job: &str) -> bool {
    job == JOB_ID_EA
}

pub fn job_body(job: &str, marker: &Marker) -> Value {
    let mut body = json!({
        "description": "Detects potential DGA (domain generation algorithm) activity: a source IP \
            whose DNS requests have a high summed probability of being generated (installed by \
            dga-operator)",
        "groups": ["security", "dns", "packetbeat", "windows"],
        "analysis_config": {
            "bucket_span": "15m",
            "detectors": [{
                "function": "high_sum",
                "field_name": "ml_is_dga.malicious_probability",
                "over_field_name": "source.ip",
                "detector_description": "high probability of DGA activity"
            }],
            "influencers": ["source.ip"]
        },
        // The 2.x module sets no limit (Kibana estimates one at module setup); the 9.4 module's
        // 11mb is as good a bound for the same detector.
        "analysis_limits": {"model_memory_limit": "11mb"},
        "data_description": {"time_field": "@timestamp", "time_format": "epoch_ms"},
        "custom_settings": {MARKER_KEY: marker}
    });
    if ea(job) {
        body["groups"] = json!(["security", "dga"]);
        body["analysis_config"]["influencers"] = json!(["source.ip", "host.name", "host.id"]);
    }
    body
}

/// Elastic's datafeed query for `job`: documents the enrichment scored; from 9.4 without the
/// DNS lookups of Elastic Agent, Endpoint and the Beats themselves.
pub fn datafeed_query(job: &str) -> Value {
    let scored = json!([{"exists": {"field": "ml_is_dga.malicious_probability"}}]);
    if !ea(job) {
        return json!({"bool": {"filter": scored}});
    }
    json!({"bool": {
        "filter": scored,
        "must_not": [{"terms": {"process.name": [
            "elastic-agent.exe", "elastic-agent", "elastic-endpoint.exe", "elastic-endpoint",
            "metricbeat.exe", "metricbeat", "filebeat.exe", "filebeat",
            "packetbeat.exe", "packetbeat", "winlogbeat.exe", "winlogbeat"
        ]}}]
    }})
}

pub fn datafeed_body(job: &str, index: &[String]) -> Value {
    json!({
        "job_id": job,
        "indices": index,
        "query": datafeed_query(job)
    })
}

fn fleet_made(job: &Value) -> bool {
    job.pointer("/custom_settings/created_by")
        .and_then(Value::as_str)
        == Some(FLEET_CREATED_BY)
}

/// The job the machine-learning rule should watch: Fleet's module job when one exists (either
/// id; the version's first), else the version's id, which the operator creates or holds.
pub async fn choose(es: &Elasticsearch, k: &KibanaFeatures) -> Result<JobChoice, Error> {
    let first = job_id_for(k);
    let other = if first == JOB_ID { JOB_ID_EA } else { JOB_ID };
    let have = es.get_job(first).await?;
    if let Some(j) = &have {
        return Ok(JobChoice {
            id: first.to_string(),
            fleet: fleet_made(j),
        });
    }
    if let Some(j) = es.get_job(other).await?
        && fleet_made(&j)
    {
        return Ok(JobChoice {
            id: other.to_string(),
            fleet: true,
        });
    }
    Ok(JobChoice {
        id: first.to_string(),
        fleet: false,
    })
}

/// Which job the rule watches, and whether Fleet's module made it (then it is left alone).
#[derive(Debug, Clone, PartialEq)]
pub struct JobChoice {
    pub id: String,
    pub fleet: bool,
}

/// What ensuring the job did, for events.
#[derive(Debug, Default, PartialEq)]
pub struct JobChanges {
    pub done: Vec<String>,
    /// The datafeed could not start for want of data (Elasticsearch's reason): the job is
    /// open and waits; the next pass tries again.
    pub waiting: Option<String>,
}

/// Creates, opens and starts what is missing; repairs a datafeed whose indices changed.
/// `dry_run` reports without writing. A job with this id that is not ours is a conflict.
pub async fn ensure(
    es: &Elasticsearch,
    owner: &Owner,
    marker: &Marker,
    job: &JobChoice,
    index: &[String],
    overwrite: bool,
    dry_run: bool,
) -> Result<JobChanges, Error> {
    let mut ch = JobChanges::default();
    if job.fleet {
        // Fleet's module job: Kibana's ML job settings own its datafeed and state.
        return Ok(ch);
    }
    let job_id = job.id.as_str();
    let feed = datafeed_id(job_id);
    match es.get_job(job_id).await? {
        None => {
            ch.done
                .push(format!("create anomaly detection job {job_id}"));
            if !dry_run {
                es.put_job(job_id, &job_body(job_id, marker)).await?;
            }
        }
        Some(job) => {
            let h = holder(
                Marker::from_meta(job.get("custom_settings")).as_ref(),
                owner,
            );
            match h {
                Holder::Us => {}
                Holder::Foreign if overwrite => {}
                Holder::OtherOwner(o) => {
                    return Err(Error::Conflict(format!(
                        "anomaly detection job {job_id} is managed by DgaModel {o}"
                    )));
                }
                Holder::Foreign => {
                    return Err(Error::Conflict(format!(
                        "anomaly detection job {job_id} exists and was not installed by this DgaModel (set overwrite: true to use it)"
                    )));
                }
            }
            // The marker names the release: after an upgrade (or a takeover) the job says
            // which release it serves, like every other object.
            if Marker::from_meta(job.get("custom_settings")).as_ref() != Some(marker) {
                ch.done.push(format!(
                    "mark anomaly detection job {job_id} as installed with release {}",
                    marker.release
                ));
                if !dry_run {
                    // `_update` replaces the whole map: keep what else it holds (custom_urls).
                    let mut settings = job
                        .get("custom_settings")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default();
                    settings.insert(MARKER_KEY.into(), json!(marker));
                    let update = json!({"custom_settings": settings});
                    es.update_job(job_id, &update).await?;
                }
            }
        }
    }
    let want_feed = datafeed_body(job_id, index);
    match es.get_datafeed(&feed).await? {
        None => {
            ch.done.push(format!("create datafeed {feed}"));
            if !dry_run {
                es.put_datafeed(&feed, &want_feed).await?;
            }
        }
        Some(have)
            if have.get("indices") != want_feed.get("indices")
                || have.get("query") != want_feed.get("query") =>
        {
            ch.done.push(format!(
                "recreate datafeed {feed} (indices or query changed)"
            ));
            if !dry_run {
                es.stop_datafeed(&feed).await?;
                es.delete_datafeed(&feed).await?;
                es.put_datafeed(&feed, &want_feed).await?;
            }
        }
        Some(_) => {}
    }
    if dry_run && !ch.done.is_empty() {
        // What does not exist yet cannot be open or started: say what apply will then do, in
        // the same words.
        ch.done.push(format!("open job {job_id}"));
        ch.done.push(format!("start datafeed {feed}"));
        return Ok(ch);
    }
    if es.job_state(job_id).await?.as_deref() != Some("opened") {
        ch.done.push(format!("open job {job_id}"));
        if !dry_run {
            es.open_job(job_id).await?;
        }
    }
    if es.datafeed_state(&feed).await?.as_deref() != Some("started") {
        if dry_run {
            ch.done.push(format!("start datafeed {feed}"));
        } else {
            match es.start_datafeed(&feed).await? {
                None => ch.done.push(format!("start datafeed {feed}")),
                // Not done, and not an error: a fresh stack has no DNS data yet.
                Some(reason) => ch.waiting = Some(reason),
            }
        }
    }
    Ok(ch)
}

/// Stops and deletes the datafeeds and jobs (either id) that are ours.
pub async fn remove(es: &Elasticsearch, owner: &Owner) -> Result<Vec<String>, Error> {
    let mut out = remove_one(es, owner, JOB_ID).await?;
    out.extend(remove_one(es, owner, JOB_ID_EA).await?);
    Ok(out)
}

async fn remove_one(es: &Elasticsearch, owner: &Owner, job_id: &str) -> Result<Vec<String>, Error> {
    let Some(job) = es.get_job(job_id).await? else {
        return Ok(vec![]);
    };
    if holder(
        Marker::from_meta(job.get("custom_settings")).as_ref(),
        owner,
    ) != Holder::Us
    {
        return Ok(vec![]);
    }
    let feed = datafeed_id(job_id);
    es.stop_datafeed(&feed).await?;
    es.delete_datafeed(&feed).await?;
    es.close_job(job_id).await?;
    es.delete_job(job_id).await?;
    Ok(vec![
        format!("datafeed {feed}"),
        format!("anomaly detection job {job_id}"),
    ])
}
