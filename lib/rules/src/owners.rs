//! Owner references: which object controls another (apimachinery's
//! `metav1.GetControllerOf`, `IsControlledBy`, `NewControllerRef`), and
//! adding or dropping a reference as controllers adopt and release.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The owner reference with `controller: true`, if any (`GetControllerOf`).
pub fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Whether the object's controller is the object with `owner_uid`.
pub fn controlled_by(meta: &ObjectMeta, owner_uid: &str) -> bool {
    controller_ref(meta).is_some_and(|r| r.uid == owner_uid)
}

/// A controller reference to `owner`, with `controller` and
/// `blockOwnerDeletion` set (`NewControllerRef`).
pub fn controller_owner_ref(api_version: &str, kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// `refs` with `new` added (adoption); a reference to the same uid is replaced.
pub fn with_owner(refs: Option<&Vec<OwnerReference>>, new: OwnerReference) -> Vec<OwnerReference> {
    let mut out: Vec<OwnerReference> = refs
        .map(|r| r.iter().filter(|r| r.uid != new.uid).cloned().collect())
        .unwrap_or_default();
    out.push(new);
    out
}

/// `refs` without the reference to `owner_uid` (release).
pub fn without_owner(refs: Option<&Vec<OwnerReference>>, owner_uid: &str) -> Vec<OwnerReference> {
    refs.map(|r| r.iter().filter(|r| r.uid != owner_uid).cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_refs() {
        let owner = ObjectMeta {
            name: Some("rs".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let r = controller_owner_ref("apps/v1", "ReplicaSet", &owner);
        assert_eq!(r.controller, Some(true));
        assert_eq!(r.block_owner_deletion, Some(true));
        let other = OwnerReference {
            uid: "u2".into(),
            ..Default::default()
        };
        let refs = with_owner(Some(&vec![other.clone()]), r.clone());
        assert_eq!(refs.len(), 2);
        let meta = ObjectMeta {
            owner_references: Some(refs.clone()),
            ..Default::default()
        };
        assert!(controlled_by(&meta, "u1"));
        assert_eq!(without_owner(Some(&refs), "u1"), vec![other]);
        // Adopting again replaces the reference instead of doubling it.
        assert_eq!(with_owner(Some(&refs), r).len(), 2);
        assert_eq!(controller_ref(&ObjectMeta::default()), None);
    }
}
