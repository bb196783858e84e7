"""Published numbers to compare against, shipped in ``fabench/reference/``.

``published-results.csv`` (copied from the project's shared reference folder) holds test top-1
error in percent; ``published-sources.csv`` holds the full citation of every ``source`` key.
A measured group is matched on dataset, architecture, rule and optimizer; when the optimizer
differs but the publication has a single number for that dataset/arch/rule, that number is
shown with a note. Dataset names of fabench samples (``cifar10-mini``) match the full dataset
they sample (``cifar10``), with the caveat printed beside the table.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from importlib import resources

#: The only metric the published table holds.
PUBLISHED_METRIC = "test_top1_err_pct"


@dataclass(frozen=True)
class Published:
    """One published number (top-1 error, %) and where it comes from."""

    source: str
    dataset: str
    arch: str
    rule: str
    optimizer: str
    value: float
    notes: str


def _reference_text(name: str) -> str:
    """A file shipped in ``fabench/reference/``, as text."""
    return (resources.files("fabench") / "reference" / name).read_text(encoding="utf-8")


def load_published() -> list[Published]:
    """All rows of the shipped published-results.csv."""
    rows = csv.DictReader(_reference_text("published-results.csv").splitlines())
    return [
        Published(r["source"], r["dataset"], r["arch"], r["rule"], r["optimizer"], float(r["value"]), r["notes"])
        for r in rows
        if r["metric"] == PUBLISHED_METRIC
    ]


def load_sources() -> dict[str, str]:
    """Citation text for each source key."""
    rows = csv.DictReader(_reference_text("published-sources.csv").splitlines())
    return {r["source"]: f"{r['citation']} ({r['url']})" for r in rows}


def base_dataset(name: str) -> str:
    """The published dataset a fabench dataset samples: ``cifar10-mini`` -> ``cifar10``."""
    return re.sub(r"-(mini|sample|subset)$", "", name)


def base_arch(name: str) -> str:
    """An architecture name without its source prefix: ``timm:resnet18`` -> ``resnet18``."""
    return name.split(":", 1)[1] if ":" in name else name


def match_published(published: list[Published], dataset: str, arch: str, rule: str, optimizer: str) -> tuple[Published | None, str]:
    """The published number for a measured group, and a note when the match is not exact."""
    same = [p for p in published if p.dataset == base_dataset(dataset) and p.arch == base_arch(arch) and p.rule == rule]
    exact = [p for p in same if p.optimizer == optimizer]
    if exact:
        return exact[0], ""
    if len({p.optimizer for p in same}) == 1:
        return same[0], f"published with {same[0].optimizer}"
    return None, ""
