"""`ofactl model tiny`: random-weight OFA model dirs through the real modelscope classes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ofactl import modelbuild
from ofactl.cli import app
from ofactl.errors import OperationError, UsageError
from ofactl.manifest import read_manifest, verify_manifest

runner = CliRunner()


@pytest.mark.runtime
def test_tiny_model_dir_is_a_complete_modelscope_snapshot(tiny_model_dir: Path) -> None:
    names = sorted(p.name for p in tiny_model_dir.iterdir())
    assert names == ["answer2label.json", "config.json", "configuration.json", "merges.txt",
                     "ofactl-manifest.json", "pytorch_model.bin", "vocab.json"]
    cfg = json.loads((tiny_model_dir / "configuration.json").read_text())
    assert cfg["task"] == "visual-entailment"
    assert cfg["pipeline"] == {"type": "visual-entailment"}
    assert cfg["model"]["type"] == "ofa"
    assert cfg["model"]["gen_type"] == "traverse"
    assert cfg["model"]["prompt_type"] == "prev_output"
    answers = json.loads((tiny_model_dir / cfg["model"]["answer2label"]).read_text())
    assert answers == {"no": 0, "yes": 1, "maybe": 2}
    vocab = json.loads((tiny_model_dir / "vocab.json").read_text())
    ofa_cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert ofa_cfg["vocab_size"] == len(vocab) + 9192
    assert ofa_cfg["d_model"] == 32 and ofa_cfg["resnet_type"] == "resnet18"
    m = read_manifest(tiny_model_dir)
    assert (m.model_id, m.revision, m.random_weights) == (
        "ofactl/ofa-ve-tiny-random", "random-seed0", True)
    assert verify_manifest(tiny_model_dir) == []


@pytest.mark.runtime
def test_same_seed_same_digest_other_seed_other_digest(tiny_model_dir: Path,
                                                       tmp_path: Path) -> None:
    again = modelbuild.build_model_dir(tmp_path / "again", preset="tiny", seed=0)
    assert again.digest == read_manifest(tiny_model_dir).digest
    assert 3_800_000 < again.parameters < 4_000_000
    other = modelbuild.build_model_dir(tmp_path / "other", preset="tiny", seed=1)
    assert other.digest != again.digest
    assert other.revision == "random-seed1"


@pytest.mark.runtime
def test_the_stock_tokenizer_reads_the_vocabulary(tiny_model_dir: Path) -> None:
    from modelscope.models.multi_modal.ofa import OFATokenizer

    tok = OFATokenizer.from_pretrained(str(tiny_model_dir))
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)
    for answer in ("yes", "no", "maybe"):  # one token each, like OFA's real BPE
        assert len(tok(" " + answer, add_special_tokens=False)["input_ids"]) == 1
    ids = tok(" does the image describe \" naïve 🐕 \"?", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids  # byte-level: nothing is unknown
    assert tok.decode(ids) == " does the image describe \" naïve 🐕 \"?"


def test_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(UsageError) as err:
        modelbuild.build_model_dir(out)
    assert err.value.message == f"{out}: already exists"
    assert err.value.hint == "pass --force to replace it"


def test_force_replaces_model_dirs_only(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "precious.txt").write_text("x")
    with pytest.raises(UsageError) as err:
        modelbuild.build_model_dir(folder, force=True)
    assert err.value.message == f"{folder}: exists and is not a model directory; not replacing it"
    assert (folder / "precious.txt").exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UsageError, match=r": exists and is not a directory$"):
        modelbuild.build_model_dir(a_file, force=True)


def test_bad_preset_and_seed(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^--preset: must be one of tiny, large, got 'huge'$"):
        modelbuild.build_model_dir(tmp_path / "m", preset="huge")
    with pytest.raises(UsageError, match=r"^--seed: must be an integer ≥ 0, got -1$"):
        modelbuild.build_model_dir(tmp_path / "m", seed=-1)


def test_missing_runtime_names_the_install_command(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "modelscope.models.multi_modal.ofa", None)
    with pytest.raises(OperationError) as err:
        modelbuild.build_model_dir(tmp_path / "m")
    assert err.value.message.startswith("model builder: the agent runtime is not installed (")
    assert err.value.hint == "install the agent runtime with `bash scripts/install-runtime.sh`"
    assert not (tmp_path / "m").exists()
    result = runner.invoke(app, ["model", "tiny", "--out", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "bash scripts/install-runtime.sh" in result.output
    assert "Traceback" not in result.output


def test_vocab_is_deterministic_and_byte_complete() -> None:
    vocab, merges = modelbuild.make_vocab()
    assert modelbuild.make_vocab() == (vocab, merges)
    assert list(vocab)[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert list(vocab)[-1] == "<mask>"
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert all(sym in vocab for sym in modelbuild._bytes_to_unicode().values())
    assert all(vocab.get("Ġ" + w) is not None for w in ("yes", "no", "maybe"))


@pytest.mark.runtime
def test_cli_model_tiny_json_and_force(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-model"
    result = runner.invoke(app, ["model", "tiny", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model_id"] == "ofactl/ofa-ve-tiny-random"
    assert data["revision"] == "random-seed0"
    assert data["random_weights"] is True
    assert data["digest"] == read_manifest(tiny_model_dir).digest
    again = runner.invoke(app, ["model", "tiny", "--out", str(out)])
    assert again.exit_code == 2
    assert f"error: {out}: already exists" in again.output
    forced = runner.invoke(app, ["model", "tiny", "--out", str(out), "--force", "--seed", "3"])
    assert forced.exit_code == 0, forced.output
    assert "ofactl/ofa-ve-tiny-random@random-seed3" in forced.output
    assert read_manifest(out).revision == "random-seed3"


def test_large_preset_has_ofa_large_shapes() -> None:
    vocab, _ = modelbuild.make_vocab(modelbuild.PRESETS["large"]["bpe_vocab_size"])
    assert len(vocab) == 50265 and list(vocab)[-1] == "<mask>"
    kw = modelbuild._ofa_config_kwargs("large", len(vocab) + modelbuild.EXTRA_TOKENS)
    assert kw["vocab_size"] == 59457  # the real model: 50,265 + 9,192
    assert (kw["d_model"], kw["encoder_layers"], kw["decoder_layers"]) == (1024, 12, 12)
    assert (kw["encoder_attention_heads"], kw["encoder_ffn_dim"]) == (16, 4096)
    assert kw["resnet_type"] == "resnet152"
    assert modelbuild.configuration("large")["model"]["patch_image_size"] == 480
