"""Benchmark: the agent over HTTP vs the naive baseline server vs the in-process batched forward.

    .venv/bin/python bench/agent_bench.py --preset tiny
    .venv/bin/python bench/agent_bench.py --preset large      # slow on CPU: few requests

Measures throughput and p50/p99 latency at concurrency 1, 8 and 32 (closed loop: each client
sends its next request when the previous answer arrives) for
  (a) the agent (`python -m ofa_agent`, dynamic batching) over HTTP on 127.0.0.1,
  (b) bench/baseline_server.py: the stock pipeline called once per request (the common FastAPI
      example),
  (c) the in-process batched forward, `Engine.predict` on pre-decoded pairs with growing batch
      sizes; its best throughput is the machine's limit for this model.
Both servers get the same multipart requests (a JPEG + a hypothesis of varying length). Every
loop is bounded in request count and in time. Prints a markdown table and the ratios
agent/baseline at c=32 (target >= 2x) and agent/in-process (target >= 85 %), and writes JSON to
bench/results/. The model is a random-weight one built by `ofactl model tiny --preset P` (cost is
realistic, answers are not), cached under /tmp/ofa-bench/<preset> unless --model-dir is given.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
TEXTS = [
    "a dog",
    "two people are walking a large brown dog along a sunny street next to the water",
    "a red car",
    "a small child is holding a yellow umbrella in the rain",
    "the picture shows a cat sleeping on a sofa",
    "men playing football on green grass",
    "a woman sitting at a table outside near the water with two friends and a blue bag",
    "nobody is in the picture",
]

# requests per concurrency level, and the time bound of each level
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "requests": {1: 60, 8: 160, 32: 320},  # per round
        "rounds": 3,
        "level_time_s": 40.0,
        "batch_sizes": [1, 2, 4, 8, 16, 32, 64],
        "inproc_time_s": 2.0,
        "inproc_max_reps": 20,
        "ready_timeout_s": 180.0,
        "request_timeout_s": 60.0,
        "max_batch_size": 32,
        "max_queue_delay_ms": 10.0,
        "warmup_requests": 8,
    },
    "large": {
        # 2.5-5 s per pair on 2 quiet cores (13 s on a loaded one): one request per client
        # and level (two at c=1), one round, one in-process rep per batch size
        "requests": {1: 2, 8: 8, 32: 32},
        "rounds": 1,
        "levels": [1, 8, 32],
        "level_time_s": 420.0,
        "batch_sizes": [1, 8],
        "inproc_time_s": 1.0,
        "inproc_max_reps": 1,
        "ready_timeout_s": 900.0,
        "request_timeout_s": 600.0,
        "max_batch_size": 8,
        "max_queue_delay_ms": 50.0,
        "warmup_requests": 1,
        "agent_warmup": 1,
    },
}


# --- inputs -------------------------------------------------------------------------------
def make_images(n: int = 8, size: tuple[int, int] = (320, 240)) -> list[bytes]:
    """Distinct JPEG photos-to-be (noise + colour), as a client would upload them."""
    from PIL import Image

    rnd = random.Random(0)
    out = []
    for i in range(n):
        noise = Image.effect_noise(size, 40 + 5 * i).convert("RGB")
        tint = Image.new("RGB", size, (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
        buf = io.BytesIO()
        Image.blend(noise, tint, 0.5).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def multipart_request(path: str, port: int, image: bytes, text: str) -> bytes:
    """A complete HTTP/1.1 keep-alive request with a multipart body (image + text)."""
    boundary = "ofabenchboundary7MA4YWxkTrZu0gW"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n"
    ).encode() + image + (
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{text}\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: keep-alive\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


# --- a lean closed-loop HTTP/1.1 load generator (asyncio streams; loopback only) ------------
async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    return status, headers.get("connection", "").lower() == "close"


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


async def _load(port: int, requests: list[bytes], concurrency: int, total: int,
                time_s: float, timeout_s: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    counter = 0
    deadline = time.monotonic() + time_s

    async def client() -> None:
        nonlocal counter
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while counter < total and time.monotonic() < deadline:
            i = counter
            counter += 1
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = await asyncio.open_connection("127.0.0.1", port)
                reader, writer = conn
                writer.write(requests[i % len(requests)])
                await writer.drain()
                status, close = await asyncio.wait_for(_read_response(reader), timeout_s)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError, ValueError) as exc:
                errors[type(exc).__name__] += 1
                if conn is not None:
                    conn[1].close()
                conn = None
                continue
            elapsed = time.perf_counter() - t0
            if status == 200:
                latencies.append(elapsed)
            else:
                errors[str(status)] += 1
            if close:
                writer.close()
                conn = None
        if conn is not None:
            conn[1].close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    latencies.sort()
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    return {
        "concurrency": concurrency,
        "ok": len(latencies),
        "errors": dict(errors),
        "seconds": round(seconds, 3),
        "throughput": round(len(latencies) / seconds, 3) if seconds > 0 else 0.0,
        "p50_ms": round(p50 * 1000, 1) if p50 is not None else None,
        "p99_ms": round(p99 * 1000, 1) if p99 is not None else None,
        "bounded_by_time": len(latencies) + sum(errors.values()) < total,
        "latencies": latencies,
    }


def build_requests(port: int, path: str, images: list[bytes]) -> list[bytes]:
    """The request mix, identical for every server (only path and port differ)."""
    return [multipart_request(path, port, images[i % len(images)], TEXTS[i % len(TEXTS)])
            for i in range(len(TEXTS) * 3)]


def aggregate(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One level over several rounds: median throughput, pooled latencies, summed errors."""
    lat = sorted(x for r in rounds for x in r["latencies"])
    errors: Counter[str] = Counter()
    for r in rounds:
        errors.update(r["errors"])
    p50, p99 = percentile(lat, 0.50), percentile(lat, 0.99)
    return {
        "concurrency": rounds[0]["concurrency"],
        "ok": len(lat),
        "errors": dict(errors),
        "rounds": [r["throughput"] for r in rounds],
        "throughput": round(statistics.median(r["throughput"] for r in rounds), 3),
        "p50_ms": round(p50 * 1000, 1) if p50 is not None else None,
        "p99_ms": round(p99 * 1000, 1) if p99 is not None else None,
        "bounded_by_time": any(r["bounded_by_time"] for r in rounds),
    }


# --- servers ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server subprocess on 127.0.0.1 with its log in the results folder."""

    def __init__(self, name: str, argv: list[str], port: int, ready_path: str,
                 log_path: Path) -> None:
        self.name, self.port, self.ready_path = name, port, ready_path
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONPATH": str(REPO / "agent") + os.pathsep
               + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout_s: float) -> float:
        import urllib.error
        import urllib.request

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited {self.proc.returncode}; see {self.log_path}"
                )
            try:
                url = f"http://127.0.0.1:{self.port}{self.ready_path}"
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {timeout_s} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


# --- in-process limit ---------------------------------------------------------------------
def inproc(model_dir: Path, batch_sizes: list[int], time_s: float, max_reps: int) -> dict:
    """Engine.predict on pre-decoded pairs at each batch size (runs in its own process)."""
    from ofa_agent.engine import Engine, Pair
    from PIL import Image

    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in make_images()]
    engine = Engine(model_dir, device="cpu", dtype="float32")
    pairs = [Pair(images[i % len(images)], TEXTS[i % len(TEXTS)]) for i in range(max(batch_sizes))]
    engine.predict(pairs[:2])
    sweep = []
    for bs in batch_sizes:
        batch = pairs[:bs]
        if max_reps > 2:
            engine.predict(batch)  # warm this shape (skipped for the slow large preset)
        times: list[float] = []
        t_end = time.monotonic() + time_s
        while len(times) < max_reps and (not times or time.monotonic() < t_end):
            t0 = time.perf_counter()
            engine.predict(batch)
            times.append(time.perf_counter() - t0)
        per_batch = statistics.median(times)
        row = {"batch_size": bs, "reps": len(times), "batch_ms": round(per_batch * 1000, 1),
               "throughput": round(bs / per_batch, 3)}
        print(f"    batch {bs:<3} {row['batch_ms']:>9} ms/batch  {row['throughput']:8.2f} pairs/s",
              file=sys.stderr, flush=True)
        sweep.append(row)
    best = max(sweep, key=lambda r: r["throughput"])
    # Where the best batch's time goes: the pipeline's preprocessing (which the agent runs on
    # its prepare thread, beside the forward) and the forward on already-prepared pairs.
    batch = pairs[:best["batch_size"]]
    prep_times: list[float] = []
    fwd_times: list[float] = []
    for _ in range(max(1, min(max_reps, 10))):
        t0 = time.perf_counter()
        prepared = [engine.prepare(p) for p in batch]
        t1 = time.perf_counter()
        engine.predict(prepared)
        fwd_times.append(time.perf_counter() - t1)
        prep_times.append(t1 - t0)
    split = {"batch_size": best["batch_size"],
             "prepare_ms": round(statistics.median(prep_times) * 1000, 1),
             "forward_ms": round(statistics.median(fwd_times) * 1000, 1)}
    print(f"    best batch split: preprocess {split['prepare_ms']} ms + forward "
          f"{split['forward_ms']} ms", file=sys.stderr, flush=True)
    return {"sweep": sweep, "best": best, "split": split, "versions": engine.versions,
            "model": engine.model_info, "device": engine.device}


def run_inproc(model_dir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--inproc-only", "--model-dir", str(model_dir),
            "--batch-sizes", ",".join(map(str, cfg["batch_sizes"])),
            "--inproc-time-s", str(cfg["inproc_time_s"]),
            "--inproc-max-reps", str(cfg["inproc_max_reps"])]
    env = {**os.environ, "PYTHONPATH": str(REPO / "agent") + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def combine_sweeps(sweeps: list[dict[str, Any]]) -> dict[str, Any]:
    """Median per batch size over the sweeps (one per round); the best of those medians."""
    rows = []
    for i, first in enumerate(sweeps[0]["sweep"]):
        ms = statistics.median(s["sweep"][i]["batch_ms"] for s in sweeps)
        bs = first["batch_size"]
        rows.append({"batch_size": bs, "reps": sum(s["sweep"][i]["reps"] for s in sweeps),
                     "batch_ms": round(ms, 1), "throughput": round(bs / (ms / 1000), 3),
                     "sweeps_ms": [s["sweep"][i]["batch_ms"] for s in sweeps]})
    out = dict(sweeps[0])
    out["sweep"] = rows
    out["best"] = max(rows, key=lambda r: r["throughput"])
    splits = [s["split"] for s in sweeps if "split" in s
              and s["split"]["batch_size"] == sweeps[0].get("split", {}).get("batch_size")]
    if splits:
        out["split"] = {
            "batch_size": splits[0]["batch_size"],
            "prepare_ms": round(statistics.median(x["prepare_ms"] for x in splits), 1),
            "forward_ms": round(statistics.median(x["forward_ms"] for x in splits), 1),
        }
    return out


# --- model --------------------------------------------------------------------------------
def ensure_model(preset: str, model_dir: Path | None) -> Path:
    if model_dir is not None:
        return model_dir
    path = Path("/tmp/ofa-bench") / preset
    if (path / "ofactl-manifest.json").is_file():
        return path
    print(f"building the random-weight {preset} model in {path} (once; large takes minutes)",
          flush=True)
    code = ("import sys; from pathlib import Path; from ofactl.modelbuild import build_model_dir;"
            f" build_model_dir(Path({str(path)!r}), preset={preset!r}, seed=0)")
    subprocess.run([sys.executable, "-c", code], check=True)
    return path


# --- report -------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)


def report(res: dict[str, Any]) -> str:
    lines = [
        f"preset **{res['preset']}** on {res['machine']['cpus']} CPU cores "
        f"({res['machine']['cpu']}), device {res['inproc'].get('device', 'cpu')}; "
        f"1-min load average {res['machine']['loadavg_start'][0]:.1f} at start, "
        f"{res['machine']['loadavg_end'][0]:.1f} at end; torch threads "
        f"{res['settings'].get('threads') or 'default'}; {res['rounds']} interleaved round(s), "
        f"median throughput; agent max_batch_size {res['settings']['max_batch_size']}, "
        f"max_queue_delay_ms {res['settings']['max_queue_delay_ms']:g}",
        "",
        "| configuration | concurrency | requests ok | throughput (req/s) | p50 ms | p99 ms |"
        " errors |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for key, label in (("agent", "(a) agent over HTTP"), ("baseline", "(b) baseline server")):
        for row in res.get(key, []):
            lines.append(
                f"| {label} | {row['concurrency']} | {row['ok']} | {row['throughput']:.2f} | "
                f"{_fmt(row['p50_ms'])} | {_fmt(row['p99_ms'])} | "
                f"{row['errors'] or '—'} |"
            )
    best = res["inproc"]["best"]
    lines.append(
        f"| (c) in-process batched forward, best batch {best['batch_size']} | — | "
        f"{best['batch_size']} x {best['reps']} | {best['throughput']:.2f} | "
        f"{best['batch_ms']:.1f} (per batch) | — | — |"
    )
    lines += ["", "in-process sweep: " + ", ".join(
        f"bs {r['batch_size']}: {r['throughput']:.1f}/s ({r['batch_ms']:.0f} ms)"
        for r in res["inproc"]["sweep"])]
    split = res["inproc"].get("split")
    if split and split["forward_ms"] > 0:
        ceiling = split["batch_size"] / (split["forward_ms"] / 1000)
        agent_at = next((x["throughput"] for x in res.get("agent", [])
                         if x["concurrency"] == res["ratios"]["concurrency"]), None)
        lines += ["", (
            f"(c) at batch {split['batch_size']} (the first sweep's best, which also sets the "
            f"agent's max_batch_size) = preprocessing {split['prepare_ms']:.1f} ms + "
            f"forward {split['forward_ms']:.1f} ms. The agent preprocesses on its prepare thread "
            f"beside the forward, so (c) counts work the agent overlaps; the forward alone "
            f"would allow {ceiling:.1f} pairs/s"
            + (f" (agent at c={res['ratios']['concurrency']}: {agent_at / ceiling * 100:.0f} % "
               "of that)" if agent_at else "") + ".")]
    r = res["ratios"]
    lines += [
        "",
        f"agent / baseline at c={r['concurrency']}: **{_ratio(r['agent_vs_baseline'])}** "
        "(target >= 2x)",
        f"agent / in-process limit at c={r['concurrency']}: "
        f"**{_pct(r['agent_vs_inproc'])}** (target >= 85 %)",
    ]
    return "\n".join(lines)


def _ratio(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.0f} %"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description="agent vs baseline vs in-process benchmark")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="use this model dir instead of building /tmp/ofa-bench/<preset>")
    ap.add_argument("--levels", default=None,
                    help="concurrency levels (default 1,8,32)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply request counts")
    ap.add_argument("--max-batch-size", type=int, default=None)
    ap.add_argument("--max-queue-delay-ms", type=float, default=None)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads in all three configurations (OMP_NUM_THREADS; "
                    "0: torch's default, one per core)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds of (a) and (b) per level (tiny 3, large 1); the "
                    "median throughput is reported, so both see the same machine noise")
    ap.add_argument("--skip", default="", help="comma list of agent,baseline,inproc to skip")
    ap.add_argument("--inproc-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch-sizes", default="", help=argparse.SUPPRESS)
    ap.add_argument("--inproc-time-s", type=float, default=3.0, help=argparse.SUPPRESS)
    ap.add_argument("--inproc-max-reps", type=int, default=10, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.inproc_only:
        sizes = [int(x) for x in args.batch_sizes.split(",")]
        print(json.dumps(inproc(args.model_dir, sizes, args.inproc_time_s, args.inproc_max_reps)))
        return 0

    cfg = dict(PRESETS[args.preset])
    cfg["requests"] = {c: max(1, int(n * args.scale)) for c, n in cfg["requests"].items()}
    if args.max_batch_size:
        cfg["max_batch_size"] = args.max_batch_size
    if args.max_queue_delay_ms is not None:
        cfg["max_queue_delay_ms"] = args.max_queue_delay_ms
    levels = ([int(x) for x in args.levels.split(",")] if args.levels
              else cfg.get("levels", [1, 8, 32]))
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every subprocess
    cfg["threads"] = args.threads or None
    skip = set(filter(None, args.skip.split(",")))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_model(args.preset, args.model_dir)
    images = make_images()
    res: dict[str, Any] = {
        "preset": args.preset, "when": stamp, "model_dir": str(model_dir),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_name(), "python": platform.python_version(),
                    "loadavg_start": os.getloadavg()},
        "settings": {k: v for k, v in cfg.items() if k != "requests"},
        "requests": cfg["requests"], "command": " ".join(sys.argv),
    }

    rounds = args.rounds or cfg.get("rounds", 1)
    res["rounds"] = rounds
    empty = {"sweep": [], "best": {"batch_size": 0, "reps": 0, "batch_ms": 0.0, "throughput": 0.0}}
    sweeps: list[dict[str, Any]] = []
    if "inproc" not in skip:
        # The first sweep also sets the agent's max_batch_size (unless given): the batch size
        # that is fastest on this machine now, capped by the highest concurrency.
        print(f"  round 1/{rounds} (c) in-process batched forward", flush=True)
        sweeps.append(run_inproc(model_dir, cfg))
        if not args.max_batch_size:
            cfg["max_batch_size"] = min(sweeps[0]["best"]["batch_size"], max(levels))
            res["settings"]["max_batch_size"] = cfg["max_batch_size"]
    print(f"(a) agent: max_batch_size {cfg['max_batch_size']}, max_queue_delay_ms "
          f"{cfg['max_queue_delay_ms']}", flush=True)

    servers: dict[str, tuple[Server, str]] = {}
    try:
        if "agent" not in skip:
            port = free_port()
            servers["agent"] = (Server("agent", [
                sys.executable, "-m", "ofa_agent", "--model-dir", str(model_dir), "--host",
                "127.0.0.1", "--port", str(port), "--device", "cpu", "--log-level", "warning",
                "--max-batch-size", str(cfg["max_batch_size"]),
                "--max-queue-delay-ms", str(cfg["max_queue_delay_ms"]),
                "--max-queue", "1024", "--request-timeout-s", str(cfg["request_timeout_s"]),
                "--warmup", str(cfg.get("agent_warmup", 2)), "--drain-grace-s", "0",
                "--torch-threads", str(args.threads),
            ], port, "/v2/health/ready", RESULTS / f"{args.preset}-{stamp}-agent.log"),
                "/v1/predict")
        if "baseline" not in skip:
            port = free_port()
            servers["baseline"] = (Server("baseline", [
                sys.executable, str(REPO / "bench" / "baseline_server.py"), "--model-dir",
                str(model_dir), "--port", str(port),
            ], port, "/health", RESULTS / f"{args.preset}-{stamp}-baseline.log"), "/predict")
        reqs = {}
        for name, (srv, path) in servers.items():
            res[f"{name}_ready_s"] = round(srv.wait_ready(cfg["ready_timeout_s"]), 1)
            reqs[name] = build_requests(srv.port, path, images)
            asyncio.run(_load(srv.port, reqs[name], 1, cfg["warmup_requests"],
                              cfg["level_time_s"], cfg["request_timeout_s"]))
        per: dict[str, dict[int, list[dict[str, Any]]]] = {n: {c: [] for c in levels}
                                                           for n in servers}
        for r in range(rounds):
            if "inproc" not in skip and r > 0:  # a sweep per round: (c) sees the same noise
                print(f"  round {r + 1}/{rounds} (c) in-process batched forward", flush=True)
                sweeps.append(run_inproc(model_dir, cfg))
            for c in levels:
                names = list(servers) if r % 2 == 0 else list(reversed(servers))
                for name in names:
                    srv = servers[name][0]
                    n = cfg["requests"].get(c, 2 * c)
                    one = asyncio.run(_load(srv.port, reqs[name], c, n, cfg["level_time_s"],
                                            cfg["request_timeout_s"]))
                    print(f"  round {r + 1}/{rounds} {name:<8} c={c:<3} {one['ok']:>5} ok "
                          f"{one['throughput']:8.2f} req/s  p50 {one['p50_ms']} ms  "
                          f"p99 {one['p99_ms']} ms  errors {one['errors']}", flush=True)
                    per[name][c].append(one)
        for name in servers:
            res[name] = [aggregate(per[name][c]) for c in levels]
    finally:
        for srv, _path in servers.values():
            srv.stop()

    res["inproc"] = combine_sweeps(sweeps) if sweeps else empty

    res["machine"]["loadavg_end"] = os.getloadavg()
    top = max(levels)

    def at(key: str) -> float | None:
        rows = [r for r in res.get(key, []) if r["concurrency"] == top]
        return rows[0]["throughput"] if rows and rows[0]["ok"] else None

    a, b, limit = at("agent"), at("baseline"), res["inproc"]["best"]["throughput"]
    res["ratios"] = {
        "concurrency": top,
        "agent_vs_baseline": round(a / b, 3) if a and b else None,
        "agent_vs_inproc": round(a / limit, 3) if a and limit else None,
    }
    text = report(res)
    res["markdown"] = text
    out = RESULTS / f"{args.preset}-{stamp}.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print()
    print(text)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
