#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets: fuzz/corpus/<target>/<name>.

Run from anywhere: `python3 fuzz/seeds.py`. Seeds are small real inputs taken
from the repository's fixtures and tests (control-plane/testdata/protobuf, the
README's manifests, the patch, selector, CNI, image and DNS unit tests), in the
input format each target reads (see fuzz/src/lib.rs and each target's doc).
Files the fuzzer added to a corpus by hand (`cargo xtask fuzz` never writes
there) are kept; a seed of the same name is rewritten.
"""

import io
import json
import os
import struct
import tarfile

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
PROTO = os.path.join(ROOT, "control-plane", "testdata", "protobuf")


def write(target, name, data):
    d = os.path.join(FUZZ, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def j(v):
    return json.dumps(v, separators=(",", ":"))


def fixture(name):
    with open(os.path.join(PROTO, name), "rb") as f:
        return f.read()


POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
    "spec": {
        "containers": [
            {
                "name": "web",
                "image": "keelson.local/busybox:v1",
                "command": ["httpd", "-f", "-p", "80"],
                "ports": [{"containerPort": 80}],
                "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
                "readinessProbe": {"httpGet": {"path": "/", "port": 80}},
            }
        ],
        "tolerations": [{"key": "k1", "operator": "Exists"}],
    },
}

DEPLOYMENT_YAML = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: 2
  selector:
    matchLabels: {app: hello}
  template:
    metadata:
      labels: {app: hello}
    spec:
      containers:
      - name: web
        image: keelson.local/busybox:v1
        command: ["sh", "-c", "exec httpd -f -p 80 -h /tmp"]
"""

SERVICE_YAML = """apiVersion: v1
kind: Service
metadata:
  name: hello
  labels: &l {app: hello}
spec:
  selector: *l
  ports:
  - port: 80
    targetPort: 8080
"""


def api_decode():
    t = "api_decode"
    write(t, "pod.json", b"\x00" + j(POD).encode())
    write(t, "daemonset.json", b"\x00" + fixture("daemonset.json"))
    write(t, "node.json", b"\x00" + fixture("node.json"))
    write(t, "deployment.yaml", b"\x01" + DEPLOYMENT_YAML.encode())
    write(t, "service.yaml", b"\x01" + SERVICE_YAML.encode())
    for name in ["podtemplate", "endpointslice", "job", "clusterrole", "statefulset"]:
        write(t, name + ".pb", b"\x02" + fixture(name + ".pb"))


DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "default", "finalizers": ["a.example.com/x"]},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "containers": [
                    {
                        "name": "web",
                        "image": "busybox:1",
                        "env": [{"name": "A", "value": "1"}],
                        "ports": [{"containerPort": 80, "protocol": "TCP"}],
                    }
                ],
                "tolerations": [{"key": "k1", "operator": "Exists"}],
            },
        },
    },
}


def patch():
    t = "patch"
    # Byte 0: low two bits the patch type (0 JSON, 1 merge, 2 strategic),
    # the rest the kind (index into KINDS of fuzz_targets/patch.rs).
    pod, deploy = 0 << 2, 1 << 2

    def seed(name, which, target, p):
        write(t, name, bytes([which]) + j(target).encode() + b"\x00" + j(p).encode())

    seed("json-add-label", 0 | pod, POD, [
        {"op": "add", "path": "/metadata/labels/tier", "value": "front"},
        {"op": "test", "path": "/spec/containers/0/name", "value": "web"},
        {"op": "replace", "path": "/spec/containers/0/image", "value": "busybox:2"},
    ])
    seed("json-copy-move", 0 | deploy, DEPLOYMENT, [
        {"op": "copy", "from": "/spec/template/spec/containers/0", "path": "/spec/template/spec/containers/-"},
        {"op": "move", "from": "/metadata/finalizers", "path": "/metadata/annotations"},
        {"op": "remove", "path": "/spec/replicas"},
    ])
    seed("merge-scale", 1 | deploy, DEPLOYMENT, {"spec": {"replicas": 5, "paused": None}, "metadata": {"labels": {"a": "b"}}})
    seed("merge-pod", 1 | pod, POD, {"metadata": {"labels": None}, "spec": {"activeDeadlineSeconds": 30}})
    seed("smp-apply", 2 | deploy, DEPLOYMENT, {
        "spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "web"}],
            "containers": [
                {"name": "sidecar", "image": "envoy:1"},
                {"name": "web", "$setElementOrder/env": [{"name": "A"}, {"name": "B"}],
                 "env": [{"name": "B", "value": "2"}]},
            ],
        }}},
        "metadata": {"$deleteFromPrimitiveList/finalizers": ["a.example.com/x"]},
    })
    seed("smp-directives", 2 | pod, POD, {
        "spec": {
            "containers": [{"name": "web", "$patch": "delete"}],
            "tolerations": [{"key": "k2", "operator": "Exists"}],
            "$retainKeys": ["containers"],
        },
        "metadata": {"labels": {"$patch": "replace", "x": "y"}},
    })


def selectors():
    t = "selectors"

    def seed(name, labels, fields, obj):
        write(t, name, labels.encode() + b"\x00" + fields.encode() + b"\x00" + j(obj).encode())

    seed("equality", "app=web,tier!=db", "metadata.name=web,spec.nodeName!=n1", POD)
    seed("sets", "env in (prod, staging),!legacy,tier notin (a,b)", "status.phase==Running", POD)
    seed("numeric", "replicas>3,zone<10,example.com/app", "metadata.namespace=default", {"metadata": {"labels": {"replicas": "4"}}})
    seed("object", "", "", {
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["front", "back"]},
            {"key": "legacy", "operator": "DoesNotExist"},
        ],
    })


def cni_config():
    t = "cni_config"
    # Byte 0: CNI_COMMAND (index into COMMANDS of fuzz_targets/cni_config.rs),
    # then stdin, CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS.
    add, delete, check, version, status, gc = range(6)
    conf = {
        "cniVersion": "1.1.0",
        "name": "keelson",
        "type": "keelson-cni",
        "subnet": "10.244.1.0/24",
        "dataDir": "/var/lib/cni/keelson",
        "mtu": 1450,
        "sysctls": {"net.ipv4.conf.all.forwarding": "1"},
    }

    def seed(name, cmd, stdin, cid="abc123", ifname="eth0", netns="/run/netns/pod"):
        write(t, name, bytes([cmd]) + j(stdin).encode() + b"\x00" + cid.encode() + b"\x00" + ifname.encode() + b"\x00" + netns.encode())

    seed("add", add, conf)
    seed("del-chained", delete, dict(conf, cniVersion="0.4.0", prevResult={
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod"}],
        "ips": [{"address": "10.244.1.5/24", "gateway": "169.254.1.1", "interface": 0}],
    }), netns="")
    seed("check", check, dict(conf, cniVersion="1.0.0"))
    seed("version", version, {"cniVersion": "0.3.1"})
    seed("status", status, conf)
    seed("gc", gc, dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "abc123", "ifname": "eth0"}]}))


def image_manifest():
    t = "image_manifest"
    d = lambda c: "sha256:" + c * 64
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d("a"), "size": 7,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d("b"), "size": 7,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        ],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d("c"), "size": 7},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d("d"), "size": 9}],
    }
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"], "Env": ["PATH=/bin"],
                   "WorkingDir": "/", "User": "1000:1000"},
        "rootfs": {"type": "layers", "diff_ids": [d("e")]},
    }
    docker = [{"Config": "blobs/sha256/" + "c" * 64, "RepoTags": ["busybox:1.36"],
               "Layers": ["blobs/sha256/" + "d" * 64, "f" * 64 + ".json"]}]
    write(t, "index", b"\x00" + j(index).encode())
    write(t, "manifest", b"\x00" + j(manifest).encode())
    write(t, "config", b"\x01" + j(config).encode())
    write(t, "docker-manifest", b"\x02" + j(docker).encode())
    write(t, "reference", b"\x03127.0.0.1:5000/keelson-test/busybox:v1@" + d("a").encode())
    write(t, "reference-short", b"\x03busybox")
    write(t, "compression", b"\x04application/vnd.oci.image.layer.v1.tar+gzip\x00\x1f\x8b\x08\x00")


def tar_bytes(entries):
    """A tar of (name, type, data-or-linkname, mode) entries, names as given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, kind, payload, mode in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            info.mtime = 1_700_000_000
            data = None
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = payload
            elif kind == tarfile.REGTYPE:
                data = io.BytesIO(payload)
                info.size = len(payload)
            tf.addfile(info, data)
    return trim(buf.getvalue())


def trim(tar):
    """A tar cut after its end marker (tarfile pads to 10 KiB records)."""
    body = tar.rstrip(b"\0")
    body += b"\0" * (-len(body) % 512)
    return body + b"\0" * 1024


def image_unpack():
    t = "image_unpack"
    D, F, S, L, FIFO = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE
    layer = tar_bytes([
        ("./", D, None, 0o755),
        ("bin/", D, None, 0o755),
        ("bin/tool", F, b"#!/bin/sh\n", 0o4755),
        ("bin/alias", S, "tool", 0o777),
        ("bin/hard", L, "bin/tool", 0o755),
        ("etc/app/.wh..wh..opq", F, b"", 0o644),
        ("data/.wh.gone.txt", F, b"", 0o644),
        ("run/fifo", FIFO, None, 0o600),
    ])
    # Hostile shapes: links that point out of the destination (which is
    # work/destN in the sandbox, so ../../outside is the sandbox's outside/).
    escape = tar_bytes([
        ("link", S, "../../outside", 0o777),
        ("link/file", F, b"overwritten\n", 0o644),
        ("abs", S, "/etc", 0o777),
        ("abs/passwd", F, b"x", 0o644),
        ("hard", L, "../../outside/file", 0o644),
        ("../escape", F, b"x", 0o644),
    ])
    replaced = tar_bytes([
        ("d/", D, None, 0o755),
        ("d/e/", D, None, 0o755),
        ("d", S, "../../outside/dir", 0o777),
        ("x", S, "../../outside/file", 0o777),
        ("x", F, b"replaced the link, not its target\n", 0o644),
    ])
    # PAX records: owner, mtime and an extended attribute.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("etc/conf")
        info.size = 3
        info.pax_headers = {"uid": "1000", "gid": "1000", "mtime": "1700000000.5",
                            "SCHILY.xattr.user.comment": "hi"}
        tf.addfile(info, io.BytesIO(b"abc"))
    pax = trim(buf.getvalue())
    write(t, "layer", b"\x00" + layer)
    write(t, "escape", b"\x00" + escape)
    write(t, "replaced", b"\x00" + replaced)
    write(t, "pax", b"\x00" + pax)
    archive = tar_bytes([
        ("oci-layout", F, b'{"imageLayoutVersion":"1.0.0"}', 0o644),
        ("index.json", F, b'{"schemaVersion":2,"manifests":[]}', 0o644),
        ("blobs/sha256/", D, None, 0o755),
        ("up", S, "../../outside", 0o777),
        ("up/file", F, b"x", 0o644),
    ])
    write(t, "archive", b"\x01" + archive)


def dns_name(name):
    out = b""
    for label in name.strip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def dns_query(qid, name, qtype, edns=False):
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    q = dns_name(name) + struct.pack(">HH", qtype, 1)
    opt = b"\x00" + struct.pack(">HHIH", 41, 4096, 0, 0) if edns else b""
    return header + q + opt


def dns():
    t = "dns"
    A, AAAA, SRV, CNAME, TXT = 1, 28, 33, 5, 16
    udp, tcp, name = 1, 0, 2
    write(t, "a-udp", bytes([udp]) + dns_query(4242, "web.default.svc.cluster.local", A))
    write(t, "aaaa-tcp", bytes([tcp]) + dns_query(7, "web.default.svc.cluster.local", AAAA))
    write(t, "srv-headless-edns", bytes([udp]) + dns_query(9, "_sql._tcp.pg.db.svc.cluster.local", SRV, edns=True))
    write(t, "pod-hostname", bytes([udp]) + dns_query(10, "pg-0.pg.db.svc.cluster.local", A))
    write(t, "externalname", bytes([udp]) + dns_query(11, "ext.default.svc.cluster.local", CNAME))
    write(t, "pod-ip", bytes([udp]) + dns_query(12, "10-1-0-5.db.pod.cluster.local", TXT))
    write(t, "forward", bytes([udp]) + dns_query(13, "example.org", A))
    write(t, "garbage", bytes([udp]) + b"\x12\x34\xff")
    write(t, "lookup", bytes([name]) + b"_http._tcp.web.default.svc.cluster.local.")


if __name__ == "__main__":
    api_decode()
    patch()
    selectors()
    cni_config()
    image_manifest()
    image_unpack()
    dns()
