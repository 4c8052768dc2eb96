"""Tests of ``fima-models extract`` on tiny videos the tests encode (one of them broken)."""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

import fima_models
from fima_models import extract as F
from fima_models._utils import hardware
from fima_models.cli import extract as cli_extract
from fima_models.extract.clips import raw_clip_limit, prepare_clips
from fima_models.extract.inputs import collect_inputs
from fima_models.extract.workers import ClipBatchDataset, ClipQueue
from tests.media import make_frames, write_video

FPS = 20
REPO = Path(__file__).resolve().parents[1]
#: clip_len 8, stride 8: clips per video of the fixture
EXPECTED_CLIPS = {'sub/long': 5, 'sub/deeper/mid': 2, 'short': 1}
BASE = ['--model', 'test_r3d', '--no-pretrained', '--clip-len', '8', '--stride', '8', '--no-progress']


@pytest.fixture(scope='module')
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp('cli_videos') / 'videos'
    (root / 'sub' / 'deeper').mkdir(parents=True)
    write_video(root / 'sub' / 'long.mp4', make_frames(40, 32, 48, seed=1), fps=FPS, gop=8)
    write_video(root / 'sub' / 'deeper' / 'mid.mp4', make_frames(20, 32, 32, seed=2), fps=FPS)
    write_video(root / 'short.mp4', make_frames(5, 32, 32, seed=3), fps=FPS)
    (root / 'broken.mp4').write_bytes(b'\x00\x00\x00\x18ftypmp42' + b'garbage' * 50)
    (root / 'notes.txt.bak').write_text('not a video')
    return root


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A converted model folder (``fima-models convert`` layout) with fixed weights."""
    from fima_models.convert import convert_checkpoint

    root = tmp_path_factory.mktemp('model')
    torch.manual_seed(3)
    model = fima_models.create_model('test_r3d', num_classes=0)
    torch.save(model.state_dict(), root / 'ckpt.pth')
    convert_checkpoint(root / 'ckpt.pth', 'test_r3d', root / 'converted')
    return root / 'converted'


def run_cli(argv: List[str]) -> int:
    """Parse ``fima-models extract ARGV`` with the command's own parser and run it."""
    parser = argparse.ArgumentParser(prog='fima-models')
    cli_extract.add_parser(parser.add_subparsers(dest='command'))
    return cli_extract.run(parser.parse_args(['extract', *argv]))


def summary_of(out: Path) -> dict:
    return json.loads((out / 'summary.json').read_text())


def by_output(summary: dict) -> dict:
    return {Path(v['input']).name: v for v in summary['videos']}


def test_folder_extraction_summary_outputs_and_exit_status(video_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / 'out'
    rc = run_cli([str(video_dir), '--out', str(out), *BASE, '--workers', '2', '--batch-size', '3'])
    assert rc == 1  # the broken video failed
    summary = summary_of(out)
    assert summary['counts'] == {'ok': 3, 'failed': 1, 'skipped': 0}
    assert summary['clips'] == sum(EXPECTED_CLIPS.values())
    videos = by_output(summary)
    assert set(videos) == {'long.mp4', 'mid.mp4', 'short.mp4', 'broken.mp4'}
    assert videos['broken.mp4']['status'] == 'failed'
    assert 'VideoDecodeError' in videos['broken.mp4']['reason'] and 'broken.mp4' in videos['broken.mp4']['reason']
    assert videos['long.mp4'] | {'input': None} == {
        'input': None, 'output': 'sub/long.npy', 'status': 'ok', 'num_clips': 5, 'seconds': pytest.approx(2.0),
        'reason': None}
    assert videos['short.mp4']['num_clips'] == 1 and videos['short.mp4']['seconds'] == pytest.approx(0.25)
    for rel, clips in EXPECTED_CLIPS.items():
        feats = np.load(out / f'{rel}.npy')
        assert feats.shape == (clips, 32) and feats.dtype == np.float32
        side = json.loads((out / f'{rel}.npy.json').read_text())
        assert side['complete'] and side['num_clips'] == clips and len(side['start_times']) == clips
    short = json.loads((out / 'short.npy.json').read_text())
    assert short['padded'] and short['clip_ends'] == [5] and short['end_times'] == [pytest.approx(0.25)]
    assert not list(out.rglob('*.partial'))
    printed = capsys.readouterr().out
    assert 'extracted 3 video(s), skipped 0, failed 1' in printed


def test_resume_skips_finished_videos_but_not_unfinished_ones(video_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / 'out'
    good = [str(video_dir / 'sub'), str(video_dir / 'short.mp4')]
    assert run_cli([*good, '--out', str(out), *BASE, '--workers', '0']) == 0
    first = {rel: (out / f'{rel}.npy').read_bytes() for rel in ('long', 'deeper/mid', 'short')}
    mtime = (out / 'long.npy').stat().st_mtime_ns

    assert run_cli([*good, '--out', str(out), *BASE, '--workers', '0']) == 0
    summary = summary_of(out)
    assert summary['counts'] == {'ok': 0, 'failed': 0, 'skipped': 3} and summary['clips'] == 0
    assert by_output(summary)['long.mp4']['num_clips'] == 5
    assert (out / 'long.npy').stat().st_mtime_ns == mtime

    # a crash left: a finished-looking feature file without sidecar, and a stale temp file
    (out / 'short.npy.json').unlink()
    (out / 'short.npy.json.partial').write_text('{"complete": true')
    (out / 'long.npy').write_bytes(first['long'][:-8])  # truncated: size disagrees with the sidecar
    assert run_cli([*good, '--out', str(out), *BASE, '--workers', '0']) == 0
    statuses = {k: v['status'] for k, v in by_output(summary_of(out)).items()}
    assert statuses == {'long.mp4': 'ok', 'mid.mp4': 'skipped', 'short.mp4': 'ok'}
    for rel in ('short', 'long'):  # same values; other batch neighbours may change the last bits
        np.testing.assert_allclose(np.load(out / f'{rel}.npy'), np.frombuffer(first[rel][128:], '<f4').reshape(
            np.load(out / f'{rel}.npy').shape), rtol=1e-5, atol=1e-6)
    assert F.read_sidecar(out / 'short.npy') is not None

    # other settings are not taken as finished
    assert run_cli([*good, '--out', str(out), *BASE, '--workers', '0', '--level', 'video']) == 0
    assert summary_of(out)['counts'] == {'ok': 3, 'failed': 0, 'skipped': 0}
    assert np.load(out / 'long.npy').shape == (32,)


def test_same_features_twice(video_dir: Path, tmp_path: Path) -> None:
    outputs = []
    for run in ('a', 'b'):
        out = tmp_path / run
        assert run_cli([str(video_dir / 'sub'), '--out', str(out), *BASE, '--workers', '2', '--batch-size', '3']) == 0
        outputs.append({p.relative_to(out): p.read_bytes() for p in sorted(out.rglob('*.npy'))})
    assert len(outputs[0]) == 2 and outputs[0] == outputs[1]
    rc = run_cli([str(video_dir / 'sub'), '--out', str(tmp_path / 'a'), *BASE, '--workers', '2', '--batch-size', '3',
                  '--overwrite'])
    assert rc == 0 and summary_of(tmp_path / 'a')['counts']['ok'] == 2
    again = {p.relative_to(tmp_path / 'a'): p.read_bytes() for p in sorted((tmp_path / 'a').rglob('*.npy'))}
    assert again == outputs[0]


def test_cli_matches_the_python_api(video_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / 'out'
    rc = run_cli([str(video_dir / 'sub'), '--out', str(out), '--model', str(model_dir), '--no-progress',
                  '--workers', '2', '--batch-size', '4', '--format', 'safetensors', '--level', 'dense',
                  '--layer', '1', '--clip-len', '4', '--step', '2', '--stride', '8'])
    assert rc == 0
    for rel, name in (('long', 'long.mp4'), ('deeper/mid', 'deeper/mid.mp4')):
        cli = F.load_features(out / f'{rel}.safetensors')
        api = F.extract_features(str(model_dir), video_dir / 'sub' / name, clip_len=4, stride=8, step=2,
                                 level='dense', layer=1, batch_size=3, device='cpu')
        assert cli.features.shape == api.features.shape and cli.features.shape[1] == 8
        torch.testing.assert_close(cli.features, api.features, rtol=1e-5, atol=1e-6)
        assert torch.equal(cli.clip_starts, api.clip_starts) and torch.equal(cli.clip_ends, api.clip_ends)
        torch.testing.assert_close(cli.start_times, api.start_times)
        assert cli.level == 'dense' and cli.config['layer'] == 1 and cli.config['step'] == 2
        assert cli.model_name == str(model_dir)


def test_random_weights_are_the_same_in_every_run(video_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / 'out'
    assert run_cli([str(video_dir / 'short.mp4'), '--out', str(out), *BASE, '--workers', '0']) == 0
    api = F.extract_features('test_r3d', video_dir / 'short.mp4', clip_len=8, stride=8, pretrained=False)
    torch.testing.assert_close(F.load_features(out / 'short.npy').features, api.features, rtol=1e-5, atol=1e-6)


def test_list_file_missing_entries_and_pooling_options(video_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / 'data'
    (data / 'clips').mkdir(parents=True)
    shutil.copy(video_dir / 'short.mp4', data / 'clips' / 'short.mp4')
    listing = data / 'videos.txt'
    listing.write_text(f'# videos\nclips/short.mp4\n\n{video_dir / "sub" / "long.mp4"}\nmissing.mp4\n')
    out = tmp_path / 'out'
    rc = run_cli([str(listing), '--out', str(out), *BASE, '--workers', '1', '--spatial-pool', 'keep',
                  '--temporal-pool', 'max'])
    assert rc == 1
    videos = by_output(summary_of(out))
    assert videos['missing.mp4']['status'] == 'failed' and 'no such file' in videos['missing.mp4']['reason']
    assert videos['short.mp4']['status'] == videos['long.mp4']['status'] == 'ok'
    assert np.load(out / 'clips' / 'short.npy').shape == (1, 32, 2, 2)  # relative entries keep their layout
    assert np.load(out / 'long.npy').shape == (5, 32, 2, 2)  # outside the list's folder: file name only


def test_colliding_output_names_are_reported(tmp_path: Path) -> None:
    a, b = tmp_path / 'a', tmp_path / 'b'
    a.mkdir(), b.mkdir()
    frames = make_frames(8, 32, 32)
    write_video(a / 'clip.mp4', frames, fps=FPS)
    write_video(b / 'clip.mp4', frames, fps=FPS)
    jobs, problems = collect_inputs([str(a / 'clip.mp4'), str(b / 'clip.mp4'), str(a / 'clip.mp4')])
    assert [j.path for j in jobs] == [a / 'clip.mp4']
    assert len(problems) == 1 and 'already used' in problems[0]['reason']


def test_bf16_on_a_cpu_without_native_support_is_refused(video_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hardware, 'cpu_has_native_bf16', lambda: False)
    with pytest.raises(ValueError, match='avx512_bf16.*Use precision fp32 or auto'):
        run_cli([str(video_dir / 'short.mp4'), '--out', str(tmp_path / 'o'), *BASE, '--device', 'cpu',
                 '--precision', 'bf16'])
    assert not (tmp_path / 'o').exists()
    with pytest.raises(SystemExit):  # the earlier --amp flag is gone
        run_cli([str(video_dir / 'short.mp4'), '--out', str(tmp_path / 'o'), *BASE, '--amp', 'bf16'])


def test_precision_auto_resolves_before_it_is_recorded(video_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hardware, 'cpu_has_native_bf16', lambda: False)
    out = tmp_path / 'out'
    assert run_cli([str(video_dir / 'short.mp4'), '--out', str(out), *BASE, '--workers', '0', '--device', 'cpu',
                    '--precision', 'auto']) == 0
    assert summary_of(out)['config']['precision'] == 'fp32'  # auto on a CPU without native bf16
    assert json.loads((out / 'short.npy.json').read_text())['extraction']['precision'] == 'fp32'


def test_invalid_arguments(video_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='--batch-size'):
        run_cli([str(video_dir), '--out', str(tmp_path / 'o'), *BASE, '--batch-size', '0'])
    with pytest.raises(ValueError, match='dense'):
        run_cli([str(video_dir), '--out', str(tmp_path / 'o'), *BASE, '--level', 'dense', '--temporal-pool', 'avg'])


@pytest.mark.slow
def test_torchrun_two_ranks_share_the_inputs_and_merge_one_summary(video_dir: Path, tmp_path: Path) -> None:
    """Two CPU ranks via torchrun and the real ``python -m fima_models.cli`` entry point."""
    pytest.importorskip('torch.distributed.run')
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip('torch.distributed with gloo is not available')
    out = tmp_path / 'out'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2',
           '-m', 'fima_models.cli', 'extract', str(video_dir), '--out', str(out), *BASE, '--workers', '0',
           '--device', 'cpu']
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0, proc.stdout + proc.stderr  # the broken video fails on its rank
    summary = summary_of(out)
    assert summary['world_size'] == 2
    assert summary['counts'] == {'ok': 3, 'failed': 1, 'skipped': 0}
    assert summary['clips'] == sum(EXPECTED_CLIPS.values())
    assert [Path(v['input']).name for v in summary['videos']] == ['broken.mp4', 'short.mp4', 'mid.mp4', 'long.mp4']
    assert not list(out.glob('summary.rank*'))
    for rel, clips in EXPECTED_CLIPS.items():
        assert np.load(out / f'{rel}.npy').shape == (clips, 32)


def test_a_layer_the_model_lacks_stops_before_any_work(video_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / 'out'
    with pytest.raises(ValueError, match=r'layer=99 does not exist.*5 blocks.*0\.\.4'):
        run_cli([str(video_dir / 'sub'), '--out', str(out), *BASE, '--workers', '0', '--layer', '99'])
    assert not out.exists()


def test_model_errors_fail_the_videos_with_the_reason(video_dir: Path, tmp_path: Path, monkeypatch) -> None:
    def out_of_memory(self, clips):
        raise RuntimeError('CUDA out of memory')

    monkeypatch.setattr(F.FeatureRunner, '__call__', out_of_memory)
    out = tmp_path / 'out'
    rc = run_cli([str(video_dir / 'sub'), '--out', str(out), *BASE, '--workers', '0'])
    assert rc == 1
    summary = summary_of(out)
    assert summary['counts'] == {'ok': 0, 'failed': 2, 'skipped': 0}
    assert all(v['reason'].startswith('the model failed on a batch') for v in summary['videos'])
    assert not list(out.rglob('*.npy'))


def test_workers_can_leave_the_transform_to_the_device(video_dir: Path, tmp_path: Path) -> None:
    """GPU extraction ships small raw uint8 clips; the device transforms them as the workers would."""
    other = write_video(tmp_path / 'wide.mp4', make_frames(8, 32, 160, seed=5), fps=FPS)
    model = fima_models.create_model('test_r3d', num_classes=0)
    transform = F.build_transform(model)
    mid, broken = video_dir / 'sub' / 'deeper' / 'mid.mp4', video_dir / 'broken.mp4'
    jobs = [(0, str(mid)), (1, str(other)), (2, str(broken))]
    kw = dict(clip_len=8, stride=8, step=1, batch_size=3)
    cooked = list(ClipBatchDataset(jobs, transform, **kw))  # CPU: the workers transform all
    assert raw_clip_limit(torch.device('cpu'), 8, 32) == 0
    limit = raw_clip_limit(torch.device('cuda'), 8, 32)  # float32 size of a transformed clip
    assert 8 * 32 * 32 * 3 <= limit < 8 * 32 * 160 * 3
    raw = list(ClipBatchDataset(jobs, transform, raw_max_bytes=limit, **kw))
    assert [b.videos.tolist() for b in raw] == [b.videos.tolist() for b in cooked] == [[0, 0, 1], []]
    assert isinstance(cooked[0].clips, torch.Tensor) and cooked[0].clips.dtype == torch.float32
    assert isinstance(raw[0].clips, list)  # raw 32x32 clips; the 32x160 clip is transformed in the worker
    assert [c.dtype for c in raw[0].clips] == [torch.uint8, torch.uint8, torch.float32]
    assert [(e['video'], e['status']) for b in raw for e in b.events] == [(0, 'done'), (1, 'done'), (2, 'failed')]
    torch.testing.assert_close(prepare_clips(raw[0].clips, transform, torch.device('cpu')), cooked[0].clips)
    assert prepare_clips(cooked[0].clips, transform, torch.device('cpu')) is cooked[0].clips

    same_size = list(ClipBatchDataset(jobs[:1], transform, raw_max_bytes=limit, **kw))
    assert same_size[0].clips.shape == (2, 8, 32, 32, 3)  # one shape and type: stacked
    torch.testing.assert_close(prepare_clips(same_size[0].clips, transform, torch.device('cpu')),
                               cooked[0].clips[:2])


def test_clip_queue_makes_exact_batches_and_releases_events_after_their_clips() -> None:
    queue = ClipQueue(batch_size=4)
    meta = lambda video, n: torch.tensor([[video, i, i + 1] for i in range(n)])  # noqa: E731
    queue.put(torch.zeros(3, 2), meta(0, 3))
    queue.mark({'video': 0, 'status': 'done'})
    queue.put(torch.ones(3, 2), meta(1, 3))
    assert queue.size == 6 and queue.due() == []
    clips, rows = queue.take(4)
    assert clips.shape == (4, 2) and rows[:, 0].tolist() == [0, 0, 0, 1]
    assert [e['video'] for e in queue.due()] == [0]  # all of video 0 has been through the model
    queue.mark({'video': 1, 'status': 'done'})
    assert queue.due() == [] and queue.size == 2
    clips, rows = queue.take(queue.size)
    assert rows[:, 0].tolist() == [1, 1] and torch.equal(clips, torch.ones(2, 2))
    assert [e['video'] for e in queue.due()] == [1] and queue.size == 0
