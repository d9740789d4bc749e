//! Small helpers: timestamps, ids, error bodies, JSON field paths.

use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// ISO-8601 UTC timestamp with milliseconds, e.g. `2026-11-28T02:50:30.123Z`.
pub fn now_iso() -> String {
    iso_from_millis(now_millis())
}

pub fn iso_from_millis(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil_from_days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        y,
        m,
        d,
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

/// A random (version 4 shaped) UUID string.
pub fn uuid4() -> String {
    let b: [u8; 16] = rand::random();
    let mut b = b;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// An Elasticsearch-shaped error body.
pub fn es_error_body(status: u16, typ: &str, reason: &str) -> Value {
    json!({
        "error": {
            "root_cause": [{"type": typ, "reason": reason}],
            "type": typ,
            "reason": reason,
        },
        "status": status,
    })
}

/// A Kibana-shaped (hapi/boom) error body.
pub fn kibana_error_body(status: u16, message: &str) -> Value {
    let error = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    };
    json!({"statusCode": status, "error": error, "message": message})
}

/// Does `name` match the ES-style pattern list entry `pat` (`*` wildcards)?
pub fn wildcard_match(pat: &str, name: &str) -> bool {
    if !pat.contains('*') {
        return pat == name;
    }
    let parts: Vec<&str> = pat.split('*').collect();
    let mut rest = name;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            if !rest.starts_with(p) {
                return false;
            }
            rest = &rest[p.len()..];
        } else if i == parts.len() - 1 {
            return rest.ends_with(p) && rest.len() >= p.len();
        } else if let Some(pos) = rest.find(p) {
            rest = &rest[pos + p.len()..];
        } else {
            return false;
        }
    }
    true
}

/// Get a dotted field (`a.b.c`) out of a JSON document. Tries nested objects first, then a
/// literal dotted key at each level.
pub fn get_field<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = doc.get(path) {
        return Some(v);
    }
    let (head, tail) = path.split_once('.')?;
    get_field(doc.get(head)?, tail)
}

/// Set a dotted field, creating intermediate objects.
pub fn set_field(doc: &mut Value, path: &str, value: Value) {
    let mut cur = doc;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        let obj = cur.as_object_mut().expect("object");
        if i == parts.len() - 1 {
            obj.insert((*p).to_string(), value);
            return;
        }
        cur = obj
            .entry((*p).to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
}

/// Remove a dotted field; returns the removed value.
pub fn remove_field(doc: &mut Value, path: &str) -> Option<Value> {
    if let Some(obj) = doc.as_object_mut()
        && obj.contains_key(path)
    {
        return obj.remove(path);
    }
    let (head, tail) = path.split_once('.')?;
    remove_field(doc.get_mut(head)?, tail)
}

/// Elasticsearch's `filter_path` response filter: comma-separated dotted paths, `*` inside a
/// name, `**` for any depth; arrays are transparent; what matches nothing is dropped, so a
/// response with no match at all is `{}`. Exclusions (`-path`) are not modelled.
pub fn filter_path(v: &Value, spec: &str) -> Value {
    let owned: Vec<Vec<String>> = spec
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(filter_segments)
        .collect();
    let paths: Vec<Vec<&str>> = owned
        .iter()
        .map(|p| p.iter().map(String::as_str).collect())
        .collect();
    let refs: Vec<&[&str]> = paths.iter().map(Vec::as_slice).collect();
    filter_value(v, &refs).unwrap_or_else(|| Value::Object(Default::default()))
}

/// A filter's field names, as `FilterPath` (libs/x-content `FilterPathBuilder.insertNode`)
/// splits it: at the first dot not escaped as `\.`, when that dot is not the first character
/// (a leading dot stays part of one final name); `\.` becomes a literal dot in the name.
fn filter_segments(filter: &str) -> Vec<String> {
    let b = filter.as_bytes();
    let mut i = 0;
    let mut split = None;
    while i < b.len() {
        if b[i] == b'.' {
            split = Some(i);
            break;
        } else if b[i] == b'\\' && i + 1 < b.len() && b[i + 1] == b'.' {
            i += 1;
        }
        i += 1;
    }
    match split {
        Some(at) if at > 0 => {
            let mut out = vec![filter[..at].replace("\\.", ".")];
            out.extend(filter_segments(&filter[at + 1..]));
            out
        }
        _ => vec![filter.replace("\\.", ".")],
    }
}

fn filter_value(v: &Value, paths: &[&[&str]]) -> Option<Value> {
    if paths.iter().any(|p| p.is_empty() || *p == ["**"]) {
        return Some(v.clone());
    }
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, child) in m {
                let mut sub: Vec<&[&str]> = Vec::new();
                for p in paths {
                    if p[0] == "**" {
                        sub.push(p);
                        if wildcard_match(p[1], k) {
                            sub.push(&p[2..]);
                        }
                    } else if wildcard_match(p[0], k) {
                        sub.push(&p[1..]);
                    }
                }
                if !sub.is_empty()
                    && let Some(c) = filter_value(child, &sub)
                {
                    out.insert(k.clone(), c);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(a) => {
            let items: Vec<Value> = a.iter().filter_map(|x| filter_value(x, paths)).collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn iso() {
        assert_eq!(iso_from_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            iso_from_millis(1_606_608_000_123),
            "2020-11-29T00:00:00.123Z"
        );
    }
    #[test]
    fn wildcard() {
        assert!(wildcard_match("dga*", "dga_1"));
        assert!(wildcard_match("*_1", "dga_1"));
        assert!(wildcard_match("d*_*", "dga_1"));
        assert!(!wildcard_match("x*", "dga_1"));
        assert!(wildcard_match("*", ""));
    }
    #[test]
    fn fields() {
        let mut d = json!({"a": {"b": 1}, "x.y": 2});
        assert_eq!(get_field(&d, "a.b"), Some(&json!(1)));
        assert_eq!(get_field(&d, "x.y"), Some(&json!(2)));
        set_field(&mut d, "c.d.e", json!(3));
        assert_eq!(get_field(&d, "c.d.e"), Some(&json!(3)));
        assert_eq!(remove_field(&mut d, "a.b"), Some(json!(1)));
        assert!(get_field(&d, "a.b").is_none());
    }
}
