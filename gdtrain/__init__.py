"""gdtrain: compare gradient-descent optimizers from YAML experiment configs.

From Python: gdtrain.run, gdtrain.sweep, gdtrain.run_study, gdtrain.rows, gdtrain.frame and gdtrain.UserError
(gdtrain/api.py, docs/python.md), imported when first used, so `import gdtrain` stays cheap.
"""

import typing

__version__ = "0.1.0"
__all__ = ["run", "sweep", "run_study", "rows", "frame", "RunResult", "StudyResult", "UserError"]


def __getattr__(name: str) -> typing.Any:
    """The Python API's names, imported on first use (torch only when something trains)."""
    if name == "UserError":
        from gdtrain.core.errors import UserError

        return UserError
    if name in __all__:
        from gdtrain import api

        return getattr(api, name)
    raise AttributeError(f"module 'gdtrain' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names with the API's, which load on first use (a notebook's completion lists them)."""
    return sorted({*globals(), *__all__})
