//! Adding and removing one finalizer without losing anyone else's.
//!
//! A JSON patch with a `test` on the finalizer list alone (kube-runtime's finalizer helper does
//! the same): a compare-and-swap on what it changes, so concurrent writes elsewhere on the object
//! (annotations, labels, status, the Secret's data) never make it fail, and a finalizer someone
//! else added or removed meanwhile is never lost (the test fails with 422/409 and the next pass
//! sees fresh data). A merge patch with a `resourceVersion` precondition failed forever under a
//! steady stream of annotation patches; a plain merge patch of the list would drop a finalizer
//! another controller added in between.

use serde_json::json;

use crate::error::Error;

#[derive(Clone, Copy, Debug)]
pub enum Op {
    Add,
    Remove,
}

/// The patch that adds `name` to, or removes it from, an object whose finalizers are `current`.
pub fn patch(current: &[String], name: &str, op: Op) -> Result<json_patch::Patch, Error> {
    let ops = match op {
        Op::Add if current.is_empty() => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [name]}
        ]),
        Op::Add => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "add", "path": "/metadata/finalizers/-", "value": name}
        ]),
        Op::Remove => {
            let i = current
                .iter()
                .position(|f| f == name)
                .ok_or_else(|| Error::Internal(format!("finalizer {name} is not on the object")))?;
            let path = format!("/metadata/finalizers/{i}");
            json!([
                {"op": "test", "path": path, "value": name},
                {"op": "remove", "path": path}
            ])
        }
    };
    serde_json::from_value(ops).map_err(|e| Error::Internal(format!("finalizer patch: {e}")))
}

#[cfg(test)]
mod tests {
    use super::{Op, patch};
    use serde_json::json;

    fn apply(doc: serde_json::Value, p: &json_patch::Patch) -> Result<serde_json::Value, String> {
        let mut doc = doc;
        json_patch::patch(&mut doc, p).map_err(|e| e.to_string())?;
        Ok(doc)
    }

    #[test]
    fn adds_and_removes_only_its_own_and_fails_on_a_changed_list() {
        // The apiserver's JSON patch (evanphx/json-patch) reads a missing list as null; this
        // crate's does not, so the test spells the null out.
        let bare = json!({"metadata": {"finalizers": null}});
        let added = apply(bare, &patch(&[], "a/x", Op::Add).unwrap()).unwrap();
        assert_eq!(added["metadata"]["finalizers"], json!(["a/x"]));

        let list = vec!["other/y".to_string()];
        let doc = json!({"metadata": {"finalizers": ["other/y"]}});
        let p = patch(&list, "a/x", Op::Add).unwrap();
        assert_eq!(
            apply(doc, &p).unwrap()["metadata"]["finalizers"],
            json!(["other/y", "a/x"])
        );
        // Someone added a finalizer since we read the object: the add must not go through.
        let moved = json!({"metadata": {"finalizers": ["other/y", "third/z"]}});
        assert!(apply(moved, &p).is_err());

        let list = vec!["other/y".to_string(), "a/x".to_string()];
        let doc = json!({"metadata": {"finalizers": ["other/y", "a/x"]}});
        let p = patch(&list, "a/x", Op::Remove).unwrap();
        assert_eq!(
            apply(doc, &p).unwrap()["metadata"]["finalizers"],
            json!(["other/y"])
        );
        // The list shifted: the test at our old index fails rather than removing another's.
        let shifted = json!({"metadata": {"finalizers": ["a/x", "other/y"]}});
        assert!(apply(shifted, &p).is_err());
        assert!(patch(&["other/y".to_string()], "a/x", Op::Remove).is_err());
    }
}
