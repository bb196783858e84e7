"""Published numbers to compare against, shipped in ``fabench/reference/``, and how to read them.

``published-results.csv`` is a verbatim copy of the project's shared reference table (test
top-1 error in percent); ``published-sources.csv`` holds the citation of every ``source`` key.
Two tables here say how each source's numbers meet fabench's, so that a comparison is like
with like:

- :data:`NAME_MAP`: a published name to the fabench rule or architecture with the same
  *mechanism*. BioTorch's ``dfa`` numbers come from its DFA layer, a random
  ``[classes, C_in, k, k]`` kernel shared across positions: fabench's ``dfa-conv``, not the dense
  ``dfa``. BioTorch's CIFAR-10 "LeNet" is its own 3x3 net: fabench's ``lenet-biotorch``; its
  MNIST LeNet is LeNet-5, which is fabench's ``lenet`` at 32 px.
- :data:`SELECTION`: which epoch's test error a source reports. BioTorch reports the test
  error of the best-validation model; on CIFAR-10 its validation split is 5k images held out
  of training (fabench's ``--val-split 5000``, metric ``test-at-best-val``), but its MNIST and
  Fashion-MNIST dataset classes use the *test* split as validation (biotorch/datasets/mnist.py),
  so those numbers are the best test epoch (fabench's ``best_top1``). The authors' public-code
  logs of Akrout et al. give the final epoch; Lance & Kieu do not say, and final is assumed
  [inf].

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

#: (source, dataset or "*", "rule"|"arch", published name) -> fabench name. Unlisted names are the same.
NAME_MAP = {
    ("biotorch-2021", "*", "rule", "dfa"): "dfa-conv",
    ("biotorch-2021", "cifar10", "arch", "lenet"): "lenet-biotorch",
    ("akrout-2019-code", "mnist", "arch", "mlp-500-sigmoid"): "mlp",
    ("akrout-2019-code", "cifar10", "arch", "mlp-1000-sigmoid"): "mlp",
    ("akrout-2019-imagenet", "*", "rule", "sign-symmetry"): "fa-usf",
}

#: runs.csv column holding the test top-1 accuracy of each selection rule.
SELECTION_COLUMNS = {"final": "final_top1", "best-test": "best_top1", "test-at-best-val": "test_top1_at_best_val"}
#: (source, dataset or "*") -> which epoch's test error the source reports (see module docstring).
SELECTION = {
    ("biotorch-2021", "cifar10"): "test-at-best-val",
    ("biotorch-2021", "*"): "best-test",
    ("lance-kieu-2026", "*"): "final",
    ("akrout-2019-code", "*"): "final",
    ("akrout-2019-imagenet", "*"): "final",
}


@dataclass(frozen=True)
class Published:
    """One published number (top-1 error, %), under fabench's names, and where it comes from."""

    source: str
    dataset: str
    arch: str
    rule: str
    optimizer: str
    value: float
    notes: str
    selection: str = "final"
    published_arch: str = ""
    published_rule: str = ""

    @property
    def renamed(self) -> str:
        """'published as dfa' (or as an arch) when the publication names it differently."""
        names = [p for p, f in ((self.published_arch, self.arch), (self.published_rule, self.rule)) if p and p != f]
        return f"published as {'/'.join(names)}" if names else ""


def fabench_name(source: str, dataset: str, kind: str, name: str) -> str:
    """The fabench rule or arch with the same mechanism as ``name`` in ``source`` (see NAME_MAP)."""
    return NAME_MAP.get((source, dataset, kind, name)) or NAME_MAP.get((source, "*", kind, name)) or name


def selection_of(source: str, dataset: str) -> str:
    """Which epoch's test error ``source`` reports on ``dataset`` (see SELECTION)."""
    return SELECTION.get((source, dataset)) or SELECTION.get((source, "*"), "final")


def _reference_text(name: str) -> str:
    """A file shipped in ``fabench/reference/``, as text."""
    return (resources.files("fabench") / "reference" / name).read_text(encoding="utf-8")


def load_published() -> list[Published]:
    """All rows of the shipped published-results.csv, under fabench's names."""
    rows = csv.DictReader(_reference_text("published-results.csv").splitlines())
    return [
        Published(r["source"], r["dataset"], fabench_name(r["source"], r["dataset"], "arch", r["arch"]),
                  fabench_name(r["source"], r["dataset"], "rule", r["rule"]), r["optimizer"], float(r["value"]),
                  r["notes"], selection_of(r["source"], r["dataset"]), r["arch"], r["rule"])
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
        return exact[0], exact[0].renamed
    if len({p.optimizer for p in same}) == 1:
        note = f"published with {same[0].optimizer}"
        return same[0], "; ".join(filter(None, [note, same[0].renamed]))
    return None, ""
