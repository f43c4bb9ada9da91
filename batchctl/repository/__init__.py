"""The job repository: the only package that speaks SQL."""

from batchctl.repository.store import Decide, Repository

__all__ = ["Decide", "Repository"]
