"""batchctl: batch jobs for Python, recorded in a job repository, restartable where they failed.

The public API is imported lazily, so that `batchctl --help` does not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchctl.errors import BatchctlError
    from batchctl.job import Job, StepContext
    from batchctl.model import JobExecution, JobInstance, Param, Status, StepExecution
    from batchctl.operator import Batch

__all__ = [
    "Batch",
    "BatchctlError",
    "Job",
    "JobExecution",
    "JobInstance",
    "Param",
    "Status",
    "StepContext",
    "StepExecution",
]

_HOMES = {
    "Batch": "batchctl.operator",
    "BatchctlError": "batchctl.errors",
    "Job": "batchctl.job",
    "StepContext": "batchctl.job",
    "JobExecution": "batchctl.model",
    "JobInstance": "batchctl.model",
    "Param": "batchctl.model",
    "Status": "batchctl.model",
    "StepExecution": "batchctl.model",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'batchctl' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)
