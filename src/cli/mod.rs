//! The one-shot CLI, successor of detection-rules' `setup-dga-model` / `remove-dga-model`:
//!
//! ```text
//! dga-operator setup  (-t TAG | -d DIR) [--overwrite] CONNECTION [RELEASE SOURCE]
//! dga-operator plan   (-t TAG | -d DIR) [--overwrite] CONNECTION [RELEASE SOURCE]
//! dga-operator remove CONNECTION
//! ```
//!
//! All three run the same engine as the controller (`engine::build/observe/diff/apply`,
//! `engine::cleanup`) with the pseudo-owner `Owner::cli()`, so what `setup` installs carries the
//! CLI's marker and `remove` removes exactly that.
//!
//! Exit codes (also printed by `--help`):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success; for `plan`: nothing to change |
//! | 1 | unexpected error (a request Elasticsearch refused, an internal error) |
//! | 2 | `plan` only: changes are pending (`setup` would make them) |
//! | 3 | usage or bad input (arguments, tag, cloud id, URL, CA file, folder) |
//! | 4 | cannot connect or authenticate (unreachable, TLS, 401/403, timeouts) |
//! | 5 | licence or version not sufficient (needs platinum, enterprise or trial; ES 7.15+) |
//! | 6 | conflict: objects with the package's ids that setup may not replace |
//! | 7 | release or bundle problem (unknown release, download, sha256 mismatch, invalid bundle) |
//! | 8 | temporarily unavailable: 429, 5xx or dropped connections through every retry |
//! | 130 | interrupted (Ctrl-C); nothing partial is left in the cache |
//!
//! Errors are one line `dga-operator: <message>`, sometimes followed by `hint: <advice>`, on
//! stderr. Passwords and API keys are never printed.

pub mod cloud_id;
mod progress;
mod retry;
mod rules;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::api::{ReleaseSource, is_release_tag};
use crate::bundle::fetch::{Fetcher, Request};
use crate::bundle::{self, Bundle, Layout, Limits};
use crate::controller::{KNOWN_PIPELINES, KNOWN_SCRIPTS};
use crate::elasticsearch::{ClusterInfo, Elasticsearch, ML_LICENSES};
use crate::engine::{self, Action, Owner, Plan, observe::Ids};
use crate::error::{Error, Service, Transience};
use crate::target::{Auth, Endpoint, Sensitive};
use progress::Out;

pub const EXIT_OK: i32 = 0;
pub const EXIT_UNEXPECTED: i32 = 1;
pub const EXIT_CHANGES_PENDING: i32 = 2;
pub const EXIT_USAGE: i32 = 3;
pub const EXIT_CONNECTION: i32 = 4;
pub const EXIT_LICENSE: i32 = 5;
pub const EXIT_CONFLICT: i32 = 6;
pub const EXIT_RELEASE: i32 = 7;
pub const EXIT_UNAVAILABLE: i32 = 8;
pub const EXIT_INTERRUPTED: i32 = 130;

/// The exit-code table shown after `--help` of `setup`, `plan` and `remove`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (plan: nothing to change)
  1  unexpected error
  2  plan: changes pending
  3  usage or bad input (arguments, tag, cloud id, URL, CA file, folder)
  4  cannot connect or authenticate (unreachable host, TLS, 401/403, timeout)
  5  licence or version not sufficient (platinum, enterprise or trial; Elasticsearch 7.15+)
  6  conflict: objects in the way (rerun with --overwrite to take them over)
  7  release or bundle problem (unknown release, download, sha256 mismatch, invalid bundle)
  8  temporarily unavailable (429, 5xx or dropped connections through every retry; run again)
130  interrupted (Ctrl-C)";

/// How to reach Elasticsearch (and Kibana). Same options as the old detection-rules CLI.
#[derive(clap::Args, Clone)]
#[command(next_help_heading = "Connection")]
pub struct ConnectionArgs {
    /// Elasticsearch URL, e.g. https://localhost:9200.
    #[arg(short = 'u', long = "elasticsearch-url", value_name = "URL")]
    pub elasticsearch_url: Option<String>,
    /// Elastic Cloud deployment id (`name:base64…`), instead of --elasticsearch-url.
    #[arg(long, value_name = "ID")]
    pub cloud_id: Option<String>,
    /// User for basic authentication.
    #[arg(long, value_name = "NAME", default_value = "elastic")]
    pub user: String,
    /// Password of --user. Prompted for (without echo) when neither it nor --api-key is given
    /// and stdin is a terminal.
    #[arg(
        short = 'p',
        long = "es-password",
        value_name = "PASSWORD",
        env = "DGA_ES_PASSWORD",
        hide_env_values = true
    )]
    pub es_password: Option<String>,
    /// API key (the base64 `encoded` value Elasticsearch returns), instead of a password.
    #[arg(
        long,
        value_name = "KEY",
        env = "DGA_ES_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// PEM file of the CA that signed the cluster's certificate (added to the system roots).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Timeout of one request to Elasticsearch, Kibana or the release host, e.g. 30s or 5m (a
    /// download may take longer as long as data keeps arriving).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Retries of a step that failed transiently (429, 5xx, a dropped connection, a timeout),
    /// waiting 1s, 2s, 4s, ... in between (or what Retry-After asks, up to 2 minutes).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub retries: u32,
    /// Kibana URL (derived from --cloud-id when omitted): setup also installs the package's
    /// detection rules (and the anomaly job of its machine_learning rule), remove removes them.
    #[arg(long, value_name = "URL")]
    pub kibana_url: Option<String>,
}

/// Which release, and where it comes from.
#[derive(clap::Args, Clone)]
pub struct ReleaseArgs {
    /// Release tag to install, e.g. ML-DGA-20211124-1 (looked up in the GitHub releases).
    #[arg(
        short = 't',
        long = "model-tag",
        visible_alias = "tag",
        value_name = "TAG"
    )]
    pub tag: Option<String>,
    /// Folder holding an unpacked release (the tag folder itself, or a folder containing it).
    #[arg(
        short = 'd',
        long = "model-dir",
        visible_alias = "dir",
        value_name = "DIR"
    )]
    pub dir: Option<PathBuf>,
    /// Take over objects with the package's ids that dga-operator did not install (for example
    /// left by the old setup-dga-model). They are replaced in place, without a gap.
    #[arg(long)]
    pub overwrite: bool,
    /// GitHub API base URL (GitHub Enterprise, a mirror).
    #[arg(
        long,
        value_name = "URL",
        default_value = "https://api.github.com",
        env = "DGA_GITHUB_API",
        help_heading = "Release source"
    )]
    pub github_api: String,
    /// GitHub repository holding the release (default elastic/detection-rules).
    #[arg(long, value_name = "OWNER/NAME", help_heading = "Release source")]
    pub repository: Option<String>,
    /// Download the release zip from this URL (a mirror) instead of looking the tag up.
    #[arg(long, value_name = "URL", help_heading = "Release source")]
    pub url: Option<String>,
    /// Expected sha256 of the release zip; a download that differs is refused.
    #[arg(long, value_name = "HEX", help_heading = "Release source")]
    pub sha256: Option<String>,
    /// Where downloads and opened releases are cached
    /// [default: ${XDG_CACHE_HOME:-~/.cache}/dga-operator].
    #[arg(
        long,
        value_name = "DIR",
        env = "DGA_CACHE_DIR",
        help_heading = "Release source"
    )]
    pub cache_dir: Option<PathBuf>,
    /// Install Elastic's Fleet integration package `dga` at this version through Kibana's
    /// Fleet API (stacks 8.0 and later) instead of an ML-DGA release; needs --kibana-url. The
    /// DNS data of the --custom-pipeline hooks is wired to the package's pipelines, Elastic's
    /// rules are installed and the package's ML module sets up the anomaly job.
    #[arg(
        long = "fleet-package",
        value_name = "VERSION",
        help_heading = "Fleet package"
    )]
    pub fleet_package: Option<String>,
    /// With --fleet-package: download the package archive (zip) from this URL and install it by
    /// upload, for a Kibana without a package registry (air-gapped). --sha256 checks it.
    #[arg(
        long = "package-url",
        value_name = "URL",
        help_heading = "Fleet package"
    )]
    pub package_url: Option<String>,
    /// With --fleet-package: the `@custom` ingest pipeline hook to wire (repeatable; default
    /// logs-network_traffic.dns@custom, the Network Packet Capture integration's DNS data).
    #[arg(
        long = "custom-pipeline",
        value_name = "NAME",
        help_heading = "Fleet package"
    )]
    pub custom_pipelines: Vec<String>,
}

/// `dga-operator setup`: install (or upgrade, or repair) the package.
#[derive(clap::Args, Clone)]
#[command(
    after_help = EXIT_CODES_HELP,
    override_usage = "dga-operator setup (-t TAG | -d DIR | --fleet-package VERSION [--package-url URL --sha256 HEX]) [--overwrite] (-u URL | --cloud-id ID) [OPTIONS]"
)]
pub struct SetupArgs {
    #[command(flatten)]
    pub release: ReleaseArgs,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// `dga-operator plan`: what `setup` would do, changing nothing.
#[derive(clap::Args, Clone)]
#[command(
    after_help = EXIT_CODES_HELP,
    override_usage = "dga-operator plan (-t TAG | -d DIR | --fleet-package VERSION [--package-url URL --sha256 HEX]) [--overwrite] (-u URL | --cloud-id ID) [OPTIONS]"
)]
pub struct PlanArgs {
    #[command(flatten)]
    pub release: ReleaseArgs,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// `dga-operator remove`: remove what `setup` installed.
#[derive(clap::Args, Clone)]
#[command(
    after_help = EXIT_CODES_HELP,
    override_usage = "dga-operator remove (-u URL | --cloud-id ID) [OPTIONS]"
)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Also remove what the deleted DgaModel NAMESPACE/NAME left behind (deletionPolicy Retain,
    /// or a cleanup the operator gave up on). Repeatable. Only for DgaModels that no longer
    /// exist: the operator of a live one would put its objects back. Of the enrichment wiring,
    /// the default hook pipeline and indices are looked at.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_owner_key)]
    pub leftovers_of: Vec<String>,
    /// Also uninstall Elastic's Fleet package `dga` at this version (what `setup
    /// --fleet-package VERSION` installed; the CLI keeps no record, so it is named here), after
    /// the hook processor and the module's job setup made. Needs --kibana-url.
    #[arg(long = "fleet-package", value_name = "VERSION")]
    pub fleet_package: Option<String>,
    /// With --fleet-package: the `@custom` hooks setup wired (default
    /// logs-network_traffic.dns@custom).
    #[arg(long = "custom-pipeline", value_name = "NAME")]
    pub custom_pipelines: Vec<String>,
}

fn parse_owner_key(s: &str) -> Result<String, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(s.to_string())
        }
        _ => Err(format!("`{s}` is not NAMESPACE/NAME of a DgaModel")),
    }
}

/// A failure to report: exit code, one-line message, optional hint.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            hint: None,
        }
    }
    fn usage(message: impl Into<String>) -> Self {
        Self::new(EXIT_USAGE, message)
    }
    fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }

    /// Prints the failure on stderr and returns its exit code.
    pub fn report(&self) -> i32 {
        let one_line = |s: &str| s.replace(['\n', '\r'], " ");
        eprintln!("dga-operator: {}", one_line(&self.message));
        if let Some(h) = &self.hint {
            eprintln!("hint: {}", one_line(h));
        }
        self.code
    }
}

/// The exit code for an engine error (from its stable `reason()`).
pub fn exit_code(e: &Error) -> i32 {
    let releases = e.service() == Some(Service::Releases);
    match e.reason() {
        "InvalidSpec" | "SecretInvalid" | "SecretNotFound" => EXIT_USAGE,
        "TransientError" => match e.transience() {
            // A service that answered (busy, failing) or dropped the connection is reachable:
            // the same command later may well succeed.
            Some(Transience::Status(_) | Transience::Dropped) => EXIT_UNAVAILABLE,
            _ if releases => EXIT_RELEASE,
            _ => EXIT_CONNECTION,
        },
        "Unreachable" | "Unauthorized" if releases => EXIT_RELEASE,
        "Unreachable" | "Unauthorized" => EXIT_CONNECTION,
        "LicenseInsufficient" | "VersionUnsupported" => EXIT_LICENSE,
        "Conflict" => EXIT_CONFLICT,
        "ReleaseNotFound" | "InvalidRelease" | "InvalidBundle" | "ChecksumMismatch"
        | "PackageUnavailable" => EXIT_RELEASE,
        "PackageIncompatible" | "UploadNotAllowed" => EXIT_LICENSE,
        "RequestRejected" if releases => EXIT_RELEASE,
        _ => EXIT_UNEXPECTED,
    }
}

/// Engine messages speak of the DgaModel spec; say it with the CLI's flags.
fn cli_wording(s: &str) -> String {
    s.replace("spec.source.sha256", "--sha256")
        .replace("spec.fleetPackage.sha256", "--sha256")
        .replace("spec.fleetPackage.url", "--package-url")
        .replace("spec.fleetPackage.version", "--fleet-package")
        .replace(
            " (set overwrite: true to adopt it; it is then never uninstalled by the operator)",
            " (rerun with --overwrite to use it as it is)",
        )
        .replace(
            " (set overwrite: true to adopt it and move it to",
            " (rerun with --overwrite to move it to",
        )
        .replace("spec.releaseTag", "-t/--model-tag")
        .replace("the spec asks for", "the command asks for")
        .replace(" (set overwrite: true to replace it)", "")
        .replace("by this DgaModel", "by dga-operator setup")
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = exit_code(&e);
        let hint = match e.reason() {
            "Unauthorized" if e.service() == Some(Service::Elasticsearch) => {
                Some("check --user and -p/--es-password (or DGA_ES_PASSWORD), or use --api-key")
            }
            "Unreachable" if e.service() == Some(Service::Elasticsearch) => Some(
                "check -u/--elasticsearch-url or --cloud-id, --ca-cert, and that the cluster is up",
            ),
            "TransientError" if code == EXIT_UNAVAILABLE => Some(
                "the service is busy or failing (see the retries above); run the same command again later",
            ),
            "Unreachable" | "TransientError" if e.service() == Some(Service::Releases) => {
                Some("check --github-api / --url, or install from an unpacked release with -d DIR")
            }
            "LicenseInsufficient" => Some(
                "machine learning inference needs a platinum or enterprise licence, or a trial (POST /_license/start_trial?acknowledge=true)",
            ),
            "ReleaseNotFound" => Some(
                "check the tag (releases of elastic/detection-rules named ML-DGA-YYYYMMDD-N) or --repository",
            ),
            "ChecksumMismatch" => Some(
                "the download was discarded and nothing was installed; check --sha256 and the source",
            ),
            "InvalidBundle" if e.to_string().contains("http.max_content_length") => Some(
                "http.max_content_length is a static node setting: set it in elasticsearch.yml on every node and restart them",
            ),
            "InvalidBundle" if e.to_string().contains("refuses the model's configuration") => Some(
                "the model file carries a field this Elasticsearch version does not take: remove it from the model file",
            ),
            "InvalidBundle" => Some(
                "a release folder holds the model, two stored scripts and two ingest pipelines in the layout of an ML-DGA release",
            ),
            _ => None,
        };
        Failure {
            code,
            message: cli_wording(&e.to_string()),
            hint: hint.map(str::to_string),
        }
    }
}

/// Turns a clap error into the CLI's error format and exit code (3 for usage errors); help and
/// version go to stdout with exit 0.
pub fn clap_exit(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => e.exit(),
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            std::process::exit(EXIT_USAGE);
        }
        _ => {
            let text = e.render().to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments")
                .trim()
                .trim_start_matches("error:")
                .trim()
                .to_string();
            // The subcommand the user typed, for the hint.
            let sub = std::env::args()
                .skip(1)
                .find(|a| ["setup", "plan", "remove", "run", "crd"].contains(&a.as_str()));
            let cmd = match sub {
                Some(s) => format!("dga-operator {s}"),
                None => "dga-operator".to_string(),
            };
            std::process::exit(
                Failure::usage(first)
                    .hint(format!("see '{cmd} --help'"))
                    .report(),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs

/// Where Elasticsearch (and Kibana) are, checked before any request.
struct Connection {
    es: Endpoint,
    kibana: Option<Endpoint>,
    timeout: Duration,
    retry: retry::Policy,
    /// No credentials were given (for the hint on a 401).
    anonymous: bool,
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn connection(c: &ConnectionArgs) -> Result<Connection, Failure> {
    let (url, url_flag, cloud_kibana) =
        match (non_empty(&c.elasticsearch_url), non_empty(&c.cloud_id)) {
            (Some(_), Some(_)) => {
                return Err(Failure::usage(
                    "give either -u/--elasticsearch-url or --cloud-id, not both",
                ));
            }
            (None, None) => {
                return Err(Failure::usage("no Elasticsearch given")
                    .hint("give -u/--elasticsearch-url URL or --cloud-id ID"));
            }
            (Some(u), None) => (u.to_string(), "--elasticsearch-url", None),
            (None, Some(id)) => {
                let cloud = cloud_id::decode(id)
                    .map_err(|why| Failure::usage(format!("--cloud-id is malformed: {why}")))?;
                (cloud.elasticsearch_url, "--cloud-id", cloud.kibana_url)
            }
        };
    let ca_pem = match &c.ca_cert {
        None => None,
        Some(path) => Some(read_ca(path)?),
    };
    let password = non_empty(&c.es_password);
    let api_key = non_empty(&c.api_key);
    let url_has_user = reqwest::Url::parse(&url)
        .map(|u| !u.username().is_empty())
        .unwrap_or(false);
    let mut anonymous = false;
    let auth = match (password, api_key) {
        (Some(_), Some(_)) => {
            return Err(Failure::usage(
                "give either -p/--es-password (DGA_ES_PASSWORD) or --api-key (DGA_ES_API_KEY), not both",
            ));
        }
        (None, Some(k)) => Auth::ApiKey(Sensitive::new(k)),
        (Some(p), None) => Auth::Basic {
            username: c.user.clone(),
            password: Sensitive::new(p),
        },
        (None, None) if url_has_user => Auth::None,
        (None, None) if std::io::stdin().is_terminal() => {
            let p = rpassword::prompt_password(format!("Elasticsearch password for {}: ", c.user))
                .map_err(|e| Failure::usage(format!("cannot read the password: {e}")))?;
            Auth::Basic {
                username: c.user.clone(),
                password: Sensitive::new(p),
            }
        }
        (None, None) => {
            anonymous = true;
            Auth::None
        }
    };
    let es = Endpoint::parse(&url, auth.clone(), ca_pem.clone(), url_flag)
        .map_err(|e| Failure::usage(e.to_string()))?;
    let kibana = match non_empty(&c.kibana_url)
        .map(str::to_string)
        .or(cloud_kibana)
    {
        Some(k) => Some(
            Endpoint::parse(&k, auth, ca_pem, "--kibana-url")
                .map_err(|e| Failure::usage(e.to_string()))?,
        ),
        None => None,
    };
    if c.timeout.is_zero() {
        return Err(Failure::usage("--timeout must be more than 0s"));
    }
    Ok(Connection {
        es,
        kibana,
        timeout: c.timeout,
        retry: retry::Policy::new(c.retries),
        anonymous,
    })
}

fn read_ca(path: &Path) -> Result<Vec<u8>, Failure> {
    let pem = std::fs::read(path)
        .map_err(|e| Failure::usage(format!("--ca-cert {}: {e}", path.display())))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(pem),
        _ => Err(Failure::usage(format!(
            "--ca-cert {}: no PEM certificate found in the file",
            path.display()
        ))),
    }
}

/// What to install.
enum Source {
    Tag {
        tag: String,
        source: Option<ReleaseSource>,
    },
    Dir(PathBuf),
    /// A release zip on disk (`-d release.zip`).
    Zip(PathBuf),
    /// Elastic's Fleet package `dga` (`--fleet-package`).
    Fleet {
        version: String,
        url: Option<String>,
        sha256: Option<String>,
    },
}

fn check_sha256(sha: &Option<String>) -> Result<(), Failure> {
    match sha {
        Some(sha) if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) => {
            Err(Failure::usage("--sha256 must be 64 hexadecimal digits"))
        }
        _ => Ok(()),
    }
}

fn check_url(flag: &str, url: &Option<String>) -> Result<(), Failure> {
    if let Some(url) = url {
        let ok = reqwest::Url::parse(url)
            .map(|u| matches!(u.scheme(), "http" | "https"))
            .unwrap_or(false);
        if !ok {
            return Err(Failure::usage(format!(
                "{flag} must be an http or https URL"
            )));
        }
    }
    Ok(())
}

/// `--fleet-package` and its flags, checked.
fn fleet_source(r: &ReleaseArgs, version: &str) -> Result<Source, Failure> {
    if non_empty(&r.tag).is_some() || r.dir.is_some() {
        return Err(Failure::usage(
            "give one of -t/--model-tag, -d/--model-dir or --fleet-package",
        ));
    }
    if r.repository.is_some() || r.url.is_some() {
        return Err(Failure::usage(
            "--repository and --url go with -t/--model-tag; with --fleet-package use --package-url",
        ));
    }
    if !crate::api::is_package_version(version) {
        return Err(Failure::usage(format!(
            "--fleet-package `{version}` is not a package version (semver, e.g. 2.3.7)"
        )));
    }
    if r.sha256.is_some() && r.package_url.is_none() {
        return Err(Failure::usage(
            "--sha256 with --fleet-package checks the archive of --package-url: give --package-url too",
        ));
    }
    check_url("--package-url", &r.package_url)?;
    check_sha256(&r.sha256)?;
    Ok(Source::Fleet {
        version: version.to_string(),
        url: r.package_url.clone(),
        sha256: r.sha256.clone(),
    })
}

fn release_source(r: &ReleaseArgs) -> Result<Source, Failure> {
    if let Some(v) = non_empty(&r.fleet_package) {
        return fleet_source(r, v);
    }
    if r.package_url.is_some() || !r.custom_pipelines.is_empty() {
        return Err(Failure::usage(
            "--package-url and --custom-pipeline go with --fleet-package",
        ));
    }
    let from_github = r.repository.is_some() || r.url.is_some() || r.sha256.is_some();
    match (non_empty(&r.tag), &r.dir) {
        (Some(_), Some(_)) => Err(Failure::usage(
            "give either -t/--model-tag TAG or -d/--model-dir DIR, not both",
        )),
        (None, None) => Err(Failure::usage("no release given").hint(
            "give -t/--model-tag TAG (e.g. ML-DGA-20211124-1), -d/--model-dir DIR (an unpacked release) or --fleet-package VERSION (Elastic's Fleet package, stacks 8.0 and later)",
        )),
        (None, Some(dir)) => {
            if from_github {
                return Err(Failure::usage(
                    "--repository, --url and --sha256 go with -t/--model-tag, not -d/--model-dir",
                ));
            }
            let meta = std::fs::metadata(dir).map_err(|e| {
                Failure::usage(format!("-d/--model-dir {}: {e}", dir.display()))
            })?;
            if meta.is_dir() {
                return Ok(Source::Dir(dir.clone()));
            }
            if meta.is_file() && dir.extension().is_some_and(|x| x.eq_ignore_ascii_case("zip")) {
                return Ok(Source::Zip(dir.clone()));
            }
            Err(Failure::usage(format!(
                "-d/--model-dir {}: neither a folder nor a .zip file",
                dir.display()
            ))
            .hint("give an unpacked release folder (named like its tag) or a release zip"))
        }
        (Some(tag), None) => {
            if !is_release_tag(tag) {
                return Err(Failure::usage(format!(
                    "-t/--model-tag `{tag}` is not a release tag of the form ML-DGA-YYYYMMDD-N"
                ))
                .hint("for example ML-DGA-20211124-1; see the releases of elastic/detection-rules"));
            }
            if let Some(repo) = &r.repository {
                let ok = regex::Regex::new(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
                    .expect("pattern")
                    .is_match(repo);
                if !ok {
                    return Err(Failure::usage(format!(
                        "--repository `{repo}` is not of the form OWNER/NAME"
                    )));
                }
            }
            if let Some(url) = &r.url {
                let ok = reqwest::Url::parse(url)
                    .map(|u| matches!(u.scheme(), "http" | "https"))
                    .unwrap_or(false);
                if !ok {
                    return Err(Failure::usage("--url must be an http or https URL"));
                }
            }
            if let Some(sha) = &r.sha256
                && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
            {
                return Err(Failure::usage("--sha256 must be 64 hexadecimal digits"));
            }
            let source = from_github.then(|| ReleaseSource {
                repository: r.repository.clone(),
                url: r.url.clone(),
                sha256: r.sha256.clone(),
            });
            Ok(Source::Tag {
                tag: tag.to_string(),
                source,
            })
        }
    }
}

fn cache_dir(r: &ReleaseArgs) -> Result<PathBuf, Failure> {
    let dir = match &r.cache_dir {
        Some(d) => d.clone(),
        None => {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME")
                        .filter(|v| !v.is_empty())
                        .map(|h| PathBuf::from(h).join(".cache"))
                })
                .ok_or_else(|| {
                    Failure::usage("no cache folder: set --cache-dir, XDG_CACHE_HOME or HOME")
                })?;
            base.join("dga-operator")
        }
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::usage(format!("--cache-dir {}: {e}", dir.display())))?;
    Ok(dir)
}

// ---------------------------------------------------------------------------------------------
// Steps shared by the commands (the order of `controller::pass`).

/// The HTTP client for downloads (releases, package archives): no total timeout (a large file
/// on a slow link takes its time), but a host that stops sending, or never answers, fails after
/// --timeout.
fn download_client(conn: &Connection) -> Result<reqwest::Client, Failure> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10).min(conn.timeout))
        .read_timeout(conn.timeout)
        .user_agent(concat!("dga-operator/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Failure::new(EXIT_UNEXPECTED, e.to_string()))
}

async fn open_release(
    out: &Out,
    r: &ReleaseArgs,
    source: &Source,
    conn: &Connection,
) -> Result<Bundle, Failure> {
    let cache = cache_dir(r)?;
    match source {
        Source::Tag { tag, source } => {
            let mut fetcher = Fetcher::new(download_client(conn)?, &r.github_api, cache);
            fetcher.github_token = std::env::var("GITHUB_TOKEN").ok().filter(|t| !t.is_empty());
            let (hook, download) = out.download(format!("downloading release {tag}"));
            fetcher.on_download = Some(hook);
            let res = conn
                .retry
                .run(out, true, || {
                    fetcher.fetch(Request {
                        tag,
                        source: source.as_ref(),
                    })
                })
                .await;
            let downloaded = download.finish(res.is_ok());
            let bundle = res?;
            if !downloaded {
                out.line(format!("release {tag}: using the cached copy"));
            }
            Ok(bundle)
        }
        Source::Zip(zip) => {
            let src = zip.clone();
            let label = format!("reading release zip {}", zip.display());
            let res = out
                .step(&label, async move {
                    tokio::task::spawn_blocking(move || {
                        let sha = sha256_of(&src)?;
                        let opened = cache.join("bundles").join(&sha);
                        let b = bundle::open_zip(&src, &sha, &opened, &Limits::default())?;
                        if !is_release_tag(&b.tag) {
                            return Err(Error::InvalidBundle(bundle::BundleError {
                                file: format!("{}/", b.tag),
                                problem: "the release folder in the zip must be named like its release tag (ML-DGA-YYYYMMDD-N)".into(),
                            }));
                        }
                        Ok(b)
                    })
                    .await
                    .map_err(|e| Error::Internal(format!("bundle task: {e}")))?
                })
                .await;
            Ok(res?)
        }
        Source::Fleet { .. } => Err(Failure::new(
            EXIT_UNEXPECTED,
            "internal: a Fleet package is not a release",
        )),
        Source::Dir(dir) => {
            let src = std::fs::canonicalize(dir)
                .map_err(|e| Failure::usage(format!("-d/--model-dir {}: {e}", dir.display())))?;
            let opened = cache.join("bundles").join(format!(
                "dir-{}",
                hex::encode(Sha256::digest(src.as_os_str().as_encoded_bytes()))
            ));
            let label = format!("reading release folder {}", dir.display());
            let res = out
                .step(&label, async move {
                    tokio::task::spawn_blocking(move || {
                        bundle::open_dir(&src, &opened, &Limits::default())
                    })
                    .await
                    .map_err(|e| Error::Internal(format!("bundle task: {e}")))?
                    .map_err(Error::from)
                })
                .await;
            Ok(res?)
        }
    }
}

fn sha256_of(path: &Path) -> Result<String, Error> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::InvalidRelease(format!("{}: {e}", path.display())))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)
        .map_err(|e| Error::InvalidRelease(format!("{}: {e}", path.display())))?;
    Ok(hex::encode(h.finalize()))
}

/// `GET /`; `GET /_license` when `license` (setup and plan).
async fn connect(
    out: &Out,
    conn: &Connection,
    check_license: bool,
) -> Result<(Elasticsearch, ClusterInfo), Failure> {
    let es = Elasticsearch::new(conn.es.clone(), conn.timeout)?;
    let on_err = |e: Error| -> Failure {
        let anonymous_401 = conn.anonymous && e.reason() == "Unauthorized";
        let mut f = Failure::from(e);
        // Whatever Elasticsearch refuses here (not ES, a proxy page) is a connection problem.
        if f.code == EXIT_UNEXPECTED {
            f.code = EXIT_CONNECTION;
        }
        if anonymous_401 {
            f.hint = Some(
                "no credentials were given: use -p/--es-password (or DGA_ES_PASSWORD) with --user, or --api-key"
                    .into(),
            );
        }
        f
    };
    let info = conn
        .retry
        .run(out, true, || es.info())
        .await
        .map_err(on_err)?;
    let mut line = format!("Elasticsearch {} at {}", info.version, es.url());
    if check_license {
        let license = conn
            .retry
            .run(out, false, || es.license())
            .await
            .map_err(on_err)?;
        if !ML_LICENSES.contains(&license.as_str()) {
            return Err(Error::LicenseInsufficient(license).into());
        }
        line.push_str(&format!(" (licence {license})"));
    }
    out.line(line);
    Ok((es, info))
}

/// Ids worth reading for the CLI owner: what the release wants plus the package's well-known
/// ids (so a CLI install of another layout is found, and replaced or cleaned up).
fn known_ids() -> Ids {
    let mut ids = Ids::default();
    ids.scripts
        .extend(KNOWN_SCRIPTS.iter().map(|s| s.to_string()));
    ids.pipelines
        .extend(KNOWN_PIPELINES.iter().map(|s| s.to_string()));
    ids
}

struct Planned {
    /// The Fleet route: the package.
    package: Option<engine::package::Plan>,
    /// What the plan was made for (on the Fleet route, with the package's model as Kibana
    /// lists it and its `inference_config`).
    desired: engine::Desired,
    plan: Plan,
    /// The Kibana side, when a Kibana URL is known.
    rules: Option<rules::RulesPlan>,
}

impl Planned {
    /// Everything in the way, Elasticsearch and Kibana, as one plan's conflicts.
    fn conflicts(&self) -> Plan {
        let mut c = Plan {
            actions: vec![],
            conflicts: self
                .package
                .iter()
                .filter_map(|p| p.conflict.clone())
                .chain(self.plan.conflicts.iter().cloned())
                .collect(),
        };
        if let Some(r) = &self.rules {
            c.conflicts.extend(r.conflicts());
        }
        c
    }

    fn is_empty(&self) -> bool {
        self.package.as_ref().is_none_or(|p| p.install.is_none())
            && self.plan.actions.is_empty()
            && self.rules.as_ref().is_none_or(rules::RulesPlan::is_empty)
    }

    /// One plan across both services, as the controller's `mode: Plan` reports it.
    fn whole(&self) -> engine::plan::Plan {
        engine::plan::Plan {
            package: self.package.clone(),
            es: self.plan.clone(),
            detection: self.rules.as_ref().map(|r| r.plan.clone()),
        }
    }
}

/// The release opened and the cluster checked: what every pass of `setup` and `plan` starts
/// from.
struct Session {
    conn: Connection,
    es: Elasticsearch,
    /// The release (none on the Fleet route).
    bundle: Option<Bundle>,
    desired: engine::Desired,
    overwrite: bool,
    fleet: Option<FleetSession>,
}

/// The Fleet route: Kibana, and the package version wanted.
struct FleetSession {
    client: crate::kibana::KibanaClient,
    kibana_version: String,
    /// The stack's licence type (whether Kibana takes an upload depends on it before 8.8.2).
    license: String,
    want: engine::package::Desired,
}

/// `start` for `--fleet-package`: the archive fetched (with --package-url) and both services
/// checked.
async fn start_fleet(
    out: &Out,
    args: &ReleaseArgs,
    conn: Connection,
    version: &str,
    url: Option<&str>,
    sha256: Option<&str>,
) -> Result<Session, Failure> {
    use engine::package;
    let Some(kb) = conn.kibana.clone() else {
        return Err(Failure::usage(
            "--fleet-package installs through Kibana's Fleet API: give --kibana-url (or a --cloud-id with a Kibana)",
        ));
    };
    let archive = match url {
        Some(url) => {
            let fetcher = Fetcher::new(download_client(&conn)?, &args.github_api, cache_dir(args)?);
            let a = out
                .step(
                    &format!(
                        "fetching the package archive {}",
                        crate::bundle::fetch::redact_url(url)
                    ),
                    conn.retry
                        .run(out, true, || fetcher.fetch_package(url, sha256, version)),
                )
                .await?;
            out.line(format!(
                "package archive {PKG} {} (sha256 {})",
                a.version,
                &a.sha256[..12],
                PKG = package::PACKAGE
            ));
            Some(a)
        }
        None => None,
    };
    let (es, info) = connect(out, &conn, true).await?;
    let license = conn.retry.run(out, false, || es.license()).await?;
    let client =
        crate::kibana::KibanaClient::new(kb.http_client(conn.timeout)?, &kb.url, kb.auth.clone());
    let status = conn.retry.run(out, true, || client.status()).await?;
    let identity = archive
        .as_ref()
        .map_or_else(|| "registry".to_string(), |a| a.sha256.clone());
    let hooks = if args.custom_pipelines.is_empty() {
        engine::Wiring::from_spec(None).custom_pipelines
    } else {
        args.custom_pipelines.clone()
    };
    let wiring = engine::Wiring {
        custom_pipelines: hooks,
        indices: Vec::new(),
    };
    let mut desired = engine::build::build_fleet(
        &Owner::cli(),
        &wiring,
        version,
        package::MODEL_ID,
        &identity,
    );
    desired.fit_to_cluster(&info.version);
    Ok(Session {
        conn,
        es,
        bundle: None,
        desired,
        overwrite: args.overwrite,
        fleet: Some(FleetSession {
            client,
            kibana_version: status.version,
            license,
            want: package::Desired {
                version: version.to_string(),
                source: archive.map_or(package::Source::Registry, package::Source::Upload),
            },
        }),
    })
}

async fn start(out: &Out, args: &ReleaseArgs, conn: &ConnectionArgs) -> Result<Session, Failure> {
    let source = release_source(args)?;
    let conn = connection(conn)?;
    if let Source::Fleet {
        version,
        url,
        sha256,
    } = &source
    {
        return start_fleet(out, args, conn, version, url.as_deref(), sha256.as_deref()).await;
    }
    // Side by side: a wrong password or an unreachable cluster is reported without waiting for
    // the download, and the cluster's answers cost no time on a large release.
    let (bundle, (es, info)) = tokio::try_join!(
        open_release(out, args, &source, &conn),
        connect(out, &conn, true)
    )?;
    out.line(format!(
        "release {} (layout {}, model {}, sha256 {})",
        bundle.tag,
        match bundle.layout {
            Layout::V1 => "v1",
            Layout::V2 => "v2",
        },
        bundle.model.id,
        &bundle.sha256[..bundle.sha256.len().min(12)]
    ));
    let mut desired = engine::build(&bundle, &Owner::cli());
    let dropped = desired.fit_to_cluster(&info.version);
    if !dropped.is_empty() {
        out.line(format!(
            "the model file carries fields Elasticsearch {} refuses at creation (a GET export?): left out of the upload: {}",
            info.version,
            dropped.join(", ")
        ));
    }
    Ok(Session {
        conn,
        es,
        bundle: Some(bundle),
        desired,
        overwrite: args.overwrite,
        fleet: None,
    })
}

/// Reads the cluster (and Kibana) and computes what `setup` has to do; writes nothing.
async fn plan_once(out: &Out, s: &Session) -> Result<Planned, Error> {
    use engine::package;
    let recorded = Ids::default();
    let mut desired = s.desired.clone();
    let mut package_rules = Vec::new();
    let pkg = match &s.fleet {
        Some(f) => {
            let o = package::observe(&f.client, &f.want, &f.kibana_version, &f.license).await?;
            out.line(package::describe(&o));
            let p = package::diff(&f.want, &o, &package::Recorded::Cli, s.overwrite)?;
            // The installed version's model and own rules (0.x-1.x), as the controller takes them.
            if let Some(st) = o.installed_at(&f.want.version) {
                if let Some(m) = package::model_in(st.assets.iter().cloned()) {
                    desired.set_model_id(&m);
                }
                package_rules =
                    package::package_rules(&f.client, &f.want.version, &st.kibana_assets).await?;
            }
            Some(p)
        }
        None => None,
    };
    let observed = engine::observe(&s.es, &Ids::wanted(&desired, &known_ids())).await?;
    desired.adopt_fleet_model(&observed);
    let plan = engine::diff(&desired, &observed, &recorded, s.overwrite);
    let module = s.fleet.as_ref().map(|_| package::MODULE);
    let source_rules = s
        .bundle
        .as_ref()
        .map_or(&package_rules[..], |b| &b.rules[..]);
    let rules = match &s.conn.kibana {
        Some(kb) => Some(
            rules::plan(
                out,
                kb,
                s.conn.timeout,
                &s.es,
                source_rules,
                module,
                &desired.marker,
                s.overwrite,
            )
            .await?,
        ),
        None => None,
    };
    Ok(Planned {
        package: pkg,
        desired,
        plan,
        rules,
    })
}

fn conflict_failure(plan: &Plan) -> Failure {
    let list: Vec<String> = plan.conflicts.iter().map(|c| cli_wording(c)).collect();
    let managed = list.iter().any(|c| c.contains("is managed by DgaModel"));
    let foreign = list.iter().any(|c| !c.contains("is managed by DgaModel"));
    let hint = match (foreign, managed) {
        (true, false) => "nothing was changed; rerun with --overwrite to take these objects over",
        (false, true) => {
            "nothing was changed; these objects belong to a DgaModel in Kubernetes: change or delete that DgaModel instead"
        }
        _ => {
            "nothing was changed; rerun with --overwrite to take over the objects not managed by a DgaModel; objects of a DgaModel must be released from Kubernetes"
        }
    };
    Failure::new(EXIT_CONFLICT, format!("conflict: {}", list.join("; "))).hint(hint)
}

/// What an action does, as a progress line.
fn label(a: &Action, d: &engine::Desired) -> String {
    match a {
        Action::PutModel { id, reason } => format!(
            "uploading trained model {id} ({}, {reason})",
            indicatif::HumanBytes(d.model.definition_len)
        ),
        Action::PutScript { id, reason } => format!("writing stored script {id} ({reason})"),
        Action::PutPipeline { id, reason } => format!("writing ingest pipeline {id} ({reason})"),
        Action::DeletePipeline { id, reason } => {
            format!("deleting ingest pipeline {id} ({reason})")
        }
        Action::DeleteScript { id, reason } => format!("deleting stored script {id} ({reason})"),
        Action::DeleteModel { id, reason } => format!("deleting trained model {id} ({reason})"),
        Action::WireIndex { index, reason } => {
            format!("setting index.final_pipeline of {index} ({reason})")
        }
        Action::UnwireIndex { index, reason } => {
            format!("unsetting index.final_pipeline of {index} ({reason})")
        }
        // The CLI wires nothing itself; a DgaModel's leftovers are unwired by `remove`.
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Commands. Each returns the process exit code, having printed its outcome.

/// Runs a command until it ends or Ctrl-C: then what it was writing into the cache is
/// removed (readers of release data stop at their next read, the download is dropped) and the
/// exit code is 130.
async fn interruptible(cmd: &str, fut: impl std::future::Future<Output = i32>) -> i32 {
    tokio::select! {
        code = fut => {
            // A run that failed dropped its download part-way (the cluster refused first): the
            // thread extracting from it ends at the closed queue; let it clean up before exit.
            settle_scratch().await;
            return code;
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    // The command's future is dropped by now: its download removed its partial file.
    bundle::scratch::interrupt();
    settle_scratch().await;
    let mut f = Failure::new(
        EXIT_INTERRUPTED,
        "interrupted; nothing partial was left in the cache",
    );
    if cmd == "setup" {
        f = f.hint("if setup had begun to write, run the same command again to finish: it picks up where this one stopped");
    }
    f.report()
}

/// Waits (up to 5 s) for the threads still writing into the cache to drop their guards, then
/// removes whatever is still registered.
async fn settle_scratch() {
    for _ in 0..250 {
        if bundle::scratch::live() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bundle::scratch::remove_all();
}

pub async fn setup(args: SetupArgs) -> i32 {
    interruptible("setup", async {
        let out = Out::detect();
        match setup_inner(&out, &args).await {
            Ok(()) => EXIT_OK,
            Err(f) => f.report(),
        }
    })
    .await
}

/// Why a pass of `setup` stopped.
enum Stop {
    /// Retrying may help (or not: `Policy::wait` decides).
    Error(Error),
    /// Retrying will not help (conflicts).
    Failure(Failure),
}

async fn setup_inner(out: &Out, args: &SetupArgs) -> Result<(), Failure> {
    let s = start(out, &args.release, &args.connection).await?;
    // Changes made so far, over every pass.
    let mut made = 0usize;
    let (mut attempt, mut made_then) = (0u32, 0usize);
    loop {
        let e = match setup_pass(out, &s, &mut made).await {
            Ok(()) => return Ok(()),
            Err(Stop::Failure(f)) => return Err(part_way(f, made)),
            Err(Stop::Error(e)) => e,
        };
        // Each pass that got further earns a fresh set of retries.
        if made > made_then {
            (attempt, made_then) = (0, made);
        }
        attempt += 1;
        match s.conn.retry.wait(out, &e, attempt, false) {
            Some(wait) => tokio::time::sleep(wait).await,
            None => return Err(part_way(Failure::from(e), made)),
        }
    }
}

/// A setup that changed something before it failed says how to finish.
fn part_way(mut f: Failure, made: usize) -> Failure {
    if made > 0 {
        f.hint = Some(format!(
            "setup stopped part-way ({made} change(s) made); run the same command again to finish: it picks up where this one stopped"
        ));
    }
    f
}

/// Plans again (what earlier passes did is in place and not redone), then applies.
async fn setup_pass(out: &Out, s: &Session, made: &mut usize) -> Result<(), Stop> {
    let mut planned = plan_once(out, s).await.map_err(Stop::Error)?;
    let conflicts = planned.conflicts();
    if !conflicts.conflicts.is_empty() {
        return Err(Stop::Failure(conflict_failure(&conflicts)));
    }
    // The Fleet package first: the hooks call its pipelines.
    if let (Some(f), Some(pp)) = (&s.fleet, &planned.package)
        && let Some(i) = &pp.install
    {
        out.step(&i.to_string(), engine::package::apply(&f.client, pp))
            .await
            .map_err(Stop::Error)?;
        *made += 1;
        // Its model and pipelines are there now: plan the rest against them.
        planned = plan_once(out, s).await.map_err(Stop::Error)?;
        let conflicts = planned.conflicts();
        if !conflicts.conflicts.is_empty() {
            return Err(Stop::Failure(conflict_failure(&conflicts)));
        }
    }
    let desired = &planned.desired;
    if planned.is_empty() && *made == 0 {
        let what = match &desired.fleet {
            Some(v) => format!(
                "Fleet package {} {v} is installed and wired",
                engine::package::PACKAGE
            ),
            None => format!("release {} is installed and unchanged", desired.release),
        };
        out.line(format!(
            "nothing to do: {what} (model {})",
            desired.model_id
        ));
        return verify_fleet(out, s, desired).await;
    }
    let mut warnings = Vec::new();
    for action in &planned.plan.actions {
        // One action at a time through the engine, so each gets its own progress line.
        let single = Plan {
            actions: vec![action.clone()],
            conflicts: vec![],
        };
        let applied = out
            .step(
                &label(action, desired),
                engine::apply(&s.es, desired, &single),
            )
            .await
            .map_err(|(_, e)| Stop::Error(e))?;
        *made += 1;
        warnings.extend(applied.warnings);
    }
    if let Some(r) = &planned.rules {
        rules::apply(out, r, &s.es, made)
            .await
            .map_err(Stop::Error)?;
    }
    for w in &warnings {
        out.line(format!("note: {w}"));
    }
    if let Some(v) = &desired.fleet {
        out.line(format!(
            "installed Fleet package {} {v} (model {}); {} call(s) its pipeline {}",
            engine::package::PACKAGE,
            desired.model_id,
            desired.hooks.join(", "),
            desired.router_pipeline()
        ));
        return verify_fleet(out, s, desired).await;
    }
    out.line(format!(
        "installed release {} (model {}); enrich DNS data with ingest pipeline {}, e.g. \
         output.elasticsearch.pipeline in packetbeat or index.default_pipeline",
        desired.release,
        desired.model_id,
        desired.router_pipeline()
    ));
    Ok(())
}

/// The Fleet route ends, as the controller's pass does, with the canary run through the
/// package's router, read where the package's model writes its answer.
async fn verify_fleet(out: &Out, s: &Session, desired: &engine::Desired) -> Result<(), Stop> {
    if desired.fleet.is_none() {
        return Ok(());
    }
    let verdict = engine::verify::verify(
        &s.es,
        desired.router_pipeline(),
        &desired.model_id,
        &desired.result_fields(),
    )
    .await
    .map_err(Stop::Error)?;
    match verdict {
        engine::verify::Verdict::Failed(m) => Err(Stop::Failure(
            Failure::new(
                EXIT_UNEXPECTED,
                format!("installed, but the canary documents were scored wrongly: {m}"),
            )
            .hint("check the package's model and pipelines in Kibana (Stack Management, Ingest Pipelines)"),
        )),
        engine::verify::Verdict::Passed(m) => {
            out.line(format!("verified: {m}"));
            Ok(())
        }
        engine::verify::Verdict::Unproven(m) => {
            out.line(format!("not verified (nothing failed): {m}"));
            Ok(())
        }
    }
}

pub async fn plan(args: PlanArgs) -> i32 {
    interruptible("plan", async {
        let out = Out::detect();
        match plan_inner(&out, &args).await {
            Ok(code) => code,
            Err(f) => f.report(),
        }
    })
    .await
}

async fn plan_inner(out: &Out, args: &PlanArgs) -> Result<i32, Failure> {
    let s = start(out, &args.release, &args.connection).await?;
    let planned = s.conn.retry.run(out, false, || plan_once(out, &s)).await?;
    let conflicts = planned.conflicts();
    let desired = &planned.desired;
    if planned.is_empty() && conflicts.conflicts.is_empty() {
        let what = match &desired.fleet {
            Some(v) => format!(
                "Fleet package {} {v} is installed and wired",
                engine::package::PACKAGE
            ),
            None => format!("release {} is installed and unchanged", desired.release),
        };
        out.line(format!("no changes: {what} (model {})", desired.model_id));
        return Ok(EXIT_OK);
    }
    let steps: Vec<String> = planned
        .whole()
        .lines()
        .into_iter()
        .map(|l| l.text)
        .collect();
    if !steps.is_empty() {
        out.line(format!("setup would make {} change(s):", steps.len()));
        for s in &steps {
            out.line(format!("  {s}"));
        }
    }
    if !conflicts.conflicts.is_empty() {
        return Err(conflict_failure(&conflicts));
    }
    out.line("nothing was changed; run `dga-operator setup` with the same arguments to apply");
    Ok(EXIT_CHANGES_PENDING)
}

pub async fn remove(args: RemoveArgs) -> i32 {
    interruptible("remove", async {
        let out = Out::detect();
        match remove_inner(&out, &args).await {
            Ok(()) => EXIT_OK,
            Err(f) => f.report(),
        }
    })
    .await
}

async fn remove_inner(out: &Out, args: &RemoveArgs) -> Result<(), Failure> {
    let conn = connection(&args.connection)?;
    let (es, _) = connect(out, &conn, false).await?;
    let mut owner = Owner::cli();
    owner.adopted = args.leftovers_of.clone();
    let mut known = known_ids();
    if args.fleet_package.is_some() {
        if conn.kibana.is_none() {
            return Err(Failure::usage(
                "--fleet-package is uninstalled through Kibana's Fleet API: give --kibana-url",
            ));
        }
        let hooks = if args.custom_pipelines.is_empty() {
            engine::Wiring::from_spec(None).custom_pipelines
        } else {
            args.custom_pipelines.clone()
        };
        known.pipelines.extend(hooks);
    }
    if !owner.adopted.is_empty() {
        // A DgaModel also wires the enrichment in: by default through these hook pipelines and
        // indices (hooks its spec named otherwise are not known here).
        let wiring = engine::Wiring::from_spec(None);
        known.pipelines.extend(wiring.custom_pipelines);
        known.indices.extend(wiring.indices);
    }
    let none = Ids::default();
    let mut removed = out
        .step(
            "removing what dga-operator setup installed",
            conn.retry
                .run(out, false, || engine::cleanup(&es, &owner, &none, &known)),
        )
        .await?;
    let mut kept: Vec<String> = Vec::new();
    if let Some(kb) = &conn.kibana {
        let (gone, left) = out
            .step(
                "removing the detection rules dga-operator setup installed",
                conn.retry
                    .run(out, false, || rules::remove(kb, conn.timeout, &es, &owner)),
            )
            .await?;
        removed.extend(gone);
        kept.extend(left);
    }
    if let (Some(v), Some(kb)) = (&args.fleet_package, &conn.kibana) {
        let client = crate::kibana::KibanaClient::new(
            kb.http_client(conn.timeout)?,
            &kb.url,
            kb.auth.clone(),
        );
        let state = conn
            .retry
            .run(out, false, || {
                client.fleet_package(engine::package::PACKAGE, None)
            })
            .await?;
        match state.and_then(|p| p.installed) {
            Some(installed) if installed == *v => {
                let gone = out
                    .step(
                        &format!(
                            "uninstalling Fleet package {} {v}",
                            engine::package::PACKAGE
                        ),
                        conn.retry
                            .run(out, false, || engine::package::remove(&client, v)),
                    )
                    .await?;
                removed.push(gone);
            }
            Some(other) => kept.push(format!(
                "Fleet package {} {other} (not the version --fleet-package names)",
                engine::package::PACKAGE
            )),
            None => {}
        }
    }
    if removed.is_empty() {
        out.line("nothing to remove: no objects installed by dga-operator setup were found");
    }
    for r in &removed {
        out.line(format!("removed {r}"));
    }
    // Objects with the package's ids that were not ours stay; say so, every kind.
    let left = conn
        .retry
        .run(out, false, || engine::observe(&es, &known))
        .await?;
    kept.extend(left.models.keys().map(|id| format!("trained model {id}")));
    kept.extend(
        left.pipelines
            .keys()
            .map(|id| format!("ingest pipeline {id}")),
    );
    kept.extend(left.scripts.keys().map(|id| format!("stored script {id}")));
    for job in [engine::mljob::JOB_ID, engine::mljob::JOB_ID_EA] {
        if conn
            .retry
            .run(out, false, || es.get_job(job))
            .await?
            .is_some()
        {
            kept.push(format!(
                "anomaly detection job {job} and datafeed {}",
                engine::mljob::datafeed_id(job)
            ));
        }
    }
    if !kept.is_empty() {
        out.line(format!(
            "left in place (not installed by dga-operator setup): {}",
            kept.join(", ")
        ));
    }
    Ok(())
}
