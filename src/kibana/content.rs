//! Elastic's four DGA detection rules as the operator writes them where Kibana has no prebuilt
//! DGA rules (before 8.9, or a Kibana without the `security_detection_engine` package).
//!
//! Content follows Elastic's rules (elastic/detection-rules `rules/integrations/dga/*.toml` at
//! 14cf530f, ELv2; the facts are recorded with their sources in
//! `tests/standin/fixtures/elastic-dga-content.json`, which the tests compare against): names,
//! queries, index patterns, windows and intervals, `timestamp_override`, severity, risk score,
//! tags and MITRE mapping. Descriptions, the setup text and the investigation guide are ours.
//!
//! The rules go in under the operator's own rule_ids, derived from Elastic's ([`own_rule_id`]),
//! never under Elastic's: those are Elastic prebuilt rule_ids from 8.9, and a custom rule that
//! holds one collides with the prebuilt rule when someone installs it (kibana #180198).

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::version::KibanaFeatures;

/// Elastic's rule_ids (detection-rules; prebuilt rules on Kibana 8.9+).
pub const ELASTIC_PREDICTION: &str = "f3403393-1fd9-4686-8f6e-596c58bc00b4";
pub const ELASTIC_PROBABILITY: &str = "da7f5803-1cd4-42fd-a890-0173ae80ac69";
pub const ELASTIC_SUNBURST: &str = "bcaa15ce-2d41-44d7-a322-918f9db77766";
pub const ELASTIC_ML_HIGH_SUM: &str = "ff0d807d-869b-4a0d-a493-52bc46d2f1b1";

/// Elastic's current rule_ids, in the order the operator lists its rules.
pub const ELASTIC_RULE_IDS: [&str; 4] = [
    ELASTIC_PREDICTION,
    ELASTIC_PROBABILITY,
    ELASTIC_SUNBURST,
    ELASTIC_ML_HIGH_SUM,
];

/// The same rules' ids in the 2020 release and in Fleet dga 0.0.1–1.1.0 (package rules on
/// Kibana 8.0–8.8), mapped to the current ones.
pub const LEGACY_RULE_IDS: [(&str, &str); 4] = [
    ("64116bb2-0f2c-4cf6-9df4-9973452b4d4b", ELASTIC_PREDICTION),
    ("a020dadb-3da2-4252-91e9-b0fc148823e2", ELASTIC_PROBABILITY),
    ("170b35d4-d944-4264-a8ca-3118ae2e1534", ELASTIC_SUNBURST),
    ("997ec71d-bddc-4513-b6f1-193f601fd420", ELASTIC_ML_HIGH_SUM),
];

/// Index patterns of Elastic's query rules, plus Packetbeat's, which the operator wires too.
pub const DEFAULT_INDEX: [&str; 3] = [
    "logs-endpoint.events.*",
    "logs-network_traffic.*",
    "packetbeat-*",
];

/// The current Elastic rule_id a rule_id stands for (itself, or the successor of a legacy id).
pub fn elastic_id(rule_id: &str) -> Option<&'static str> {
    ELASTIC_RULE_IDS
        .iter()
        .find(|id| **id == rule_id)
        .copied()
        .or_else(|| {
            LEGACY_RULE_IDS
                .iter()
                .find(|(old, _)| *old == rule_id)
                .map(|(_, new)| *new)
        })
}

/// The operator's rule_id for Elastic's rule `elastic_id`: a UUID (version 8, RFC 9562
/// "custom") from a sha256 of the Elastic id, so every install and the CLI agree on it.
pub fn own_rule_id(elastic_id: &str) -> String {
    let h = Sha256::digest(format!("dga-operator/rule/{elastic_id}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// The Elastic rule an operator rule_id was derived from.
pub fn elastic_of_own(rule_id: &str) -> Option<&'static str> {
    ELASTIC_RULE_IDS
        .iter()
        .find(|e| own_rule_id(e) == rule_id)
        .copied()
}

fn threat(k: &KibanaFeatures) -> Value {
    let dynamic_resolution = json!({
        "id": "T1568",
        "name": "Dynamic Resolution",
        "reference": "https://attack.mitre.org/techniques/T1568/",
        "subtechnique": [{
            "id": "T1568.002",
            "name": "Domain Generation Algorithms",
            "reference": "https://attack.mitre.org/techniques/T1568/002/"
        }]
    });
    let mut techniques = Vec::new();
    if k.t1071_mapping() {
        techniques.push(json!({
            "id": "T1071",
            "name": "Application Layer Protocol",
            "reference": "https://attack.mitre.org/techniques/T1071/",
            "subtechnique": [{
                "id": "T1071.004",
                "name": "DNS",
                "reference": "https://attack.mitre.org/techniques/T1071/004/"
            }]
        }));
    }
    techniques.push(dynamic_resolution);
    json!([{
        "framework": "MITRE ATT&CK",
        "tactic": {
            "id": "TA0011",
            "name": "Command and Control",
            "reference": "https://attack.mitre.org/tactics/TA0011/"
        },
        "technique": techniques
    }])
}

const REFERENCES: [&str; 3] = [
    "https://www.elastic.co/guide/en/security/current/prebuilt-ml-jobs.html",
    "https://docs.elastic.co/en/integrations/dga",
    "https://www.elastic.co/security-labs/detect-domain-generation-algorithm-activity-with-new-kibana-integration",
];

/// Elastic's tags of the three query rules.
const QUERY_TAGS: [&str; 8] = [
    "Domain: Network",
    "Domain: Endpoint",
    "Data Source: Elastic Defend",
    "Use Case: Domain Generation Algorithm Detection",
    "Rule Type: ML",
    "Rule Type: Machine Learning",
    "Tactic: Command and Control",
    "Resources: Investigation Guide",
];

/// Elastic's tags of the machine-learning rule.
const ML_TAGS: [&str; 7] = [
    "Data Source: Elastic Defend",
    "Data Source: Network Packet Capture",
    "Use Case: Domain Generation Algorithm Detection",
    "Rule Type: ML",
    "Rule Type: Machine Learning",
    "Tactic: Command and Control",
    "Resources: Investigation Guide",
];

const QUERY_SETUP: &str = "## Setup\n\nThis rule reads DNS events that went through the ML-DGA \
enrichment (fields `ml_is_dga.malicious_prediction` and `ml_is_dga.malicious_probability`). \
dga-operator installs the trained model and the ingest pipelines into Elasticsearch and wires \
them into the DNS indices it is given; the pipeline must run on the indices this rule searches.";

const QUERY_NOTE: &str = "## Triage and analysis\n\n### Investigating a DGA verdict\n\
- Look at `dns.question.name` and the host that asked (`host.name`, `source.ip`, \
`process.name`): a browser or a system resolver asking for one odd name is weaker evidence than \
an unknown process asking for many.\n\
- Search the same host's DNS events around the alert for more names the model scored high: \
malware tries many generated domains until one answers.\n\
- Check whether any of the names resolved (`dns.response_code`, `dns.answers`) and whether \
the host then connected to the returned addresses.\n\n\
### False positives\n- Content delivery networks, telemetry and anti-virus services use \
random-looking subdomains; add exceptions for the registered domains you trust.\n\n\
### Response\n- Isolate a host that resolves generated domains and connects to them, block the \
domains at the resolver, and look for the process that made the requests.";

const ML_NOTE: &str = "## Triage and analysis\n\n### Investigating an unusual sum of DGA \
probabilities\n- The anomaly names a `source.ip` whose DNS questions, summed over a 15-minute \
bucket, looked far more generated than its peers'. Open the anomaly in the Anomaly Explorer to \
see the bucket and its influencers.\n- List that host's DNS questions in the bucket with the \
highest `ml_is_dga.malicious_probability`, and the processes that asked.\n\n\
### False positives\n- Hosts that resolve many CDN or telemetry names; resolvers and proxies \
that ask on behalf of many clients.\n\n### Response\n- As for a single DGA verdict: isolate, \
block the domains, find the process.";

fn ml_setup(job: &str) -> String {
    format!(
        "## Setup\n\nThis rule reads the anomaly detection job `{job}` (`high_sum` of \
         `ml_is_dga.malicious_probability` over `source.ip`, 15-minute buckets) over DNS events \
         enriched by the ML-DGA pipeline. dga-operator creates the job and its datafeed unless \
         Fleet's DGA module already did, and keeps them open and started."
    )
}

fn strings(a: &[&str]) -> Value {
    Value::Array(a.iter().map(|s| json!(s)).collect())
}

#[allow(clippy::too_many_arguments)]
fn query_rule(
    k: &KibanaFeatures,
    elastic: &str,
    name: &str,
    description: &str,
    query: &str,
    risk: u8,
    severity: &str,
) -> Value {
    let mut r = json!({
        "rule_id": own_rule_id(elastic),
        "type": "query",
        "language": "kuery",
        "query": query,
        "name": name,
        "description": description,
        "risk_score": risk,
        "severity": severity,
        // Elastic's window: 10 minutes every 5 (the default interval), so each run overlaps
        // the last and late events still match; event.ingested, not the event's own time.
        "from": "now-10m",
        "interval": "5m",
        "timestamp_override": "event.ingested",
        "tags": strings(&QUERY_TAGS),
    });
    shared_fields(&mut r, k, QUERY_NOTE, QUERY_SETUP);
    r
}

/// What every rule carries alike: references, authorship, licence, MITRE mapping, the
/// investigation guide, and `setup` where the Kibana version accepts it.
fn shared_fields(r: &mut Value, k: &KibanaFeatures, note: &str, setup: &str) {
    r["references"] = strings(&REFERENCES);
    r["author"] = json!(["Elastic", "dga-operator"]);
    r["license"] = json!("Elastic License v2");
    r["threat"] = threat(k);
    r["note"] = json!(note);
    if k.setup_field() {
        r["setup"] = json!(setup);
    }
}

/// The four rules for a Kibana of `k`'s version; the machine-learning rule watches `job`.
pub fn builtin_rules(k: &KibanaFeatures, job: &str) -> Vec<Value> {
    let mut ml = json!({
        "rule_id": own_rule_id(ELASTIC_ML_HIGH_SUM),
        "type": "machine_learning",
        "machine_learning_job_id": [job],
        "anomaly_threshold": 70,
        "name": "Potential DGA Activity",
        "description": "The anomaly detection job found a source IP whose DNS questions add up \
            to an unusually high probability of being generated by a domain generation \
            algorithm in a 15-minute bucket: the pattern of malware searching for its command \
            and control server.",
        "risk_score": 21,
        "severity": "low",
        // The job's buckets are 15 minutes and Kibana reads only final anomaly records whose
        // bucket start lies in [from, now]; a bucket is final at least 15 minutes after it
        // starts, so the window must reach back well past one bucket (Elastic: 45m every 15m).
        "from": "now-45m",
        "interval": "15m",
        "tags": strings(&ML_TAGS),
    });
    shared_fields(&mut ml, k, ML_NOTE, &ml_setup(job));
    vec![
        query_rule(
            k,
            ELASTIC_PREDICTION,
            "Machine Learning Detected a DNS Request Predicted to be a DGA Domain",
            "The ML-DGA classifier labelled the domain in a DNS question as generated by a \
             domain generation algorithm, which malware uses to find its command and control \
             server. Lookups of avsvmcloud.com are left to the SUNBURST rule.",
            "ml_is_dga.malicious_prediction:1 and not dns.question.registered_domain:avsvmcloud.com",
            21,
            "low",
        ),
        query_rule(
            k,
            ELASTIC_PROBABILITY,
            "Machine Learning Detected a DNS Request With a High DGA Probability Score",
            "The ML-DGA classifier gave the domain in a DNS question a probability above 0.98 of \
             having been produced by a domain generation algorithm.",
            "ml_is_dga.malicious_probability > 0.98",
            21,
            "low",
        ),
        query_rule(
            k,
            ELASTIC_SUNBURST,
            "Machine Learning Detected DGA activity using a known SUNBURST DNS domain",
            "The ML-DGA classifier flagged a generated-looking subdomain of avsvmcloud.com, the \
             domain the SUNBURST backdoor in trojanised SolarWinds Orion builds encoded victim \
             data in; investigate the asking host at once.",
            "ml_is_dga.malicious_prediction:1 and dns.question.registered_domain:avsvmcloud.com",
            73,
            "high",
        ),
        ml,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_ids_are_uuids_distinct_from_elastics() {
        for e in ELASTIC_RULE_IDS {
            let o = own_rule_id(e);
            assert_eq!(o.len(), 36);
            assert_eq!(&o[14..15], "8", "{o}");
            assert_ne!(o, e);
            assert_eq!(elastic_of_own(&o), Some(e));
            assert!(elastic_id(&o).is_none());
        }
        use crate::kibana::rules::*;
        for (ours, elastic) in [
            (RULE_PREDICTION, ELASTIC_PREDICTION),
            (RULE_PROBABILITY, ELASTIC_PROBABILITY),
            (RULE_SUNBURST, ELASTIC_SUNBURST),
            (RULE_ML_HIGH_SUM, ELASTIC_ML_HIGH_SUM),
        ] {
            assert_eq!(ours, own_rule_id(elastic));
        }
        assert_eq!(
            elastic_id("997ec71d-bddc-4513-b6f1-193f601fd420"),
            Some(ELASTIC_ML_HIGH_SUM)
        );
    }
}
