"""Pretrained loading: local files, a pre-populated Hugging Face cache, URLs, fast offline failure.

No test touches the network: hub repos live in a temporary ``HF_HUB_CACHE`` built with
:func:`populate_hf_cache`, URLs are ``file://`` or a local HTTP server, and unreachable hosts are
closed local ports.
"""
import contextlib
import hashlib
import http.server
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, Union

import huggingface_hub  # imported up front so timings exclude the import
import huggingface_hub.constants
import pytest
import torch
from timm.models import _registry, get_pretrained_cfg

import fima_models
from fima_models.checkpoint import CheckpointError
from fima_models.convert import convert_checkpoint
from fima_models.models import (
    PretrainedWeightsUnavailable, VideoPretrainedCfg, download_pretrained, fetch_pretrained, git_blob_sha1,
    load_pretrained, resolve_model_source,
)
from tests.test_checkpoint import ARCH, clip, make_backbone, write_checkpoint

TEST_TAG = f'{ARCH}.fima_test'


def populate_hf_cache(cache: Path, repo_id: str, files: Dict[str, Union[bytes, Path]],
                      commit: str = 'c0ffee' * 6 + 'c0de') -> Path:
    """Lay out ``files`` as huggingface_hub would after downloading them from ``repo_id`` (revision main)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / 'snapshots' / commit
    snapshot.mkdir(parents=True)
    (repo / 'blobs').mkdir(exist_ok=True)
    (repo / 'refs').mkdir(exist_ok=True)
    (repo / 'refs' / 'main').write_text(commit)
    for name, data in files.items():
        payload = Path(data).read_bytes() if isinstance(data, Path) else data
        blob = repo / 'blobs' / hashlib.sha256(payload).hexdigest()
        blob.write_bytes(payload)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    return snapshot


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on localhost; yields the base URL."""
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_port}'
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    """A local TCP port nobody listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def features(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().forward_features(clip(seed))


def _go_online(monkeypatch) -> None:
    """Allow network attempts (to local test servers), even if the suite runs with HF_HUB_OFFLINE=1."""
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    monkeypatch.delenv('TRANSFORMERS_OFFLINE', raising=False)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / 'hf-cache'
    cache.mkdir()
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    return cache


@pytest.fixture
def source():
    model = make_backbone()
    return model, features(model)


@pytest.fixture
def test_tag(monkeypatch):
    """Register ``test_r3d.fima_test``: an unpublished FIMA tag whose hub repo is ``org/fima-test``."""
    cfg = VideoPretrainedCfg(**{**get_pretrained_cfg(ARCH).to_dict(), 'hf_hub_id': 'org/fima-test', 'tag': 'fima_test',
                                'architecture': ARCH, 'method': 'fima', 'num_classes': 0, 'published': False})
    monkeypatch.setitem(_registry._model_pretrained_cfgs, TEST_TAG, cfg)
    monkeypatch.setitem(_registry._model_with_tags, ARCH, [*_registry._model_with_tags[ARCH], TEST_TAG])
    monkeypatch.setattr(_registry, '_model_has_pretrained', _registry._model_has_pretrained | {TEST_TAG})
    return cfg


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything opens a socket."""
    def refuse(*args, **kwargs):
        raise AssertionError(f'unexpected network access: {args}')
    monkeypatch.setattr(socket, 'create_connection', refuse)
    monkeypatch.setattr(socket.socket, 'connect', refuse)


def test_file_overlay_loads_fima_checkpoint(tmp_path, source):
    model, expected = source
    path = write_checkpoint(tmp_path / 'checkpoint_0199.pth.tar', 'fima', model.state_dict())
    loaded = fima_models.create_model(ARCH, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(features(loaded), expected)


def test_hub_name_from_offline_cache(tmp_path, hf_cache, source, no_network):
    model, expected = source
    ckpt = write_checkpoint(tmp_path / 'ckpt.safetensors', 'safetensors', model.state_dict())
    export = convert_checkpoint(ckpt, ARCH, tmp_path / 'export').out_dir
    populate_hf_cache(hf_cache, 'org/x', {f: export / f for f in ('config.json', 'model.safetensors', 'README.md')})
    loaded = fima_models.create_model('hf-hub:org/x')
    assert loaded.num_classes == 0
    assert loaded.pretrained_cfg['hf_hub_id'] == 'org/x'
    assert torch.equal(features(loaded), expected)
    assert [p.name for p in download_pretrained('hf-hub:org/x')] == ['config.json', 'model.safetensors']


def test_registered_tag_from_offline_cache_falls_back_to_bin(tmp_path, hf_cache, source, test_tag, no_network):
    model, expected = source
    bin_path = tmp_path / 'pytorch_model.bin'
    torch.save(model.state_dict(), bin_path)
    populate_hf_cache(hf_cache, 'org/fima-test', {'pytorch_model.bin': bin_path})
    loaded = fima_models.create_model(TEST_TAG, pretrained=True)
    assert torch.equal(features(loaded), expected)
    assert download_pretrained(TEST_TAG)[0].name == 'pytorch_model.bin'


def _assert_helpful(err: BaseException, name: str, published: bool = True) -> None:
    text = str(err)
    for needle in (f"'{name}'", 'fima-models convert', 'pretrained_cfg_overlay=dict(file=', 'python -m train pretrain'):
        assert needle in text, needle
    # downloading is advice only for weights that exist at their source
    assert (f'fima-models download {name}' in text) == published


@pytest.fixture
def silent_server():
    """A local port that accepts TCP connections and never answers (a hanging server or proxy)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        s.listen(64)
        yield s.getsockname()[1]


@pytest.mark.parametrize('mode', ['offline', 'refused', 'silent'])
def test_missing_weights_fail_fast_with_one_clear_error(hf_cache, monkeypatch, test_tag, silent_server, mode):
    monkeypatch.setitem(_registry._model_pretrained_cfgs, TEST_TAG,
                        VideoPretrainedCfg(**{**test_tag.to_dict(), 'published': True}))
    if mode != 'offline':
        _go_online(monkeypatch)
        port = closed_port() if mode == 'refused' else silent_server
        monkeypatch.setenv('HF_ENDPOINT', f'http://127.0.0.1:{port}')
        monkeypatch.setenv('FIMA_MODELS_CONNECT_TIMEOUT', '1')
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        fima_models.create_model(TEST_TAG, pretrained=True)
    assert time.monotonic() - start < 5
    _assert_helpful(info.value, TEST_TAG)
    assert ('HF_HUB_OFFLINE' if mode == 'offline' else 'unreachable') in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_unpublished_tag_fails_without_network(hf_cache, monkeypatch, test_tag, no_network):
    _go_online(monkeypatch)
    with pytest.raises(PretrainedWeightsUnavailable, match='not published yet') as info:
        fima_models.create_model(TEST_TAG, pretrained=True)
    _assert_helpful(info.value, TEST_TAG, published=False)
    # a real registry tag takes the same path
    with pytest.raises(PretrainedWeightsUnavailable, match='not published yet'):
        fetch_pretrained(get_pretrained_cfg('r3d_18.fima_ucf101'))


def _serve_weights_online(tmp_path: Path, monkeypatch, model: torch.nn.Module, name: str) -> Path:
    """A fresh torch hub cache, network allowed, and ``model``'s weights saved as ``srv/NAME``; returns srv/."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    _go_online(monkeypatch)
    served = tmp_path / 'srv'
    served.mkdir()
    torch.save(model.state_dict(), served / name)
    return served


def test_url_source_uses_torch_hub_cache(tmp_path, monkeypatch, source, silent_server):
    model, expected = source
    served = _serve_weights_online(tmp_path, monkeypatch, model, 'weights.pth')
    digest = hashlib.sha256((served / 'weights.pth').read_bytes()).hexdigest()
    (served / 'weights.pth').rename(served / f'test_r3d-{digest[:8]}.pth')
    (served / 'corrupt-0000abcd.pth').write_bytes(b'not what the hash says')
    with serve_folder(served) as base:
        url = f'{base}/test_r3d-{digest[:8]}.pth'
        loaded = fima_models.create_model(ARCH, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(url=url))
        with pytest.raises(PretrainedWeightsUnavailable, match='corrupt'):
            fima_models.create_model(ARCH, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(
                url=f'{base}/corrupt-0000abcd.pth'))
    checkpoints = tmp_path / 'torch' / 'hub' / 'checkpoints'
    assert sorted(p.name for p in checkpoints.iterdir()) == [f'test_r3d-{digest[:8]}.pth']  # nothing partial
    assert torch.equal(features(loaded), expected)
    # the server is gone: the cached copy is used, even offline
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    again = fima_models.create_model(ARCH, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(url=url))
    assert torch.equal(features(again), expected)
    # an uncached URL on an unreachable or silent server fails fast
    _go_online(monkeypatch)
    monkeypatch.setenv('FIMA_MODELS_CONNECT_TIMEOUT', '1')
    for port in (closed_port(), silent_server):
        start = time.monotonic()
        with pytest.raises(PretrainedWeightsUnavailable, match='unreachable'):
            fima_models.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(
                url=f'http://127.0.0.1:{port}/other.pth'))
        assert time.monotonic() - start < 5


def test_in_chans_and_classifier_adaptation(tmp_path, caplog):
    source = make_backbone(num_classes=10)
    path = tmp_path / 'sup.pth'
    torch.save(source.state_dict(), path)
    overlay = dict(file=str(path))
    same = fima_models.create_model(ARCH, pretrained=True, num_classes=10, pretrained_cfg_overlay=overlay)
    assert torch.equal(same.fc.weight, source.fc.weight)
    with caplog.at_level(logging.INFO, logger='fima_models.models'):
        other = fima_models.create_model(
            ARCH, pretrained=True, num_classes=5, in_chans=1, pretrained_cfg_overlay=overlay)
    assert 'Dropped the checkpoint classifier' in caplog.text
    assert other.fc.weight.shape[0] == 5
    assert torch.allclose(other.stem[0].weight, source.stem[0].weight.sum(1, keepdim=True))
    assert torch.equal(other.layer4[0].conv1[0].weight, source.layer4[0].conv1[0].weight)
    headless = fima_models.create_model(ARCH, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
    assert torch.equal(features(headless), features(source))


def test_wrong_architecture_names_the_keys(tmp_path):
    path = tmp_path / 'r2p1d.pth'
    torch.save(make_backbone('test_r2plus1d').state_dict(), path)
    with pytest.raises(CheckpointError, match='do not fit') as info:
        fima_models.create_model(ARCH, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(path)))
    assert 'stem.' in str(info.value) and 'shape mismatches' in str(info.value)


def test_state_dict_overlay_and_missing_file(tmp_path):
    model = make_backbone()
    loaded = fima_models.create_model(ARCH, num_classes=0)
    report = load_pretrained(loaded, dict(loaded.pretrained_cfg, state_dict=model.state_dict()))
    assert report.source == 'state_dict' and report.dropped == []
    assert torch.equal(features(loaded), features(model))
    with pytest.raises(CheckpointError, match='not found'):
        fima_models.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'no.pth')))


def test_model_source_errors(tmp_path, hf_cache):
    with pytest.raises(CheckpointError, match='not found'):
        resolve_model_source(f'local-dir:{tmp_path / "missing"}')
    with pytest.raises(CheckpointError, match='no config.json'):
        resolve_model_source(f'local-dir:{tmp_path}')
    with pytest.raises(ValueError, match='Malformed'):
        resolve_model_source('hf-hub:just-a-name')
    with pytest.raises(PretrainedWeightsUnavailable, match='hf-hub:org/absent'):
        resolve_model_source('hf-hub:org/absent')
    with pytest.raises(ValueError, match='Unknown pretrained name'):
        download_pretrained('no_such_model')


def test_git_blob_sha1_is_gits_object_id(tmp_path):
    # ids that `git hash-object` prints for these contents (git's well-known empty blob, and "hello\n")
    (tmp_path / 'empty').write_bytes(b'')
    (tmp_path / 'hello').write_bytes(b'hello\n')
    assert git_blob_sha1(tmp_path / 'empty') == 'e69de29bb2d1d6434b8b29ae775ad8c2e48c5391'
    assert git_blob_sha1(tmp_path / 'hello') == 'ce013625030ba8dba906f756967f9e9ca394464a'


def test_url_download_is_checked_against_its_git_blob_id(tmp_path, monkeypatch, source):
    model, expected = source
    served = _serve_weights_online(tmp_path, monkeypatch, model, 'weights.pt')
    content = (served / 'weights.pt').read_bytes()
    blob = hashlib.sha1(b'blob %d\0' % len(content) + content).hexdigest()
    cached = tmp_path / 'torch' / 'hub' / 'checkpoints' / 'weights.pt'
    with serve_folder(served) as base:
        overlay = dict(url=f'{base}/weights.pt', git_blob_sha1='0' * 40)
        with pytest.raises(PretrainedWeightsUnavailable, match='not the published file.*was not kept'):
            fima_models.create_model(ARCH, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
        assert not cached.parent.exists() or not any(cached.parent.iterdir())
        loaded = fima_models.create_model(ARCH, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(
            url=f'{base}/weights.pt', git_blob_sha1=blob))
    assert torch.equal(features(loaded), expected) and cached.read_bytes() == content
    # a cached file of the same name but other content is refused, not used
    cached.write_bytes(b'another project\'s weights.pt')
    with pytest.raises(PretrainedWeightsUnavailable, match=f'cached copy {cached} .*delete it'):
        fima_models.create_model(ARCH, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(
            url='http://127.0.0.1:9/weights.pt', git_blob_sha1=blob))


PUBLISHED_DEFAULTS = {'r2plus1d_18': 'tv_k400', 'r3d_18': 'tv_k400', 'mc3_18': 'tv_k400', 's3d': 'tv_k400',
                      'i3d_tf': 'deepmind_k400'}


@pytest.mark.parametrize('arch', sorted(PUBLISHED_DEFAULTS))
def test_default_tag_is_published(arch):
    cfg = get_pretrained_cfg(arch)
    assert cfg.tag == PUBLISHED_DEFAULTS[arch] and cfg.published


def test_every_architecture_has_a_published_default_or_points_to_one():
    # i3d is the FIMA authors' I3D (PyTorch padding, BN eps 1e-5): DeepMind's weights need i3d_tf's arithmetic
    architectures = [a for a in fima_models.list_models() if not a.startswith('test_')]
    assert sorted(a for a in architectures if not get_pretrained_cfg(a).published) == ['i3d']
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        fetch_pretrained(get_pretrained_cfg('i3d'), allow_network=False)
    assert 'use published weights: i3d_tf.deepmind_k400' in str(err.value)


def test_unpublished_tag_suggests_published_weights_not_a_download(hf_cache, no_network):
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        fima_models.create_model('r2plus1d_fima', pretrained=True)
    text = str(err.value)
    assert "'r2plus1d_18.fima_k400'" in text and 'not published yet' in text
    assert 'fima-models download r2plus1d_18.fima_k400' not in text
    assert "use published weights: r2plus1d_18.tv_k400 (create_model('r2plus1d_18.tv_k400', pretrained=True)" in text


def test_pretrained_true_loads_the_published_default_from_the_cache(tmp_path, monkeypatch, no_network):
    """``create_model('s3d', pretrained=True)`` = torchvision's Kinetics-400 S3D, from a cache-populated copy."""
    tv_video = pytest.importorskip('torchvision.models.video')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    torch.manual_seed(0)
    reference = tv_video.s3d().eval()
    with torch.no_grad():  # non-trivial running statistics, so a BN left at its init would show
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    cached = tmp_path / 'torch' / 'hub' / 'checkpoints' / 's3d-d76dad2f.pth'
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    model = fima_models.create_model('s3d', pretrained=True).eval()
    assert model.pretrained_cfg['tag'] == 'tv_k400'
    clip_ = torch.randn(1, 3, 16, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model.forward_features(clip_), reference.features(clip_), atol=1e-5, rtol=1e-4)
    assert torch.equal(model.get_classifier().weight.flatten(1), reference.classifier[1].weight.flatten(1))
