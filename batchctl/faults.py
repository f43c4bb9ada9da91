"""The retry and skip rules of a chunk step (`retry`, `retry_limit`, `backoff`, `skip`,
`skip_limit`), apart from the loop that applies them.

The skip limit counts over the restarts of the step: the skips already committed come from the
step's checkpoint.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from batchctl.defaults import BACKOFF_MAX
from batchctl.errors import BatchctlError, SkipLimitExceeded
from batchctl.job import ChunkSettings
from batchctl.model import SkipPhase, SkippedItem

log = logging.getLogger(__name__)


def is_fatal(exc: BaseException) -> bool:
    """batchctl's own errors (a lost update, a skip limit) are never retried nor skipped."""
    return isinstance(exc, BatchctlError)


class FaultPolicy:
    """Decides whether a failing item or write is retried, how long to wait first, and whether
    an item may be skipped."""

    def __init__(self, settings: ChunkSettings, step_name: str, committed_skips: int) -> None:
        self.settings = settings
        self.step_name = step_name
        self.committed_skips = committed_skips  # skips in committed chunks, over all executions

    def retryable(self, exc: BaseException) -> bool:
        retry = self.settings.retry
        return bool(retry) and isinstance(exc, retry) and not is_fatal(exc)

    def may_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether attempt number `attempt` (0 for the first retry) may run."""
        return self.retryable(exc) and attempt < self.settings.retry_limit

    def skippable(self, exc: BaseException) -> bool:
        skip = self.settings.skip
        return bool(skip) and isinstance(exc, skip) and not is_fatal(exc)

    def wait(self, attempt: int) -> None:
        """Sleep before retry number `attempt` (0 first): `backoff` doubled each time, or
        `backoff(retry_number)` seconds; never longer than BACKOFF_MAX."""
        backoff: Any = self.settings.backoff
        delay = backoff(attempt + 1) if callable(backoff) else backoff * (2**attempt)
        if delay > 0:
            time.sleep(min(delay, BACKOFF_MAX))

    def skip(
        self,
        skipped: list[SkippedItem],
        phase: SkipPhase,
        item: Any,
        error: BaseException,
        position: int | None,
        step_execution_id: int,
    ) -> None:
        """Add a skip of `item` to `skipped` (this chunk's skips so far), or raise `error` when
        it may not be skipped, or SkipLimitExceeded past the limit."""
        if not self.skippable(error):
            raise error
        limit = self.settings.skip_limit
        if limit is not None and self.committed_skips + len(skipped) >= limit:
            at = f" at item {position}" if position else ""
            raise SkipLimitExceeded(
                f"step {self.step_name}: skip limit {limit} exceeded by a {phase.value} error"
                f"{at}: {type(error).__name__}: {error}"
            ) from error
        skip = SkippedItem(
            step_execution_id=step_execution_id,
            phase=phase.value,
            position=position,
            item=item,
            error=error,
            step_name=self.step_name,
        )
        skipped.append(skip)
        log.warning("step %s skipped an item in %s: %s", self.step_name, phase.value, skip.error_text)
