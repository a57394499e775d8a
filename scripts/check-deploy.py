"""Check deploy/kubernetes offline: every document a Kubernetes object of a known kind with the
fields the API server requires, references that resolve inside each pod (ports, volumes,
secrets by name), selectors that select the pod template, the images those the build scripts
produce, and the Job writing its runs where the DaemonSet reads them.

    python3 scripts/check-deploy.py [VERSION]     # exit 1 naming each problem
"""
import glob, os, sys
import yaml

version = sys.argv[1] if len(sys.argv) > 1 else "0.1.0"
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
problems = []
docs = []
for path in sorted(glob.glob(os.path.join(root, "deploy/kubernetes/*.yaml"))):
    with open(path) as f:
        for i, d in enumerate(yaml.safe_load_all(f)):
            if d is not None:
                docs.append((f"{os.path.basename(path)}#{i}", d))

KINDS = {
    "DaemonSet": "apps/v1", "Job": "batch/v1", "Service": "v1",
    "ServiceMonitor": "monitoring.coreos.com/v1", "Secret": "v1",
}


def need(where, obj, *keys):
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            problems.append(f"{where}: missing {k}")
            return None
        obj = obj[k]
    return obj


def pod_checks(where, pod, labels=None):
    spec = need(where, pod, "spec") or {}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in need(where, spec, "containers") or []:
        w = f"{where} container {c.get('name')}"
        for k in ("name", "image"):
            need(w, c, k)
        ports = {p.get("name"): p for p in c.get("ports", [])}
        for p in ports.values():
            if not (1 <= int(p.get("containerPort", 0)) <= 65535):
                problems.append(f"{w}: containerPort {p.get('containerPort')}")
        for probe in ("readinessProbe", "livenessProbe"):
            port = c.get(probe, {}).get("httpGet", {}).get("port")
            if isinstance(port, str) and port not in ports:
                problems.append(f"{w}: {probe} port {port!r} is not a named port")
        for m in c.get("volumeMounts", []):
            if m.get("name") not in volumes:
                problems.append(f"{w}: volumeMount {m.get('name')!r} has no volume")
    if labels is not None:
        tl = (pod.get("metadata") or {}).get("labels") or {}
        for k, v in labels.items():
            if tl.get(k) != v:
                problems.append(f"{where}: selector {k}={v} does not select the pod template")
    return spec, volumes


by_kind = {}
for where, d in docs:
    kind = d.get("kind")
    if kind not in KINDS:
        problems.append(f"{where}: unknown kind {kind!r}")
        continue
    if d.get("apiVersion") != KINDS[kind]:
        problems.append(f"{where}: apiVersion {d.get('apiVersion')!r} for {kind} (want {KINDS[kind]})")
    need(where, d, "metadata", "name")
    by_kind.setdefault(kind, []).append((where, d))
    if kind == "DaemonSet":
        sel = need(where, d, "spec", "selector", "matchLabels") or {}
        pod_checks(where, need(where, d, "spec", "template") or {}, sel)
    if kind == "Job":
        tpl = need(where, d, "spec", "template") or {}
        spec, _ = pod_checks(where, tpl)
        if spec.get("restartPolicy") not in ("Never", "OnFailure"):
            problems.append(f"{where}: a Job's restartPolicy must be Never or OnFailure")

ds = by_kind.get("DaemonSet", [])
job = by_kind.get("Job", [])
if not ds or not job:
    problems.append("deploy/kubernetes needs the DaemonSet and the Job")
else:
    dc = ds[0][1]["spec"]["template"]["spec"]["containers"][0]
    jc = job[0][1]["spec"]["template"]["spec"]["containers"][0]
    if dc["image"] != f"ghcr.io/vramprobe/vramprobe:{version}":
        problems.append(f"DaemonSet image {dc['image']} is not what scripts/build-image.sh tags")
    if jc["image"] != f"ghcr.io/vramprobe/vramprobe-cuda:{version}":
        problems.append(f"Job image {jc['image']} is not deploy/container/Containerfile.cuda's tag")
    if jc.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") != 1:
        problems.append("the Job must request one GPU (nvidia.com/gpu: 1)")
    args = " ".join(jc.get("args", []))
    if "--device=cuda" not in args:
        problems.append("the Job must sweep on CUDA")
    host = lambda pod: {v["name"]: v.get("hostPath", {}).get("path") for v in pod["volumes"]}
    dpaths, jpaths = host(ds[0][1]["spec"]["template"]["spec"]), host(job[0][1]["spec"]["template"]["spec"])
    env = {e["name"]: e.get("value") for e in dc.get("env", [])}
    runs = env.get("VRAMPROBE_RUNS_DIR")
    dmount = {m["mountPath"]: m["name"] for m in dc.get("volumeMounts", [])}
    jmount = {m["mountPath"]: m["name"] for m in jc.get("volumeMounts", [])}
    if runs not in dmount or dpaths.get(dmount[runs]) is None:
        problems.append(f"the DaemonSet's runs dir {runs} is not a hostPath mount")
    elif not any(f"--out={mp}/" in args and jpaths.get(n) == dpaths[dmount[runs]] for mp, n in jmount.items()):
        problems.append("the Job does not write its run into the DaemonSet's hostPath")
    if any(r.get("limits", {}).get("nvidia.com/gpu") for r in [dc.get("resources", {})]):
        problems.append("the monitoring DaemonSet must not take a GPU from the workloads")
    envs = {e["name"]: e.get("value") for e in dc.get("env", [])}
    if envs.get("NVIDIA_VISIBLE_DEVICES") != "all" or ds[0][1]["spec"]["template"]["spec"].get("runtimeClassName") != "nvidia":
        problems.append("the DaemonSet must see every GPU through the nvidia runtime (NVIDIA_VISIBLE_DEVICES=all)")
    # Per-pod memory: the host's /proc, read-only, where VRAMPROBE_PROC_ROOT points.
    proc_root = envs.get("VRAMPROBE_PROC_ROOT", "/proc")
    pmount = [m for m in dc.get("volumeMounts", []) if m.get("mountPath") == proc_root]
    if not pmount or dpaths.get(pmount[0]["name"]) != "/proc" or not pmount[0].get("readOnly"):
        problems.append(f"VRAMPROBE_PROC_ROOT {proc_root} is not the host's /proc mounted read-only")

for p in problems:
    print(p)
print(f"{len(docs)} objects checked, {len(problems)} problems")
sys.exit(1 if problems else 0)
