"""Checkpoint reading and backbone extraction for every supported container format.

The ``make_*`` builders here are also used by ``test_pretrained``, ``test_convert`` and ``test_hub``.
"""
import argparse
import builtins
import os
from pathlib import Path
from typing import Dict

import pytest
import torch
from safetensors.torch import save_file

import fima_models
from fima_models._utils import TRAIN_CHECKPOINT_FORMAT
from fima_models.checkpoint import (
    CheckpointError, UnsafeCheckpointError, extract_backbone, load_backbone_state_dict,
    read_checkpoint, summarize_keys,
)

ARCH = 'test_r3d'
CLIP = (1, 3, 4, 32, 32)


def make_backbone(arch: str = ARCH, num_classes: int = 0, seed: int = 1) -> torch.nn.Module:
    """A randomly initialised model in eval mode, with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = fima_models.create_model(arch, num_classes=num_classes)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith('running_mean'):
                buf.uniform_(-0.1, 0.1)
            elif name.endswith('running_var'):
                buf.uniform_(0.5, 1.5)
    return model.eval()


def clip(seed: int = 0) -> torch.Tensor:
    """A fixed tiny input clip."""
    return torch.randn(*CLIP, generator=torch.Generator().manual_seed(seed))


def fima_checkpoint(backbone: Dict[str, torch.Tensor]) -> dict:
    """The FIMA authors' ``checkpoint_XXXX.pth.tar`` layout around ``backbone``."""
    sd = {f'module.encoder_q.{k}': v for k, v in backbone.items()}
    sd.update({f'module.encoder_k.{k}': v.clone() for k, v in backbone.items()})
    sd.update({
        'module.encoder_q.fc.0.weight': torch.randn(16, 32), 'module.encoder_q.id_head.weight': torch.randn(4, 32),
        'module.projector_q.0.weight': torch.randn(16, 32, 1, 1, 1), 'module.queue': torch.randn(8, 64),
        'module.queue_ptr': torch.zeros(1, dtype=torch.long),
        'module.decoder.layers.0.linear1.weight': torch.randn(8, 8),
        'module.motion_queue': torch.randn(8, 64),
    })
    return {'epoch': 200, 'arch': 'r3d', 'state_dict': sd,
            'optimizer': {'state': {}, 'param_groups': [{'lr': 0.00375, 'momentum': 0.9, 'params': [0, 1]}]}}


def moco_checkpoint(backbone: Dict[str, torch.Tensor]) -> dict:
    """MoCo-style: ``encoder_q.``/``encoder_k.`` without DataParallel, an MLP ``fc`` and a queue."""
    sd = {f'encoder_q.{k}': v for k, v in backbone.items()}
    sd.update({f'encoder_k.{k}': v.clone() for k, v in backbone.items()})
    sd.update({'encoder_q.fc.0.weight': torch.randn(16, 32), 'queue': torch.randn(16, 8)})
    return {'epoch': 3, 'arch': 'r3d', 'state_dict': sd}


def backbone_prefixed(backbone: Dict[str, torch.Tensor]) -> dict:
    """``backbone.`` + a ``head.`` (mmaction / solo-learn style), under DataParallel."""
    sd = {f'module.backbone.{k}': v for k, v in backbone.items()}
    sd['module.head.fc.weight'] = torch.randn(5, 32)
    return sd


def torchvision_train_checkpoint(backbone: Dict[str, torch.Tensor]) -> dict:
    """torchvision's references/video_classification checkpoint (``args`` is an argparse.Namespace)."""
    return {'model': dict(backbone), 'optimizer': {'state': {}, 'param_groups': []}, 'lr_scheduler': {},
            'epoch': 44, 'args': argparse.Namespace(lr=0.64, model='r3d_18')}


def train_checkpoint(backbone: Dict[str, torch.Tensor], method: str = 'fima', model_name: str = ARCH,
                     num_classes: int = 0) -> dict:
    """This project's ``python -m train`` checkpoint."""
    return {
        'format': TRAIN_CHECKPOINT_FORMAT, 'version': 1, 'model_name': model_name, 'method': method, 'epoch': 199,
        'step': 4000, 'model': dict(backbone), 'num_classes': num_classes,
        'config': {'method': method, 'seed': 0, 'device': 'auto', 'model': {'arch': model_name},
                   'data': {'dataset': 'ucf101', 'root': '/secret/data/ucf101', 'split': 1, 'clip_len': 32,
                            'size': 32, 'num_workers': 8},
                   'train': {'epochs': 200, 'batch_size': 24}, 'optim': {'name': 'sgd', 'lr': 0.00375}},
        'state': {'encoder_k': {k: v.clone() for k, v in backbone.items()}, 'queue': torch.randn(8, 4),
                  'optimizer': {'state': {}, 'param_groups': []}},
    }


FORMATS = {
    'fima': fima_checkpoint,
    'moco': moco_checkpoint,
    'backbone': backbone_prefixed,
    'state_dict': lambda sd: {f'module.{k}': v for k, v in sd.items()},
    'torchvision-train': torchvision_train_checkpoint,
    TRAIN_CHECKPOINT_FORMAT: train_checkpoint,
}


def write_checkpoint(path: Path, fmt: str, backbone: Dict[str, torch.Tensor]) -> Path:
    """Write ``backbone`` in container ``fmt`` (a FORMATS key or ``'safetensors'``) to ``path``."""
    if fmt == 'safetensors':
        save_file({k: v.contiguous() for k, v in backbone.items()}, str(path))
    else:
        torch.save(FORMATS[fmt](backbone), path)
    return path


@pytest.fixture(scope='module')
def backbone() -> Dict[str, torch.Tensor]:
    return make_backbone().state_dict()


@pytest.mark.parametrize('fmt', sorted(FORMATS) + ['safetensors'])
def test_every_format_yields_the_backbone(tmp_path, backbone, fmt):
    path = write_checkpoint(tmp_path / 'ckpt.pth.tar', fmt, backbone)
    extracted = load_backbone_state_dict(path)
    assert extracted.format == fmt
    assert set(extracted.state_dict) == set(backbone)
    for k, v in backbone.items():
        assert torch.equal(extracted.state_dict[k], v), k


def test_fima_drops_training_only_parts(backbone):
    extracted = extract_backbone(fima_checkpoint(backbone))
    dropped = set(extracted.dropped)
    assert {'encoder_q.fc.0.weight', 'encoder_q.id_head.weight', 'queue', 'queue_ptr', 'motion_queue',
            'decoder.layers.0.linear1.weight', 'projector_q.0.weight'} <= dropped
    assert all(f'encoder_k.{k}' in dropped for k in backbone)
    assert extracted.meta == {'epoch': 200, 'arch': 'r3d'}


def test_train_checkpoint_meta(backbone):
    extracted = extract_backbone(train_checkpoint(backbone, method='moco'))
    assert extracted.meta['method'] == 'moco' and extracted.meta['model_name'] == ARCH
    assert extracted.meta['config']['data']['dataset'] == 'ucf101'
    assert extracted.dropped == []


class _Payload:
    """Pickles to a call that creates a marker file when unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f'open({str(self.marker)!r}, "w").write("pwned")',)


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / 'marker'
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'extra': _Payload(marker)}, evil)
    with pytest.raises(UnsafeCheckpointError, match='Refused to load') as info:
        read_checkpoint(evil)
    assert 'exec' in str(info.value)
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    torch.load(evil, weights_only=False)
    assert marker.read_text() == 'pwned'


def test_unreadable_inputs_have_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        read_checkpoint(tmp_path / 'nope.pth')
    with pytest.raises(CheckpointError, match='is a directory'):
        read_checkpoint(tmp_path)
    text = tmp_path / 'notes.txt'
    text.write_text('hello, not a checkpoint\n' * 3)
    with pytest.raises(CheckpointError, match='not a'):
        read_checkpoint(text)
    broken = tmp_path / 'broken.safetensors'
    broken.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1}')
    with pytest.raises(CheckpointError, match='safetensors'):
        read_checkpoint(broken)


def test_non_weight_objects_are_rejected(tmp_path):
    with pytest.raises(CheckpointError, match='No model weights'):
        extract_backbone({'epoch': 3, 'arch': 'r3d'})
    with pytest.raises(CheckpointError, match='list'):
        extract_backbone([1, 2, 3])
    with pytest.raises(CheckpointError, match="no 'model'"):
        extract_backbone({'format': TRAIN_CHECKPOINT_FORMAT, 'model': None})


def test_summarize_keys_groups_long_lists():
    assert summarize_keys(['a.w', 'b.w']) == 'a.w, b.w'
    text = summarize_keys([f'encoder_k.{i}' for i in range(20)] + ['queue'], limit=3)
    assert text == 'encoder_k.* (20 keys), queue'
    assert os.path.sep not in text
