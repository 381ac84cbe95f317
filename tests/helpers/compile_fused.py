"""Compile the fused SLD kernels ahead of time for NVIDIA GPUs, without a GPU.

``python -m tests.helpers.compile_fused`` builds the kernels' specialisations to a cubin with
Triton's bundled ``ptxas`` for sm_80 and sm_90: float32, bf16, fp16 and float64 logits;
int64 labels (float32, float64) and int32 labels (bf16, fp16); every combination of the
pseudo-teacher, detach and gradient flags, and the teacher swap off once; 100, 1000, 2048 and
4096 classes with the block and warps of ``sld_fused.launch_shape``; the backward kernel for
each gradient dtype. With Triton's ``cuobjdump`` it checks that the float32, bf16 and fp16
kernels spill at most a few bytes of registers per thread (float64, for tests and checks
rather than training, may spill more). The exact figure depends on Triton's version: with
Triton 3.6 and 3.8 it is 0 up to 1000 classes in the flags SLD trains with, and 8 to 24 bytes
in some other variants. It prints a summary line.
Run with ``TRITON_INTERPRET`` unset (the interpreter's kernels cannot be compiled).
"""

import itertools
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from slkd.losses import sld_fused
from slkd.losses.sld import DEFAULT_TEMPERATURES

ARCHES = (80, 90)
DTYPES = ("fp32", "bf16", "fp16", "fp64")
CLASSES = (100, 1000, 2048, sld_fused.MAX_CLASSES)
MAX_SPILL_BYTES = 32  # per thread; a launch shape that overloads a thread spills hundreds
FLAGS = [  # (TEACHER_SWAP, PSEUDO, DETACH, NEEDS_GRAD)
    *[(True, pseudo, detach, grad) for pseudo, detach in ((False, False), (True, False), (True, True)) for grad in (True, False)],
    (False, True, False, True),
]


def signature(kernel, constexprs: dict, pointers: dict) -> dict:
    """Triton signature: constexprs, the given pointer types (default fp32), int32 scalars."""
    return {
        name: "constexpr" if name in constexprs else pointers.get(name, "*fp32") if name.endswith("_ptr") else "i32"
        for name in kernel.arg_names
    }


def forward_variants():
    """(arch, warps, kernel, constexprs, pointer types, whether its spills are checked)."""
    for arch, dtype, classes, (swap, pseudo, detach, grad) in itertools.product(ARCHES, DTYPES, CLASSES, FLAGS):
        fp64 = dtype == "fp64"
        block, warps = sld_fused.launch_shape(classes, fp64)
        compute = "*fp64" if fp64 else "*fp32"
        pointers = {name: compute for name in ("temps_ptr", "terms_ptr", "swapped_ptr", "grad_ts_ptr", "grad_ss_ptr")}
        pointers.update(z_ptr=f"*{dtype}", t_ptr=f"*{dtype}", y_ptr="*i64" if dtype in ("fp32", "fp64") else "*i32")
        constexprs = dict(NUM_TEMPS=len(DEFAULT_TEMPERATURES), BLOCK=block, TEACHER_SWAP=swap, PSEUDO=pseudo, DETACH=detach, NEEDS_GRAD=grad, FP64=fp64)
        yield arch, warps, sld_fused._sld_forward_kernel, constexprs, pointers, not fp64


def backward_variants():
    for arch, grad, pseudo, classes in itertools.product(ARCHES, DTYPES, (False, True), CLASSES):
        fp64 = grad == "fp64"
        block, warps = sld_fused.launch_shape(classes, fp64)
        compute = "*fp64" if fp64 else "*fp32"
        pointers = {"grad_ts_ptr": compute, "grad_ss_ptr": compute, "out_ts_ptr": compute, "out_ss_ptr": compute, "grad_ptr": f"*{grad}"}
        yield arch, warps, sld_fused._sld_backward_kernel, dict(BLOCK=block, PSEUDO=pseudo), pointers, not fp64


def stack_bytes(cubin: bytes) -> int:
    """Bytes of stack (register spills) per thread, from cuobjdump's resource usage."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", file.name], capture_output=True, text=True, check=True).stdout
    return max(int(value) for value in re.findall(r"STACK:(\d+)", usage))


def main() -> int:
    if sld_fused.INTERPRETED:
        print("TRITON_INTERPRET is set: unset it to compile", file=sys.stderr)
        return 2
    count = 0
    for arch, warps, kernel, constexprs, pointers, checked in itertools.chain(forward_variants(), backward_variants()):
        source = ASTSource(kernel, signature(kernel, constexprs, pointers), constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
        cubin = compiled.asm.get("cubin")
        if not cubin:
            print(f"no cubin for {kernel.__name__} sm_{arch} {constexprs}", file=sys.stderr)
            return 1
        spilled = stack_bytes(cubin) if checked else 0  # float64 is not checked
        if spilled > MAX_SPILL_BYTES:
            print(f"{kernel.__name__} sm_{arch} {warps} warps {constexprs} spills {spilled} bytes per thread", file=sys.stderr)
            return 1
        count += 1
    print(f"compiled {count} kernel variants to cubin for sm_{', sm_'.join(map(str, ARCHES))}, spills within bounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
