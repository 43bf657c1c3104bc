"""Run folders and resuming: every run trains fresh in its own folder unless asked to resume, and a resume must
match the checkpoint's model and data.

Each run writes its config, metrics and checkpoints into its own logger folder (``runs/<recipe>/logs/version_N``),
so running a recipe twice, the second time with a switch changed, never reads or overwrites the first run's files.
``--ckpt_path last`` resumes the newest ``last*.ckpt`` under the recipe's run folder; the resumed part is logged
in a new version folder of its own.
"""

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch


class ResumeError(ValueError):
    """Nothing to resume, or a checkpoint that does not belong to the run being resumed."""


class DiskFullError(RuntimeError):
    """A checkpoint or a data store that could not be written for lack of disk space; what was there before is kept."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
START_FRESH = "drop --ckpt_path to start a new run"


def read_checkpoint(path: str | Path, setting: str = "--ckpt_path") -> dict:
    """The checkpoint file at ``path``, read on the CPU; a ResumeError naming ``setting`` when it is missing,
    truncated or not a checkpoint at all."""
    path = Path(path)
    if not path.is_file():
        raise ResumeError(f"{setting}: {str(path)!r} does not exist. Give an existing checkpoint file, `last` to "
                          f"resume the recipe's newest run, or {START_FRESH}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # a truncated or foreign file fails in zipfile, pickle or torch: one message for all
        first = (str(err).splitlines() or [""])[0].split(". ")[0][:160]
        raise ResumeError(f"{setting}: {str(path)!r} is not a readable checkpoint ({type(err).__name__}: {first}); "
                          f"the file is damaged or incomplete (an interrupted copy?). Give another checkpoint (an "
                          f"earlier one of the run's checkpoints/ folder), or {START_FRESH}.") from None


@contextmanager
def disk_space_for(what: str, where: str | Path, setting: str) -> Iterator[None]:
    """Turn a write that runs out of disk space (ENOSPC, EDQUOT) into one DiskFullError naming ``what`` was being
    written ``where``, and ``setting``, which moves it to another disk."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_FULL or isinstance(error, DiskFullError):
            raise
        raise DiskFullError(f"the disk is full ({error.strerror}) while writing {what} to {where}. Free "
                            f"space there, or point {setting} at a disk with room. Nothing half-written was kept: "
                            f"what was written before is intact.") from error


def flatten(value: object, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``; dataclasses count as dicts, tuples as lists."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        flat: dict[str, object] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): list(value) if isinstance(value, tuple) else value}


def differences(saved: object, now: object, prefix: str, ignore: tuple[str, ...] = ()) -> list[str]:
    """Human-readable lines, one per setting that differs between ``saved`` and ``now`` (nested dicts or
    dataclasses), each named ``prefix.key``; keys starting with an entry of ``ignore`` may differ."""
    saved, now = flatten(saved), flatten(now)
    lines = []
    for key in sorted(saved.keys() | now.keys()):
        if key.startswith(ignore) or saved.get(key, "(unset)") == now.get(key, "(unset)"):
            continue
        before, after = saved.get(key, "(unset)"), now.get(key, "(unset)")
        lines.append(f"{prefix}.{key}: {before!r} in the checkpoint, {after!r} now")
    return lines


def find_last_checkpoint(folders: list[Path]) -> Path | None:
    """The newest ``last*.ckpt`` (Lightning's ``last.ckpt``, ``last-v1.ckpt``, ...) anywhere under ``folders``."""
    found = [path for folder in folders if folder.is_dir() for path in folder.rglob("last*.ckpt")]
    return max(found, key=lambda path: path.stat().st_mtime, default=None)


def check_resume(checkpoint_path: str | Path, model: object, datamodule: object) -> None:
    """Raise ``ResumeError`` naming every model and data setting in which ``checkpoint_path`` differs from the
    run about to resume it (``model.resume_differences`` and ``datamodule.resume_differences`` say which)."""
    checkpoint = read_checkpoint(checkpoint_path)
    lines = []
    if hasattr(model, "resume_differences"):
        lines += model.resume_differences(checkpoint)
    if datamodule is not None and hasattr(datamodule, "resume_differences"):
        lines += datamodule.resume_differences(checkpoint.get(type(datamodule).__qualname__, {}))
    if lines:
        raise ResumeError(
            f"cannot resume from {checkpoint_path}: it was trained with other settings.\n  " + "\n  ".join(lines)
            + "\nResume with the checkpoint's settings, or drop --ckpt_path to train a new run with these."
        )
