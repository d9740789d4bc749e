//! Elastic Cloud ids: `name:base64(host[:port]$es_uuid[:port]$kibana_uuid[:port])`.
//!
//! The deployment's Elasticsearch is at `https://<es_uuid>.<host>:<port>` and its Kibana at
//! `https://<kibana_uuid>.<host>:<port>`; the port is 443 unless the host part names one (a
//! port on a uuid part overrides it for that service, as some cloud ids carry one).

use base64::Engine as _;

/// The URLs a cloud id stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudId {
    /// The deployment name before the first `:` (informational).
    pub name: String,
    pub elasticsearch_url: String,
    /// None when the id carries no Kibana part.
    pub kibana_url: Option<String>,
}

/// Decodes and validates a cloud id. The error says what is wrong, without repeating the id.
pub fn decode(raw: &str) -> Result<CloudId, String> {
    let raw = raw.trim();
    let (name, encoded) = raw
        .split_once(':')
        .ok_or("expected `<name>:<base64>` (no `:` found)")?;
    if encoded.is_empty() {
        return Err("nothing after the `:` (expected base64)".into());
    }
    let bytes = decode_base64(encoded).ok_or("the part after the `:` is not valid base64")?;
    let text = String::from_utf8(bytes).map_err(|_| "the decoded value is not UTF-8 text")?;
    let parts: Vec<&str> = text.trim_end().split('$').collect();
    if parts.len() < 2 {
        return Err(
            "the decoded value is not `host$es_uuid$kibana_uuid` (no `$` separator)".into(),
        );
    }
    let (host, port) = split_port(parts[0], 443)?;
    if host.is_empty() || !is_hostname(host) {
        return Err("the decoded host is empty or not a host name".into());
    }
    let url = |part: &str, what: &str| -> Result<Option<String>, String> {
        if part.is_empty() {
            return Ok(None);
        }
        let (uuid, p) = split_port(part, port)?;
        if uuid.is_empty() || !uuid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!("the {what} id is not a valid host label"));
        }
        Ok(Some(format!("https://{uuid}.{host}:{p}")))
    };
    let elasticsearch_url =
        url(parts[1], "Elasticsearch")?.ok_or("the Elasticsearch id is empty")?;
    let kibana_url = match parts.get(2) {
        Some(k) => url(k, "Kibana")?,
        None => None,
    };
    Ok(CloudId {
        name: name.to_string(),
        elasticsearch_url,
        kibana_url,
    })
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let s = s.trim();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s).ok())
}

/// `host:port` -> (host, port); `host` -> (host, default).
fn split_port(s: &str, default: u16) -> Result<(&str, u16), String> {
    match s.rsplit_once(':') {
        None => Ok((s, default)),
        Some((h, p)) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok((h, n)),
            _ => Err(format!("`{p}` is not a valid port")),
        },
    }
}

fn is_hostname(h: &str) -> bool {
    h.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn id(name: &str, inner: &str) -> String {
        format!("{name}:{}", STANDARD.encode(inner))
    }

    #[test]
    fn default_port_and_both_services() {
        let c = decode(&id(
            "my-deployment",
            "us-central1.gcp.cloud.es.io$abc123$def456",
        ))
        .unwrap();
        assert_eq!(c.name, "my-deployment");
        assert_eq!(
            c.elasticsearch_url,
            "https://abc123.us-central1.gcp.cloud.es.io:443"
        );
        assert_eq!(
            c.kibana_url.as_deref(),
            Some("https://def456.us-central1.gcp.cloud.es.io:443")
        );
    }

    #[test]
    fn port_in_host_part_and_uuid_override() {
        let c = decode(&id("x", "eu-west-1.aws.found.io:9243$es1$kb1")).unwrap();
        assert_eq!(
            c.elasticsearch_url,
            "https://es1.eu-west-1.aws.found.io:9243"
        );
        assert_eq!(
            c.kibana_url.unwrap(),
            "https://kb1.eu-west-1.aws.found.io:9243"
        );
        let c = decode(&id("x", "host.example:9243$es1:9200$kb1")).unwrap();
        assert_eq!(c.elasticsearch_url, "https://es1.host.example:9200");
        assert_eq!(c.kibana_url.unwrap(), "https://kb1.host.example:9243");
    }

    #[test]
    fn kibana_part_optional_and_padding_optional() {
        let c = decode(&id("x", "host.example$es1")).unwrap();
        assert_eq!(c.kibana_url, None);
        let c = decode(&id("x", "host.example$es1$")).unwrap();
        assert_eq!(c.kibana_url, None);
        let unpadded = format!(
            "x:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode("host.example$es1$kb")
        );
        assert!(decode(&unpadded).is_ok());
        // A name may be empty; only the first `:` separates it.
        assert!(decode(&id("", "host.example$es1")).is_ok());
    }

    #[test]
    fn malformed_ids_are_refused_with_a_reason() {
        for (raw, needle) in [
            ("no-colon".to_string(), "no `:`"),
            ("name:".to_string(), "nothing after"),
            ("name:%%%not-base64".to_string(), "not valid base64"),
            (id("n", "justahost"), "no `$`"),
            (id("n", "$es$kb"), "host"),
            (id("n", "host.example$$kb"), "Elasticsearch id is empty"),
            (id("n", "host.example:99999$es$kb"), "not a valid port"),
            (id("n", "host.example:abc$es$kb"), "not a valid port"),
            (id("n", "bad host$es$kb"), "host"),
            (id("n", "host.example$e/s$kb"), "Elasticsearch id"),
            (
                format!("n:{}", STANDARD.encode([0xff, 0xfe, b'$', b'a'])),
                "UTF-8",
            ),
        ] {
            let e = decode(&raw).unwrap_err();
            assert!(e.contains(needle), "{raw}: {e}");
        }
    }
}
