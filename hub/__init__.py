"""Release tooling: turn a trained checkpoint into a zoo entry and publish it on the Hugging Face hub.

Run from a checkout::

    python -m hub export runs/fima_ucf101/checkpoint_0199.pth --model r2plus1d_18 --tag fima_ucf101 \\
        --out release/r2plus1d_18.fima_ucf101 --results runs/fima_ucf101/results.json
    python -m hub publish release/r2plus1d_18.fima_ucf101 --repo-id fima-models/r2plus1d_18.fima_ucf101 --dry-run

The package uses only the public API of :mod:`fima_models`; docs/release.md describes the procedure.
"""
from hub.card import evaluation_section, load_results, metrics_from_results, recipe_section
from hub.export import MANIFEST_NAME, ExportResult, export_checkpoint, write_manifest
from hub.publish import ExportValidationError, PublishPlan, publish, validate_export

__all__ = [
    'export_checkpoint', 'ExportResult', 'write_manifest', 'MANIFEST_NAME',
    'publish', 'validate_export', 'PublishPlan', 'ExportValidationError',
    'recipe_section', 'evaluation_section', 'load_results', 'metrics_from_results',
]
