"""The real server process (uvicorn + signals) on the fake engine: SIGTERM drain, exit in time."""

from __future__ import annotations

import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from agent_helpers import AgentProcess, b64, png_bytes
from ofa_agent.config import ConfigError, load_settings

FAKE = os.path.join(os.path.dirname(__file__), "fake_agent.py")
AGENT_PATH = str(Path(__file__).resolve().parents[2] / "agent")


def start(tmp_path: Path, model_dir: Path, *flags: str, delay: float,
          load: float = 0.0) -> AgentProcess:
    env = {"FAKE_DELAY_S": str(delay), "FAKE_LOAD_S": str(load),
           "PYTHONPATH": AGENT_PATH + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return AgentProcess([sys.executable, FAKE, "--model-dir", str(model_dir), *flags],
                        tmp_path / "agent.log", env)


def post(url: str, text: str) -> int:
    body = {"image": b64(png_bytes()), "text": text}
    return httpx.post(url + "/v1/predict", json=body, timeout=30).status_code


def test_sigterm_drains_in_flight_and_queued_requests_then_exits(
    tmp_path: Path, model_dir: Path
) -> None:
    agent = start(tmp_path, model_dir, "--max-batch-size", "4", "--drain-grace-s", "0.5",
                  "--drain-timeout-s", "10", delay=0.3)
    try:
        agent.wait_ready(30)
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(post, agent.url, f"text {i}") for i in range(16)]
            time.sleep(0.3)  # the first batch runs, the rest queue
            t_signal = time.monotonic()
            agent.proc.send_signal(signal.SIGTERM)
            time.sleep(0.15)
            r = httpx.get(agent.url + "/v2/health/ready", timeout=5)
            assert r.status_code == 503
            assert r.json() == {"ready": False, "reason": "draining (shutting down)"}
            late = pool.submit(post, agent.url, "arrived during the drain")
            statuses = [f.result() for f in futures] + [late.result()]
        assert statuses == [200] * 17
        rc = agent.proc.wait(15)
        took = time.monotonic() - t_signal
        assert rc == 0, agent.log()
        assert took < 10
        assert "drain finished" in agent.log()
    finally:
        agent.stop()


def test_drain_timeout_bounds_the_exit_even_with_a_forward_running(
    tmp_path: Path, model_dir: Path
) -> None:
    agent = start(tmp_path, model_dir, "--drain-timeout-s", "1.5", "--drain-grace-s", "0",
                  "--request-timeout-s", "30", delay=6.0)
    try:
        agent.wait_ready(30)
        with ThreadPoolExecutor(2) as pool:
            stuck = pool.submit(lambda: _try_post(agent.url))
            time.sleep(0.5)
            t0 = time.monotonic()
            agent.proc.send_signal(signal.SIGTERM)
            rc = agent.proc.wait(10)
            took = time.monotonic() - t0
            stuck.result()
        assert rc == 0
        assert took < 1.5 + 0.7, f"exit took {took:.2f} s"
    finally:
        agent.stop()


def _try_post(url: str) -> int | None:
    try:
        return post(url, "slow")
    except httpx.HTTPError:
        return None


def test_idle_agent_exits_soon_after_sigterm(tmp_path: Path, model_dir: Path) -> None:
    agent = start(tmp_path, model_dir, "--drain-grace-s", "0.2", delay=0.0)
    try:
        agent.wait_ready(30)
        t0 = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.proc.wait(10) == 0
        assert time.monotonic() - t0 < 2.0
    finally:
        agent.stop()


def test_sigterm_during_a_slow_model_load_exits_within_the_drain_timeout(
    tmp_path: Path, model_dir: Path
) -> None:
    agent = start(tmp_path, model_dir, "--drain-timeout-s", "2", "--drain-grace-s", "0.2",
                  delay=0.0, load=30.0)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # listening (live) while the model still loads
            try:
                if httpx.get(agent.url + "/v2/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        r = httpx.get(agent.url + "/v2/health/ready", timeout=2)
        assert r.status_code == 503 and r.json()["reason"] == "loading the model"
        t0 = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.proc.wait(10) == 0
        assert time.monotonic() - t0 < 2.5
    finally:
        agent.stop()


# --- settings -----------------------------------------------------------------------------
def test_flags_override_env_and_env_fills_in(model_dir: Path) -> None:
    env = {"OFA_AGENT_MODEL_DIR": str(model_dir), "OFA_AGENT_MAX_BATCH_SIZE": "16",
           "OFA_AGENT_PORT": "9000", "OFA_AGENT_REQUIRE_TOKEN": "0"}
    s = load_settings(["--port", "9100"], env)
    assert (s.model_dir, s.max_batch_size, s.port, s.require_token) == (model_dir, 16, 9100,
                                                                         False)


@pytest.mark.parametrize(("argv", "env", "message"), [
    ([], {}, "--model-dir / OFA_AGENT_MODEL_DIR: required (a model snapshot directory)"),
    (["--model-dir", "/nonexistent"], {},
     "--model-dir / OFA_AGENT_MODEL_DIR: must be an existing directory, got '/nonexistent'"),
    (["--device", "tpu"], {}, "--device / OFA_AGENT_DEVICE: must be one of auto | cpu | cuda, "
                              "got 'tpu'"),
    ([], {"OFA_AGENT_MAX_BATCH_SIZE": "many"}, "OFA_AGENT_MAX_BATCH_SIZE: must be an integer, "
                                               "got 'many'"),
    (["--max-queue", "0"], {}, "--max-queue / OFA_AGENT_MAX_QUEUE: must be >= 1, got 0"),
    (["--prepare-threads", "0"], {},
     "--prepare-threads / OFA_AGENT_PREPARE_THREADS: must be >= 1, got 0"),
    ([], {"OFA_AGENT_SWITCH_INTERVAL_MS": "0"},
     "--switch-interval-ms / OFA_AGENT_SWITCH_INTERVAL_MS: must be > 0, got 0.0"),
    (["--require-token"], {}, "--require-token / OFA_AGENT_REQUIRE_TOKEN: needs --token-file / "
                              "OFA_AGENT_TOKEN_FILE (the file holding the bearer token)"),
])
def test_bad_settings_name_the_flag_and_value(
    model_dir: Path, argv: list[str], env: dict[str, str], message: str
) -> None:
    if argv[:1] != ["--model-dir"] and argv != [] or env:
        env = {"OFA_AGENT_MODEL_DIR": str(model_dir), **env}
    if argv == [] and not env:
        env = {}
    with pytest.raises(ConfigError) as err:
        load_settings(argv, env)
    assert str(err.value) == message


def test_main_exits_2_on_a_bad_setting(capsys: pytest.CaptureFixture[str]) -> None:
    from ofa_agent.__main__ import main

    assert main(["--model-dir", "/nonexistent"]) == 2
    assert "ofa-agent: --model-dir / OFA_AGENT_MODEL_DIR: must be an existing directory" in (
        capsys.readouterr().err
    )


def test_missing_token_file_disables_admin_unless_predict_needs_it(
    model_dir: Path, tmp_path: Path
) -> None:
    env = {"OFA_AGENT_MODEL_DIR": str(model_dir),
           "OFA_AGENT_TOKEN_FILE": str(tmp_path / "absent")}
    s = load_settings([], env)
    assert s.read_token() is None
    assert s.token_problem() == (
        f"--token-file / OFA_AGENT_TOKEN_FILE: cannot read '{tmp_path / 'absent'}': "
        "No such file or directory"
    )
    with pytest.raises(ConfigError) as err:
        load_settings([], {**env, "OFA_AGENT_REQUIRE_TOKEN": "1"})
    assert "cannot read" in str(err.value)


def test_max_items_follows_a_small_queue(model_dir: Path) -> None:
    env = {"OFA_AGENT_MODEL_DIR": str(model_dir), "OFA_AGENT_MAX_QUEUE": "16"}
    assert load_settings([], env).max_items == 16
    with pytest.raises(ConfigError) as err:
        load_settings(["--max-items", "20"], env)
    assert str(err.value) == ("--max-items / OFA_AGENT_MAX_ITEMS: must be <= --max-queue (16), "
                              "got 20 (a larger batch request could never be queued)")


def test_one_malloc_arena_unless_the_operator_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    # glibc's per-thread arenas made the large model's forward 20 % slower on the worker thread.
    from ofa_agent.__main__ import one_malloc_arena

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert one_malloc_arena() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert one_malloc_arena() is True  # Linux with glibc (Debian): mallopt accepted it
