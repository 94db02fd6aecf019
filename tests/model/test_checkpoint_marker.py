"""The random-weights marker of `lastrank make-checkpoint` folders (`is_random_checkpoint`)."""

from __future__ import annotations

import json
import subprocess
import sys

from lastrank.model.checkpoint import RANDOM_WEIGHTS_FILE, RANDOM_WEIGHTS_KEY, is_random_checkpoint


def test_make_checkpoint_folders_are_marked(tiny_checkpoint):
    assert is_random_checkpoint(tiny_checkpoint)
    assert json.loads((tiny_checkpoint / "config.json").read_text())[RANDOM_WEIGHTS_KEY] is True
    assert "meaningless" in (tiny_checkpoint / RANDOM_WEIGHTS_FILE).read_text()


def test_each_marker_alone_is_enough_and_a_plain_folder_is_not_random(tmp_path):
    plain = {"architectures": ["JinaForRanking"], "model_type": "qwen3"}
    cases = {
        "plain": (plain, False, False),
        "key": ({**plain, RANDOM_WEIGHTS_KEY: True}, False, True),
        "key_false": ({**plain, RANDOM_WEIGHTS_KEY: False}, False, False),
        "legacy": ({**plain, "lastrank_notice": "random weights ..."}, False, True),  # made before the marker
        "file": (plain, True, True),
    }
    for name, (config, with_file, expected) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        if with_file:
            (folder / RANDOM_WEIGHTS_FILE).write_text("random")
        assert is_random_checkpoint(folder) is expected, name
    assert is_random_checkpoint(tmp_path / "missing") is False
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert is_random_checkpoint(tmp_path / "broken") is False


def test_checking_the_marker_does_not_import_torch():
    code = "import sys, lastrank.model.checkpoint as c; c.is_random_checkpoint('.'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
