"""The Dagster UI behind compose's basic-auth proxy, run for real.

docker-compose.yml publishes the Dagster UI only through ``dagster-ui``: the
official nginx image with docker/nginx/dagster-ui.conf, started by
docker/nginx/dagster-ui-start.sh (which writes the password file). Here the
same two files run with Debian's nginx (scripts/setup.sh installs it) in
front of a real ``dagster-webserver``: the service's entry point and command
from compose, its config file with the upstream host/port and the listening
port mapped to this machine, and a stand-in for the image's main nginx.conf
(a non-root worker, as the image's ``user nginx``). Then: no credentials and
wrong credentials get 401, the right ones reach Dagster, and compose's own
health check passes.
"""

from __future__ import annotations

import base64
import grp
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from salespulse.settings import Settings
from salespulse.stack.dagster_home import prepare_dagster_home
from tests.conftest import free_port, stop_group
from tests.test_compose import COMPOSE_FILE, command_of, interpolate, read_env_file

REPO = Path(__file__).resolve().parent.parent
SERVICE = "dagster-ui"
#: the image's nginx.conf runs its workers as `user nginx`; here an unprivileged user too
WORKER_USER, WORKER_GROUP = "nobody", "nogroup"
USER = "operator"
PASSWORD = secrets.token_urlsafe(24)

MAIN_CONF = """\
# stand-in for the nginx image's /etc/nginx/nginx.conf
user {user} {group};
worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log {run}/access.log;
    client_body_temp_path {run}/client_body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    include {run}/conf.d/*.conf;
}}
"""


def compose_services(**env: str) -> dict:
    values = read_env_file(REPO / ".env.example")
    values.update(env)
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), values)["services"]


def mounted(service: dict) -> dict[str, Path]:
    """Container path -> the repository file compose bind-mounts there."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = REPO / source
    return mounts


def container_port(service: dict) -> int:
    (published,) = service["ports"]
    return int(str(published).rsplit(":", 1)[1])


def local_config(text: str, services: dict, ports: dict[tuple[str, int], int], listen: tuple[int, int],
                 paths: dict[str, str]) -> str:
    """The proxy config with compose's host:port upstreams, its listening port
    and image paths mapped to this machine; nothing else changed."""
    def upstream(m: re.Match) -> str:
        key = (m.group(1), int(m.group(2)))
        assert key in ports, f"{key} has no local stand-in"
        return f"127.0.0.1:{ports[key]}"

    names = "|".join(re.escape(n) for n in services)
    text = re.sub(rf"(?<![\w.-])({names}):(\d+)\b", upstream, text)
    text, listens = re.subn(rf"(?m)^(\s*listen\s+){listen[0]}(\s*;)", rf"\g<1>127.0.0.1:{listen[1]}\g<2>", text)
    assert listens == 1, "the config does not listen on the port compose publishes"
    for image_path, local in paths.items():
        text = text.replace(image_path, local)
    return text


def get(url: str, auth: tuple[str, str] | None = None, body: dict | None = None) -> tuple[int, dict, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait_for(url: str, proc: subprocess.Popen, log: Path, want: int, deadline_s: float = 240) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            if get(url)[0] == want:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
        assert time.monotonic() < deadline, f"{url} never answered {want}:\n{log.read_text(errors='replace')[-3000:]}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def dagster_ui(postgres, tmp_path_factory):
    """A real dagster-webserver, and compose's dagster-ui service in front of it."""
    services = compose_services(DAGSTER_UI_USER=USER, DAGSTER_UI_PASSWORD=PASSWORD)
    proxy = services[SERVICE]
    web = services["dagster-webserver"]
    web_argv = command_of(web)
    web_port_in_compose = int(web_argv[web_argv.index("-p") + 1])

    logs = tmp_path_factory.mktemp("dagster-ui")
    admin_url = postgres.create_database(f"dagster_ui_{uuid.uuid4().hex[:8]}")
    home = prepare_dagster_home(Settings(database_url=admin_url), database=admin_url.rsplit("/", 1)[1],
                                home=logs / "dagster_home")
    web_port, proxy_port = free_port(), free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "DATABASE_URL": admin_url}
    with open(logs / "webserver.log", "wb") as out:
        webserver = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(web_port),
             "-w", "workspace.yaml"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    # nginx's worker (not root) must reach its files: not under pytest's 0700 temp root
    run = Path(tempfile.mkdtemp(prefix="dagster-ui-nginx-"))
    run.chmod(0o711)
    procs = [webserver]
    try:
        wait_for(f"http://127.0.0.1:{web_port}/server_info", webserver, logs / "webserver.log", 200)

        mounts = mounted(proxy)
        conf_target = next(t for t in mounts if t.startswith("/etc/nginx/conf.d/"))
        htpasswd = run / "dagster-ui.htpasswd"
        (run / "conf.d").mkdir()
        (run / "conf.d" / Path(conf_target).name).write_text(local_config(
            mounts[conf_target].read_text(), services, {("dagster-webserver", web_port_in_compose): web_port},
            (container_port(proxy), proxy_port), {"/etc/nginx/dagster-ui.htpasswd": str(htpasswd)}))
        (run / "nginx.conf").write_text(MAIN_CONF.format(user=WORKER_USER, group=WORKER_GROUP, run=run))

        # compose's entry point and command; the entry point's script is the mounted file
        entrypoint = [str(mounts.get(a, a)) for a in proxy["entrypoint"]]
        argv = entrypoint + proxy["command"] + ["-c", str(run / "nginx.conf"), "-e", str(run / "error.log")]
        proxy_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **proxy["environment"],
                     "DAGSTER_UI_HTPASSWD": str(htpasswd), "DAGSTER_UI_HTPASSWD_GROUP": WORKER_GROUP}
        with open(logs / "nginx.log", "wb") as out:
            nginx = subprocess.Popen(argv, env=proxy_env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        procs.append(nginx)
        wait_for(f"http://127.0.0.1:{proxy_port}/server_info", nginx, logs / "nginx.log", 401, 60)
        kind, script = proxy["healthcheck"]["test"]
        assert kind == "CMD-SHELL"
        probe = ["/bin/sh", "-c", script.replace(f"127.0.0.1:{container_port(proxy)}", f"127.0.0.1:{proxy_port}")]
        yield {"url": f"http://127.0.0.1:{proxy_port}", "htpasswd": htpasswd, "probe": probe, "env": proxy_env,
               "logs": logs, "run": run, "webserver": f"http://127.0.0.1:{web_port}"}
    finally:
        for proc in reversed(procs):
            stop_group(proc)
        shutil.rmtree(run, ignore_errors=True)


def test_no_credentials_are_refused(dagster_ui):
    for path in ("/", "/server_info", "/graphql"):
        status, headers, _ = get(dagster_ui["url"] + path)
        assert status == 401, path
        assert headers.get("WWW-Authenticate", "").startswith("Basic realm="), headers
    status, _, _ = get(dagster_ui["url"] + "/graphql", body={"query": "{ version }"})
    assert status == 401


def test_wrong_credentials_are_refused(dagster_ui):
    for auth in ((USER, PASSWORD + "x"), (USER, ""), ("someone", PASSWORD), (USER.upper(), PASSWORD)):
        status, _, body = get(dagster_ui["url"] + "/server_info", auth=auth)
        assert status == 401, auth
        assert b"dagster" not in body.lower()


def test_right_credentials_reach_dagster(dagster_ui):
    status, _, body = get(dagster_ui["url"] + "/server_info", auth=(USER, PASSWORD))
    assert status == 200
    assert "dagster_webserver_version" in json.loads(body)
    status, _, body = get(dagster_ui["url"] + "/graphql", auth=(USER, PASSWORD), body={"query": "{ version }"})
    assert status == 200
    assert json.loads(body)["data"]["version"]


def test_compose_healthcheck_passes_with_the_credentials_only(dagster_ui):
    command = dagster_ui["probe"]
    assert subprocess.run(command, env=dagster_ui["env"], capture_output=True, timeout=30).returncode == 0
    wrong = {**dagster_ui["env"], "DAGSTER_UI_PASSWORD": PASSWORD + "x"}
    assert subprocess.run(command, env=wrong, capture_output=True, timeout=30).returncode != 0


def test_password_file_is_a_salted_hash_readable_by_the_worker_group_only(dagster_ui):
    path = dagster_ui["htpasswd"]
    text = path.read_text()
    user, _, hashed = text.strip().partition(":")
    assert user == USER and hashed.startswith("$6$") and PASSWORD not in text
    st = path.stat()
    assert (st.st_mode & 0o777, st.st_uid, grp.getgrgid(st.st_gid).gr_name) == (0o640, 0, WORKER_GROUP)


@pytest.mark.parametrize("env, message", [
    ({"DAGSTER_UI_USER": USER}, "set DAGSTER_UI_PASSWORD"),
    ({"DAGSTER_UI_USER": USER, "DAGSTER_UI_PASSWORD": "change-me-dagster-ui"}, "placeholder"),
    ({"DAGSTER_UI_USER": USER, "DAGSTER_UI_PASSWORD": "short-pw-15char"}, "shorter than 16"),
    ({"DAGSTER_UI_PASSWORD": PASSWORD}, "set DAGSTER_UI_USER"),
    ({"DAGSTER_UI_USER": "a:b", "DAGSTER_UI_PASSWORD": PASSWORD}, "set DAGSTER_UI_USER"),
])
def test_the_entry_point_refuses_to_start_without_usable_credentials(tmp_path, env, message):
    script = mounted(compose_services()[SERVICE])["/usr/local/bin/dagster-ui-start.sh"]
    htpasswd = tmp_path / "htpasswd"
    marker = tmp_path / "started"
    out = subprocess.run(["/bin/sh", str(script), "touch", str(marker)], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "DAGSTER_UI_HTPASSWD": str(htpasswd),
                              "DAGSTER_UI_HTPASSWD_GROUP": WORKER_GROUP, **env}, timeout=30)
    assert out.returncode != 0 and message in out.stderr, out.stderr
    assert not marker.exists() and not list(tmp_path.glob("htpasswd*"))


def test_config_and_entry_point_name_the_same_password_file():
    mounts = mounted(compose_services()[SERVICE])
    conf = next(path for target, path in mounts.items() if target.startswith("/etc/nginx/conf.d/"))
    (named,) = re.findall(r"auth_basic_user_file\s+(\S+);", conf.read_text())
    script = mounts["/usr/local/bin/dagster-ui-start.sh"].read_text()
    assert f"DAGSTER_UI_HTPASSWD:-{named}}}" in script


# ---------------------------------------------------------------- cross-site requests
def send(url: str, method: str = "POST", headers: dict | None = None, data: bytes | None = None,
         auth: tuple[str, str] | None = (USER, PASSWORD)) -> tuple[int, bytes]:
    """One request with exactly these headers (and the basic-auth credentials a
    browser would add by itself for this origin)."""
    headers = dict(headers or {})
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers, method=method),
                                    timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


QUERY = json.dumps({"query": "{ version }"}).encode()
JSON = {"Content-Type": "application/json"}
ATTACKER = "http://attacker.example"
#: What a page on another site can make a browser send (with the operator's basic
#: auth attached): method, path + query string, headers, body.
CROSS_SITE = {
    "JSON POST from another origin": ("POST", "/graphql", {**JSON, "Origin": ATTACKER}, QUERY),
    "JSON POST marked cross-site": ("POST", "/graphql", {**JSON, "Sec-Fetch-Site": "cross-site"}, QUERY),
    # the dashboard is another port of the same host: same-site, not same-origin
    "JSON POST from a sibling port": ("POST", "/graphql", {**JSON, "Sec-Fetch-Site": "same-site"}, QUERY),
    "form POST (text/plain)": ("POST", "/graphql", {"Content-Type": "text/plain"}, QUERY),
    "text/plain naming JSON in a parameter": ("POST", "/graphql",
                                              {"Content-Type": "text/plain; charset=application/json"}, QUERY),
    "form POST (urlencoded)": ("POST", "/graphql", {"Content-Type": "application/x-www-form-urlencoded"},
                               b"query=%7B%20version%20%7D"),
    "GraphQL in a GET query string": ("GET", "/graphql?query=%7B%20version%20%7D", {}, None),
    "GraphQL in a POST query string": ("POST", "/graphql?query=%7B%20version%20%7D",
                                       {"Content-Type": "multipart/form-data; boundary=x"}, b"--x--"),
    "websocket from another origin": ("GET", "/graphql", {"Upgrade": "websocket", "Connection": "Upgrade",
                                                           "Sec-WebSocket-Version": "13",
                                                           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                           "Origin": ATTACKER}, None),
}


@pytest.mark.parametrize("case", list(CROSS_SITE))
def test_cross_site_requests_are_refused_before_they_reach_dagster(dagster_ui, case):
    method, path, headers, body = CROSS_SITE[case]
    status, answer = send(dagster_ui["url"] + path, method, headers, body)
    assert status == 403 and b"cross-site" in answer, (case, status, answer[:200])


def test_without_the_proxy_dagster_would_run_them(dagster_ui):
    """The same requests straight to the webserver run the query: the refusal is the proxy's."""
    runs = [case for case, (method, path, headers, body) in CROSS_SITE.items()
            if "websocket" not in case
            and (lambda r: r[0] == 200 and b'"version"' in r[1])(
                send(dagster_ui["webserver"] + path, method, headers, body, auth=None))]
    assert {"JSON POST from another origin", "text/plain naming JSON in a parameter",
            "GraphQL in a GET query string", "GraphQL in a POST query string"} <= set(runs), runs


def test_the_ui_own_requests_and_navigation_still_pass(dagster_ui):
    url = dagster_ui["url"]
    host = url.split("//", 1)[1]
    for headers in (JSON, {**JSON, "Origin": url, "Sec-Fetch-Site": "same-origin"},
                    {"Content-Type": "application/json; charset=utf-8", "Origin": f"https://{host}"},  # TLS in front
                    {**JSON, "Sec-Fetch-Site": "none"}):
        status, body = send(url + "/graphql", "POST", headers, QUERY)
        assert status == 200 and json.loads(body)["data"]["version"], headers
    # a link from the dashboard (another site or port) opens the UI
    status, _ = send(url + "/", "GET", {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
                                        "Accept": "text/html"})
    assert status == 200
    # the UI's run-log subscription: a same-origin websocket goes through to Dagster
    status, _ = send(url + "/graphql", "GET", {"Upgrade": "websocket", "Connection": "Upgrade",
                                               "Sec-WebSocket-Version": "13",
                                               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                               "Sec-WebSocket-Protocol": "graphql-ws", "Origin": url})
    assert status != 403
    # and credentials are still needed first
    assert send(url + "/graphql", "POST", JSON, QUERY, auth=None)[0] == 401
