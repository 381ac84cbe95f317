"""slkd: Swapped Logit Distillation as a plugin for mdistiller."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "slkd" / "__init__.py").read_text()).group(1)

setup(
    name="slkd",
    version=VERSION,
    description="Swapped Logit Distillation (SLD) and MLKD as a plugin for mdistiller",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["slkd", "slkd.*"]),
    install_requires=[
        "torch",
        "torchvision",
        "numpy",
        "pyyaml",
        "yacs",
        "tensorboardX",
        "tqdm",
        "scipy",
    ],
    extras_require={
        "test": ["pytest", "hypothesis"],
        "report": ["matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "slkd-train = slkd.run.train:main",
            "slkd-fetch = slkd.run.fetch:main",
            "slkd-bench = slkd.bench.cli:main",
        ],
        "mdistiller.plugins": ["slkd = slkd:register"],
    },
)
