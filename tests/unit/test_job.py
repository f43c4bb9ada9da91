"""Authoring: Job, its steps and its listeners."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from batchctl import Job, StepContext
from batchctl.errors import JobDefinitionError
from batchctl.job import listener_calls


@pytest.mark.parametrize("name", ["1", "42", "0007"])
def test_a_job_name_made_only_of_digits_is_refused(name: str) -> None:
    with pytest.raises(JobDefinitionError, match="only of digits"):
        Job(name)


@pytest.mark.parametrize("name", ["", "has space", "semi;colon", "-dash-first", "eod\n", "eod\r\n"])
def test_an_invalid_job_name_is_refused(name: str) -> None:
    with pytest.raises(JobDefinitionError, match="invalid job name"):
        Job(name)


@pytest.mark.parametrize("name", ["eod", "eod2", "2eod", "billing.monthly", "a:b-c_d"])
def test_names_with_letters_are_accepted(name: str) -> None:
    assert Job(name).name == name


def test_a_job_records_where_it_was_defined() -> None:
    job = Job("located")
    assert job.defined_in.startswith(__file__ + ":")


def test_steps_are_kept_in_declaration_order_and_named_after_their_function() -> None:
    job = Job("ordered")

    @job.tasklet
    def first(ctx: StepContext) -> None: ...

    @job.tasklet
    def second(ctx: StepContext) -> None: ...

    @job.tasklet(name="third-step")
    def anything(ctx: StepContext) -> None: ...

    assert [step.name for step in job.steps] == ["first", "second", "third-step"]


def test_the_tasklet_decorator_returns_the_function() -> None:
    job = Job("returns")

    def plain(ctx: StepContext) -> None: ...

    assert job.tasklet(plain) is plain


def test_a_duplicate_step_name_is_refused() -> None:
    job = Job("dup-steps")

    @job.tasklet
    def load(ctx: StepContext) -> None: ...

    with pytest.raises(JobDefinitionError, match="duplicate step name 'load'"):

        @job.tasklet(name="load")
        def other(ctx: StepContext) -> None: ...


@pytest.mark.parametrize("name", ["no spaces", "load\n"])
def test_an_invalid_step_name_is_refused(name: str) -> None:
    """A final newline too: `$` in a regex matches before it, the name check must not."""
    job = Job("bad-step")
    with pytest.raises(JobDefinitionError, match="invalid step name"):
        job.tasklet(lambda ctx: None, name=name)


def test_a_generator_tasklet_is_recognised() -> None:
    job = Job("gen")

    @job.tasklet
    def plain(ctx: StepContext) -> None: ...

    @job.tasklet
    def checkpointed(ctx: StepContext) -> Iterator[None]:
        yield

    assert [step.is_generator for step in job.steps] == [False, True]


def test_a_steps_description_is_the_first_line_of_its_docstring() -> None:
    job = Job("described")

    @job.tasklet
    def documented(ctx: StepContext) -> None:
        """Load the entries.

        More detail.
        """

    assert job.step("documented").description == "Load the entries."


def test_asking_for_an_unknown_step_is_an_error() -> None:
    with pytest.raises(JobDefinitionError, match="no step 'missing'"):
        Job("no-such-step").step("missing")


def test_listener_decorators_return_the_function_and_register_it() -> None:
    job = Job("listened")

    def before(execution: Any) -> None: ...

    assert job.before_job(before) is before
    assert listener_calls(job.listeners, "before_job") == [before]


def test_a_listener_object_provides_any_of_the_methods() -> None:
    class OnlyAfterStep:
        def after_step(self, ctx: Any, step: Any) -> None: ...

    job = Job("object-listener")
    listener = OnlyAfterStep()
    assert job.listener(listener) is listener
    assert listener_calls(job.listeners, "after_step") == [listener.after_step]
    assert listener_calls(job.listeners, "before_job") == []


def test_listener_objects_can_be_given_to_the_job() -> None:
    class Audit:
        def before_job(self, execution: Any) -> None: ...

    audit = Audit()
    job = Job("given-listener", listeners=[audit])
    assert listener_calls(job.listeners, "before_job") == [audit.before_job]


def test_a_listener_object_without_listener_methods_is_refused() -> None:
    with pytest.raises(JobDefinitionError, match="a listener needs one of"):
        Job("useless-listener").listener(object())


def test_before_listeners_run_in_declaration_order_and_after_listeners_in_reverse() -> None:
    job = Job("order")

    class Outer:
        def before_step(self, ctx: Any) -> None: ...

        def after_step(self, ctx: Any, step: Any) -> None: ...

    outer = job.listener(Outer())

    @job.before_step
    def inner_before(ctx: Any) -> None: ...

    @job.after_step
    def inner_after(ctx: Any, step: Any) -> None: ...

    assert listener_calls(job.listeners, "before_step") == [outer.before_step, inner_before]
    assert listener_calls(job.listeners, "after_step") == [inner_after, outer.after_step]


def test_the_public_api_is_importable_from_the_package() -> None:
    import batchctl

    for name in batchctl.__all__:
        assert getattr(batchctl, name) is not None
    with pytest.raises(AttributeError):
        batchctl.NoSuchThing  # noqa: B018


def test_a_listener_method_with_a_typo_is_refused_naming_the_method_meant() -> None:
    class Audit:
        def before_jobs(self, execution):  # a typo: never called
            pass

        def after_step(self, ctx, step):
            pass

    with pytest.raises(JobDefinitionError, match=r"Audit.before_jobs is not a listener method \(did you mean before_job\?\)"):
        Job("audited", listeners=[Audit()])
    with pytest.raises(JobDefinitionError, match="before_jobs"):
        Job("audited").listener(Audit())


def test_ctx_engine_is_a_deprecated_alias_of_ctx_database() -> None:
    import threading

    from batchctl.job import StepContext

    ctx = StepContext(job_name="j", step_name="s", params={}, state={}, job_context={},
                      execution_id=1, step_execution_id=1, stop_event=threading.Event(),
                      database="the engine")
    with pytest.warns(DeprecationWarning, match="ctx.database"):
        assert ctx.engine == "the engine"


def test_steps_know_their_kind_and_partitioned_steps_their_mode() -> None:
    from batchctl.job import PartitionMode, StepKind

    job = Job("kinds")
    job.tasklet(lambda ctx: None, name="plain")
    job.tasklet(lambda ctx: None, name="split", partitioner=lambda ctx: [{}], mode="thread")
    plain, split = job.steps
    assert plain.kind is StepKind.TASKLET and plain.partitions is None
    assert split.partitions is not None and split.partitions.mode is PartitionMode.THREAD
