import pytest

from tests.mrcnn.scenes import make_batch


@pytest.fixture
def batch():
    return make_batch()[0]
