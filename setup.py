"""The compiled kernels (the exact engine's and the online model's); everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "llmzip.engine._quantized",
            ["src/llmzip/engine/_quantized.c"],
            include_dirs=["src/llmzip"],
            depends=["src/llmzip/_buffers.h"],
            extra_compile_args=["-O3", "-std=gnu11", "-pthread"],
            extra_link_args=["-pthread"],
        ),
        Extension("llmzip._online", ["src/llmzip/_online.c"], depends=["src/llmzip/_buffers.h"],
                  extra_compile_args=["-O3", "-std=gnu11"]),
    ]
)
