"""Export a trained checkpoint into a zoo entry folder, ready for ``python -m hub publish``.

The folder holds what :func:`fima_models.convert.convert_checkpoint` writes (``model.safetensors``,
``config.json``, ``README.md``), with a model card that also states the pretraining recipe (from the
checkpoint's training config) and the evaluation results, plus a ``SHA256SUMS`` manifest of every
file. Like the converter, it is assembled beside the destination and renamed into place.
"""
import argparse
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

from fima_models._utils import atomic_write_text
from fima_models.convert import ConversionResult, convert_checkpoint
from fima_models.models import hub_id

from hub.card import evaluation_section, load_results, recipe_section

__all__ = ['MANIFEST_NAME', 'ExportResult', 'export_checkpoint', 'write_manifest', 'sha256_file', 'read_manifest']

MANIFEST_NAME = 'SHA256SUMS'


@dataclass
class ExportResult:
    """An exported zoo entry.

    Attributes:
        out_dir: The folder.
        name: ``arch.tag``.
        repo_id: Hub repo it is meant for.
        conversion: The underlying conversion (kept/dropped keys, config).
        metrics: Evaluation results recorded in ``config.json`` and the card.
        manifest: ``{file name: sha256}``.
    """
    out_dir: Path
    name: str
    repo_id: str
    conversion: ConversionResult
    metrics: Dict[str, float] = field(default_factory=dict)
    manifest: Dict[str, str] = field(default_factory=dict)


def sha256_file(path: Union[str, Path]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Union[str, Path]) -> Dict[str, str]:
    """Write ``folder/SHA256SUMS`` (``sha256sum -c`` format) over every other regular file.

    Returns:
        ``{file name: sha256}``.
    """
    folder = Path(folder)
    digests = {p.name: sha256_file(p) for p in sorted(folder.iterdir())
               if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith('.')}
    atomic_write_text(folder / MANIFEST_NAME, ''.join(f'{d}  {n}\n' for n, d in digests.items()))
    return digests


def read_manifest(folder: Union[str, Path]) -> Dict[str, str]:
    """Parse ``folder/SHA256SUMS`` into ``{file name: sha256}``.

    Raises:
        FileNotFoundError: No manifest.
        ValueError: A malformed line.
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f'{path} is missing; create the folder with `python -m hub export`.')
    out: Dict[str, str] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        digest, sep, name = line.partition('  ')
        if not sep or len(digest) != 64 or not name:
            raise ValueError(f'{path}:{i} is not a `sha256sum` line: {line!r}.')
        out[name] = digest
    return out


def export_checkpoint(
        checkpoint: Union[str, os.PathLike],
        model_name: str,
        tag: str,
        out_dir: Union[str, os.PathLike],
        results: Union[str, os.PathLike, None] = None,
        repo_id: Optional[str] = None,
        keep_head: bool = False,
        pretrained_cfg: Optional[Dict[str, Any]] = None,
        overwrite: bool = False,
        keep_other_files: bool = False,
) -> ExportResult:
    """Convert ``checkpoint`` into the release folder ``out_dir`` for ``model_name.tag``.

    Args:
        checkpoint: A ``python -m train`` checkpoint (or any format the converter reads).
        model_name: Architecture, e.g. ``r2plus1d_18``.
        tag: Pretrained tag, e.g. ``fima_ucf101``.
        out_dir: Destination folder (must be new or empty unless ``overwrite``).
        results: JSON file of evaluation results (shapes in :mod:`hub.card`).
        repo_id: Hub repo id; defaults to the zoo's ``ORG/arch.tag`` (``FIMA_MODELS_HUB_ORG``).
        keep_head: Keep the checkpoint's classifier (fine-tuned weights).
        pretrained_cfg: Extra config fields to record (``dataset``, ``description`` ...).
        overwrite: Replace the files an earlier export wrote into ``out_dir`` (only those).
        keep_other_files: Allow an ``out_dir`` that holds other files; they stay untouched (and out of
            the manifest).

    Returns:
        The export record.

    Raises:
        CheckpointError: The checkpoint is unreadable or does not fit ``model_name``.
        FileNotFoundError, ValueError: Bad results file.
        OutputExistsError: ``out_dir`` is refused (see :func:`fima_models.convert.check_output_folder`).
    """
    if not tag:
        raise ValueError('A release needs a pretrained tag (e.g. --tag fima_ucf101).')
    arch = model_name.split('.', 1)[0]
    name = f'{arch}.{tag}'
    repo_id = repo_id or hub_id(name)
    metrics = load_results(results) if results is not None else {}
    cfg: Dict[str, Any] = {'published': True, **(pretrained_cfg or {})}
    if metrics:
        cfg['metrics'] = metrics
    manifest: Dict[str, str] = {}

    def sections(result: ConversionResult) -> Dict[str, str]:
        return {'Pretraining recipe': recipe_section(result.meta.get('config') or {}, result.meta),
                'Evaluation': evaluation_section(metrics)}

    def finish(staged: Path) -> None:
        manifest.update(write_manifest(staged))

    conversion = convert_checkpoint(
        checkpoint, arch, out_dir, keep_head=keep_head, tag=tag, pretrained_cfg=cfg, card_sections=sections,
        repo_id=repo_id, staging_hook=finish, overwrite=overwrite, keep_other_files=keep_other_files,
        extra_files=(MANIFEST_NAME,))
    return ExportResult(out_dir=conversion.out_dir, name=name, repo_id=repo_id, conversion=conversion,
                        metrics=metrics, manifest=manifest)


def run(args: argparse.Namespace) -> int:
    """``python -m hub export``: write the release folder and say what to run next."""
    result = export_checkpoint(args.checkpoint, args.model, args.tag, args.out, results=args.results,
                               repo_id=args.repo_id, keep_head=args.keep_head, overwrite=args.overwrite,
                               keep_other_files=args.keep_other_files)
    print(result.conversion.summary())
    print(f'Wrote {result.out_dir}/SHA256SUMS ({len(result.manifest)} files) for {result.name} '
          f'-> hf-hub:{result.repo_id}')
    print(f'Next: python -m hub publish {result.out_dir} --repo-id {result.repo_id} --dry-run')
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``export`` to the ``python -m hub`` command line."""
    p = subparsers.add_parser('export', help='checkpoint -> release folder (weights, config, card, SHA256SUMS)')
    p.add_argument('checkpoint', metavar='CKPT')
    p.add_argument('--model', required=True, help='architecture, e.g. r2plus1d_18')
    p.add_argument('--tag', required=True, help='pretrained tag, e.g. fima_ucf101')
    p.add_argument('--out', required=True, metavar='DIR')
    p.add_argument('--results', default=None, metavar='JSON', help='evaluation results for the card and config')
    p.add_argument('--repo-id', default=None, help='hub repo (default: the zoo repo of arch.tag)')
    p.add_argument('--keep-head', action='store_true', help="keep the checkpoint's classifier")
    p.add_argument('--overwrite', action='store_true', help='replace the files of an earlier export in DIR (only those)')
    p.add_argument('--keep-other-files', action='store_true',
                   help='write into a DIR that holds other files (they are left untouched)')
    return p
