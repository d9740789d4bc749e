//! The anomaly detection job (and its datafeed) behind the package's `machine_learning` rule:
//! `high_sum(ml_is_dga.malicious_probability) over source.ip`, 15 minute buckets, fed from the
//! documents the enrichment scored.

use serde_json::{Value, json};

use super::{Holder, MARKER_KEY, Marker, Owner, holder};
use crate::elasticsearch::Elasticsearch;
use crate::error::Error;

pub const JOB_ID: &str = "dga_high_sum_probability";

pub fn datafeed_id(job: &str) -> String {
    format!("datafeed-{job}")
}

pub fn job_body(marker: &Marker) -> Value {
    json!({
        "description": "DGA: high sum of malicious probability per source IP (installed by dga-operator)",
        "groups": ["dga-operator"],
        "analysis_config": {
            "bucket_span": "15m",
            "detectors": [{
                "function": "high_sum",
                "field_name": "ml_is_dga.malicious_probability",
                "over_field_name": "source.ip",
                "detector_description": "high_sum(ml_is_dga.malicious_probability) over source.ip"
            }],
            "influencers": ["source.ip"]
        },
        "analysis_limits": {"model_memory_limit": "64mb"},
        "data_description": {"time_field": "@timestamp"},
        "custom_settings": {MARKER_KEY: marker}
    })
}

pub fn datafeed_body(job: &str, index: &[String]) -> Value {
    json!({
        "job_id": job,
        "indices": index,
        "query": {"bool": {"filter": [{"exists": {"field": "ml_is_dga.malicious_probability"}}]}}
    })
}

/// What ensuring the job did, for events.
#[derive(Debug, Default, PartialEq)]
pub struct JobChanges {
    pub done: Vec<String>,
}

/// Creates, opens and starts what is missing; repairs a datafeed whose indices changed.
/// `dry_run` reports without writing. A job with this id that is not ours is a conflict.
pub async fn ensure(
    es: &Elasticsearch,
    owner: &Owner,
    marker: &Marker,
    index: &[String],
    overwrite: bool,
    dry_run: bool,
) -> Result<JobChanges, Error> {
    let mut ch = JobChanges::default();
    let feed = datafeed_id(JOB_ID);
    match es.get_job(JOB_ID).await? {
        None => {
            ch.done
                .push(format!("create anomaly detection job {JOB_ID}"));
            if !dry_run {
                es.put_job(JOB_ID, &job_body(marker)).await?;
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
                        "anomaly detection job {JOB_ID} is managed by DgaModel {o}"
                    )));
                }
                Holder::Foreign => {
                    return Err(Error::Conflict(format!(
                        "anomaly detection job {JOB_ID} exists and was not installed by this DgaModel (set overwrite: true to use it)"
                    )));
                }
            }
            // The marker names the release: after an upgrade (or a takeover) the job says
            // which release it serves, like every other object.
            if Marker::from_meta(job.get("custom_settings")).as_ref() != Some(marker) {
                ch.done.push(format!(
                    "mark anomaly detection job {JOB_ID} as installed with release {}",
                    marker.release
                ));
                if !dry_run {
                    let update = json!({"custom_settings": {MARKER_KEY: marker}});
                    es.update_job(JOB_ID, &update).await?;
                }
            }
        }
    }
    let want_feed = datafeed_body(JOB_ID, index);
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
        ch.done.push(format!("open job {JOB_ID}"));
        ch.done.push(format!("start datafeed {feed}"));
        return Ok(ch);
    }
    if es.job_state(JOB_ID).await?.as_deref() != Some("opened") {
        ch.done.push(format!("open job {JOB_ID}"));
        if !dry_run {
            es.open_job(JOB_ID).await?;
        }
    }
    if es.datafeed_state(&feed).await?.as_deref() != Some("started") {
        ch.done.push(format!("start datafeed {feed}"));
        if !dry_run {
            es.start_datafeed(&feed).await?;
        }
    }
    Ok(ch)
}

/// Stops and deletes the datafeed and the job when they are ours.
pub async fn remove(es: &Elasticsearch, owner: &Owner) -> Result<Vec<String>, Error> {
    let Some(job) = es.get_job(JOB_ID).await? else {
        return Ok(vec![]);
    };
    if holder(
        Marker::from_meta(job.get("custom_settings")).as_ref(),
        owner,
    ) != Holder::Us
    {
        return Ok(vec![]);
    }
    let feed = datafeed_id(JOB_ID);
    es.stop_datafeed(&feed).await?;
    es.delete_datafeed(&feed).await?;
    es.close_job(JOB_ID).await?;
    es.delete_job(JOB_ID).await?;
    Ok(vec![
        format!("datafeed {feed}"),
        format!("anomaly detection job {JOB_ID}"),
    ])
}
