"""create_model / list_models / list_pretrained: names, aliases, suggestions, timm registration."""
import pytest
import timm
import torch

import fima_models
from fima_models import MODEL_ALIASES, UnknownModelError


def test_list_models_is_the_zoo():
    assert fima_models.list_models() == ['i3d', 'i3d_tf', 'mc3_18', 'r2plus1d_18', 'r3d_18', 's3d']
    assert fima_models.list_models('r*') == ['r2plus1d_18', 'r3d_18']
    assert 'test_r3d' in fima_models.list_models(include_test=True)


def test_list_pretrained_has_every_required_tag():
    tags = set(fima_models.list_pretrained())
    for arch in ('r2plus1d_18', 'r3d_18', 's3d', 'i3d'):
        assert {f'{arch}.fima_ucf101', f'{arch}.fima_k400', f'{arch}.moco_ucf101'} <= tags
    for arch in ('r3d_18', 'mc3_18', 'r2plus1d_18', 's3d'):
        assert f'{arch}.tv_k400' in tags
    assert fima_models.list_pretrained('i3d.*') == sorted(t for t in tags if t.startswith('i3d.'))


def test_published_filter_keeps_only_real_files():
    published = fima_models.list_pretrained(published_only=True)
    assert published and all(name.endswith('.tv_k400') or name.startswith('i3d_tf.deepmind_k400')
                             for name in published)
    assert 'r2plus1d_18.fima_k400' not in published


@pytest.mark.parametrize('alias', sorted(MODEL_ALIASES))
def test_alias_resolves_to_fima_tag(alias):
    model = fima_models.create_model(alias, num_classes=0)
    arch, tag = MODEL_ALIASES[alias].split('.')
    assert model.pretrained_cfg['architecture'] == arch
    assert model.pretrained_cfg['tag'] == tag
    assert model.pretrained_cfg['method'] == 'fima'


def test_timm_sees_registered_models():
    model = timm.create_model('test_r3d', num_classes=5)
    out = model(torch.randn(1, 3, 4, 32, 32))
    assert out.shape == (1, 5)


@pytest.mark.parametrize('name, suggestion', [('r2plus1d_17', 'r2plus1d_18'), ('i3dd', 'i3d'),
                                              ('r3d_18.fima_ucf', 'r3d_18.fima_ucf101')])
def test_unknown_name_suggests_close_names(name, suggestion):
    with pytest.raises(UnknownModelError, match=suggestion) as info:
        fima_models.create_model(name)
    assert isinstance(info.value, RuntimeError)  # as timm's own unknown-model error


def test_timm_image_models_are_not_video_models():
    with pytest.raises(UnknownModelError, match='resnet18'):
        fima_models.create_model('resnet18')
