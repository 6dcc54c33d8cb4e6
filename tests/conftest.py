import os

# On CUDA, MLX runs fp32 matmuls as TF32 unless told otherwise; the numeric
# tests hold fp32 to fp32 tolerances, so they run with full precision.
os.environ.setdefault("MLX_ENABLE_TF32", "0")

import pytest

from mlxth.fixtures import FIXTURES


@pytest.fixture(params=FIXTURES)
def fixture_name(request):
    return request.param
