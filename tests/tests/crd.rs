//! CustomResourceDefinitions end to end, against a real `keelson server`
//! with kubectl and the kube-rs client: a definition with two versions, a
//! schema (defaults, enum, minimum, a preserve-unknown-fields subtree),
//! status and scale subresources and printer columns; custom resources
//! created, read, listed, patched, scaled, watched and deleted in both
//! versions; defaults and pruning; 422s; names conflicts; deleting the
//! definition deletes its resources; and two servers on one etcd serving
//! what either was told.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use keelson_e2e::{API_ONLY, Backend, ServerProcess, etcd_for, kubectl_versions, wait_for};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, WatchEvent, WatchParams};
use serde_json::{Value, json};

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    plural: widgets
    kind: Widget
    shortNames: [wdg]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
        labelSelectorPath: .status.selector
    selectableFields:
    - {jsonPath: .spec.size}
    additionalPrinterColumns:
    - {name: Size, type: string, jsonPath: .spec.size}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: string, enum: [small, large]}
              replicas: {type: integer, minimum: 0, default: 1}
              colour: {type: string, default: blue}
              extra:
                type: object
                x-kubernetes-preserve-unknown-fields: true
          status:
            type: object
            properties:
              replicas: {type: integer}
              selector: {type: string}
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: string}
"#;

struct Resp {
    status: u16,
    body: Value,
}

async fn call(c: &Client, method: &str, path: &str, ct: &str, body: &Value) -> Resp {
    let bytes = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    call_raw(c, method, path, ct, bytes).await
}

async fn call_raw(c: &Client, method: &str, path: &str, ct: &str, bytes: Vec<u8>) -> Resp {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, ct)
        .body(kube::client::Body::from(bytes))
        .expect("request");
    let res = c
        .send(req)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = res.status().as_u16();
    let bytes = res.into_body().collect_bytes().await.expect("body");
    Resp {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn widgets(client: &Client, version: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("example.com", version, "Widget");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    Api::namespaced_with(client.clone(), "default", &ar)
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write manifest");
    p.to_string_lossy().into_owned()
}

fn stderr_of(server: &ServerProcess, m: u32, args: &[&str]) -> String {
    let out = server.kubectl(m, args);
    assert!(!out.status.success(), "kubectl {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_resources_with_kubectl_and_a_client() {
    let Some(&m) = kubectl_versions().last() else {
        return;
    };
    let server = ServerProcess::start_with(None, API_ONLY);
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let crd_file = write(dir.path(), "crd.yaml", CRD);

    let out = server.kubectl_ok(m, &["apply", "-f", &crd_file]);
    assert!(out.contains("widgets.example.com created"), "{out}");
    server.kubectl_ok(
        m,
        &[
            "wait",
            "--for=condition=Established",
            "crd/widgets.example.com",
            "--timeout=30s",
        ],
    );
    let crds = server.kubectl_ok(m, &["get", "crds"]);
    assert!(
        crds.starts_with("NAME") && crds.lines().next().unwrap().ends_with("CREATED AT"),
        "{crds}"
    );
    assert!(crds.contains("widgets.example.com"), "{crds}");
    let crd = server.kubectl_json(m, &["get", "crd", "widgets.example.com"]);
    assert_eq!(crd["spec"]["names"]["singular"], "widget");
    assert_eq!(crd["spec"]["names"]["listKind"], "WidgetList");
    assert_eq!(crd["status"]["acceptedNames"]["shortNames"], json!(["wdg"]));
    assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
    let resources = server.kubectl_ok(m, &["api-resources", "--api-group=example.com"]);
    assert!(
        resources.contains("widgets") && resources.contains("wdg") && resources.contains("Widget"),
        "{resources}"
    );
    let group = call(&client, "GET", "/apis/example.com", "", &Value::Null).await;
    assert_eq!(
        group.body["preferredVersion"]["version"], "v1",
        "{}",
        group.body
    );
    assert_eq!(group.body["versions"].as_array().unwrap().len(), 2);
    // Aggregated discovery, as kubectl 1.27+ asks for it first.
    let req = http::Request::builder()
        .uri("/apis")
        .header(
            http::header::ACCEPT,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        )
        .body(kube::client::Body::from(Vec::new()))
        .unwrap();
    let res = client.send(req).await.expect("aggregated discovery");
    assert_eq!(
        res.headers()[http::header::CONTENT_TYPE],
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    let agg: Value =
        serde_json::from_slice(&res.into_body().collect_bytes().await.unwrap()).unwrap();
    let example = agg["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["metadata"]["name"] == "example.com")
        .unwrap_or_else(|| panic!("example.com not in {agg}"));
    assert_eq!(example["versions"][0]["version"], "v1");
    let widgets_doc = &example["versions"][0]["resources"][0];
    assert_eq!(widgets_doc["resource"], "widgets");
    assert_eq!(widgets_doc["shortNames"], json!(["wdg"]));
    let subs: Vec<&str> = widgets_doc["subresources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subresource"].as_str().unwrap())
        .collect();
    assert_eq!(subs, vec!["status", "scale"]);

    // A watch from now on, through the client.
    let v1 = widgets(&client, "v1");
    let mut events = v1
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch widgets")
        .boxed();

    // Created through kubectl: defaults applied, the unknown field pruned,
    // the preserved subtree kept, status left to the status subresource.
    let w1 = write(
        dir.path(),
        "w1.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1, namespace: default, labels: {app: demo}}\n\
         spec: {size: small, unknown: dropped, extra: {free: {form: 1}}}\nstatus: {replicas: 9}\n",
    );
    let strict = stderr_of(&server, m, &["create", "-f", &w1]);
    assert!(
        strict.contains("unknown field \"spec.unknown\""),
        "{strict}"
    );
    server.kubectl_ok(m, &["create", "--validate=false", "-f", &w1]);
    let got = server.kubectl_json(m, &["get", "widget", "w1"]);
    assert_eq!(got["apiVersion"], "example.com/v1");
    assert_eq!(got["spec"]["replicas"], 1, "{got}");
    assert_eq!(got["spec"]["colour"], "blue", "{got}");
    assert!(got["spec"].get("unknown").is_none(), "{got}");
    assert_eq!(got["spec"]["extra"], json!({"free": {"form": 1}}));
    assert!(got.get("status").is_none(), "{got}");
    assert_eq!(got["metadata"]["generation"], 1);

    // The other version: the same object, its own apiVersion.
    let beta = server.kubectl_json(m, &["get", "widgets.v1beta1.example.com", "w1"]);
    assert_eq!(beta["apiVersion"], "example.com/v1beta1");
    assert_eq!(beta["metadata"]["uid"], got["metadata"]["uid"]);
    let w2 = write(
        dir.path(),
        "w2.yaml",
        "apiVersion: example.com/v1beta1\nkind: Widget\nmetadata: {name: w2, namespace: default}\nspec: {size: large}\n",
    );
    server.kubectl_ok(m, &["apply", "-f", &w2]);
    let w2_v1 = v1.get("w2").await.expect("w2 through v1");
    assert_eq!(w2_v1.types.as_ref().unwrap().api_version, "example.com/v1");
    assert_eq!(w2_v1.data["spec"]["replicas"], 1);

    // Invalid: 422 with field causes, through the API and through kubectl.
    let bad = json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "bad"}, "spec": {"size": "medium", "replicas": -1}});
    let r = call(
        &client,
        "POST",
        "/apis/example.com/v1/namespaces/default/widgets",
        "application/json",
        &bad,
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["reason"], "Invalid");
    let mut causes: Vec<&str> = r.body["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    causes.sort();
    assert_eq!(causes, vec!["spec.replicas", "spec.size"], "{}", r.body);
    assert!(
        r.body["message"].as_str().unwrap().contains(
            "spec.size: Unsupported value: \"medium\": supported values: \"small\", \"large\""
        ),
        "{}",
        r.body
    );
    let bad_file = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: bad, namespace: default}\nspec: {size: medium}\n",
    );
    let err = stderr_of(&server, m, &["apply", "-f", &bad_file]);
    assert!(err.contains("Unsupported value: \"medium\""), "{err}");

    // Patch (merge; strategic merge is refused for custom resources), scale.
    server.kubectl_ok(
        m,
        &[
            "patch",
            "widget",
            "w1",
            "--type=merge",
            "-p",
            r#"{"spec":{"size":"large"}}"#,
        ],
    );
    let err = stderr_of(
        &server,
        m,
        &[
            "patch",
            "widget",
            "w1",
            "-p",
            r#"{"spec":{"size":"small"}}"#,
        ],
    );
    assert!(err.contains("strategic-merge-patch"), "{err}");
    server.kubectl_ok(m, &["scale", "widget", "w1", "--replicas=3"]);
    let got = server.kubectl_json(m, &["get", "widget", "w1"]);
    assert_eq!(got["spec"]["size"], "large");
    assert_eq!(got["spec"]["replicas"], 3);
    assert_eq!(got["metadata"]["generation"], 3);

    // Status: ignored on the main resource, the only thing /status changes.
    let r = call(
        &client,
        "PATCH",
        "/apis/example.com/v1/namespaces/default/widgets/w1",
        "application/merge-patch+json",
        &json!({"status": {"replicas": 5}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.get("status").is_none(), "{}", r.body);
    let r = call(
        &client,
        "PATCH",
        "/apis/example.com/v1/namespaces/default/widgets/w1/status",
        "application/merge-patch+json",
        &json!({"spec": {"size": "small"}, "status": {"replicas": 2, "selector": "app=demo"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"]["replicas"], 2);
    assert_eq!(r.body["spec"]["size"], "large");
    let scale = call(
        &client,
        "GET",
        "/apis/example.com/v1/namespaces/default/widgets/w1/scale",
        "",
        &Value::Null,
    )
    .await;
    assert_eq!(scale.status, 200);
    assert_eq!(
        (
            &scale.body["kind"],
            &scale.body["spec"]["replicas"],
            &scale.body["status"]["replicas"],
            &scale.body["status"]["selector"]
        ),
        (&json!("Scale"), &json!(3), &json!(2), &json!("app=demo")),
        "{}",
        scale.body
    );

    // Lists: kubectl's table with the printer columns, selectors.
    let table = server.kubectl_ok(m, &["get", "widgets"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        vec!["NAME", "SIZE", "REPLICAS"],
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == vec!["w1", "large", "3"]),
        "{table}"
    );
    assert_eq!(
        server
            .kubectl_ok(m, &["get", "wdg", "-l", "app=demo", "-o", "name"])
            .trim(),
        "widget.example.com/w1"
    );
    assert_eq!(
        server
            .kubectl_ok(
                m,
                &[
                    "get",
                    "widgets",
                    "--field-selector=metadata.name=w2",
                    "-o",
                    "name"
                ]
            )
            .trim(),
        "widget.example.com/w2"
    );
    assert_eq!(
        server
            .kubectl_ok(
                m,
                &[
                    "get",
                    "widgets",
                    "--field-selector=spec.size=large",
                    "-o",
                    "name"
                ]
            )
            .trim(),
        "widget.example.com/w1\nwidget.example.com/w2"
    );
    let err = stderr_of(
        &server,
        m,
        &["get", "widgets", "--field-selector=spec.colour=blue"],
    );
    assert!(
        err.contains("field label not supported: spec.colour"),
        "{err}"
    );

    // Finalizers hold a custom resource as they hold any object.
    server.kubectl_ok(
        m,
        &[
            "patch",
            "widget",
            "w2",
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
        ],
    );
    server.kubectl_ok(m, &["delete", "widget", "w2", "--wait=false"]);
    let held = server.kubectl_json(m, &["get", "widget", "w2"]);
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    server.kubectl_ok(
        m,
        &[
            "patch",
            "widget",
            "w2",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ],
    );
    let gone = stderr_of(&server, m, &["get", "widget", "w2"]);
    assert!(gone.contains("NotFound"), "{gone}");

    // The watch saw it all happen.
    let mut seen = Vec::new();
    while !seen.contains(&("DELETED", "w2".to_string())) {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.try_next())
            .await
            .unwrap_or_else(|_| panic!("no watch event; seen {seen:?}"))
            .expect("watch stream")
            .expect("watch open");
        let (kind, obj) = match ev {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            WatchEvent::Bookmark(_) => continue,
            other => panic!("unexpected watch event {other:?}"),
        };
        assert_eq!(obj.types.as_ref().unwrap().api_version, "example.com/v1");
        seen.push((kind, obj.metadata.name.unwrap_or_default()));
    }
    for want in [
        ("ADDED", "w1"),
        ("ADDED", "w2"),
        ("MODIFIED", "w1"),
        ("MODIFIED", "w2"),
    ] {
        assert!(
            seen.contains(&(want.0, want.1.to_string())),
            "{want:?} not in {seen:?}"
        );
    }

    // Deleting a namespace deletes the custom resources in it.
    server.kubectl_ok(m, &["create", "namespace", "crd-ns"]);
    let w3 = write(
        dir.path(),
        "w3.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w3, namespace: crd-ns}\nspec: {size: small}\n",
    );
    server.kubectl_ok(m, &["create", "-f", &w3]);
    server.kubectl_ok(m, &["delete", "namespace", "crd-ns", "--timeout=30s"]);
    let r = call(
        &client,
        "GET",
        "/apis/example.com/v1/namespaces/crd-ns/widgets",
        "",
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["items"], json!([]), "{}", r.body);

    // A default added to the schema applies to objects already stored, on read.
    server.kubectl_ok(
        m,
        &["patch", "crd", "widgets.example.com", "--type=json", "-p",
          r#"[{"op":"add","path":"/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/shape","value":{"type":"string","default":"round"}}]"#],
    );
    let got = server.kubectl_json(m, &["get", "widget", "w1"]);
    assert_eq!(got["spec"]["shape"], "round", "{got}");

    // Bad definitions: 422 naming the fields; a name conflict is reported, not served.
    let bad_crd = CRD
        .replace("name: widgets.example.com", "name: things.example.com")
        .replace("storage: false", "storage: true");
    let bad_file = write(dir.path(), "bad-crd.yaml", &bad_crd);
    let err = stderr_of(&server, m, &["apply", "-f", &bad_file]);
    assert!(
        err.contains("metadata.name: Invalid value: \"things.example.com\""),
        "{err}"
    );
    assert!(
        err.contains("must have exactly one version marked as storage version"),
        "{err}"
    );
    let clash = CRD
        .replace("widgets", "gadgets")
        .replace("shortNames: [wdg]", "singular: gadget");
    let clash_file = write(dir.path(), "clash.yaml", &clash);
    server.kubectl_ok(m, &["apply", "-f", &clash_file]);
    let cond = wait_for(
        "the gadgets definition's NamesAccepted",
        Duration::from_secs(20),
        || {
            let c = server.kubectl_json(m, &["get", "crd", "gadgets.example.com"]);
            c["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|x| x["type"] == "NamesAccepted").cloned())
        },
    );
    assert_eq!(cond["status"], "False", "{cond}");
    assert_eq!(cond["reason"], "KindConflict", "{cond}");
    assert_eq!(cond["message"], "\"Widget\" is already in use");
    let r = call(
        &client,
        "GET",
        "/apis/example.com/v1/gadgets",
        "",
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, 404);
    server.kubectl_ok(m, &["delete", "-f", &clash_file]);

    // Deleting the definition deletes its custom resources.
    server.kubectl_ok(
        m,
        &["delete", "crd", "widgets.example.com", "--timeout=30s"],
    );
    let r = call(
        &client,
        "GET",
        "/apis/example.com/v1/widgets",
        "",
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    server.kubectl_ok(m, &["apply", "-f", &crd_file]);
    let left = v1.list(&Default::default()).await.expect("list widgets");
    assert!(left.items.is_empty(), "{:?}", left.items);
    server.kubectl_ok(
        m,
        &["delete", "crd", "widgets.example.com", "--timeout=30s"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_on_one_etcd_serve_the_same_definitions() {
    let Ok(Some(etcd)) = etcd_for(Backend::Etcd) else {
        return;
    };
    let a = ServerProcess::start_with(Some(&etcd), API_ONLY);
    let b = ServerProcess::start_with(Some(&etcd), API_ONLY);
    let (ca, cb) = (a.client().await, b.client().await);
    let r = call_raw(
        &ca,
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "application/yaml",
        CRD.as_bytes().to_vec(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // B learns of it from the store.
    let mut served = false;
    for _ in 0..100 {
        if call(&cb, "GET", "/apis/example.com/v1", "", &Value::Null)
            .await
            .status
            == 200
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "server B never served example.com/v1");
    let obj = json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "shared"}, "spec": {"size": "small"}});
    let r = call(
        &cb,
        "POST",
        "/apis/example.com/v1/namespaces/default/widgets",
        "application/json",
        &obj,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let got = widgets(&ca, "v1beta1")
        .get("shared")
        .await
        .expect("read through A");
    assert_eq!(got.types.unwrap().api_version, "example.com/v1beta1");
    // A schema change made through A reaches B's reads.
    let patch = json!([{"op": "add",
        "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/shape",
        "value": {"type": "string", "default": "round"}}]);
    let r = call(
        &ca,
        "PATCH",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com",
        "application/json-patch+json",
        &patch,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut shaped = Value::Null;
    for _ in 0..100 {
        shaped = widgets(&cb, "v1")
            .get("shared")
            .await
            .expect("read through B")
            .data;
        if shaped["spec"]["shape"] == "round" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shaped["spec"]["shape"], "round", "{shaped}");
    // Deleted through B: gone, with its resources, from A too.
    let r = call(
        &cb,
        "DELETE",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com",
        "application/json",
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut gone = false;
    for _ in 0..150 {
        if call(&ca, "GET", "/apis/example.com/v1/widgets", "", &Value::Null)
            .await
            .status
            == 404
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "server A still serves widgets");
    let r = call(
        &ca,
        "GET",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com",
        "",
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
}
