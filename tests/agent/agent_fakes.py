"""A fake engine with the real Engine's interface (tests only): fast, deterministic, observable."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

LABELS = ("entailment", "contradiction", "neutral")
ANSWERS = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}


@dataclass
class FakePair:
    image: Any
    text: str
    premise: str | None = None


@dataclass
class FakePrediction:
    label: str
    answer: str
    probabilities: dict[str, float]


def label_for(text: str) -> str:
    """Deterministic label from the text, so order mix-ups show."""
    return LABELS[sum(text.encode()) % 3]


@dataclass
class FakeEngine:
    delay_s: float = 0.0  # per forward
    per_pair_s: float = 0.0
    device: str = "cpu"
    dtype: str = "float32"
    fail: bool = False
    load_s: float = 0.0
    gate: threading.Event | None = None  # when set, predict waits for it
    batches: list[int] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    model_info: dict[str, Any] = field(
        default_factory=lambda: {"id": "test/ofa", "revision": "v0", "digest": "d" * 64,
                                 "random_weights": True}
    )
    versions: dict[str, str] = field(default_factory=lambda: {"fake": "1"})
    warmups: int = 0

    def predict(self, pairs: list[FakePair]) -> list[FakePrediction]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(len(pairs))
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay_s + self.per_pair_s * len(pairs))
        if self.fail:
            raise RuntimeError("engine exploded")
        out = []
        for p in pairs:
            label = label_for(p.text + (p.premise or ""))
            probs = {k: (0.8 if k == label else 0.1) for k in LABELS}
            out.append(FakePrediction(label, ANSWERS[label], probs))
        return out

    def warmup(self, n: int) -> float:
        self.warmups += n
        return 1.0

    def gpu_memory(self) -> tuple[int, int] | None:
        return (1000, 8000) if self.device.startswith("cuda") else None


def factory(engine: FakeEngine):
    """An engine factory for create_app that returns this fake after load_s seconds."""

    def make(_settings: Any) -> tuple[FakeEngine, type[FakePair]]:
        time.sleep(engine.load_s)
        return engine, FakePair

    return make
