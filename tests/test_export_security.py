"""The exporter's transport security: loopback by default, TLS, mutual TLS and basic auth on /metrics,
basic auth and TLS for pushes, secrets that never reach stderr, the summary or an exception, and a
listen backlog that serves 50 concurrent scrapers without errors.

Certificates are made by the ``openssl`` CLI in a temporary folder; every server binds 127.0.0.1 on
a free port chosen at run time and is shut down by the test.
"""

from __future__ import annotations

import base64
import http.server
import importlib.util
import json
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import run_cli
from prometheus_client import CollectorRegistry

from relmon.config import ConfigError, MonitorConfig, config_from_dict
from relmon.export import PushError, RelmonMetrics, push, serve_http
from relmon.export.security import (
    EndpointSecurity,
    PushSecurity,
    Secret,
    endpoint_security,
    push_security,
    redact_url,
)

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "s3cr3t-Pa55-do-not-print"
OPENSSL = shutil.which("openssl")


def metrics() -> RelmonMetrics:
    m = RelmonMetrics("fmnist_cnn", "abc123", "default", registry=CollectorRegistry())
    m.set_confidence(0.85)
    m.add_samples(3)
    return m


# --------------------------------------------------------------------------------------------------
# certificates


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    assert OPENSSL, "the openssl CLI is needed to make test certificates (Debian package openssl)"
    d = tmp_path_factory.mktemp("pki")

    def run(*args):
        subprocess.run([OPENSSL, *args], cwd=d, check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=relmon test CA")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=relmon {name}")
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        )  # fmt: skip
    # a second, unrelated CA: its certificates must be refused
    run("req", "-x509", *ec, "-keyout", "other.key", "-out", "other.pem", "-days", "2", "-subj", "/CN=other CA")
    return d


def client_context(pki: Path, cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert:
        ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return ctx


def get(url: str, context=None, auth: tuple[str, str] | None = None):
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    with urllib.request.urlopen(request, timeout=10, context=context) as resp:
        return resp.status, resp.read().decode()


# --------------------------------------------------------------------------------------------------
# the endpoint


def test_endpoint_binds_loopback_by_default():
    assert MonitorConfig().http_addr == "127.0.0.1"
    with serve_http(metrics().registry, port=0) as ep:
        assert ep.server.socket.getsockname()[0] == "127.0.0.1"
        assert ep.url.startswith("http://127.0.0.1:")
        assert get(ep.url)[0] == 200
        # from another local address the endpoint is not reachable (nothing listens there)
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex(("127.0.0.2", ep.port)) != 0
    with serve_http(metrics().registry, port=0, addr="0.0.0.0") as ep:  # explicit opt-in
        assert ep.server.socket.getsockname()[0] == "0.0.0.0"


def test_endpoint_listen_backlog_is_raised():
    with serve_http(metrics().registry, port=0) as ep:
        assert ep.server.request_queue_size == 128
    with serve_http(metrics().registry, port=0, backlog=5) as ep:
        assert ep.server.request_queue_size == 5
    with pytest.raises(ValueError, match="backlog"):
        serve_http(metrics().registry, port=0, backlog=0)


def test_exposition_cache_reuses_one_rendering_and_cache_0_renders_every_scrape():
    m = metrics()
    with serve_http(m.registry, port=0, cache_seconds=3000) as ep:
        assert "relmon_confidence_ratio{" in get(ep.url)[1]
        m.set_confidence(0.123)
        assert "0.123" not in get(ep.url)[1]  # the cached rendering
    with serve_http(m.registry, port=0, cache_seconds=0) as ep:
        get(ep.url)
        m.set_confidence(0.456)
        assert "0.456" in get(ep.url)[1]
    with pytest.raises(ValueError, match="cache_seconds"):
        serve_http(m.registry, port=0, cache_seconds=-1)


def test_tls_endpoint_is_scraped_with_a_self_signed_ca(pki):
    sec = EndpointSecurity(cert_file=str(pki / "server.pem"), key_file=str(pki / "server.key"))
    with serve_http(metrics().registry, port=0, security=sec) as ep:
        assert ep.url.startswith("https://127.0.0.1:")
        status, body = get(ep.url, context=client_context(pki))
        assert status == 200 and "relmon_confidence_ratio" in body
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            get(ep.url, context=ssl.create_default_context(cafile=str(pki / "other.pem")))
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            get(ep.url.replace("https://", "http://"))  # plain HTTP is not answered
        # the server survives the bad clients
        assert get(ep.url, context=client_context(pki))[0] == 200


def test_idle_clients_do_not_block_other_scrapes(pki):
    """A client that connects and never speaks (no TLS handshake, no request) holds only its own
    thread: other scrapers are answered meanwhile (the handshake runs in the request's thread)."""
    sec = EndpointSecurity(cert_file=str(pki / "server.pem"), key_file=str(pki / "server.key"))
    for security in (None, sec):
        with serve_http(metrics().registry, port=0, security=security) as ep:
            idle = [socket.create_connection(("127.0.0.1", ep.port), timeout=5) for _ in range(3)]
            try:
                context = client_context(pki) if security else None
                assert get(ep.url, context=context)[0] == 200  # get() gives up after 10 s
            finally:
                for s in idle:
                    s.close()


def test_mutual_tls_requires_a_client_certificate_from_the_ca(pki):
    sec = EndpointSecurity(
        cert_file=str(pki / "server.pem"),
        key_file=str(pki / "server.key"),
        client_ca_file=str(pki / "ca.pem"),
    )
    with serve_http(metrics().registry, port=0, security=sec) as ep:
        assert get(ep.url, context=client_context(pki, cert=True))[0] == 200
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError, OSError)):
            get(ep.url, context=client_context(pki, cert=False))
        assert get(ep.url, context=client_context(pki, cert=True))[0] == 200


def test_basic_auth_401_without_and_200_with_credentials(tmp_path, monkeypatch):
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")  # a trailing newline (echo > file) is not part of the password
    cfg = MonitorConfig(http_auth_username="prom", http_auth_password_file=str(pw))
    with serve_http(metrics().registry, port=0, security=endpoint_security(cfg)) as ep:
        for auth in (None, ("prom", "wrong"), ("other", PASSWORD)):
            with pytest.raises(urllib.error.HTTPError) as info:
                get(ep.url, auth=auth)
            assert info.value.code == 401
            assert info.value.headers["WWW-Authenticate"].startswith("Basic")
        status, body = get(ep.url, auth=("prom", PASSWORD))
        assert status == 200 and "relmon_samples_processed_total" in body
    monkeypatch.setenv("RELMON_TEST_PW", PASSWORD)
    cfg = MonitorConfig(http_auth_username="prom", http_auth_password_env="RELMON_TEST_PW")
    assert endpoint_security(cfg).password == Secret(PASSWORD)


def test_security_config_errors_name_the_field_and_the_fix(tmp_path, pki):
    with pytest.raises(ConfigError, match=r"http_tls_cert_file and http_tls_key_file go together"):
        endpoint_security(MonitorConfig(http_tls_cert_file=str(pki / "server.pem")))
    with pytest.raises(ConfigError, match=r"mutual TLS.*needs the endpoint to use TLS"):
        endpoint_security(MonitorConfig(http_tls_client_ca_file=str(pki / "ca.pem")))
    with pytest.raises(ConfigError, match=r"http_auth_username is set but no password; fix"):
        endpoint_security(MonitorConfig(http_auth_username="prom"))
    with pytest.raises(ConfigError, match=r"'http_auth_password_file'.*cannot read.*fix"):
        endpoint_security(
            MonitorConfig(http_auth_username="p", http_auth_password_file=str(tmp_path / "missing"))
        )
    with pytest.raises(ConfigError, match=r"'push_password_env'.*'NO_SUCH_VAR_RELMON'.*not set"):
        push_security(MonitorConfig(push_username="u", push_password_env="NO_SUCH_VAR_RELMON"))
    with pytest.raises(ConfigError, match=r"'http_tls_key_file'.*not a readable file"):
        endpoint_security(
            MonitorConfig(http_tls_cert_file=str(pki / "server.pem"), http_tls_key_file=str(tmp_path / "k"))
        )
    with pytest.raises(ConfigError, match=r"cannot load the endpoint certificate.*fix"):
        EndpointSecurity(cert_file=str(pki / "server.pem"), key_file=str(pki / "client.key")).ssl_context()
    with pytest.raises(ConfigError, match=r"carries credentials and push_username"):
        push_security(
            MonitorConfig(pushgateway=f"http://u:{PASSWORD}@127.0.0.1:9", push_username="u", push_password_env="X")
        )
    # every new field is a config field (YAML and flag)
    cfg = config_from_dict({"http_tls_cert_file": "a.pem", "push_password_file": "/run/secrets/pw"})
    assert cfg.http_tls_cert_file == "a.pem" and cfg.push_password_file == "/run/secrets/pw"


def test_secrets_and_urls_are_redacted():
    assert PASSWORD not in repr(Secret(PASSWORD)) and PASSWORD not in f"{Secret(PASSWORD)}"
    # everything between :// (or the start) and the last @ goes: a token used as the user name, too
    assert redact_url(f"http://u:{PASSWORD}@gw:9091/x") == "http://***@gw:9091/x"
    assert redact_url(f"u:{PASSWORD}@gw:9091") == "***@gw:9091"
    assert redact_url(f"https://{PASSWORD}@gw") == "https://***@gw"
    for c in "#/?@":  # however the URL parses
        assert redact_url(f"http://u:a{c}{PASSWORD}@gw:9091/x") == "http://***@gw:9091/x"
    assert redact_url("gw:9091") == "gw:9091"
    assert PASSWORD not in repr(PushSecurity("u", Secret(PASSWORD)))


def test_relmon_serve_uses_the_configured_tls_and_basic_auth(pki, tmp_path, monkeypatch):
    from relmon.jobs import serve

    monkeypatch.setenv("RELMON_METRICS_PW", PASSWORD)
    cfg = MonitorConfig(
        n=8, region=7, steps=4, max_iterations=1, http_port=0,
        http_tls_cert_file=str(pki / "server.pem"), http_tls_key_file=str(pki / "server.key"),
        http_auth_username="prom", http_auth_password_env="RELMON_METRICS_PW",
    )  # fmt: skip
    seen = []

    def on_ready(ep):
        assert ep.url.startswith("https://127.0.0.1:")
        with pytest.raises(urllib.error.HTTPError, match="401"):
            get(ep.url, context=client_context(pki))
        seen.append(get(ep.url, context=client_context(pki), auth=("prom", PASSWORD))[0])

    result = serve(cfg, on_ready=on_ready)
    assert seen == [200] and result.runs == 1
    with pytest.raises(ConfigError, match="http_auth_username is set but no password"):
        serve(MonitorConfig(n=8, max_iterations=1, http_port=0, http_auth_username="prom"))


# --------------------------------------------------------------------------------------------------
# pushes


class _Gateway(http.server.BaseHTTPRequestHandler):
    """A minimal Pushgateway stand-in: records each request; 401 unless the basic auth matches."""

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append((self.path, self.headers.get("Authorization"), body))
        ok = self.server.expected is None or self.headers.get("Authorization") == self.server.expected
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def gateway():
    servers = []

    def start(user=None, password=None, context=None):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
        server.requests = []
        server.expected = (
            "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() if user else None
        )
        if context is not None:
            server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_push_with_basic_auth_from_a_password_file(gateway, tmp_path):
    server, port = gateway("pusher", PASSWORD)
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    url, sec = push_security(
        MonitorConfig(pushgateway=f"127.0.0.1:{port}", push_username="pusher", push_password_file=str(pw))
    )
    assert push(metrics().registry, url, job="relmon", grouping_key={"stream": "s"}, retries=0, security=sec) == 1
    path, auth, body = server.requests[-1]
    assert path == "/metrics/job/relmon/stream/s"
    assert base64.b64decode(auth.split()[1]).decode() == f"pusher:{PASSWORD}"
    assert b"relmon_confidence_ratio" in body
    # without credentials the gateway refuses, and the message says so without the password
    with pytest.raises(PushError, match=r"401.*credentials"):
        push(metrics().registry, url, retries=0)


def test_push_url_credentials_work_and_are_never_shown(gateway):
    server, port = gateway("pusher", PASSWORD)
    assert push(metrics().registry, f"http://pusher:{PASSWORD}@127.0.0.1:{port}", retries=0) == 1
    assert base64.b64decode(server.requests[-1][1].split()[1]).decode() == f"pusher:{PASSWORD}"
    with pytest.raises(PushError) as info:
        push(metrics().registry, f"http://pusher:wrong-{PASSWORD}@127.0.0.1:{port}", retries=0)
    text = str(info.value) + repr(info.value) + str(info.value.__cause__)
    assert "401" in text and "***@127.0.0.1" in text and PASSWORD not in text


def test_push_over_https_verifies_the_gateway_with_a_ca_bundle(gateway, pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    ctx.load_verify_locations(str(pki / "ca.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED  # the gateway also wants our client certificate
    server, port = gateway(context=ctx)
    url = f"https://127.0.0.1:{port}"
    sec = PushSecurity(
        ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"), key_file=str(pki / "client.key")
    )
    assert push(metrics().registry, url, retries=0, security=sec) == 1
    assert server.requests[-1][0] == "/metrics/job/relmon"
    with pytest.raises(PushError, match="CERTIFICATE_VERIFY_FAILED"):
        push(metrics().registry, url, retries=0, security=PushSecurity(ca_file=str(pki / "other.pem")))


def test_cli_never_prints_the_push_password(gateway, capsys, caplog, tmp_path, monkeypatch):
    fast = ["--n", "8", "--region", "7", "--steps", "4", "--no-progress", "--push-retries", "0"]
    server, port = gateway("pusher", "the-right-one")
    # a wrong password in the URL: the push fails (exit 4), the summary is printed, the secret is not
    rc = run_cli(["monitor", *fast, "--json", "--pushgateway", f"http://pusher:{PASSWORD}@127.0.0.1:{port}"])
    out, err = capsys.readouterr()
    assert rc == 4 and "401" in err
    assert PASSWORD not in out + err + caplog.text
    assert json.loads(out)["outputs"]["push"].startswith("FAILED")
    # the right password from an environment variable: pushed, and not printed either
    monkeypatch.setenv("RELMON_PUSH_PW", "the-right-one")
    rc = run_cli(
        ["monitor", *fast, "--pushgateway", f"127.0.0.1:{port}", "--push-username", "pusher",
         "--push-password-env", "RELMON_PUSH_PW"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0 and "the-right-one" not in out + err + caplog.text
    assert len(server.requests) == 2


# --------------------------------------------------------------------------------------------------
# load: a short version of benchmarks/bench_exporter.py (no timing assertion: errors only)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_exporter", ROOT / "benchmarks" / "bench_exporter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fifty_concurrent_scrapers_get_no_errors():
    bench = _bench()
    m = metrics()
    for method in ("lrp:epsilon_plus_flat", "random"):
        m.set_method(method, aopc=1.0, aopc_relative=0.2)
    with serve_http(m.registry, port=0) as ep:
        result = bench.scrape_load(ep.url, clients=50, seconds=5.0, timeout=10.0)
    assert result["errors"] == 0, result["error_kinds"]
    assert result["requests"] >= 50
