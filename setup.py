"""slkd: Swapped Logit Distillation as a plugin for mdistiller."""

import re
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
CONFIGS = "mdistiller_configs"  # the source of truth; the build copies it into the package


class BuildWithConfigs(build_py):
    """build_py that also puts the top-level mdistiller_configs/ into the built package as
    slkd/mdistiller_configs, so that a wheel carries the configs (slkd.shipped finds them)."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):  # an editable install reads the checkout's own
            target = Path(self.build_lib) / "slkd" / CONFIGS
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(HERE / CONFIGS, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
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
    cmdclass={"build_py": BuildWithConfigs},
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
