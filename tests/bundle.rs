//! Release bundles: what the stand-in's builder writes, the operator opens, in both layouts, and
//! every unsafe or broken zip is refused with the file and the problem named.

use std::path::Path;

use dga_operator::bundle::fetch::{Fetcher, Request};
use dga_operator::bundle::{self, Layout, Limits, PipelineRole};
use dga_operator::error::Error;
use dga_standin::bundle::{self as builder, BundleSpec, Defect};
use dga_standin::model::ModelEncoding;

fn open(zip: &Path, dir: &Path) -> Result<bundle::Bundle, bundle::BundleError> {
    bundle::open_zip(
        zip,
        "sha-under-test",
        &dir.join("opened"),
        &Limits::default(),
    )
}

fn layout_of(l: Layout) -> builder::Layout {
    match l {
        Layout::V1 => builder::Layout::V1,
        Layout::V2 => builder::Layout::V2,
    }
}

#[test]
fn builder_releases_open_in_both_layouts_and_encodings() {
    for layout in [Layout::V1, Layout::V2] {
        for encoding in [ModelEncoding::Plain, ModelEncoding::Compressed] {
            let tmp = tempfile::tempdir().unwrap();
            let mut spec = BundleSpec::small("ML-DGA-20210126-3", layout_of(layout));
            spec.encoding = encoding;
            let rel = builder::write_release(&spec, tmp.path()).unwrap();
            let b = open(&rel.zip_path, tmp.path()).unwrap_or_else(|e| panic!("{layout:?}: {e}"));
            assert_eq!(b.layout, layout);
            assert_eq!(b.tag, "ML-DGA-20210126-3");
            assert_eq!(b.model.id, rel.model_id);
            assert_eq!(b.pipeline(PipelineRole::Router).id, rel.router_pipeline);
            assert_eq!(
                b.pipeline(PipelineRole::Inference).id,
                rel.inference_pipeline
            );
            let mut scripts: Vec<_> = b.scripts.keys().cloned().collect();
            let mut want = rel.script_ids.clone();
            scripts.sort();
            want.sort();
            assert_eq!(scripts, want);
            assert_eq!(b.rules.len(), rel.rule_ids.len());
            // The definition was kept raw on disk, byte for byte what the release holds.
            let key = if matches!(encoding, ModelEncoding::Plain) {
                "definition"
            } else {
                "compressed_definition"
            };
            assert_eq!(b.model.definition_key, key);
            assert_eq!(
                std::fs::metadata(&b.model.definition_path).unwrap().len(),
                b.model.definition_len
            );
            assert!(!b.model.head.contains_key("model_id"));
            assert!(b.model.head.contains_key("input"));
        }
    }
}

#[test]
fn unpacked_release_folders_open_too() {
    for layout in [builder::Layout::V1, builder::Layout::V2] {
        let tmp = tempfile::tempdir().unwrap();
        let rel = builder::write_unpacked(
            &BundleSpec::small("ML-DGA-20201129-25", layout),
            &tmp.path().join("src"),
        )
        .unwrap();
        // Either the tag folder itself or its parent.
        for src in [
            rel.zip_path.clone(),
            rel.zip_path.parent().unwrap().to_path_buf(),
        ] {
            let b = bundle::open_dir(&src, &tmp.path().join("opened"), &Limits::default()).unwrap();
            assert_eq!(b.tag, "ML-DGA-20201129-25");
            assert_eq!(b.model.id, rel.model_id);
        }
    }
}

#[test]
fn bad_releases_are_refused_naming_the_file_and_problem() {
    let cases: Vec<(Defect, &str)> = vec![
        (Defect::ParentTraversal, ".."),
        (Defect::AbsolutePath, "absolute"),
        (Defect::Symlink, "symbolic link"),
        (Defect::ZipBomb { bytes: 2 << 30 }, "limit"),
        (Defect::DuplicateModel, "more than one"),
        (Defect::MalformedJson, "malformed JSON"),
        (Defect::ModelMissingInput, "input.field_names"),
        (Defect::MissingPipeline, "missing"),
    ];
    for (defect, needle) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let label = format!("{defect:?}");
        let zip = builder::write_bad_release(
            &BundleSpec::small("ML-DGA-20201129-25", builder::Layout::V1),
            defect,
            tmp.path(),
        )
        .unwrap();
        let err = open(&zip, tmp.path()).expect_err(&label);
        assert!(err.to_string().contains(needle), "{label}: {err}");
        assert!(!err.file.is_empty(), "{label}: names a file");
    }
}

#[test]
fn other_broken_zips() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    let not_zip = p.join("x.zip");
    std::fs::write(&not_zip, b"PK\x03\x04 this is not really a zip").unwrap();
    assert!(
        open(&not_zip, p)
            .unwrap_err()
            .problem
            .contains("not a valid zip")
    );

    let deep = "[".repeat(5000);
    #[allow(clippy::type_complexity)] // (case, entries, expected message) reads best inline
    let cases: Vec<(&str, Vec<(&str, &[u8])>, &str)> = vec![
        (
            "unknown layout",
            vec![("ML-DGA-20201129-25/readme.txt", b"hi")],
            "unknown layout",
        ),
        (
            "two top folders",
            vec![("a/x_model.json", b"{}"), ("b/y_pipeline.json", b"{}")],
            "one top folder",
        ),
        (
            "invalid utf-8",
            vec![
                ("ML-DGA-20201129-25/m_model.json", b"{}"),
                ("ML-DGA-20201129-25/a_script.json", b"\xff\xfe"),
                ("ML-DGA-20201129-25/p_pipeline.json", b"{}"),
            ],
            "UTF-8",
        ),
        (
            "deep json",
            vec![
                ("ML-DGA-20201129-25/m_model.json", b"{}"),
                ("ML-DGA-20201129-25/a_script.json", deep.as_bytes()),
                ("ML-DGA-20201129-25/p_pipeline.json", b"{}"),
            ],
            "malformed JSON",
        ),
    ];
    for (label, entries, needle) in cases {
        let zip = p.join(format!("{}.zip", label.replace(' ', "-")));
        builder::write_custom_zip(&zip, &entries).unwrap();
        let err = open(&zip, p).expect_err(label);
        assert!(err.to_string().contains(needle), "{label}: {err}");
    }
    // More entries than the limit.
    let many: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("ML-DGA-20201129-25/f{i}.txt"), vec![]))
        .collect();
    let refs: Vec<(&str, &[u8])> = many
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let zip = p.join("many.zip");
    builder::write_custom_zip(&zip, &refs).unwrap();
    assert!(open(&zip, p).unwrap_err().problem.contains("entries"));
}

fn fetcher(standin: &dga_standin::Standin, cache: &Path) -> Fetcher {
    Fetcher::new(
        reqwest::Client::new(),
        &standin.github_url(),
        cache.to_path_buf(),
    )
}

#[tokio::test]
async fn fetch_from_releases_api_verifies_and_caches() {
    let standin = dga_standin::Standin::start(Default::default())
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rel = builder::write_release(
        &BundleSpec::small("ML-DGA-20210126-3", builder::Layout::V2),
        tmp.path(),
    )
    .unwrap();
    standin
        .publish_built("elastic/detection-rules", &rel)
        .unwrap();
    let f = fetcher(&standin, &tmp.path().join("cache"));
    let fetch = || {
        f.fetch(Request {
            tag: &rel.tag,
            source: None,
        })
    };
    let b = fetch().await.unwrap();
    assert_eq!(b.sha256, rel.zip_sha256);
    let downloads = || {
        standin
            .requests()
            .iter()
            .filter(|r| r.path.contains("/download/"))
            .count()
    };
    assert_eq!(downloads(), 2, "zip and manifest");
    // The second fetch is served from the cache.
    fetch().await.unwrap();
    assert_eq!(downloads(), 2);
    assert!(standin.off_spec_requests().is_empty());
    // An opened release whose files were removed from the cache is opened again from its zip,
    // not served from memory with a missing definition.
    std::fs::remove_dir_all(tmp.path().join("cache/bundles")).unwrap();
    let again = fetch().await.unwrap();
    assert!(again.model.definition_path.exists());
    assert_eq!(downloads(), 2);
    // The first open took the model entry as it was extracted during the download; opening
    // the finished zip gives the same bundle.
    assert_eq!(again, b);
    let staging_left = |cache: &str| {
        std::fs::read_dir(tmp.path().join(cache).join("zips"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".prefetch-"))
            .count()
    };
    assert_eq!(staging_left("cache"), 0);

    // Unknown tag.
    let err = f
        .fetch(Request {
            tag: "ML-DGA-20990101-1",
            source: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ReleaseNotFound { .. }), "{err}");

    // A pinned sha256 that does not match: refused, nothing cached under it.
    let src = dga_operator::api::ReleaseSource {
        repository: None,
        url: None,
        sha256: Some("0".repeat(64)),
    };
    let f2 = fetcher(&standin, &tmp.path().join("cache2"));
    let err = f2
        .fetch(Request {
            tag: &rel.tag,
            source: Some(&src),
        })
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "ChecksumMismatch", "{err}");
    assert!(!tmp.path().join("cache2/bundles").exists());
    assert_eq!(staging_left("cache2"), 0);
}

#[tokio::test]
async fn fetch_checks_the_manifest_and_the_asset_list() {
    let standin = dga_standin::Standin::start(Default::default())
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rel = builder::write_release(
        &BundleSpec::small("ML-DGA-20210126-4", builder::Layout::V1),
        tmp.path(),
    )
    .unwrap();
    let zip = std::fs::read(&rel.zip_path).unwrap();
    let wrong_manifest = serde_json::to_vec(&serde_json::json!({"assets": {format!("{}.zip", rel.tag): {"zipped_sha256": "f".repeat(64)}}})).unwrap();
    standin.publish_release(
        "elastic/detection-rules",
        &rel.tag,
        vec![
            (format!("{}.zip", rel.tag), zip.clone()),
            (format!("manifest-{}.json", rel.tag), wrong_manifest),
        ],
    );
    let f = fetcher(&standin, &tmp.path().join("cache"));
    let err = f
        .fetch(Request {
            tag: &rel.tag,
            source: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "ChecksumMismatch", "{err}");

    standin.publish_release("elastic/detection-rules", "ML-DGA-20210126-5", vec![]);
    let err = f
        .fetch(Request {
            tag: "ML-DGA-20210126-5",
            source: None,
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no ML-DGA*.zip asset"), "{err}");

    standin.publish_release(
        "elastic/detection-rules",
        "ML-DGA-20210126-6",
        vec![
            ("ML-DGA-20210126-6.zip".into(), zip.clone()),
            ("ML-DGA-20210126-6-copy.zip".into(), zip.clone()),
        ],
    );
    let err = f
        .fetch(Request {
            tag: "ML-DGA-20210126-6",
            source: None,
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("2 ML-DGA*.zip assets"), "{err}");

    // A zip whose folder is another tag.
    standin.publish_release(
        "elastic/detection-rules",
        "ML-DGA-20210126-7",
        vec![("ML-DGA-20210126-7.zip".into(), zip)],
    );
    let err = f
        .fetch(Request {
            tag: "ML-DGA-20210126-7",
            source: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "InvalidBundle", "{err}");
    assert!(standin.off_spec_requests().is_empty());
}

#[tokio::test]
async fn bundle_dir_serves_releases_without_any_download() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundles");
    // One release unpacked as `<dir>/<tag>/`, one as `<dir>/<tag>.zip`.
    let unpacked = builder::write_unpacked(
        &BundleSpec::small("ML-DGA-20201129-25", builder::Layout::V1),
        &dir,
    )
    .unwrap();
    let zipped = builder::write_release(
        &BundleSpec::small("ML-DGA-20210126-3", builder::Layout::V2),
        &dir,
    )
    .unwrap();
    // Nothing listens here: any download attempt would fail.
    let mut f = Fetcher::new(
        reqwest::Client::new(),
        "http://127.0.0.1:9",
        tmp.path().join("cache"),
    );
    f.bundle_dir = Some(dir.clone());
    let a = f
        .fetch(Request {
            tag: "ML-DGA-20201129-25",
            source: None,
        })
        .await
        .unwrap();
    assert_eq!(a.model.id, unpacked.model_id);
    let b = f
        .fetch(Request {
            tag: "ML-DGA-20210126-3",
            source: None,
        })
        .await
        .unwrap();
    assert_eq!(b.sha256, zipped.zip_sha256);
    // A tag the folder lacks falls through to the (unreachable) releases API.
    let err = f
        .fetch(Request {
            tag: "ML-DGA-20990101-1",
            source: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "Unreachable", "{err}");
}
