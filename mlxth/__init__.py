"""Import namespace of the project: ``mlxth.harness``, ``mlxth.trainers`` and
``mlxth.fixtures`` are the repository's ``harness/``, ``trainers/`` and
``fixtures/`` folders (mapped in pyproject.toml), so that installing the
project never shadows the PyPI distributions named ``fixtures`` or ``harness``.
"""
