"""docker-compose.yml, Dockerfile, .env.example and flower.conf: parsed, and every service started locally.

No Docker engine runs here, so the compose file is checked the way that matters: its structure (AOF,
volumes, healthchecks, scalable worker, simulator profile), every MJQ_ variable it or .env.example names
is a real setting, and each service's command and healthcheck, with hosts, ports and paths mapped to this
machine, really starts and turns healthy.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from tests.support import patience
from worker.devstack.redisserver import free_port
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yml"
APP_SERVICES = ("worker", "beat", "webhook", "api", "flower", "simulator")


RUN_ORDER = ("simulator", "webhook", "api", "worker", "beat", "flower")


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?err} and $$ (enough of it for our file)."""

    def sub(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"{name} is required: {arg}")
        return arg if op == ":-" else ""

    value = re.sub(r"\$\{([A-Z0-9_]+)(?:(:-|:\?)([^}]*))?\}", sub, value)
    return value.replace("$$", "$")


def mjq_names(text: str) -> set[str]:
    return set(re.findall(r"\bMJQ_[A-Z0-9_]+\b", text))


def settings_names() -> set[str]:
    return {f"MJQ_{name.upper()}" for name in Settings.model_fields}


# ---------------------------------------------------------------------------------------------- structure


def test_compose_structure() -> None:
    data = load_compose()
    services = data["services"]
    assert set(services) == {"redis", *APP_SERVICES}
    redis_svc = services["redis"]
    command = redis_svc["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.endswith(":/data") for v in redis_svc["volumes"])
    assert "redis-data" in data["volumes"]
    for name, svc in services.items():
        assert "healthcheck" in svc, f"{name} has no healthcheck"
        assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    for name in APP_SERVICES:
        svc = services[name]
        assert svc["env_file"] == ".env", name
        assert svc["build"] == "." and svc["image"] == "mjqueue:latest"
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # `--scale worker=N` must work
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["simulator"]["profiles"] == ["sim"]
    assert all("profiles" not in services[n] for n in ("redis", "worker", "beat", "webhook", "api", "flower"))
    for name in ("worker", "beat", "webhook", "api", "flower"):
        deps = services[name]["depends_on"]
        assert deps["redis"] == {"condition": "service_healthy"}, name
        # with `--profile sim` they wait for a healthy simulator; without it they start anyway
        assert deps["simulator"] == {"condition": "service_healthy", "required": False}, name
        assert services[name]["environment"]["MJQ_API_BASE_URL"] == "${MJQ_API_BASE_URL:-http://simulator:8787}"
    assert services["simulator"]["depends_on"] == {}
    assert services["flower"]["command"][-1] == "--conf=/app/flower.conf"
    assert services["flower"]["environment"]["FLOWER_DB"].startswith("/state/")
    assert "COPY flower.conf" in (ROOT / "Dockerfile").read_text()


def active_services(services: Mapping[str, Any], profiles: set[str]) -> set[str]:
    """What Compose runs with these profiles enabled: services without profiles, and those of an active one."""
    return {name for name, svc in services.items() if not svc.get("profiles") or profiles & set(svc["profiles"])}


def test_flower_is_local_by_default_without_a_default_password_and_logs_rotate() -> None:
    services = load_compose()["services"]
    assert services["flower"]["ports"] == ["${FLOWER_BIND:-127.0.0.1}:${FLOWER_PUBLISH_PORT:-5555}:5555"]
    env_example = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert re.search(r"^FLOWER_BASIC_AUTH=$", env_example, re.M) and "change-me" not in env_example
    # compose refuses to start Flower without credentials: no default, and the error says what to set
    auth = services["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    with pytest.raises(AssertionError, match="FLOWER_BASIC_AUTH is required: set FLOWER_BASIC_AUTH=user:password"):
        interpolate(auth, {})
    assert interpolate(auth, {"FLOWER_BASIC_AUTH": "ops:pw"}) == "ops:pw"
    for name, svc in services.items():
        options = svc["logging"]["options"]
        assert svc["logging"]["driver"] == "json-file" and options["max-size"] and options["max-file"], name


def test_the_readme_tells_how_to_submit_a_file_and_reach_images_and_logs() -> None:
    """The compose section of the README: every command in it names a service of the file and parses as the mjq
    command it calls; the prompt file goes in through a mount, images come out of the media volume."""
    from typer.main import get_command

    from worker.cli import app

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("#### Submitting a prompt file to the compose stack\n", 1)[1].split("\n### ", 1)[0]
    services = load_compose()["services"]
    commands = get_command(app).commands  # type: ignore[attr-defined]
    runs = re.findall(r"docker compose run [^`\n#]+", section)
    assert len(runs) >= 5, runs
    used = set()
    for run in runs:
        words, mounts = shlex.split(run)[3:], []
        while words[0].startswith("-"):
            if words.pop(0) == "-v":
                mounts.append(words.pop(0))
        service, program, name, *args = words
        assert service in services and program == "mjq", run
        params = commands[name].make_context(name, list(args)).params  # an unknown option fails here
        used.add(name)
        if name == "batch":
            assert any(m.split(":")[1] == str(params["file"]) for m in mounts), run  # the file is mounted in
    assert {"batch", "status", "jobs", "export"} <= used, used
    for inline in ("mjq gallery BATCH --no-open", "mjq logs JOB"):
        assert inline in section
        name, *args = inline.split()[1:]
        commands[name].make_context(name, args)
    media = services["worker"]["environment"]["MJQ_MEDIA_DIR"]
    assert f"docker compose cp worker:{media} " in section
    assert "media:" + media in services["worker"]["volumes"]
    logs = re.search(r"docker compose logs -f ([a-z ]+)`", section)
    assert logs and set(logs.group(1).split()) <= set(services), section
    assert "MJQ_LOG_FORMAT=json" in section and "FLOWER_BASIC_AUTH" in section and "127.0.0.1:5555" in section


@pytest.mark.parametrize("profiles", [set(), {"sim"}])
def test_every_required_dependency_is_part_of_the_project(profiles: set[str]) -> None:
    """Compose refuses a project where a service depends on one that is off (compose-spec: `required` defaults
    to true), so without the profile nothing may need the simulator, and with it the apps wait for it."""
    services = load_compose()["services"]
    active = active_services(services, profiles)
    assert {"redis", "worker", "beat", "webhook", "api", "flower"} <= active
    assert ("simulator" in active) == ("sim" in profiles)
    for name in active:
        for dep, spec in (services[name].get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            if spec.get("required", True):
                assert dep in active, f"{name} needs {dep}, which is off with profiles {sorted(profiles)}"
            assert spec.get("condition") == "service_healthy" and "healthcheck" in services[dep], (name, dep)


def test_pyproject_license_is_spdx_and_build_requirements_are_a_range() -> None:
    """setuptools stops building ``license = { text = ... }`` after 2027-02-18; an unbounded build backend
    lets a future major release break a clean install."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "MIT"
    for requirement in project["build-system"]["requires"]:
        assert re.fullmatch(r"[a-z_-]+>=[\d.]+,<[\d.]+", requirement), requirement


def test_every_mjq_variable_is_a_setting() -> None:
    known = settings_names()
    for path in (COMPOSE, ROOT / ".env.example", ROOT / "Dockerfile"):
        names = mjq_names(path.read_text(encoding="utf-8"))
        assert names, path
        assert names <= known, f"{path.name}: not settings: {sorted(names - known)}"
    # .env.example is valid as written: the settings load from exactly that file.
    env_lines = [
        line
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    values = dict(line.split("=", 1) for line in env_lines)
    fields: dict[str, Any] = {k[4:].lower(): v for k, v in values.items() if k.startswith("MJQ_") and v}
    settings = Settings(_env_file=None, **fields)
    assert settings.slots_fast == 3


def test_flower_conf_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower executes flower.conf as Python: check what it defines, with and without the env."""
    namespace: dict[str, Any] = {}
    env = {"FLOWER_BASIC_AUTH": "admin:pw1, ops:pw2", "FLOWER_PORT": "6001", "FLOWER_DB": str(tmp_path / "f")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    exec(compile((ROOT / "flower.conf").read_text(), "flower.conf", "exec"), namespace)
    assert namespace["basic_auth"] == ["admin:pw1", "ops:pw2"]
    assert namespace["port"] == 6001 and isinstance(namespace["port"], int)
    assert namespace["persistent"] is True and namespace["db"] == str(tmp_path / "f")
    assert isinstance(namespace["state_save_interval"], int) and namespace["state_save_interval"] > 0
    # saving pickles every task kept, blocking Flower ("Saving state took 2-4 s" at 50,000 tasks every 5 s)
    assert namespace["state_save_interval"] >= 60_000 and namespace["max_tasks"] <= 10_000
    assert isinstance(namespace["max_tasks"], int) and isinstance(namespace["purge_offline_workers"], int)
    assert namespace["natural_time"] is True
    columns = namespace["tasks_columns"].split(",")
    # our job fields: job id (uuid), prompt/mode/batch (kwargs), status/upstream/image (result), queue
    assert {"name", "uuid", "state", "kwargs", "result", "routing_key", "runtime"} <= set(columns)
    assert "args" not in columns  # always "()": job tasks take keyword arguments only
    from flower.views.tasks import TASK_COLUMNS

    assert set(columns) <= set(TASK_COLUMNS), "flower would silently drop unknown columns"

    class FakeTask:
        kwargs = "{'prompt': 'x', 'base64_array': ['data:image/png;base64," + "A" * 5000 + "']}"
        args = "()"
        result = "y" * 1000

    shown = namespace["format_task"](FakeTask())
    assert "AAAA" not in shown.kwargs and len(shown.result) <= 300


# ---------------------------------------------------------------------------------------------- run locally


class LocalMap:
    """Maps container names, ports and paths of the compose file onto this machine."""

    def __init__(self, tmp: Path, redis_url: str) -> None:
        self.tmp = tmp
        self.sim_port = free_port()
        self.ports = {
            "8787": str(self.sim_port), "8788": str(free_port()), "8790": str(free_port()), "5555": str(free_port())
        }
        self.redis_url = redis_url

    def text(self, value: str) -> str:
        value = interpolate(value, {"FLOWER_BASIC_AUTH": "ops:local-test"})  # what .env must set
        value = value.replace("redis://redis:6379/0", self.redis_url)
        value = value.replace("http://simulator:8787", f"http://127.0.0.1:{self.sim_port}")
        value = value.replace("/app/flower.conf", str(ROOT / "flower.conf"))
        for container_port, local_port in self.ports.items():
            value = value.replace(f"127.0.0.1:{container_port}", f"127.0.0.1:{local_port}")
        value = re.sub(r"(?<![\w.])/(state|media)\b", lambda m: str(self.tmp / m.group(1)), value)
        return value.replace("0.0.0.0", "127.0.0.1")

    def argv(self, argv: list[str]) -> list[str]:
        mapped = [self.ports.get(a, self.text(a)) for a in argv]
        if mapped[0] in ("mjq", "celery", "python"):
            mapped[0] = str(BIN / mapped[0])
        return mapped

    def env(self, svc: Mapping[str, Any]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MJQ_", "FLOWER_"))}
        env.update(
            {k: self.ports.get(str(v), self.text(str(v))) for k, v in svc.get("environment", {}).items()}
        )
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["HOSTNAME"] = socket.gethostname()
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
        return env


def healthy(test: list[str], env: Mapping[str, str], local: LocalMap) -> bool:
    argv = local.argv(list(test[1:])) if test[0] == "CMD" else ["sh", "-c", local.text(test[1])]
    done = subprocess.run(argv, env=dict(env), cwd=ROOT, capture_output=True, timeout=30)
    return done.returncode == 0


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_each_service_command_starts_and_turns_healthy(
    tmp_path: Path, redis_url: str, started: list[subprocess.Popen[bytes]]
) -> None:
    services = load_compose()["services"]
    local = LocalMap(tmp_path, redis_url)
    (tmp_path / "state").mkdir()
    (tmp_path / "media").mkdir()
    envs = {}
    for name in RUN_ORDER:
        svc = services[name]
        envs[name] = local.env(svc)
        argv = local.argv(list(svc["command"]))
        log = (tmp_path / f"{name}.log").open("wb")
        started.append(
            subprocess.Popen(
                argv,
                env=envs[name],
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    pending = set(RUN_ORDER)
    deadline = patience.deadline(60)
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            if healthy(services[name]["healthcheck"]["test"], envs[name], local):
                pending.discard(name)
        for proc, name in zip(started, RUN_ORDER, strict=True):
            if proc.poll() is not None:
                tail = (tmp_path / f"{name}.log").read_text(errors="replace")[-3000:]
                argv = [str(a) for a in cast(list[Any], proc.args)]
                raise AssertionError(f"{name} exited with {proc.returncode}: {shlex.join(argv)}\n{tail}")
        time.sleep(0.5)
    assert not pending, f"never healthy: {sorted(pending)}"
    # The worker is really connected to our Redis and serves our queues.
    from celery import Celery

    probe = Celery("probe", broker=redis_url, set_as_current=False)
    replies = probe.control.inspect(timeout=2).active_queues() or {}
    probe.close()
    queues = {q["name"] for qs in replies.values() for q in qs}
    assert {"interactive", "batch", "track"} <= queues


def test_beat_healthcheck_needs_a_live_beat_not_a_schedule_file(tmp_path: Path, redis_url: str) -> None:
    """The schedule file persists in the `state` volume, so a file (even a fresh one) proves nothing: the check
    asks beat itself, which answers only while its scheduler loop ticks."""
    beat = load_compose()["services"]["beat"]
    local = LocalMap(tmp_path, redis_url)
    (tmp_path / "state").mkdir()
    for suffix in ("", ".db", ".dat"):
        (tmp_path / "state" / f"celerybeat-schedule{suffix}").write_bytes(b"left by the last run")
    test = beat["healthcheck"]["test"]
    assert "celerybeat-schedule" not in " ".join(test)
    assert not healthy(test, local.env(beat), local), "healthy without a beat running"
    command = beat["command"]
    assert "--enable-remote-control" in command and command[command.index("--hostname") + 1] == "beat@%h"
    assert "beat@$$HOSTNAME" in test[-1]
