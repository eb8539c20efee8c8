"""`ofactl model tiny` (random-weight model dirs) and `ofactl predict` (in-process or a node)."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ofactl.cli.apps import model_app
from ofactl.cli.common import JsonOpt, console, err_console, handle_errors, print_json
from ofactl.errors import OfactlError, OperationError, UsageError

RUNTIME_HINT = "install the agent runtime with `bash scripts/install-runtime.sh`"
LABELS = ("entailment", "contradiction", "neutral")
LABEL_STYLE = {"entailment": "green", "contradiction": "red", "neutral": "yellow"}
DEFAULT_TOKEN_ENV = "OFA_AGENT_TOKEN"
# The one HTTP seam: tests put an httpx.MockTransport here (None = the real network).
HTTP_TRANSPORT: Any = None


# -- ofactl model tiny ---------------------------------------------------------------------


@model_app.command("tiny")
@handle_errors
def model_tiny(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to create.",
                                      show_default=False)],
    preset: Annotated[str, typer.Option(
        help="tiny (~3.9 M params, seconds; tests and lab) or large (OFA-large shapes, "
             "~470 M params, ~1.9 GB; benchmarks).")] = "tiny",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same digest).")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Build a random-weight OFA visual-entailment model directory (ModelScope format)."""
    from ofactl.modelbuild import build_model_dir

    if json_out:
        result = build_model_dir(out, preset=preset, seed=seed, force=force)
    else:
        with err_console.status(f"building the {preset} model in {out} ..."):
            result = build_model_dir(out, preset=preset, seed=seed, force=force)
    if json_out:
        print_json(result.to_json())
        return
    console.print(
        f"[green]built[/] {result.model_id}@{result.revision} in {result.path}: "
        f"{result.parameters / 1e6:.1f} M parameters, {result.size_bytes / 1e6:.1f} MB, "
        f"{result.seconds:.1f} s", highlight=False,
    )
    console.print(f"digest {result.digest}  [yellow](random weights: answers are meaningless)[/]",
                  highlight=False)


# -- ofactl predict --------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One pair to predict, as given on the command line or on line `line` of a JSONL file."""

    image: Path
    text: str
    premise: str | None
    line: int | None = None

    @property
    def where(self) -> str:
        return f"line {self.line}: " if self.line is not None else ""


def _check_text(where: str, name: str, value: Any, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{where}{name}: must be a non-empty string, got {value!r}")
    return value


def _check_image_path(where: str, path: Path) -> Path:
    if not path.exists():
        raise UsageError(f"{where}{path}: image file not found")
    if not path.is_file():
        raise UsageError(f"{where}{path}: not a file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{where}{path}: image file is not readable")
    return path


def read_jsonl(path: Path) -> list[Item]:
    """Parse a JSONL file of {"image", "text", "premise"?} lines; images relative to the file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read ({e})") from None
    items = []
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path}:{n}: "
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UsageError(f"{where}not valid JSON ({e.msg} at column {e.colno})",
                             hint='each line must be {"image": PATH, "text": ..., '
                                  '"premise": ... (optional)}') from None
        if not isinstance(obj, dict):
            raise UsageError(f"{where}expected a JSON object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - {"image", "text", "premise"})
        if unknown:
            raise UsageError(f"{where}unknown key(s) {', '.join(unknown)} "
                             "(expected image, text, premise)")
        image = obj.get("image")
        if not isinstance(image, str) or not image:
            raise UsageError(f"{where}image: must be a path string, got {image!r}")
        image_path = Path(image).expanduser()
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        text = _check_text(where, "text", obj.get("text"), required=True)
        premise = _check_text(where, "premise", obj.get("premise"), required=False)
        assert text is not None
        items.append(Item(_check_image_path(where, image_path), text, premise, line=n))
    if not items:
        raise UsageError(f"{path}: no pairs in the file")
    return items


def _quiet_runtime_logs() -> None:
    """Keep torch/fairseq/transformers/modelscope import chatter off the terminal."""
    import logging
    import warnings

    os.environ.setdefault("MODELSCOPE_LOG_LEVEL", str(logging.ERROR))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    root = logging.getLogger()
    if not root.handlers:  # fairseq calls logging.basicConfig(level=DEBUG) at import otherwise
        handler = logging.StreamHandler()
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)


class LocalPredictor:
    """The agent's engine in this process."""

    def __init__(self, model_dir: Path, device: str, dtype: str) -> None:
        if not model_dir.is_dir():
            raise UsageError(f"--model: {model_dir}: not a directory",
                             hint="build one with `ofactl model tiny --out DIR`")
        if not (model_dir / "configuration.json").is_file():
            raise UsageError(f"--model: {model_dir}: no configuration.json (not a ModelScope "
                             "model directory)")
        _quiet_runtime_logs()
        try:
            from ofa_agent.engine import Engine, Pair
            from ofa_agent.images import ImageError, load_image_file
        except ImportError as e:
            raise OperationError(f"predict: the agent runtime is not installed ({e})",
                                 hint=RUNTIME_HINT) from None
        self._pair = Pair
        self._image_error = ImageError
        self._load_image = load_image_file
        try:
            self.engine = Engine(model_dir, device=device, dtype=dtype)
        except ImportError as e:
            raise OperationError(f"predict: the agent runtime is not installed ({e})",
                                 hint=RUNTIME_HINT) from None
        except ValueError as e:
            msg = str(e)
            for opt in ("dtype", "device"):  # the engine names its own setting first
                if msg.startswith(f"{opt}: "):
                    raise UsageError(f"--{msg}") from None
            raise UsageError(f"--model: {msg}") from None
        if device.startswith("cuda") and self.engine.device == "cpu":
            self.engine.close()
            raise UsageError(f"--device {device}: CUDA is not available on this machine",
                             hint="use --device auto or --device cpu")
        self.node = "local"

    def describe(self) -> str:
        info = self.engine.model_info
        rnd = " [yellow](random weights)[/]" if info.get("random_weights") else ""
        return (f"{info['id']}@{info['revision']}{rnd} on {self.engine.device} "
                f"({self.engine.dtype}), loaded in {self.engine.load_seconds:.1f} s")

    def predict(self, items: list[Item]) -> list[dict[str, Any]]:
        pairs = []
        for it in items:
            try:
                img = self._load_image(str(it.image))
            except self._image_error as e:
                raise UsageError(f"{it.where}{it.image}: {e}") from None
            except OSError as e:
                raise UsageError(f"{it.where}{it.image}: cannot read ({e.strerror})") from None
            pairs.append(self._pair(img, it.text, it.premise))
        started = time.perf_counter()
        try:
            preds = self.engine.predict(pairs)
        except ValueError as e:
            raise UsageError(f"predict: {e}") from None
        ms = (time.perf_counter() - started) * 1000.0
        return [
            {"label": p.label, "answer": p.answer, "probabilities": p.probabilities,
             "node": self.node, "model": self.engine.model_info,
             "timings": {"inference_ms": round(ms, 3), "batch_size": len(pairs)}}
            for p in preds
        ]


class EndpointPredictor:
    """A node or load balancer: `POST URL/v1/predict` (multipart) for one pair,
    `POST URL/v1/predict/batch` (JSON, base64 images) for a chunk of a --file."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        import httpx

        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--endpoint: must start with http:// or https://, got {url!r}")
        self.base = url.rstrip("/")
        self.url = self.base + "/v1/predict"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._httpx = httpx
        self._client = httpx.Client(timeout=timeout, headers=headers, transport=HTTP_TRANSPORT)

    def describe(self) -> str:
        return self.url

    @staticmethod
    def _read(it: Item) -> bytes:
        try:
            return it.image.read_bytes()
        except OSError as e:
            raise UsageError(f"{it.where}{it.image}: cannot read ({e.strerror})") from None

    def _call(self, url: str, where: str, **kwargs: Any) -> Any:
        httpx = self._httpx
        try:
            resp = self._client.post(url, **kwargs)
        except httpx.TimeoutException:
            raise OperationError(f"{url}: no answer within the timeout",
                                 hint="raise --timeout or check the node") from None
        except httpx.HTTPError as e:
            raise OperationError(f"{url}: {e}",
                                 hint="check the URL and that the agent is up") from None
        try:
            answer = resp.json()
        except ValueError:
            answer = None
        if resp.status_code >= 400:
            msg = resp.text.strip()[:200]
            code = ""
            if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
                msg = str(answer["error"].get("message", msg))
                code = f" {answer['error'].get('code', '')}".rstrip()
            line = f"{where}{url}: {resp.status_code}{code}: {msg}"
            if resp.status_code in (401, 403):
                raise OperationError(line, hint="pass the agent token with --token-env VAR")
            if code == " too_many_items":
                raise UsageError(line, hint="lower --batch-size")
            if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
                raise UsageError(line)  # the agent rejected this input
            raise OperationError(line)
        return answer, resp.text

    def _post(self, it: Item) -> dict[str, Any]:
        data = {"text": it.text}
        if it.premise is not None:
            data["premise"] = it.premise
        answer, raw = self._call(self.url, it.where, data=data,
                                 files={"image": (it.image.name, self._read(it))})
        if not isinstance(answer, dict) or "label" not in answer:
            raise OperationError(f"{self.url}: unexpected answer {raw[:200]!r}")
        return answer

    def _post_batch(self, items: list[Item]) -> list[dict[str, Any]]:
        url = self.base + "/v1/predict/batch"
        payload = [{"image": base64.b64encode(self._read(it)).decode("ascii"), "text": it.text,
                    **({"premise": it.premise} if it.premise is not None else {})}
                   for it in items]
        lines = [it.line for it in items]
        where = f"lines {lines[0]}-{lines[-1]}: " if lines[0] is not None else ""
        try:
            answer, raw = self._call(url, where, json={"items": payload})
        except OfactlError as err:
            # the agent names the bad item as items[i]: say which line of the file that is
            def to_line(m: re.Match[str]) -> str:
                i = int(m.group(1))
                if i >= len(lines) or lines[i] is None:
                    return m.group(0)
                return f"line {lines[i]}" + (": " if m.group(2) else "")

            err.message = re.sub(r"items\[(\d+)\](\.)?", to_line, err.message)
            raise
        results = answer.get("results") if isinstance(answer, dict) else None
        if (not isinstance(results, list) or len(results) != len(items)
                or not all(isinstance(r, dict) and "label" in r for r in results)):
            raise OperationError(f"{url}: unexpected answer {raw[:200]!r}")
        return results

    def predict(self, items: list[Item]) -> list[dict[str, Any]]:
        if len(items) == 1:
            return [self._post(items[0])]
        return self._post_batch(items)

    def close(self) -> None:
        self._client.close()


def _chunks(items: list[Item], size: int) -> Iterator[list[Item]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _prob_cell(p: float, style: str | None = None) -> str:
    text = f"{p:.3f}"
    return f"[{style}]{text}[/]" if style else text


def _print_single(item: Item, res: dict[str, Any], source: str) -> None:
    label = res["label"]
    style = LABEL_STYLE.get(label, "bold")
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("label")
    table.add_column("probability", justify="right")
    table.add_column("")
    probs = res.get("probabilities", {})
    for lab in LABELS:
        p = float(probs.get(lab, 0.0))
        mark = f"[{LABEL_STYLE[lab]}]{'█' * round(p * 30)}[/]"
        table.add_row(f"[bold {LABEL_STYLE[lab]}]{lab}[/]" if lab == label else lab,
                      f"{p:.4f}", mark)
    premise = f"  premise: {item.premise!r}\n" if item.premise else ""
    console.print(f"[bold]{item.image}[/]  hypothesis: {item.text!r}\n{premise}"
                  f"→ [bold {style}]{label}[/] (answer {res.get('answer')!r})", highlight=False)
    console.print(table)
    timings = res.get("timings") or {}
    timing = ", ".join(f"{k} {v}" for k, v in timings.items())
    console.print(f"[dim]{source}; node {res.get('node')}; {timing}[/]", highlight=False)


def _result_json(item: Item, res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if item.line is not None:
        out["line"] = item.line
    out.update({"image": str(item.image), "text": item.text, "premise": item.premise})
    for key in ("label", "answer", "probabilities", "node", "model", "timings"):
        out[key] = res.get(key)
    return out


@handle_errors
def predict(
    image: Annotated[Path | None, typer.Argument(help="Image file.", show_default=False)] = None,
    text: Annotated[str | None, typer.Argument(help="The hypothesis.", show_default=False)] = None,
    premise: Annotated[str | None, typer.Option(help="Optional text premise.")] = None,
    file: Annotated[Path | None, typer.Option(
        "--file", "-f", help='JSONL file: one {"image", "text", "premise"?} per line '
                             "(image paths relative to the file).", show_default=False)] = None,
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", envvar="OFACTL_MODEL_DIR",
        help="Local model directory: run the agent's engine in this process.",
        show_default=False)] = None,
    endpoint: Annotated[str | None, typer.Option(
        help="Agent or load-balancer URL: POST URL/v1/predict.", show_default=False)] = None,
    token_env: Annotated[str | None, typer.Option(
        help="Environment variable holding the bearer token for --endpoint "
             f"(default: ${DEFAULT_TOKEN_ENV} when set).", show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (--model).")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32 | float16 | bfloat16 (CUDA only).")] =
        "float32",
    batch_size: Annotated[int, typer.Option(help="Pairs per forward with --file.")] = 8,
    timeout: Annotated[float, typer.Option(help="Seconds per HTTP request (--endpoint).")] =
        30.0,
    json_out: JsonOpt = False,
) -> None:
    """Label an image + hypothesis as entailment / contradiction / neutral."""
    _predict(image, text, premise, file, model, endpoint, token_env, device, dtype, batch_size,
             timeout, json_out)


def _predict(image: Path | None, text: str | None, premise: str | None, file: Path | None,
             model: Path | None, endpoint: str | None, token_env: str | None, device: str,
             dtype: str,
             batch_size: int, timeout: float, json_out: bool) -> None:
    if file is not None and (image is not None or text is not None or premise is not None):
        raise UsageError("give either IMAGE TEXT [--premise P] or --file FILE.jsonl, not both")
    if file is None and (image is None or text is None):
        raise UsageError("give IMAGE and TEXT (or --file FILE.jsonl)",
                         hint="ofactl predict photo.jpg 'a dog runs on grass'")
    if model is not None and endpoint is not None:
        raise UsageError("give either --model DIR or --endpoint URL, not both")
    if model is None and endpoint is None:
        raise UsageError("give --model DIR (run the model here) or --endpoint URL (ask a node)",
                         hint="build a test model with `ofactl model tiny --out DIR`")
    if batch_size < 1:
        raise UsageError(f"--batch-size: must be an integer ≥ 1, got {batch_size}")
    if timeout <= 0:
        raise UsageError(f"--timeout: must be > 0, got {timeout:g}")
    if file is not None:
        items = read_jsonl(file)
    else:
        assert image is not None and text is not None
        items = [Item(_check_image_path("", image), _check_text("", "TEXT", text, True) or "",
                      _check_text("", "--premise", premise, False))]

    predictor: LocalPredictor | EndpointPredictor
    if endpoint is not None:
        if token_env is None:
            token = os.environ.get(DEFAULT_TOKEN_ENV) or None
        else:
            token = os.environ.get(token_env) or None
            if token is None:
                raise UsageError(f"--token-env: ${token_env} is not set or empty")
        predictor = EndpointPredictor(endpoint, token, timeout)
    else:
        assert model is not None
        with err_console.status("loading the model ..."):
            predictor = LocalPredictor(model, device, dtype)

    try:
        if file is None:
            res = predictor.predict(items)[0]
            if json_out:
                print_json(_result_json(items[0], res))
            else:
                _print_single(items[0], res, predictor.describe())
            return
        _predict_file(predictor, items, batch_size, json_out)
    finally:
        if isinstance(predictor, EndpointPredictor):
            predictor.close()


def _predict_file(predictor: LocalPredictor | EndpointPredictor, items: list[Item],
                  batch_size: int, json_out: bool) -> None:
    results: list[tuple[Item, dict[str, Any]]] = []
    started = time.perf_counter()
    progress = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err_console, transient=True)
    with progress:
        task = progress.add_task("predict", total=len(items))
        for chunk in _chunks(items, batch_size):
            for it, res in zip(chunk, predictor.predict(chunk), strict=True):
                results.append((it, res))
                if json_out:  # stream JSON lines as they come
                    print(json.dumps(_result_json(it, res)), flush=True)
            progress.advance(task, len(chunk))
    elapsed = time.perf_counter() - started
    if json_out:
        return
    table = Table(title=f"{len(results)} pairs via {predictor.describe()}", title_justify="left")
    for col, just in (("line", "right"), ("image", "left"), ("text", "left"),
                      ("label", "left"), ("p(entail)", "right"), ("p(contra)", "right"),
                      ("p(neutral)", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for it, res in results:
        probs = res.get("probabilities", {})
        label = res["label"]
        text = it.text if it.premise is None else f"{it.text} [dim](premise: {it.premise})[/]"
        table.add_row(str(it.line), it.image.name, text,
                      f"[{LABEL_STYLE.get(label, 'bold')}]{label}[/]",
                      *(_prob_cell(float(probs.get(lab, 0.0))) for lab in LABELS))
    console.print(table)
    console.print(f"[dim]{len(results)} pairs in {elapsed:.2f} s "
                  f"({len(results) / max(elapsed, 1e-9):.1f} pairs/s)[/]", highlight=False)


def register(app: typer.Typer) -> None:
    """Attach `predict` to the root app (`model tiny` lives on the shared model_app)."""
    app.command("predict")(predict)
