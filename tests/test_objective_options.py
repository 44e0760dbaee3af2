"""The ``objective:`` section reads the same in both tasks: the trained mode's options and per-mode sections.

A key named after a mode holds options for that mode alone, so one config serves every mode; the
translation task always took them, the VQA task refused them ("unknown objective options").
"""

from __future__ import annotations

import pytest

from varattn.errors import VarattnError
from varattn.nmt.config import load_config as nmt_config
from varattn.objective_options import objective_section
from varattn.vqa.config import load_config as vqa_config

from conftest import cli, one_line_error

#: each task's loader and a shipped config (the NMT one has a var-relaxed section of its own)
TASKS = {"nmt": (nmt_config, "toy"), "vqa": (vqa_config, "easy")}
SECTIONS = ["objective.var-relaxed.warmup_steps=100", "objective.var-sample.num_samples=3"]


@pytest.mark.parametrize("task", TASKS)
def test_per_mode_sections_apply_to_their_own_mode(task):
    load, name = TASKS[task]
    assert load(name, {"mode": "var-relaxed"}, SECTIONS).objective == {"warmup_steps": 100}
    assert load(name, {"mode": "var-sample"}, SECTIONS).objective == {"num_samples": 3}
    assert load(name, {"mode": "var-enum"}, SECTIONS).objective == {}
    # a shared key wins over the mode's section, and is checked against the trained mode
    both = [*SECTIONS, "objective.warmup_steps=0"]
    assert load(name, {"mode": "var-relaxed"}, both).objective == {"warmup_steps": 0}
    with pytest.raises(VarattnError, match="unknown objective options: warmup_steps"):
        load(name, {"mode": "var-sample"}, both)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize(("setting", "needle"), [
    ("objective.var-relaxed.warmup_steps=-1", "objective.var-relaxed.warmup_steps must be a non-negative integer"),
    ("objective.var-gumbel.temperature=hot", "objective.var-gumbel.temperature must be a number"),
    ("objective.var-sample.warmup_steps=5", "unknown objective.var-sample options: warmup_steps"),
    ("objective.var-enum=3", "objective.var-enum must be a mapping of that mode's options"),
])
def test_every_section_is_checked_even_for_another_mode(task, setting, needle):
    load, name = TASKS[task]
    with pytest.raises(VarattnError, match=needle):
        load(name, {"mode": "soft"}, [setting])


def test_vqa_train_takes_a_per_mode_section_on_the_command_line(tmp_path, capsys):
    """``varattn vqa train --set objective.var-relaxed...`` gets as far as checking the value (no data is read)."""
    bad = ["vqa", "train", "--out", tmp_path / "run", "--mode", "var-relaxed", "--max-steps", 1,
           "--set", "objective.var-relaxed.warmup_steps=-5"]
    code, _, err = cli(capsys, *bad)
    assert code == 2
    assert "objective.var-relaxed.warmup_steps must be a non-negative integer" in one_line_error(err)
    assert not (tmp_path / "run").exists()


def test_the_section_must_be_a_mapping():
    with pytest.raises(VarattnError, match="objective must be a mapping"):
        objective_section("var-enum", [1, 2])
    assert objective_section("var-gumbel", {"temperature": "0.5", "rws": {"num_samples": 2}}) == {"temperature": 0.5}


def test_what_is_checked_is_what_the_objective_declares():
    """Names, types and ranges come from the objective classes (``Objective.option_schema``), for every task."""
    from varattn.latent import objective_class

    schema = objective_class("var-relaxed").option_schema()
    assert schema["warmup_steps"].default == 0 and schema["warmup_steps"].type is int
    assert objective_section("var-relaxed", {"precision_bounds": [1, 50]}) == {"precision_bounds": [1.0, 50.0]}
    for setting, needle in [({"precision_bounds": [50, 1]}, "objective.precision_bounds must be two numbers"),
                            ({"proposal": "p"}, "objective.proposal must be defensive or q"),
                            ({"concentration": "cube"}, "objective.concentration must be mean-precision or exp")]:
        with pytest.raises(VarattnError, match=needle):
            objective_section("var-relaxed", setting)


@pytest.mark.parametrize("task", TASKS)
def test_a_declared_choice_is_checked_in_both_tasks(task):
    load, name = TASKS[task]
    with pytest.raises(VarattnError, match="objective.var-relaxed.proposal must be defensive or q"):
        load(name, {"mode": "soft"}, ["objective.var-relaxed.proposal=prior"])
