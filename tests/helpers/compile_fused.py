"""Compile the fused SLD kernels ahead of time for NVIDIA GPUs, without a GPU.

``python -m tests.helpers.compile_fused`` builds the specialisations slkd launches (input
dtypes, the constexpr flags; 100, 1000 and 4096 classes with the block and warps of
``launch_shape``) to a cubin with Triton's bundled ``ptxas`` for sm_80 and sm_90, checks with
its ``cuobjdump`` that the float32, bf16 and fp16 kernels spill no registers up to 1024
classes and at most a few bytes per thread beyond, and prints a summary line. The float64
kernels (for tests and checks, not training) are built up to 1024 classes, spills allowed. Run with ``TRITON_INTERPRET`` unset (the interpreter's kernels
cannot be compiled).
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

ARCHES = (80, 90)
CLASSES = (100, 1000, 4096)
SPILL_FREE = 1024  # classes; beyond, a few bytes of spills per thread are allowed
MAX_SPILL_BYTES = 32


def signature(kernel, constexprs: dict, pointers: dict) -> dict:
    """Triton signature: constexprs, the given pointer types (default fp32), int32 scalars."""
    return {
        name: "constexpr" if name in constexprs else pointers.get(name, "*fp32") if name.endswith("_ptr") else "i32"
        for name in kernel.arg_names
    }


def forward_variants():
    for arch, fp64, logits, (pseudo, detach), needs_grad, classes in itertools.product(
        ARCHES, (False, True), ("fp32", "bf16", "fp16"), ((False, False), (True, False), (True, True)),
        (True, False), CLASSES,
    ):  # fmt: skip
        if fp64 and (logits != "fp32" or classes > SPILL_FREE):
            continue
        block, warps = sld_fused.launch_shape(classes, fp64)
        compute = "*fp64" if fp64 else "*fp32"
        pointers = {name: compute for name in ("temps_ptr", "terms_ptr", "swapped_ptr", "grad_ts_ptr", "grad_ss_ptr")}
        pointers.update(z_ptr="*fp64" if fp64 else f"*{logits}", t_ptr="*fp64" if fp64 else f"*{logits}", y_ptr="*i64")
        constexprs = dict(BLOCK=block, TEACHER_SWAP=True, PSEUDO=pseudo, DETACH=detach, NEEDS_GRAD=needs_grad, FP64=fp64)
        yield arch, warps, sld_fused._sld_forward_kernel, constexprs, pointers, None if fp64 else classes


def backward_variants():
    for arch, grad, pseudo, classes in itertools.product(ARCHES, ("fp32", "bf16", "fp16", "fp64"), (False, True), CLASSES):
        block, warps = sld_fused.launch_shape(classes, grad == "fp64")
        compute = "*fp64" if grad == "fp64" else "*fp32"
        pointers = {"grad_ts_ptr": compute, "grad_ss_ptr": compute, "out_ts_ptr": compute, "out_ss_ptr": compute, "grad_ptr": f"*{grad}"}
        yield arch, warps, sld_fused._sld_backward_kernel, dict(BLOCK=block, PSEUDO=pseudo), pointers, None if grad == "fp64" else classes


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
    for arch, warps, kernel, constexprs, pointers, classes in itertools.chain(forward_variants(), backward_variants()):
        source = ASTSource(kernel, signature(kernel, constexprs, pointers), constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
        cubin = compiled.asm.get("cubin")
        if not cubin:
            print(f"no cubin for {kernel.__name__} sm_{arch} {constexprs}", file=sys.stderr)
            return 1
        spilled = 0 if classes is None else stack_bytes(cubin)  # None: float64, not checked
        if spilled > (0 if classes is None or classes <= SPILL_FREE else MAX_SPILL_BYTES):
            print(f"{kernel.__name__} sm_{arch} {warps} warps {constexprs} spills {spilled} bytes per thread", file=sys.stderr)
            return 1
        count += 1
    print(f"compiled {count} kernel variants to cubin for sm_{', sm_'.join(map(str, ARCHES))}, spills within bounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
