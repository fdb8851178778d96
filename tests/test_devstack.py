"""`mjq up` and `mjq demo` as a new user meets them: real subprocesses, real ports, Ctrl-C, files on disk."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis

from tests.support import patience
from tests.support.mjq import BIN, mjq
from worker.app import QUEUES
from worker.devstack.redisserver import free_port
from worker.devstack.stack import worker_argv


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MJQ_", "FLOWER_"))}
    env.update(extra)
    env["COLUMNS"] = "200"
    return env


def port_closed(url: str) -> bool:
    match = re.search(r":(\d+)", url.split("//", 1)[1])
    assert match, url
    try:
        socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=0.5).close()
    except OSError:
        return True
    return False


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_worker_command_matches_the_app() -> None:
    argv = worker_argv(concurrency=3, beat=True, hostname="w@x", schedule=Path("/tmp/s"))
    assert argv[argv.index("--queues") + 1] == ",".join(QUEUES)
    assert "-E" in argv and "--beat" in argv and argv[argv.index("--concurrency") + 1] == "3"


def test_mjq_up_runs_the_tree_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [str(BIN / "mjq"), "up", "--ephemeral", "--time-factor", "0.01", "--concurrency", "4"],
        env=clean_env(MJQ_STATE_DIR=str(state), MJQ_MEDIA_DIR=str(tmp_path / "media")),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = patience.deadline(60)
    while not any("mjqueue is up" in line for line in output):
        assert proc.poll() is None, "".join(output)
        assert time.monotonic() < deadline, "".join(output)
        time.sleep(0.2)
    time.sleep(0.3)
    text = "".join(output)
    redis_url = re.search(r"redis\s+(redis://\S+)", text).group(1)  # type: ignore[union-attr]
    flower_url = re.search(r"flower\s+(http://\S+)", text).group(1)  # type: ignore[union-attr]
    sim_url = re.search(r"upstream\s+(http://\S+)", text).group(1)  # type: ignore[union-attr]
    assert f"export MJQ_REDIS_URL={redis_url}" in text
    try:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert Path(str(client.config_get("dir")["dir"])).resolve() == (state / "redis").resolve()
        client.close()
        # A job through the tree proves the env (Redis, simulator, media dir) reached every child.
        run = mjq(
            None,
            "imagine",
            "a lighthouse from mjq up",
            "--wait",
            "--json",
            env={"MJQ_REDIS_URL": redis_url, "MJQ_MEDIA_DIR": str(tmp_path / "media")},
            timeout=60,
        )
        assert run.code == 0, (run, text)
        [job] = run.json()
        assert job["status"] == "succeeded"
        assert Path(job["image_path"]).resolve().is_relative_to((tmp_path / "media").resolve())
        assert re.search(r"worker \| .*ready", "".join(output)), "worker logs are not prefixed"
        assert (state / "logs" / "worker.log").stat().st_size > 0
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=40)
    assert code == 0, "".join(output)[-3000:]
    assert all(port_closed(url) for url in (redis_url, flower_url, sim_url))
    time.sleep(0.5)
    assert processes_mentioning(str(state)) == [], "children left running"


def test_new_user_demo_finishes_with_a_gallery(tmp_path: Path) -> None:
    """`mjq demo` exactly as the README's first command runs it (20 prompts with follow-ups, default speed),
    from an empty directory with no configuration at all. Its wall time is printed (the README quotes it), not
    asserted: a busy machine makes it slower, not wrong."""
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "mjq"), "demo", "--no-open"],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,  # about 35 s on an idle machine; pytest's own timeout is 300 s
    )
    elapsed = time.monotonic() - started
    print(f"\n`mjq demo` took {elapsed:.1f} s")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    gallery = tmp_path / ".mjq" / "demo" / "gallery.html"
    assert str(gallery) in done.stdout.replace("\n", "")
    html = gallery.read_text()
    manifest = [json.loads(line) for line in (tmp_path / ".mjq" / "demo" / "manifest.jsonl").read_text().splitlines()]
    # 20 prompts + U1-4 (4) + U1-4 (4) + U2>zoom (2) + V1 (1) + U3 (1) = 32 jobs, each shown by its thumbnail.
    assert len(manifest) == 32 and {row["status"] for row in manifest} == {"succeeded"}
    assert sum(1 for row in manifest if not row["parent_job"]) == 20
    assert html.count('.webp" alt=') == 32 and all(row["thumb_path"] for row in manifest)
    assert "demo finished" in done.stdout and "finished with problems" not in done.stdout
    assert "jobs: 32 succeeded, 0 failed, 32 total" in done.stdout


def children_of(pid: int) -> dict[int, bytes]:
    """Direct child processes of ``pid`` with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == pid:
                    found[int(entry.name)] = (entry / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
    return found


def test_mjq_up_reports_a_service_dying_mid_run_without_blaming_another_mjq_up(tmp_path: Path) -> None:
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [str(BIN / "mjq"), "up", "--ephemeral", "--no-flower", "--time-factor", "0.01", "--concurrency", "2"],
            env=clean_env(MJQ_STATE_DIR=str(tmp_path / "state"), MJQ_MEDIA_DIR=str(tmp_path / "media")),
            cwd=tmp_path,
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
        try:
            deadline = patience.deadline(60)
            while "mjqueue is up" not in out.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, out.read_text() + err.read_text()
                time.sleep(0.2)
            [simulator] = [pid for pid, argv in children_of(proc.pid).items() if b"simulator" in argv]
            os.kill(simulator, signal.SIGKILL)  # a service dies while the stack runs
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=40)
    message = err.read_text()
    assert code == 1, message
    assert "mjq: simulator stopped unexpectedly" in message and "hint:" in message, message
    assert "another `mjq up`" not in message and "Traceback" not in message, message


def test_mjq_up_blames_another_mjq_up_for_a_taken_port_at_start_up(tmp_path: Path, redis_url: str) -> None:
    with socket.socket() as holder:  # what another `mjq up` (or anything else) holding Flower's port looks like
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = clean_env(
            MJQ_STATE_DIR=str(tmp_path / "state"),
            MJQ_MEDIA_DIR=str(tmp_path / "media"),
            MJQ_REDIS_URL=redis_url,
            MJQ_API_BASE_URL=f"http://127.0.0.1:{free_port()}",  # an upstream of our own: no simulator port
            MJQ_WEBHOOK_PORT=str(free_port()),
            MJQ_FLOWER_PORT=str(port),
        )
        done = subprocess.run(
            [str(BIN / "mjq"), "up", "--concurrency", "2"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done
    assert "mjq: Flower exited during start-up" in done.stderr, done.stderr
    assert f"port {port} is in use: another `mjq up` may be running" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_mjq_up_warns_loudly_when_its_upstream_is_not_reachable(tmp_path: Path) -> None:
    """`mjq up` against an upstream on a closed port: it runs (a warning, not a stop) and says so loudly, with
    the setting to check, instead of only "mjqueue is up"."""
    env = clean_env(MJQ_STATE_DIR=str(tmp_path / "state"), MJQ_MEDIA_DIR=str(tmp_path / "media"),
                    MJQ_API_BASE_URL=f"http://127.0.0.1:{free_port()}", MJQ_API_KEY="a-key-of-ours")  # fmt: skip
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([str(BIN / "mjq"), "up", "--ephemeral", "--no-flower", "--concurrency", "1"],
                                env=env, cwd=tmp_path, stdout=stdout, stderr=stderr, text=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 90
            while "not reachable" not in err.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, out.read_text() + err.read_text()
                time.sleep(0.2)
            assert proc.poll() is None, "a warning, not a stop"
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=40)
    warning = err.read_text()
    assert code == 0, warning
    assert "mjqueue is up" in out.read_text() and "warning: the upstream" in warning, warning
    assert "MJQ_API_BASE_URL" in warning and "a-key-of-ours" not in warning + out.read_text(), warning
