"""Offline batch runs: resumable result files (``resume``) and a Ray Data pipeline (``ray``, optional)."""
from __future__ import annotations

from .resume import ResumeState, resume_output

__all__ = ["ResumeState", "resume_output"]
