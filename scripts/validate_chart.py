#!/usr/bin/env python3
"""Validate the vpp-broker Helm chart without a helm binary.

Run by scripts/validate-deploy.sh inside its tools venv (helm-python-sdk, kubernetes-validate).
Steps:
  1. `helm lint --strict` (through helm-python-sdk) for every scenario;
  2. render every scenario (default values, ci/production-values.yaml, a dev scenario that
     lets the chart create its Secret) and validate each manifest with
     `kubernetes-validate --strict` against the oldest supported and the newest bundled
     Kubernetes version;
  3. check what the schemas cannot see: security context, probes, drain timing, the Ingress
     never publishing /metrics, selectors that match, hook annotations, env var names, and
     that the ConfigMap carries every config.* setting with its value;
  4. check that bad values are refused (values.schema.json and the chart's own `fail`s).

Prints one line per check and exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import Any

import helm_python as helm
import yaml
from kubernetes_validate import utils as kv_utils

RELEASE = "vpp"
NAMESPACE = "vpp-broker"
UID = 65532

# Every environment variable the binary reads (or will read with the next capabilities).
# A name outside this set in a rendered manifest is a typo the service would silently ignore.
KNOWN_ENV = {
    "DATABASE_URL", "VPP_DB_POOL_SIZE", "VPP_DB_TIMEOUT_SECS", "VPP_DB_STATEMENT_TIMEOUT_MS",
    "VPP_LISTEN", "VPP_HTTP_WORKERS", "VPP_BODY_LIMIT_BYTES", "VPP_SHUTDOWN_TIMEOUT_SECS",
    "VPP_JWT_ISSUER", "VPP_JWT_AUDIENCE", "VPP_JWT_HS256_SECRET", "VPP_JWT_PUBLIC_KEYS_PEM",
    "VPP_JWT_JWKS_URL", "VPP_JWT_JWKS_REFRESH_SECS", "VPP_JWT_LEEWAY_SECS",
    "VPP_LOG_FORMAT", "VPP_LOG", "VPP_AUTO_MIGRATE",
    "VPP_TOKEN_KEYS", "VPP_INSTANCE_ID", "VPP_INSTANCE_NAME", "VPP_APPLE_BASE_URL",
    "VPP_APPLE_TIMEOUT_SECS", "VPP_PUBLIC_URL",
    # The Apple dispatcher (background workers of `serve`).
    "VPP_WORKERS", "VPP_BATCH_QUIET_MS", "VPP_BATCH_MAX_WAIT_MS", "VPP_APPLE_CONCURRENCY",
    "VPP_EVENT_POLL_SECS", "VPP_EVENT_POLL_MAX_SECS", "VPP_JOB_LEASE_SECS", "VPP_JOB_MAX_ATTEMPTS", "VPP_IDLE_POLL_MS",
    # Sync with Apple, drift, plans and Reconcile.
    "VPP_SYNC_WORKERS", "VPP_SYNC_INCREMENTAL_MINUTES", "VPP_SYNC_FULL_HOURS",
    "VPP_SYNC_SCHEDULE_SECS", "VPP_DRIFT_STUCK_MINUTES", "VPP_PLAN_CAP_PERCENT", "VPP_PLAN_CAP_MAX",
    "VPP_RECONCILE_DAILY", "VPP_RECONCILE_UNSEEN_DAYS",
    # The wait-list (A12).
    "VPP_WAIT_EXPIRY_HOURS",
    # Notifications (N1, N2).
    "VPP_NOTIFICATION_SECS",
    # Webhooks (issue 15). VPP_WEBHOOK_ALLOW_PRIVATE, VPP_WEBHOOK_RETRY_SCALE and
    # VPP_WEBHOOK_SECRET_OVERLAP_SECS are for development and tests: the chart never sets them.
    "VPP_WEBHOOK_WORKERS", "VPP_WEBHOOK_CONCURRENCY", "VPP_WEBHOOK_TIMEOUT_SECS",
    "VPP_WEBHOOK_LOG_RETENTION_DAYS", "VPP_WEBHOOK_POLL_MS", "VPP_WEBHOOK_LEASE_SECS",
}
SECRET_ENV = {"DATABASE_URL", "VPP_TOKEN_KEYS", "VPP_JWT_HS256_SECRET", "VPP_JWT_PUBLIC_KEYS_PEM"}
# Settings the ConfigMap always carries: values path under `config` -> env var. The rendered
# value must equal the (merged) chart value, so a wrong key in the template cannot slip through.
CONFIG_ENV: dict[str, str] = {
    "logFormat": "VPP_LOG_FORMAT",
    "logLevel": "VPP_LOG",
    "httpWorkers": "VPP_HTTP_WORKERS",
    "bodyLimitBytes": "VPP_BODY_LIMIT_BYTES",
    "shutdownTimeoutSeconds": "VPP_SHUTDOWN_TIMEOUT_SECS",
    "db.poolSize": "VPP_DB_POOL_SIZE",
    "db.timeoutSeconds": "VPP_DB_TIMEOUT_SECS",
    "db.statementTimeoutMs": "VPP_DB_STATEMENT_TIMEOUT_MS",
    "jwt.issuer": "VPP_JWT_ISSUER",
    "jwt.audience": "VPP_JWT_AUDIENCE",
    "jwt.jwksRefreshSeconds": "VPP_JWT_JWKS_REFRESH_SECS",
    "jwt.leewaySeconds": "VPP_JWT_LEEWAY_SECS",
    "apple.baseUrl": "VPP_APPLE_BASE_URL",
    "apple.timeoutSeconds": "VPP_APPLE_TIMEOUT_SECS",
    "dispatch.workers": "VPP_WORKERS",
    "dispatch.batchQuietMs": "VPP_BATCH_QUIET_MS",
    "dispatch.batchMaxWaitMs": "VPP_BATCH_MAX_WAIT_MS",
    "dispatch.appleConcurrency": "VPP_APPLE_CONCURRENCY",
    "dispatch.eventPollSeconds": "VPP_EVENT_POLL_SECS",
    "dispatch.eventPollMaxSeconds": "VPP_EVENT_POLL_MAX_SECS",
    "dispatch.jobLeaseSeconds": "VPP_JOB_LEASE_SECS",
    "dispatch.jobMaxAttempts": "VPP_JOB_MAX_ATTEMPTS",
    "dispatch.idlePollMs": "VPP_IDLE_POLL_MS",
    "sync.workers": "VPP_SYNC_WORKERS",
    "sync.incrementalMinutes": "VPP_SYNC_INCREMENTAL_MINUTES",
    "sync.fullHours": "VPP_SYNC_FULL_HOURS",
    "sync.scheduleSeconds": "VPP_SYNC_SCHEDULE_SECS",
    "reconcile.stuckMinutes": "VPP_DRIFT_STUCK_MINUTES",
    "reconcile.planCapPercent": "VPP_PLAN_CAP_PERCENT",
    "reconcile.planCapMax": "VPP_PLAN_CAP_MAX",
    "waitList.expiryHours": "VPP_WAIT_EXPIRY_HOURS",
    "notifications.intervalSeconds": "VPP_NOTIFICATION_SECS",
    "webhooks.workers": "VPP_WEBHOOK_WORKERS",
    "webhooks.concurrency": "VPP_WEBHOOK_CONCURRENCY",
    "webhooks.timeoutSeconds": "VPP_WEBHOOK_TIMEOUT_SECS",
    "webhooks.logRetentionDays": "VPP_WEBHOOK_LOG_RETENTION_DAYS",
    "webhooks.pollMs": "VPP_WEBHOOK_POLL_MS",
    "webhooks.leaseSeconds": "VPP_WEBHOOK_LEASE_SECS",
}
# Kinds kubernetes-validate has no schema for (CRDs); checked structurally below instead.
CRD_KINDS = {"ServiceMonitor"}

DEV_VALUES: dict[str, Any] = {
    "replicaCount": 1,
    "config": {
        "jwt": {"issuer": "vpp-broker-dev", "audience": "vpp-broker"},
        # Non-default dispatcher settings, including zeros, so their rendering is exercised.
        "apple": {"timeoutSeconds": 10},
        "dispatch": {"workers": 1, "batchQuietMs": 0, "batchMaxWaitMs": 0, "idlePollMs": 50},
        # Zero sync workers and a set unseen-days, so the optional variable renders.
        "sync": {"workers": 0},
        "reconcile": {"daily": True, "unseenDays": 30},
    },
    "secrets": {
        "create": True,
        "inline": {
            "databaseUrl": "postgres://vpp:vpp@postgres:5432/vpp_broker",
            "tokenKeys": "k1:" + "A" * 43 + "=",
            "jwtHs256Secret": "x" * 32,
        },
    },
    "autoscaling": {"enabled": False},
}

# Values that must be refused: (description, values, exception the SDK must raise, text the
# message must contain, so a test cannot pass because of an unrelated error).
GOOD_SECRET = {"databaseUrl": "postgres://u:p@db/vpp", "tokenKeys": "k1:" + "A" * 43 + "=",
               "jwtHs256Secret": "x" * 32}
BAD_VALUES: list[tuple[str, dict[str, Any], type[helm.HelmError], str]] = [
    ('replicaCount: "two"', {"replicaCount": "two"}, helm.HelmValuesError,
     "/replicaCount"),
    ("unknown top-level key", {"replicas": 3}, helm.HelmValuesError,
     "additional properties 'replicas'"),
    ("unknown nested key (typo)", {"config": {"db": {"poolsize": 8}}}, helm.HelmValuesError,
     "additional properties 'poolsize'"),
    ("config.logFormat: xml", {"config": {"logFormat": "xml"}}, helm.HelmValuesError,
     "/config/logFormat"),
    ("config.db.poolSize: 0", {"config": {"db": {"poolSize": 0}}}, helm.HelmValuesError,
     "/config/db/poolSize"),
    ("image.pullPolicy: Sometimes", {"image": {"pullPolicy": "Sometimes"}}, helm.HelmValuesError,
     "/image/pullPolicy"),
    ("config.apple.baseUrl not a URL", {"config": {"apple": {"baseUrl": "vpp.itunes"}}},
     helm.HelmValuesError, "/config/apple/baseUrl"),
    ("secrets.inline.jwtHs256Secret shorter than 32 bytes",
     {"secrets": {"inline": {"jwtHs256Secret": "short"}}}, helm.HelmValuesError,
     "/secrets/inline/jwtHs256Secret"),
    ("VPP_TOKEN_KEYS with a key that is not 32 bytes",
     {"secrets": {"inline": {"tokenKeys": "k1:AAAA"}}}, helm.HelmValuesError,
     "/secrets/inline/tokenKeys"),
    ("config.instance.id not a UUID", {"config": {"instance": {"id": "prod"}}},
     helm.HelmValuesError, "/config/instance/id"),
    ("config.instance.name longer than 100 characters",
     {"config": {"instance": {"name": "x" * 101}}}, helm.HelmValuesError,
     "/config/instance/name"),
    ("config.apple.timeoutSeconds: 0", {"config": {"apple": {"timeoutSeconds": 0}}},
     helm.HelmValuesError, "/config/apple/timeoutSeconds"),
    ("config.dispatch.workers: -1", {"config": {"dispatch": {"workers": -1}}},
     helm.HelmValuesError, "/config/dispatch/workers"),
    ("config.dispatch.workers: 65", {"config": {"dispatch": {"workers": 65}}},
     helm.HelmValuesError, "/config/dispatch/workers"),
    ('config.dispatch.workers: "2"', {"config": {"dispatch": {"workers": "2"}}},
     helm.HelmValuesError, "/config/dispatch/workers"),
    ("unknown dispatch key (typo)", {"config": {"dispatch": {"worker": 2}}},
     helm.HelmValuesError, "additional properties 'worker'"),
    ("config.dispatch.appleConcurrency: 16 (above Apple's 15 requests/s)",
     {"config": {"dispatch": {"appleConcurrency": 16}}}, helm.HelmValuesError,
     "/config/dispatch/appleConcurrency"),
    ("config.dispatch.jobLeaseSeconds: 4", {"config": {"dispatch": {"jobLeaseSeconds": 4}}},
     helm.HelmValuesError, "/config/dispatch/jobLeaseSeconds"),
    ("config.dispatch.idlePollMs: 5", {"config": {"dispatch": {"idlePollMs": 5}}},
     helm.HelmValuesError, "/config/dispatch/idlePollMs"),
    ("ingress enabled without host", {"ingress": {"enabled": True}}, helm.HelmRenderError,
     "ingress.host is required"),
    ("grace period shorter than preStop + shutdown timeout",
     {"terminationGracePeriodSeconds": 30}, helm.HelmRenderError,
     "terminationGracePeriodSeconds (30) must exceed"),
    ("secrets.create together with existingSecret",
     {"secrets": {"create": True, "existingSecret": "mine", "inline": GOOD_SECRET}},
     helm.HelmRenderError, "mutually exclusive"),
    ("secrets.create without DATABASE_URL",
     {"secrets": {"create": True, "inline": {**GOOD_SECRET, "databaseUrl": ""}}},
     helm.HelmRenderError, "secrets.inline.databaseUrl is required"),
    ("secrets.create without any JWT key",
     {"secrets": {"create": True, "inline": {**GOOD_SECRET, "jwtHs256Secret": ""}}},
     helm.HelmRenderError, "verify caller JWTs"),
]


class Report:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0

    def ok(self, what: str) -> None:
        self.passed += 1
        print(f"  ok    {what}")

    def fail(self, what: str, why: str) -> None:
        self.failures.append(f"{what}: {why}")
        print(f"  FAIL  {what}: {why}")

    def check(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except AssertionError as e:
            self.fail(what, str(e) or "assertion failed")
        except (helm.HelmError, KeyError, IndexError, TypeError, ValueError) as e:
            # A missing field (KeyError …) in a rendered manifest is a failed check, not a crash.
            self.fail(what, f"{type(e).__name__}: {e}")
        else:
            self.ok(what)


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    return data or {}


def merged(defaults: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    """values.yaml with a scenario's values on top (maps merge, everything else replaces)."""
    out = dict(defaults)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def render(chart: helm.Chart, values: dict[str, Any] | None) -> dict[str, str]:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name, text in sorted(rendered.items()):
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def kube_validate(files: list[Path], versions: list[str]) -> tuple[bool, str]:
    """Runs the kubernetes-validate CLI in strict mode; fails on errors and on kinds it does
    not know, except the CRDs listed in CRD_KINDS."""
    cmd = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet"]
    for version in versions:
        cmd += ["-k", version]
    proc = subprocess.run(cmd + [str(f) for f in files], capture_output=True, text=True)
    out = (proc.stdout + proc.stderr).strip()
    problems = []
    for line in out.splitlines():
        if line.startswith("WARN") and any(f"kind {k} " in line for k in CRD_KINDS):
            continue
        problems.append(line)
    if proc.returncode != 0 or problems:
        return False, "\n".join(problems) or f"exit code {proc.returncode}"
    return True, ""


def pod_checks(report: Report, scenario: str, docs: list[dict[str, Any]],
               values: dict[str, Any], effective: dict[str, Any]) -> None:
    deploy = one(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    cm = one(docs, "ConfigMap")["data"]
    jobs = by_kind(docs, "Job")

    def security() -> None:
        for kind, spec in [("Deployment", pod)] + [("Job", j["spec"]["template"]["spec"]) for j in jobs]:
            psc = spec.get("securityContext", {})
            for c in spec["containers"]:
                sc = c.get("securityContext", {})
                where = f"{kind}/{c['name']}"
                assert sc.get("runAsNonRoot") or psc.get("runAsNonRoot"), f"{where}: runAsNonRoot"
                assert (sc.get("runAsUser") or psc.get("runAsUser")) == UID, f"{where}: runAsUser {UID}"
                assert sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
                assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
                assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: drop ALL"
                seccomp = sc.get("seccompProfile") or psc.get("seccompProfile") or {}
                assert seccomp.get("type") == "RuntimeDefault", f"{where}: seccomp RuntimeDefault"
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                assert "/tmp" in mounts, f"{where}: emptyDir at /tmp"
            assert spec.get("automountServiceAccountToken") is False, f"{kind}: SA token mounted"
    report.check(f"{scenario}: non-root, read-only, no capabilities, seccomp (service + Job)", security)

    def probes() -> None:
        assert container["args"] == ["serve"], f"args {container['args']}"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["startupProbe"]["httpGet"]["path"] == "/livez"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert cm["VPP_LISTEN"].endswith(f":{ports['http']}"), "VPP_LISTEN vs containerPort"
    report.check(f"{scenario}: probes /livez /readyz + startup, listen port matches", probes)

    def drain() -> None:
        sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        shutdown = int(cm["VPP_SHUTDOWN_TIMEOUT_SECS"])
        grace = pod["terminationGracePeriodSeconds"]
        assert grace > sleep + shutdown, f"grace {grace} <= preStop {sleep} + shutdown {shutdown}"
    report.check(f"{scenario}: terminationGracePeriodSeconds > preStop sleep + shutdown", drain)

    def env() -> None:
        names = set(cm)
        for c in [container] + [c for j in jobs for c in j["spec"]["template"]["spec"]["containers"]]:
            names |= {e["name"] for e in c.get("env", [])}
        unknown = names - KNOWN_ENV
        assert not unknown, f"unknown env vars {sorted(unknown)}"
        leaked = SECRET_ENV & set(cm)
        assert not leaked, f"secrets in the ConfigMap: {sorted(leaked)}"
        secret_refs = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        assert SECRET_ENV <= secret_refs, f"missing secret refs {sorted(SECRET_ENV - secret_refs)}"
        for key in ("VPP_JWT_ISSUER", "VPP_JWT_AUDIENCE", "VPP_APPLE_BASE_URL"):
            assert key in cm, f"{key} missing from the ConfigMap"
    report.check(f"{scenario}: env var names known, secrets only via secretKeyRef", env)

    def config_values() -> None:
        wrong = []
        for path, name in CONFIG_ENV.items():
            value: Any = effective["config"]
            for part in path.split("."):
                value = value[part]
            if cm.get(name) != str(value):
                wrong.append(f"{name}={cm.get(name)!r} (config.{path} is {value!r})")
        assert not wrong, "; ".join(wrong)
    report.check(f"{scenario}: ConfigMap carries config.* ({len(CONFIG_ENV)} settings, "
                 "dispatcher included) as set", config_values)

    def rollout() -> None:
        annotations = deploy["spec"]["template"]["metadata"].get("annotations", {})
        assert re.fullmatch(r"[0-9a-f]{64}", annotations.get("checksum/config", "")), "checksum/config"
        selector = deploy["spec"]["selector"]["matchLabels"]
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), "Deployment selector vs pod labels"
        service = one(docs, "Service")
        assert service["spec"]["selector"].items() <= labels.items(), "Service selects the pods"
        for j in jobs:
            job_labels = j["spec"]["template"]["metadata"]["labels"]
            assert not service["spec"]["selector"].items() <= job_labels.items(), \
                "the Service also selects the migration Job's pod"
        for t in pod.get("topologySpreadConstraints", []):
            assert t["labelSelector"]["matchLabels"].items() <= labels.items(), "spread selector"
        hpa = by_kind(docs, "HorizontalPodAutoscaler")
        if hpa:
            assert "replicas" not in deploy["spec"], "replicas set although the HPA owns them"
            ref = hpa[0]["spec"]["scaleTargetRef"]
            assert (ref["kind"], ref["name"]) == ("Deployment", deploy["metadata"]["name"])
        for pdb in by_kind(docs, "PodDisruptionBudget"):
            assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "PDB selector"
    report.check(f"{scenario}: selectors, checksum annotation, HPA/PDB targets", rollout)

    def migration() -> None:
        if not values.get("migrations", {}).get("enabled", True):
            return
        assert len(jobs) == 1, f"expected one migration Job, found {len(jobs)}"
        job = jobs[0]
        ann = job["metadata"]["annotations"]
        assert ann["helm.sh/hook"] == "pre-install,pre-upgrade", ann["helm.sh/hook"]
        assert "helm.sh/hook-delete-policy" in ann, "hook-delete-policy"
        assert job["spec"]["backoffLimit"] >= 0
        jc = job["spec"]["template"]["spec"]["containers"][0]
        assert jc["args"] == ["migrate"], f"args {jc['args']}"
        assert jc["image"] == container["image"], "Job and Deployment images differ"
        secret = by_kind(docs, "Secret")
        if secret:
            weight = int(secret[0]["metadata"]["annotations"]["helm.sh/hook-weight"])
            assert weight < int(ann["helm.sh/hook-weight"]), "Secret hook must run before the Job"
    report.check(f"{scenario}: migration hook Job runs `vpp-broker migrate` before the rollout", migration)

    ingresses = by_kind(docs, "Ingress")
    if ingresses:
        def ingress() -> None:
            entries = [p for r in ingresses[0]["spec"]["rules"] for p in r["http"]["paths"]]
            paths = {p["path"] for p in entries}
            assert all(p["pathType"] in ("Prefix", "Exact") for p in entries), "pathType"
            assert {"/v1", "/apple/notifications"} <= paths, f"paths {sorted(paths)}"
            assert not any(p in ("/", "/metrics") or p.startswith("/metrics") for p in paths), \
                f"Ingress exposes /metrics: {sorted(paths)}"
            assert ingresses[0]["spec"].get("tls"), "no TLS on the Ingress"
            assert cm.get("VPP_PUBLIC_URL", "").startswith("https://"), "VPP_PUBLIC_URL not https"
        report.check(f"{scenario}: Ingress publishes /v1 + /apple/notifications only, TLS", ingress)

    monitors = by_kind(docs, "ServiceMonitor")
    if monitors:
        def monitor() -> None:
            sm = monitors[0]
            assert sm["apiVersion"] == "monitoring.coreos.com/v1"
            service = one(docs, "Service")
            assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items(), \
                "ServiceMonitor does not select the Service"
            ports = {p["name"] for p in service["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                assert ep["port"] in ports, f"ServiceMonitor port {ep['port']} not on the Service"
                assert ep.get("path") == "/metrics", f"ServiceMonitor path {ep.get('path')}"
        report.check(f"{scenario}: ServiceMonitor (CRD, checked structurally) scrapes /metrics", monitor)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chart", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="write rendered manifests here (default: a temp dir)")
    args = parser.parse_args()
    chart_dir: Path = args.chart.resolve()
    report = Report()

    chart_meta = load_yaml(chart_dir / "Chart.yaml")
    floor = re.search(r"(\d+\.\d+)", chart_meta.get("kubeVersion", "")).group(1)  # type: ignore[union-attr]
    latest = kv_utils.major_minor(kv_utils.latest_version())
    versions = sorted({floor, latest}, key=lambda v: tuple(int(x) for x in v.split(".")))
    print(f"helm SDK {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}); "
          f"kubernetes-validate schemas: Kubernetes {', '.join(versions)} "
          f"(chart kubeVersion {chart_meta.get('kubeVersion')})")

    scenarios: list[tuple[str, dict[str, Any] | None]] = [
        ("default", None),
        ("production", load_yaml(chart_dir / "ci" / "production-values.yaml")),
        ("dev-secret", DEV_VALUES),
    ]

    defaults = load_yaml(chart_dir / "values.yaml")
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="vpp-broker-chart-"))
    out_dir.mkdir(parents=True, exist_ok=True)

    with helm.Chart.load(chart_dir) as chart:
        for scenario, values in scenarios:
            print(f"[{scenario}]")

            def lint(values: dict[str, Any] | None = values) -> None:
                result = helm.lint(chart_dir, values, strict=True, namespace=NAMESPACE,
                                   kube_version=f"v{latest}.0")
                bad = [m for m in result["messages"] if m["severity"] >= 2]
                assert not bad and not result["errors"], "; ".join(
                    f"{m['path']}: {m['error'].strip()}" for m in bad) or str(result["errors"])
            report.check(f"{scenario}: helm lint --strict", lint)

            try:
                rendered = render(chart, values)
            except helm.HelmError as e:
                report.fail(f"{scenario}: render", f"{type(e).__name__}: {e}")
                continue
            docs = manifests(rendered)
            kinds = sorted(d["kind"] for d in docs)
            report.ok(f"{scenario}: rendered {len(docs)} objects ({', '.join(kinds)})")

            files = []
            for name, text in sorted(rendered.items()):
                if name.endswith("NOTES.txt") or not text.strip():
                    continue
                path = out_dir / scenario / Path(name).name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                files.append(path)
            passed, detail = kube_validate(files, versions)
            if passed:
                report.ok(f"{scenario}: kubernetes-validate --strict "
                          f"({', '.join(versions)}) on {len(files)} files")
            else:
                report.fail(f"{scenario}: kubernetes-validate --strict", detail)

            notes = rendered.get(f"{chart_meta['name']}/templates/NOTES.txt", "")

            def notes_check(notes: str = notes) -> None:
                missing = [s for s in ("/docs", "/livez", "/readyz", "port-forward") if s not in notes]
                assert not missing, f"NOTES.txt does not mention {missing}"
            report.check(f"{scenario}: NOTES.txt tells how to reach the API, /docs and the probes",
                         notes_check)

            try:
                pod_checks(report, scenario, docs, values or {}, merged(defaults, values))
            except (AssertionError, KeyError, IndexError, TypeError) as e:
                report.fail(f"{scenario}: manifest structure", f"{type(e).__name__}: {e}")

        print("[bad values must be refused]")
        for what, values, expected, needle in BAD_VALUES:
            try:
                render(chart, values)
            except expected as e:
                if needle in str(e):
                    report.ok(f"refused {what}")
                else:
                    report.fail(f"refused {what}", f"refused for another reason: {e}")
            except helm.HelmError as e:
                report.fail(f"refused {what}", f"wrong error {type(e).__name__}: {e}")
            else:
                report.fail(f"refused {what}", "rendered without error")

    if args.out is None:
        print(f"rendered manifests: {out_dir}")
    if report.failures:
        print(f"chart: {len(report.failures)} FAILED, {report.passed} passed")
        return 1
    print(f"chart: all {report.passed} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
