"""The Kubernetes deployment (deploy/helm/dynasor) and the Grafana dashboard, checked with no cluster.

The chart is rendered by Helm's own engine (helm-python-sdk: Helm v4's Go SDK behind ctypes; no
helm binary comes from PyPI or Debian), with its default values, with values-gpu.yaml and with the
options on, and every manifest is validated against Kubernetes 1.30's OpenAPI schemas
(kubernetes-validate, strict: unknown fields fail). Then the meaning: the replica drains on the way
down within its grace, is ready when Triton says so, is reached over gRPC as h2c, scales on
predicted remaining tokens, and takes a GPU with the GPU values. The dashboard's PromQL may name
only metrics the server exports, read from the model_repository sources, not from a list here."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from client.cli import main as cli_main
from scheduler_backend.reward_steps import check_settings
from serving.engine_host import ENGINE_METRICS
from serving.launcher import free_port

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "dynasor"
DASHBOARD = REPO / "deploy" / "grafana" / "dynasor-dashboard.json"
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "dynasor", "serving"
# Prometheus Operator resources: CRDs, so no schema of Kubernetes' own; checked by hand below.
OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor"}
METRIC = "dynasor_predicted_remaining_tokens"


def _gpu_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values-gpu.yaml").read_text())


SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu": _gpu_values(),
    "gpu-autoscaled": {**_gpu_values(), "autoscaling": {"enabled": True}},
    "autoscaled-pods-modeljson-text": {
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
        "policy": {"modelJson": '{"model": "qwen2.5-coder-0.5b", "max_num_seqs": 32}'},
        "reward": {"modelJson": '{"mode": "orm", "engine": {"model": "/models/rm"}}'},
        "drain": {"graceSeconds": 45},
    },
    "autoscaled-external-monitors-hostpath": {
        "autoscaling": {"enabled": True, "metricType": "External",
                        "externalSelector": {"matchLabels": {"namespace": NAMESPACE, "service": RELEASE}}},
        "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
        "models": {"hostPath": "/srv/models"},
        "model": "/models/Qwen2.5-1.5B-Instruct",
        "engineArgs": {"max_num_seqs": 32, "dtype": "bfloat16"},
        "serviceAccount": {"create": True},
        "shm": {"enabled": False},
    },
}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object `helm template` would print for these values (over the chart's defaults)."""
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values or None, name=RELEASE, namespace=NAMESPACE)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def notes(values: dict[str, Any] | None = None) -> str:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values or None, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in out.items() if path.endswith("NOTES.txt"))


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def container_port(c: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's target port as a number (a name resolves through the container's ports)."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in c["ports"] if p["name"] == port]
    return number


def _dockerfile() -> tuple[str, list[str]]:
    text = (REPO / "Dockerfile").read_text()
    workdir = re.search(r"^WORKDIR\s+(\S+)", text, re.M).group(1)
    entrypoint = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])", text, re.M).group(1))
    return workdir, entrypoint


# --- every manifest is a valid Kubernetes object ---------------------------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_manifest_validates_against_kubernetes_schemas(scenario):
    docs = render(SCENARIOS[scenario])
    assert {"Deployment", "Service"} <= set(kinds(docs))
    for doc in docs:
        if doc["kind"] in OPERATOR_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["name"].startswith(RELEASE)


def test_the_validator_rejects_what_kubernetes_would():
    """The check above has teeth: a misspelt field and a wrong type both fail."""
    deployment = one(render(), "Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 90
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)
    service = one(render(), "Service")
    service["spec"]["ports"][0]["port"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBE_VERSION, strict=True)


def test_helm_lint_finds_no_warning_or_error():
    for values in SCENARIOS.values():
        report = helm.lint(CHART, values or None, strict=True, kube_version=f"v{KUBE_VERSION}")
        assert not report["errors"], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_defaults_are_the_cpu_try_out():
    docs = render()
    assert kinds(docs) == ["Deployment", "Service"]  # no HPA, ConfigMap, monitors or account
    c = container(docs)
    assert c["image"].endswith(":cpu")
    for key in ("requests", "limits"):
        assert "nvidia.com/gpu" not in c["resources"].get(key, {})
    assert one(docs, "Deployment")["spec"]["replicas"] == 1


# --- drain on the way down --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grace", [None, 45, 300])
def test_prestop_drains_with_the_grace_and_the_pod_outlives_it(grace):
    values = {"drain": {"graceSeconds": grace}} if grace else {}
    grace = grace or yaml.safe_load((CHART / "values.yaml").read_text())["drain"]["graceSeconds"]
    docs = render(values)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    workdir, entrypoint = _dockerfile()
    # The venv's `dynasor` in the image (Dockerfile WORKDIR), against this replica's gRPC port.
    assert entrypoint[:2] == [".venv/bin/dynasor", "serve"]
    assert command[0] == f"{workdir}/.venv/bin/dynasor"
    assert command[1] == "drain"
    assert command[command.index("--grace") + 1] == str(grace)
    url = command[command.index("--url") + 1]
    assert url.rsplit(":", 1) == ["127.0.0.1", str(container_port(c, "grpc"))]
    # Long enough for the drain and then Triton's unload after SIGTERM.
    assert pod["terminationGracePeriodSeconds"] > grace
    assert pod["terminationGracePeriodSeconds"] >= grace + 30
    # `dynasor serve` drains on a bare SIGTERM with the same grace.
    assert c["args"][c["args"].index("--drain-grace") + 1] == str(grace)
    assert f"--grace {grace}" in notes(values)


# --- health ----------------------------------------------------------------------------------------------------------

def test_readiness_is_dynasor_ready_on_the_containers_own_http_and_metrics_ports():
    """Triton's /v2/health/ready stays 200 while draining and while an engine is rebuilt, so the
    readiness probe is `dynasor ready`, pointed at the ports the container serves."""
    c = container(render())
    probe = c["readinessProbe"]
    assert "httpGet" not in probe
    command = probe["exec"]["command"]
    workdir, _ = _dockerfile()
    assert command[0] == f"{workdir}/.venv/bin/dynasor" and command[1] == "ready"
    for flag, port in (("--http", "http"), ("--metrics", "metrics")):
        host, number = command[command.index(flag) + 1].rsplit(":", 1)
        assert host == "127.0.0.1" and int(number) == container_port(c, port)
    assert probe["timeoutSeconds"] >= 5, "an exec probe starts Python; kubelet's default 1 s is too short"
    # Every flag it gives is one `dynasor ready` knows: pointed at a closed port, it answers "not
    # ready" (1), not an argparse error (2).
    closed = f"127.0.0.1:{free_port()}"
    args = [*command[1:]]
    args[args.index("--http") + 1] = args[args.index("--metrics") + 1] = closed
    assert cli_main(args) == 1


def test_startup_and_liveness_are_tritons_health_endpoints_on_the_http_port():
    c = container(render())
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container_port(c, c["livenessProbe"]["httpGet"]["port"]) == 8000
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # generous for the model load
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002, "openai": 9000}


# --- service ---------------------------------------------------------------------------------------------------------

def test_service_exposes_the_four_ports_and_grpc_as_h2c():
    docs = render()
    service = one(docs, "Service")
    c = container(docs)
    assert service["spec"]["type"] == "ClusterIP"
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert {name: p["port"] for name, p in ports.items()} == {"http": 8000, "grpc": 8001, "metrics": 8002, "openai": 9000}
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    for name, p in ports.items():
        assert container_port(c, p["targetPort"]) == ports[name]["port"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


# --- autoscaling -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric_type", ["Pods", "External"])
def test_hpa_scales_the_deployment_on_predicted_remaining_tokens(metric_type):
    docs = render({"autoscaling": {"enabled": True, "metricType": metric_type, "minReplicas": 2, "maxReplicas": 5}})
    hpa, deployment = one(docs, "HorizontalPodAutoscaler"), one(docs, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == metric_type
    source = metric[metric_type.lower()]
    assert source["metric"]["name"] == METRIC
    assert source["target"]["type"] == "AverageValue" and float(source["target"]["averageValue"]) > 0
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    # Scaling down drains a replica: never faster than one pod at a time.
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60


def test_no_hpa_unless_enabled_and_a_bad_metric_type_fails():
    assert "HorizontalPodAutoscaler" not in kinds(render())
    with pytest.raises(helm.HelmError, match="metricType"):
        render({"autoscaling": {"enabled": True, "metricType": "Resource"}})


def test_prometheus_adapter_rules_serve_the_metric_the_hpa_asks_for():
    autoscaling = yaml.safe_load((CHART / "values.yaml").read_text())["autoscaling"]
    assert autoscaling["metricName"] == METRIC
    for kind in ("custom", "external"):
        (rule,) = autoscaling["prometheusAdapterRules"][kind]
        assert rule["seriesQuery"].startswith(METRIC + "{")
        assert re.fullmatch(rule["name"]["matches"], METRIC)
        assert rule["name"]["as"] == METRIC
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]
    assert "pod" in autoscaling["prometheusAdapterRules"]["custom"][0]["resources"]["overrides"]


# --- policy model.json -----------------------------------------------------------------------------------------------

def _model_json_mount(docs: list[dict[str, Any]], model: str = "policy") -> tuple[dict[str, Any], dict[str, Any]] | None:
    c = container(docs)
    mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"].endswith(f"/{model}/1/model.json")]
    if not mounts:
        return None
    (mount,) = mounts
    (volume,) = [v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    return mount, volume


def test_model_json_is_the_images_unless_set():
    docs = render()
    assert "ConfigMap" not in kinds(docs)
    assert _model_json_mount(docs) is None


@pytest.mark.parametrize("model_json", [{"model": "qwen2.5-coder-0.5b", "max_num_seqs": 16},
                                        '{"model": "qwen2.5-coder-0.5b", "max_num_seqs": 16}'])
def test_model_json_set_is_mounted_over_the_images_file(model_json):
    docs = render({"policy": {"modelJson": model_json}})
    config_map = one(docs, "ConfigMap")
    assert json.loads(config_map["data"]["model.json"]) == {"model": "qwen2.5-coder-0.5b", "max_num_seqs": 16}
    mount, volume = _model_json_mount(docs)
    workdir, _ = _dockerfile()
    assert (REPO / "model_repository" / "policy" / "1" / "model.json").is_file()
    assert mount["mountPath"] == f"{workdir}/model_repository/policy/1/model.json"
    assert mount["subPath"] == "model.json"
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    # A changed model.json rolls the pods (a subPath mount never updates in place).
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/policy-model-json" in annotations


def test_reward_model_json_mounts_a_process_reward_model_beside_the_policys():
    prm = json.loads((REPO / "deploy" / "reward" / "prm-qwen2.5-math-7b-gpu.json").read_text())
    docs = render({"reward": {"modelJson": prm}, "policy": {"modelJson": {"model": "/models/Qwen2.5-7B-Instruct"}}})
    maps = {d["metadata"]["name"].rsplit("-", 1)[1]: d for d in docs if d["kind"] == "ConfigMap"}
    assert sorted(maps) == ["policy", "reward"]
    served = json.loads(maps["reward"]["data"]["model.json"])
    assert served == prm and check_settings(served).mode == "prm"
    workdir, _ = _dockerfile()
    for model in ("policy", "reward"):
        mount, volume = _model_json_mount(docs, model)
        assert mount["mountPath"] == f"{workdir}/model_repository/{model}/1/model.json"
        assert volume["configMap"]["name"] == maps[model]["metadata"]["name"]
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert {"checksum/policy-model-json", "checksum/reward-model-json"} <= set(annotations)
    only_reward = render({"reward": {"modelJson": prm}})
    assert _model_json_mount(only_reward, "policy") is None and _model_json_mount(only_reward, "reward") is not None


def test_model_json_text_that_is_not_json_fails_to_render():
    with pytest.raises(helm.HelmError, match="modelJson"):
        render({"policy": {"modelJson": "{not json"}})


def test_args_carry_model_and_engine_args():
    c = container(render(SCENARIOS["autoscaled-external-monitors-hostpath"]))
    args = c["args"]
    assert args[args.index("--model") + 1] == "/models/Qwen2.5-1.5B-Instruct"
    engine = {args[i + 1] for i, a in enumerate(args) if a == "--engine-arg"}
    assert engine == {"max_num_seqs=32", "dtype=bfloat16"}
    (models,) = [m for m in c["volumeMounts"] if m["name"] == "models"]
    assert models["mountPath"] == "/models" and models["readOnly"] is True


# --- GPU values ------------------------------------------------------------------------------------------------------

def test_gpu_values_take_one_gpu_per_replica_and_a_larger_model_from_models():
    docs = render(_gpu_values())
    c = container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert c["image"].endswith(":gpu")
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert int(c["resources"]["requests"].get("nvidia.com/gpu", 1)) == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    model_json = json.loads(one(docs, "ConfigMap")["data"]["model.json"])
    assert model_json["gpu_memory_utilization"] == 0.9
    assert model_json["model"].startswith("/models/")
    # The file replaces the image's: every key the image's model.json sets is given.
    image_model_json = json.loads((REPO / "model_repository" / "policy" / "1" / "model.json").read_text())
    assert set(image_model_json) <= set(model_json)
    (models,) = [m for m in c["volumeMounts"] if m["name"] == "models"]
    assert models["mountPath"] == "/models"
    (volume,) = [v for v in pod["volumes"] if v["name"] == "models"]
    assert volume["persistentVolumeClaim"]["claimName"]


# --- Grafana dashboard -----------------------------------------------------------------------------------------------

def exported_metrics() -> set[str]:
    """Metric names the server exports: the engine host's families (both vLLM models) and the
    `_METRICS` tables of the Triton models, read from their source (they import
    triton_python_backend_utils, so they are parsed, not imported)."""
    names: set[str] = set()
    tables = [ENGINE_METRICS]
    for model in ("dynasor", "policy"):
        tree = ast.parse((REPO / "model_repository" / model / "1" / "model.py").read_text())
        (table,) = [n.value for n in tree.body if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "_METRICS" for t in n.targets)]
        # A literal table, or the engine host's plus a literal (policy's): only that name is bound.
        tables.append(eval(compile(ast.Expression(table), "_METRICS", "eval"), {"__builtins__": {}, "ENGINE_METRICS": ENGINE_METRICS}))
    for table in tables:
        for name, _help, kind in table:
            names |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
    return names


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless",
                "inf", "nan"}


def promql_metrics(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords, labels, strings and ranges left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)                              # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                             # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)                            # Grafana variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[m.end():].lstrip()
        if rest.startswith("(") or m.group().lower() in PROMQL_WORDS:
            continue
        names.add(m.group())
    return names


def promql_group_labels(expr: str) -> set[str]:
    return {label.strip() for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr) for label in group.split(",") if label.strip()}


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            queries.append(re.fullmatch(r"label_values\((.*),\s*\w+\)", q).group(1))
    return queries


def test_promql_reader_finds_a_look_alike():
    """The metric-name check has teeth: a near miss of a real name is caught, syntax is not taken for one."""
    exported = exported_metrics()
    assert {"dynasor_programs_in_flight", "dynasor_program_certaindex_at_stop_bucket", "dynasor_engine_ready"} <= exported
    good = 'histogram_quantile(0.9, sum by (le, program) (rate(dynasor_program_certaindex_at_stop_bucket{pod=~"$pod"}[$__rate_interval])))'
    assert promql_metrics(good) == {"dynasor_program_certaindex_at_stop_bucket"}
    assert promql_metrics("sum by (pod) (dynasor_program_in_flight)") - exported == {"dynasor_program_in_flight"}
    assert promql_metrics("programs_in_flight / on (pod) dynasor_draining") - exported == {"programs_in_flight"}


def test_dashboard_loads_and_uses_the_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_dashboard_promql_names_only_exported_metrics_and_shows_each_asked_for():
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_metrics()
    used: set[str] = set()
    for expr in dashboard_queries(dashboard):
        names = promql_metrics(expr)
        assert names, expr
        assert names <= exported, f"{expr}: {names - exported} not exported by the server"
        assert promql_group_labels(expr) <= {"pod", "namespace", "model", "program", "stop_reason", "outcome", "cause", "le"}, expr
        used |= names
    wanted = {"dynasor_programs_in_flight", "dynasor_programs_running", "dynasor_programs_queued", METRIC,
              "dynasor_engine_tokens_per_second", "dynasor_draining", "dynasor_programs_total",
              "dynasor_program_certaindex_at_stop_bucket", "dynasor_program_deadline_total",
              "dynasor_program_tokens_used_total", "dynasor_program_tokens_saved_total", "dynasor_refusals_total",
              "dynasor_engine_ready", "dynasor_engine_deaths_total"}
    assert wanted <= used, wanted - used
    # Counters are shown as rates or increases, never as their raw running totals.
    for expr in (t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])):
        for name in promql_metrics(expr):
            if name.endswith(("_total", "_bucket")):
                assert re.search(rf"\b(rate|increase)\(\s*{name}\b", expr), expr
