"""Build hook: cffi compiles csrc/ into zcio._zcio. Metadata is in pyproject.toml."""
import platform

from setuptools import setup

options = {}
if platform.python_implementation() == "CPython":
    # cffi builds against the stable ABI, so one wheel serves every CPython >= 3.9.
    options["bdist_wheel"] = {"py_limited_api": "cp39"}

setup(cffi_modules=["csrc/build.py:ffibuilder"], options=options)
