"""One declaration per setting: YAML keys, CLI flags, defaults, help and rules all come from it,
and an executor registered from one file brings its settings along."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from lightlayers.cli import main as cli
from lightlayers.commands import run as run_command
from lightlayers.config import ConfigError, StudyConfig, config_from_dict, load_config
from lightlayers.executors import EXECUTORS, ExecutorInfo, register_executor
from lightlayers.executors.base import Task, TaskOutcome
from lightlayers.runfolder.store import ResultsStore
from lightlayers.schema import at_least, setting

TINY = ["--data", "digits", "--models", "paper-light-k1", "--size", "8", "--epochs", "1",
        "--quiet", "--no-report"]


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    run_command.add_arguments(p)
    return p


def test_every_setting_with_a_flag_is_a_run_flag_with_its_declared_help_and_default():
    p = run_parser()
    by_dest = {a.dest: a for a in p._actions}
    for f in fields(StudyConfig):
        if f.name == "report":  # --no-report, the command's own spelling
            assert "no_report" in by_dest
            continue
        if not f.metadata["flag"]:
            assert f.name not in by_dest, f"{f.name} is YAML only"
            continue
        action = by_dest[f.name]
        assert f"--{f.name.replace('_', '-')}" in action.option_strings
        assert action.help.startswith(f.metadata["help"])
    assert "(default: stretch)" in by_dest["resize"].help
    assert "(default: 2)" in by_dest["max_retries"].help  # the ray executor's setting


@pytest.mark.parametrize(("yaml_text", "flags", "worker", "named"), [
    ("size: 4\n", ["--size", "4"], {"size": 4}, "size: must be 8..1024 pixels, got 4"),
    ("threads: 0\n", ["--threads", "0"], {"threads": 0}, "threads: must be >= 1, got 0"),
    ("val_fraction: 1.0\n", ["--val-fraction", "1"], {"val_fraction": 1.0},
     "val_fraction: must be in (0, 1), got 1.0"),
    ("executor: ray\nmax_retries: -1\n", ["--executor", "ray", "--max-retries", "-1"],
     {"executor": "ray", "executor_options": {"max_retries": -1}},
     "max_retries: must be >= 0, got -1"),
])
def test_one_rule_per_setting_wherever_the_value_comes_from(tmp_path, capsys, yaml_text, flags,
                                                            worker, named):
    pattern = re.escape(named)
    cfg_file = tmp_path / "study.yaml"
    cfg_file.write_text(yaml_text)
    with pytest.raises(ConfigError, match=pattern):  # the YAML
        load_config(cfg_file)
    assert cli(["run", *flags, "--out", str(tmp_path / "run")]) == 2  # the flags
    assert named in capsys.readouterr().err
    values = {**load_config(models="paper-light-k1").to_dict(), **worker}
    with pytest.raises(ConfigError, match=pattern):  # a Ray worker's copy
        config_from_dict(values)
    assert not (tmp_path / "run").exists()


def test_protocol_settings_follow_their_declared_rules():
    with pytest.raises(ConfigError, match=r"label_smoothing: must be in \[0, 1\), got 1.0"):
        load_config(protocol_overrides={"label_smoothing": 1.0})
    with pytest.raises(ConfigError, match=r"bn_momentum: must be in \(0, 1\], got 0.0"):
        load_config(protocol_overrides={"bn_momentum": 0.0})
    assert load_config(protocol_overrides={"bn_momentum": 1}).resolved_protocol().bn_momentum \
        == 1.0


# --- an executor from one file --------------------------------------------------------------
@dataclass(frozen=True)
class InlineOptions:
    """Settings of the test executor: they become YAML keys and flags by registration alone."""

    inline_label: str = setting("plain", "a label the executor records with each trial")
    inline_skip_seed: int | None = setting(None, "fail this seed instead of training it",
                                           check=at_least(0))


class InlineExecutor:
    """Trials in this process, in reverse order, each tagged with the executor's settings."""

    def __init__(self, cfg, protocol, device, out) -> None:
        self.cfg, self.protocol, self.device, self.out = cfg, protocol, device, out
        self.opts: InlineOptions = cfg.executor_settings()
        self.reporter = None

    def run(self, tasks: list[Task], start: Callable[[Task], None]) -> Iterator[TaskOutcome]:
        from lightlayers.trial import failure, run_trial

        for task in reversed(tasks):
            start(task)
            if task.spec.seed == self.opts.inline_skip_seed:
                yield task, None, failure(RuntimeError("skipped by the inline executor"))
                continue
            res = run_trial(task.spec, task.data, task.data_key, self.cfg, self.protocol,
                            self.device, self.out, None, weights=task.weights)
            yield task, res.with_extra(inline_label=self.opts.inline_label), None


@pytest.fixture
def inline_executor(monkeypatch) -> Iterator[None]:
    info = ExecutorInfo("inline", lambda cfg, protocol, device, out:
                        InlineExecutor(cfg, protocol, device, out),
                        "test executor", options=InlineOptions, runs_here=True)
    monkeypatch.setattr("lightlayers.executors.EXECUTORS", dict(EXECUTORS))
    register_executor(info)
    yield


def test_an_executor_registered_from_one_file_runs_a_study_with_its_own_flags(
        inline_executor, tmp_path: Path, capsys):
    out = tmp_path / "inline"
    code = cli(["run", *TINY, "--seeds", "0,1", "--executor", "inline",
                "--inline-label", "tagged", "--inline-skip-seed", "1", "--out", str(out)])
    assert code == 1  # seed 1 failed, as the executor's own setting asked
    with ResultsStore(out / "results.db") as store:
        trials = {t["seed"]: t for t in store.trials()}
        meta = store.meta()
    assert trials[0]["status"] == "done" and trials[0]["extra"]["inline_label"] == "tagged"
    assert trials[1]["status"] == "failed" and "inline executor" in trials[1]["error"]
    assert meta["config"]["executor"] == "inline"
    assert meta["config"]["executor_options"] == {"inline_label": "tagged",
                                                  "inline_skip_seed": 1}
    # Its rule, its help and the "belongs to another executor" check come with it.
    assert cli(["run", *TINY, "--executor", "inline", "--inline-skip-seed", "-1",
                "--out", str(tmp_path / "bad")]) == 2
    assert "inline_skip_seed: must be >= 0, got -1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="inline_label: only used with executor inline"):
        load_config(inline_label="x")
    with pytest.raises(SystemExit):
        cli(["run", "--help"])
    assert "--inline-label" in capsys.readouterr().out


def test_an_unknown_executor_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="executor: must be one of local, ray"):
        load_config(executor="dask")


def test_run_json_prints_one_result_object(tmp_path, capsys):
    out = tmp_path / "j"
    assert cli(["run", *TINY, "--json", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["run_dir"] == str(out.resolve()) and result["exit_code"] == 0
    assert result["counts"]["done"] == 1 and result["ran"] == 1
    (trial,) = result["trials"]
    assert trial["model"] == "paper-light-k1" and trial["status"] == "done"
    assert 0 <= trial["metrics"]["accuracy"] <= 1
    assert trial["metrics"]["params_total"] == 2649
    with ResultsStore(out / "results.db") as store:
        assert trial["metrics"]["accuracy"] == store.trials()[0]["accuracy"]
    # report --json: the same numbers, as the table aggregates them.
    assert cli(["report", str(out), "--json", "--format", "csv"]) == 0
    report = json.loads(capsys.readouterr().out)
    (model,) = report["models"]
    assert model["model"] == "paper-light-k1" and model["seeds"] == [0]
    acc = model["metrics"]["accuracy"]
    assert acc["mean"] == trial["metrics"]["accuracy"] and acc["n"] == 1 and acc["std"] is None
    assert report["files"] == [str(out / "report" / f) for f in ("comparisons.csv",
                                                                  "table.csv")]
    assert report["comparisons"] == []  # one model: no pair


def test_a_typo_in_data_leaves_no_run_folder(tmp_path, capsys):
    out = tmp_path / "deep" / "run"
    assert cli(["run", "--data", "digitz", "--out", str(out), "--quiet"]) == 2
    assert "Did you mean digits" in capsys.readouterr().err
    assert not (tmp_path / "deep").exists()
    # An existing folder is never removed, even empty.
    out.mkdir(parents=True)
    assert cli(["run", "--data", "digitz", "--out", str(out), "--quiet"]) == 2
    assert out.is_dir()


def test_top_level_help_reads_as_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.splitlines()[2].startswith("Compare image classifiers")
    assert "``" not in text and "lightlayers.commands" not in text  # no docstring fragment
    for command in ("models", "data", "run", "report", "weights"):
        assert f"\n    {command} " in text
    assert "exit codes:" in text


def test_data_summary_takes_the_study_settings_with_their_rules(capsys):
    assert cli(["data", "summary", "digits", "--size", "4"]) == 2
    assert "size: must be 8..1024 pixels, got 4" in capsys.readouterr().err
    assert cli(["data", "summary", "digits", "--size", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image_size"] == [1, 8, 8]
