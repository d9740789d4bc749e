//! The GitHub releases imitation: `GET /repos/{owner}/{repo}/releases/tags/{tag}`, asset
//! downloads (`/download/{owner}/{repo}/{tag}/{name}`, and the API asset URL
//! `/repos/{owner}/{repo}/releases/assets/{id}`), and plain mirror files (`/mirror/{name}`).
//! Not spec-checked (no GitHub spec is embedded); any or no `Authorization` is accepted.

use serde_json::json;

use crate::server::{AssetSource, Req, Resp, RespBody, Shared};
use crate::spec::split_path;

fn not_found() -> Resp {
    Resp::json(
        404,
        &json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"}),
    )
}

fn asset_resp(src: AssetSource, name: &str) -> Resp {
    let mut r = Resp::json(200, &serde_json::Value::Null);
    r.body = RespBody::Source(src);
    r.headers = vec![
        ("content-type".into(), "application/octet-stream".into()),
        (
            "content-disposition".into(),
            format!("attachment; filename={name}"),
        ),
    ];
    r
}

pub(crate) fn handle(sh: &Shared, r: &Req) -> Resp {
    if r.method != "GET" && r.method != "HEAD" {
        return not_found().api("github.unknown");
    }
    // The Fleet package registry is served here too (`fleet_package.rs`).
    if let Some(resp) = crate::fleet_package::handle(sh, r) {
        return resp;
    }
    let segs = split_path(&r.path);
    let s: Vec<&str> = segs.iter().map(|x| x.as_str()).collect();
    let base = sh.github_url.get().cloned().unwrap_or_default();
    match s.as_slice() {
        ["repos", owner, repo, "releases", "tags", tag] => {
            let key = (format!("{owner}/{repo}"), tag.to_string());
            let st = sh.st();
            let Some(rel) = st.releases.get(&key) else {
                return not_found().api("repos/get-release-by-tag");
            };
            let assets: Vec<_> = rel
                .assets
                .iter()
                .map(|a| {
                    json!({
                        "id": a.id,
                        "name": a.name,
                        "label": "",
                        "state": "uploaded",
                        "size": a.source.len(),
                        "content_type": if a.name.ends_with(".zip") { "application/zip" } else if a.name.ends_with(".json") { "application/json" } else { "application/octet-stream" },
                        "download_count": 0,
                        "browser_download_url": format!("{base}/download/{owner}/{repo}/{tag}/{}", a.name),
                        "url": format!("{base}/repos/{owner}/{repo}/releases/assets/{}", a.id),
                        "created_at": "2020-11-29T00:00:00Z",
                        "updated_at": "2020-11-29T00:00:00Z",
                    })
                })
                .collect();
            Resp::json(
                200,
                &json!({
                    "id": rel.id,
                    "tag_name": tag,
                    "name": tag,
                    "draft": false,
                    "prerelease": false,
                    "url": format!("{base}/repos/{owner}/{repo}/releases/{}", rel.id),
                    "html_url": format!("{base}/{owner}/{repo}/releases/tag/{tag}"),
                    "created_at": "2020-11-29T00:00:00Z",
                    "published_at": "2020-11-29T00:00:00Z",
                    "assets": assets,
                }),
            )
            .api("repos/get-release-by-tag")
        }
        ["download", owner, repo, tag, name] => {
            let key = (format!("{owner}/{repo}"), tag.to_string());
            let st = sh.st();
            match st
                .releases
                .get(&key)
                .and_then(|rel| rel.assets.iter().find(|a| a.name == *name))
            {
                Some(a) => asset_resp(a.source.clone(), name).api("download"),
                None => not_found().api("download"),
            }
        }
        ["repos", owner, repo, "releases", "assets", id] => {
            let st = sh.st();
            let repo_name = format!("{owner}/{repo}");
            let hit = st
                .releases
                .iter()
                .filter(|((rn, _), _)| *rn == repo_name)
                .flat_map(|(_, rel)| rel.assets.iter())
                .find(|a| a.id.to_string() == *id);
            match hit {
                Some(a) => asset_resp(a.source.clone(), &a.name).api("repos/get-release-asset"),
                None => not_found().api("repos/get-release-asset"),
            }
        }
        ["mirror", name] => match sh.st().mirror.get(*name) {
            Some(src) => asset_resp(src.clone(), name).api("mirror"),
            None => not_found().api("mirror"),
        },
        _ => {
            let mut resp = not_found();
            resp.off_spec = Some(format!("unknown GitHub route [{}]", r.path));
            resp
        }
    }
}
