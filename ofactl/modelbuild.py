"""Build random-weight OFA visual-entailment model directories in ModelScope's format.

The directory is made by the real modelscope classes (OFAConfig, OFAModel.save_pretrained) so the
stock `pipeline(Tasks.visual_entailment, model=<dir>)` loads it exactly like a hub snapshot. The
weights are random: answers are meaningless, cost is realistic (preset `large` has OFA-large's
shapes). modelscope/torch are imported lazily: the rest of ofactl runs without the runtime.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ofactl.errors import OperationError, UsageError
from ofactl.manifest import write_manifest

RUNTIME_HINT = "install the agent runtime with `bash scripts/install-runtime.sh`"

# The OFA code appends 8,192 <code_i> and 1,000 <bin_i> tokens to the tokenizer at load.
EXTRA_TOKENS = 8192 + 1000

# Answers of OFA's SNLI-VE fine-tuning (contradiction->no, entailment->yes, neutral->maybe),
# in the order of OFA's own ans2label_dict.
ANSWER2LABEL = {"no": 0, "yes": 1, "maybe": 2}
ANSWER2LABEL_FILE = "answer2label.json"

# A few whole words get their own BPE tokens so prompts are not purely byte-level; the list is
# fixed so the vocabulary (and therefore the digest) is deterministic.
_WORDS = (
    "yes no maybe does the image describe can and text imply a an is are of in on with to "
    "man woman men women dog cat people person two one red blue green white black playing "
    "sitting standing walking running street water grass ball car table outside inside near"
).split()

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "d_model": 32,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "resnet_type": "resnet18",
        "image_bucket_size": 16,
        "image_size": 64,
        "bpe_vocab_size": None,
    },
    "large": {
        "d_model": 1024,
        "encoder_layers": 12,
        "decoder_layers": 12,
        "encoder_attention_heads": 16,
        "decoder_attention_heads": 16,
        "encoder_ffn_dim": 4096,
        "decoder_ffn_dim": 4096,
        "resnet_type": "resnet152",
        "image_bucket_size": 42,
        "image_size": 480,
        "bpe_vocab_size": 50265,  # OFA-large: 50,265 BPE entries + 9,192 code/bin tokens
    },
}


@dataclass(frozen=True)
class BuildResult:
    """What `build_model_dir` made."""

    path: Path
    preset: str
    seed: int
    model_id: str
    revision: str
    digest: str
    parameters: int
    size_bytes: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict (for `--json`)."""
        return {
            "path": str(self.path),
            "preset": self.preset,
            "seed": self.seed,
            "model_id": self.model_id,
            "revision": self.revision,
            "digest": self.digest,
            "parameters": self.parameters,
            "size_bytes": self.size_bytes,
            "seconds": round(self.seconds, 2),
            "random_weights": True,
        }


def model_id_for(preset: str) -> str:
    """The manifest model id of a preset (`ofactl/ofa-ve-<preset>-random`)."""
    return f"ofactl/ofa-ve-{preset}-random"


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/BART byte-to-symbol table (same as transformers' bytes_to_unicode).
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def make_vocab(size: int | None = None) -> tuple[dict[str, int], list[str]]:
    """A tiny byte-level BPE vocabulary: specials, 256 byte symbols, whole-word merges.

    With `size`, unused filler entries pad it to that many entries (OFA-large's BPE has 50,265),
    so the embedding and output projection get the real model's shapes.
    """
    vocab: dict[str, int] = {}
    for tok in ("<s>", "<pad>", "</s>", "<unk>"):
        vocab[tok] = len(vocab)
    for sym in _bytes_to_unicode().values():
        vocab.setdefault(sym, len(vocab))
    merges: list[str] = []
    seen: set[tuple[str, str]] = set()
    for word in _WORDS:
        for form in ("Ġ" + word, word):  # with and without the leading space symbol
            cur = form[0]
            for ch in form[1:]:
                pair = (cur, ch)
                cur = cur + ch
                if pair not in seen:
                    seen.add(pair)
                    merges.append(f"{pair[0]} {pair[1]}")
                vocab.setdefault(cur, len(vocab))
    if size is not None:
        for i in range(size - len(vocab) - 1):
            vocab[f"<ofactl_unused_{i}>"] = len(vocab)  # never produced by the BPE merges
    vocab["<mask>"] = len(vocab)  # BART keeps <mask> as the last entry
    return vocab, merges


def configuration(preset: str) -> dict[str, Any]:
    """The ModelScope configuration.json for a preset (traverse scoring, prev_output prompt)."""
    size = PRESETS[preset]["image_size"]
    return {
        "framework": "pytorch",
        "task": "visual-entailment",
        "pipeline": {"type": "visual-entailment"},
        "model": {
            "type": "ofa",
            "language": "en",
            "gen_type": "traverse",
            "prompt_type": "prev_output",
            "answer2label": ANSWER2LABEL_FILE,
            "valid_batch_size": len(ANSWER2LABEL),
            "beam_search": {"beam_size": 3, "max_len_a": 1, "max_len_b": 4, "min_len": 1,
                            "no_repeat_ngram_size": 3},
            "seed": 7,
            "max_src_length": 256,
            "patch_image_size": size,
            "max_image_size": size,
            "imagenet_default_mean_and_std": False,
        },
        "ofactl": {"preset": preset, "random_weights": True},
    }


def _ofa_config_kwargs(preset: str, vocab_size: int) -> dict[str, Any]:
    p = dict(PRESETS[preset])
    p.pop("image_size")
    p.pop("bpe_vocab_size")
    return {
        **p,
        "vocab_size": vocab_size,
        "max_position_embeddings": 1024,
        "use_ofasys": False,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
    }


def _import_runtime() -> tuple[Any, Any, Any]:
    try:
        import torch
        from modelscope.models.multi_modal.ofa import OFAModel  # type: ignore[import-untyped]
        from modelscope.models.multi_modal.ofa.configuration_ofa import (  # type: ignore[import-untyped]
            OFAConfig,
        )
    except ImportError as e:
        raise OperationError(
            f"model builder: the agent runtime is not installed ({e})", hint=RUNTIME_HINT
        ) from None
    return torch, OFAModel, OFAConfig


def _dir_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def build_model_dir(out: Path, preset: str = "tiny", seed: int = 0,
                    force: bool = False) -> BuildResult:
    """Build a random-weight OFA model dir at `out` (atomically) and write its manifest."""
    if preset not in PRESETS:
        raise UsageError(f"--preset: must be one of {', '.join(PRESETS)}, got {preset!r}")
    if seed < 0:
        raise UsageError(f"--seed: must be an integer ≥ 0, got {seed}")
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise UsageError(f"{out}: exists and is not a directory")
        if any(out.iterdir()):
            if not force:
                raise UsageError(f"{out}: already exists", hint="pass --force to replace it")
            if not any((out / n).exists() for n in ("ofactl-manifest.json", "configuration.json")):
                # --force replaces model directories only, never an arbitrary folder
                raise UsageError(f"{out}: exists and is not a model directory; not replacing it",
                                 hint="choose another --out")
    torch, OFAModel, OFAConfig = _import_runtime()
    # The OFA code and transformers may look for caches under ~: keep them out of the way.
    os.environ.setdefault("MODELSCOPE_CACHE", str(Path(tempfile.gettempdir()) / "ofactl-ms-cache"))
    os.environ.setdefault("MODELSCOPE_HOME", os.environ["MODELSCOPE_CACHE"])

    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    try:
        vocab, merges = make_vocab(PRESETS[preset]["bpe_vocab_size"])
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n")
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        (tmp / ANSWER2LABEL_FILE).write_text(json.dumps(ANSWER2LABEL) + "\n")
        (tmp / "configuration.json").write_text(
            json.dumps(configuration(preset), indent=2) + "\n")
        config = OFAConfig(**_ofa_config_kwargs(preset, len(vocab) + EXTRA_TOKENS))
        torch.manual_seed(seed)
        model = OFAModel(config)
        model.eval()
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(str(tmp), safe_serialization=False)
        del model
        revision = f"random-seed{seed}"
        manifest = write_manifest(tmp, model_id=model_id_for(preset), revision=revision,
                                  random_weights=True)
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the agent may run as another user
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildResult(
        path=out, preset=preset, seed=seed, model_id=model_id_for(preset), revision=revision,
        digest=manifest.digest, parameters=params, size_bytes=_dir_size(out),
        seconds=time.monotonic() - started,
    )
