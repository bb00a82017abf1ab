"""The result type of a feature check (`tirl doctor`): each part's ``health.checks()``
returns a list of :class:`Check`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Check:
    feature: str
    ok: bool
    detail: str = ""
