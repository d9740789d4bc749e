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

/// Fleet's module made this job (Kibana's module setup): used as it is, never taken.
pub fn fleet_made(job: &Value) -> bool {
    job.pointer("/custom_settings/created_by")
        .and_then(Value::as_str)
        == Some(FLEET_CREATED_BY)
}

/// Which job the rule watches, and whether Fleet's module made it (then it is left alone).
#[derive(Debug, Clone, PartialEq)]
pub struct JobChoice {
    pub id: String,
    pub fleet: bool,
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
