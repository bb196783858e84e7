"""Alignment diagnostics: why a rule learns or fails, layer by layer.

Public surface::

    parse_diagnostics("off" | "epoch" | "N") -> DiagnosticsSchedule   # or FabenchError
    probe_hook(config) -> ProbeHook | None      # the training loop's hook (fabench.train.hooks)
    run_hooks(config) -> [hook]                 # what fabench.train.run(config, hooks=...) gets
    measure(model, handle, images, labels) -> [LayerDiagnostics]      # one probe, standalone
    probe_batch(run_data) -> (images, labels)   # the first PROBE_IMAGES test images
    diagnose_checkpoint(run_dir) -> (progress, [LayerDiagnostics])    # from last.pt
    METRICS: {metric name: meaning}

See :mod:`fabench.diagnostics.probe` for what is measured and how the probe leaves training
untouched, :mod:`fabench.diagnostics.hook` for the rows written to curves.csv. Torch is
imported when these are first used, so :func:`parse_diagnostics` stays light enough for
config validation.
"""

from __future__ import annotations

from fabench._lazy import lazy_getattr

_EXPORTS = {
    "parse_diagnostics": "fabench.train.schedule",
    "DiagnosticsSchedule": "fabench.train.schedule",
    "run_hooks": "fabench.diagnostics.hook",
    "ProbeHook": "fabench.diagnostics.hook",
    "probe_hook": "fabench.diagnostics.hook",
    "log_diagnostics": "fabench.diagnostics.hook",
    "measure": "fabench.diagnostics.probe",
    "probe_batch": "fabench.diagnostics.probe",
    "LayerDiagnostics": "fabench.diagnostics.probe",
    "METRICS": "fabench.diagnostics.probe",
    "PROBE_IMAGES": "fabench.diagnostics.probe",
    "PROBE_SPLIT": "fabench.diagnostics.probe",
    "diagnose_checkpoint": "fabench.diagnostics.replay",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
