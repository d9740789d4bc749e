//! Keeps the connection Secret a DgaModel names until that DgaModel's cleanup is done.
//!
//! When a namespace is deleted, the namespace controller deletes its objects in no set order: the
//! Secret often went first, the finalizer's cleanup then had no credentials, and the whole
//! package was left in the cluster. Kubernetes solves the same problem for volumes with a
//! protection finalizer (`kubernetes.io/pvc-protection`, released by the PVC protection
//! controller once no pod uses the claim); we do the same for the Secret: it carries
//! [`SECRET_FINALIZER`] while a DgaModel that names it exists, so a deletion leaves it readable
//! (Terminating) until the cleanup ran. Copying the credentials somewhere namespace deletion
//! cannot reach was the alternative; it would spread them and need keeping in sync.
//!
//! The DgaModel records which Secret it protects in [`PROTECTED_ANNOTATION`], so a Secret
//! dropped from the spec is released without listing Secrets (the operator may only get them by
//! name). ECK-generated Secrets (`clusterRef.name`) are not protected: they go with the ECK
//! cluster itself, and a deleted cluster has nothing left to clean.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::api::{DgaModel, FINALIZER};
use crate::error::Error;
use crate::finalizer;

/// On a Secret named by a DgaModel's `clusterRef.secretName`.
pub const SECRET_FINALIZER: &str = "dgaoperator.io/secret-protection";
/// On a DgaModel: the Secret it has protected.
pub const PROTECTED_ANNOTATION: &str = "dgaoperator.io/protected-secret";

/// Protects the Secret the spec names (the object is live and the Secret was just read), and
/// releases the one it protected before, if no other DgaModel needs it.
pub async fn protect(client: &Client, obj: &DgaModel) -> Result<(), Error> {
    let want = obj.spec.cluster_ref.secret_name.clone();
    let had = obj.annotations().get(PROTECTED_ANNOTATION).cloned();
    if want == had {
        return Ok(());
    }
    let ns = obj.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    if let Some(name) = &want {
        let Some(s) = secrets.get_opt(name).await? else {
            return Ok(());
        };
        // A Secret being deleted takes no new finalizer; the next pass tries again.
        if s.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        if !s.finalizers().iter().any(|f| f == SECRET_FINALIZER) {
            let add = finalizer::patch(s.finalizers(), SECRET_FINALIZER, finalizer::Op::Add)?;
            secrets
                .patch(name, &PatchParams::default(), &Patch::Json::<()>(add))
                .await?;
        }
    }
    let models: Api<DgaModel> = Api::namespaced(client.clone(), &ns);
    let patch = json!({"metadata": {"annotations": {PROTECTED_ANNOTATION: want}}});
    models
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    if let Some(old) = had {
        release(client, &ns, &old, &obj.uid().unwrap_or_default()).await?;
    }
    Ok(())
}

/// Releases the Secret a DgaModel protected (its cleanup is done), unless another DgaModel
/// still protects it.
pub async fn release_for(client: &Client, obj: &DgaModel) -> Result<(), Error> {
    match obj.annotations().get(PROTECTED_ANNOTATION) {
        Some(name) => {
            release(
                client,
                &obj.namespace().unwrap_or_default(),
                name,
                &obj.uid().unwrap_or_default(),
            )
            .await
        }
        None => Ok(()),
    }
}

async fn release(client: &Client, ns: &str, name: &str, uid: &str) -> Result<(), Error> {
    let models: Api<DgaModel> = Api::namespaced(client.clone(), ns);
    let still_needed = models
        .list(&Default::default())
        .await?
        .items
        .iter()
        .any(|m| {
            m.uid().as_deref() != Some(uid)
                && m.finalizers().iter().any(|f| f == FINALIZER)
                && m.annotations()
                    .get(PROTECTED_ANNOTATION)
                    .map(String::as_str)
                    == Some(name)
        });
    if still_needed {
        return Ok(());
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let Some(s) = secrets.get_opt(name).await? else {
        return Ok(());
    };
    if !s.finalizers().iter().any(|f| f == SECRET_FINALIZER) {
        return Ok(());
    }
    let remove = finalizer::patch(s.finalizers(), SECRET_FINALIZER, finalizer::Op::Remove)?;
    match secrets
        .patch(name, &PatchParams::default(), &Patch::Json::<()>(remove))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
