use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use dga_operator::bundle::fetch::Fetcher;
use dga_operator::controller::{self, Context, Settings};

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
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,hyper=warn"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", dga_operator::api::crd_yaml()),
        Command::Run(args) => {
            init_logs(&cli.log_format);
            if let Err(e) = run(args).await {
                eprintln!("dga-operator: {e}");
                std::process::exit(1);
            }
        }
    }
}

async fn run(args: RunArgs) -> Result<(), String> {
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
    let ctx = Arc::new(Context::new(client, fetcher, settings));
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("<all>"),
        "dga-operator starting"
    );
    controller::run(ctx).await;
    Ok(())
}
