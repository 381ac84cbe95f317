"""Compile the fused SLD kernels ahead of time for NVIDIA GPUs, without a GPU.

``python -m tests.helpers.compile_fused`` builds every specialisation slkd launches (input
dtypes, the constexpr flags, narrow and wide rows) to PTX and a cubin with Triton's bundled
``ptxas`` for sm_80 and sm_90, and prints one line per kernel. Run with ``TRITON_INTERPRET``
unset (the interpreter's kernels cannot be compiled).
"""

import itertools
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from slkd.losses import sld_fused

ARCHES = (80, 90)


def signature(kernel, constexprs: dict, pointers: dict) -> dict:
    """Triton signature: constexprs, the given pointer types (default fp32), int32 scalars."""
    return {
        name: "constexpr" if name in constexprs else pointers.get(name, "*fp32") if name.endswith("_ptr") else "i32"
        for name in kernel.arg_names
    }


def forward_variants():
    for arch, fp64, logits, (pseudo, detach), needs_grad, (block, warps) in itertools.product(
        ARCHES, (False, True), ("fp32", "bf16", "fp16"), ((False, False), (True, False), (True, True)),
        (True, False), ((128, 1), (1024, 4)),
    ):  # fmt: skip
        if fp64 and logits != "fp32":
            continue
        compute = "*fp64" if fp64 else "*fp32"
        pointers = {name: compute for name in ("temps_ptr", "terms_ptr", "swapped_ptr", "grad_ts_ptr", "grad_ss_ptr")}
        pointers.update(z_ptr="*fp64" if fp64 else f"*{logits}", t_ptr="*fp64" if fp64 else f"*{logits}", y_ptr="*i64")
        constexprs = dict(BLOCK=block, TEACHER_SWAP=True, PSEUDO=pseudo, DETACH=detach, NEEDS_GRAD=needs_grad, FP64=fp64)
        yield arch, warps, sld_fused._sld_forward_kernel, constexprs, pointers


def backward_variants():
    for arch, grad, pseudo, (block, warps) in itertools.product(
        ARCHES, ("fp32", "bf16", "fp16", "fp64"), (False, True), ((128, 1), (1024, 4))
    ):
        compute = "*fp64" if grad == "fp64" else "*fp32"
        pointers = {"grad_ts_ptr": compute, "grad_ss_ptr": compute, "out_ts_ptr": compute, "out_ss_ptr": compute, "grad_ptr": f"*{grad}"}
        yield arch, warps, sld_fused._sld_backward_kernel, dict(BLOCK=block, PSEUDO=pseudo), pointers


def main() -> int:
    if sld_fused.INTERPRETED:
        print("TRITON_INTERPRET is set: unset it to compile", file=sys.stderr)
        return 2
    count = 0
    for arch, warps, kernel, constexprs, pointers in itertools.chain(forward_variants(), backward_variants()):
        source = ASTSource(kernel, signature(kernel, constexprs, pointers), constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
        if not compiled.asm.get("cubin"):
            print(f"no cubin for {kernel.__name__} sm_{arch} {constexprs}", file=sys.stderr)
            return 1
        count += 1
    print(f"compiled {count} kernel variants to cubin for sm_{', sm_'.join(map(str, ARCHES))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
