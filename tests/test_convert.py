"""Checkpoint conversion: every format round-trips to identical features; bad input writes nothing."""
import json

import pytest
import torch

import fima_models
from fima_models._utils import TRAIN_CHECKPOINT_FORMAT
from fima_models.checkpoint import CheckpointError
from fima_models.cli import main as cli_main
from fima_models.convert import OutputExistsError, convert_checkpoint
from tests.test_checkpoint import ARCH, FORMATS, make_backbone, train_checkpoint, write_checkpoint
from tests.test_pretrained import features, populate_hf_cache


@pytest.fixture(scope='module')
def source():
    model = make_backbone()
    return model, features(model)


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize('fmt', sorted(FORMATS) + ['safetensors'])
def test_round_trip_gives_identical_features(tmp_path, source, fmt):
    model, expected = source
    ckpt = write_checkpoint(tmp_path / 'checkpoint_0199.pth.tar', fmt, model.state_dict())
    result = convert_checkpoint(ckpt, ARCH, tmp_path / 'out')
    assert result.format == fmt and result.num_classes == 0
    assert _entries(tmp_path / 'out') == ['README.md', 'config.json', 'model.safetensors']
    assert set(result.kept) == set(model.state_dict())
    loaded = fima_models.create_model(f'local-dir:{tmp_path / "out"}')
    assert torch.equal(features(loaded), expected)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # no staging left behind


def test_fima_checkpoint_report_and_config(tmp_path, source):
    model, _ = source
    ckpt = write_checkpoint(tmp_path / 'checkpoint_0199.pth.tar', 'fima', model.state_dict())
    result = convert_checkpoint(ckpt, ARCH, tmp_path / 'out', tag='fima_ucf101', pretrained_cfg={'dataset': 'ucf101'})
    assert 'queue' in result.dropped and 'encoder_q.fc.0.weight' in result.dropped
    assert any(k.startswith('encoder_k.') for k in result.dropped)
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['architecture'] == ARCH and config['num_classes'] == 0
    cfg = config['pretrained_cfg']
    assert cfg['tag'] == 'fima_ucf101' and cfg['dataset'] == 'ucf101'
    assert cfg['input_size'] == [3, 4, 32, 32] and len(cfg['mean']) == 3 and 'num_frames' in cfg
    assert not {'url', 'hf_hub_id', 'file'} & set(cfg)
    card = (tmp_path / 'out' / 'README.md').read_text()
    assert f'# {ARCH}.fima_ucf101' in card and 'Converted from a `fima` checkpoint' in card
    assert result.meta['epoch'] == 200


def test_keep_head_of_a_finetuned_train_checkpoint(tmp_path):
    model = make_backbone(num_classes=7)
    ckpt = tmp_path / 'finetune.pth'
    torch.save(train_checkpoint(model.state_dict(), method='finetune', num_classes=7), ckpt)
    result = convert_checkpoint(ckpt, ARCH, tmp_path / 'head', keep_head=True)
    assert result.num_classes == 7 and result.format == TRAIN_CHECKPOINT_FORMAT
    loaded = fima_models.create_model(f'local-dir:{tmp_path / "head"}').eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 4, 32, 32)
        assert torch.equal(loaded(x), model(x))
    backbone_only = convert_checkpoint(ckpt, ARCH, tmp_path / 'backbone')
    assert backbone_only.num_classes == 0 and 'fc.weight' in backbone_only.dropped
    with pytest.raises(CheckpointError, match='no classifier'):
        convert_checkpoint(write_checkpoint(tmp_path / 'b.pth', 'moco', make_backbone().state_dict()),
                           ARCH, tmp_path / 'x', keep_head=True)


def test_train_checkpoint_records_method(tmp_path, source):
    model, _ = source
    ckpt = tmp_path / 'moco.pth'
    torch.save(train_checkpoint(model.state_dict(), method='moco'), ckpt)
    cfg = convert_checkpoint(ckpt, ARCH, tmp_path / 'out').config['pretrained_cfg']
    assert cfg['method'] == 'moco' and cfg['dataset'] == 'ucf101' and cfg['num_frames'] == 16
    assert cfg['input_size'] == [3, 16, 32, 32]


def test_torchvision_weights_convert(tmp_path):
    tv = pytest.importorskip('torchvision.models.video')
    torch.manual_seed(0)
    ref = tv.mc3_18().eval()
    ckpt = tmp_path / 'mc3_18.pth'
    torch.save(ref.state_dict(), ckpt)
    result = convert_checkpoint(ckpt, 'mc3_18', tmp_path / 'out', keep_head=True)
    assert result.num_classes == 400 and result.dropped == []
    loaded = fima_models.create_model(f'local-dir:{tmp_path / "out"}').eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), ref(x), atol=1e-5)


def test_bad_inputs_write_nothing(tmp_path, source):
    model, _ = source
    out = tmp_path / 'out'
    with pytest.raises(CheckpointError, match='not found'):
        convert_checkpoint(tmp_path / 'missing.pth', ARCH, out)
    text = tmp_path / 'notes.txt'
    text.write_text('not a checkpoint')
    with pytest.raises(CheckpointError, match='not a'):
        convert_checkpoint(text, ARCH, out)
    wrong = write_checkpoint(tmp_path / 'r2p1d.pth', 'state_dict', make_backbone('test_r2plus1d').state_dict())
    with pytest.raises(CheckpointError, match='stem'):
        convert_checkpoint(wrong, ARCH, out)
    bad_shape = dict(model.state_dict())
    bad_shape['layer2.0.conv1.0.weight'] = torch.zeros(3, 3, 3, 3, 3)
    with pytest.raises(CheckpointError, match=r'layer2\.0\.conv1\.0\.weight'):
        convert_checkpoint(write_checkpoint(tmp_path / 'shape.pth', 'fima', bad_shape), ARCH, out)
    trained_as_other = tmp_path / 'other.pth'
    torch.save(train_checkpoint(model.state_dict(), model_name='test_r2plus1d'), trained_as_other)
    with pytest.raises(CheckpointError, match="trained as 'test_r2plus1d'"):
        convert_checkpoint(trained_as_other, ARCH, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['notes.txt', 'other.pth', 'r2p1d.pth', 'shape.pth']


def test_existing_output_needs_overwrite(tmp_path, source):
    model, expected = source
    ckpt = write_checkpoint(tmp_path / 'ckpt.pth', 'moco', model.state_dict())
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
    with pytest.raises(OutputExistsError, match='keep-other-files'):
        convert_checkpoint(ckpt, ARCH, out, overwrite=True)
    assert _entries(out) == ['keep.txt']
    convert_checkpoint(ckpt, ARCH, out, keep_other_files=True)
    assert _entries(out) == ['README.md', 'config.json', 'keep.txt', 'model.safetensors']
    with pytest.raises(OutputExistsError, match='--overwrite'):
        convert_checkpoint(ckpt, ARCH, out, keep_other_files=True)
    convert_checkpoint(ckpt, ARCH, out, overwrite=True, keep_other_files=True)
    assert _entries(out) == ['README.md', 'config.json', 'keep.txt', 'model.safetensors']
    assert (out / 'keep.txt').read_text() == 'mine'
    assert torch.equal(features(fima_models.create_model(f'local-dir:{out}')), expected)


def test_cli_convert(tmp_path, source, capsys):
    model, _ = source
    ckpt = write_checkpoint(tmp_path / 'checkpoint_0001.pth.tar', 'fima', model.state_dict())
    args = ['convert', str(ckpt), '--model', ARCH, '--out', str(tmp_path / 'out'), '--tag', 'fima_ucf101']
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert 'Converted a fima checkpoint' in out and 'Dropped' in out and 'queue' in out and 'local-dir:' in out
    assert cli_main(['convert', str(ckpt), '--model', ARCH, '--out', str(tmp_path / 'j'), '--json']) == 0
    report = json.loads(capsys.readouterr().out)
    assert report['format'] == 'fima' and 'stem.0.weight' in report['kept']
    assert cli_main(['convert', str(tmp_path / 'nope.pth'), '--model', ARCH, '--out', str(tmp_path / 'x')]) == 1
    assert 'not found' in capsys.readouterr().err


def test_cli_download(tmp_path, monkeypatch, source, capsys):
    model, _ = source
    cache = tmp_path / 'hf'
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    export = convert_checkpoint(write_checkpoint(tmp_path / 'c.pth', 'fima', model.state_dict()), ARCH, tmp_path / 'e')
    populate_hf_cache(cache, 'org/x', {f: export.out_dir / f for f in ('config.json', 'model.safetensors')})
    assert cli_main(['download', 'hf-hub:org/x']) == 0
    assert 'model.safetensors' in capsys.readouterr().out
    assert cli_main(['download', 'hf-hub:org/x', 'hf-hub:org/absent', 'r3d_18.fima_ucf101']) == 1
    out = capsys.readouterr().out
    assert '2 of 3 failed' in out and 'not published yet' in out and 'fima-models download' in out


@pytest.mark.parametrize('arch', [a for a in fima_models.list_models('test_*', include_test=True)
                                  if not a.startswith('test_r')])  # video ResNets: covered above
def test_every_architecture_round_trips(tmp_path, arch):
    model = make_backbone(arch)
    x = torch.randn(1, *model.pretrained_cfg['input_size'])
    ckpt = write_checkpoint(tmp_path / 'checkpoint_0001.pth.tar', 'fima', model.state_dict())
    convert_checkpoint(ckpt, arch, tmp_path / 'out')
    loaded = fima_models.create_model(f'local-dir:{tmp_path / "out"}').eval()
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(x), model.forward_features(x))
