//! `dga-bench`: helpers for `tests/bench/run.sh` (TEST STAND-IN tooling, not part of the
//! operator). Built as a binary of the `dga-standin` crate.
//!
//!   dga-bench release --tag TAG --model-bytes N --encoding plain|compressed --out DIR
//!       writes DIR/TAG.zip (+ manifest) with a generated model of about N definition bytes and
//!       DIR/put-body.json (the model file as a PUT body, for the curl baseline); prints
//!       ZIP=, SHA256=, MODEL_ID=, MODEL_ENTRY=, DEFINITION_BYTES=.
//!   dga-bench multi --count N --tag TAG [--extra-tags K] [--slow I --slow-ms MS]
//!       starts N stand-ins in this process (release TAG, and ML-DGA-20240102-1..K, published on
//!       stand-in 0's GitHub; stand-in I delays every request by MS),
//!       prints one `CLUSTER i ES_URL KIBANA_URL` line each, then `GITHUB_URL=` and `ADMIN_URL=`
//!       and serves an aggregated admin API: `GET /summary` (request counts over all
//!       stand-ins, by service, read/write and API), `DELETE /requests`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dga_standin::bundle::{BundleSpec, Layout, write_release};
use dga_standin::model::ModelEncoding;
use dga_standin::{Fault, FaultAction, Service, Standin, StandinConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("release") => release(&args),
        Some("multi") => multi(&args).await,
        _ => Err("usage: dga-bench release ... | dga-bench multi ... (see the source)".into()),
    }
}

fn release(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let tag = arg(args, "--tag").ok_or("--tag")?;
    let bytes: usize = arg(args, "--model-bytes").ok_or("--model-bytes")?.parse()?;
    let out = PathBuf::from(arg(args, "--out").ok_or("--out")?);
    let mut spec = BundleSpec::small(&tag, Layout::V2).with_model_bytes(bytes);
    spec.encoding = match arg(args, "--encoding").as_deref() {
        Some("plain") => ModelEncoding::Plain,
        Some("compressed") | None => ModelEncoding::Compressed,
        Some(o) => return Err(format!("unknown encoding {o}").into()),
    };
    let rel = write_release(&spec, &out)?;
    // The model entry, streamed out of the zip: the curl baseline PUTs exactly these bytes.
    let entry = rel
        .files
        .iter()
        .find(|f| f.name.ends_with("_model.json"))
        .ok_or("no model entry")?;
    let mut ar = zip::ZipArchive::new(std::fs::File::open(&rel.zip_path)?)?;
    let mut e = ar.by_name(&entry.path)?;
    let mut body = std::io::BufWriter::new(std::fs::File::create(out.join("put-body.json"))?);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = e.read(&mut buf)?;
        if n == 0 {
            break;
        }
        body.write_all(&buf[..n])?;
    }
    body.flush()?;
    println!("ZIP={}", rel.zip_path.display());
    println!("SHA256={}", rel.zip_sha256);
    println!("MODEL_ID={}", rel.model_id);
    println!("MODEL_ENTRY={}", entry.path);
    println!("MODEL_ENTRY_BYTES={}", entry.size);
    println!("DEFINITION_BYTES={}", rel.definition_bytes);
    Ok(())
}

async fn multi(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let count: usize = arg(args, "--count").unwrap_or("200".into()).parse()?;
    let tag = arg(args, "--tag").ok_or("--tag")?;
    let slow: Option<usize> = arg(args, "--slow").map(|s| s.parse()).transpose()?;
    let slow_ms: u64 = arg(args, "--slow-ms").unwrap_or("2000".into()).parse()?;
    // `--fleet VERSION`: each stack's Kibana has a registry with Fleet's `dga` package at that
    // version and Elastic's prebuilt DGA rules (the Fleet route).
    let fleet = arg(args, "--fleet");
    let out = std::env::temp_dir().join(format!("dga-bench-multi-{}", std::process::id()));
    let mut standins = Vec::with_capacity(count);
    for _ in 0..count {
        let cfg = match &fleet {
            Some(v) => StandinConfig {
                fleet_packages: vec![format!("dga-{v}")],
                kibana_prebuilt_dga: true,
                ..StandinConfig::default()
            },
            None => StandinConfig::default(),
        };
        let s = Standin::start(cfg).await?;
        // A stack running DGA detection has DNS data: its datafeed starts, so the steady state
        // measured is a settled one, not a job waiting for data (which retries `_start` at
        // every resync by design; `BENCH_NO_DNS_DATA=1` measures that instead).
        if std::env::var_os("BENCH_NO_DNS_DATA").is_none() {
            s.put_index_settings("logs-network_traffic.dns-default", serde_json::json!({}));
            // And Packetbeat 8's data stream, wired through its backing index and its template
            // (the resync glance reads both in its cluster state read).
            s.put_index_template(
                "packetbeat-8.17.0",
                serde_json::json!({"index_patterns": ["packetbeat-8.17.0"], "data_stream": {},
                    "priority": 150, "template": {"settings": {"index": {"number_of_shards": "1"}}}}),
            );
            s.create_data_stream("packetbeat-8.17.0")?;
        }
        standins.push(s);
    }
    let rel = write_release(&BundleSpec::small(&tag, Layout::V2), &out)?;
    standins[0].publish_release_files(
        "elastic/detection-rules",
        &tag,
        vec![
            (format!("{tag}.zip"), rel.zip_path.clone()),
            (format!("manifest-{tag}.json"), rel.manifest_path.clone()),
        ],
    )?;
    // Small releases for tag bumps (reaction benchmark): ML-DGA-20240102-1 .. -K.
    let extra: usize = arg(args, "--extra-tags").unwrap_or("0".into()).parse()?;
    for k in 1..=extra {
        let t = format!("ML-DGA-20240102-{k}");
        let r = write_release(&BundleSpec::small(&t, Layout::V2), &out.join(&t))?;
        standins[0].publish_release_files(
            "elastic/detection-rules",
            &t,
            vec![
                (format!("{t}.zip"), r.zip_path.clone()),
                (format!("manifest-{t}.json"), r.manifest_path.clone()),
            ],
        )?;
    }
    if let Some(i) = slow {
        standins[i].add_fault(Fault {
            service: None,
            method: None,
            path_regex: ".*".into(),
            nth: 1,
            times: u32::MAX,
            action: FaultAction::Delay(Duration::from_millis(slow_ms)),
        });
    }
    let standins = Arc::new(standins);
    for (i, s) in standins.iter().enumerate() {
        println!("CLUSTER {i} {} {}", s.es_url(), s.kibana_url());
    }
    println!("GITHUB_URL={}", standins[0].github_url());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("ADMIN_URL=http://{}", l.local_addr()?);
    std::io::stdout().flush()?;
    let serve = async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                continue;
            };
            let st = standins.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req);
                let first = line.lines().next().unwrap_or("").to_string();
                let body = if first.starts_with("GET /summary") {
                    summary(&st).to_string()
                } else if first.starts_with("DELETE /requests") {
                    for s in st.iter() {
                        s.clear_requests();
                    }
                    "{\"acknowledged\":true}".into()
                } else {
                    "{\"error\":\"unknown route\"}".into()
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(resp.as_bytes()).await;
            });
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = serve => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

fn summary(st: &[Standin]) -> serde_json::Value {
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_api: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_cluster_es_reads = Vec::new();
    let mut per_cluster_kb_reads = Vec::new();
    for s in st {
        let (mut es_r, mut kb_r) = (0u64, 0u64);
        for r in s.requests() {
            let svc = match r.service {
                Service::Es => "es",
                Service::Kibana => "kibana",
                Service::GitHub => "github",
            };
            let rw = if r.is_write() { "writes" } else { "reads" };
            *totals.entry(format!("{svc}_{rw}")).or_default() += 1;
            if r.off_spec.is_some() {
                *totals.entry("off_spec".into()).or_default() += 1;
            }
            match (r.service, r.is_write()) {
                (Service::Es, false) => es_r += 1,
                (Service::Kibana, false) => kb_r += 1,
                _ => {}
            }
            let api = r.api.clone().unwrap_or_else(|| r.path.clone());
            *by_api
                .entry(format!("{svc} {} {api}", r.method))
                .or_default() += 1;
        }
        per_cluster_es_reads.push(es_r);
        per_cluster_kb_reads.push(kb_r);
    }
    serde_json::json!({
        "clusters": st.len(),
        "totals": totals,
        "by_api": by_api,
        "max_es_reads_per_cluster": per_cluster_es_reads.iter().max(),
        "max_kibana_reads_per_cluster": per_cluster_kb_reads.iter().max(),
    })
}
