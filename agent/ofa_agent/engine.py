"""The inference engine: ModelScope's real OFA visual-entailment pipeline, one forward per batch.

Why not `pipe(list, batch_size=N)`: for this task the stock batched call crashes on texts of
different token length, silently drops the decoder prompt, and fails in traverse mode. And the
stock single call in generation mode returns a constant score of 1.0. So the engine keeps the
pipeline's own preprocessor, collate function, encoder and decoder, and runs OFA's *traverse*
scoring itself on the whole batch at once, keeping every candidate's score.

What a probability means: for each candidate answer a in (yes, no, maybe) the decoder, fed the
prompt (`prompt_type: prev_output`), scores the answer's tokens followed by EOS; each step's
distribution is restricted to the tokens the answer trie allows there (OFA's constraint mask)
and log-normalised; s(a) is the sum of those log-probabilities, i.e. log P(a | image, text)
under the answer-constrained decoder. probabilities = softmax over the three s(a), mapped
yes->entailment, no->contradiction, maybe->neutral. The highest of them equals the `scores`
value the stock traverse pipeline returns for its label.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the runtime (torch, modelscope, Pillow) is imported at Engine() time
    from PIL.Image import Image

LABELS = ("entailment", "contradiction", "neutral")
ANSWER_TO_LABEL = {"yes": "entailment", "no": "contradiction", "maybe": "neutral"}
LABEL_TO_ANSWER = {v: k for k, v in ANSWER_TO_LABEL.items()}
DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")
MANIFEST_NAME = "ofactl-manifest.json"
ANSWER2LABEL_FILE = "answer2label.json"
# OFA's SNLI-VE answers, in the order of OFA's own ans2label_dict.
DEFAULT_ANSWER2LABEL = {"no": 0, "yes": 1, "maybe": 2}

# Settings the engine needs whatever the snapshot's configuration.json says (the hub's large
# model ships `gen_type: generation`, which has no real scores).
CONFIG_OVERRIDES = {"gen_type": "traverse", "prompt_type": "prev_output"}


@dataclass(frozen=True)
class Pair:
    """One request: an image and a hypothesis, optionally with a text premise."""

    image: Image
    text: str
    premise: str | None = None


@dataclass(frozen=True)
class Prepared:
    """A pair after the pipeline's preprocessor (resized, normalised image tensor, tokens).

    `Engine.prepare` makes it outside the forward lock, so a server can preprocess the next
    requests on one core while the batch before them runs its forward on another.
    """

    sample: dict[str, Any]


@dataclass(frozen=True)
class Prediction:
    """One answer: the label, the model's raw answer (yes/no/maybe) and the probabilities."""

    label: str
    answer: str
    probabilities: dict[str, float]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_model_info(model_dir: Path) -> dict[str, Any]:
    """{id, revision, digest, random_weights} from the ofactl manifest, else configuration.json."""
    manifest = _read_json(model_dir / MANIFEST_NAME)
    if manifest is not None and "model_id" in manifest:
        return {
            "id": str(manifest["model_id"]),
            "revision": str(manifest.get("revision", "unknown")),
            "digest": manifest.get("digest"),
            "random_weights": bool(manifest.get("random_weights", False)),
        }
    cfg = _read_json(model_dir / "configuration.json") or {}
    model_cfg: dict[str, Any] = cfg["model"] if isinstance(cfg.get("model"), dict) else {}
    ofactl_cfg: dict[str, Any] = cfg["ofactl"] if isinstance(cfg.get("ofactl"), dict) else {}
    return {
        "id": str(cfg.get("model_id") or model_cfg.get("model_id") or model_dir.name),
        "revision": str(cfg.get("revision") or "unknown"),
        "digest": None,
        "random_weights": bool(ofactl_cfg.get("random_weights", False)),
    }


def _resolve_device(torch: Any, device: str) -> str:
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ValueError(f"device: must be one of auto, cpu, cuda, cuda:N, got {device!r}")
    if device == "cpu" or not torch.cuda.is_available():
        # Like the stock pipeline, CUDA requested without a GPU runs on CPU; `device` says so
        # and the service refuses readiness for that case.
        return "cpu"
    if device in ("auto", "cuda"):
        return "cuda:0"
    return device


def _make_overlay(model_dir: Path) -> Path:
    """A private view of model_dir (symlinks) whose configuration.json has what the engine needs.

    The snapshot itself stays untouched (its manifest must keep verifying, it may be read-only).
    """
    cfg = _read_json(model_dir / "configuration.json")
    if cfg is None:
        raise ValueError(f"{model_dir}: no readable configuration.json (not a ModelScope model)")
    model_cfg = cfg.setdefault("model", {})
    model_cfg.update(CONFIG_OVERRIDES)
    overlay = Path(tempfile.mkdtemp(prefix="ofa-agent-model-"))
    for entry in sorted(model_dir.iterdir()):
        if entry.name in ("configuration.json", MANIFEST_NAME):
            continue
        (overlay / entry.name).symlink_to(entry.resolve())
    answers_file = model_cfg.get("answer2label")
    answers = _read_json(model_dir / answers_file) if answers_file else None
    if answers is None or set(answers) != set(ANSWER_TO_LABEL):
        answers_file = ".ofa-agent-answer2label.json"
        (overlay / answers_file).write_text(json.dumps(DEFAULT_ANSWER2LABEL))
    model_cfg["answer2label"] = answers_file
    # One decoder pass scores every candidate, and generation-mode asserts stay satisfied.
    model_cfg["valid_batch_size"] = len(ANSWER_TO_LABEL)
    beam = model_cfg.setdefault("beam_search", {})
    beam["beam_size"] = min(int(beam.get("beam_size", 3)), len(ANSWER_TO_LABEL))
    (overlay / "configuration.json").write_text(json.dumps(cfg, indent=2))
    return overlay


class Engine:
    """OFA visual entailment on one device; `predict` runs one forward for a whole batch."""

    def __init__(self, model_dir: str | Path, device: str = "auto",
                 dtype: str = "float32") -> None:
        self.model_dir = Path(model_dir).resolve()
        if dtype not in DTYPES:
            raise ValueError(f"dtype: must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if not self.model_dir.is_dir():
            raise ValueError(f"{model_dir}: model directory does not exist")
        # modelscope writes caches under ~ unless told otherwise; never into the snapshot.
        cache = str(Path(tempfile.gettempdir()) / f"ofa-agent-modelscope-{os.getuid()}")
        os.environ.setdefault("MODELSCOPE_CACHE", cache)
        os.environ.setdefault("MODELSCOPE_HOME", cache)
        started = time.perf_counter()
        import torch

        self._torch = torch
        self.device = _resolve_device(torch, device)
        if self.device == "cpu" and dtype != "float32":
            raise ValueError(
                f"dtype: {dtype} needs CUDA (autocast); on CPU only float32 is supported"
            )
        self.dtype = dtype
        self.model_info = read_model_info(self.model_dir)
        self._overlay = _make_overlay(self.model_dir)
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._overlay), True)
        try:
            self._load()
        except BaseException:
            self._finalizer()
            raise
        self.load_seconds = time.perf_counter() - started
        self._lock = threading.Lock()

    def _load(self) -> None:
        torch = self._torch
        import modelscope  # type: ignore[import-untyped]
        import transformers
        from modelscope.models.multi_modal.ofa.utils.utils import expand_mask  # type: ignore[import-untyped]
        from modelscope.pipelines import pipeline  # type: ignore[import-untyped]
        from modelscope.preprocessors.ofa.utils.collate import collate_fn, collate_tokens  # type: ignore[import-untyped]
        from modelscope.utils.constant import Tasks  # type: ignore[import-untyped]

        self._pipe = pipeline(Tasks.visual_entailment, model=str(self._overlay),
                              device="cpu" if self.device == "cpu" else self.device)
        self._collate_fn = collate_fn
        self._collate_tokens = collate_tokens
        self._expand_mask = expand_mask
        self.versions = {
            "torch": torch.__version__,
            "modelscope": modelscope.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        }
        task_model = self._pipe.model  # OfaForAllTasks
        self._task_model = task_model
        self._ofa = task_model.model  # OFAModel
        self._ofa.to(self.device)
        self._ofa.eval()
        task_model.eval()
        self._pre = self._pipe.preprocessor.preprocess  # OfaVisualEntailmentPreprocessor
        tok = task_model.tokenizer
        self._pad = tok.pad_token_id
        self._eos = tok.eos_token_id
        self._eos_item = torch.LongTensor([self._eos])
        # Candidate answers with their trie masks, in the model's answer order.
        self._answers = [task_model.index2ans[i] for i in range(len(task_model.index2ans))]
        self._answer_tokens = [a for chunk in task_model.val_ans_l for a in chunk]
        self._answer_masks = [m for chunk in task_model.val_masks_l for m in chunk]
        if sorted(self._answers) != sorted(ANSWER_TO_LABEL):
            raise ValueError(f"{self.model_dir}: answers {self._answers} are not yes/no/maybe")
        self._single_token_answers = all(len(a) == 1 for a in self._answer_tokens)
        self._answer_ids = torch.stack([a[0] for a in self._answer_tokens]).to(self.device)
        self._autocast_dtype = None if self.dtype == "float32" else getattr(torch, self.dtype)

    # -- inference ---------------------------------------------------------------------------

    def prepare(self, pair: Pair) -> Prepared:
        """Run the pipeline's preprocessor on one pair (thread-safe; no model call).

        Raises ValueError for an empty text or premise.
        """
        return Prepared(self._sample(pair))

    def _sample(self, pair: Pair | Prepared) -> dict[str, Any]:
        if isinstance(pair, Prepared):
            return dict(pair.sample)  # a copy: _encode pops from it
        if not isinstance(pair.text, str) or not pair.text.strip():
            raise ValueError("text: must be a non-empty string")
        data: dict[str, Any] = {"image": pair.image, "text": pair.text}
        if pair.premise is not None:
            if not isinstance(pair.premise, str) or not pair.premise.strip():
                raise ValueError("premise: must be a non-empty string when given")
            data["text2"] = pair.premise
        return dict(self._pre(data))

    def _encode(self, pairs: Sequence[Pair | Prepared]) -> tuple[Any, list[Any]]:
        """Preprocess and run the encoder once for the batch; return (encoder_out, prompts)."""
        samples = [self._sample(p) for p in pairs]
        # collate_fn turns ragged prompts into a numpy object array (numpy 2 refuses): keep them
        # aside as a plain list.
        prompts = [s.pop("decoder_prompt") for s in samples]
        batch = self._collate_fn(samples, pad_idx=self._pad, eos_idx=self._eos)
        net_input = {k: v.to(self.device) for k, v in batch["net_input"].items()}
        return self._ofa.encoder(**net_input), prompts

    def _decode(self, prev: Any, enc: Any, repeat: int, project: bool) -> Any:
        hidden = enc["last_hidden_state"]
        padding = enc["padding_mask"]
        pos = enc["position_embedding"]
        if repeat > 1:
            hidden = hidden.repeat_interleave(repeat, dim=0)
            padding = padding.repeat_interleave(repeat, dim=0)
            pos = pos.repeat_interleave(repeat, dim=0)
        decoder = self._ofa.decoder
        kwargs = {
            "encoder_hidden_states": hidden,
            "encoder_attention_mask": self._expand_mask(padding, hidden.dtype, prev.shape[-1]),
            "src_pos_embed": pos,
        }
        if project:
            return decoder(prev, **kwargs)
        # Only one position per row is needed: skip the vocabulary projection of every prompt
        # position (the caller projects the rows it keeps). Safe: predict() holds the lock.
        projection = decoder.output_projection
        decoder.output_projection = None
        try:
            return decoder(prev, **kwargs)
        finally:
            decoder.output_projection = projection

    def _scores(self, pairs: Sequence[Pair | Prepared]) -> Any:
        """[len(pairs), n_answers] tensor of s(answer) = log P(answer | image, text)."""
        if self._single_token_answers:
            return self._scores_single_token(pairs)
        return self._scores_traverse(pairs)

    def _scores_single_token(self, pairs: Sequence[Pair | Prepared]) -> Any:
        """Traverse scoring when every answer is one token (true for OFA's BPE and the tiny vocab).

        The trie then allows exactly the answers' tokens at the first step and only EOS after
        them, so s(a) = log_softmax over the answers' logits at the last prompt position (the
        EOS step adds log 1 = 0): the same number as `_scores_traverse`, with one decoder row
        per pair instead of one per (pair, answer) and no projection of prompt positions.
        """
        torch = self._torch
        enc, prompts = self._encode(pairs)
        prev = self._collate_tokens(prompts, pad_idx=self._pad).to(self.device)
        out = self._decode(prev, enc, repeat=1, project=False)
        last = torch.tensor([len(p) - 1 for p in prompts], device=self.device)
        rows = out[0][torch.arange(len(prompts), device=self.device), last]
        logits = self._ofa.decoder.output_projection(rows)
        picked = logits.index_select(-1, self._answer_ids).float()
        return torch.log_softmax(picked, dim=-1).cpu()

    def _scores_traverse(self, pairs: Sequence[Pair | Prepared]) -> Any:
        """OFA's `_traverse_inference` on the whole batch at once, keeping every answer's score."""
        torch = self._torch
        enc, prompts = self._encode(pairs)
        dev = self.device
        k = len(self._answer_tokens)
        tgt_items, prev_items, mask_items = [], [], []
        for prompt in prompts:
            for ans, amask in zip(self._answer_tokens, self._answer_masks, strict=True):
                tgt_items.append(torch.cat([prompt[1:], ans, self._eos_item]))
                prev_items.append(torch.cat([prompt, ans]))
                mask_items.append(torch.cat(
                    [torch.zeros(len(prompt) - 1, amask.size(1), dtype=torch.bool), amask]))
        tgt = self._collate_tokens(tgt_items, pad_idx=self._pad).to(dev)
        prev = self._collate_tokens(prev_items, pad_idx=self._pad).to(dev)
        masks = self._collate_tokens(mask_items, pad_idx=self._pad).to(dev)
        dec = self._decode(prev, enc, repeat=k, project=True)
        dec[0].masked_fill_(~masks, -math.inf)
        lprobs = self._ofa.get_normalized_probs(dec, log_probs=True)  # float32
        scores = lprobs.gather(dim=-1, index=tgt.unsqueeze(-1)).squeeze(-1)
        scores = scores.masked_fill(tgt.eq(self._pad), 0)
        scores = scores.masked_fill((~masks).all(2), 0)  # prompt positions are not scored
        return scores.sum(1).view(len(pairs), k).float().cpu()

    def predict(self, pairs: Sequence[Pair | Prepared]) -> list[Prediction]:
        """Label every pair with one encoder and one decoder forward for the whole list.

        Items may be raw `Pair`s (preprocessed here, under the lock) or `Prepared` ones.
        """
        if not pairs:
            return []
        torch = self._torch
        with self._lock, torch.inference_mode():
            if self._autocast_dtype is not None:
                with torch.autocast("cuda", dtype=self._autocast_dtype):
                    scores = self._scores(pairs)
            else:
                scores = self._scores(pairs)
            probs = torch.softmax(scores.double(), dim=-1).tolist()
        out = []
        for row in probs:
            by_answer = dict(zip(self._answers, row, strict=True))
            best = max(self._answers, key=lambda a: by_answer[a])
            out.append(Prediction(
                label=ANSWER_TO_LABEL[best],
                answer=best,
                probabilities={lab: float(by_answer[LABEL_TO_ANSWER[lab]]) for lab in LABELS},
            ))
        return out

    def warmup(self, n: int = 3) -> float:
        """Run n synthetic batches through every code path; return the elapsed milliseconds."""
        from PIL import Image as PILImage

        images = [PILImage.new("RGB", (64, 48), (120, 60, 200)),
                  PILImage.new("RGB", (33, 97), (10, 200, 30))]
        texts = ["a dog", "two people are walking a dog on a sunny street near the water"]
        short = Pair(images[0], texts[0])
        long_with_premise = Pair(images[1], texts[1], premise="a man is outside")
        shapes = ([short, long_with_premise], [long_with_premise], [short])
        started = time.perf_counter()
        for i in range(max(n, 0)):
            self.predict(list(shapes[i % len(shapes)]))
        return (time.perf_counter() - started) * 1000.0

    def gpu_memory(self) -> tuple[int, int] | None:
        """(used, total) bytes of the CUDA device the engine runs on; None on CPU."""
        if not self.device.startswith("cuda"):
            return None
        free, total = self._torch.cuda.mem_get_info(self._torch.device(self.device))
        return int(total - free), int(total)

    def close(self) -> None:
        """Remove the private configuration overlay (also done at garbage collection)."""
        self._finalizer()
