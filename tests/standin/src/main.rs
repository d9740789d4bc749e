//! `dga-standin`: run the TEST STAND-IN (Elasticsearch + Kibana + GitHub releases imitation).

use clap::Parser;
use dga_standin::{Auth, Standin, StandinConfig};
use std::path::PathBuf;

/// TEST STAND-IN for Elasticsearch, Kibana's detection-engine API and the GitHub releases API.
///
/// This is NOT Elasticsearch or Kibana: it is an in-memory imitation for dga-operator's tests
/// and quickstart. Every request is checked against the official API specs embedded in it;
/// off-spec requests are answered 400 and listed by the admin API (`GET /requests`). Every
/// response carries `X-Standin: dga-standin`.
#[derive(Parser, Debug)]
#[command(name = "dga-standin", version, about, long_about)]
struct Args {
    /// Address to bind all listeners to.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Elasticsearch port (0 = any free port).
    #[arg(long, default_value_t = 9200)]
    es_port: u16,
    /// Kibana port (0 = any free port).
    #[arg(long, default_value_t = 5601)]
    kibana_port: u16,
    /// GitHub API port (0 = any free port).
    #[arg(long, default_value_t = 0)]
    github_port: u16,
    /// Admin API port (0 = any free port): GET /requests, GET /state, POST|DELETE /faults,
    /// POST /license/{type}.
    #[arg(long, default_value_t = 0)]
    admin_port: u16,
    /// License type reported by GET /_license.
    #[arg(long, default_value = "platinum")]
    license: String,
    /// Basic-auth user.
    #[arg(long, default_value = "elastic")]
    user: String,
    /// Basic-auth password.
    #[arg(long, default_value = "changeme")]
    password: String,
    /// Accepted API key: the base64 `id:key` value sent as `Authorization: ApiKey <value>` (repeatable).
    #[arg(long)]
    api_key: Vec<String>,
    /// Disable authentication entirely.
    #[arg(long)]
    no_auth: bool,
    /// Elasticsearch version profile: selects the behaviour imitated (which spec files are
    /// checked, which fields are accepted and returned), not only what GET / reports. Named
    /// profiles 7.10, 7.17, 8.17, 9.2 (= 7.10.2, 7.17.29, 8.17.0, 9.2.0); any X.Y[.Z] from 7.10.
    #[arg(long, default_value = dga_standin::profile::DEFAULT)]
    es_version: String,
    /// Kibana version profile: reported by GET /api/status and deciding which prebuilt-rules
    /// routes exist (internal API from 8.9, paged `_review` from 9.4).
    #[arg(long, default_value = "8.17.0")]
    kibana_version: String,
    /// Whether Kibana holds Elastic's prebuilt-rules package (`on`: Elastic's DGA rules are
    /// installable from 8.9; `off`: an air-gapped Kibana without the package).
    #[arg(long, default_value = "off", value_parser = ["on", "off"])]
    kibana_prebuilt_dga: String,
    /// Hold a generated Fleet `dga` package in the stand-in's package registry (repeatable), e.g.
    /// `dga-2.3.7`: package-spec layout, the Kibana constraint real-stack.md gives for that
    /// version. Kibana's Fleet API installs from it; the registry is served at GITHUB_URL
    /// (`/search`, `/package/dga/VERSION/`, `/epr/dga/dga-VERSION.zip`).
    #[arg(long, value_name = "dga-VERSION")]
    fleet_package: Vec<String>,
    /// Whether Kibana can reach its package registry (`off`: Fleet installs by version fail as
    /// they do when the registry is down; upload still works).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    fleet_registry: String,
    /// Kibana starts "not ready": its first N requests are answered 503 as a starting Kibana
    /// answers them ("Kibana server is not ready yet"; `/api/status` level `unavailable`).
    #[arg(long, value_name = "N", default_value_t = 0)]
    kibana_not_ready: u32,
    /// Publish a release: TAG=PATH (asset named after the file). Repeatable. A `manifest-<tag>.json`
    /// next to the zip is published as a second asset when present.
    #[arg(long, value_name = "TAG=PATH")]
    publish: Vec<String>,
    /// Repository for --publish.
    #[arg(long, default_value = "elastic/detection-rules")]
    repo: String,
    /// Generate a test release with the release builder and publish it (repeatable), e.g.
    /// `ML-DGA-20210126-1` or `ML-DGA-20210126-1:v1` for layout v1; `:export` gives a v2 release
    /// whose model file is a `GET _ml/trained_models/<id>?include=definition` export (read-only
    /// fields included). Written under --out-dir.
    #[arg(long, value_name = "TAG[:v1|v2|export]")]
    generate: Vec<String>,
    /// Elasticsearch's `http.max_content_length` in bytes: a larger request body is answered 413
    /// before it is read, as Elasticsearch does (default 100mb).
    #[arg(long, value_name = "BYTES", default_value_t = dga_standin::server::DEFAULT_HTTP_MAX_CONTENT_LENGTH)]
    http_max_content_length: u64,
    /// Folder for generated releases (default: a temporary folder).
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let auth = if a.no_auth {
        Auth {
            basic: vec![],
            api_keys: vec![],
            bearer: vec![],
        }
    } else {
        Auth {
            basic: vec![(a.user.clone(), a.password.clone())],
            api_keys: a.api_key.clone(),
            bearer: vec![],
        }
    };
    let profile = dga_standin::profile::Profile::parse(&a.es_version)?;
    let cfg = StandinConfig {
        license_type: a.license.clone(),
        es_version: profile.to_string(),
        kibana_version: a.kibana_version.clone(),
        kibana_prebuilt_dga: a.kibana_prebuilt_dga == "on",
        fleet_packages: a.fleet_package.clone(),
        auth,
        ..Default::default()
    };
    let s = Standin::start_on_host(cfg, &a.host, a.es_port, a.kibana_port, a.github_port).await?;
    s.set_http_max_content_length(a.http_max_content_length);
    for p in &a.fleet_package {
        let v = dga_standin::fleet_package::parse_spec(p)?;
        dga_standin::fleet_package::kibana_constraint(&v)?;
    }
    s.set_fleet_registry_reachable(a.fleet_registry == "on");
    if a.kibana_not_ready > 0 {
        s.kibana_starting(Some(a.kibana_not_ready));
    }
    for p in &a.publish {
        let (tag, path) = p.split_once('=').ok_or("--publish wants TAG=PATH")?;
        let path = PathBuf::from(path);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("bad path")?
            .to_string();
        let mut assets = vec![(name, path.clone())];
        let manifest = path.with_file_name(format!("manifest-{tag}.json"));
        if manifest.exists() {
            assets.push((format!("manifest-{tag}.json"), manifest));
        }
        s.publish_release_files(&a.repo, tag, assets)?;
    }
    let tmp = std::env::temp_dir().join(format!("dga-standin-releases-{}", std::process::id()));
    let out_dir = a.out_dir.clone().unwrap_or(tmp);
    for g in &a.generate {
        let (tag, layout, export) = match g.split_once(':') {
            Some((t, "v1")) => (t, dga_standin::bundle::Layout::V1, false),
            Some((t, "v2")) | Some((t, "")) => (t, dga_standin::bundle::Layout::V2, false),
            Some((t, "export")) => (t, dga_standin::bundle::Layout::V2, true),
            Some((_, other)) => {
                return Err(
                    format!("--generate: unknown variant `{other}` (v1, v2 or export)").into(),
                );
            }
            None => (g.as_str(), dga_standin::bundle::Layout::V2, false),
        };
        let mut spec = dga_standin::bundle::BundleSpec::small(tag, layout);
        if export {
            spec = spec.as_get_export();
        }
        let rel = dga_standin::bundle::write_release(&spec, &out_dir.join(tag))?;
        s.publish_release_files(
            &a.repo,
            tag,
            vec![
                (format!("{tag}.zip"), rel.zip_path.clone()),
                (format!("manifest-{tag}.json"), rel.manifest_path.clone()),
            ],
        )?;
        println!("RELEASE={tag} sha256={}", rel.zip_sha256);
    }
    let admin = s.start_admin(&a.host, a.admin_port).await?;
    println!("STANDIN=dga-standin (TEST STAND-IN, not Elasticsearch/Kibana/GitHub)");
    println!("ES_URL={}", s.es_url());
    println!("KIBANA_URL={}", s.kibana_url());
    println!("GITHUB_URL={}", s.github_url());
    println!("FLEET_REGISTRY_URL={}", s.fleet_registry_url());
    println!("ADMIN_URL={admin}");
    use std::io::Write;
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    s.shutdown();
    Ok(())
}
