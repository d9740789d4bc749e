//! What every outgoing HTTP call shares: mapping transport errors and status codes onto
//! `Error`, with `Retry-After` honoured and response bodies summarised, never echoed whole.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::error::{Error, Service, Transience};

// --- request observer (metrics hook) ---------------------------------------------------------
/// Told of every request `send` makes: the target service and the status code (`0` when no
/// answer came). Set once per process (`crate::metrics::Metrics::install_request_observer`).
pub type Observer = Arc<dyn Fn(Service, u16) + Send + Sync>;
static OBSERVER: OnceLock<Observer> = OnceLock::new();

/// Installs the request observer; false when one is already installed.
pub fn set_observer(f: Observer) -> bool {
    OBSERVER.set(f).is_ok()
}

fn observe(service: Service, code: u16) {
    if let Some(o) = OBSERVER.get() {
        o(service, code);
    }
}
// --- end request observer -------------------------------------------------------------------

/// Sends a request; 401/403, 429 and 5xx become errors, every other status is returned.
pub async fn send(
    service: Service,
    what: &str,
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, Error> {
    let resp = req.send().await.map_err(|e| {
        observe(service, 0);
        transport_error(service, what, &e)
    })?;
    let status = resp.status().as_u16();
    observe(service, status);
    match status {
        401 | 403 => {
            let detail = summarize(resp).await;
            Err(Error::Unauthorized {
                service,
                status,
                detail,
            })
        }
        429 | 500..=599 => {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let url = fetch_url(&resp);
            let detail = format!("HTTP {status} from {url}: {}", summarize(resp).await);
            Err(Error::Transient {
                service,
                what: what.to_string(),
                detail,
                retry_after,
                cause: Transience::Status(status),
            })
        }
        _ => Ok(resp),
    }
}

pub fn transport_error(service: Service, what: &str, e: &reqwest::Error) -> Error {
    // reqwest's Display names the URL; ours never carry credentials (see `Endpoint::parse`).
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    if e.is_connect() {
        Error::Unreachable { service, detail }
    } else {
        let (what, cause) = if e.is_timeout() {
            (format!("{what} timed out"), Transience::TimedOut)
        } else {
            (what.to_string(), Transience::Dropped)
        };
        Error::Transient {
            service,
            what,
            detail,
            retry_after: None,
            cause,
        }
    }
}

/// A short, safe description of an error response: Elasticsearch's `error.type: reason`,
/// Kibana's `message`, or the first bytes of the body.
pub async fn summarize(resp: reqwest::Response) -> String {
    let status = resp.status().as_u16();
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(_) => return format!("HTTP {status}"),
    };
    summarize_body(&bytes)
}

pub fn summarize_body(bytes: &[u8]) -> String {
    if let Some(summary) = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .as_ref()
        .and_then(summarize_json)
    {
        return summary;
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).replace(['\n', '\r'], " ");
    if text.trim_start().starts_with('<') {
        return "an HTML page (is the URL pointing at a proxy or login page?)".to_string();
    }
    truncate(&text, 200)
}

/// Elasticsearch's `error.type: reason` or Kibana's `message` from a parsed error body.
pub fn summarize_json(v: &serde_json::Value) -> Option<String> {
    if let Some(err) = v.get("error") {
        if let Some(reason) = err.get("reason").and_then(|r| r.as_str()) {
            let ty = err.get("type").and_then(|t| t.as_str()).unwrap_or("error");
            return Some(truncate(&format!("{ty}: {reason}"), 400));
        }
        if let Some(s) = err.as_str() {
            let msg = v
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or_default();
            // Kibana and Hapi repeat the status text as the message ("Not Found").
            if msg.is_empty() || msg == s {
                return Some(truncate(s, 400));
            }
            return Some(truncate(&format!("{s}: {msg}"), 400));
        }
    }
    v.get("message")
        .and_then(|m| m.as_str())
        .map(|m| truncate(m, 400))
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// Reads a JSON body, mapping a cut connection to a transient error.
pub async fn json(
    service: Service,
    what: &str,
    resp: reqwest::Response,
) -> Result<serde_json::Value, Error> {
    let status = resp.status().as_u16();
    let url = fetch_url(&resp);
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| transport_error(service, what, &e))?;
    serde_json::from_slice(&bytes).map_err(|_| {
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            "an empty body".to_string()
        } else {
            summarize_body(&bytes)
        };
        Error::Rejected {
            service,
            what: what.to_string(),
            status,
            detail: format!("the answer from {url} is not JSON: {body}"),
        }
    })
}

/// The URL an answer came from, without userinfo or query (which may carry tokens).
pub fn fetch_url(resp: &reqwest::Response) -> String {
    redact(resp.url())
}

/// A URL fit for a message: no userinfo, no query.
pub fn redact(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}
