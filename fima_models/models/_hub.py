"""Where pretrained weights come from: Hugging Face hub, URL, local file and ``local-dir:`` sources.

Where the weights of a pretrained config come from, first match wins:

* ``state_dict``: tensors passed in memory (handled by :func:`._builder.load_pretrained`);
* ``file``: a local checkpoint of any format :mod:`fima_models.checkpoint` understands
  (``pretrained_cfg_overlay=dict(file='weights.safetensors')``; ``local-dir:DIR`` sets it too);
* ``hf_hub_id``: a Hugging Face hub repo (``model.safetensors`` preferred, ``pytorch_model.bin``
  as fall-back), cached under ``HF_HUB_CACHE`` (default ``$HF_HOME/hub``);
* ``url``: a download cached in the torch hub directory (``$TORCH_HOME/hub/checkpoints``), checked
  against the SHA-256 prefix in its file name (torch hub's ``name-<hash>.pth`` convention).

Every source is tried from the local cache first. Only then, unless ``HF_HUB_OFFLINE=1``, one
network attempt is made, after a connection probe bounded by ``FIMA_MODELS_CONNECT_TIMEOUT``
seconds (default 5), so a machine without network fails within seconds instead of retrying for
minutes. Tags whose weights are not published (``published=False``) never touch the network.
Every failure is one :class:`PretrainedWeightsUnavailable` naming the tag and the ways to get the
weights. Files are read by :mod:`fima_models.checkpoint` (pickles with ``weights_only=True``).
"""
import dataclasses
import hashlib
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from timm.models import get_pretrained_cfg, is_model, list_pretrained

from fima_models._utils import atomic_write, describe_error
from fima_models.checkpoint import CheckpointError

from ._pretrained_cfg import VideoPretrainedCfg, pretrained_cfg_dict
from ._registry import resolve_alias

__all__ = [
    'PretrainedWeightsUnavailable', 'resolve_model_source', 'fetch_pretrained', 'fetch_hub_file',
    'download_pretrained', 'hub_cache_dir', 'torch_checkpoint_dir', 'is_offline', 'tag_name', 'git_blob_sha1',
    'SAFE_WEIGHTS_NAME', 'WEIGHTS_NAME', 'CONFIG_NAME', 'HUB_WEIGHT_FILES', 'SOURCE_FIELDS',
]

_logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = 'model.safetensors'
WEIGHTS_NAME = 'pytorch_model.bin'
CONFIG_NAME = 'config.json'
#: Weight files of a hub repo or converted folder, in order of preference.
HUB_WEIGHT_FILES = (SAFE_WEIGHTS_NAME, WEIGHTS_NAME)
_LIBRARY_NAME = 'fima-models'
#: Seconds a server gets to answer before a fetch gives up (``FIMA_MODELS_CONNECT_TIMEOUT`` overrides).
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: Pretrained-config fields that say where weights live; a source name replaces all of them.
SOURCE_FIELDS = ('url', 'file', 'state_dict', 'hf_hub_id', 'hf_hub_filename', 'source')


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights were requested but cannot be found locally or downloaded."""


# ----------------------------------------------------------------------------- environment


def _env_true(name: str) -> bool:
    return os.environ.get(name, '').strip().upper() in {'1', 'ON', 'YES', 'TRUE'}


def is_offline() -> bool:
    """Whether network access is disabled: ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` now or at import."""
    from huggingface_hub import constants
    return _env_true('HF_HUB_OFFLINE') or _env_true('TRANSFORMERS_OFFLINE') or bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache in effect now: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else the default.

    Read at call time, so changing the environment after import is honoured.
    """
    if os.environ.get('HF_HUB_CACHE'):
        return Path(os.path.expandvars(os.environ['HF_HUB_CACHE'])).expanduser()
    if os.environ.get('HF_HOME'):
        return Path(os.path.expandvars(os.environ['HF_HOME'])).expanduser() / 'hub'
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def torch_checkpoint_dir() -> Path:
    """Where URL downloads are cached: ``torch.hub.get_dir()/checkpoints`` (honours ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / 'checkpoints'


def _connect_timeout() -> float:
    """Seconds to wait for a server to answer (``FIMA_MODELS_CONNECT_TIMEOUT``, default 5; unreadable: 5)."""
    try:
        return max(float(os.environ.get('FIMA_MODELS_CONNECT_TIMEOUT', DEFAULT_CONNECT_TIMEOUT_S)), 0.1)
    except ValueError:
        return DEFAULT_CONNECT_TIMEOUT_S


def _reason(err: BaseException) -> str:
    """``Type: first line`` of a network or hub error: the type says more than many messages (timeouts)."""
    return f'{type(err).__name__}: {describe_error(err).splitlines()[0]}'


def _hub_endpoint() -> str:
    from huggingface_hub import constants
    return os.environ.get('HF_ENDPOINT') or constants.ENDPOINT


# ----------------------------------------------------------------------------- messages


def tag_name(cfg: Mapping[str, Any]) -> str:
    """The name of the weights a pretrained config describes, for messages: ``arch.tag`` or ``hf-hub:ORG/NAME``."""
    if cfg.get('source') == 'hf-hub' and cfg.get('hf_hub_id'):
        return f"hf-hub:{cfg['hf_hub_id']}"
    arch, tag = cfg.get('architecture') or 'model', cfg.get('tag')
    return f'{arch}.{tag}' if tag else arch


def _is_published(name: str) -> bool:
    """Whether ``name`` (``arch.tag``) is a registered tag whose file exists at its source."""
    try:
        return bool(getattr(get_pretrained_cfg(name), 'published', False))
    except (RuntimeError, KeyError, ValueError):
        return False


def published_alternatives(arch: str) -> List[str]:
    """Published tags of ``arch`` and of its variants (``i3d`` lists ``i3d_tf.*``), in registry order."""
    return [tag for tag in list_pretrained(f'{arch}*') if _is_published(tag)]


def _unavailable(name: str, reason: str, arch: Optional[str] = None) -> PretrainedWeightsUnavailable:
    local = name.startswith(('hf-hub:', 'local-dir:'))
    arch = arch or ('ARCH' if local else name.split('.', 1)[0])
    ways = []
    if name.startswith('hf-hub:') or _is_published(name):
        ways.append(
            f'on a machine with network access run `fima-models download {name}`, then copy its caches '
            f'(HF_HUB_CACHE={hub_cache_dir()}, torch hub dir {torch_checkpoint_dir()}) here or point '
            f'HF_HUB_CACHE / TORCH_HOME at a shared copy')
    alternatives = [] if local else [tag for tag in published_alternatives(arch) if tag != name]
    if alternatives:
        ways.append(f"use published weights: {', '.join(alternatives)} (create_model('{alternatives[0]}', "
                    f'pretrained=True); `fima-models download {alternatives[0]}` fills the cache)')
    ways += [
        f'convert a checkpoint you have: `fima-models convert CKPT --model {arch} --out DIR`, '
        f"then create_model('local-dir:DIR')",
        f"pass a weight file: create_model('{arch}', pretrained=True, "
        f"pretrained_cfg_overlay=dict(file='weights.safetensors'))",
        f'train them: `python -m train pretrain --config train/configs/pretrain/<recipe>.yaml --out RUN '
        f'model.arch={arch}`, then convert a checkpoint of RUN as above (see docs/weights.md)',
    ]
    return PretrainedWeightsUnavailable(
        f"Pretrained weights for '{name}' are not available: {reason}.\nWays to get them:\n"
        + ';\n'.join(f'  - {way}' for way in ways) + '.')


# ----------------------------------------------------------------------------- fetching


def _split_revision(hf_hub_id: str) -> Tuple[str, Optional[str]]:
    repo_id, _, revision = hf_hub_id.partition('@')
    return repo_id, revision or None


def fetch_hub_file(
        hf_hub_id: str,
        filenames: Sequence[str],
        name: Optional[str] = None,
        allow_network: bool = True,
) -> Path:
    """Return a local path to the first of ``filenames`` in a hub repo: cache first, then one download.

    Args:
        hf_hub_id: ``ORG/NAME``, optionally ``@revision``.
        filenames: Candidate files in order of preference (e.g. safetensors, then ``.bin``).
        name: Name used in error messages (defaults to ``hf-hub:ORG/NAME``).
        allow_network: When False only the cache is consulted.

    Returns:
        Path of the cached file.

    Raises:
        PretrainedWeightsUnavailable: Not cached, and offline, unreachable or missing on the hub.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    name = name or f'hf-hub:{hf_hub_id}'
    repo_id, revision = _split_revision(hf_hub_id)
    cache_dir = hub_cache_dir()
    for filename in filenames:
        try:
            return Path(hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=cache_dir, local_files_only=True,
                library_name=_LIBRARY_NAME))
        except (EntryNotFoundError, FileNotFoundError, OSError, ValueError):
            continue
    wanted = ' or '.join(filenames)
    if not allow_network:
        raise _unavailable(name, f'{wanted} of hub repo {hf_hub_id} is not in the local cache {cache_dir}')
    if is_offline():
        raise _unavailable(
            name, f'{wanted} of hub repo {hf_hub_id} is not in the local cache {cache_dir} and '
                  f'HF_HUB_OFFLINE is set')
    endpoint = _hub_endpoint()
    timeout = _connect_timeout()
    missing = []
    for filename in filenames:
        # one HEAD request without retries bounds the time to fail; hf_hub_download alone would
        # retry a hanging server for minutes
        url = hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
        try:
            get_hf_file_metadata(url, timeout=timeout, library_name=_LIBRARY_NAME)
        except RepositoryNotFoundError as e:
            raise _unavailable(name, f'hub repo {hf_hub_id} does not exist or is private ({_reason(e)})') from e
        except EntryNotFoundError:
            missing.append(filename)
            continue
        except Exception as e:  # connection refused, timeout, proxy or HTTP error: no retry loop
            raise _unavailable(
                name, f'{wanted} of hub repo {hf_hub_id} is not in the local cache {cache_dir} and the hub '
                      f'at {endpoint} is unreachable within {timeout:g} s ({_reason(e)})') from e
        try:
            path = hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=cache_dir, endpoint=endpoint,
                etag_timeout=timeout, library_name=_LIBRARY_NAME)
        except Exception as e:
            raise _unavailable(name, f'downloading {filename} from hub repo {hf_hub_id} failed ({_reason(e)})') from e
        _logger.info('Downloaded %s from hub repo %s to %s', filename, hf_hub_id, path)
        return Path(path)
    raise _unavailable(name, f'hub repo {hf_hub_id} has none of {", ".join(missing)}')


def _url_cache_path(url: str) -> Path:
    filename = os.path.basename(urllib.parse.urlsplit(url).path) or 'weights.pth'
    return torch_checkpoint_dir() / filename


def git_blob_sha1(path: Union[str, Path]) -> str:
    """Git's blob id of a file: SHA-1 of ``b"blob <size>\\0"`` followed by the content.

    Args:
        path: The file.

    Returns:
        40 lowercase hex digits, as ``git hash-object`` prints them.
    """
    with open(path, 'rb') as handle:
        return _git_blob_sha1_of_fd(handle.fileno())


def _git_blob_sha1_of_fd(fd: int) -> str:
    # positional reads: the download's temporary file is open for writing, and its offset must not move
    size = os.fstat(fd).st_size
    digest = hashlib.sha1(b'blob %d\0' % size)
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(1 << 20, size - offset), offset)
        if not chunk:
            break
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def _check_blob(name: str, what: str, url: str, actual: str, expected: str, fix: str) -> None:
    """Refuse a file whose git blob id is not the published one."""
    if actual != expected:
        raise _unavailable(name, f'{what} of {url} is not the published file (git blob id {actual}, expected '
                                 f'{expected}); {fix}')


def _fetch_url(url: str, name: str, allow_network: bool = True, expected_blob: Optional[str] = None) -> Path:
    """Return the torch-hub cached copy of ``url``, downloading it once (atomically) if needed.

    ``expected_blob`` (a git blob id) is checked on the download before it lands in the cache, and on
    a cached copy before it is used (the cache is keyed by file name alone).
    """
    target = _url_cache_path(url)
    if target.is_file():
        if expected_blob:
            _check_blob(name, f'the cached copy {target}', url, git_blob_sha1(target), expected_blob,
                        'delete it and try again')
        return target
    where = f'{url} is not in the torch hub cache {target.parent}'
    if not allow_network:
        raise _unavailable(name, where)
    if urllib.parse.urlsplit(url).scheme in ('http', 'https') and is_offline():
        raise _unavailable(name, f'{where} and HF_HUB_OFFLINE is set')
    timeout = _connect_timeout()
    expected = torch.hub.HASH_REGEX.search(target.name)

    def download(out: Any) -> None:
        try:
            resp = urllib.request.urlopen(url, timeout=timeout)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = f'{where} and the server is unreachable within {timeout:g} s ({_reason(e)})'
            raise _unavailable(name, reason) from e
        digest = hashlib.sha256()
        with resp:
            # the timeout also bounds every read of the body: a stalled transfer fails, it does not hang
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
        # torch hub convention: 'name-<sha256 prefix>.ext' files must match their hash prefix
        if expected and not digest.hexdigest().startswith(expected.group(1)):
            raise _unavailable(name, f'the download of {url} is corrupt (SHA-256 {digest.hexdigest()[:16]}..., '
                                     f'expected prefix {expected.group(1)}); try again')
        out.flush()
        if expected_blob:
            _check_blob(name, 'the download', url, _git_blob_sha1_of_fd(out.fileno()), expected_blob,
                        'the file was not kept; try again, or report it if it persists')

    try:  # through a temporary file: an interrupted or corrupt download never lands in the cache
        atomic_write(target, download)
    except (urllib.error.URLError, OSError) as e:
        raise _unavailable(name, f'downloading {url} failed ({_reason(e)})') from e
    _logger.info('Downloaded %s to %s', url, target)
    return target


def fetch_pretrained(pretrained_cfg: Any, allow_network: bool = True) -> Path:
    """Locate (downloading at most once) the weight file a pretrained config points to.

    Args:
        pretrained_cfg: A ``VideoPretrainedCfg`` or its dict.
        allow_network: When False, only local files and caches are used.

    Returns:
        Path to the weight file.

    Raises:
        PretrainedWeightsUnavailable: The weights cannot be found or fetched; the message lists
            the ways to obtain them.
        CheckpointError: A ``file`` source that does not exist.
    """
    cfg = pretrained_cfg_dict(pretrained_cfg)
    name = tag_name(cfg)
    if cfg.get('file'):
        path = Path(cfg['file']).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"Weight file for '{name}' not found: {path}. "
                'Check the path given as pretrained_cfg_overlay=dict(file=...).')
        return path
    hf_hub_id, url = cfg.get('hf_hub_id'), cfg.get('url')
    if not hf_hub_id and not url:
        raise _unavailable(name, 'no weight source (hub repo, URL or file) is registered for it')
    from_hub_name = cfg.get('source') == 'hf-hub'
    # ``published`` describes the registry's hub repo: an unpublished one is looked up in the cache only
    published = bool(cfg.get('published', True)) or from_hub_name
    started = time.monotonic()
    files = [cfg['hf_hub_filename']] if cfg.get('hf_hub_filename') else list(HUB_WEIGHT_FILES)
    error: Optional[PretrainedWeightsUnavailable] = None
    if hf_hub_id:
        try:
            return fetch_hub_file(hf_hub_id, files, name=name, allow_network=allow_network and published)
        except PretrainedWeightsUnavailable as e:
            error = e
    if url and not from_hub_name:
        try:
            return _fetch_url(url, name, allow_network=allow_network, expected_blob=cfg.get('git_blob_sha1'))
        except PretrainedWeightsUnavailable as e:
            error = e
    _logger.debug('Weight lookup for %s failed after %.1f s', name, time.monotonic() - started)
    if not published and not url:
        raise _unavailable(
            name, f'they are not published yet (nothing has been uploaded to hub repo {hf_hub_id}), and no '
                  f'copy is in the local cache {hub_cache_dir()}') from error
    assert error is not None
    raise error


# ----------------------------------------------------------------------------- model sources


def _read_config(path: Path, name: str) -> Dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f'{path} is not a readable JSON model config ({e}). Re-create it with `fima-models convert`.') from e
    if not isinstance(config, dict) or not config.get('architecture'):
        raise CheckpointError(
            f"{path} has no 'architecture' field, so '{name}' cannot be built. "
            'Write the folder with `fima-models convert` or `python -m hub export`.')
    return config


def _source_result(config: Dict[str, Any], source_cfg: Dict[str, Any]) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
    arch, _, tag = str(config['architecture']).partition('.')
    known = {f.name for f in dataclasses.fields(VideoPretrainedCfg)}
    pretrained_cfg = {k: v for k, v in dict(config.get('pretrained_cfg') or {}).items() if k in known}
    for key in ('input_size', 'test_input_size', 'min_input_size', 'pool_size', 'mean', 'std'):
        if isinstance(pretrained_cfg.get(key), list):
            pretrained_cfg[key] = tuple(pretrained_cfg[key])
    for key in SOURCE_FIELDS:
        pretrained_cfg[key] = None
    pretrained_cfg.update(source_cfg)
    pretrained_cfg['architecture'] = arch
    if tag and not pretrained_cfg.get('tag'):
        pretrained_cfg['tag'] = tag
    model_kwargs = dict(config.get('model_args') or {})
    if 'num_classes' in config:
        model_kwargs.setdefault('num_classes', int(config['num_classes']))
    pretrained_cfg['num_classes'] = model_kwargs.get('num_classes', pretrained_cfg.get('num_classes'))
    return arch, pretrained_cfg, model_kwargs


def resolve_model_source(name: str) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
    """Resolve an ``hf-hub:ORG/NAME[@rev]`` or ``local-dir:DIR`` model name.

    Reads the source's ``config.json`` (from the hub cache first, one download otherwise) and
    returns what :func:`fima_models.create_model` needs to build it with ``pretrained=True``.

    Args:
        name: Model name with a source prefix.

    Returns:
        ``(architecture, pretrained_cfg_dict, model_kwargs)``: the pretrained cfg points at the
        source's weights (``hf_hub_id`` + ``source='hf-hub'``, or ``file``); ``model_kwargs``
        holds ``num_classes`` and any recorded model arguments.

    Raises:
        ValueError: ``name`` has no supported prefix.
        PretrainedWeightsUnavailable: The hub config cannot be found or downloaded.
        CheckpointError: The local folder or its config is missing or invalid.
    """
    if name.startswith('hf-hub:'):
        hf_hub_id = name[len('hf-hub:'):].strip('/')
        repo_id = _split_revision(hf_hub_id)[0]
        if repo_id.count('/') != 1 or not all(repo_id.split('/')):
            raise ValueError(f"Malformed hub model name '{name}'; expected 'hf-hub:ORG/NAME' (optionally '@revision').")
        config = _read_config(fetch_hub_file(hf_hub_id, [CONFIG_NAME], name=name), name)
        return _source_result(config, {'hf_hub_id': hf_hub_id, 'source': 'hf-hub', 'published': True})
    if name.startswith('local-dir:'):
        folder = Path(name[len('local-dir:'):]).expanduser()
        if not folder.is_dir():
            raise CheckpointError(f"Model folder for '{name}' not found: {folder}. Check the path.")
        config_path = folder / CONFIG_NAME
        if not config_path.is_file():
            raise CheckpointError(
                f'{folder} has no {CONFIG_NAME}. Create the folder with '
                f'`fima-models convert CKPT --model ARCH --out {folder}`.')
        weights = next((folder / f for f in HUB_WEIGHT_FILES if (folder / f).is_file()), None)
        if weights is None:
            raise CheckpointError(f'{folder} has no weights: expected {" or ".join(HUB_WEIGHT_FILES)}.')
        return _source_result(_read_config(config_path, name), {'file': str(weights), 'published': True})
    raise ValueError(f"Unsupported model source '{name}': use 'hf-hub:ORG/NAME' or 'local-dir:PATH'.")


def download_pretrained(name: str) -> List[Path]:
    """Fetch the weights of a pretrained name into the local caches, for later offline use.

    Args:
        name: ``arch.tag``, an alias (``r2plus1d_fima``), an architecture (its default tag), or
            ``hf-hub:ORG/NAME`` (config and weights are fetched).

    Returns:
        Paths of the cached files.

    Raises:
        PretrainedWeightsUnavailable: The weights cannot be fetched (unpublished, offline, missing).
        ValueError: ``name`` is not a known model or pretrained tag.
    """
    if name.startswith('hf-hub:'):
        _, cfg, _ = resolve_model_source(name)
        config_path = fetch_hub_file(cfg['hf_hub_id'], [CONFIG_NAME], name=name)
        return [config_path, fetch_pretrained(cfg)]
    if name.startswith('local-dir:'):
        raise ValueError(f"'{name}' is a local folder; there is nothing to download.")
    resolved = resolve_alias(name)
    try:
        cfg = get_pretrained_cfg(resolved) if is_model(resolved.split('.', 1)[0]) else None
    except RuntimeError:  # registered architecture, unknown tag
        cfg = None
    if cfg is None:
        raise ValueError(
            f"Unknown pretrained name '{name}'. Run `fima-models list --pretrained` for the tags, "
            "or pass 'hf-hub:ORG/NAME'.")
    return [fetch_pretrained(cfg)]
