"""List and watch pods with the official Python client.

Usage: list_watch_pods.py KUBECONFIG NAMESPACE EXPECTED_NAME
Prints "LISTED <n> <resourceVersion>", then "WATCHING", then one line per
event "EVENT <TYPE> <name> <phase>" until it sees EXPECTED_NAME deleted.
"""
import sys

from kubernetes import client, config, watch

kubeconfig, namespace, expected = sys.argv[1:4]
config.load_kube_config(config_file=kubeconfig)
v1 = client.CoreV1Api()

pods = v1.list_namespaced_pod(namespace)
print("LISTED", len(pods.items), pods.metadata.resource_version, flush=True)
for p in pods.items:
    print("ITEM", p.metadata.name, p.spec.containers[0].image, flush=True)

w = watch.Watch()
print("WATCHING", flush=True)
for event in w.stream(
    v1.list_namespaced_pod,
    namespace,
    resource_version=pods.metadata.resource_version,
    timeout_seconds=60,
):
    pod = event["object"]
    print("EVENT", event["type"], pod.metadata.name, pod.status.phase if pod.status else None, flush=True)
    if event["type"] == "DELETED" and pod.metadata.name == expected:
        w.stop()
        break
print("DONE", flush=True)
