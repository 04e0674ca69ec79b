"""Package layout that pyproject.toml cannot express: the top-level `migrations/` ships as `streamlearn.migrations`.

Alembic users expect `migrations/` and `alembic.ini` at the repository root (`alembic upgrade head`);
a non-editable install must still carry the migrations, so the folder is mapped into the package.
Everything else is configured in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["streamlearn*", "workers*"]) + ["streamlearn.migrations"],
    package_dir={"streamlearn.migrations": "migrations"},
)
