//! Bad input: broken releases, bad Secrets and unsuitable clusters each get their condition and
//! reason, and nothing reaches Elasticsearch or Kibana. Messages and events never carry the
//! credentials involved.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dga_operator::controller::Settings;
use dga_standin::bundle::{self, BundleSpec, Defect, Layout};
use dga_standin::{Auth, Standin, StandinConfig};
use serde_json::{Value, json};
use support::{Env, REPO};

const WRONG_PASSWORD: &str = "Wr0ng-Pa55-for-bad-input-1d9c";
const PASSWORD: &str = "Bad-Input-Pa55w0rd-77aa";
const GOOD_KEY_SECRET: &str = "good-api-key-secret-bad-input";
const EXPIRED_KEY_SECRET: &str = "expired-api-key-secret-bad-input";

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn settings() -> Settings {
    Settings {
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_secs(2),
        resync: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

/// Every entry of a zip, in order.
fn entries(zip_path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut ar = zip::ZipArchive::new(std::fs::File::open(zip_path).unwrap()).unwrap();
    (0..ar.len())
        .filter_map(|i| {
            let mut f = ar.by_index(i).unwrap();
            if f.is_dir() {
                return None;
            }
            let mut b = Vec::new();
            f.read_to_end(&mut b).unwrap();
            Some((f.name().to_string(), b))
        })
        .collect()
}

/// A valid release for `tag`, with `edit` applied to its entries, written as a zip.
fn edited_zip(dir: &Path, tag: &str, edit: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) -> PathBuf {
    let rel = bundle::write_release(
        &BundleSpec::small(tag, Layout::V2),
        &dir.join("ok").join(tag),
    )
    .unwrap();
    let mut e = entries(&rel.zip_path);
    edit(&mut e);
    let out = dir.join(format!("{tag}-edited.zip"));
    let refs: Vec<(&str, &[u8])> = e.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    bundle::write_custom_zip(&out, &refs).unwrap();
    out
}

fn find<'a>(e: &'a mut [(String, Vec<u8>)], suffix: &str) -> &'a mut Vec<u8> {
    &mut e
        .iter_mut()
        .find(|(n, _)| n.ends_with(suffix))
        .unwrap_or_else(|| panic!("no {suffix}"))
        .1
}

fn publish_zip(standin: &Standin, tag: &str, zip: PathBuf) {
    standin
        .publish_release_files(REPO, tag, vec![(format!("{tag}.zip"), zip)])
        .unwrap();
}

/// A plain HTTP server answering every request with an HTML page (a proxy login page, say).
async fn html_server() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                let body = "<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please sign in</body></html>";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

struct Case {
    name: &'static str,
    spec: Value,
    /// Condition type and status, and the reasons accepted (the first is the expected one).
    cond: &'static str,
    status: &'static str,
    reasons: Vec<&'static str>,
}

fn case(
    name: &'static str,
    tag: &str,
    secret: &str,
    cond: &'static str,
    reasons: &[&'static str],
) -> Case {
    Case {
        name,
        spec: json!({"releaseTag": tag, "clusterRef": {"secretName": secret}}),
        cond,
        status: if cond == "Ready" { "False" } else { "True" },
        reasons: reasons.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_its_reason_and_uploads_nothing() {
    if support::real_stack().is_some() {
        eprintln!("skipped on a real stack: bad clusters need the stand-in");
        return;
    }
    let cfg = StandinConfig {
        auth: Auth {
            basic: vec![("elastic".into(), PASSWORD.into())],
            api_keys: vec![b64(&format!("goodid:{GOOD_KEY_SECRET}"))],
            bearer: vec![],
        },
        ..StandinConfig::default()
    };
    let env = Env::start_tuned("bad-input", cfg.clone(), settings()).await;
    let dir = env.dir.path().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let good = env.publish("ML-DGA-20210126-1", Layout::V2);
    let es = env.standin.es_url();
    let kb = env.standin.kibana_url();
    let creds = |url: &str| json!({"url": url, "username": "elastic", "password": PASSWORD, "kibana-url": kb});
    env.secret_with("es", creds(&es)).await;
    env.secret_with(
        "wrong-password",
        json!({"url": es, "username": "elastic", "password": WRONG_PASSWORD}),
    )
    .await;
    env.secret_with(
        "expired-key",
        json!({"url": es, "api-key": b64(&format!("oldid:{EXPIRED_KEY_SECRET}"))}),
    )
    .await;
    env.secret_with(
        "no-url",
        json!({"username": "elastic", "password": PASSWORD}),
    )
    .await;
    env.secret_with("no-creds", json!({"url": es})).await;
    env.secret_with("bad-ca", json!({"url": es.replace("http://", "https://"), "username": "elastic", "password": PASSWORD, "ca.crt": "-----BEGIN CERTIFICATE-----\nnot base64 at all!!\n-----END CERTIFICATE-----\n"})).await;
    env.secret_with(
        "garbage-ca",
        json!({"url": es, "username": "elastic", "password": PASSWORD, "ca.crt": "garbage"}),
    )
    .await;
    env.secret_with("html", creds(&html_server().await)).await;
    // Unsuitable clusters: their own stand-ins.
    let old = Standin::start(StandinConfig {
        es_version: "7.9.3".into(),
        ..cfg.clone()
    })
    .await
    .unwrap();
    let basic = Standin::start(StandinConfig {
        license_type: "basic".into(),
        ..cfg.clone()
    })
    .await
    .unwrap();
    env.secret_with("es-7-9", creds(&old.es_url())).await;
    env.secret_with("basic", creds(&basic.es_url())).await;

    // Broken releases.
    let t = |n: u32| format!("ML-DGA-2022{:02}{:02}-1", 1 + n / 28, 1 + n % 28);
    let mut tags = std::collections::BTreeMap::new();
    let mut next = 0;
    let mut tag_for = |what: &'static str| {
        next += 1;
        let tag = t(next);
        tags.insert(what, tag.clone());
        tag
    };
    // Corrupt zip: random bytes.
    let tg = tag_for("corrupt");
    env.standin.publish_release(
        REPO,
        &tg,
        vec![(
            format!("{tg}.zip"),
            (0..50_000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        )],
    );
    // Truncated download: the first half of a valid zip.
    let tg = tag_for("truncated");
    let full = std::fs::read(
        bundle::write_release(&BundleSpec::small(&tg, Layout::V2), &dir.join("trunc"))
            .unwrap()
            .zip_path,
    )
    .unwrap();
    env.standin.publish_release(
        REPO,
        &tg,
        vec![(format!("{tg}.zip"), full[..full.len() / 2].to_vec())],
    );
    // A manifest (published alongside) whose sha256 is not the zip's.
    let tg = tag_for("manifest-mismatch");
    let r = bundle::write_release(&BundleSpec::small(&tg, Layout::V2), &dir.join("mm")).unwrap();
    let mut other = BundleSpec::small(&tg, Layout::V2);
    other.model.seed += 7;
    let r2 = bundle::write_release(&other, &dir.join("mm2")).unwrap();
    env.standin
        .publish_release_files(
            REPO,
            &tg,
            vec![
                (format!("{tg}.zip"), r.zip_path.clone()),
                (format!("manifest-{tg}.json"), r2.manifest_path.clone()),
            ],
        )
        .unwrap();
    for (what, defect) in [
        ("traversal", Defect::ParentTraversal),
        ("absolute", Defect::AbsolutePath),
        ("symlink", Defect::Symlink),
        ("zip-bomb", Defect::ZipBomb { bytes: 520 << 20 }),
        ("model-missing-input", Defect::ModelMissingInput),
        ("duplicate-model", Defect::DuplicateModel),
        ("malformed-json", Defect::MalformedJson),
        ("missing-pipeline", Defect::MissingPipeline),
        ("undecodable-definition", Defect::UndecodableDefinition),
    ] {
        let tg = tag_for(what);
        let zip =
            bundle::write_bad_release(&BundleSpec::small(&tg, Layout::V2), defect, &dir.join(what))
                .unwrap();
        publish_zip(&env.standin, &tg, zip);
    }
    let tg = tag_for("huge-json");
    let z = edited_zip(&dir, &tg, |e| {
        let src = "x".repeat(5 << 20);
        *find(e, "create_script.json") =
            serde_json::to_vec(&json!({"script": {"lang": "painless", "source": src}})).unwrap();
    });
    publish_zip(&env.standin, &tg, z);
    let tg = tag_for("deep-json-pipeline");
    let z = edited_zip(&dir, &tg, |e| {
        let depth = 100_000;
        let mut s = String::from("{\"processors\": ");
        s.push_str(&"[".repeat(depth));
        s.push_str(&"]".repeat(depth));
        s.push('}');
        *find(e, "inference_pipeline.json") = s.into_bytes();
    });
    publish_zip(&env.standin, &tg, z);
    let tg = tag_for("deep-json-model");
    let z = edited_zip(&dir, &tg, |e| {
        let m = find(e, "_model.json");
        let depth = 200_000;
        let mut s = String::from("{\"metadata\": ");
        s.push_str(&"{\"a\":".repeat(depth));
        s.push('1');
        s.push_str(&"}".repeat(depth));
        s.push(',');
        let rest = String::from_utf8(m[1..].to_vec()).unwrap();
        s.push_str(rest.trim_start());
        *m = s.into_bytes();
    });
    publish_zip(&env.standin, &tg, z);
    let tg = tag_for("invalid-utf8");
    let z = edited_zip(&dir, &tg, |e| {
        let s = find(e, "transform_delete_script.json");
        let at = s.iter().position(|b| *b == b'"').unwrap() + 1;
        s.splice(at..at, [0xff, 0xfe, 0xc3]);
    });
    publish_zip(&env.standin, &tg, z);
    let tg = tag_for("unknown-layout");
    let tgc = tg.clone();
    let z = edited_zip(&dir, &tg, move |e| {
        *e = vec![
            (format!("{tgc}/README.txt"), b"hello".to_vec()),
            (format!("{tgc}/something.json"), b"{}".to_vec()),
        ];
    });
    publish_zip(&env.standin, &tg, z);
    let tg = tag_for("no-zip-asset");
    env.standin
        .publish_release_files(
            REPO,
            &tg,
            vec![(
                format!("manifest-{}.json", good.tag),
                good.manifest_path.clone(),
            )],
        )
        .unwrap();
    let tg = tag_for("two-zip-assets");
    env.standin
        .publish_release_files(
            REPO,
            &tg,
            vec![
                (format!("{tg}.zip"), good.zip_path.clone()),
                (format!("ML-DGA-other-{tg}.zip"), good.zip_path.clone()),
            ],
        )
        .unwrap();

    // A download cut mid-body every time: transient, never cached as a (broken) bundle.
    let tg = tag_for("cut-download");
    let r = bundle::write_release(&BundleSpec::small(&tg, Layout::V2), &dir.join("cut")).unwrap();
    publish_zip(&env.standin, &tg, r.zip_path.clone());
    env.standin.add_fault(dga_standin::Fault {
        service: Some(dga_standin::Service::GitHub),
        method: Some("GET".into()),
        path_regex: format!("^/download/.*/{tg}\\.zip$"),
        nth: 1,
        times: 100_000,
        action: dga_standin::FaultAction::CutBody,
    });
    let g = good.tag.as_str();
    let mut cases = vec![
        case(
            "corrupt-zip",
            &tags["corrupt"],
            "es",
            "Stalled",
            &["InvalidBundle"],
        ),
        case(
            "truncated-zip",
            &tags["truncated"],
            "es",
            "Stalled",
            &["InvalidBundle"],
        ),
        case(
            "manifest-mismatch",
            &tags["manifest-mismatch"],
            "es",
            "Stalled",
            &["ChecksumMismatch"],
        ),
        case(
            "path-traversal",
            &tags["traversal"],
            "es",
            "Stalled",
            &["InvalidBundle"],
        ),
        case(
            "absolute-path",
            &tags["absolute"],
            "es",
            "Stalled",
            &["InvalidBundle"],
        ),
        case(
            "symlink",
            &tags["symlink"],
            "es",
            "Stalled",
            &["InvalidBundle"],
        ),
        case(
            "zip-bomb",
            &tags["zip-bomb"],
            "es",
            "Stalled",
            &["InvalidBundle"],
        ),
        case(
            "model-missing-input",
            &tags["model-missing-input"],
            "es",
            "Stalled",
            &["InvalidBundle"],
        ),
        case(
            "duplicate-model",
            &tags["duplicate-model"],
            "es",
            "Stalled",
            &["InvalidBundle"],
        ),
        case(
            "malformed-json",
            &tags["malformed-json"],
            "es",
            "Stalled",
            &["InvalidBundle"],
        ),
        case(
            "missing-pipeline",
            &tags["missing-pipeline"],
            "es",
            "Stalled",
            &["InvalidBundle"],
        ),
        // Found by Elasticsearch's parse (the definition is not parsed before the upload), then
        // named by ours: the one write that reaches a cluster, refused.
        case(
            "undecodable-definition",
            &tags["undecodable-definition"],
            "es",
            "Stalled",
            &["InvalidBundle"],
        ),
        case(
            "huge-json",
            &tags["huge-json"],
            "es",
            "Stalled",
            &["InvalidBundle"],
        ),
        case(
            "deep-json-pipeline",
            &tags["deep-json-pipeline"],
            "es",
            "Stalled",
            &["InvalidBundle"],
        ),
        case(
            "deep-json-model",
            &tags["deep-json-model"],
            "es",
            "Stalled",
            &["InvalidBundle"],
        ),
        case(
            "invalid-utf8",
            &tags["invalid-utf8"],
            "es",
            "Stalled",
            &["InvalidBundle"],
        ),
        case(
            "unknown-layout",
            &tags["unknown-layout"],
            "es",
            "Stalled",
            &["InvalidBundle"],
        ),
        case(
            "no-zip-asset",
            &tags["no-zip-asset"],
            "es",
            "Stalled",
            &["InvalidRelease"],
        ),
        case(
            "two-zip-assets",
            &tags["two-zip-assets"],
            "es",
            "Stalled",
            &["InvalidRelease"],
        ),
        case(
            "cut-download",
            &tags["cut-download"],
            "es",
            "Reconciling",
            &["TransientError"],
        ),
        case(
            "unknown-tag",
            "ML-DGA-20990101-1",
            "es",
            "Stalled",
            &["ReleaseNotFound"],
        ),
        case("secret-missing", g, "nope", "Ready", &["SecretNotFound"]),
        case("secret-no-url", g, "no-url", "Stalled", &["SecretInvalid"]),
        case(
            "secret-no-creds",
            g,
            "no-creds",
            "Stalled",
            &["SecretInvalid"],
        ),
        case("bad-ca-pem", g, "bad-ca", "Stalled", &["SecretInvalid"]),
        case("garbage-ca", g, "garbage-ca", "Stalled", &["SecretInvalid"]),
        case(
            "wrong-password",
            g,
            "wrong-password",
            "Stalled",
            &["Unauthorized"],
        ),
        case(
            "expired-api-key",
            g,
            "expired-key",
            "Stalled",
            &["Unauthorized"],
        ),
        case(
            "es-answers-html",
            g,
            "html",
            "Stalled",
            &["RequestRejected", "Unreachable", "VersionUnsupported"],
        ),
        case("es-7-9", g, "es-7-9", "Stalled", &["VersionUnsupported"]),
        case(
            "licence-basic",
            g,
            "basic",
            "Stalled",
            &["LicenseInsufficient"],
        ),
    ];
    let mut sha = case("sha256-mismatch", g, "es", "Stalled", &["ChecksumMismatch"]);
    sha.spec["source"] = json!({"sha256": "ab".repeat(32)});
    cases.push(sha);

    env.standin.clear_requests();
    for c in &cases {
        env.apply(c.name, c.spec.clone()).await;
    }
    let mut rows = Vec::new();
    let mut wrong = Vec::new();
    for c in &cases {
        // Wait for the condition with any reason, then compare.
        let got = support::wait_for(Duration::from_secs(60), || async {
            let m = env.models_api().get_opt(c.name).await.ok()??;
            let st = m.status.as_ref()?;
            if st.observed_generation != m.metadata.generation {
                return None;
            }
            let cond = st.conditions.iter().find(|x| x.type_ == c.cond)?;
            let ready = st.conditions.iter().find(|x| x.type_ == "Ready")?;
            (format!("{:?}", cond.status) == c.status && format!("{:?}", ready.status) == "False")
                .then(|| (cond.reason.clone(), ready.message.clone()))
        })
        .await;
        let (reason, msg) = got.unwrap_or_else(|| {
            (
                "<none>".into(),
                format!("{:?}", futures::executor::block_on(env.status(c.name))),
            )
        });
        let ok = c.reasons.contains(&reason.as_str());
        if reason != c.reasons[0] {
            wrong.push(format!(
                "{}: expected {}, got {reason}: {msg}",
                c.name, c.reasons[0]
            ));
        }
        rows.push((c.name, c.cond, c.reasons[0], reason, ok, msg));
    }
    let mut table = String::from(
        "| case | condition | expected | got | ok | message |\n|---|---|---|---|---|---|\n",
    );
    for (n, cond, exp, got, ok, msg) in &rows {
        table.push_str(&format!(
            "| {n} | {cond} | {exp} | {got} | {} | {} |\n",
            if *ok { "yes" } else { "NO" },
            msg.replace('|', "/").chars().take(160).collect::<String>()
        ));
    }
    eprintln!("\n{table}");
    if !wrong.is_empty() {
        eprintln!(
            "reasons other than the first expected:\n  {}",
            wrong.join("\n  ")
        );
    }
    let _ = std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/target"));
    let _ = std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/bad-input.md"),
        &table,
    );

    // Nothing uploaded anywhere: the one write sent is the undecodable definition's upload,
    // refused, and sent once (the problem found is remembered).
    let writes: Vec<(String, u16)> = [&env.standin, &old, &basic]
        .iter()
        .flat_map(|s| s.requests())
        .filter(|r| r.is_write())
        .map(|r| (support::request_key(&r), r.status))
        .collect();
    let refused_upload =
        |(k, status): &(String, u16)| k.contains(" PUT /_ml/trained_models/") && *status == 400;
    assert!(
        writes.len() == 1 && writes.iter().all(refused_upload),
        "writes: {writes:?}"
    );
    assert!(env.stack().models().await.is_empty());
    assert!(old.models().is_empty() && basic.models().is_empty());
    // No credential in any message or event.
    let texts = env.all_texts().await;
    for s in [
        PASSWORD,
        WRONG_PASSWORD,
        GOOD_KEY_SECRET,
        EXPIRED_KEY_SECRET,
    ] {
        let leaks: Vec<&String> = texts
            .iter()
            .filter(|t| t.contains(s) || t.contains(&b64(s)))
            .collect();
        assert!(leaks.is_empty(), "secret {s} in {leaks:?}");
    }
    for k in [
        b64(&format!("goodid:{GOOD_KEY_SECRET}")),
        b64(&format!("oldid:{EXPIRED_KEY_SECRET}")),
    ] {
        assert!(!texts.iter().any(|t| t.contains(&k)), "api key in messages");
    }
    assert!(env.standin.off_spec_requests().is_empty());
    let failed: Vec<_> = rows.iter().filter(|r| !r.4).collect();
    assert!(failed.is_empty(), "wrong reasons:\n{table}");
    env.drop_namespace().await;
}
