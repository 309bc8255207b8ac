"""Compile every Triton kernel of bitsandbytes-xpu with the real compiler (no GPU needed) and check
the machine code for the rounding the kernels promise.

    python tests/xpu_compile_check.py            # sm_90 (NVIDIA Hopper); prints one line per variant

The interpreter (TRITON_INTERPRET=1) proves the kernels' results, but it executes Python and numpy:
it accepts code the compiler may reject and it cannot show what the compiler makes of the math.
This script lowers each kernel variant the glue launches through Triton's full pipeline to PTX and
a cubin for an NVIDIA target (the same front end and TTGIR passes Intel's Triton uses), then checks
the PTX: no approximate division or square root anywhere (``div.full`` / ``div.approx`` /
``sqrt.approx``), and no fused multiply-add outside the optimizers, whose explicit ``tl.fma`` calls
are the rule's own (launch option ``enable_fp_fusion=False``, as the glue passes). Exit status 1
on any failure. tests/test_xpu_platform.py runs it in a subprocess (without the interpreter).
"""

from __future__ import annotations

import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from bitsandbytes_xpu import int8, matmul4, optim, quant  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
F = "fp32"

OPT_SCALARS = ["b1", "b2", "b3", "omb1", "omb2", "omb3", "alpha", "eps", "wd", "c1", "c2", "eps_c2", "c2_over_c1"]


def variants():
    """(name, kernel, signature, constexprs, fma allowed)."""
    for dt in ("bf16", "fp16", "fp32"):
        for bs, g in ((64, 64), (4096, 1)):
            sig = {"A": f"*{dt}", "packed": "*u8", "absmax_out": "*fp32", "mids": "*fp32", "codes": "*u8",
                   "n": "i64", "nblocks": "i32"}  # fmt: skip
            yield f"quantize_4bit {dt} bs{bs}", quant._quantize_4bit_kernel, sig, {"BS": bs, "G": g}, False
        for single in (True, False):
            sig = {"A": f"*{dt}", "out": "*u8", "absmax_out": "*fp32", "mids": "*fp32", "n": "i64", "nblocks": "i32",
                   "blocksize": "i32"}  # fmt: skip
            c = {"G": 32 if single else 1, "CW": 128 if single else 4096, "SINGLE": single}
            yield f"quantize_blockwise {dt} single={single}", quant._quantize_blockwise_kernel, sig, c, False
    for out, ptr in ((0, "*fp32"), (1, "*i16"), (2, "*i16")):
        sig = {"packed": "*u8", "absmax": "*fp32", "table": "*fp32", "out": ptr, "n": "i64"}
        yield (
            f"dequantize_4bit out{out}",
            quant._dequantize_4bit_kernel,
            sig,
            {"BS": 64, "BYTES": 1024, "OUT": out},
            False,
        )
        sig = {"A": "*u8", "absmax": "*fp32", "code": "*fp32", "out": ptr, "n": "i64", "blocksize": "i32"}
        yield (
            f"dequantize_blockwise out{out}",
            quant._dequantize_blockwise_kernel,
            sig,
            {"BLOCK": 2048, "OUT": out},
            False,
        )
    for even in (True, False):
        for bm in (1, 8):
            sig = {"A": "*bf16", "packed": "*u8", "absmax": "*fp32", "table": "*fp32", "bias": "*bf16", "out": "*i16",
                   "M": "i32", "N": "i32", "K": "i32", "blocksize": "i32"}  # fmt: skip
            c = {"HAS_BIAS": True, "BLOCK_M": bm, "BLOCK_N": 8, "BLOCK_K": 512, "EVEN_K": even, "OUT": 2}
            yield f"gemv_4bit even_k={even} rows={bm}", matmul4._gemv_4bit_kernel, sig, c, False
    tile = {"BR": 16, "BC": 256}
    yield "int8 row stats", int8._row_stats_kernel, {"A": "*fp16", "row_stats": "*fp32", "rows": "i32", "cols": "i32",
                                                     "threshold": F}, {"HAS_T": True, **tile}, False  # fmt: skip
    yield "int8 col stats", int8._col_stats_kernel, {"A": "*bf16", "col_stats": "*fp32", "flags": "*u8", "rows": "i32",
                                                     "cols": "i32", "threshold": F}, {"HAS_T": True, **tile}, False  # fmt: skip
    yield "int8 quant", int8._quant_kernel, {"A": "*fp32", "CA": "*i8", "CAt": "*i8", "row_stats": "*fp32",
                                             "col_stats": "*fp32", "flags": "*u8", "rows": "i32", "cols": "i32"}, \
        {"HAS_FLAGS": True, "DO_COL": True, **tile}, False  # fmt: skip
    yield "int8 vectorwise dequant", int8._vectorwise_dequant_kernel, {"A": "*i8", "stats": "*fp32", "out": "*fp32",
                                                                       "n": "i64", "cols": "i32", "scale": F}, \
        {"BLOCK": 2048}, False  # fmt: skip
    yield "int8 mm dequant", int8._mm_dequant_kernel, {"A": "*i32", "row_stats": "*fp32", "col_stats": "*fp32",
                                                       "bias": "*fp16", "out": "*i16", "rows": "i32", "n": "i32",
                                                       "scale": F}, {"HAS_BIAS": True, "BLOCK": 2048, "OUT": 1}, False  # fmt: skip
    yield "int8 matmul", int8._int8_matmul_kernel, {"A": "*i8", "B": "*i8", "out": "*i32", "M": "i32", "N": "i32",
                                                    "K": "i32"}, {"BM": 32, "BN": 32, "BK": 64}, False  # fmt: skip
    for opt in range(6):
        flags = {"OPT": opt, "FIRST": False, "HAS_WD": True, "DECOUPLED": opt in (3, 4, 5), "SCALE_G": True,
                 "SKIP0": True, "TWO": opt in (3, 5), "P_OUT": 2}  # fmt: skip
        scalars = {k: F for k in OPT_SCALARS}
        for measure in (False, True):
            sig = {"G": "*bf16", "P": "*bf16", "PW": "*i16", "S1": "*fp32", "S2": "*fp32", "UPART": "*fp32", "n": "i64",
                   "gnorm": F, **scalars, "c1_over_c2": F, "decay": F, "lr_s": F}  # fmt: skip
            yield f"optimizer 32-bit id {opt} measure={measure}", optim._update32_kernel, sig, \
                {**flags, "MEASURE": measure, "BLOCK": 1024}, True  # fmt: skip
        sig = {"G": "*bf16", "P": "*bf16", "PW": "*i16", "Q1": "*u8", "Q2": "*u8", "QMAP1": "*fp32", "QMAP2": "*fp32",
               "A1": "*fp32", "A2": "*fp32", "T1": "*u8", "T2": "*u8", "n": "i64", "nblocks": "i32", "gnorm": F,
               **scalars, "decay": F, "lr": F}  # fmt: skip
        yield f"optimizer 8-bit id {opt}", optim._update8_kernel, sig, {**flags, "GROUPS": 4}, True


def main() -> int:
    failures = 0
    start = time.time()
    for name, kernel, sig, constexprs, fma_ok in variants():
        full = {**sig, **dict.fromkeys(constexprs, "constexpr")}
        try:
            compiled = triton.compile(
                ASTSource(kernel, signature=full, constexprs=constexprs), target=TARGET,
                options={"enable_fp_fusion": False},
            )  # fmt: skip
        except Exception as exc:
            print(f"FAIL {name}: does not compile: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            failures += 1
            continue
        ptx = compiled.asm["ptx"]
        problems = [op for op in ("div.full", "div.approx", "sqrt.approx") if op in ptx]
        if not fma_ok and "fma.rn.f32" in ptx:
            problems.append("fma.rn.f32 (a contracted multiply-add)")
        if problems:
            print(f"FAIL {name}: PTX has {', '.join(problems)}")
            failures += 1
        else:
            print(f"ok   {name}: {len(compiled.asm['cubin'])} bytes of sm_90 code")
    print(f"{failures} failures, {time.time() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
