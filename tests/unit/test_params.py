"""Job params: conversion of declared params from their JSON form, and the instance key."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from batchctl.errors import InvalidParams, JobDefinitionError
from batchctl.job import Job
from batchctl.model import Param, canonical_json, convert_params, instance_key, params_to_json


def key(job: Job, given: dict) -> str:
    return instance_key(job.convert_params(given))


@pytest.fixture
def job() -> Job:
    return Job(
        "typed",
        params={
            "n": int,
            "rate": Param(float, default=1.5),
            "flag": Param(bool, default=False),
            "day": Param(date, default=date(2024, 1, 1)),
            "at": Param(datetime, default=None),
            "name": Param(str, default="x"),
        },
    )


def test_a_string_int_and_an_int_make_the_same_instance_key(job: Job) -> None:
    assert key(job, {"n": "5"}) == key(job, {"n": 5})


def test_key_order_does_not_change_the_instance_key(job: Job) -> None:
    assert key(job, {"n": 1, "name": "a"}) == key(job, {"name": "a", "n": 1})


def test_a_different_value_makes_a_different_instance_key(job: Job) -> None:
    assert key(job, {"n": 5}) != key(job, {"n": 6})


def test_the_instance_key_is_the_sha256_of_the_canonical_json(job: Job) -> None:
    import hashlib

    converted = job.convert_params({"n": "5", "day": "2024-01-31"})
    expected = hashlib.sha256(canonical_json(converted).encode()).hexdigest()
    assert instance_key(converted) == expected
    assert len(instance_key(converted)) == 64


def test_dates_are_canonical_iso_in_the_key(job: Job) -> None:
    converted = job.convert_params({"n": 1, "day": "2024-01-31"})
    assert converted["day"] == date(2024, 1, 31)
    assert '"day":"2024-01-31"' in canonical_json(converted)
    assert key(job, {"n": 1, "day": "2024-01-31"}) == instance_key(
        {**converted, "day": date(2024, 1, 31)}
    )


def test_canonical_json_has_sorted_keys_and_no_whitespace() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


def test_datetimes_in_z_and_offset_form_are_the_same_instance(job: Job) -> None:
    assert key(job, {"n": 1, "at": "2024-01-31T10:00:00Z"}) == key(
        job, {"n": 1, "at": "2024-01-31T10:00:00+00:00"}
    )


def test_declared_params_arrive_typed(job: Job) -> None:
    converted = job.convert_params(
        {"n": "7", "rate": "2.5", "flag": "true", "day": "2024-02-29", "at": "2024-01-31T10:00:00+00:00"}
    )
    assert converted == {
        "n": 7,
        "rate": 2.5,
        "flag": True,
        "day": date(2024, 2, 29),
        "at": datetime(2024, 1, 31, 10, tzinfo=timezone.utc),
        "name": "x",
    }


def test_optional_params_take_their_default(job: Job) -> None:
    converted = job.convert_params({"n": 1})
    assert converted["rate"] == 1.5
    assert converted["flag"] is False
    assert converted["day"] == date(2024, 1, 1)


def test_undeclared_params_are_kept_as_given(job: Job) -> None:
    converted = job.convert_params({"n": 1, "extra": "5", "nested": {"a": [1]}})
    assert converted["extra"] == "5"
    assert converted["nested"] == {"a": [1]}


def test_an_undeclared_string_and_int_are_different_instances(job: Job) -> None:
    assert key(job, {"n": 1, "extra": "5"}) != key(job, {"n": 1, "extra": 5})


def test_params_to_json_gives_dates_as_iso_strings(job: Job) -> None:
    stored = params_to_json(job.convert_params({"n": 1, "day": "2024-01-31"}))
    assert stored["day"] == "2024-01-31"
    assert job.convert_params(stored) == job.convert_params({"n": 1, "day": "2024-01-31"})


def test_a_missing_param_is_an_error_naming_it(job: Job) -> None:
    with pytest.raises(InvalidParams, match=r"missing param 'n'"):
        job.convert_params({})


def test_a_null_required_param_counts_as_missing(job: Job) -> None:
    with pytest.raises(InvalidParams, match=r"'n'"):
        job.convert_params({"n": None})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n", "five"),
        ("n", "5.0"),
        ("n", 5.5),
        ("n", True),
        ("n", " 5"),
        ("rate", "fast"),
        ("rate", "nan"),
        ("flag", "yes"),
        ("flag", 1),
        ("day", "2024-02-30"),
        ("day", "2024-01-31T10:00:00"),
        ("at", "2024-01-31"),
        ("name", 5),
    ],
)
def test_an_ill_typed_param_is_an_error_naming_it(job: Job, name: str, value: object) -> None:
    given = {"n": 1, name: value}
    with pytest.raises(InvalidParams, match=rf"param '{name}' must be"):
        job.convert_params(given)


def test_params_that_are_not_an_object_are_refused() -> None:
    with pytest.raises(InvalidParams, match="JSON object"):
        convert_params({}, ["a"])  # type: ignore[arg-type]


def test_an_unsupported_param_type_is_a_definition_error_naming_the_param() -> None:
    with pytest.raises(JobDefinitionError, match="'items'"):
        Job("bad-param-type", params={"items": list})
