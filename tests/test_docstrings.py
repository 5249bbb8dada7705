"""The examples in the docstrings run and print what they show.

Run through ``doctest.testmod`` on the imported modules rather than ``pytest --doctest-modules``,
which imports each file a second time and so registers the ops with ``torch.library`` twice.
"""

import doctest
import importlib
import pkgutil

import pytest

import eqscale

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(eqscale.__path__, "eqscale.")
    if not info.name.endswith(("__main__", "._C"))  # the CLI entry point runs on import
)


def test_modules_are_found():
    assert "eqscale.ops.so2_conv" in MODULES and "eqscale.o3" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed"
