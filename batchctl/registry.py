"""Finds `Job` objects: the modules and packages of the jobs directory, and entry points.

A module that fails to import, or two jobs with one name, become load problems with a file and
line; they make only the jobs concerned unusable, never the commands that do not need them.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from batchctl.errors import JobDefinitionError, UnknownJob
from batchctl.job import Job

ENTRY_POINT_GROUP = "batchctl.jobs"
MODULE_PREFIX = "batchctl_jobs"  # job modules are imported as batchctl_jobs.<file stem>


@dataclass(frozen=True)
class LoadProblem:
    """Why a job module (or entry point) gave no usable job."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Registry:
    """The jobs found in one jobs directory plus the installed entry points."""

    jobs: dict[str, Job] = field(default_factory=dict)
    problems: list[LoadProblem] = field(default_factory=list)
    _duplicates: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def discover(cls, jobs_dir: Path, *, entry_points: bool = True) -> Registry:
        registry = cls()
        for where, found in _from_directory(jobs_dir, registry.problems):
            registry._add(where, found)
        if entry_points:
            for where, found in _from_entry_points(registry.problems):
                registry._add(where, found)
        return registry

    def get(self, name: str) -> Job:
        """The job called `name`; a clear error if it is unknown, duplicated or broken."""
        if name in self._duplicates:
            places = " and ".join(self._duplicates[name])
            raise JobDefinitionError(f"job name {name!r} is defined twice: {places}")
        job = self.jobs.get(name)
        if job is not None:
            return job
        message = f"unknown job {name!r}"
        if self.jobs:
            message += f" (known jobs: {', '.join(sorted(self.jobs))})"
        if self.problems:
            message += f"; {len(self.problems)} job module(s) failed to load: {self.problems[0]}"
        raise UnknownJob(message)

    def _add(self, where: str, found: Iterable[Job]) -> None:
        for job in found:
            existing = self.jobs.get(job.name)
            if existing is job:
                continue
            if existing is not None or job.name in self._duplicates:
                places = self._duplicates.setdefault(job.name, [existing.defined_in] if existing else [])
                places.append(job.defined_in or where)
                self.jobs.pop(job.name, None)
                self.problems.append(
                    LoadProblem(job.defined_in or where, f"duplicate job name {job.name!r}")
                )
                continue
            self.jobs[job.name] = job


def _from_directory(jobs_dir: Path, problems: list[LoadProblem]) -> Iterable[tuple[str, list[Job]]]:
    if not jobs_dir.is_dir():
        return
    _ensure_parent_package(jobs_dir)
    for path in sorted(jobs_dir.iterdir()):
        if path.name.startswith(("_", ".")):
            continue
        if path.is_dir() and (path / "__init__.py").is_file():
            module_file = path / "__init__.py"
        elif path.is_file() and path.suffix == ".py":
            module_file = path
        else:
            continue
        module = _import(path.stem if path.is_file() else path.name, module_file, problems)
        if module is not None:
            yield str(module_file), _jobs_in(module)


def _ensure_parent_package(jobs_dir: Path) -> None:
    """Make `batchctl_jobs` a package over the jobs directory, for imports between job modules."""
    package = sys.modules.get(MODULE_PREFIX)
    if package is None:
        package = types.ModuleType(MODULE_PREFIX)
        package.__path__ = []
        sys.modules[MODULE_PREFIX] = package
    folder = str(jobs_dir.resolve())
    if folder not in package.__path__:
        package.__path__.append(folder)
    if folder not in sys.path:
        sys.path.append(folder)


def _import(stem: str, module_file: Path, problems: list[LoadProblem]) -> types.ModuleType | None:
    name = f"{MODULE_PREFIX}.{stem}"
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(module_file):
        return loaded
    is_package = module_file.name == "__init__.py"
    spec = importlib.util.spec_from_file_location(
        name,
        module_file,
        submodule_search_locations=[str(module_file.parent)] if is_package else None,
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a module that exits is a problem of its own only
        del sys.modules[name]
        problems.append(LoadProblem(_where(exc, module_file), _describe(exc)))
        return None
    return module


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"the module called sys.exit({exc.code!r}) while loading"
    return f"{type(exc).__name__}: {exc}"


def _where(exc: BaseException, module_file: Path) -> str:
    """file:line of the failure, as close to the job module's own code as the traceback goes."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    folder = str(module_file.parent.resolve())
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [frame for frame in frames if str(Path(frame.filename).resolve()).startswith(folder)]
    candidates = inside or list(frames)
    if not candidates:
        return str(module_file)
    frame = candidates[-1]
    return f"{frame.filename}:{frame.lineno}"


def _jobs_in(module: Any) -> list[Job]:
    return [value for value in vars(module).values() if isinstance(value, Job)]


def _from_entry_points(problems: list[LoadProblem]) -> Iterable[tuple[str, list[Job]]]:
    from importlib.metadata import entry_points

    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {entry_point.name} = {entry_point.value}"
        try:
            loaded = entry_point.load()
        except (Exception, SystemExit) as exc:
            problems.append(LoadProblem(where, _describe(exc)))
            continue
        yield where, [loaded] if isinstance(loaded, Job) else _jobs_in(loaded)
