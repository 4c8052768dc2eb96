"""Our R3D / MC3 / R(2+1)D / S3D are torchvision's: same keys and shapes, strict loading, same logits.

The registered ``tv_k400`` configs are also checked against the installed torchvision weight enums
(URL, accuracies, parameter count), so a typo in a literal fails here. Full-size logits at the
torchvision evaluation sizes are ``slow``; the unmarked checks use small clips.
"""
import pytest
import timm
import torch
from timm.models import get_pretrained_cfg

import fima_models  # noqa: F401  (registers the models)

tvv = pytest.importorskip('torchvision.models.video')

RESNETS = {
    'r3d_18': (tvv.r3d_18, tvv.R3D_18_Weights),
    'mc3_18': (tvv.mc3_18, tvv.MC3_18_Weights),
    'r2plus1d_18': (tvv.r2plus1d_18, tvv.R2Plus1D_18_Weights),
}
ALL = {**RESNETS, 's3d': (tvv.s3d, tvv.S3D_Weights)}


def _pair(name):
    """A torchvision model with random weights and ours loaded strictly from its state_dict."""
    torch.manual_seed(0)
    tv = ALL[name][0](num_classes=400).eval()
    # random BN statistics, so that a mismatched norm layer could not hide behind identity stats
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = timm.create_model(f'{name}.tv_k400').eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    return tv, ours


@pytest.mark.parametrize('name', sorted(ALL))
def test_same_keys_shapes_and_param_count(name):
    tv = ALL[name][0]()
    ours = timm.create_model(name, num_classes=400)
    tv_sd, our_sd = tv.state_dict(), ours.state_dict()
    assert list(tv_sd) == list(our_sd)
    assert all(tv_sd[k].shape == our_sd[k].shape for k in tv_sd)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in tv.parameters())


@pytest.mark.parametrize('name', sorted(ALL))
def test_tv_cfg_matches_torchvision_weights_enum(name):
    weights = ALL[name][1].KINETICS400_V1
    cfg = get_pretrained_cfg(f'{name}.tv_k400')
    assert cfg.url == weights.url
    assert cfg.num_params == weights.meta['num_params']
    metrics = weights.meta['_metrics']['Kinetics-400']
    assert cfg.metrics == {'kinetics400_acc1': metrics['acc@1'], 'kinetics400_acc5': metrics['acc@5']}
    preset = weights.transforms()
    crop = preset.crop_size
    assert tuple(cfg.input_size[2:]) == tuple(crop)
    assert cfg.crop_pct == pytest.approx(crop[0] / preset.resize_size[0])
    assert tuple(cfg.mean) == tuple(preset.mean) and tuple(cfg.std) == tuple(preset.std)
    assert cfg.num_classes == len(weights.meta['categories'])


@pytest.mark.parametrize('name', sorted(RESNETS))
def test_resnet_logits_identical_small_clip(name):
    tv, ours = _pair(name)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))


def test_s3d_features_identical_small_clip():
    tv, ours = _pair('s3d')
    x = torch.randn(1, 3, 8, 48, 48)
    with torch.no_grad():
        assert torch.equal(ours.forward_features(x), tv.features(x))


def test_s3d_head_identical_on_2x7x7_map():
    """At 16x224 the final map is 2x7x7, where torchvision's (2,7,7) pool is a global average."""
    tv, ours = _pair('s3d')
    fmap = torch.randn(2, 1024, 2, 7, 7)
    with torch.no_grad():
        ref = tv.classifier(tv.avgpool(fmap)).mean(dim=(2, 3, 4))
        assert torch.allclose(ours.forward_head(fmap), ref, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(RESNETS))
def test_resnet_logits_identical_16x112(name):
    tv, ours = _pair(name)
    x = torch.randn(1, 3, 16, 112, 112)
    with torch.no_grad():
        assert torch.allclose(ours(x), tv(x), atol=1e-5)


@pytest.mark.slow
def test_s3d_logits_identical_16x224():
    tv, ours = _pair('s3d')
    x = torch.randn(1, 3, 16, 224, 224)
    with torch.no_grad():
        assert torch.allclose(ours(x), tv(x), atol=1e-5)
