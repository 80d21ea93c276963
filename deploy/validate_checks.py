#!/usr/bin/env python3
"""The checks of deploy/validate.sh that no off-the-shelf tool makes.

Usage: validate_checks.py CHECK [ARG]

  kustomization    deploy/k8s/kustomization.yaml lists every manifest there, and only those
  monitors         ServiceMonitor/PodMonitor: required fields (no CRD schema offline), and
                   they select a Service or pods with the port they name
  references       names that must agree across manifests: selectors and labels, the
                   headless Service, ConfigMaps, named ports, prometheus.io/port
  configs          node.conf directives exist in node/src/config.rs; proxy.toml parses and
                   its keys are fields of FileConfig in proxy/src/config.rs
  dashboard        deploy/grafana/lagwise.json: structure, and every lagwise_* metric it
                   uses is in docs/metrics.md
  shell-scripts DIR      writes the manifests' shell scripts (ConfigMap *.sh entries, `sh -c`
                         containers) into DIR, for shellcheck
  promql-rules OUT       writes the dashboard's queries as a Prometheus rules file (for
                         `promtool check rules`), Grafana variables replaced

Each check prints what it looked at; a failure prints FAIL lines and exits 1.
"""

import json
import re
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "lagwise.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"

failures = []


def fail(msg):
    failures.append(msg)
    print(f"  FAIL: {msg}")


def ok(msg):
    print(f"  ok: {msg}")


def manifests():
    """(file name, object) for every object in deploy/k8s but the kustomization."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for obj in yaml.safe_load_all(path.read_text()):
            if obj:
                out.append((path.name, obj))
    return out


def name_of(obj):
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def pod_templates(objs):
    """(workload, pod template) for Deployments, StatefulSets, Jobs..."""
    for _, obj in objs:
        tmpl = obj.get("spec", {}).get("template")
        if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job") and tmpl:
            yield obj, tmpl


def containers(tmpl):
    spec = tmpl.get("spec", {})
    return spec.get("initContainers", []) + spec.get("containers", [])


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------------------------------------


def check_kustomization():
    path = K8S / "kustomization.yaml"
    k = yaml.safe_load(path.read_text())
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        fail(f"{path.name}: not a kustomize.config.k8s.io/v1beta1 Kustomization")
    listed = k.get("resources", [])
    present = sorted(p.name for p in K8S.glob("*.y*ml") if p.name != "kustomization.yaml")
    for name in present:
        if name not in listed:
            fail(f"{name} is not listed in kustomization.yaml resources")
    for name in listed:
        if not (K8S / name).is_file():
            fail(f"kustomization.yaml lists {name}, which does not exist")
    if len(set(listed)) != len(listed):
        fail("kustomization.yaml lists a file twice")
    ok(f"kustomization.yaml lists all {len(present)} manifests: {', '.join(present)}")


DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")


def seconds(d):
    total = 0.0
    for n, unit in re.findall(r"(\d+)(ms|s|m|h)", d):
        total += int(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def check_monitors():
    objs = manifests()
    monitors = [(f, o) for f, o in objs if o.get("apiVersion") == "monitoring.coreos.com/v1"]
    if not any(o.get("kind") == "ServiceMonitor" for _, o in monitors):
        fail("no ServiceMonitor in deploy/k8s")
    services = [o for _, o in objs if o.get("kind") == "Service"]
    templates = list(pod_templates(objs))
    for fname, mon in monitors:
        kind = mon.get("kind")
        what = f"{fname}: {name_of(mon)}"
        if kind not in ("ServiceMonitor", "PodMonitor"):
            fail(f"{what}: unexpected kind in monitoring.coreos.com/v1")
            continue
        if not mon.get("metadata", {}).get("name"):
            fail(f"{what}: metadata.name is required")
        spec = mon.get("spec") or {}
        known = {"selector", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels",
                 "sampleLimit", "endpoints", "podMetricsEndpoints", "attachMetadata"}
        for key in spec:
            if key not in known:
                fail(f"{what}: unknown spec field {key}")
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        if not selector:
            fail(f"{what}: spec.selector.matchLabels is required (an empty one selects all)")
        field = "endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"
        endpoints = spec.get(field)
        if not isinstance(endpoints, list) or not endpoints:
            fail(f"{what}: spec.{field} must be a non-empty list")
            continue
        if kind == "ServiceMonitor":
            targets = [s for s in services if matches(selector, s["metadata"].get("labels", {}))]
            if len(targets) != 1:
                fail(f"{what}: selector {selector} matches {len(targets)} Services, want 1")
            ports = {p.get("name") for s in targets for p in s["spec"].get("ports", [])}
            target_desc = ", ".join(name_of(s) for s in targets)
        else:
            targets = [t for w, t in templates
                       if matches(selector, t.get("metadata", {}).get("labels", {}))]
            if not targets:
                fail(f"{what}: selector {selector} matches no pod template")
            ports = {p.get("name") for t in targets for c in containers(t)
                     for p in c.get("ports", [])}
            target_desc = f"{len(targets)} pod template(s)"
        for ep in endpoints:
            port = ep.get("port")
            if not isinstance(port, str) or not port:
                fail(f"{what}: every endpoint needs a named port")
            elif port not in ports:
                fail(f"{what}: port {port!r} is not a port of {target_desc or 'its targets'}")
            path = ep.get("path", "/metrics")
            if not str(path).startswith("/"):
                fail(f"{what}: path {path!r} must start with /")
            interval, timeout = ep.get("interval", "30s"), ep.get("scrapeTimeout")
            for label, d in (("interval", interval), ("scrapeTimeout", timeout)):
                if d is not None and not DURATION.match(str(d)):
                    fail(f"{what}: {label} {d!r} is not a duration like 15s")
            if timeout and DURATION.match(str(timeout)) and DURATION.match(str(interval)) \
                    and seconds(timeout) > seconds(interval):
                fail(f"{what}: scrapeTimeout {timeout} is longer than interval {interval}")
        ok(f"{what}: fields valid, scrapes port(s) "
           f"{', '.join(e.get('port', '?') for e in endpoints)} of {target_desc}")


def check_references():
    objs = manifests()
    by_kind = {}
    for _, o in objs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    templates = list(pod_templates(objs))
    configmaps = by_kind.get("ConfigMap", {})
    checked = 0
    for workload, tmpl in templates:
        what = name_of(workload)
        labels = tmpl.get("metadata", {}).get("labels", {})
        sel = workload["spec"].get("selector", {}).get("matchLabels")
        if workload["kind"] != "Job":
            if not matches(sel, labels):
                fail(f"{what}: selector {sel} does not match its pod labels {labels}")
            checked += 1
        spec = tmpl["spec"]
        for vol in spec.get("volumes", []):
            cm = vol.get("configMap", {}).get("name")
            if cm is not None:
                checked += 1
                if cm not in configmaps:
                    fail(f"{what}: volume {vol['name']} names ConfigMap {cm}, which is not here")
        mounts = {m["name"] for c in containers(tmpl) for m in c.get("volumeMounts", [])}
        vols = {v["name"] for v in spec.get("volumes", [])}
        vols |= {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for m in sorted(mounts - vols):
            fail(f"{what}: volumeMount {m} has no volume")
        checked += len(mounts)
        all_ports = set()
        for c in containers(tmpl):
            names = {p.get("name") for p in c.get("ports", [])}
            numbers = {p.get("containerPort") for p in c.get("ports", [])}
            all_ports |= numbers
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                p = c.get(probe, {}).get("httpGet", {}).get("port")
                if p is None:
                    continue
                checked += 1
                if (isinstance(p, str) and p not in names) or (isinstance(p, int) and p not in numbers):
                    fail(f"{what}: {c['name']} {probe} uses port {p!r}, not one of its ports")
        ann = tmpl.get("metadata", {}).get("annotations", {})
        if ann.get("prometheus.io/scrape") == "true":
            checked += 1
            port = ann.get("prometheus.io/port", "")
            if not port.isdigit() or int(port) not in all_ports:
                fail(f"{what}: prometheus.io/port {port!r} is not a containerPort of the pod")
            if not ann.get("prometheus.io/path", "/metrics").startswith("/"):
                fail(f"{what}: prometheus.io/path must start with /")
    for name, svc in by_kind.get("Service", {}).items():
        sel = svc["spec"].get("selector", {})
        hits = [t for _, t in templates if matches(sel, t.get("metadata", {}).get("labels", {}))]
        checked += 1
        if not hits:
            fail(f"Service/{name}: selector {sel} matches no pod template")
        pod_ports = {p.get("name") for t in hits for c in containers(t) for p in c.get("ports", [])}
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort")
            if isinstance(tp, str) and tp not in pod_ports:
                fail(f"Service/{name}: targetPort {tp} is not a port of the selected pods")
    for name, sts in by_kind.get("StatefulSet", {}).items():
        checked += 1
        svc = by_kind.get("Service", {}).get(sts["spec"].get("serviceName"))
        if svc is None:
            fail(f"StatefulSet/{name}: serviceName {sts['spec'].get('serviceName')} is not here")
        else:
            if svc["spec"].get("clusterIP") != "None":
                fail(f"StatefulSet/{name}: its Service {svc['metadata']['name']} is not headless")
            if svc["spec"].get("publishNotReadyAddresses") is not True:
                fail(f"Service/{svc['metadata']['name']}: publishNotReadyAddresses must be true "
                     "(the bootstrap Job resolves pods before they are ready)")
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        checked += 1
        sel = pdb["spec"].get("selector", {}).get("matchLabels")
        if not any(matches(sel, t.get("metadata", {}).get("labels", {})) for _, t in templates):
            fail(f"PodDisruptionBudget/{name}: selector {sel} matches no pod template")
    ok(f"{checked} cross-references between {len(objs)} objects "
       "(selectors, volumes, ConfigMaps, probe ports, Service ports, scrape annotations)")


def rust_names(path, pattern, start=None, end=None):
    text = path.read_text()
    if start is not None:
        i = text.find(start)
        if i < 0:
            return None
        j = text.find(end, i)
        text = text[i:j]
    return set(re.findall(pattern, text))


def check_configs():
    objs = manifests()
    cms = {o["metadata"]["name"]: o for _, o in objs if o["kind"] == "ConfigMap"}
    # node.conf: every directive is one the node knows.
    node_src = ROOT / "node" / "src" / "config.rs"
    directives = rust_names(node_src, r'\b(?:d|aliased)\(\s*"([a-z0-9-]+)"(?:,\s*"([a-z0-9-]+)")?')
    if not directives:
        fail(f"found no directives in {node_src.relative_to(ROOT)}")
    else:
        names = {n for pair in directives for n in pair if n}
        conf = cms.get("lagwise-node-config", {}).get("data", {}).get("node.conf")
        if conf is None:
            fail("ConfigMap lagwise-node-config has no node.conf")
        else:
            used = [line.split()[0] for line in conf.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
            for d in used:
                if d.lower() not in names:
                    fail(f"node.conf: directive {d!r} is not in {node_src.relative_to(ROOT)}")
            ok(f"node.conf: {len(used)} directives, all known to lagwise-node ({', '.join(used)})")
    # proxy.toml: parses, and every key is a FileConfig field.
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    proxy_src = ROOT / "proxy" / "src" / "config.rs"
    fields = rust_names(proxy_src, r"pub (\w+): Option<", "pub struct FileConfig", "\n}")
    if not fields:
        fail(f"found no FileConfig fields in {proxy_src.relative_to(ROOT)}")
        return
    for name, cm in cms.items():
        for key, text in cm.get("data", {}).items():
            if not key.endswith(".toml"):
                continue
            try:
                settings = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                fail(f"ConfigMap/{name} {key}: not TOML: {e}")
                continue
            unknown = sorted(set(settings) - fields)
            if unknown:
                fail(f"ConfigMap/{name} {key}: keys the proxy rejects: {', '.join(unknown)}")
            policy = settings.get("read_policy")
            if policy is not None and policy not in ("primary", "prefer-replica", "replica"):
                fail(f"ConfigMap/{name} {key}: read_policy {policy!r}")
            if settings.get("log_format") not in (None, "text", "json"):
                fail(f"ConfigMap/{name} {key}: log_format {settings['log_format']!r}")
            ok(f"ConfigMap/{name} {key}: TOML with {len(settings)} settings the proxy accepts")
            grace = settings.get("shutdown_grace_secs", 10)
            for workload, tmpl in pod_templates(objs):
                uses = any(v.get("configMap", {}).get("name") == name
                           for v in tmpl["spec"].get("volumes", []))
                if uses:
                    tgp = tmpl["spec"].get("terminationGracePeriodSeconds", 30)
                    if tgp <= grace:
                        fail(f"{name_of(workload)}: terminationGracePeriodSeconds {tgp} is not "
                             f"above the proxy's shutdown_grace_secs {grace}")
                    else:
                        ok(f"{name_of(workload)}: terminationGracePeriodSeconds {tgp} > "
                           f"shutdown_grace_secs {grace}")


def documented_metrics():
    """name -> type, from the tables of docs/metrics.md."""
    out = {}
    for m in re.finditer(r"^\|\s*`(lagwise_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|", METRICS_DOC.read_text(), re.M):
        out[m.group(1)] = m.group(2)
    return out


def dashboard_exprs(dash):
    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))
    panels = list(walk(dash.get("panels", [])))
    exprs = [(p.get("title", "?"), t["expr"]) for p in panels for t in p.get("targets", [])
             if "expr" in t]
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if q:
            exprs.append((f"variable {v.get('name')}", q))
    return panels, exprs


def check_dashboard():
    try:
        dash = json.loads(DASHBOARD.read_text())
    except json.JSONDecodeError as e:
        fail(f"{DASHBOARD.name} is not JSON: {e}")
        return
    ok(f"{DASHBOARD.relative_to(ROOT)} parses as JSON")
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        fail(f"schemaVersion {dash.get('schemaVersion')!r}: expected a current one (~39)")
    if not any(i.get("name") == "DS_PROMETHEUS" and i.get("pluginId") == "prometheus"
               for i in dash.get("__inputs", [])):
        fail("no DS_PROMETHEUS datasource input")
    if not dash.get("uid") or not dash.get("title"):
        fail("uid and title are required")
    panels, exprs = dashboard_exprs(dash)
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)) or None in ids:
        fail("panel ids must be set and unique")
    boxes = []
    for p in panels:
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "xywh") or g["x"] + g["w"] > 24:
            fail(f"panel {p.get('title')!r}: bad gridPos {g}")
            continue
        for q, other in boxes:
            if g["x"] < q["x"] + q["w"] and q["x"] < g["x"] + g["w"] and \
                    g["y"] < q["y"] + q["h"] and q["y"] < g["y"] + g["h"]:
                fail(f"panels {other!r} and {p.get('title')!r} overlap")
        boxes.append((g, p.get("title")))
        if p.get("type") != "row":
            ds = p.get("datasource") or {}
            if ds.get("uid") != "${DS_PROMETHEUS}":
                fail(f"panel {p.get('title')!r}: datasource is not ${{DS_PROMETHEUS}}")
            if not p.get("targets"):
                fail(f"panel {p.get('title')!r}: no queries")
    ok(f"{sum(p.get('type') != 'row' for p in panels)} panels in "
       f"{sum(p.get('type') == 'row' for p in panels)} rows, unique ids, no overlaps, "
       "all on ${DS_PROMETHEUS}")
    documented = documented_metrics()
    if not documented:
        fail(f"found no metrics in {METRICS_DOC.relative_to(ROOT)}")
        return
    used = set()
    for title, expr in exprs:
        for name in re.findall(r"\blagwise_[a-z0-9_]+", expr):
            used.add(name)
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name in documented:
                continue
            if base != name and documented.get(base) == "histogram":
                continue
            fail(f"panel {title!r}: {name} is not in {METRICS_DOC.relative_to(ROOT)}")
    ok(f"{len(exprs)} queries use {len(used)} lagwise_* series, all documented in "
       f"{METRICS_DOC.relative_to(ROOT)}")
    unused = sorted(set(documented) - {re.sub(r'_(bucket|sum|count)$', '', n) for n in used})
    if unused:
        print(f"  note: documented but not on the dashboard: {', '.join(unused)}")


def write_shell_scripts(out):
    """Every shell script in the manifests, one file each in the directory `out`: ConfigMap
    entries named *.sh, and the script of a container whose command is `sh -c`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    objs = manifests()
    for _, obj in objs:
        if obj.get("kind") == "ConfigMap":
            for key, text in obj.get("data", {}).items():
                if key.endswith(".sh"):
                    written.append((f"{obj['metadata']['name']}.{key}", text))
    for workload, tmpl in pod_templates(objs):
        for c in containers(tmpl):
            argv = c.get("command", []) + c.get("args", [])
            if argv[:2] in (["sh", "-c"], ["/bin/sh", "-c"]) and len(argv) > 2:
                written.append((f"{workload['metadata']['name']}.{c['name']}.sh", argv[2]))
    for name, text in written:
        (out / name).write_text(text)
    if not written:
        fail("no shell scripts found in the manifests")


def write_promql_rules(out):
    dash = json.loads(DASHBOARD.read_text())
    _, exprs = dashboard_exprs(dash)
    rules = []
    for i, (title, expr) in enumerate(exprs):
        if expr.startswith("label_values("):
            m = re.match(r"label_values\((.*),\s*\w+\)$", expr)
            expr = m.group(1) if m else expr
        expr = expr.replace("$__rate_interval", "1m").replace("$proxy", ".*").replace("$node", ".*")
        rules.append({"record": f"lagwise:dashboard_query_{i}", "expr": expr})
    Path(out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    check, args = sys.argv[1], sys.argv[2:]
    table = {
        "kustomization": check_kustomization,
        "monitors": check_monitors,
        "references": check_references,
        "configs": check_configs,
        "dashboard": check_dashboard,
        "shell-scripts": lambda: write_shell_scripts(*args),
        "promql-rules": lambda: write_promql_rules(*args),
    }
    if check not in table:
        print(__doc__)
        return 2
    table[check]()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
