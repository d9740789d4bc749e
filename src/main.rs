use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use dga_operator::bundle::fetch::Fetcher;
use dga_operator::controller::{self, Context, Settings};
use dga_operator::leader::{self, Elector, LeaseConfig};
use dga_operator::metrics::Metrics;
use dga_operator::server;

/// Kubernetes operator for Elastic's ML-DGA (domain generation algorithm) detection package.
#[derive(Parser)]
#[command(name = "dga-operator", version, about)]
struct Cli {
    /// Log format: `text` or `json`.
    #[arg(long, global = true, default_value = "text", env = "DGA_LOG_FORMAT")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the DgaModel CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller.
    Run(RunArgs),
    /// Install the ML-DGA package (trained model, stored scripts, ingest pipelines) into
    /// Elasticsearch from a release tag (-t) or an unpacked release folder (-d).
    Setup(dga_operator::cli::SetupArgs),
    /// Show what `setup` would create, update or delete, changing nothing (exit 2: changes
    /// pending).
    Plan(dga_operator::cli::PlanArgs),
    /// Remove what `setup` installed: pipelines, then scripts, then the model.
    Remove(dga_operator::cli::RemoveArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch DgaModels in this namespace only (default: all namespaces).
    #[arg(long, env = "DGA_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// How often every DgaModel is compared with its cluster (drift repair).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    resync_period: Duration,
    /// GitHub API base URL (GitHub Enterprise, a mirror, tests).
    #[arg(long, default_value = "https://api.github.com", env = "DGA_GITHUB_API")]
    github_api: String,
    /// Folder of unpacked releases (`<dir>/<tag>/`) or zips (`<dir>/<tag>.zip`), used before any
    /// download (air-gapped installs).
    #[arg(long)]
    bundle_dir: Option<PathBuf>,
    /// Where downloads and opened releases are cached.
    #[arg(long, default_value = "/var/cache/dga-operator", env = "DGA_CACHE_DIR")]
    cache_dir: PathBuf,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: String,
    /// DgaModels reconciled at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Reconciles at once against one Elasticsearch cluster.
    #[arg(long, default_value_t = 1)]
    per_cluster_concurrency: usize,
    /// Timeout of one request to Elasticsearch, Kibana or the release host.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// How long a deleted DgaModel waits for an unreachable cluster before its finalizer is
    /// released with a Warning event.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    delete_timeout: Duration,
    /// Upper bound of the per-object retry backoff.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    backoff_cap: Duration,
    /// Run only while holding a coordination.k8s.io/v1 Lease, so that several replicas can run
    /// with one active (the others stand by).
    #[arg(long, env = "DGA_LEADER_ELECTION")]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "dga-operator")]
    lease_name: String,
    /// Namespace of the leader-election Lease (default: $POD_NAMESPACE, else `default`).
    #[arg(long)]
    lease_namespace: Option<String>,
    /// How long in-flight reconciles may take to finish after SIGTERM.
    #[arg(long, default_value = "25s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,hyper=warn"));
    // Colours only on a terminal: `kubectl logs` and log files get plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|e| dga_operator::cli::clap_exit(e));
    match cli.command {
        Command::Crd => print!("{}", dga_operator::api::crd_yaml()),
        Command::Setup(args) => std::process::exit(dga_operator::cli::setup(args).await),
        Command::Plan(args) => std::process::exit(dga_operator::cli::plan(args).await),
        Command::Remove(args) => std::process::exit(dga_operator::cli::remove(args).await),
        Command::Run(args) => {
            init_logs(&cli.log_format);
            if let Err(e) = run(args).await {
                eprintln!("dga-operator: {e}");
                std::process::exit(1);
            }
            // Reconcilers abandoned after --shutdown-timeout must not hold the exit.
            std::process::exit(0);
        }
    }
}

/// Resolves on the first SIGTERM or ctrl-c (registered at once, so a signal during startup or
/// while standing by is not lost).
fn shutdown_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutdown requested");
        let _ = tx.send(true);
    });
    rx
}

async fn run(args: RunArgs) -> Result<(), String> {
    let mut shutdown = shutdown_signal();
    let metrics = Arc::new(Metrics::new());
    metrics.install_request_observer();
    metrics.health.beat();
    let listener = tokio::net::TcpListener::bind(&args.metrics_addr)
        .await
        .map_err(|e| format!("--metrics-addr {}: {e}", args.metrics_addr))?;
    let (stop_server, server_stop) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(server::serve(listener, metrics.clone(), server_stop));
    // The process's own heartbeat for /healthz (the elector beats too).
    let heartbeat = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            loop {
                metrics.health.beat();
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };
    let result = operate(&args, metrics.clone(), &mut shutdown).await;
    heartbeat.abort();
    let _ = stop_server.send(true);
    let _ = server.await;
    result
}

async fn operate(
    args: &RunArgs,
    metrics: Arc<Metrics>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach Kubernetes: {e}"))?;
    std::fs::create_dir_all(&args.cache_dir)
        .map_err(|e| format!("--cache-dir {}: {e}", args.cache_dir.display()))?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(args.request_timeout.max(Duration::from_secs(600)))
        .build()
        .map_err(|e| e.to_string())?;
    let mut fetcher = Fetcher::new(http, &args.github_api, args.cache_dir.clone());
    fetcher.bundle_dir = args.bundle_dir.clone();
    fetcher.github_token = std::env::var("GITHUB_TOKEN").ok().filter(|t| !t.is_empty());
    let settings = Settings {
        resync: args.resync_period,
        request_timeout: args.request_timeout,
        delete_timeout: args.delete_timeout,
        backoff_cap: args.backoff_cap,
        concurrency: args.concurrency,
        per_cluster_concurrency: args.per_cluster_concurrency,
        namespace: args.namespace.clone(),
        ..Settings::default()
    };
    let ctx =
        Arc::new(Context::new(client.clone(), fetcher, settings).with_metrics(metrics.clone()));
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("<all>"),
        "dga-operator starting"
    );

    let mut elector = None;
    if args.leader_election {
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|n| !n.is_empty())
            })
            .unwrap_or_else(|| "default".to_string());
        let cfg = LeaseConfig::new(&args.lease_name, &namespace, &leader::default_identity());
        tracing::info!(lease = %format!("{namespace}/{}", args.lease_name), identity = cfg.identity, "waiting for the leader lease");
        let mut e = Elector::new(client.clone(), cfg);
        tokio::select! {
            _ = e.acquire(&metrics.health) => {}
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        }
        elector = Some(e);
    }

    if elector.is_none() {
        // Ready once DgaModels can be listed (the watcher's first step); a standby is ready once
        // it could read the Lease (set by the elector).
        let api: kube::Api<dga_operator::api::DgaModel> = match &args.namespace {
            Some(ns) => kube::Api::namespaced(client.clone(), ns),
            None => kube::Api::all(client.clone()),
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            loop {
                match api.list(&kube::api::ListParams::default().limit(1)).await {
                    Ok(_) => break metrics.health.set_ready(),
                    Err(e) => tracing::warn!(error = %e, "cannot list DgaModels"),
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }

    // The controller handles SIGTERM itself (graceful: in-flight reconciles finish); the lease
    // is renewed throughout, and given up once the controller has stopped.
    let lost = {
        let controller = controller::run(ctx);
        tokio::pin!(controller);
        let keep = async {
            match elector.as_mut() {
                Some(e) => e.keep(&metrics.health).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(keep);
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = &mut controller => break None,
                why = &mut keep => break Some(why),
                _ = shutdown.wait_for(|s| *s), if drain_deadline.is_none() => {
                    drain_deadline = Some(tokio::time::Instant::now() + args.shutdown_timeout);
                }
                _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(tokio::time::Instant::now)), if drain_deadline.is_some() => {
                    tracing::warn!("in-flight reconciles did not finish within {:?}; stopping anyway", args.shutdown_timeout);
                    break None;
                }
            }
        }
    };
    if let Some(why) = lost {
        // Another instance may be reconciling now: stop at once, Kubernetes restarts us as a
        // standby.
        return Err(format!("lost leadership ({why}); exiting"));
    }
    if let Some(e) = elector.as_mut() {
        match tokio::time::timeout(Duration::from_secs(5), e.release()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "could not release the leader lease"),
            Err(_) => tracing::warn!("releasing the leader lease timed out"),
        }
    }
    tracing::info!("dga-operator stopped");
    Ok(())
}
