"""Release tooling: ``python -m hub export`` folders and offline ``publish --dry-run`` validation."""
import json
import subprocess

import pytest
import torch

import fima_models
from fima_models.checkpoint import CheckpointError
from hub import ExportValidationError, export_checkpoint, metrics_from_results, publish, validate_export
from hub.__main__ import main as hub_main
from hub.export import MANIFEST_NAME, sha256_file
from tests.test_checkpoint import ARCH, make_backbone, train_checkpoint
from tests.test_pretrained import features

RESULTS = {'ucf101': {'finetune_top1': 84.2, 'linear_top1': 75.3}, 'hmdb51_finetune_top1': 57.8}


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp('hub')
    model = make_backbone()
    ckpt = root / 'checkpoint_0199.pth'
    torch.save(train_checkpoint(model.state_dict(), method='fima'), ckpt)
    results = root / 'results.json'
    results.write_text(json.dumps(RESULTS))
    result = export_checkpoint(ckpt, ARCH, 'fima_ucf101', root / 'release', results=results, repo_id='org/x')
    return result, features(model)


def test_export_folder(exported):
    result, expected = exported
    folder = result.out_dir
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', MANIFEST_NAME, 'config.json', 'model.safetensors']
    assert result.manifest == {n: sha256_file(folder / n) for n in ('README.md', 'config.json', 'model.safetensors')}
    if subprocess.run(['which', 'sha256sum'], capture_output=True).returncode == 0:
        assert subprocess.run(['sha256sum', '-c', MANIFEST_NAME], cwd=folder, capture_output=True).returncode == 0
    cfg = json.loads((folder / 'config.json').read_text())['pretrained_cfg']
    assert cfg['tag'] == 'fima_ucf101' and cfg['method'] == 'fima' and cfg['published'] is True
    assert cfg['metrics'] == {'ucf101_finetune_top1': 84.2, 'ucf101_linear_top1': 75.3, 'hmdb51_finetune_top1': 57.8}
    card = (folder / 'README.md').read_text()
    assert '## Pretraining recipe' in card and '| optim.lr | 0.00375 |' in card and 'method: `fima`' in card
    assert card.index('| data.dataset | ucf101 |') < card.index('| optim.lr |') and '/secret' not in card
    assert '## Evaluation' in card and '| ucf101_finetune_top1 | 84.2 |' in card
    assert "create_model('hf-hub:org/x')" in card
    assert torch.equal(features(fima_models.create_model(f'local-dir:{folder}')), expected)


def test_publish_dry_run_lists_files_offline(exported, monkeypatch, capsys):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    folder = exported[0].out_dir
    plan = publish(folder, 'org/x', dry_run=True)
    assert [n for n, _ in plan.files] == ['README.md', MANIFEST_NAME, 'config.json', 'model.safetensors']
    assert plan.commit_url is None
    assert hub_main(['publish', str(folder), '--repo-id', 'org/x', '--dry-run']) == 0
    out = capsys.readouterr().out
    assert 'Would upload 4 files' in out and 'model.safetensors' in out and 'nothing was uploaded' in out


def test_publish_uploads_with_huggingface_hub(exported, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(('init', token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(('create_repo', repo_id, kwargs['exist_ok']))

        def upload_folder(self, **kwargs):
            calls.append(('upload_folder', kwargs['repo_id'], kwargs['folder_path'], sorted(kwargs['allow_patterns'])))
            return type('Info', (), {'commit_url': 'https://hub.example/org/x/commit/1'})()

    monkeypatch.setattr('huggingface_hub.HfApi', FakeApi)
    folder = exported[0].out_dir
    plan = publish(folder, 'org/x', token='t')
    assert plan.commit_url == 'https://hub.example/org/x/commit/1' and not plan.dry_run
    assert calls[1] == ('create_repo', 'org/x', True)
    assert calls[2][:3] == ('upload_folder', 'org/x', str(folder)) and MANIFEST_NAME in calls[2][3]


def test_validation_catches_altered_or_incomplete_folders(exported, tmp_path):
    import shutil
    folder = tmp_path / 'copy'
    shutil.copytree(exported[0].out_dir, folder)
    validate_export(folder)
    (folder / 'notes.txt').write_text('x')
    with pytest.raises(ExportValidationError, match='notes.txt.*not in SHA256SUMS'):
        validate_export(folder)
    (folder / 'notes.txt').unlink()
    with open(folder / 'README.md', 'a') as f:
        f.write('edited\n')
    with pytest.raises(ExportValidationError, match='README.md changed since export'):
        validate_export(folder)
    (folder / MANIFEST_NAME).unlink()
    with pytest.raises(ExportValidationError, match='lacks SHA256SUMS'):
        validate_export(folder)
    with pytest.raises(ExportValidationError, match='not found'):
        validate_export(tmp_path / 'absent')
    with pytest.raises(ValueError, match='Malformed repo id'):
        publish(exported[0].out_dir, 'no-slash', dry_run=True)


def test_export_errors(tmp_path, capsys):
    ckpt = tmp_path / 'c.pth'
    torch.save(train_checkpoint(make_backbone().state_dict()), ckpt)
    bad = tmp_path / 'results.json'
    bad.write_text('{"top1": "high"}')
    with pytest.raises(ValueError, match='finite number'):
        export_checkpoint(ckpt, ARCH, 'fima_x', tmp_path / 'out', results=bad)
    with pytest.raises(CheckpointError, match='trained as'):
        export_checkpoint(ckpt, 'test_r2plus1d', 'fima_x', tmp_path / 'out')
    assert not (tmp_path / 'out').exists()
    args = ['export', str(tmp_path / 'missing.pth'), '--model', ARCH, '--tag', 't', '--out', str(tmp_path / 'o')]
    assert hub_main(args) == 1
    assert 'not found' in capsys.readouterr().err
    assert metrics_from_results([{'dataset': 'ucf101', 'task': 'linear', 'metric': 'top1', 'value': 75}]) == \
        {'ucf101_linear_top1': 75.0}


def test_cli_export(tmp_path, capsys):
    ckpt = tmp_path / 'c.pth'
    torch.save(train_checkpoint(make_backbone().state_dict(), method='moco'), ckpt)
    assert hub_main(['export', str(ckpt), '--model', ARCH, '--tag', 'moco_ucf101', '--out', str(tmp_path / 'rel'),
                     '--repo-id', 'org/y']) == 0
    out = capsys.readouterr().out
    assert 'SHA256SUMS (3 files)' in out and 'python -m hub publish' in out
    assert '## Evaluation\n\nNot evaluated yet.' in (tmp_path / 'rel' / 'README.md').read_text()


def test_export_again_replaces_only_its_own_files(tmp_path):
    ckpt = tmp_path / 'c.pt'
    torch.save(train_checkpoint(make_backbone().state_dict()), ckpt)
    out = tmp_path / 'release'
    export_checkpoint(ckpt, ARCH, 'fima_ucf101', out)
    export_checkpoint(ckpt, ARCH, 'fima_ucf101', out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ['README.md', MANIFEST_NAME, 'config.json', 'model.safetensors']
    (out / 'notes.txt').write_text('mine')
    assert hub_main(['export', str(ckpt), '--model', ARCH, '--tag', 'fima_ucf101', '--out', str(out),
                     '--overwrite']) == 1
    assert hub_main(['export', str(ckpt), '--model', ARCH, '--tag', 'fima_ucf101', '--out', str(out),
                     '--overwrite', '--keep-other-files']) == 0
    assert (out / 'notes.txt').read_text() == 'mine'
    assert 'notes.txt' not in (out / MANIFEST_NAME).read_text()
