"""The fine-tuning suite: ``python -m lit_lm.glue --checkpoint CKPT --tasks sst2,cola,mrpc --out DIR``."""

from lit_lm.glue.results import Results, TaskResult
from lit_lm.glue.suite import Column, SuiteError, run_suite

__all__ = ["run_suite", "Results", "TaskResult", "Column", "SuiteError"]
