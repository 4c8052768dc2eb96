"""Careless and hostile use: nothing lost, nothing silently wrong, one clear message per failure.

Each test tries what a user could do (or what a full disk, a second process or a killed run does)
and checks the promise of docs/reliability.md: the previous state survives, stale results are not
reused, and the error names the problem and the fix.
"""
from __future__ import annotations

import errno
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import List

import av
import numpy as np
import pytest
import torch

import fima_models
from fima_models._utils import atomic as _atomic
from fima_models.checkpoint import CheckpointError, UnsafeCheckpointError, read_checkpoint
from fima_models.cli import main as cli_main
from fima_models.convert import OutputExistsError, convert_checkpoint
from fima_models.extract import pipeline as extract_pipeline
from fima_models.extract import runner as extract_runner
from fima_models.extract import storage as extract_storage
from fima_models.extract import summary as extract_summary
from tests.media import make_frames, write_video
from tests.test_cli_extract import run_cli, summary_of

REPO = Path(__file__).resolve().parents[1]
ARCH = 'test_r3d'
EXTRACT = ['--model', ARCH, '--no-pretrained', '--clip-len', '8', '--stride', '8', '--no-progress', '--workers', '0']


def statuses(out: Path) -> dict:
    return {Path(v['input']).name: v['status'] for v in summary_of(out)['videos']}


def backbone(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return fima_models.create_model(ARCH, num_classes=0)


def entries(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / 'weights.pth'
    torch.save(backbone(1).state_dict(), path)
    return path


# ----------------------------------------------------------------------------- convert
def test_overwrite_replaces_only_the_converted_files(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / 'zoo'
    convert_checkpoint(checkpoint, ARCH, out)
    (out / 'notes.md').write_text('mine')
    with pytest.raises(OutputExistsError, match='--keep-other-files'):
        convert_checkpoint(checkpoint, ARCH, out, overwrite=True)
    other = tmp_path / 'other.pth'
    torch.save(backbone(2).state_dict(), other)
    convert_checkpoint(other, ARCH, out, overwrite=True, keep_other_files=True)
    assert entries(out) == ['README.md', 'config.json', 'model.safetensors', 'notes.md']
    assert (out / 'notes.md').read_text() == 'mine'
    loaded = fima_models.create_model(f'local-dir:{out}').state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in backbone(2).state_dict().items())


def test_a_folder_holding_the_source_is_refused_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / 'run'
    folder.mkdir()
    src = folder / 'checkpoint.pth'
    torch.save(backbone(1).state_dict(), src)
    for flags in ({}, {'overwrite': True}):
        with pytest.raises(OutputExistsError, match='the source checkpoint'):
            convert_checkpoint(src, ARCH, folder, **flags)
    assert entries(folder) == ['checkpoint.pth']
    convert_checkpoint(src, ARCH, folder, keep_other_files=True)
    assert entries(folder) == ['README.md', 'checkpoint.pth', 'config.json', 'model.safetensors']


def test_out_dot_converts_into_the_current_folder(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    here = tmp_path / 'here'
    here.mkdir()
    monkeypatch.chdir(here)
    assert cli_main(['convert', str(checkpoint), '--model', ARCH, '--out', '.']) == 0
    assert cli_main(['convert', str(checkpoint), '--model', ARCH, '--out', '.', '--overwrite']) == 0
    assert entries(here) == ['README.md', 'config.json', 'model.safetensors']
    assert entries(tmp_path) == ['here', 'weights.pth']  # no stray staging or backup folder


def test_a_full_disk_leaves_the_previous_conversion_intact(tmp_path: Path, checkpoint: Path, monkeypatch,
                                                          capsys) -> None:
    out = tmp_path / 'zoo'
    convert_checkpoint(checkpoint, ARCH, out)
    before = {name: (out / name).read_bytes() for name in entries(out)}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device', str(out / 'model.safetensors'))

    monkeypatch.setattr('fima_models.convert.save_file', full)
    rc = cli_main(['convert', str(checkpoint), '--model', ARCH, '--out', str(out), '--overwrite'])
    err = capsys.readouterr().err
    assert rc == 1 and err.count('\n') == 1 and 'the disk is full' in err and 'model.safetensors' in err
    assert {name: (out / name).read_bytes() for name in entries(out)} == before


def test_non_finite_weights_are_refused_at_conversion_and_load(tmp_path: Path) -> None:
    sd = backbone(1).state_dict()
    sd['stem.0.weight'][0, 0, 0, 0, 0] = float('nan')
    sd['layer1.0.conv1.0.weight'][0, 0, 0, 0, 0] = float('inf')
    bad = tmp_path / 'diverged.pth'
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match=r'NaN or infinite values in 2 tensor\(s\): stem.0.weight, layer1'):
        convert_checkpoint(bad, ARCH, tmp_path / 'zoo')
    assert not (tmp_path / 'zoo').exists()
    with pytest.raises(CheckpointError, match='NaN or infinite'):
        fima_models.create_model(ARCH, pretrained=True, pretrained_cfg_overlay={'file': str(bad)})


def test_outputs_follow_the_umask(tmp_path: Path, checkpoint: Path) -> None:
    previous = os.umask(0o027)
    try:
        written = _atomic.atomic_write_text(tmp_path / 'a.txt', 'x')
        convert_checkpoint(checkpoint, ARCH, tmp_path / 'zoo')
    finally:
        os.umask(previous)
    assert written.stat().st_mode & 0o777 == 0o640
    assert (tmp_path / 'zoo').stat().st_mode & 0o777 == 0o750
    assert {(p.stat().st_mode & 0o777) for p in (tmp_path / 'zoo').iterdir()} == {0o640}


# ----------------------------------------------------------------------------- atomic writes and the lock
def _hammer(path: str, tag: int, rounds: int) -> int:
    """Write ``path`` ``rounds`` times with a payload only this writer makes; return the failures."""
    failures = 0
    payload = bytes([tag]) * 200_000
    for _ in range(rounds):
        try:
            _atomic.atomic_write_bytes(path, payload)
        except OSError:
            failures += 1
    return failures


def test_concurrent_writers_never_fail_and_readers_never_see_a_mix(tmp_path: Path) -> None:
    target = tmp_path / 'shared.bin'
    _atomic.atomic_write_bytes(target, bytes([9]) * 200_000)
    context = multiprocessing.get_context('fork')
    with context.Pool(3) as pool:
        pending = pool.starmap_async(_hammer, [(str(target), tag, 40) for tag in range(3)])
        mixed = 0
        while not pending.ready():
            data = target.read_bytes()
            mixed += len(data) != 200_000 or len(set(data)) != 1
        assert pending.get() == [0, 0, 0]
    assert mixed == 0
    assert entries(tmp_path) == ['shared.bin']  # no temporary file left behind


def _hold_lock(folder: str, ready: str) -> None:
    with _atomic.FolderLock(folder, 'extract'):
        Path(ready).touch()
        time.sleep(60)


def test_a_second_writer_is_told_who_holds_the_folder_and_a_killed_holder_frees_it(tmp_path: Path) -> None:
    ready = tmp_path / 'ready'
    holder = multiprocessing.get_context('fork').Process(target=_hold_lock, args=(str(tmp_path / 'out'), str(ready)))
    holder.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(RuntimeError, match=rf'in use by another run \(pid {holder.pid} on host '):
            run_cli([str(tmp_path / 'nothing.mp4'), '--out', str(tmp_path / 'out'), *EXTRACT])
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    with _atomic.FolderLock(tmp_path / 'out', 'extract'):
        pass


# ----------------------------------------------------------------------------- extraction
@pytest.fixture
def videos(tmp_path: Path) -> Path:
    root = tmp_path / 'videos'
    root.mkdir()
    write_video(root / 'a.mp4', make_frames(16, 32, 32, seed=1), fps=10)
    write_video(root / 'b.mp4', make_frames(16, 32, 32, seed=2), fps=10)
    return root


def _model_folder(tmp_path: Path, seed: int, overwrite: bool = False) -> Path:
    src = tmp_path / f'seed{seed}.pth'
    torch.save(backbone(seed).state_dict(), src)
    convert_checkpoint(src, ARCH, tmp_path / 'model', overwrite=overwrite)
    return tmp_path / 'model'


def test_new_weights_under_the_same_name_are_extracted_again(tmp_path: Path, videos: Path) -> None:
    model = _model_folder(tmp_path, 1)
    out = tmp_path / 'feats'
    argv = [str(videos), '--out', str(out), '--model', str(model), '--clip-len', '8', '--stride', '8',
            '--no-progress', '--workers', '0']
    assert run_cli(argv) == 0
    first = np.load(out / 'a.npy')
    assert run_cli(argv) == 0 and set(statuses(out).values()) == {'skipped'}
    _model_folder(tmp_path, 2, overwrite=True)
    assert run_cli(argv) == 0 and set(statuses(out).values()) == {'ok'}
    assert not np.allclose(np.load(out / 'a.npy'), first)


def test_a_replaced_video_is_extracted_again(tmp_path: Path, videos: Path) -> None:
    out = tmp_path / 'feats'
    argv = [str(videos), '--out', str(out), *EXTRACT]
    assert run_cli(argv) == 0
    first = np.load(out / 'a.npy')
    write_video(videos / 'a.mp4', make_frames(16, 32, 32, seed=7), fps=10)
    assert run_cli(argv) == 0
    assert statuses(out) == {'a.mp4': 'ok', 'b.mp4': 'skipped'}
    assert not np.allclose(np.load(out / 'a.npy'), first)


def test_an_interrupted_run_leaves_a_summary_of_itself(tmp_path: Path, videos: Path, monkeypatch) -> None:
    out = tmp_path / 'feats'
    assert run_cli([str(videos), '--out', str(out), *EXTRACT]) == 0
    monkeypatch.setattr(extract_summary, 'SUMMARY_INTERVAL', 0.0)
    real_save = extract_pipeline.save_features
    saved = []

    def save_then_stop(result, path, extra=None):
        if saved:
            raise KeyboardInterrupt
        saved.append(path)
        return real_save(result, path, extra)

    monkeypatch.setattr(extract_pipeline, 'save_features', save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_cli([str(videos), '--out', str(out), *EXTRACT, '--step', '2'])
    summary = summary_of(out)
    assert summary['complete'] is False and summary['config']['step'] == 2
    assert statuses(out) == {'a.mp4': 'ok', 'b.mp4': 'pending'}


def test_non_finite_features_are_never_saved_as_ok(tmp_path: Path, videos: Path, monkeypatch) -> None:
    monkeypatch.setattr(extract_runner.FeatureRunner, '__call__', lambda self, clips: torch.full((len(clips), 4, 1, 1, 1), math.nan))
    out = tmp_path / 'feats'
    assert run_cli([str(videos / 'a.mp4'), '--out', str(out), *EXTRACT]) == 1
    entry = summary_of(out)['videos'][0]
    assert entry['status'] == 'failed' and 'NaN or infinite' in entry['reason']
    assert not list(out.glob('*.npy'))


def test_a_full_disk_fails_the_videos_in_one_line_and_keeps_the_summary(tmp_path: Path, videos: Path,
                                                                        monkeypatch) -> None:
    def full(path, data):
        raise OSError(errno.ENOSPC, 'No space left on device', str(path))

    monkeypatch.setattr(extract_storage, 'atomic_write_bytes', full)
    out = tmp_path / 'feats'
    assert run_cli([str(videos), '--out', str(out), *EXTRACT]) == 1
    reasons = [v['reason'] for v in summary_of(out)['videos']]
    assert len(reasons) == 2 and all('the disk is full' in r and '\n' not in r for r in reasons)
    assert not [p for p in out.rglob('*') if p.name not in (extract_summary.SUMMARY_NAME, '.extract.lock')]


def test_a_read_only_out_is_one_line_before_any_work(tmp_path: Path, videos: Path, monkeypatch) -> None:
    def read_only(lock):
        raise OSError(errno.EROFS, 'Read-only file system', str(lock.path))

    monkeypatch.setattr(_atomic.FolderLock, '__enter__', read_only)
    with pytest.raises(RuntimeError, match=r"cannot write '.*feats/.extract.lock': the file system is read-only"):
        run_cli([str(videos), '--out', str(tmp_path / 'feats'), *EXTRACT])


@pytest.mark.parametrize('content,message', [
    (b'\x00\x01binary\x00list', 'is a binary file'),
    ('vid\u00e9o.mp4\n'.encode('latin-1'), 'is not UTF-8 text'),
])
def test_a_bad_list_file_is_named(tmp_path: Path, content: bytes, message: str) -> None:
    listing = tmp_path / 'videos.txt'
    listing.write_bytes(content)
    with pytest.raises(ValueError, match=f"'{listing}' {message}"):
        run_cli([str(listing), '--out', str(tmp_path / 'feats'), *EXTRACT])
    assert not (tmp_path / 'feats').exists()


def test_a_directory_named_like_a_video_is_reported_as_a_directory(tmp_path: Path) -> None:
    (tmp_path / 'clip.mp4').mkdir()
    out = tmp_path / 'feats'
    assert run_cli([str(tmp_path / 'clip.mp4'), '--out', str(out), *EXTRACT]) == 1
    assert 'is a directory, not a video file' in summary_of(out)['videos'][0]['reason']


@pytest.mark.parametrize('flags,message', [
    (['--fps', '0'], '--fps must be a positive frame rate'),
    (['--fps', 'nan'], '--fps must be a positive frame rate'),
    (['--layer', '7'], 'layer=7 does not exist'),
])
def test_invalid_settings_stop_before_any_work(tmp_path: Path, videos: Path, flags: List[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_cli([str(videos), '--out', str(tmp_path / 'feats'), *EXTRACT, *flags])
    assert not (tmp_path / 'feats').exists()


def _audio_only(path: Path) -> Path:
    with av.open(str(path), 'w') as container:
        stream = container.add_stream('aac', rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format='fltp', layout='mono')
        frame.sample_rate = 8000
        frame.pts, frame.time_base = 0, Fraction(1, 8000)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


def test_unreadable_inputs_fail_one_by_one_with_the_reason(tmp_path: Path, videos: Path) -> None:
    (videos / 'empty.mp4').write_bytes(b'')
    (videos / 'text.mp4').write_text('this is not a video\n')
    (videos / 'cut.mp4').write_bytes((videos / 'b.mp4').read_bytes()[:300])
    _audio_only(videos / 'sound.mp4')
    out = tmp_path / 'feats'
    assert run_cli([str(videos), '--out', str(out), *EXTRACT]) == 1
    found = {Path(v['input']).name: v for v in summary_of(out)['videos']}
    assert found['a.mp4']['status'] == found['b.mp4']['status'] == 'ok'
    for name in ('empty.mp4', 'text.mp4', 'cut.mp4', 'sound.mp4'):
        assert found[name]['status'] == 'failed' and found[name]['reason'], name
    assert sorted(p.name for p in out.glob('*.npy')) == ['a.npy', 'b.npy']


# ----------------------------------------------------------------------------- checkpoints
class _Payload:
    def __reduce__(self):
        return (os.system, ('touch pwned',))


def test_malicious_pickles_never_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({'state_dict': _Payload()}, tmp_path / 'evil.pth')
    with pytest.raises(UnsafeCheckpointError, match='nothing from it was executed'):
        read_checkpoint(tmp_path / 'evil.pth')
    assert not (tmp_path / 'pwned').exists()


def test_random_bytes_are_not_called_unsafe(tmp_path: Path) -> None:
    (tmp_path / 'noise.pt').write_bytes(bytes(range(256)) * 16)
    with pytest.raises(CheckpointError, match=r"noise.pt is not a PyTorch checkpoint \(Unsupported operand") as info:
        read_checkpoint(tmp_path / 'noise.pt')
    assert not isinstance(info.value, UnsafeCheckpointError)


# ----------------------------------------------------------------------------- train configuration
@pytest.fixture(scope='module')
def motion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fima_models.data.synthetic import write_motion_dataset

    return write_motion_dataset(tmp_path_factory.mktemp('motion'), classes=['MoveLeft', 'MoveRight'],
                                videos_per_class=2, num_frames=16, size=32, progress=False)


def _pretrain_yaml(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / 'tiny.yaml'
    path.write_text(
        'method: moco\nseed: 1\ndevice: cpu\nprecision: fp32\nchannels_last: false\n'
        f'model: {{arch: {ARCH}}}\n'
        f'data: {{root: {root}, clip_len: 8, size: 32, num_workers: 0}}\n'
        'train: {epochs: 3, batch_size: 2, tensorboard: false, progress: false, print_every: 0, '
        'checkpoint_every_steps: 1, keep_last: 5}\n'
        'fima: {proj_hidden: 16, embed_dim: 8, queue_size: 8, motion_queue_size: 8}\n')
    return path


@pytest.mark.parametrize('override,message', [
    ('train.batch_size=abc', "train.batch_size='abc' is not valid (accepted: an integer >= 1)"),
    ('optim.lr=fast', "optim.lr='fast' is not valid (accepted: a number >= 0)"),
    ('train.batch_size=0', 'train.batch_size must be an integer >= 1; got 0'),
    ('train.batch_size=-4', 'train.batch_size must be an integer >= 1; got -4'),
    ('optim.lr=-0.1', 'optim.lr must be a number >= 0; got -0.1'),
    ('data.split=4', 'data.split must be an integer >= 1 and <= 3; got 4'),
    ('optim.lrr=0.1', "did you mean 'lr'"),
    ('+train.colour=red', "cannot add 'train.colour': train has a fixed set of keys"),
    ('fima.temprature=0.2', "did you mean 'temperature'"),
    ('fima.queue_size=big', "fima.queue_size='big' must be an integer"),
    ('method=byol', 'method must be one of fima, moco'),
    ('device=gpu', "device='gpu' is not valid (accepted: auto, cpu, cuda or cuda:K)"),
    ('model.arch=r2plus1d', "model.arch='r2plus1d': Unknown model 'r2plus1d'. Did you mean: r2plus1d_18"),
    ('+model.kwargs.drop_rate=-1', 'drop_rate must be in [0.0, 1.0), got -1'),
])
def test_pretrain_config_errors_name_the_key_and_write_nothing(tmp_path: Path, motion_root: Path, override: str,
                                                                message: str, caplog) -> None:
    from train.pretrain import main

    out = tmp_path / 'run'
    assert main(['--config', str(_pretrain_yaml(tmp_path, motion_root)), '--out', str(out), override]) == 2
    assert message in caplog.text
    assert not out.exists()


def test_a_run_dict_is_validated_like_the_command_line(tmp_path: Path, motion_root: Path) -> None:
    from train.common.config import ConfigError, load_yaml
    from train.pretrain import run_pretrain

    cfg = load_yaml(_pretrain_yaml(tmp_path, motion_root))
    cfg['train']['batch_size'] = 'two'
    with pytest.raises(ConfigError, match="train.batch_size='two' is not valid"):
        run_pretrain(cfg, tmp_path / 'run')
    assert not (tmp_path / 'run').exists()


def test_out_that_is_a_file_and_unusable_resume_files_get_one_message(tmp_path: Path, motion_root: Path,
                                                                       caplog) -> None:
    from train.pretrain import main

    config = str(_pretrain_yaml(tmp_path, motion_root))
    (tmp_path / 'file').write_text('x')
    assert main(['--config', config, '--out', str(tmp_path / 'file')]) == 2
    assert 'exists and is not a folder' in caplog.text
    (tmp_path / 'random.pt').write_bytes(os.urandom(4096))
    torch.save({'state_dict': _Payload()}, tmp_path / 'evil.pt')
    torch.save({'format': 'something-else'}, tmp_path / 'foreign.pt')
    for name, message in (('random.pt', 'random.pt'), ('evil.pt', 'Refused to load'),
                          ('foreign.pt', 'is not a fima-models-train checkpoint')):
        caplog.clear()
        assert main(['--config', config, '--out', str(tmp_path / name[:-3]), '--resume', str(tmp_path / name)]) == 2
        assert message in caplog.text and str(tmp_path / name) in caplog.text
        assert not (tmp_path / name[:-3]).exists()


def test_auto_resume_skips_a_truncated_newest_checkpoint(tmp_path: Path, motion_root: Path, caplog) -> None:
    from train.common import checkpoint as ckpt
    from train.pretrain import main

    config = str(_pretrain_yaml(tmp_path, motion_root))
    out = tmp_path / 'run'
    assert main(['--config', config, '--out', str(out), 'train.stop_after_steps=1']) == 0
    assert main(['--config', config, '--out', str(out), 'train.stop_after_steps=2']) == 0
    newest = ckpt.find_latest(out)
    newest.write_bytes(newest.read_bytes()[:1000])
    caplog.clear()
    assert main(['--config', config, '--out', str(out)]) == 0
    assert f'skipping checkpoint {newest}' in caplog.text
    assert 'at step 1 ' in caplog.text  # resumed from the older, intact checkpoint


@pytest.mark.slow
def test_a_killed_run_resumes(tmp_path: Path, motion_root: Path) -> None:
    from train.common import checkpoint as ckpt

    config = str(_pretrain_yaml(tmp_path, motion_root))
    out = tmp_path / 'run'
    command = [sys.executable, '-m', 'train', 'pretrain', '--config', config, '--out', str(out), 'train.epochs=50']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while len(ckpt.list_checkpoints(out)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    kept = ckpt.list_checkpoints(out)
    assert len(kept) >= 2
    done = subprocess.run([*command[:-1], 'train.epochs=1', 'train.stop_after_steps=' + str(len(kept) + 1)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'resumed from' in done.stderr


def test_downstream_config_errors_name_the_key(tmp_path: Path) -> None:
    from train.common.config import ConfigError
    from train.downstream import resolve_config

    flags = {'root': str(tmp_path), 'model': ARCH, 'out': str(tmp_path / 'o')}
    for override, message in (('split=4', 'split must be 1, 2 or 3 for ucf101'),
                              ('finetune.batch_size=0', 'finetune.batch_size must be an integer >= 1'),
                              ('linear.feature_norm=layer', 'linear.feature_norm must be one of batchnorm, none'),
                              ('data.crop_pct=1.5', 'data.crop_pct must be a number > 0 and <= 1')):
        with pytest.raises(ConfigError, match=message.replace('(', r'\(')):
            resolve_config('finetune', None, flags, [override])


def test_a_truncated_linear_feature_cache_is_rebuilt(tmp_path: Path, caplog) -> None:
    from train.downstream.linear import _read_cache

    cache = tmp_path / 'features_train.pt'
    torch.save({'key': 'k', 'features': torch.randn(6, 4), 'labels': torch.arange(6)}, cache)
    assert _read_cache(cache) is not None
    cache.write_bytes(cache.read_bytes()[:200])
    assert _read_cache(cache) is None
    assert 'is unusable' in caplog.text and str(cache) in caplog.text


# ----------------------------------------------------------------------------- Python API
@pytest.mark.parametrize('kwargs,message', [
    ({'num_classes': 2.5}, 'num_classes must be an integer, got 2.5'),
    ({'in_chans': '3'}, "in_chans must be an integer, got '3'"),
    ({'drop_rate': -1}, r'drop_rate must be in \[0.0, 1.0\), got -1'),
])
def test_wrong_model_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fima_models.create_model(ARCH, **kwargs)


def test_wrong_inputs_give_one_clear_error() -> None:
    with pytest.raises(ValueError, match="model_name must be a model name such as 'r2plus1d_18', got None"):
        fima_models.create_model(None)
    model = fima_models.create_model(ARCH, num_classes=0).eval()
    with pytest.raises(TypeError, match='got numpy.ndarray; convert it with torch.as_tensor'):
        model(np.zeros((1, 3, 8, 32, 32), np.float32))
    with pytest.raises(TypeError, match='weights are torch.float32 but the clips are torch.float64'):
        model(torch.zeros(1, 3, 8, 32, 32, dtype=torch.float64))
    assert model.double()(torch.zeros(1, 3, 8, 32, 32, dtype=torch.float64)).dtype == torch.float64
