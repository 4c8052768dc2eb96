"""Tests of fima_models.data: annotation formats, the persisted index, samplers and VideoDataset."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from fima_models.data import (
    DatasetLayoutError,
    RandomClipSampler,
    UniformClipSampler,
    VideoDataset,
    build_dataset,
    build_index,
    clip_indices,
)
import fima_models.video.index as video_index_module
from fima_models.video import VideoDecodeError, VideoReader
from tests.media import HARD_CASES, write_tiny_videos


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny encoded videos (12 and 5 frames) that the layout fixtures copy around."""
    return write_tiny_videos(tmp_path_factory.mktemp("tiny"))


def _write_texts(folder: Path, texts: dict[str, str]) -> None:
    """Write annotation files ``{name: content}`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / name).write_text(text)


def _put(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


# --------------------------------------------------------------------------- formats
def test_ucf101(tiny: dict[str, Path], tmp_path: Path) -> None:
    _write_texts(tmp_path / "ucfTrainTestlist", {
        "classInd.txt": "1 ApplyEyeMakeup\n2 Archery\n",
        "trainlist01.txt": "ApplyEyeMakeup/v_a_g08_c01.avi 1\nArchery/v_b_g08_c01.avi 2\n",
        "testlist01.txt": "Archery/v_b_g01_c01.avi\n",
    })
    for rel in ["ApplyEyeMakeup/v_a_g08_c01.avi", "Archery/v_b_g08_c01.avi", "Archery/v_b_g01_c01.avi"]:
        _put(tiny["long"], tmp_path / "UCF-101" / rel)
    train = build_dataset("ucf101", tmp_path, split=1, train=True, progress=False)
    assert train.classes == ["ApplyEyeMakeup", "Archery"] and train.num_classes == 2
    assert [(p.relative_to(tmp_path).as_posix(), y) for p, y in train.samples] == [
        ("UCF-101/ApplyEyeMakeup/v_a_g08_c01.avi", 0), ("UCF-101/Archery/v_b_g08_c01.avi", 1)]
    test = build_dataset("ucf101", tmp_path, split=1, train=False, progress=False)
    assert test.targets == [1] and isinstance(test.sampler, UniformClipSampler)
    with pytest.raises(DatasetLayoutError, match="trainlist02"):
        build_dataset("ucf101", tmp_path, split=2, progress=False)
    with pytest.raises(ValueError, match="splits"):
        build_dataset("ucf101", tmp_path, split=4, progress=False)


def test_hmdb51(tiny: dict[str, Path], tmp_path: Path) -> None:
    _write_texts(tmp_path / "testTrainMulti_7030_splits", {
        "brush_hair_test_split1.txt": "a.avi 1 \nb.avi 2 \nc.avi 0 \n",
        "cartwheel_test_split1.txt": "d.avi 2 \ne.avi 1 \n",
        "brush_hair_test_split2.txt": "a.avi 2 \n",
    })
    for rel in ["brush_hair/a.avi", "brush_hair/b.avi", "brush_hair/c.avi", "cartwheel/d.avi", "cartwheel/e.avi"]:
        _put(tiny["long"], tmp_path / rel)
    train = build_dataset("hmdb51", tmp_path, split=1, train=True, progress=False)
    assert train.classes == ["brush_hair", "cartwheel"]
    assert sorted((p.name, y) for p, y in train.samples) == [("a.avi", 0), ("e.avi", 1)]
    test = build_dataset("hmdb51", tmp_path, split=1, train=False, progress=False)
    assert sorted((p.name, y) for p, y in test.samples) == [("b.avi", 0), ("d.avi", 1)]
    assert [p.name for p, _ in build_dataset("hmdb51", tmp_path, split=2, train=False, progress=False).samples] == [
        "a.avi"]


def test_kinetics400_layouts_and_missing(tiny: dict[str, Path], tmp_path: Path) -> None:
    header = "label,youtube_id,time_start,time_end,split\n"
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.csv").write_text(
        header + "air drumming,abc,10,20,train\nabseiling,def,0,10,train\nabseiling,gone,5,15,train\n")
    (tmp_path / "annotations" / "validate.csv").write_text(header + "abseiling,xyz,3,13,val\n")
    _put(tiny["long"], tmp_path / "train" / "air_drumming" / "abc_000010_000020.mp4")  # label dirs
    _put(tiny["long"], tmp_path / "train" / "abseiling" / "def_000000_000010.mp4")
    _put(tiny["long"], tmp_path / "val" / "xyz.mp4")  # flat, youtube id only
    train = build_dataset("k400", tmp_path, train=True, progress=False)
    assert train.classes == ["abseiling", "air drumming"]
    assert sorted((p.name, y) for p, y in train.samples) == [("abc_000010_000020.mp4", 1),
                                                            ("def_000000_000010.mp4", 0)]
    assert len(train.index.missing) == 1 and "gone" in train.index.missing[0].name
    val = build_dataset("kinetics400", tmp_path, train=False, progress=False)
    assert [(p.name, y) for p, y in val.samples] == [("xyz.mp4", 0)]
    with pytest.raises(FileNotFoundError, match="gone"):
        build_dataset("kinetics400", tmp_path, train=True, strict=True, progress=False)


def test_diving48(tiny: dict[str, Path], tmp_path: Path) -> None:
    vocab = [["Back", "15som", "05Twis", "FREE"], ["Forward", "25som", "NoTwis", "PIKE"]]
    (tmp_path / "Diving48_vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "Diving48_V2_train.json").write_text(json.dumps(
        [{"vid_name": "v1", "label": 1, "start_frame": 0, "end_frame": 11},
         {"vid_name": "v2", "label": 0, "start_frame": 0, "end_frame": 11}]))
    (tmp_path / "Diving48_V2_test.json").write_text(json.dumps(
        [{"vid_name": "v3", "label": 0, "start_frame": 0, "end_frame": 4}]))
    for name in ["v1", "v2", "v3"]:
        _put(tiny["long"], tmp_path / "rgb" / f"{name}.mp4")
    train = build_dataset("diving48", tmp_path, train=True, progress=False)
    assert train.classes == ["Back 15som 05Twis FREE", "Forward 25som NoTwis PIKE"]
    assert [(p.name, y) for p, y in train.samples] == [("v1.mp4", 1), ("v2.mp4", 0)]
    assert build_dataset("diving48", tmp_path, train=False, progress=False).targets == [0]


def test_folder_and_list(tiny: dict[str, Path], tmp_path: Path) -> None:
    for rel in ["train/cat/1.mp4", "train/dog/2.mp4", "train/dog/sub/3.webm", "val/cat/4.mp4", "val/dog/5.mp4"]:
        _put(tiny["long"], tmp_path / "tree" / rel)
    (tmp_path / "tree" / "train" / "dog" / "notes.txt").write_text("not a video")
    train = build_dataset("folder", tmp_path / "tree", train=True, progress=False)
    assert train.classes == ["cat", "dog"]
    assert sorted((p.name, y) for p, y in train.samples) == [("1.mp4", 0), ("2.mp4", 1), ("3.webm", 1)]
    assert build_dataset("folder", tmp_path / "tree", train=False, progress=False).targets == [0, 1]

    lst = tmp_path / "list.txt"
    lst.write_text("# comment\ntree/train/cat/1.mp4 2\ntree/val/dog/5.mp4 0\n")
    ds = build_dataset("list", lst, progress=False)
    assert ds.classes == ["0", "1", "2"] and ds.targets == [2, 0]
    named = tmp_path / "named.txt"
    named.write_text(f"{tmp_path / 'tree/train/cat/1.mp4'} cat\ntree/val/dog/5.mp4 dog\n")
    ds = build_dataset("list", named, progress=False)
    assert ds.classes == ["cat", "dog"] and ds.targets == [0, 1]
    (tmp_path / "bad.txt").write_text("just-a-path\n")
    with pytest.raises(DatasetLayoutError, match="path label"):
        build_dataset("list", tmp_path / "bad.txt", progress=False)


def test_unknown_name_and_root() -> None:
    with pytest.raises(ValueError, match="ucf101"):
        build_dataset("ucf-101", "/nonexistent")
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        build_dataset("ucf101", "/nonexistent/really")


# --------------------------------------------------------------------------- index
def test_index_persistence_reuse_and_broken(tiny: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "data"
    paths = [root / f"v{i}.mp4" for i in range(3)]
    for p in paths:
        _put(tiny["long"], p)
    broken = root / "broken.mp4"
    broken.write_text("not a video")
    first = build_index(paths + [broken], root, workers=2, progress=False)
    assert first.location == root / ".fima_index.json" and first.location.is_file()
    assert first.probed == 4 and first.reused == 0
    assert [p for p, _ in first.broken] == [broken] and not first.is_ok(broken)
    assert first.info(paths[0])["num_frames"] == 12
    assert not list(root.glob("*.tmp"))  # atomic write leaves no temporary file

    second = build_index(paths + [broken], root, workers=2, progress=False)
    assert second.probed == 0 and second.reused == 4 and len(second.broken) == 1

    _put(tiny["short"], paths[1])  # content changed: size differs
    os.utime(paths[2], ns=(1, 1))  # only mtime changed
    third = build_index(paths, root, workers=0, progress=False)
    assert third.probed == 2 and third.info(paths[1])["num_frames"] == 5

    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        build_index(paths + [broken], root, strict=True, progress=False)

    cache = tmp_path / "cache"
    elsewhere = build_index(paths, root, cache_dir=cache, executor="process", workers=2, progress=False)
    assert elsewhere.location.parent == cache and elsewhere.probed == 3


def test_dataset_skips_broken_videos(tiny: dict[str, Path], tmp_path: Path) -> None:
    for rel in ["a/1.mp4", "a/2.mp4", "b/3.mp4"]:
        _put(tiny["long"], tmp_path / rel)
    (tmp_path / "b" / "4.mp4").write_bytes(b"\x00" * 100)
    ds = build_dataset("folder", tmp_path, progress=False)
    assert len(ds) == 3 and len(ds.index.broken) == 1
    with pytest.raises(VideoDecodeError, match="4.mp4"):
        build_dataset("folder", tmp_path, strict=True, progress=False)
    # without the index, a broken video is skipped at load time (or raised with on_error="raise")
    raw = build_dataset("folder", tmp_path, index=False, sampler=RandomClipSampler(4), seed=0)
    assert len(raw) == 4
    clip, label = raw[3]
    assert clip.shape == (4, 32, 32, 3) and raw.num_errors == 1
    strict = build_dataset("folder", tmp_path, index=False, on_error="raise")
    with pytest.raises(VideoDecodeError, match="4.mp4"):
        strict[3]


def test_dataset_reads_misleading_timestamps_exactly_from_the_stored_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "videos" / "cls"
    folder.mkdir(parents=True)
    path = HARD_CASES["decode-order-pts.mkv"](folder)
    (folder / "bframes-source.mp4").unlink()
    with av.open(str(path)) as container:
        ref = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    sampler = UniformClipSampler(num_clips=3, clip_len=4)
    ds = build_dataset("folder", tmp_path / "videos", sampler=sampler, progress=False)
    stored = json.loads(ds.index.location.read_text())["entries"]["cls/decode-order-pts.mkv"]
    assert stored["num_frames"] == len(ref) and stored["frame_index"]["mode"] == "decoded"
    assert not stored["fast_seek"] and "decode order" in stored["reason"]

    def no_decode_pass(*args: object, **kwargs: object) -> None:
        raise AssertionError("the reader indexed the file again instead of using the stored probe")

    monkeypatch.setattr(video_index_module, "decode_index", no_decode_pass)
    clips, _ = ds[0]
    np.testing.assert_array_equal(clips.numpy(), ref[sampler.indices(len(ref))])


# --------------------------------------------------------------------------- samplers
def test_clip_indices_short_videos() -> None:
    assert clip_indices(0, 6, 2, 5, "repeat").tolist() == [0, 2, 4, 4, 4, 4]
    assert clip_indices(0, 6, 2, 5, "loop").tolist() == [0, 2, 4, 1, 3, 0]
    with pytest.raises(ValueError, match="short"):
        clip_indices(0, 2, 1, 5, "pad")


def test_samplers_geometry_and_determinism(tiny: dict[str, Path]) -> None:
    reader = VideoReader(tiny["long"])
    rand = RandomClipSampler(4, step=2)
    starts = set()
    for seed in range(30):
        idx = rand.indices(12, torch.Generator().manual_seed(seed))
        assert idx.tolist() == list(range(idx[0], idx[0] + 8, 2)) and 0 <= idx[0] <= 12 - 7
        starts.add(int(idx[0]))
    assert starts == set(range(6))  # every valid start is reachable
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    clip = rand(reader, g1)
    assert torch.equal(clip, rand(reader, g2))
    start = int(rand.indices(12, torch.Generator().manual_seed(7))[0])
    assert torch.equal(clip, reader.get_clip(start, 4, 2))

    uni = UniformClipSampler(num_clips=3, clip_len=4)
    assert uni.indices(12).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    clips = uni(reader)
    assert clips.shape == (3, 4, 32, 32, 3) and torch.equal(clips[2], reader.get_clip(8, 4))
    assert repr(uni) == "UniformClipSampler(num_clips=3, clip_len=4, step=1)"
    assert repr(rand) == "RandomClipSampler(clip_len=4, step=2, short='repeat')" and rand.span == 7
    with pytest.raises(ValueError, match="clip_len"):
        RandomClipSampler(clip_len=0)
    with pytest.raises(ValueError, match="num_clips"):
        UniformClipSampler(num_clips=0)


def test_samplers_handle_short_videos(tiny: dict[str, Path]) -> None:
    reader = VideoReader(tiny["short"])  # 5 frames
    frames = reader.get_clip(0, 5)
    loop = RandomClipSampler(8, short="loop")(reader, torch.Generator().manual_seed(0))
    assert torch.equal(loop, frames[[0, 1, 2, 3, 4, 0, 1, 2]])
    rep = RandomClipSampler(8)(reader, torch.Generator().manual_seed(0))
    assert torch.equal(rep, frames[[0, 1, 2, 3, 4, 4, 4, 4]])
    assert UniformClipSampler(2, 8)(reader).shape == (2, 8, 32, 32, 3)


def test_dataset_seeded_items_and_dataloader(tiny: dict[str, Path], tmp_path: Path) -> None:
    from fima_models.transforms import TrainTransform

    for rel in ["a/1.mp4", "a/2.mp4", "b/3.mp4", "b/4.mp4"]:
        _put(tiny["long"], tmp_path / rel)
    ds = build_dataset("folder", tmp_path, sampler=RandomClipSampler(4), transform=TrainTransform(16), seed=3,
                       progress=False)
    a, _ = ds[1]
    b, _ = ds[1]
    assert torch.equal(a, b)
    ds.set_epoch(1)
    assert not torch.equal(a, ds[1][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=0)
    x, y = next(iter(loader))
    assert x.shape == (2, 3, 4, 16, 16) and y.tolist() == [0, 0]
    with pytest.raises(IndexError):
        ds[len(ds)]
    plain = VideoDataset([(tmp_path / "a/1.mp4", 0)], ["a"], sampler=RandomClipSampler(2),
                         transform=lambda clip: clip.float().mean())
    assert plain[0][0].dim() == 0
