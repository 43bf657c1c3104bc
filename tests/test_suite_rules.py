"""Rules the suite keeps so that it passes or fails for the same reasons on every machine: no test reads the wall
clock or sleeps (budgets run on a fake or frozen clock, or a step or token count), an end-to-end run is marked
``slow``, and a missing package of the dev extra fails instead of skipping."""

import re
import subprocess
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT, fail_instead_of_skipping

CLOCK = re.compile(r"time\.time\(|(?<!def )perf_counter\(|\bsleep\(|time\.monotonic\(|--trainer\.max_time[=\"', ]+\d\d:\d\d:\d\d:\d\d")
"""Reading the wall clock, sleeping, or a ``--trainer.max_time DD:HH:MM:SS`` budget given to a run. (In the tests'
own process Lightning's budget clock is frozen, ``conftest.FrozenClock``, so such a budget ends a run only on a
``FakeClock`` the test moves; a process a test starts has the real clock.)"""

ALLOWED = {
    ("tests/ablate/test_runner.py", "deadline = time.monotonic() + 600"):
        "waits for the ablation's run to reach its pause before sending Ctrl-C; the deadline only stops a hang",
    ("tests/ablate/test_runner.py", "assert runner.poll() is None and time.monotonic() < deadline"):
        "the same wait: fails only if the run never gets there",
    ("tests/ablate/test_runner.py", "time.sleep(0.2)"): "the same wait, polling",
    ("tests/ablate/pause.py", "deadline = time.monotonic() + self.limit"):
        "holds a run at a step until the test has sent Ctrl-C; the limit only stops a hang",
    ("tests/ablate/pause.py", "while time.monotonic() < deadline:"): "the same pause",
    ("tests/ablate/pause.py", "time.sleep(0.05)"): "the same pause, polling",
    ("tests/ablate/test_runner.py", '"--trainer.max_time=00:00:00:00", "--trainer.callbacks+=tests.ablate.pause'):
        "a zero budget that would end each run at its first step unless --steps lifts it: what the test checks",
    ("tests/ablate/test_runner.py", 'assert minutes.train_words() == ["--trainer.max_time=00:00:01:30"]'):
        "the words a --minutes budget gives train.py, compared as text; nothing runs",
    ("tests/ablate/test_runner.py", 'resolved_config(QUICKSTART, "--trainer.max_time=00:00:00:01"'):
        "a config parsed, not run: --steps must lift a recipe's max_time",
    ("tests/callbacks/test_budget_fit.py", '"--trainer.max_time", "00:00:10:00"'):
        "a time budget on a FakeClock that moves 1 s a micro-batch; the run ends at a step limit",
    ("tests/callbacks/test_heldout.py", '"--trainer.max_time=00:00:00:03"'):
        "a 3 s budget on a FakeClock that moves 0.25 s a micro-batch",
}
"""Each allowed line (file, the line's text) with the reason it cannot make a test depend on the machine's speed."""


def clock_lines() -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        if relative == "tests/test_suite_rules.py":
            continue
        for line in path.read_text().splitlines():
            if CLOCK.search(line):
                found.append((relative, line.strip()))
    return found


def test_no_test_reads_the_clock_or_sleeps_except_the_named_lines():
    found = clock_lines()
    unexplained = [f"{path}: {line}" for path, line in found
                   if not any(path == allowed_path and text in line for allowed_path, text in ALLOWED)]
    assert not unexplained, ("these lines read the wall clock, sleep or set a real time budget; use "
                             "tests/callbacks/helpers.py FakeClock or a step budget, or name the line in ALLOWED with "
                             "its reason:\n" + "\n".join(unexplained))
    stale = [key for key in ALLOWED if not any(path == key[0] and key[1] in line for path, line in found)]
    assert not stale, f"ALLOWED names lines that no longer exist: {stale}"


def test_the_rule_sees_each_kind_of_clock():
    for line in ("start = time.time()", "t = time.perf_counter()", "time.sleep(1)", "now = time.monotonic()",
                 '"--trainer.max_time=00:00:00:03"'):
        assert CLOCK.search(line), line
    assert not CLOCK.search('"--trainer.max_time", "null"') and not CLOCK.search('"max_time": "00:00:04:30"')
    assert not CLOCK.search("    def perf_counter(self) -> float:")  # a fake clock's method


def test_an_unmarked_test_that_starts_a_process_fails():
    with pytest.raises(pytest.fail.Exception, match="starts a process: mark it @pytest.mark.slow"):
        subprocess.run(["true"])


def test_an_unmarked_test_that_trains_through_train_py_fails():
    from lit_lm.cli import Trainer

    with pytest.raises(pytest.fail.Exception, match=r"runs train.py's Trainer.fit: mark it @pytest.mark.slow"):
        Trainer(accelerator="cpu", logger=False).fit(None)


@pytest.mark.slow
def test_a_marked_test_may_start_a_process():
    assert subprocess.run(["true"]).returncode == 0


def test_a_missing_dev_package_fails_instead_of_skipping():
    skipped = SimpleNamespace(skipped=True, outcome="skipped",
                              longrepr=("x.py", 3, "Skipped: could not import 'moto.server': No module named 'moto'"))
    fail_instead_of_skipping(skipped)
    assert skipped.outcome == "failed"
    assert "could not import 'moto.server'" in skipped.longrepr and "pip install -e '.[dev]'" in skipped.longrepr
    no_shared_data = SimpleNamespace(skipped=True, outcome="skipped",
                                     longrepr=("x.py", 3, "Skipped: ../shared/data/gutenberg is absent: ..."))
    fail_instead_of_skipping(no_shared_data)
    assert no_shared_data.outcome == "skipped"  # only ../shared/data and a GPU may be missing


def test_every_dev_package_the_tests_import_is_in_the_dev_extra():
    """``pytest.importorskip`` names in the tests are packages of the dev extra (so a missing one is an install
    mistake, never a reason to skip)."""
    import tomllib

    dev = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"])
    distribution = {"moto.server": "moto", "transformers.models.t5.modeling_t5": "transformers",
                    "pytorch_optimizer": "pytorch-optimizer"}
    names = {m for path in (ROOT / "tests").rglob("*.py")
             for m in re.findall(r"importorskip\(\"([\w.]+)\"\)", path.read_text())}
    assert names
    missing = sorted(n for n in names if distribution.get(n, n) not in dev and n not in ("wandb", "matplotlib"))
    assert not missing, f"the tests import {missing}, which the dev extra does not install"


def test_the_frozen_budget_clock_never_moves():
    import lightning.pytorch.callbacks.timer as timer

    assert timer.time.monotonic() == timer.time.monotonic() == 1000.0
