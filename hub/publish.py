"""Validate an exported zoo entry and upload it to the Hugging Face hub.

``python -m hub publish DIR --repo-id ORG/NAME --dry-run`` checks the folder (manifest checksums,
config, and that ``create_model('local-dir:DIR')`` loads it strictly) and lists what would be
uploaded, without any network access. Without ``--dry-run`` it creates the repo if needed and
uploads the folder with ``huggingface_hub.HfApi.upload_folder``.
"""
import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

import fima_models
from fima_models.models import CONFIG_NAME, SAFE_WEIGHTS_NAME

from hub.export import MANIFEST_NAME, read_manifest, sha256_file

__all__ = ['ExportValidationError', 'PublishPlan', 'validate_export', 'publish']

_logger = logging.getLogger(__name__)

_REQUIRED = (SAFE_WEIGHTS_NAME, CONFIG_NAME, 'README.md', MANIFEST_NAME)


class ExportValidationError(RuntimeError):
    """An export folder is incomplete, altered since export, or does not load."""


@dataclass
class PublishPlan:
    """What :func:`publish` uploaded (or, for a dry run, would upload).

    Attributes:
        folder: The export folder.
        repo_id: Target hub repo.
        files: ``(name, size in bytes)`` of every file uploaded.
        dry_run: Nothing was uploaded.
        commit_url: URL of the upload commit (real runs only).
    """
    folder: Path
    repo_id: str
    files: List[Tuple[str, int]] = field(default_factory=list)
    dry_run: bool = True
    commit_url: Optional[str] = None

    def summary(self) -> str:
        """Human-readable listing."""
        head = 'Would upload' if self.dry_run else 'Uploaded'
        lines = [f'{head} {len(self.files)} files from {self.folder} to hf-hub:{self.repo_id}:']
        lines += [f'  {name}  ({size:,} bytes)' for name, size in self.files]
        if self.commit_url:
            lines.append(f'Commit: {self.commit_url}')
        return '\n'.join(lines)


def validate_export(folder: Union[str, Path]) -> List[Tuple[str, int]]:
    """Check an export folder before upload.

    Checks: the required files exist; ``SHA256SUMS`` lists every file and every checksum matches;
    ``config.json`` names an architecture and a tag; the weights load strictly through
    ``fima_models.create_model('local-dir:...')``.

    Args:
        folder: Folder written by ``python -m hub export``.

    Returns:
        ``(name, size)`` of the files to upload.

    Raises:
        ExportValidationError: The first problem found, with how to fix it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportValidationError(f'Export folder not found: {folder}. Create it with `python -m hub export`.')
    missing = [n for n in _REQUIRED if not (folder / n).is_file()]
    if missing:
        raise ExportValidationError(f'{folder} lacks {", ".join(missing)}; re-create it with `python -m hub export`.')
    files = sorted(p.name for p in folder.iterdir() if not p.name.startswith('.'))
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError) as e:
        raise ExportValidationError(str(e)) from e
    unlisted = [n for n in files if n != MANIFEST_NAME and n not in manifest]
    if unlisted:
        raise ExportValidationError(f'{", ".join(unlisted)} in {folder} are not in {MANIFEST_NAME}; remove them '
                                    'or re-run `python -m hub export`.')
    for name, digest in manifest.items():
        path = folder / name
        if not path.is_file():
            raise ExportValidationError(f'{name} is listed in {MANIFEST_NAME} but missing from {folder}.')
        if sha256_file(path) != digest:
            raise ExportValidationError(
                f'{name} changed since export (SHA-256 mismatch); re-run `python -m hub export`.')
    config = json.loads((folder / CONFIG_NAME).read_text())
    if not config.get('pretrained_cfg', {}).get('tag'):
        raise ExportValidationError(f'{folder / CONFIG_NAME} has no pretrained tag; export with --tag.')
    try:
        model = fima_models.create_model(f'local-dir:{folder}')
    except Exception as e:
        raise ExportValidationError(f'{folder} does not load with create_model: {e}') from e
    _logger.info('Validated %s: %s, %d parameters', folder, config.get('architecture'),
                 sum(p.numel() for p in model.parameters()))
    return [(n, (folder / n).stat().st_size) for n in files]


def publish(
        folder: Union[str, Path],
        repo_id: str,
        dry_run: bool = False,
        private: bool = False,
        token: Optional[str] = None,
        commit_message: Optional[str] = None,
) -> PublishPlan:
    """Validate ``folder`` and upload it to ``repo_id`` (nothing is uploaded with ``dry_run``).

    Args:
        folder: Export folder.
        repo_id: ``ORG/NAME`` on the Hugging Face hub.
        dry_run: Only validate and list.
        private: Create the repo as private if it does not exist.
        token: Hub token (default: huggingface_hub's login / ``HF_TOKEN``).
        commit_message: Upload commit message.

    Returns:
        The plan, with the commit URL after a real upload.

    Raises:
        ExportValidationError: The folder is not ready.
        ValueError: Malformed ``repo_id``.
    """
    if repo_id.count('/') != 1 or not all(repo_id.split('/')):
        raise ValueError(f"Malformed repo id '{repo_id}'; expected 'ORG/NAME'.")
    folder = Path(folder)
    plan = PublishPlan(folder=folder, repo_id=repo_id, files=validate_export(folder), dry_run=dry_run)
    if dry_run:
        return plan
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type='model', private=private, exist_ok=True)
    config = json.loads((folder / CONFIG_NAME).read_text())
    name = f"{config['architecture']}.{config['pretrained_cfg']['tag']}"
    info = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, repo_type='model',
        commit_message=commit_message or f'Publish {name} weights (fima-models)',
        allow_patterns=[n for n, _ in plan.files])
    plan.commit_url = str(getattr(info, 'commit_url', info))
    _logger.info('Published %s to %s', folder, repo_id)
    return plan


def run(args: argparse.Namespace) -> int:
    """``python -m hub publish``: validate, then upload (or list, with ``--dry-run``)."""
    plan = publish(args.folder, args.repo_id, dry_run=args.dry_run, private=args.private,
                   commit_message=args.message)
    print(plan.summary())
    if plan.dry_run:
        print('Dry run: the folder is valid and nothing was uploaded.')
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``publish`` to the ``python -m hub`` command line."""
    p = subparsers.add_parser('publish', help='validate a release folder and upload it to the Hugging Face hub')
    p.add_argument('folder', metavar='DIR')
    p.add_argument('--repo-id', required=True, help='ORG/NAME')
    p.add_argument('--dry-run', action='store_true', help='validate and list files; upload nothing')
    p.add_argument('--private', action='store_true', help='create the repo as private')
    p.add_argument('--message', default=None, help='commit message')
    return p
