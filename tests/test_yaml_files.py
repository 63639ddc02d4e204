"""Config and sweep files are read strictly and boundedly: a duplicate key or an alias bomb is one
line naming it, and a key the parser does not know gets the closest option, as on the command line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from ctxlit import sweep as sweep_cli
from ctxlit.errors import ConfigError
from ctxlit.fit import DEFAULT_CONFIG, main
from ctxlit.preflight import check_config_files
from ctxlit.utils.yaml_files import MAX_EXPANDED_VALUES, YAMLFileError, expanded_size, load_yaml
from tests.conftest import TINY

ROOT = Path(__file__).parents[1]
#: 9 levels of 9 aliases each: 9**9 (387 million) strings once expanded, 2 kB of text
BILLION_LAUGHS = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]\n" for previous, name in zip("abcdefgh", "bcdefghi"))
DUPLICATE = "trainer:\n  max_epochs: 3\nmodel:\n  init_args:\n    lr: 0.1\ntrainer:\n  max_epochs: 30\n"


def test_a_duplicate_key_is_named_with_both_lines():
    with pytest.raises(YAMLFileError, match=r"^duplicate key 'trainer' at line 6 \(first at line 1\)$"):
        load_yaml(DUPLICATE)
    with pytest.raises(YAMLFileError, match=r"^duplicate key 'lr' at line 4 \(first at line 3\)$"):
        load_yaml("model:\n  init_args:\n    lr: 0.1\n    lr: 0.2\n")
    # a merge key's values may be overridden: that is what it is for
    assert load_yaml("base: &b {p: 1, q: 2}\nd:\n  <<: *b\n  p: 5\n")["d"] == {"p": 5, "q": 2}
    assert load_yaml(yaml.safe_dump({"x": [1, {"y": None}]})) == {"x": [1, {"y": None}]}


def test_aliases_expanding_past_the_bound_are_refused_at_once():
    start = time.monotonic()
    with pytest.raises(YAMLFileError, match="expand to more than 100,000 values"):
        load_yaml(BILLION_LAUGHS)
    assert time.monotonic() - start < 0.5
    # the root, keys a and b, a's list of 3, b's list holding a's twice
    assert expanded_size(yaml.compose("a: &a [1, 2, 3]\nb: [*a, *a]\n")) == 1 + 2 + 4 + (1 + 2 * 4)
    four_levels = BILLION_LAUGHS.split("e: ")[0]  # 9**4 strings: an alias-heavy file that is fine
    assert MAX_EXPANDED_VALUES / 20 < expanded_size(yaml.compose(four_levels)) < MAX_EXPANDED_VALUES
    assert len(load_yaml(four_levels)["d"]) == 9


@pytest.mark.parametrize(("content", "line"), [
    (DUPLICATE, "error: --config bad.yaml: duplicate key 'trainer' at line 6 (first at line 1)"),
    (BILLION_LAUGHS, "error: --config bad.yaml: its aliases (*name) expand to more than 100,000 values"),
], ids=["duplicate", "billion-laughs"])
def test_a_config_file_with_a_duplicate_or_an_alias_bomb_is_one_error(content, line, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(content)
    start = time.monotonic()
    with pytest.raises(ConfigError):  # the check before the parser reads the file
        check_config_files(["--config", "bad.yaml"])
    assert time.monotonic() - start < 1  # the bomb took 77 s and a MemoryError
    assert main(["--config", str(DEFAULT_CONFIG), "--config", "bad.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["bad.yaml"]


@pytest.mark.parametrize(("content", "line"), [
    ("model:\n  init_args:\n    blok: none\n", "error: model.init_args.blok: no such option of "
     "ctxlit.tasks.ClassificationTask; did you mean model.init_args.block?"),
    ("data:\n  init_args:\n    batch_sise: 3\n", "error: data.init_args.batch_sise: no such option of "
     "ctxlit.data.SyntheticContextDataModule; did you mean data.init_args.batch_size?"),
    ("model:\n  init_args:\n    block:\n      class_path: ctxlit.blocks.GlobalContext\n      init_args:\n"
     "        ratioo: 0.5\n", "error: model.init_args.block.init_args.ratioo: no such option of "
     "ctxlit.blocks.GlobalContext; did you mean model.init_args.block.init_args.ratio?"),
    ("trainer:\n  max_epoch: 3\n", "error: trainer.max_epoch: no such option of pytorch_lightning.Trainer; "
     "did you mean trainer.max_epochs?"),
    ("checkpoint:\n  monitr: val/acc1\n", "error: checkpoint.monitr: no such option of "
     "ctxlit.tasks.callbacks.BestAndLastCheckpoint; did you mean checkpoint.monitor?"),
    ("traner:\n  max_epochs: 3\n", "error: traner.max_epochs: no such section; did you mean trainer.max_epochs?"),
], ids=["model", "data", "block", "trainer", "checkpoint", "section"])
def test_an_unknown_key_in_a_config_file_gets_the_closest_option(content, line, tmp_path, capsys, monkeypatch):
    """jsonargparse said ``--model={'init_args': {'blok': 'none'}}: expected null``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "typo.yaml").write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(DEFAULT_CONFIG), "--config", "typo.yaml", *TINY])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == line, err
    assert [p.name for p in tmp_path.iterdir()] == ["typo.yaml"]


def test_a_config_file_that_names_no_task_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "alone.yaml").write_text("model:\n  init_args:\n    block: gc\n")
    with pytest.raises(SystemExit):
        main(["--config", "alone.yaml"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: model.init_args.block: no such option of pytorch_lightning.LightningModule; "
        "the config names no model.class_path (e.g. ctxlit.tasks.ClassificationTask)")


def _sweep(tmp_path: Path, parameters: dict) -> Path:
    sweep = yaml.safe_load((ROOT / "sweeps" / "synthetic_blocks.yaml").read_text())
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**sweep, "parameters": parameters}))
    return path


def test_a_sweep_file_with_a_duplicate_or_an_alias_bomb_is_one_error(tmp_path, capsys):
    path = _sweep(tmp_path, {"seed_everything": {"values": [0]}})
    path.write_text(path.read_text() + "method: random\n")
    assert sweep_cli.main(["validate", str(path)]) == 2
    line = capsys.readouterr().err
    assert line == f"error: {path}: duplicate key 'method' at line {len(path.read_text().splitlines())} (first at line 10)\n"
    path.write_text(BILLION_LAUGHS)
    start = time.monotonic()
    assert sweep_cli.main(["validate", str(path)]) == 2
    assert time.monotonic() - start < 1  # `sweep validate` took 90 s
    assert capsys.readouterr().err.startswith(f"error: {path}: its aliases (*name) expand to more than")


def test_a_sweep_parameter_the_config_does_not_have_gets_the_closest_option(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = _sweep(tmp_path, {"model.init_args.blok": {"values": ["gc"]}})
    problems, _ = sweep_cli.validate(path)
    assert problems == ['trial 0 {"model.init_args.blok": "gc"}: error: model.init_args.blok: no such option of '
                        'ctxlit.tasks.ClassificationTask; did you mean model.init_args.block?']
