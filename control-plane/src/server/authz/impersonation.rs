//! Impersonation, as kube-apiserver's `WithImpersonation` filter: a request
//! with `Impersonate-User` (and optionally `Impersonate-Group`,
//! `Impersonate-Uid`, `Impersonate-Extra-KEY`) acts as that user when its
//! real user may `impersonate` each of them (users, or the service account
//! for `system:serviceaccount:NS:NAME`; groups; `uids` and `userextras/KEY`
//! in authentication.k8s.io). This is what `kubectl --as` and `--as-group`
//! send.

use http::HeaderMap;

use super::Authorizer;
use super::attributes::Attributes;
use crate::api::errors::ApiError;
use crate::server::auth::{AUTHENTICATED, UserInfo};

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";
const EXTRA: &str = "impersonate-extra-";

/// Whether the request asks to impersonate anyone.
pub fn requested(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|k| k.as_str().starts_with("impersonate-"))
}

/// The user `real` acts as after the request's impersonation headers, or
/// the error kube-apiserver gives (400 for groups without a user, 403 for
/// what `real` may not impersonate).
pub fn impersonate(
    authz: &Authorizer,
    real: &UserInfo,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    let values = |name: &str| -> Result<Vec<String>, ApiError> {
        headers
            .get_all(name)
            .iter()
            .map(|v| {
                v.to_str()
                    .map(str::to_string)
                    .map_err(|_| ApiError::bad_request(format!("the {name} header is not text")))
            })
            .collect()
    };
    let users = values(USER)?;
    let groups = values(GROUP)?;
    let uids = values(UID)?;
    let mut extra = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix(EXTRA) {
            // Keys come percent-encoded (kube-apiserver unescapes them).
            let key = percent_encoding::percent_decode_str(key)
                .decode_utf8_lossy()
                .into_owned();
            let value = value.to_str().map_err(|_| {
                ApiError::bad_request(format!("the {} header is not text", name.as_str()))
            })?;
            extra.entry(key).or_default().push(value.to_string());
        }
    }
    let Some(user) = users.first().cloned() else {
        return Err(ApiError::bad_request(format!(
            "requested {} without impersonating a user",
            describe(&groups, &uids, &extra)
        )));
    };
    if users.len() > 1 || uids.len() > 1 {
        return Err(ApiError::bad_request(
            "only one user and one uid may be impersonated",
        ));
    }
    let check = |a: Attributes| match authz.check(&a) {
        None => Ok(()),
        Some(e) => Err(e),
    };
    let ask = |group: &str, resource: &str, sub: &str, ns: &str, name: &str| {
        Attributes::resource(real, "impersonate", group, ns, resource, sub, name)
    };
    let mut implied = Vec::new();
    match service_account(&user) {
        Some((ns, name)) => {
            check(ask("", "serviceaccounts", "", ns, name))?;
            if groups.is_empty() {
                implied = vec![
                    "system:serviceaccounts".to_string(),
                    format!("system:serviceaccounts:{ns}"),
                ];
            }
        }
        None => check(ask("", "users", "", "", &user))?,
    }
    for g in &groups {
        check(ask("", "groups", "", "", g))?;
    }
    for u in &uids {
        check(ask("authentication.k8s.io", "uids", "", "", u))?;
    }
    for (key, vals) in &extra {
        for v in vals {
            check(ask("authentication.k8s.io", "userextras", key, "", v))?;
        }
    }
    let mut all_groups = if groups.is_empty() { implied } else { groups };
    if user == "system:anonymous" {
        if !all_groups.iter().any(|g| g == "system:unauthenticated") {
            all_groups.push("system:unauthenticated".into());
        }
    } else if !all_groups.iter().any(|g| g == AUTHENTICATED) {
        all_groups.push(AUTHENTICATED.into());
    }
    Ok(UserInfo {
        name: user,
        uid: uids.into_iter().next().unwrap_or_default(),
        groups: all_groups,
        extra,
    })
}

/// `system:serviceaccount:NS:NAME` → (NS, NAME).
fn service_account(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

fn describe(
    groups: &[String],
    uids: &[String],
    extra: &std::collections::BTreeMap<String, Vec<String>>,
) -> String {
    let mut parts: Vec<String> = groups.iter().map(|g| format!("group {g:?}")).collect();
    parts.extend(uids.iter().map(|u| format!("uid {u:?}")));
    parts.extend(extra.keys().map(|k| format!("extra {k:?}")));
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_escapes() {
        assert_eq!(
            service_account("system:serviceaccount:kube-system:job-controller"),
            Some(("kube-system", "job-controller"))
        );
        assert_eq!(service_account("system:serviceaccount:ns"), None);
        assert_eq!(service_account("bob"), None);
        let mut h = HeaderMap::new();
        assert!(!requested(&h));
        h.insert("impersonate-group", "g".parse().unwrap());
        assert!(requested(&h));
    }
}
