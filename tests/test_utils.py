"""The shared helpers of fima_models._utils: the precision vocabulary, devices, clip span, error text."""
import errno

import pytest
import torch

from fima_models._utils import (
    PRECISIONS, TRAINING_PRECISIONS, autocast_dtype, clip_span, describe_error, describe_os_error, hardware,
    resolve_device, resolve_precision,
)

CPU, CUDA = torch.device('cpu'), torch.device('cuda')


@pytest.fixture
def native(monkeypatch):
    """Set whether the device 'has' native bfloat16."""
    def set_native(value: bool) -> None:
        monkeypatch.setattr(hardware, 'has_native_bf16', lambda device: value)
    return set_native


@pytest.mark.parametrize('has_bf16, device, training, want', [
    (True, CPU, False, 'bf16'), (False, CPU, False, 'fp32'),
    (True, CUDA, False, 'bf16'), (False, CUDA, False, 'fp32'),
    (False, CUDA, True, 'fp16'), (False, CPU, True, 'fp32'), (True, CUDA, True, 'bf16'),
])
def test_auto_picks_bf16_only_where_native(native, has_bf16, device, training, want):
    native(has_bf16)
    assert resolve_precision('auto', device, training=training)[0] == want


def test_explicit_precisions(native, caplog):
    native(False)
    assert resolve_precision('FP32', CPU) == ('fp32', 'fp32: asked for')
    with pytest.raises(ValueError, match='no native bfloat16.*Use precision fp32 or auto'):
        resolve_precision('bf16', CPU)
    assert resolve_precision('bf16', CPU, allow_emulated=True)[0] == 'bf16'
    assert 'emulated' in caplog.text
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        resolve_precision('fp16', CUDA)  # inference has no fp16
    with pytest.raises(ValueError, match='fp16 needs a CUDA device'):
        resolve_precision('fp16', CPU, training=True)
    assert resolve_precision('fp16', CUDA, training=True)[0] == 'fp16'
    native(True)
    assert resolve_precision('bf16', CPU)[0] == 'bf16'
    assert set(PRECISIONS) == {'fp32', 'bf16', 'auto'} and set(TRAINING_PRECISIONS) == set(PRECISIONS) | {'fp16'}
    assert [autocast_dtype(p) for p in ('fp32', 'bf16', 'fp16')] == [None, torch.bfloat16, torch.float16]


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert resolve_device(None) == CPU and resolve_device('cpu') == CPU
    with pytest.raises(ValueError, match='no CUDA GPU is available; use device cpu'):
        resolve_device('cuda:1')


def test_clip_span_counts_first_to_last_frame():
    # 16 frames every 2nd: frames 0, 2, ..., 30 -> 31 frames from first to last
    assert [clip_span(16, 2), clip_span(1, 5), clip_span(8)] == [31, 1, 8]


def test_error_text():
    assert describe_error(ValueError('')) == 'ValueError'
    assert describe_error(RuntimeError(' bad \n')) == 'bad'
    full = OSError(errno.ENOSPC, 'No space left on device', '/out/x.npy')
    assert describe_os_error(full) == "cannot write '/out/x.npy': the disk is full; free space or choose another output folder"
    assert describe_os_error(OSError(errno.EIO, 'I/O error'), '/o') == "cannot write '/o': I/O error"
    assert describe_os_error(OSError('complete message')) == 'complete message'
