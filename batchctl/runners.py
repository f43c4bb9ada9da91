"""The runner of each kind of step: the tasklet runner here, the chunk loop in batchctl.chunk,
and the table from a step's kind to its runner.

A new kind of step is a StepKind, a StepRunner subclass and one entry in RUNNERS.
"""

from __future__ import annotations

import copy

from batchctl.chunk import ChunkRunner
from batchctl.job import Step, StepKind
from batchctl.model import Status
from batchctl.steps import StepRunner


class TaskletRunner(StepRunner):
    """Runs one tasklet step; a generator tasklet checkpoints `ctx.state` at every yield."""

    def execute(self) -> Status:
        tasklet = self.step.tasklet
        assert tasklet is not None, "a tasklet step needs its function"
        if not self.step.is_generator:
            tasklet(self.ctx)
            return Status.COMPLETED
        generator = tasklet(self.ctx)
        try:
            for _ in generator:
                self._checkpoint()
                if self.ctx.stop_requested:
                    return Status.STOPPED
        finally:
            generator.close()
        return Status.COMPLETED

    def _checkpoint(self) -> None:
        self.step_execution = self.repository.update_step_execution(
            self.step_execution,
            context=copy.deepcopy(self.ctx.state),
            commit_count=self.step_execution.commit_count + 1,
        )
        self.observers.step_checkpoint(self.step_execution)


RUNNERS: dict[StepKind, type[StepRunner]] = {
    StepKind.TASKLET: TaskletRunner,
    StepKind.CHUNK: ChunkRunner,
}


def runner_for(step: Step) -> type[StepRunner]:
    """The runner of one step execution of `step` (a whole step, or one of its partitions)."""
    return RUNNERS[step.kind]
