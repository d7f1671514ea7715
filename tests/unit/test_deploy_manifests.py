"""The deploy files agree with the service's contract and with each other.

Only YAML, JSON and text here, no programs: tests/observability runs promtool,
amtool and a live Prometheus on the same files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from stream_detector.io.alertmanager import ALERTNAME
from tests.observability.dashboard_queries import dashboard_queries

# --- The contract the deploy files must match ---------------------------------
# Kept in this one place for now; they are meant to be imported from
# stream_detector.config (Settings defaults, ENV_PREFIX, DEFAULT_METRICS_PORT)
# and stream_detector.io.metrics once those expose them.
METRICS_PORT = 9108
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
PROMETHEUS_JOB = "stream-detector"
SHUTDOWN_TIMEOUT_SECONDS = 10.0
TOPICS = {
    "STREAM_DETECTOR_REPORTS_TOPIC": "reports",
    "STREAM_DETECTOR_ALERTS_TOPIC": "alerts",
    "STREAM_DETECTOR_DLQ_TOPIC": "reports.dlq",
    "STREAM_DETECTOR_STATE_TOPIC": "stream-detector.state",
}
ENV_VARS = {
    "STREAM_DETECTOR_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS", "STREAM_DETECTOR_GROUP_ID",
    *TOPICS, "STREAM_DETECTOR_BUCKET", "STREAM_DETECTOR_METRICS_PORT",
    "STREAM_DETECTOR_ALERTMANAGER_URL", "STREAM_DETECTOR_LOG_FORMAT",
    "STREAM_DETECTOR_LOG_LEVEL",
}
COUNTERS = {
    "stream_detector_reports", "stream_detector_dlq_messages",
    "stream_detector_alerts_published", "stream_detector_buckets_closed",
}
GAUGES = {
    "stream_detector_incidents_open", "stream_detector_series_active",
    "stream_detector_service_reports", "stream_detector_service_expected_reports",
    "stream_detector_service_spread_reports", "stream_detector_service_anomaly_score",
    "stream_detector_service_incident_firing", "stream_detector_service_incident_severity",
    "stream_detector_service_region_reports", "stream_detector_service_problem_reports",
    "stream_detector_consumer_lag_messages", "stream_detector_watermark_timestamp_seconds",
    "stream_detector_kafka_connected", "stream_detector_build_info",
}
HISTOGRAMS = {"stream_detector_bucket_scoring_seconds", "stream_detector_detection_latency_seconds"}
# ------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
EXPOSED_METRICS = (
    GAUGES
    | {f"{name}_total" for name in COUNTERS}
    | {f"{name}_{part}" for name in HISTOGRAMS for part in ("bucket", "sum", "count")}
)


def load(path: Path):
    return yaml.safe_load(path.read_text())


def metric_names(promql: str) -> set[str]:
    """Our metric names used in an expression (recording-rule names have colons)."""
    return set(re.findall(r"(?<![\w:])stream_detector_\w+(?![\w:])", promql))


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(DEPLOY / "docker-compose.yml")


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict]:
    """Every manifest listed in the kustomization, by kind."""
    kustomization = load(K8S / "kustomization.yaml")
    manifests = [load(K8S / name) for name in kustomization["resources"]]
    return {m["kind"]: m for m in manifests}


@pytest.fixture(scope="module")
def rules() -> dict:
    return load(DEPLOY / "prometheus/rules.yml")


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


# --- docker-compose -------------------------------------------------------------

def test_compose_services_use_only_contract_env_vars(compose):
    for name, service in compose["services"].items():
        ours = {k for k in env_of(service) if k.startswith("STREAM_DETECTOR_")}
        assert ours <= ENV_VARS, f"compose service {name}: unknown {sorted(ours - ENV_VARS)}"


def test_compose_detector_matches_the_contract(compose):
    detector = compose["services"]["detector"]
    env = env_of(detector)
    assert detector["build"]["context"] == ".."
    assert (DEPLOY / detector["build"]["context"] / detector["build"]["dockerfile"]).is_file()
    assert detector["command"] == ["run"]
    assert env["STREAM_DETECTOR_METRICS_PORT"] == str(METRICS_PORT)
    assert f"{METRICS_PORT}:{METRICS_PORT}" in detector["ports"]
    for variable, topic in TOPICS.items():
        assert env[variable] == topic
    assert env["STREAM_DETECTOR_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["STREAM_DETECTOR_ALERTMANAGER_URL"] == "http://alertmanager:9093"
    # Docker's default grace is 10s, the same as the detector's whole budget.
    assert float(detector["stop_grace_period"].rstrip("s")) > SHUTDOWN_TIMEOUT_SECONDS


def test_compose_kafka_is_a_single_kraft_node_reachable_as_kafka_9092(compose):
    kafka = compose["services"]["kafka"]
    env = env_of(kafka)
    assert kafka["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node}@kafka:")
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    internal = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert advertised[internal] == "kafka:9092" and listeners[internal] == ":9092"
    protocol_map = env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    protocols = dict(item.split(":") for item in protocol_map.split(","))
    assert set(listeners) == set(protocols)


def test_compose_creates_every_contract_topic_with_a_compacted_state_topic(compose):
    script = " ".join(compose["services"]["kafka-init"]["command"])
    for topic in TOPICS.values():
        assert f"--topic {topic} " in script
    state_line = next(line for line in script.splitlines()
                      if f"--topic {TOPICS['STREAM_DETECTOR_STATE_TOPIC']} " in line)
    reports_line = next(line for line in script.splitlines()
                        if f"--topic {TOPICS['STREAM_DETECTOR_REPORTS_TOPIC']} " in line)
    assert "cleanup.policy=compact" in state_line

    def partitions(line: str) -> str:
        return re.search(r"--partitions (\d+)", line).group(1)

    assert partitions(state_line) == partitions(reports_line)


def test_compose_simulator_publishes_to_kafka_at_a_set_speed(compose):
    simulator = compose["services"]["simulator"]
    command = simulator["command"]
    assert command[0] == "simulate" and "--speed" in command
    assert command[command.index("--bootstrap-servers") + 1] == "kafka:9092"
    assert simulator["build"] == compose["services"]["detector"]["build"]
    assert simulator["healthcheck"] == {"disable": True}


def test_compose_mounts_the_deploy_configs(compose):
    services = compose["services"]
    mounts = {name: [v.split(":")[0] for v in s.get("volumes", [])] for name, s in services.items()}
    assert "./prometheus" in mounts["prometheus"]
    assert "./alertmanager" in mounts["alertmanager"]
    assert {"./grafana/provisioning", "./grafana/dashboards"} <= set(mounts["grafana"])
    for name, paths in mounts.items():
        for path in paths:
            if path.startswith("."):
                assert (DEPLOY / path).exists(), f"compose service {name} mounts missing {path}"

    dashboards_in_container = next(
        v.split(":")[1] for v in services["grafana"]["volumes"] if v.startswith("./grafana/dash")
    )
    provider = load(DEPLOY / "grafana/provisioning/dashboards/dashboards.yml")["providers"][0]
    assert provider["options"]["path"] == dashboards_in_container


def test_prometheus_scrapes_the_compose_detector_and_alerts_to_alertmanager(compose):
    config = load(DEPLOY / "prometheus/prometheus.yml")
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == PROMETHEUS_JOB]
    assert job.get("metrics_path", METRICS_PATH) == METRICS_PATH
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"detector:{METRICS_PORT}"]
    assert "detector" in compose["services"]
    [alertmanager] = [t for am in config["alerting"]["alertmanagers"]
                      for sc in am["static_configs"] for t in sc["targets"]]
    assert alertmanager.split(":")[0] in compose["services"]
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()


def test_grafana_datasource_points_at_the_compose_prometheus(compose):
    [source] = load(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]


# --- Dockerfile -------------------------------------------------------------------

def test_dockerfile_runs_the_service_as_non_root_with_a_healthcheck():
    text = (REPO / "Dockerfile").read_text()
    instructions = [line.strip() for line in text.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    assert instructions[0].startswith("FROM python:3.11-slim")
    assert 'ENTRYPOINT ["stream-detector"]' in instructions
    assert 'CMD ["run"]' in instructions
    assert f"EXPOSE {METRICS_PORT}" in instructions
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert HEALTH_PATH in text[text.index("HEALTHCHECK"):]
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


# --- Kubernetes -------------------------------------------------------------------

def test_kustomization_lists_every_manifest(k8s):
    listed = set(load(K8S / "kustomization.yaml")["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert set(k8s) == {"Deployment", "Service", "ServiceMonitor", "PrometheusRule",
                        "PodDisruptionBudget"}


def test_deployment_probes_ports_and_env_match_the_contract(k8s):
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["ports"] == [{"name": "metrics", "containerPort": METRICS_PORT,
                                   "protocol": "TCP"}]
    for probe, path in (("livenessProbe", HEALTH_PATH), ("readinessProbe", READY_PATH),
                        ("startupProbe", HEALTH_PATH)):
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= ENV_VARS, sorted(set(env) - ENV_VARS)
    assert env["STREAM_DETECTOR_METRICS_PORT"] == str(METRICS_PORT)
    for variable, topic in TOPICS.items():
        assert env[variable] == topic
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    assert pod["terminationGracePeriodSeconds"] > SHUTDOWN_TIMEOUT_SECONDS
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_service_monitor_and_pdb_select_the_detector_pods(k8s):
    pod_labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = k8s["Service"]

    def selects(selector: dict, labels: dict) -> bool:
        return bool(selector) and selector.items() <= labels.items()

    assert selects(k8s["Deployment"]["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(service["spec"]["selector"], pod_labels)
    assert selects(k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], pod_labels)
    assert service["spec"]["ports"] == [{"name": "metrics", "port": METRICS_PORT,
                                         "targetPort": "metrics", "protocol": "TCP"}]

    monitor = k8s["ServiceMonitor"]["spec"]
    assert selects(monitor["selector"]["matchLabels"], service["metadata"]["labels"])
    [endpoint] = monitor["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == METRICS_PATH
    # The Operator names the job after this Service label (or the Service itself).
    job = service["metadata"]["labels"].get(monitor.get("jobLabel"), service["metadata"]["name"])
    assert job == PROMETHEUS_JOB


def test_prometheusrule_carries_exactly_the_rules_of_rules_yml(k8s, rules):
    assert k8s["PrometheusRule"]["spec"]["groups"] == rules["groups"], (
        "deploy/k8s/prometheusrule.yaml is out of date: "
        "run `python deploy/k8s/render_prometheusrule.py`"
    )


# --- Prometheus rules and Alertmanager ------------------------------------------

def all_rules(rules: dict) -> list[dict]:
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_rules_use_only_contract_metrics_and_job(rules):
    for rule in all_rules(rules):
        unknown = metric_names(rule["expr"]) - EXPOSED_METRICS
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown {unknown}"
        for job in re.findall(r'job="([^"]*)"', rule["expr"]):
            assert job == PROMETHEUS_JOB


def test_every_alert_has_a_unit_test_that_fires_it(rules):
    tests = load(DEPLOY / "prometheus/rules.test.yml")
    fired = {case["alertname"] for test in tests["tests"]
             for case in test.get("alert_rule_test", []) if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests["tests"]
             for case in test.get("alert_rule_test", []) if not case["exp_alerts"]}
    alerts = {rule["alert"] for rule in all_rules(rules) if "alert" in rule}
    assert alerts, "rules.yml has no alerts"
    assert alerts - fired == set(), "alerts no test sees firing"
    assert alerts - quiet == set(), "alerts no test sees staying quiet"
    # Routing and inhibition know only these severities; a templated one is
    # checked through what the unit tests saw it render to.
    static = {rule["labels"]["severity"] for rule in all_rules(rules)
              if "alert" in rule and "{{" not in rule["labels"]["severity"]}
    rendered = {alert["exp_labels"]["severity"] for test in tests["tests"]
                for case in test.get("alert_rule_test", []) for alert in case["exp_alerts"]}
    assert static | rendered == {"warning", "critical"}


def test_alertmanager_inhibits_gauge_alerts_with_the_detectors_own(rules):
    config = load(DEPLOY / "alertmanager/alertmanager.yml")
    alerts = {rule["alert"] for rule in all_rules(rules) if "alert" in rule}
    named = set()
    for inhibit in config["inhibit_rules"]:
        for matcher in inhibit.get("source_matchers", []) + inhibit.get("target_matchers", []):
            name, op, value = re.fullmatch(r'(\w+)\s*(=~|!=|=)\s*"(.*)"', matcher).groups()
            if name == "alertname":
                named.update(value.split("|") if op == "=~" else [value])
    # Every alertname the inhibitions mention exists, or they silently do nothing.
    assert named <= alerts | {ALERTNAME}
    assert {ALERTNAME, "ServiceIncidentOpen"} <= named
    receivers = {r["name"] for r in config["receivers"]}
    routes = [config["route"], *config["route"].get("routes", [])]
    assert {r["receiver"] for r in routes if "receiver" in r} <= receivers


# --- Grafana dashboard ------------------------------------------------------------

@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana/dashboards/stream-detector.json").read_text())


def test_extraction_finds_every_expression(dashboard):
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    targets = sum(len(p.get("targets", [])) for p in panels)
    annotations = [a for a in dashboard["annotations"]["list"] if not a.get("builtIn")]
    variables = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert targets and annotations and variables

    queries = dashboard_queries(dashboard, {"service": "shop"})
    assert len(queries) == targets + len(annotations) + len(variables)
    for query in queries:
        assert query.expr.strip(), query.where
        assert "$" not in query.expr and "[[" not in query.expr, query.where
        unknown = metric_names(query.expr) - EXPOSED_METRICS
        assert not unknown, f"{query.where}: unknown metrics {unknown}"


def test_dashboard_has_the_service_variable_band_and_incident_annotations(dashboard):
    [service] = [v for v in dashboard["templating"]["list"] if v["name"] == "service"]
    assert "label_values(stream_detector_service_reports, service)" in json.dumps(service)

    queries = dashboard_queries(dashboard, {"service": "shop"})
    band = [q.expr for q in queries if q.where.startswith("panel 'Reports vs expected")]
    assert any("stream_detector_service_expected_reports" in e and "+ 2 *" in e for e in band)
    assert any("stream_detector_service_expected_reports" in e and "- 2 *" in e for e in band)
    annotations = [q.expr for q in queries if q.where.startswith("annotation")]
    assert any("stream_detector_service_incident_firing" in e for e in annotations)

    used = set().union(*(metric_names(q.expr) for q in queries))
    for needed in ("stream_detector_service_region_reports",
                   "stream_detector_service_problem_reports",
                   "stream_detector_service_anomaly_score",
                   "stream_detector_reports_total", "stream_detector_consumer_lag_messages",
                   "stream_detector_dlq_messages_total",
                   "stream_detector_bucket_scoring_seconds_bucket",
                   "stream_detector_detection_latency_seconds_bucket"):
        assert needed in used, f"no dashboard panel shows {needed}"


def test_unknown_dashboard_variable_is_an_error(dashboard):
    with pytest.raises(KeyError, match=r"\$service"):
        dashboard_queries(dashboard, {})
