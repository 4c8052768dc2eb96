"""Tests of the feature-extraction API (fima_models.extract) on tiny videos the tests encode."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fima_models
from fima_models import extract as F
from fima_models._utils import hardware
from fima_models.extract.clips import is_padded, iter_clip_chunks
from fima_models.video import VideoDecodeError, VideoReader
from tests.media import make_frames, write_video

FPS = 20


@pytest.fixture(scope='module')
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp('feature_videos')
    paths = {
        'long': write_video(root / 'long.mp4', make_frames(40, 32, 48, seed=1), fps=FPS, gop=8),
        'mid': write_video(root / 'mid.mp4', make_frames(20, 32, 32, seed=2), fps=FPS),
        'short': write_video(root / 'short.mp4', make_frames(5, 32, 32, seed=3), fps=FPS),
    }
    broken = root / 'broken.mp4'
    broken.write_bytes(b'\x00\x00\x00\x18ftypmp42' + b'garbage' * 50)
    paths['broken'] = broken
    return paths


@pytest.fixture(scope='module')
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return fima_models.create_model('test_r3d', num_classes=0).eval()


def _reference_maps(model: torch.nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """Final maps of the model on one uint8 clip, prepared as its pretrained config says."""
    transform = F.build_transform(model)
    with torch.no_grad():
        return model.forward_features(transform(frames)[None])


def test_clip_starts_and_indices() -> None:
    assert list(F.clip_starts(40, 8, 8)) == [0, 8, 16, 24, 32]
    assert list(F.clip_starts(40, 16, 16)) == [0, 16]  # frames 32..39 do not fill a clip
    assert list(F.clip_starts(40, 8, 4, step=2)) == [0, 4, 8, 12, 16, 20, 24]  # span 15 frames
    assert list(F.clip_starts(5, 8, 8)) == [0]  # shorter than one clip: one padded clip
    assert list(F.clip_starts(14, 8, 1, step=2)) == [0] and is_padded(14, 8, step=2)  # span 15 > 14 frames
    assert list(F.clip_starts(15, 8, 1, step=2)) == [0] and not is_padded(15, 8, step=2)
    assert F.clip_frame_indices(0, 5, 8) == ([0, 1, 2, 3, 4, 4, 4, 4], 5)
    assert F.clip_frame_indices(2, 10, 4, step=3) == ([2, 5, 8, 9], 9)
    with pytest.raises(ValueError, match='stride'):
        F.clip_starts(40, 8, 0)
    with pytest.raises(ValueError, match='at least one frame'):
        F.clip_starts(0, 8, 8)


def test_clip_level_frames_and_times(model: torch.nn.Module, videos: dict) -> None:
    result = F.extract_features(model, videos['long'], clip_len=8, stride=8, batch_size=3, device='cpu')
    assert result.features.shape == (5, model.num_features)
    assert result.features.dtype == torch.float32
    assert result.clip_starts.tolist() == [0, 8, 16, 24, 32]
    assert result.clip_ends.tolist() == [8, 16, 24, 32, 40]
    torch.testing.assert_close(result.start_times, torch.tensor([0.0, 0.4, 0.8, 1.2, 1.6], dtype=torch.float64))
    torch.testing.assert_close(result.end_times, torch.tensor([0.4, 0.8, 1.2, 1.6, 2.0], dtype=torch.float64))
    assert result.level == 'clip' and result.model_name == 'test_r3d'
    assert result.num_frames == 40 and result.fps == pytest.approx(FPS) and not result.padded

    # each row is the average-pooled final map of the clip, prepared with the config's size/normalisation
    reader = VideoReader(videos['long'])
    expected = _reference_maps(model, reader.get_clip(16, 8)).mean(dim=(2, 3, 4))[0]
    torch.testing.assert_close(result.features[2], expected, rtol=1e-4, atol=1e-5)


def test_frame_step_within_clip(model: torch.nn.Module, videos: dict) -> None:
    result = F.extract_features(model, videos['long'], clip_len=4, stride=10, step=3, device='cpu')
    assert result.clip_starts.tolist() == [0, 10, 20, 30]
    assert result.clip_ends.tolist() == [10, 20, 30, 40]
    expected = _reference_maps(model, VideoReader(videos['long']).get_clip(10, 4, step=3)).mean(dim=(2, 3, 4))[0]
    torch.testing.assert_close(result.features[1], expected, rtol=1e-4, atol=1e-5)


def test_short_video_gives_one_clip_padded_with_its_last_frame(model: torch.nn.Module, videos: dict) -> None:
    result = F.extract_features(model, videos['short'], clip_len=8, stride=8, level='dense', device='cpu')
    assert result.padded and result.num_clips == 1
    assert result.clip_starts.tolist() == [0] and result.clip_ends.tolist() == [5]
    assert result.end_times.tolist() == [pytest.approx(5 / FPS)]
    padded = VideoReader(videos['short']).get_frames([0, 1, 2, 3, 4, 4, 4, 4])
    torch.testing.assert_close(result.features, _reference_maps(model, padded), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('level, spatial, temporal, shape', [
    ('clip', None, None, (2, 32)),
    ('clip', 'keep', 'avg', (2, 32, 2, 2)),
    ('clip', 'avg', 'keep', (2, 32, 1)),
    ('clip', 'max', 'keep', (2, 32, 1)),
    ('clip', 'keep', 'keep', (2, 32, 1, 2, 2)),
    ('video', None, None, (32,)),
    ('video', 'keep', 'max', (32, 2, 2)),
    ('dense', None, None, (2, 32, 1, 2, 2)),
])
def test_levels_and_pooling_shapes(model, videos, level, spatial, temporal, shape) -> None:
    result = F.extract_features(model, videos['mid'], clip_len=8, stride=8, level=level, spatial_pool=spatial,
                                temporal_pool=temporal, device='cpu')
    assert tuple(result.features.shape) == shape
    assert result.num_clips == 2 and result.level == level


def test_pooling_and_video_mean_agree_with_dense_maps(model: torch.nn.Module, videos: dict) -> None:
    kw = dict(clip_len=8, stride=4, batch_size=2, device='cpu')
    dense = F.extract_features(model, videos['long'], level='dense', **kw).features
    clip_max = F.extract_features(model, videos['long'], spatial_pool='max', temporal_pool='max', **kw).features
    clip_avg = F.extract_features(model, videos['long'], **kw).features
    video = F.extract_features(model, videos['long'], level='video', **kw)
    torch.testing.assert_close(clip_max, dense.amax(dim=(2, 3, 4)))
    torch.testing.assert_close(clip_avg, dense.mean(dim=(2, 3, 4)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(video.features, clip_avg.mean(dim=0), rtol=1e-5, atol=1e-6)
    assert video.num_clips == dense.shape[0] == 9
    assert video.clip_starts.tolist() == list(range(0, 33, 4))


def test_dense_intermediate_layer(model: torch.nn.Module, videos: dict) -> None:
    result = F.extract_features(model, videos['mid'], clip_len=8, stride=8, level='dense', layer=1, device='cpu')
    transform = F.build_transform(model)
    clip = transform(VideoReader(videos['mid']).get_clip(8, 8))[None]
    with torch.no_grad():
        expected = model.forward_intermediates(clip, indices=[1], intermediates_only=True)[0]
    assert result.features.shape == (2, *expected.shape[1:])
    assert result.features.shape[1] != model.num_features  # an earlier block, not the final map
    torch.testing.assert_close(result.features[1], expected[0], rtol=1e-4, atol=1e-5)
    pooled = F.extract_features(model, videos['mid'], clip_len=8, stride=8, layer=-1, device='cpu')
    final = F.extract_features(model, videos['mid'], clip_len=8, stride=8, device='cpu')
    torch.testing.assert_close(pooled.features, final.features)


def test_deterministic_and_batch_size_independent(model: torch.nn.Module, videos: dict) -> None:
    first = F.extract_features(model, videos['long'], clip_len=8, stride=8, batch_size=2, device='cpu')
    again = F.extract_features(model, videos['long'], clip_len=8, stride=8, batch_size=2, device='cpu')
    assert torch.equal(first.features, again.features)
    one_by_one = F.extract_features(model, VideoReader(videos['long']), clip_len=8, stride=8, batch_size=1)
    torch.testing.assert_close(first.features, one_by_one.features, rtol=1e-5, atol=1e-6)


def test_fast_inference_path_is_the_default_and_matches_the_plain_model(model, videos) -> None:
    from fima_models.inference import FP32_TOLERANCE

    runner = F.prepare_inference(model, device='cpu', example_shape=(1, 3, 8, 32, 32))
    assert runner.model is not model and runner.model.inference_plan.fold_batchnorm
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in runner.model.modules())
    fast = F.extract_features(model, videos['long'], clip_len=8, stride=8, level='dense', device='cpu')
    plain = F.extract_features(model, videos['long'], clip_len=8, stride=8, level='dense', device='cpu',
                               optimize=False)
    assert (fast.features - plain.features).abs().max() <= FP32_TOLERANCE * plain.features.abs().max()


def test_size_and_normalisation_come_from_the_config_unless_given(model, videos) -> None:
    default = F.extract_features(model, videos['mid'], clip_len=8, level='dense', device='cpu')
    larger = F.extract_features(model, videos['mid'], clip_len=8, level='dense', size=64, device='cpu')
    assert default.config['size'] == 32 and larger.config['size'] == 64
    assert default.features.shape[-2:] == (2, 2) and larger.features.shape[-2:] == (4, 4)
    assert default.config['mean'] == pytest.approx(model.pretrained_cfg['mean'])
    other = F.extract_features(model, videos['mid'], clip_len=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert not torch.allclose(other.features, F.extract_features(model, videos['mid'], clip_len=8).features)

    bare = torch.nn.Conv3d(3, 4, 1)
    with pytest.raises(ValueError, match='size=.*mean=.*std='):
        F.build_transform(bare)


def test_model_by_name(videos: dict) -> None:
    result = F.extract_features('test_r2plus1d', videos['mid'], clip_len=4, stride=8, pretrained=False)
    assert result.model_name == 'test_r2plus1d'
    assert result.clip_starts.tolist() == [0, 8, 16]


def test_invalid_options(model: torch.nn.Module, videos: dict) -> None:
    with pytest.raises(ValueError, match='level'):
        F.extract_features(model, videos['mid'], level='frame')
    with pytest.raises(ValueError, match='dense'):
        F.extract_features(model, videos['mid'], level='dense', spatial_pool='avg')
    with pytest.raises(ValueError, match='spatial_pool'):
        F.extract_features(model, videos['mid'], spatial_pool='median')
    with pytest.raises(ValueError, match='batch_size'):
        F.extract_features(model, videos['mid'], batch_size=0)


def test_broken_and_missing_videos_raise(model: torch.nn.Module, videos: dict, tmp_path: Path) -> None:
    with pytest.raises(VideoDecodeError):
        F.extract_features(model, videos['broken'], clip_len=8)
    with pytest.raises(FileNotFoundError):
        F.extract_features(model, tmp_path / 'nope.mp4', clip_len=8)


def test_video_mean_is_accumulated_without_keeping_clips() -> None:
    accumulator = F.FeatureAccumulator('video')
    rows = torch.randn(10, 6)
    for lo in range(0, 10, 3):
        accumulator.add(rows[lo:lo + 3], list(range(lo, min(lo + 3, 10))), list(range(lo + 1, min(lo + 4, 11))))
    result = accumulator.result('m', fps=10.0, num_frames=20)
    torch.testing.assert_close(result.features, rows.mean(dim=0))
    assert result.num_clips == 10
    assert accumulator._chunks == []  # only the running sum is held


@pytest.mark.parametrize('suffix', ['.npy', '.safetensors'])
def test_save_load_round_trip_and_unfinished_outputs(model, videos, tmp_path: Path, suffix: str) -> None:
    result = F.extract_features(model, videos['long'], clip_len=8, stride=16, device='cpu')
    path = tmp_path / f'out{suffix}'
    side = F.save_features(result, path, extra={'note': 'x'})
    assert side == tmp_path / f'out{suffix}.json'
    assert not list(tmp_path.glob('*.partial'))
    loaded = F.load_features(path)
    assert torch.equal(loaded.features, result.features)
    assert torch.equal(loaded.clip_starts, result.clip_starts)
    torch.testing.assert_close(loaded.end_times, result.end_times)
    assert loaded.model_name == result.model_name and loaded.config == result.config
    meta = json.loads(side.read_text())
    assert meta['complete'] and meta['note'] == 'x' and meta['num_clips'] == 3
    if suffix == '.safetensors':
        from safetensors import safe_open

        with safe_open(str(path), 'pt') as handle:
            assert json.loads(handle.metadata()['fima_models.features'])['clip_ends'] == [8, 24, 40]
            assert torch.equal(handle.get_tensor('clip_starts'), result.clip_starts)

    # a feature file whose size no longer matches the sidecar, or without sidecar, is unfinished
    path.write_bytes(path.read_bytes()[:-4])
    assert F.read_sidecar(path) is None
    with pytest.raises(FileNotFoundError, match='unfinished'):
        F.load_features(path)
    F.save_features(result, path)
    side.unlink()
    assert F.read_sidecar(path) is None


def test_precision_bf16_is_refused_on_cpus_that_would_emulate_it(model, videos, monkeypatch, caplog) -> None:
    monkeypatch.setattr(hardware, 'cpu_has_native_bf16', lambda: False)
    with pytest.raises(ValueError, match='no native bfloat16.*Use precision fp32 or auto'):
        F.prepare_inference(model, device='cpu', precision='bf16', optimize=False)
    with pytest.raises(ValueError, match='no native bfloat16'):
        F.extract_features(model, videos['short'], clip_len=4, precision='bf16', device='cpu')
    with caplog.at_level('WARNING'):
        runner = F.prepare_inference(model, device='cpu', precision='bf16', allow_emulated=True, optimize=False)
    assert runner.precision == 'bf16' and 'emulated' in caplog.text
    assert F.prepare_inference(model, device='cpu', precision='auto', optimize=False).precision == 'fp32'
    monkeypatch.setattr(hardware, 'cpu_has_native_bf16', lambda: True)
    assert F.prepare_inference(model, device='cpu', precision='bf16', optimize=False).precision == 'bf16'
    assert F.prepare_inference(model, device='cpu', precision='auto', optimize=False).precision == 'bf16'
    assert F.prepare_inference(model, device='cpu', optimize=False).precision == 'fp32'
    with pytest.raises(ValueError, match='unknown precision'):
        F.prepare_inference(model, device='cpu', precision='fp8')


def test_bf16_autocast_runs_when_allowed(model: torch.nn.Module, videos: dict, monkeypatch) -> None:
    monkeypatch.setattr(hardware, 'cpu_has_native_bf16', lambda: True)
    result = F.extract_features(model, videos['short'], clip_len=4, precision='bf16', device='cpu')
    reference = F.extract_features(model, videos['short'], clip_len=4, device='cpu')
    assert result.features.dtype == torch.float32
    assert result.config['precision'] == 'bf16' and reference.config['precision'] == 'fp32'
    assert not torch.equal(result.features, reference.features)  # autocast really ran
    torch.testing.assert_close(result.features, reference.features, rtol=0.1, atol=0.05)


def test_channels_last_gives_the_same_features(model: torch.nn.Module, videos: dict) -> None:
    reference = F.extract_features(model, videos['mid'], clip_len=8, device='cpu')
    fast = F.extract_features(model, videos['mid'], clip_len=8, device='cpu', channels_last=True)
    torch.testing.assert_close(fast.features, reference.features, rtol=1e-4, atol=1e-5)
    model.to(memory_format=torch.contiguous_format)


def test_pool_maps_rejects_non_video_maps() -> None:
    with pytest.raises(ValueError, match=r'\(N, C, T, H, W\)'):
        F.pool_maps(torch.zeros(2, 3, 4, 4))
    assert F.pool_maps(torch.zeros(2, 3, 4, 5, 6), 'keep', 'keep').shape == (2, 3, 4, 5, 6)
    assert np.allclose(F.pool_maps(torch.arange(8.).reshape(1, 1, 2, 2, 2), 'max', 'avg').numpy(), [[5.0]])


def test_clips_are_decoded_in_bounded_chunks(videos: dict) -> None:
    reader = VideoReader(videos['long'])
    chunks = list(iter_clip_chunks(reader, clip_len=8, stride=8, max_clips=3))
    assert [c[1] for c in chunks] == [[0, 8, 16], [24, 32]]
    assert [c[2] for c in chunks] == [[8, 16, 24], [32, 40]]
    assert chunks[1][0].shape == (2, 8, 32, 48, 3) and chunks[1][0].dtype == torch.uint8
    assert torch.equal(chunks[1][0][0], reader.get_clip(24, 8))
    one_clip = 8 * 32 * 48 * 3
    small = list(iter_clip_chunks(reader, clip_len=8, stride=8, max_clips=3, max_bytes=2 * one_clip - 1))
    assert [len(c[1]) for c in small] == [1] * 5  # the memory bound wins over max_clips
    frames, end = F.read_clip(VideoReader(videos['short']), 0, 8)
    assert end == 5 and torch.equal(frames[5:], frames[4:5].expand(3, -1, -1, -1))


def test_resampling_to_a_frame_rate(model: torch.nn.Module, videos: dict) -> None:
    result = F.extract_features(model, videos['long'], clip_len=8, stride=8, fps=10, device='cpu')
    assert result.fps == 10 and result.num_frames == 20 and result.config['fps'] == 10
    assert result.clip_starts.tolist() == [0, 8]
    torch.testing.assert_close(result.start_times, torch.tensor([0.0, 0.8], dtype=torch.float64))
    with pytest.raises(ValueError, match='VideoReader'):
        F.extract_features(model, VideoReader(videos['long']), clip_len=8, fps=10)
