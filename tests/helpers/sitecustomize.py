"""Loaded by subprocesses of tests/test_host_patch.py: lets mdistiller's own CUDA-only
tools/train.py run on a CPU machine over a fake CIFAR-100 file.

- ``Module.cuda`` returns the module unchanged (mdistiller calls ``distiller.cuda()``);
- torchvision's CIFAR-100 md5 checks accept the fake files.
"""

import torch
import torchvision.datasets.cifar

torch.nn.Module.cuda = lambda self, *args, **kwargs: self
torchvision.datasets.cifar.check_integrity = lambda *args, **kwargs: True
