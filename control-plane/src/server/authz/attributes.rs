//! What a request asks to do, in the authorizer's terms (apiserver's
//! `RequestInfoFactory`): a verb on a resource (group, namespace, resource,
//! subresource, name), or a verb on a non-resource path.

use std::collections::HashMap;

use super::super::auth::UserInfo;

/// The attributes an authorizer decides on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    pub user: String,
    pub groups: Vec<String>,
    pub verb: String,
    /// A request for an API object (`/api/...`, `/apis/...` with a
    /// version); otherwise a non-resource path.
    pub resource_request: bool,
    pub path: String,
    pub api_group: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

impl Attributes {
    /// A resource request by `user`.
    pub fn resource(
        user: &UserInfo,
        verb: &str,
        api_group: &str,
        namespace: &str,
        resource: &str,
        subresource: &str,
        name: &str,
    ) -> Attributes {
        Attributes {
            user: user.name.clone(),
            groups: user.groups.clone(),
            verb: verb.to_string(),
            resource_request: true,
            path: String::new(),
            api_group: api_group.to_string(),
            namespace: namespace.to_string(),
            resource: resource.to_string(),
            subresource: subresource.to_string(),
            name: name.to_string(),
        }
    }

    /// `resource` or `resource/subresource`, as RBAC rules name it.
    pub fn qualified_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// kube-apiserver's denial text: `User "u" cannot list resource "pods"
    /// in API group "" in the namespace "default"`.
    pub fn forbidden_message(&self) -> String {
        if !self.resource_request {
            return format!(
                "User {:?} cannot {} path {:?}",
                self.user, self.verb, self.path
            );
        }
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", self.namespace)
        };
        format!(
            "User {:?} cannot {} resource {:?} in API group {:?} {scope}",
            self.user,
            self.verb,
            self.qualified_resource(),
            self.api_group
        )
    }
}

/// The attributes of an HTTP request by `user`.
pub fn of_request(user: &UserInfo, method: &str, path: &str, query: Option<&str>) -> Attributes {
    let mut a = Attributes {
        user: user.name.clone(),
        groups: user.groups.clone(),
        path: path.to_string(),
        verb: method.to_ascii_lowercase(),
        ..Attributes::default()
    };
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match parts.as_slice() {
        ["api", _version, rest @ ..] if !rest.is_empty() => rest,
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => {
            a.api_group = group.to_string();
            rest
        }
        _ => return a,
    };
    a.resource_request = true;
    let mut rest = rest;
    let special = matches!(rest[0], "watch" | "proxy");
    if special {
        if rest.len() < 2 {
            a.resource_request = false;
            a.api_group.clear();
            return a;
        }
        a.verb = rest[0].to_string();
        rest = &rest[1..];
    } else {
        a.verb = match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "",
        }
        .to_string();
    }
    if rest[0] == "namespaces" && rest.len() > 1 {
        a.namespace = rest[1].to_string();
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    if rest.len() >= 3 && a.verb != "proxy" {
        a.subresource = rest[2].to_string();
    }
    if rest.len() >= 2 {
        a.name = rest[1].to_string();
    }
    a.resource = rest[0].to_string();
    let q: HashMap<String, String> = query
        .map(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .collect();
    if a.name.is_empty() && a.verb == "get" {
        a.verb = if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
            "watch"
        } else {
            "list"
        }
        .to_string();
    }
    // A list or watch of one object by name is authorized as that object.
    if a.name.is_empty()
        && matches!(a.verb.as_str(), "list" | "watch")
        && let Some(fs) = q.get("fieldSelector")
        && let Some(name) = fs.split(',').find_map(|r| {
            r.strip_prefix("metadata.name=")
                .or(r.strip_prefix("metadata.name=="))
        })
        && !name.is_empty()
        && !name.contains('/')
        && name != "."
        && name != ".."
    {
        a.name = name.to_string();
    }
    if a.name.is_empty() && a.verb == "delete" {
        a.verb = "deletecollection".into();
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(method: &str, path: &str, query: Option<&str>) -> Attributes {
        of_request(&UserInfo::anonymous(), method, path, query)
    }

    fn res(a: &Attributes) -> (&str, &str, &str, &str, &str, &str) {
        (
            a.verb.as_str(),
            a.api_group.as_str(),
            a.namespace.as_str(),
            a.resource.as_str(),
            a.subresource.as_str(),
            a.name.as_str(),
        )
    }

    #[test]
    fn resource_requests_get_kube_apiservers_verbs() {
        let a = of("GET", "/api/v1/namespaces/ns/pods", None);
        assert!(a.resource_request);
        assert_eq!(res(&a), ("list", "", "ns", "pods", "", ""));
        let a = of("GET", "/api/v1/namespaces/ns/pods", Some("watch=true"));
        assert_eq!(a.verb, "watch");
        let a = of("GET", "/api/v1/watch/namespaces/ns/pods", None);
        assert_eq!(res(&a), ("watch", "", "ns", "pods", "", ""));
        let a = of("POST", "/api/v1/namespaces/ns/pods/p/exec", None);
        assert_eq!(res(&a), ("create", "", "ns", "pods", "exec", "p"));
        let a = of("DELETE", "/apis/apps/v1/namespaces/ns/deployments", None);
        assert_eq!(
            res(&a),
            ("deletecollection", "apps", "ns", "deployments", "", "")
        );
        let a = of("PATCH", "/api/v1/nodes/n1/status", None);
        assert_eq!(res(&a), ("patch", "", "", "nodes", "status", "n1"));
        // The namespace object itself, and its status.
        let a = of("GET", "/api/v1/namespaces/ns", None);
        assert_eq!(res(&a), ("get", "", "ns", "namespaces", "", "ns"));
        let a = of("PUT", "/api/v1/namespaces/ns/finalize", None);
        assert_eq!(
            res(&a),
            ("update", "", "ns", "namespaces", "finalize", "ns")
        );
        let a = of("GET", "/api/v1/namespaces", None);
        assert_eq!(res(&a), ("list", "", "", "namespaces", "", ""));
        // A list by name is that object.
        let a = of(
            "GET",
            "/api/v1/namespaces/ns/secrets",
            Some("fieldSelector=metadata.name%3Ds1&watch=1"),
        );
        assert_eq!(res(&a), ("watch", "", "ns", "secrets", "", "s1"));
        // proxy: the rest of the path is not a subresource.
        let a = of("GET", "/api/v1/proxy/namespaces/ns/pods/p/x/y", None);
        assert_eq!(res(&a), ("proxy", "", "ns", "pods", "", "p"));
        let a = of("GET", "/api/v1/namespaces/ns/pods/p/proxy/x", None);
        assert_eq!(res(&a), ("get", "", "ns", "pods", "proxy", "p"));
    }

    #[test]
    fn other_paths_are_non_resource_requests() {
        for p in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/healthz",
            "/version",
        ] {
            let a = of("GET", p, None);
            assert!(!a.resource_request, "{p}");
            assert_eq!((a.verb.as_str(), a.path.as_str()), ("get", p));
        }
    }

    #[test]
    fn denial_messages_read_as_kube_apiservers() {
        let u = UserInfo {
            name: "system:serviceaccount:ns:sa".into(),
            ..UserInfo::anonymous()
        };
        let a = of_request(&u, "GET", "/api/v1/namespaces/ns/pods", None);
        assert_eq!(
            a.forbidden_message(),
            "User \"system:serviceaccount:ns:sa\" cannot list resource \"pods\" in API group \"\" in the namespace \"ns\""
        );
        let a = of_request(&u, "POST", "/api/v1/namespaces/ns/pods/p/exec", None);
        assert!(
            a.forbidden_message()
                .contains("create resource \"pods/exec\"")
        );
        let a = of_request(&u, "GET", "/apis/apps/v1/deployments", None);
        assert!(
            a.forbidden_message()
                .ends_with("in API group \"apps\" at the cluster scope")
        );
        let a = of_request(&u, "GET", "/metrics", None);
        assert_eq!(
            a.forbidden_message(),
            "User \"system:serviceaccount:ns:sa\" cannot get path \"/metrics\""
        );
    }
}
