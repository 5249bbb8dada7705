"""Build script: the C++ extension ``eqscale._C`` and the ``kernels/`` -> ``eqscale.kernels`` mapping.

The extension is optional. Where it cannot be built (no compiler, no torch headers), the install
still succeeds and eqscale falls back to the reference backend with one warning at import.

Environment:
    EQSCALE_NO_EXTENSION=1  skip the C++ build entirely.
    EQSCALE_REQUIRE_EXTENSION=1
                            make a failed C++ build fail the install (CI, development), instead of
                            the default of installing without the extension.
    EQSCALE_MARCH=native    the ``-march`` used for the host build (default ``native``; set it to
                            ``x86-64-v3`` or similar when building a wheel for other machines).
"""

import glob
import os
import sys

from setuptools import find_packages, setup


def _extension_build():
    """Returns (ext_modules, cmdclass) for eqscale._C, or empty ones when it cannot be built."""
    if os.environ.get("EQSCALE_NO_EXTENSION") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("eqscale: torch is not importable at build time; skipping eqscale._C", file=sys.stderr)
        return [], {}

    march = os.environ.get("EQSCALE_MARCH", "native")
    cxx_flags = ["-O3", "-fopenmp", "-std=c++17", "-ffp-contract=fast"]
    if march:
        cxx_flags.append(f"-march={march}")
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    extension = CppExtension(
        name="eqscale._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc")],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )

    class OptionalBuildExtension(BuildExtension):
        """Builds with ninja; a failed build leaves a pure-Python install behind instead of failing."""

        def run(self):
            try:
                super().run()
            except Exception as error:  # noqa: BLE001 - any compiler failure must not break the install
                if os.environ.get("EQSCALE_REQUIRE_EXTENSION") == "1":
                    raise
                # pip hides build output unless -v; this banner is what to look for in that log.
                rule = "=" * 78
                print(
                    f"\n{rule}\neqscale: building eqscale._C FAILED ({error}).\n"
                    "The compiler errors are above. eqscale is installed without it and falls "
                    "back to the reference backend.\nRebuild with EQSCALE_REQUIRE_EXTENSION=1 "
                    f"pip install -v --no-build-isolation -e . to make this an error.\n{rule}",
                    file=sys.stderr,
                )

    return [extension], {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}


# kernels/ (Triton) installs as the subpackage eqscale.kernels, never as a top-level package.
# Listed here rather than in pyproject.toml because package discovery cannot see a package whose
# folder name differs from its import name.
packages = find_packages(include=["eqscale", "eqscale.*"]) + ["eqscale.kernels"]
package_dir = {"eqscale": "eqscale", "eqscale.kernels": "kernels"}

ext_modules, cmdclass = _extension_build()
setup(packages=packages, package_dir=package_dir, ext_modules=ext_modules, cmdclass=cmdclass)
