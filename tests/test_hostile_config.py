"""Hostile configuration: a study file or a ``--set`` value built to exhaust memory or time, or
to be read two ways, is refused at once in one line that names it, and nothing is written.

Each row plants the user's files, runs the real command and checks the exit code, the one line
on stderr and every protected file by hash (tests/hostile.py). Memory and time of the alias bomb
are measured on a child of their own; the loader itself is fuzzed at the end."""

from __future__ import annotations

import dataclasses
import os
import resource
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fuzzing import fuzz
from hostile import LIGHTLAYERS, Case, Planted, run_case
from hypothesis import given
from hypothesis import strategies as st

from lightlayers.config import ConfigError, StudyConfig, load_config, parse_overrides


def alias_bomb(levels: int = 9) -> str:
    """About 500 bytes of YAML flow sequence whose last item names 9**levels values."""
    parts = ["&a0 [" + ",".join(["x"] * 9) + "]"]
    parts += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + f", *a{levels - 1}]"


def _config(text: str | bytes,
            env: dict[str, str] | None = None) -> Callable[[Path, Path | None], Planted]:
    """A study file holding ``text``, run into a run folder that must not appear."""
    def setup(tmp: Path, run: Path | None) -> Planted:
        cfg = tmp / "study.yaml"
        if isinstance(text, bytes):
            cfg.write_bytes(text)
        else:
            cfg.write_text(text)
        return Planted(["run", str(cfg), "--out", str(tmp / "run")], protect=[cfg],
                       env=env or {})

    return setup


def _flags(*flags: str) -> Callable[[Path, Path | None], Planted]:
    def setup(tmp: Path, run: Path | None) -> Planted:
        return Planted(["run", "--data", "digits", "--out", str(tmp / "run"), *flags])

    return setup


def _big_file(tmp: Path, run: Path | None) -> Planted:
    cfg = tmp / "study.yaml"
    with cfg.open("w") as f:
        f.write("data: digits\n")
        f.truncate(50 * 2**20)  # sparse: the size alone must refuse it, before any reading
    return Planted(["run", str(cfg), "--out", str(tmp / "run")], protect=[cfg])


def _folder(tmp: Path, run: Path | None) -> Planted:
    cfg = tmp / "study.yaml"
    cfg.mkdir()
    (cfg / "inside.yaml").write_text("data: digits\n")
    return Planted(["run", str(cfg), "--out", str(tmp / "run")], protect=[cfg])


def _no_run_folder(tmp: Path, done: subprocess.CompletedProcess[str]) -> None:
    assert not (tmp / "run").exists()


BOMB = alias_bomb()
FILE = r"study\.yaml: "
CASES = [
    # One KB of nested aliases names 9**9 values: refused while composing, before anything is
    # built, printed or walked.
    Case("alias-bomb-epochs", _config(f"epochs: {BOMB}\n"), timeout=20,
         message=FILE + r"line 1: aliases expand to over 100,000 values"),
    Case("alias-bomb-lr", _config(f"data: digits\nlr: {BOMB}\n"), timeout=20,
         message=FILE + r"line 2: aliases expand to over 100,000 values"),
    Case("alias-bomb-data", _config(f"data: {BOMB}\n"), timeout=20,
         message=FILE + r"line 1: aliases expand to over 100,000 values"),
    Case("alias-bomb-teacher", _config(f"protocol_overrides:\n  teacher: {BOMB}\n"), timeout=20,
         message=FILE + r"line 2: aliases expand to over 100,000 values"),
    Case("alias-bomb-set", _flags("--set", f"teacher={BOMB}"), timeout=20,
         message=r"--set 'teacher=\[&a0 .*\.\.\.: line 1: aliases expand to over 100,000"),
    Case("alias-in-itself", _config("epochs: &a [1, *a]\n"),
         message=FILE + r"line 1: alias \*a is used inside its own anchor"),
    Case("nested-too-deep", _config("epochs: " + "[" * 5000 + "]" * 5000 + "\n"),
         message=FILE + r"line 1: values nested deeper than 100 levels"),
    Case("too-many-values", _config("sizes: [" + ",".join(["1"] * 100_001) + "]\n"),
         timeout=60, message=FILE + r"line 1: over 100,000 values"),
    Case("big-file", _big_file, timeout=20,
         message=FILE + r"52,428,800 bytes, over the 1,048,576-byte limit for a config file.*"
                        r"LIGHTLAYERS_MAX_CONFIG_BYTES"),
    Case("size-limit-from-env", _config("data: digits\nepochs: 1\n",
                                        env={"LIGHTLAYERS_MAX_CONFIG_BYTES": "16"}),
         message=FILE + r"23 bytes, over the 16-byte limit"),
    Case("size-limit-env-unreadable", _config("data: digits\n",
                                              env={"LIGHTLAYERS_MAX_CONFIG_BYTES": "1MB"}),
         message=r"LIGHTLAYERS_MAX_CONFIG_BYTES: expected a positive number of bytes, got '1MB'"),
    Case("duplicate-key", _config("epochs: 1\ndata: digits\nepochs: 3\n"),
         message=FILE + r"epochs: set twice, lines 1 and 3; keep one$"),
    Case("duplicate-key-nested", _config(
        "data: digits\nprotocol_overrides:\n  epochs: 1\n  lr: 0.01\n  epochs: 2\n"),
        message=FILE + r"protocol_overrides\.epochs: set twice, lines 3 and 5"),
    Case("duplicate-key-augment", _config(
        "protocol_overrides: {augment: {rotate_deg: 1, rotate_deg: 2}}\n"),
        message=FILE + r"protocol_overrides\.augment\.rotate_deg: set twice, line 1, columns"),
    Case("duplicate-key-spelled-twice", _config("sizes: {1: 8, 0x1: 16}\n"),
         message=FILE + r"sizes\.0x1: set twice"),
    Case("duplicate-key-in-set", _flags("--set", "augment={scale: 0.1, scale: 0.2}"),
         message=r"--set 'augment=.*': scale: set twice, line 1, columns 2 and 14"),
    Case("lr-inf-flag", _flags("--lr", "inf"),
         message=r"config\.lr: must be a finite number, got inf$"),
    Case("lr-minus-inf-flag", _flags("--lr=-inf"),
         message=r"config\.lr: must be a finite number, got -inf$"),
    Case("lr-inf-set", _flags("--set", "lr=.inf"),
         message=r"protocol_overrides\.lr: must be a finite number, got inf$"),
    Case("lr-inf-yaml", _config("data: digits\nlr: .inf\n"),
         message=r"study\.yaml\.lr: must be a finite number, got inf$"),
    Case("lr-past-float-range", _config("data: digits\nlr: 0x" + "f" * 300 + "\n"),
         message=r"study\.yaml\.lr: must be a finite number, got inf$"),
    Case("nan-yaml", _config("data: digits\nprotocol_overrides: {weight_decay: .nan}\n"),
         message=r"protocol_overrides\.weight_decay: must be a finite number, got nan$"),
    Case("config-is-a-folder", _folder,
         message=r"config file .*study\.yaml is a folder, not a YAML file"),
    Case("long-value-quoted-short", _config("data: digits\nepochs: '" + "9" * 10_000 + "'\n"),
         message=r"study\.yaml\.epochs: expected int \| None, got '9{59}\.\.\.$"),
    Case("long-unknown-key", _config("? " + "x" * 10_000 + "\n: 1\n"),
         message=FILE + r"unknown key\(s\) x{40}\.\.\.; valid keys: "),
    Case("teacher-name-too-long", _config("protocol_overrides: {teacher: " + "t" * 5000 + "}\n"),
         message=r"protocol_overrides\.teacher: cannot be read as a run folder \(.*\), "
                 r"got 't{59}\.\.\.$"),
    Case("not-utf8", _config(b"data: \xff\xfe digits\n"),
         message=FILE + r"not a UTF-8 text file \(invalid start byte at byte 6\)"),
    Case("not-a-mapping", _config("- data\n- digits\n"),
         message=FILE + r"expected a mapping of settings at the top level"),
    Case("not-yaml", _config("data: [digits\n"),
         message=FILE + r"not valid YAML: .* \(line 2, column 1\)$"),
    # PyYAML's own constructors crash on these (IndexError, KeyError, AttributeError).
    Case("empty-int-tag", _config("data: digits\nepochs: !!int\n"),
         message=FILE + r"not valid YAML: '' is not a valid !!int \(line 2, column 9\)$"),
    Case("bad-bool-tag-in-set", _flags("--set", "class_weighting=!!bool maybe"),
         message=r"not valid YAML: 'maybe' is not a valid !!bool \(line 1, column 1\)$"),
    Case("bad-timestamp-tag", _config("data: !!timestamp soon\n"),
         message=FILE + r"not valid YAML: 'soon' is not a valid !!timestamp"),
    Case("python-tag", _config("data: !!python/object/apply:os.system ['true']\n"),
         message=FILE + r"not valid YAML: could not determine a constructor for the tag"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_hostile_config(case: Case, tmp_path: Path) -> None:
    done = run_case(dataclasses.replace(case, check=_no_run_folder), tmp_path, None)
    assert len(done.stderr) < 600, done.stderr


def test_the_limits_leave_room_for_real_configs(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Merge keys and a few aliases load; a big file loads once the limit is raised."""
    merged = tmp_path / "merged.yaml"
    merged.write_text("data: digits\nmodel_options:\n  study-light-k1: &k {l2: 0.001}\n"
                      "  study-light-k2: *k\nprotocol_overrides:\n  augment: {scale: 0.1}\n"
                      "  <<: {dropout: 0.3, label_smoothing: 0.05}\n  label_smoothing: 0.1\n")
    cfg = load_config(merged)
    assert cfg.model_options == {"study-light-k1": {"l2": 0.001},
                                 "study-light-k2": {"l2": 0.001}}
    assert cfg.protocol_overrides == {"augment": {"scale": 0.1}, "dropout": 0.3,
                                      "label_smoothing": 0.1}
    assert parse_overrides(["augment={rotate_deg: 3}", "lr=1e-4"]) == {
        "augment": {"rotate_deg": 3}, "lr": "1e-4"}
    big = tmp_path / "big.yaml"
    big.write_text("data: digits\n# " + "x" * 2**20 + "\nprotocol_overrides: {dropout: 0.2}\n")
    with pytest.raises(ConfigError, match="over the 1,048,576-byte limit"):
        load_config(big)
    monkeypatch.setenv("LIGHTLAYERS_MAX_CONFIG_BYTES", str(2**21))
    assert load_config(big).resolved_protocol().dropout == 0.2


# --- the alias bomb's cost, measured on a child of its own ------------------------------------
# An address-space cap, so that a regression fails here instead of exhausting the machine: an
# ordinary start (torch imported) reserves about 3.3 GB of address space; the bomb used to
# grow past 6 GB before printing anything.
ADDRESS_SPACE_CAP = 6 * 2**30


def _measured(argv: list[str], cwd: Path, timeout: float) -> tuple[int, str, float, int]:
    """Run the CLI with ``argv`` under the address-space cap: exit code, stderr, seconds and
    the child's own peak resident memory in KB (wait4's rusage, not that of all children)."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))

    env = {**os.environ, "COLUMNS": "80"}
    env.pop("LIGHTLAYERS_DEBUG", None)
    with tempfile.TemporaryFile("w+") as err:
        start = time.monotonic()
        proc = subprocess.Popen([*LIGHTLAYERS, *argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, preexec_fn=cap)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > timeout:
                proc.kill()
                os.wait4(proc.pid, 0)
                pytest.fail(f"{argv[:2]} still running after {timeout:.0f} s")
            time.sleep(0.05)
        seconds = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, err.read(), seconds, usage.ru_maxrss


@pytest.mark.parametrize("setting", ["epochs", "lr", "data"])
def test_alias_bomb_costs_no_more_than_an_ordinary_failing_start(setting: str,
                                                                 tmp_path: Path) -> None:
    code, err, _, ordinary = _measured(["run", str(tmp_path / "missing.yaml")], tmp_path, 60)
    assert code == 2 and "does not exist" in err, err
    cfg = tmp_path / "study.yaml"
    cfg.write_text(f"{setting}: {BOMB}\n")
    assert len(cfg.read_bytes()) < 1024
    code, err, seconds, peak = _measured(["run", str(cfg), "--out", str(tmp_path / "run")],
                                         tmp_path, 20)
    assert code == 2 and "aliases expand to over" in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert peak < 1.5 * ordinary, (peak, ordinary)
    assert seconds < 20


# --- the loader, fuzzed ------------------------------------------------------------------------
FUZZ = fuzz(150)
# Pieces that make YAML expensive, ambiguous or odd, put together at random.
_PIECES = [
    "epochs", "lr", "data", "sizes", "protocol_overrides", "augment", "teacher", "models",
    "&a", "&b", "*a", "*b", "<<", "[", "]", "{", "}", ",", ":", ": ", "- ", "\n", "\n  ",
    "'", '"', "#", "!!int", "!!float", "!!str", "!!binary", "!!python/name:os.system", "?",
    ".inf", "-.inf", ".nan", "1e999", "0x1", "1", "1.0", "~", "null", "true", "digits",
    "study-light-k1", "0x" + "f" * 2000, "9" * 5000, "\t", "\x00", "\ufeff", "\u2028",
    "%YAML 1.1\n", "---\n", "...\n", "x" * 300,
]
_TEXT = st.one_of(
    st.lists(st.sampled_from(_PIECES), max_size=40).map("".join),
    st.text(max_size=200),
    st.builds(lambda n, v: "epochs: " + "[" * n + v + "]" * n, st.integers(0, 300),
              st.sampled_from(["1", "*a", "&a x"])),
)


def _one_line_bounded(message: str, path: Path) -> None:
    assert message.strip() and len(message.splitlines()) == 1, message
    assert len(message) < 600 + len(str(path)), message


@FUZZ
@given(st.one_of(_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=200)))
def test_fuzz_config_loader(data: bytes) -> None:
    """Whatever the bytes: a StudyConfig, or a ConfigError of one short line; nothing else."""
    with tempfile.TemporaryDirectory(prefix="fuzz-config-") as d:
        path = Path(d) / "study.yaml"
        path.write_bytes(data)
        try:
            cfg = load_config(path)
        except ConfigError as e:
            _one_line_bounded(str(e), path)
        else:
            assert isinstance(cfg, StudyConfig)


@FUZZ
@given(_TEXT)
def test_fuzz_set_values(text: str) -> None:
    """A ``--set`` value: the same reader, the same one short line."""
    try:
        load_config(data="digits", protocol_overrides=parse_overrides([f"lr={text}"]) or None)
    except ConfigError as e:
        _one_line_bounded(str(e), Path("--set"))
