"""Tests of multi-crop extraction (3 and 10 views per clip) from Python and ``fima-models extract``.

The videos are encoded losslessly (libx264rgb, qp 0) with a short side equal to the resize target
(``floor(size / crop_pct)``), so the resize is the identity and every crop box is a plain pixel
window of the file: a view can then be compared with the features of a video pre-cropped to it.
"""
import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import fima_models
from fima_models import extract as F
from fima_models.cli import extract as cli_extract
from fima_models.extract import crops as crops_module
from fima_models.extract import setup as extract_setup
from fima_models.transforms import EvalTransform
from fima_models.video import VideoReader
from tests.media import make_frames, write_video

FPS = 20
CLIP_LEN = 4
#: size 32 with crop_pct 0.8 resizes the short side to floor(32 / 0.8) = 40 pixels
VIEW = {'size': 32, 'crop_pct': 0.8}
#: a pre-cropped 32x32 video is neither resized nor cropped with these
WHOLE = {'size': 32, 'crop_pct': 1.0}


def lossless(path: Path, frames: np.ndarray) -> Path:
    return write_video(path, frames, fps=FPS, codec='libx264rgb', pix_fmt='rgb24', options={'qp': '0'})


@pytest.fixture(scope='module')
def frames() -> dict:
    return {'landscape': make_frames(8, 40, 56, seed=4), 'portrait': make_frames(8, 56, 40, seed=5)}


@pytest.fixture(scope='module')
def videos(tmp_path_factory: pytest.TempPathFactory, frames: dict) -> dict:
    root = tmp_path_factory.mktemp('multicrop')
    return {name: lossless(root / f'{name}.mkv', clip) for name, clip in frames.items()}


@pytest.fixture(scope='module')
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return fima_models.create_model('test_r3d', num_classes=0).eval()


def extract(model: torch.nn.Module, video, **kwargs) -> F.VideoFeatures:
    options = {'clip_len': CLIP_LEN, 'stride': CLIP_LEN, 'device': 'cpu', **VIEW}
    options.update(kwargs)
    return F.extract_features(model, video, **options)


def boxes_of(result: F.VideoFeatures) -> list:
    return [(b['box'], b['flip']) for b in result.crops['boxes']]


def test_boxes_worked_by_hand_for_landscape_and_portrait_frames() -> None:
    # a 48x64 (4:3) frame resized to short side 40 becomes 40x53 (64 * 40 / 48 = 53.3)
    view = crops_module.MultiCropTransform(EvalTransform(**VIEW), 3)
    assert [(b.x1, b.y1, b.x2, b.y2) for b in view.boxes(48, 64)] == [
        (0, 4, 32, 36), (10, 4, 42, 36), (21, 4, 53, 36)]  # top = (40-32)//2, lefts 0, (53-32)//2, 53-32
    assert [(b.x1, b.y1, b.x2, b.y2) for b in view.boxes(64, 48)] == [  # portrait: along the height
        (4, 0, 36, 32), (4, 10, 36, 42), (4, 21, 36, 53)]
    ten = crops_module.MultiCropTransform(EvalTransform(**VIEW), 10).boxes(48, 64)
    corners = [(0, 0, 32, 32), (21, 0, 53, 32), (0, 8, 32, 40), (21, 8, 53, 40), (10, 4, 42, 36)]
    assert [(b.x1, b.y1, b.x2, b.y2) for b in ten] == corners * 2
    assert [b.flip for b in ten] == [False] * 5 + [True] * 5
    assert [b.name for b in ten[:5]] == ['top_left', 'top_right', 'bottom_left', 'bottom_right', 'centre']
    # 1080p at 16x224 (short side 256): the 10-crop corners of a 256x455 frame
    big = crops_module.MultiCropTransform(EvalTransform(size=224, crop_pct=0.875), 10).boxes(1080, 1920)
    assert [(b.x1, b.y1) for b in big[:5]] == [(0, 0), (231, 0), (0, 32), (231, 32), (115, 16)]


def test_each_view_is_the_features_of_the_video_cropped_to_its_box(model, videos, frames, tmp_path) -> None:
    ten = extract(model, videos['landscape'], crops=10)
    assert ten.features.shape == (2, 10, model.num_features)
    assert ten.crops['resized_size'] == [40, 56]
    for k in (0, 3, 4, 5, 8):  # top-left, bottom-right, centre, flipped top-left, flipped bottom-right
        (x1, y1, x2, y2), flip = boxes_of(ten)[k]
        window = frames['landscape'][:, y1:y2, x1:x2]
        window = window[:, :, ::-1] if flip else window
        cropped = extract(model, lossless(tmp_path / f'crop{k}.mkv', np.ascontiguousarray(window)), **WHOLE)
        torch.testing.assert_close(ten.features[:, k], cropped.features, rtol=1e-5, atol=1e-6)

    three = extract(model, videos['portrait'], crops=3)
    assert boxes_of(three) == [([4, 0, 36, 32], False), ([4, 12, 36, 44], False), ([4, 24, 36, 56], False)]
    bottom = np.ascontiguousarray(frames['portrait'][:, 24:56, 4:36])
    cropped = extract(model, lossless(tmp_path / 'bottom.mkv', bottom), **WHOLE)
    torch.testing.assert_close(three.features[:, 2], cropped.features, rtol=1e-5, atol=1e-6)


def test_a_flipped_view_is_the_mirrored_box_of_the_flipped_video(model, videos, frames, tmp_path) -> None:
    ten = extract(model, videos['landscape'], crops=10)
    mirrored = extract(model, lossless(tmp_path / 'flipped.mkv', np.ascontiguousarray(frames['landscape'][:, :, ::-1])),
                       crops=10)
    # flipped top-left of the video = top-right of the flipped video (and so on for every corner)
    for flipped, plain in ((5, 1), (6, 0), (7, 3), (8, 2), (9, 4)):
        torch.testing.assert_close(ten.features[:, flipped], mirrored.features[:, plain], rtol=1e-5, atol=1e-6)


def test_centre_of_several_crops_is_the_single_crop_and_one_crop_has_no_crops_axis(model, videos) -> None:
    one = extract(model, videos['landscape'])
    three = extract(model, videos['landscape'], crops=3)
    assert one.features.shape == (2, model.num_features) and one.crops['count'] == 1
    assert boxes_of(one) == [([12, 4, 44, 36], False)]
    torch.testing.assert_close(three.features[:, 1], one.features, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('level, kwargs, shape', [
    ('clip', {}, (2, 10, 32)),
    ('clip', {'spatial_pool': 'keep'}, (2, 10, 32, 2, 2)),
    ('video', {}, (10, 32)),
    ('dense', {}, (2, 10, 32, 1, 2, 2)),  # test_r3d: 32 channels, 4x32x32 clips -> 1x2x2 maps
])
def test_output_shapes_put_the_crops_axis_after_the_clips(model, videos, level, kwargs, shape) -> None:
    result = extract(model, videos['landscape'], crops=10, level=level, **kwargs)
    assert model.num_features == 32
    assert tuple(result.features.shape) == shape


def test_mean_over_crops_is_the_mean_of_the_kept_crops(model, videos) -> None:
    for level in ('clip', 'video'):
        kept = extract(model, videos['portrait'], crops=10, level=level, batch_size=7)
        pooled = extract(model, videos['portrait'], crops=10, level=level, crop_pool='mean', batch_size=7)
        torch.testing.assert_close(pooled.features, kept.features.mean(dim=-2), rtol=1e-6, atol=1e-7)
        assert pooled.crops['pool'] == 'mean' and pooled.config['crop_pool'] == 'mean'


def test_views_share_one_decode_and_one_resize_per_chunk(model, videos, monkeypatch) -> None:
    decoded, resized = [], []
    get_frames, resize = VideoReader.get_frames, crops_module.resize_short_side
    monkeypatch.setattr(VideoReader, 'get_frames', lambda self, idx: decoded.append(len(idx)) or get_frames(self, idx))
    monkeypatch.setattr(crops_module, 'resize_short_side', lambda *a, **k: resized.append(1) or resize(*a, **k))
    extract(model, videos['landscape'], clip_len=2, stride=2, batch_size=4)  # 4 clips, 4 per pass
    single = list(decoded)
    decoded.clear()
    extract(model, videos['landscape'], clip_len=2, stride=2, batch_size=40, crops=10)  # 40 views = 4 clips
    assert decoded == single == [8]  # one decode of the 8 frames, as many frames as with one crop
    assert resized == [1]  # one resize of the decoded clips for all 40 views
    decoded.clear()
    extract(model, videos['landscape'], clip_len=2, stride=2, batch_size=3, crops=10)  # a clip per pass
    assert decoded == [2, 2, 2, 2]  # each frame still decoded once


def test_bad_values_name_the_choices(model, videos) -> None:
    with pytest.raises(ValueError, match=r'crops=5 is not offered; choose 1 \(centre\), 3 .* or 10'):
        extract(model, videos['landscape'], crops=5)
    with pytest.raises(ValueError, match="crop_pool='max' is not offered; choose 'keep'.* or 'mean'"):
        extract(model, videos['landscape'], crops=3, crop_pool='max')
    with pytest.raises(ValueError, match=r'a 32x32 crop does not fit the 20x30 frame .* lower the crop size'):
        F.crop_boxes(20, 30, 32, 3)


def run_cli(argv: list) -> int:
    parser = argparse.ArgumentParser(prog='fima-models')
    cli_extract.add_parser(parser.add_subparsers(dest='command'))
    return cli_extract.run(parser.parse_args(['extract', *argv]))


def test_cli_ten_crops_mean_records_the_boxes_and_resumes_only_with_the_same_crops(videos, tmp_path) -> None:
    out = tmp_path / 'feats'
    base = [str(videos['landscape']), '--model', 'test_r3d', '--no-pretrained', '--clip-len', str(CLIP_LEN),
            '--stride', str(CLIP_LEN), '--size', '32', '--workers', '0', '--no-progress', '--out', str(out)]
    assert run_cli(base + ['--crops', '10', '--crop-pool', 'mean', '--batch-size', '6']) == 0
    meta = json.loads((out / 'landscape.npy.json').read_text())
    assert np.load(out / 'landscape.npy').shape == (2, 32)
    assert meta['crops']['count'] == 10 and meta['crops']['pool'] == 'mean'
    # --size 32 with the config's crop_pct 0.875: short side floor(32 / 0.875) = 36, so 36x50 (56 * 36 / 40 = 50.4)
    assert meta['crops']['resized_size'] == [36, 50]
    assert [b['box'] for b in meta['crops']['boxes'][:5]] == [[0, 0, 32, 32], [18, 0, 50, 32], [0, 4, 32, 36],
                                                              [18, 4, 50, 36], [9, 2, 41, 34]]
    assert [b['flip'] for b in meta['crops']['boxes']] == [False] * 5 + [True] * 5
    assert meta['config']['crops'] == 10 and meta['extraction']['crops'] == 10

    # the Python API gives the same features
    model = F.load_model('test_r3d', pretrained=False)
    api = F.extract_features(model, videos['landscape'], clip_len=CLIP_LEN, stride=CLIP_LEN, size=32, device='cpu',
                             crops=10, crop_pool='mean')
    torch.testing.assert_close(torch.from_numpy(np.load(out / 'landscape.npy')), api.features, rtol=1e-4, atol=1e-5)

    assert run_cli(base + ['--crops', '10', '--crop-pool', 'mean']) == 0
    assert json.loads((out / 'summary.json').read_text())['counts']['skipped'] == 1
    assert run_cli(base + ['--crops', '3']) == 0  # other crops: extracted again
    assert json.loads((out / 'summary.json').read_text())['counts'] == {'ok': 1, 'failed': 0, 'skipped': 0}
    assert np.load(out / 'landscape.npy').shape == (2, 3, 32)


def test_cli_refuses_other_crop_counts(videos, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        run_cli([str(videos['landscape']), '--model', 'test_r3d', '--out', str(tmp_path), '--crops', '5'])
    assert "--crops: invalid choice: 5 (choose from 1, 3, 10)" in capsys.readouterr().err
    with pytest.raises(ValueError, match='crops=4 is not offered'):
        F.run_extraction(F.ExtractionSettings(inputs=[str(videos['landscape'])], out=tmp_path / 'o', model='test_r3d',
                                              pretrained=False, crops=4))
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('native', [True, False])
def test_fp32_on_native_bf16_hardware_logs_one_hint(native, monkeypatch, caplog, tmp_path) -> None:
    monkeypatch.setattr(extract_setup, 'has_native_bf16', lambda device: native)
    settings = F.ExtractionSettings(inputs=[], out=tmp_path, model='test_r3d', pretrained=False, device='cpu')
    with caplog.at_level(logging.INFO, logger='fima_models.extract.setup'):
        extract_setup.prepare_setup(settings)
    hints = [r for r in caplog.records if '--precision bf16' in r.getMessage()]
    assert len(hints) == (1 if native else 0)
    if native:
        assert hints[0].levelno == logging.INFO and 'within 0.05 of fp32' in hints[0].getMessage()


def test_views_made_on_the_device_equal_views_made_in_the_workers(videos) -> None:
    """Raw clips (as workers ship them to a GPU) and clips transformed in the workers give the same views."""
    from fima_models.extract.clips import prepare_clips
    from fima_models.extract.workers import ClipBatchDataset

    transform = crops_module.MultiCropTransform(EvalTransform(**VIEW), 10)
    jobs = [(0, str(videos['landscape'])), (1, str(videos['portrait']))]
    pieces = {limit: list(ClipBatchDataset(jobs, transform, CLIP_LEN, CLIP_LEN, 1, 3, raw_max_bytes=limit))
              for limit in (0, 10**9)}
    dtypes = {limit: {clip.dtype for p in found if p.videos.numel()
                      for clip in (p.clips if isinstance(p.clips, list) else [p.clips])}
              for limit, found in pieces.items()}
    assert dtypes == {0: {torch.float32}, 10**9: {torch.uint8}}  # transformed in the workers / shipped raw
    for worker_piece, raw_piece in zip(pieces[0], pieces[10**9]):
        assert worker_piece.events == raw_piece.events
        if not worker_piece.videos.numel():
            continue
        made_there = prepare_clips(worker_piece.clips, transform, torch.device('cpu'))
        made_here = prepare_clips(raw_piece.clips, transform, torch.device('cpu'))
        assert made_there.shape[1:] == (10, 3, CLIP_LEN, 32, 32)
        torch.testing.assert_close(made_here, made_there, rtol=0, atol=0)
    assert {e['video']: (e['height'], e['width']) for p in pieces[0] for e in p.events} == {0: (40, 56), 1: (56, 40)}
