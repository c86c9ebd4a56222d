"""Build the Triton neuron kernels for a CUDA architecture without a GPU, and report what each variant uses.

For every variant the library launches on CUDA (see ``spikformers.kernels.triton.cuda_variants``): registers
per thread, stack and local (spill) bytes from the cubin, the round-to-nearest float ops in its PTX, and the build
time (near 0 where Triton's on-disk cache already holds the variant; set TRITON_CACHE_DIR to a new folder to time
the full build). Registers bound occupancy: an H100 SM has 65536 registers and holds at most 2048 threads, so a
kernel at 32 registers per thread or fewer can fill it, and one at 64 holds half as many threads (plenty for
kernels that stream memory, as these do).

    python benchmarks/cuda_build.py [--arch 90] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import time

from spikformers.kernels import triton as triton_kernels


def build(arch: int) -> dict[str, dict]:
    """Compile each variant on its own (timed) and read its resource usage and rounding ops."""
    out = {}
    for name in triton_kernels.cuda_variants():
        start = time.perf_counter()
        kernel = triton_kernels.compile_for_cuda(arch, [name])[name]
        seconds = time.perf_counter() - start
        ops = sorted(set(re.findall(r"\b(?:add|mul|fma)\.rn[\w.]*\.f32", kernel.asm["ptx"])))
        out[name] = {**triton_kernels.cuda_resources(kernel), "rn_ops": ops, "build_s": round(seconds, 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability times 10 (90: H100, 80: A100)")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args()
    res = build(args.arch)
    print(f"Triton neuron kernels for sm_{args.arch} (options {triton_kernels.cuda_options()})")
    print(f"{'variant':<32}{'regs':>6}{'stack':>7}{'local':>7}{'build s':>9}  round-to-nearest ops")
    for name, r in res.items():
        ops = " ".join(r["rn_ops"])
        print(f"{name:<32}{r['registers']:>6}{r['stack']:>7}{r['local']:>7}{r['build_s']:>9.2f}  {ops}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "options": triton_kernels.cuda_options(), "variants": res}, f, indent=2)


if __name__ == "__main__":
    main()
