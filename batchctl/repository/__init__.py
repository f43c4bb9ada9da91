"""The job repository: the only package that speaks SQL."""

from batchctl.repository.store import Decide, Fence, Repository

__all__ = ["Decide", "Fence", "Repository"]
