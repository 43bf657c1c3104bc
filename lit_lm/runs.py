"""Run folders and resuming: every run trains fresh in its own folder unless asked to resume, and a resume must
match the checkpoint's model and data.

Each run writes its config, metrics and checkpoints into its own logger folder (``runs/<recipe>/logs/version_N``),
so running a recipe twice, the second time with a switch changed, never reads or overwrites the first run's files.
``--ckpt_path last`` resumes the newest ``last*.ckpt`` under the recipe's run folder; the resumed part is logged
in a new version folder of its own.
"""

from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch


class ResumeError(ValueError):
    """Nothing to resume, or a checkpoint that does not belong to the run being resumed."""


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
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False, mmap=True)
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
