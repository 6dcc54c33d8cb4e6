import pytest

from mlxth.fixtures import FIXTURES


@pytest.fixture(params=FIXTURES)
def fixture_name(request):
    return request.param
