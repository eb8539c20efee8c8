"""Typed agent settings, read from command-line flags and OFA_AGENT_* environment variables.

Precedence: flag > environment variable > default. Every flag `--some-name` has the variable
`OFA_AGENT_SOME_NAME` (the systemd unit's environment file uses those).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "OFA_AGENT_"
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A setting has a bad value; the message names the flag, its variable and the value."""


@dataclass(frozen=True)
class Settings:
    """Everything the agent needs to know, validated once at start."""

    model_dir: Path
    host: str = "0.0.0.0"
    port: int = 8000
    node_name: str = dataclasses.field(default_factory=socket.gethostname)
    device: str = "auto"
    dtype: str = "float32"
    max_batch_size: int = 8
    max_queue_delay_ms: float = 10.0
    max_queue: int = 64
    max_items: int = 32
    request_timeout_s: float = 30.0
    drain_timeout_s: float = 20.0
    drain_grace_s: float = 1.0
    max_body_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_text_chars: int = 512
    token_file: Path | None = None
    require_token: bool = False
    release: str = ""
    warmup: int = 3
    torch_threads: int = 0
    prepare_threads: int = 1
    switch_interval_ms: float = 1.0
    log_level: str = "info"

    @property
    def batching(self) -> dict[str, Any]:
        """The batching settings as reported by /v1/info."""
        return {
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_ms": self.max_queue_delay_ms,
            "max_queue": self.max_queue,
            "max_items": self.max_items,
            "request_timeout_s": self.request_timeout_s,
            "prepare_threads": self.prepare_threads,
        }

    def read_token(self) -> str | None:
        """The bearer token from --token-file, or None when none is configured or usable.

        An unreadable or empty file is an error only with --require-token (predict could never
        be authorised); otherwise the agent starts with its admin endpoints disabled (403) and
        `token_problem` says why.
        """
        if self.token_file is None:
            return None
        problem = self.token_problem()
        if problem is None:
            return self.token_file.read_text(encoding="utf-8").strip()
        if self.require_token and self.token_file is not None:
            raise ConfigError(problem)
        return None

    def token_problem(self) -> str | None:
        """Why --token-file gives no token (None when it does, or when none is configured)."""
        if self.token_file is None:
            return None
        where = f"--token-file / {ENV_PREFIX}TOKEN_FILE"
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            return f"{where}: cannot read {str(self.token_file)!r}: {exc.strerror}"
        if not token:
            return f"{where}: {str(self.token_file)!r} is empty"
        return None


# name -> (type, help). Type "bool" is a switch flag; its variable takes 1/0/true/false.
_OPTIONS: dict[str, tuple[str, str]] = {
    "model_dir": ("path", "model snapshot directory (configuration.json, weights, manifest)"),
    "host": ("str", "address to listen on"),
    "port": ("int", "TCP port to listen on"),
    "node_name": ("str", "node name reported in answers and /v1/info (default: hostname)"),
    "device": ("str", "auto | cpu | cuda (cuda refuses readiness when running on CPU)"),
    "dtype": ("str", "float32 | float16 | bfloat16 (autocast, CUDA only)"),
    "max_batch_size": ("int", "largest micro-batch given to one forward"),
    "max_queue_delay_ms": ("float", "longest wait for a batch to fill after its first item"),
    "max_queue": ("int", "queued pairs allowed before 429"),
    "max_items": ("int", "pairs allowed in one /v1/predict/batch request"),
    "request_timeout_s": ("float", "per-request deadline (504 after it)"),
    "drain_timeout_s": ("float", "upper bound on the time from SIGTERM to exit"),
    "drain_grace_s": ("float", "after SIGTERM keep accepting requests at least this long"),
    "max_body_bytes": ("int", "largest request body (413 above it)"),
    "max_image_pixels": ("int", "largest image in pixels, width x height (decompression bombs)"),
    "max_text_chars": ("int", "longest text or premise in characters"),
    "token_file": ("path", "file holding the bearer token (admin endpoints always need it)"),
    "require_token": ("bool", "predict endpoints need the bearer token too"),
    "release": ("str", "release id reported in /v1/info and model_info"),
    "warmup": ("int", "warm-up inferences before ready"),
    "torch_threads": ("int", "torch intra-op threads (0: torch's default, one per core)"),
    "prepare_threads": ("int", "threads that decode and preprocess requests while the forward "
                        "runs (more threads contend for the GIL with the forward)"),
    "switch_interval_ms": ("float", "Python's thread switch interval; below the default 5 ms "
                           "the forward thread gets the GIL back sooner"),
    "log_level": ("str", "critical | error | warning | info | debug"),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _convert(name: str, kind: str, raw: str, source: str) -> Any:
    where = f"{source}: " if source else ""
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "path":
            return Path(raw).expanduser() if raw else None
        if kind == "bool":
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
    except ValueError:
        expected = {"int": "an integer", "float": "a number", "bool": "1/0/true/false"}[kind]
        raise ConfigError(f"{where}must be {expected}, got {raw!r}") from None
    return raw


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser; defaults are None so that the environment can fill in."""
    parser = argparse.ArgumentParser(
        prog="python -m ofa_agent",
        description="ofactl node agent: OFA visual entailment over HTTP. Every flag can also be "
        f"set with {ENV_PREFIX}<NAME> (e.g. {ENV_PREFIX}MAX_BATCH_SIZE=16).",
    )
    for name, (kind, help_text) in _OPTIONS.items():
        if kind == "bool":
            parser.add_argument(
                _flag(name), dest=name, action="store_const", const="1", default=None,
                help=f"{help_text} [{_env(name)}]",
            )
        else:
            parser.add_argument(
                _flag(name), dest=name, default=None, metavar=name.upper(),
                help=f"{help_text} [{_env(name)}]",
            )
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Parse flags and OFA_AGENT_* variables into validated Settings (ConfigError if bad)."""
    environ = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(list(argv) if argv is not None else None))
    values: dict[str, Any] = {}
    for name, (kind, _help) in _OPTIONS.items():
        if args.get(name) is not None:
            raw, source = args[name], _flag(name)
        elif _env(name) in environ:
            raw, source = environ[_env(name)], _env(name)
        else:
            continue
        values[name] = _convert(name, kind, raw, f"{source}")
    if values.get("model_dir") is None:
        raise ConfigError(
            f"--model-dir / {_env('model_dir')}: required (a model snapshot directory)"
        )
    if "max_items" not in values:  # follow a small --max-queue instead of refusing to start
        values["max_items"] = min(Settings.max_items, int(values.get("max_queue", 64)))
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    """Check ranges and choices; raise ConfigError naming the flag, variable and value."""

    def bad(name: str, what: str, value: Any) -> ConfigError:
        return ConfigError(f"{_flag(name)} / {_env(name)}: {what}, got {value!r}")

    if not s.model_dir.is_dir():
        raise bad("model_dir", "must be an existing directory", str(s.model_dir))
    if s.device not in DEVICES:
        raise bad("device", "must be one of " + " | ".join(DEVICES), s.device)
    if s.dtype not in DTYPES:
        raise bad("dtype", "must be one of " + " | ".join(DTYPES), s.dtype)
    if not 0 <= s.port <= 65535:
        raise bad("port", "must be 0..65535", s.port)
    for name in ("max_batch_size", "max_queue", "max_items", "max_body_bytes",
                 "max_image_pixels", "max_text_chars", "prepare_threads"):
        if getattr(s, name) < 1:
            raise bad(name, "must be >= 1", getattr(s, name))
    for name in ("request_timeout_s", "drain_timeout_s", "switch_interval_ms"):
        if getattr(s, name) <= 0:
            raise bad(name, "must be > 0", getattr(s, name))
    for name in ("max_queue_delay_ms", "drain_grace_s", "warmup", "torch_threads"):
        if getattr(s, name) < 0:
            raise bad(name, "must be >= 0", getattr(s, name))
    if s.max_items > s.max_queue:
        raise ConfigError(
            f"--max-items / {_env('max_items')}: must be <= --max-queue ({s.max_queue}), "
            f"got {s.max_items} (a larger batch request could never be queued)"
        )
    if s.log_level.lower() not in ("critical", "error", "warning", "info", "debug"):
        raise bad("log_level", "must be critical | error | warning | info | debug", s.log_level)
    if s.require_token and s.token_file is None:
        raise ConfigError(
            f"--require-token / {_env('require_token')}: needs --token-file / "
            f"{_env('token_file')} (the file holding the bearer token)"
        )
    s.read_token()
