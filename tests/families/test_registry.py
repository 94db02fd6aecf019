"""The family registry (lastrank/families/__init__.py) as data: every preset of every family is claimed by exactly
its own family's detection (so FAMILIES' order does not matter), loads as that family, and reports on the wire
what the spec says; make-checkpoint and bench read the specs; the table imports no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from lastrank.errors import ModelNotAvailableError
from lastrank.checkpoints import ALIASES, preset, presets
from lastrank.families import FAMILIES, detect_family, family_spec, folder_facts, known_names, load_backend

TINY = [(spec.name, name) for spec in FAMILIES for name, p in presets(spec).items() if p.tiny]


@pytest.fixture(scope="module")
def preset_folders(tmp_path_factory):
    """Every tiny preset written once, each into a folder whose name says nothing (detection must read the files:
    causal-lm also matches its hub name in the folder path)."""
    folders = {}
    for i, (_, name) in enumerate(TINY):
        folders[name] = preset(name)[1].write(tmp_path_factory.mktemp(f"p{i}"), seed=0, dtype="float32")
    return folders


def claimed_by(folder) -> list[str]:
    config, _ = folder_facts(folder)
    return [spec.name for spec in FAMILIES if spec.detect(config, folder)]


def test_every_family_has_a_tiny_preset():
    assert {family for family, _ in TINY} == {spec.name for spec in FAMILIES}


@pytest.mark.parametrize("family, name", TINY)
def test_exactly_its_own_family_claims_each_preset(preset_folders, family, name):
    assert claimed_by(preset_folders[name]) == [family]
    assert detect_family(preset_folders[name]) == family


@pytest.mark.parametrize("family, name", TINY)
def test_each_preset_loads_and_reports_what_its_spec_says(preset_folders, family, name):
    backend = load_backend(preset_folders[name], dtype="float32")
    spec = family_spec(family)
    # Capabilities.family is on the wire (/v1/models); the spec's `reports` is the explicit mapping to it
    assert backend.capabilities.family in spec.reports
    assert known_names(backend.capabilities.family) == spec.names
    assert backend.random_weights
    # what Backend declares and Reranker reports: where and in what the model runs
    assert str(backend.device) == "cpu" and str(backend.dtype) == "torch.float32"


def test_a_module_the_bi_encoder_cannot_run_is_no_family(preset_folders, tmp_path):
    """ColBERT's sentence-transformers layout (Transformer -> Dense) and a Dense projection after pooling:
    loading refuses both, so detection does too, and the error names the module list."""
    for kinds in (["Transformer", "Dense"], ["Transformer", "Pooling", "Dense", "Normalize"]):
        folder = tmp_path / "-".join(kinds)
        shutil.copytree(preset_folders["bi-encoder-bert-tiny"], folder)
        modules = [{"idx": i, "name": str(i), "path": "" if i == 0 else f"{i}_{k}", "type": f"sentence_transformers.models.{k}"}
                   for i, k in enumerate(kinds)]
        (folder / "modules.json").write_text(json.dumps(modules))
        assert claimed_by(folder) == []
        with pytest.raises(ModelNotAvailableError, match=" -> ".join(kinds)):
            detect_family(folder)


def test_a_bi_encoder_over_a_backbone_it_lacks_is_no_family(preset_folders, tmp_path):
    folder = tmp_path / "t5"
    shutil.copytree(preset_folders["bi-encoder-bert-tiny"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "t5"}))
    assert claimed_by(folder) == []


def test_names_and_older_spellings():
    assert [spec.name for spec in FAMILIES] == ["jina-v3", "jina-m0", "bi-encoder", "cross-encoder", "causal-lm"]
    # the module names detect_family returned before (load_backend(family=...) callers)
    assert family_spec("causal_lm") is family_spec("causal-lm")
    assert family_spec("jina_v3").name == "jina-v3"
    with pytest.raises(KeyError):
        family_spec("colbert")
    assert known_names("qwen3-reranker") == known_names("mxbai-rerank-v2") == ()
    assert known_names("jina-v3") == ("jina-reranker-v3", "jinaai/jina-reranker-v3")
    names = [name for spec in FAMILIES for name in presets(spec)]
    assert len(names) == len(set(names))


def test_make_checkpoint_and_bench_read_the_specs(tmp_path):
    from lastrank.cli import build_parser, main
    from lastrank.cli.bench import family_benches

    parser = build_parser()
    choices = next(a.choices for a in parser._subparsers._group_actions[0].choices["make-checkpoint"]._actions
                   if a.dest == "preset")
    assert choices == [name for spec in FAMILIES for name in presets(spec)] + list(ALIASES)
    assert all(preset(old) == preset(new) for old, new in ALIASES.items())  # the old Jina V3 names
    assert family_benches() == {"jina-m0": "bench_m0.py", "cross-encoder": "bench_cross_encoder.py",
                                "causal-lm": "bench_causal_lm.py"}
    assert parser.parse_args(["bench", "--family", "causal-lm"]).family == "causal-lm"
    assert main(["make-checkpoint", str(tmp_path / "st"), "--preset", "bi-encoder-bert-tiny"]) == 0
    assert detect_family(tmp_path / "st") == "bi-encoder"


def test_the_registry_imports_no_torch():
    code = ("import sys, lastrank.families as f; f.FAMILIES; from lastrank.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
