"""Convert a checkpoint of any supported format into a zoo entry folder.

``convert_checkpoint('checkpoint_0199.pth.tar', 'r2plus1d_18', 'out/r2plus1d_fima')`` detects the
container (see :mod:`fima_models.checkpoint`), keeps only the backbone, loads it *strictly* into
the named architecture and writes::

    out/r2plus1d_fima/model.safetensors   the model's own state_dict
    out/r2plus1d_fima/config.json         architecture, num_classes, pretrained_cfg (video fields)
    out/r2plus1d_fima/README.md           model card

``fima_models.create_model('local-dir:out/r2plus1d_fima')`` (or ``hf-hub:ORG/NAME`` once uploaded)
then rebuilds exactly the source backbone. The files are assembled in a temporary folder beside
(or, for an existing folder, inside) the destination and renamed into place only once all are
complete, so a failed conversion leaves the destination as it was. ``overwrite`` replaces only
the files a conversion writes; a folder holding anything else, or the source itself, is refused
unless ``keep_other_files`` is given (see :func:`check_output_folder`).
"""
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from safetensors.torch import save_file
from timm.models import model_entrypoint

from fima_models._factory import create_model, list_pretrained, resolve_alias
from fima_models._utils import TRAIN_CHECKPOINT_FORMAT, default_dir_mode, default_file_mode
from fima_models.checkpoint import (
    CheckpointError, ExtractedCheckpoint, load_backbone_state_dict, require_finite, summarize_keys,
)
from fima_models.models import load_state_dict_strict, pretrained_cfg_dict
from fima_models.models._hub import CONFIG_NAME, SAFE_WEIGHTS_NAME, SOURCE_FIELDS
from fima_models.models._manipulate import as_name_list, keys_under

__all__ = [
    'ConversionResult', 'OutputExistsError', 'convert_checkpoint', 'render_model_card', 'build_config',
    'check_output_folder', 'install_staged',
]

_logger = logging.getLogger(__name__)

CARD_NAME = 'README.md'
_SSL_METHODS = ('fima', 'moco')
#: Fields that describe particular weights (not the architecture); not inherited by an unregistered tag.
_WEIGHT_FIELDS = ('tag', 'description', 'metrics', 'method', 'dataset', 'license', 'paper_name', 'paper_ids',
                  'origin_url', 'notes', 'num_params', 'published', 'label_names', 'label_descriptions')


class OutputExistsError(FileExistsError, RuntimeError):
    """The output folder exists and is not empty, and overwriting was not asked for."""


@dataclass
class ConversionResult:
    """What :func:`convert_checkpoint` wrote and which checkpoint keys it used.

    Attributes:
        out_dir: The written folder.
        architecture: Architecture the weights were loaded into.
        tag: Pretrained tag recorded in the config (may be empty).
        format: Detected checkpoint format.
        num_classes: Classifier size in the written weights (0: backbone only).
        in_chans: Input channels of the first convolution.
        kept: Checkpoint keys written (model key names).
        dropped: Checkpoint keys left out (training-only parts, classifier).
        config: The written ``config.json`` content.
        meta: Facts read from the checkpoint container (epoch, method, training config ...).
    """
    out_dir: Path
    architecture: str
    tag: str
    format: str
    num_classes: int
    in_chans: int
    kept: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    config: Dict[str, Any] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for logs and the command line."""
        return '\n'.join([
            f'Converted a {self.format} checkpoint into {self.architecture}'
            f'{"." + self.tag if self.tag else ""} (num_classes={self.num_classes}, in_chans={self.in_chans}).',
            f'Kept {len(self.kept)} keys.',
            f'Dropped {len(self.dropped)} keys' + (f': {summarize_keys(self.dropped)}' if self.dropped else '.'),
            f'Wrote {self.out_dir}/{{{SAFE_WEIGHTS_NAME},{CONFIG_NAME},{CARD_NAME}}}.',
        ])


def _filter_fn(arch: str) -> Optional[Callable]:
    """The ``checkpoint_filter_fn`` of the model file that registers ``arch``, timm convention."""
    module = sys.modules.get(model_entrypoint(arch).__module__)
    return getattr(module, 'checkpoint_filter_fn', None)


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def build_config(model: torch.nn.Module, overrides: Optional[Mapping[str, Any]] = None,
                 model_args: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The ``config.json`` content describing ``model`` and its weights (timm's hub layout).

    Args:
        model: A model built by :func:`fima_models.create_model` (it carries ``pretrained_cfg``).
        overrides: Pretrained-config fields to set (``tag``, ``method``, ``dataset``, ``metrics`` ...).
        model_args: Constructor arguments needed to rebuild the model (besides ``num_classes``).

    Returns:
        ``{"architecture", "num_classes", "num_features", "pretrained_cfg", ["model_args"]}``.
    """
    cfg = {k: v for k, v in pretrained_cfg_dict(model).items() if k not in SOURCE_FIELDS and v is not None}
    cfg.update(overrides or {})
    cfg['num_classes'] = model.num_classes
    if cfg.get('input_size'):
        cfg['input_size'] = (model.in_chans, *tuple(cfg['input_size'])[1:])
    config: Dict[str, Any] = {
        'architecture': cfg.pop('architecture'),
        'num_classes': model.num_classes,
        'num_features': model.num_features,
        'pretrained_cfg': cfg,
    }
    if model_args:
        config['model_args'] = dict(model_args)
    return _json_safe(config)


def render_model_card(config: Mapping[str, Any], result: Optional['ConversionResult'] = None,
                      sections: Optional[Mapping[str, str]] = None, repo_id: Optional[str] = None) -> str:
    """Markdown model card for an exported folder (Hugging Face front matter + usage).

    Args:
        config: The folder's ``config.json`` content.
        result: The conversion, to record the source format and dropped parts.
        sections: Extra ``{heading: markdown}`` sections (e.g. pretraining recipe, evaluation).
        repo_id: Hub repo the folder is published as, for the usage snippet.

    Returns:
        The card text.
    """
    cfg = config.get('pretrained_cfg', {})
    arch = config['architecture']
    name = f"{arch}.{cfg['tag']}" if cfg.get('tag') else arch
    license_ = cfg.get('license') or 'other'
    lines = [
        '---', 'library_name: fima-models', f'license: {license_}', 'tags:', '- video', '- video-classification',
        '- feature-extraction', '- fima-models', '---', '', f'# {name}', '',
        cfg.get('description') or f'{arch} video backbone weights for fima-models.', '',
        '## Model details', '',
        f'- Architecture: `{arch}`; input `(N, C, T, H, W)` float clips, input size {tuple(cfg.get("input_size", ()))}',
        f'- Classifier: {config["num_classes"]} classes' if config['num_classes'] else
        f'- Backbone only (`num_classes=0`), {config.get("num_features")} features',
        f'- Normalisation: mean {tuple(cfg.get("mean", ()))}, std {tuple(cfg.get("std", ()))}',
    ]
    for key, label in (('method', 'Pretraining method'), ('dataset', 'Pretraining data'),
                       ('num_frames', 'Clip length (frames)')):
        if cfg.get(key) is not None:
            lines.append(f'- {label}: {cfg[key]}')
    if cfg.get('paper_name'):
        lines.append(f"- Paper: {cfg['paper_name']}" + (f" ({cfg['paper_ids']})" if cfg.get('paper_ids') else ''))
    if result is not None:
        lines.append(f'- Converted from a `{result.format}` checkpoint; {len(result.kept)} tensors kept, '
                     f'{len(result.dropped)} training-only or classifier keys dropped')
    lines += [
        '', '## Usage', '', '```python', 'import fima_models', '',
        f"model = fima_models.create_model('hf-hub:{repo_id or 'ORG/NAME'}')  # or 'local-dir:PATH' for a copy",
        'features = model.forward_features(clips)  # clips: (N, 3, T, H, W)', '```', '',
    ]
    for heading, body in (sections or {}).items():
        lines += [f'## {heading}', '', body.strip(), '']
    return '\n'.join(lines).rstrip() + '\n'


def _written_names(staged: Path) -> List[str]:
    return sorted(p.name for p in staged.iterdir())


def check_output_folder(out_dir: Path, src: Path, overwrite: bool, keep_other_files: bool,
                        names: Sequence[str] = (SAFE_WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)) -> None:
    """Refuse an output folder a conversion must not write into, before any work is done.

    Args:
        out_dir: Destination folder.
        src: The checkpoint being converted.
        overwrite: Replacing the files the conversion writes is allowed.
        keep_other_files: Writing into a folder that holds other files (or the source) is allowed;
            those files are left untouched.
        names: The file names the conversion writes.

    Raises:
        OutputExistsError: ``out_dir`` is a file, or it is not empty and the flags do not allow it.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"'{out_dir}' exists and is not a folder; choose another --out.")
    if not out_dir.is_dir():
        return
    leftover = f'.{out_dir.name}.tmp-'  # staging folder of an interrupted or concurrent conversion
    entries = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith(leftover))
    if not entries:
        return
    ours = [e for e in entries if e in names]
    others = [e for e in entries if e not in names]
    holds_source = _is_inside(src, out_dir)
    if ours and not overwrite:
        raise OutputExistsError(
            f"'{out_dir}' already holds {', '.join(ours)}; pass --overwrite (overwrite=True) to replace them, "
            'or choose another output folder.')
    if (others or holds_source) and not keep_other_files:
        what = 'the source checkpoint' if holds_source else 'other files'
        listed = ', '.join(others[:5]) + (f' and {len(others) - 5} more' if len(others) > 5 else '')
        raise OutputExistsError(
            f"'{out_dir}' holds {what} ({listed}); a converted model belongs in a folder of its own. Choose "
            'another --out, or pass --keep-other-files (keep_other_files=True) to write '
            f"{', '.join(names)} beside them (nothing else is touched).")


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.expanduser().resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def install_staged(staged: Path, out_dir: Path) -> None:
    """Move the files of a fully written ``staged`` folder into ``out_dir`` with renames only.

    A new ``out_dir`` is the staged folder renamed; in an existing one each staged file replaces
    its namesake (every file is complete before the first rename) and nothing else is touched.
    """
    if not out_dir.is_dir():
        os.replace(staged, out_dir)
        return
    for name in _written_names(staged):
        os.replace(staged / name, out_dir / name)


def _split_name(model_name: str, tag: Optional[str]) -> Tuple[str, str]:
    arch, _, name_tag = resolve_alias(model_name).partition('.')
    return arch, tag if tag is not None else name_tag


def _check_train_arch(extracted: ExtractedCheckpoint, arch: str) -> None:
    ckpt_arch = extracted.meta.get('model_name')
    if extracted.format == TRAIN_CHECKPOINT_FORMAT and ckpt_arch and str(ckpt_arch).split('.', 1)[0] != arch:
        raise CheckpointError(
            f"The checkpoint was trained as '{ckpt_arch}', not '{arch}'. Pass --model {ckpt_arch}.")


def _lookup(config: Mapping[str, Any], *paths: str) -> Any:
    """First value found under dotted ``paths`` of a nested config."""
    for path in paths:
        node: Any = config
        for part in path.split('.'):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            return node
    return None


def _train_overrides(extracted: ExtractedCheckpoint) -> Dict[str, Any]:
    """Pretrained-config facts from a ``python -m train`` checkpoint's method and resolved config."""
    meta = extracted.meta
    config = meta.get('config') or {}
    out: Dict[str, Any] = {}
    if meta.get('method') in _SSL_METHODS:
        out['method'] = meta['method']
    dataset = _lookup(config, 'data.dataset', 'dataset')
    if isinstance(dataset, str):
        out['dataset'] = dataset
    frames = _lookup(config, 'data.num_frames', 'num_frames')
    clip_len = _lookup(config, 'data.clip_len')
    if frames is None and isinstance(clip_len, int) and meta.get('method') in _SSL_METHODS:
        frames = clip_len // 2  # FIMA / MoCo global views take every 2nd frame of a clip
    elif frames is None:
        frames = clip_len
    if isinstance(frames, int):
        out['num_frames'] = frames
    size = _lookup(config, 'data.size', 'size')
    if isinstance(frames, int) and isinstance(size, int):
        out['input_size'] = (3, frames, size, size)
    return out


def convert_checkpoint(
        src: Union[str, os.PathLike],
        model_name: str,
        out_dir: Union[str, os.PathLike],
        keep_head: bool = False,
        tag: Optional[str] = None,
        pretrained_cfg: Optional[Mapping[str, Any]] = None,
        card_sections: Union[Mapping[str, str], Callable[['ConversionResult'], Mapping[str, str]], None] = None,
        repo_id: Optional[str] = None,
        staging_hook: Optional[Callable[[Path], None]] = None,
        overwrite: bool = False,
        keep_other_files: bool = False,
        extra_files: Sequence[str] = (),
) -> ConversionResult:
    """Convert ``src`` into ``out_dir/{model.safetensors,config.json,README.md}`` for ``model_name``.

    Args:
        src: Checkpoint file: FIMA ``checkpoint_XXXX.pth.tar``, MoCo-style, plain or torchvision
            ``state_dict``, safetensors, or a ``python -m train`` checkpoint.
        model_name: Architecture, ``arch.tag`` or alias; a tag selects the config defaults recorded.
        out_dir: Destination folder: new or empty; one holding earlier conversion files with
            ``overwrite``; one holding anything else (or ``src``) with ``keep_other_files``.
        keep_head: Keep the checkpoint's classifier (its size sets ``num_classes``); by default
            only the backbone is written (``num_classes=0``).
        tag: Pretrained tag to record, overriding the one in ``model_name``.
        pretrained_cfg: Extra pretrained-config fields to record (``method``, ``dataset``, ``metrics`` ...).
        card_sections: Extra model-card sections ``{heading: markdown}``, or a function of the
            :class:`ConversionResult` returning them (e.g. to render the checkpoint's training config).
        repo_id: Hub repo id the folder will be published as (used in the card's usage snippet).
        staging_hook: Called with the staging folder after the files are written and before it is
            moved into place; may add files (e.g. a checksum manifest).
        overwrite: Replace the files an earlier conversion wrote into ``out_dir`` (only those).
        keep_other_files: Allow an ``out_dir`` that holds other files or the source; they stay untouched.
        extra_files: Names of the files ``staging_hook`` adds (replaced like the others with ``overwrite``).

    Returns:
        The conversion record (also logged).

    Raises:
        CheckpointError: Missing, unreadable or unsafe file; NaN/Inf weights; wrong architecture;
            missing, unexpected or mis-shaped keys (named in the message).
        OutputExistsError: ``out_dir`` is refused (see :func:`check_output_folder`).
        OSError: The output cannot be written (disk full, read-only ...); ``out_dir`` keeps its
            previous content.
    """
    out_dir = Path(os.path.abspath(Path(out_dir).expanduser()))  # `--out .` has a name and a parent
    check_output_folder(out_dir, Path(src), overwrite, keep_other_files,
                        (SAFE_WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, *extra_files))
    arch, tag = _split_name(model_name, tag)
    extracted = load_backbone_state_dict(src)
    require_finite(extracted.state_dict, str(src))
    _check_train_arch(extracted, arch)
    registered = f'{arch}.{tag}' if tag and f'{arch}.{tag}' in list_pretrained(f'{arch}.*') else arch
    with torch.device('meta'):  # configuration only: allocates nothing
        probe = create_model(registered, num_classes=0)
    cfg = pretrained_cfg_dict(probe)
    inherited = dict(cfg) if registered != arch else {k: v for k, v in cfg.items() if k not in _WEIGHT_FIELDS}
    filter_fn = _filter_fn(arch)
    sd = filter_fn(dict(extracted.state_dict), probe) if filter_fn else dict(extracted.state_dict)

    heads = as_name_list(cfg.get('classifier'))
    head_keys = keys_under(sd, heads)
    dropped = list(extracted.dropped)
    num_classes = 0
    if keep_head:
        weight = next((k for k in head_keys if k.endswith('weight')), None)
        if weight is None:
            raise CheckpointError(
                f'keep_head was requested but the checkpoint has no classifier ({", ".join(heads) or "none"}) '
                f'for {arch}; convert without --keep-head to get the backbone.')
        num_classes = int(sd[weight].shape[0])
    else:
        for k in head_keys:
            del sd[k]
        dropped += head_keys
    in_chans = getattr(probe, 'in_chans', 3)
    for conv in as_name_list(cfg.get('first_conv')):
        w = sd.get(f'{conv}.weight')
        if w is not None and w.ndim == 5:
            in_chans = int(w.shape[1])
            break
    model_args = {'in_chans': in_chans} if in_chans != probe.in_chans else {}
    model = create_model(registered, num_classes=num_classes, **model_args)
    load_state_dict_strict(model, sd, name=f'{src} ({extracted.format} checkpoint)')
    missing_bn = [k for k in model.state_dict() if k not in sd]
    if missing_bn:
        _logger.info('Checkpoint lacks %d BatchNorm counters; they keep their initial value.', len(missing_bn))

    overrides = _train_overrides(extracted)
    if tag:
        overrides['tag'] = tag
    overrides.update(pretrained_cfg or {})
    model.pretrained_cfg = inherited
    config = build_config(model, overrides, model_args)
    result = ConversionResult(
        out_dir=out_dir, architecture=arch, tag=tag, format=extracted.format, num_classes=num_classes,
        in_chans=in_chans, kept=sorted(sd), dropped=dropped, config=config, meta=_json_safe(extracted.meta))

    # staged beside the files it replaces: a new folder in its parent, else inside the folder itself
    stage_in = out_dir if out_dir.is_dir() else out_dir.parent
    stage_in.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=stage_in, prefix=f'.{out_dir.name}.tmp-'))
    try:
        tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(tensors, str(staged / SAFE_WEIGHTS_NAME), metadata={'format': 'pt'})
        (staged / CONFIG_NAME).write_text(json.dumps(config, indent=2) + '\n', encoding='utf-8')
        sections = card_sections(result) if callable(card_sections) else card_sections
        (staged / CARD_NAME).write_text(render_model_card(config, result, sections, repo_id=repo_id), encoding='utf-8')
        if staging_hook is not None:
            staging_hook(staged)
        file_mode = default_file_mode()
        for name in _written_names(staged):
            os.chmod(staged / name, file_mode)
        os.chmod(staged, default_dir_mode())
        install_staged(staged, out_dir)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    _logger.info('%s', result.summary())
    return result
