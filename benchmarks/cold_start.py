"""Cold start of `lastrank rerank`: process CPU seconds (user + sys) of fresh processes, from the interpreter's
start to the first result printed, and to the process's exit.

    python benchmarks/cold_start.py [--model minilm] [--runs 5] [--dtype auto] [--src OTHER_CHECKOUT/src]

--src runs another checkout's code (PYTHONPATH), e.g. the commit before a change, interleaved with this one
(this, other, this, other, ...) so that load on the machine hits both alike. The machine (lscpu model name)
and the load average are printed beside the figures. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from lastrank.engine.dtype_choice import cpu_info


def cpu_model() -> str:
    return cpu_info()[0]


# The child: `lastrank rerank` through lastrank.cli.main, then its own CPU seconds so far (the first result is
# printed just before main returns), before the interpreter's exit (which tears torch down: 0.3-0.5 s here).
CHILD = """import sys, time
from lastrank.cli import main
code = main(sys.argv[1:])
print(f"cold_start: cpu to first result {time.process_time():.4f}", file=sys.stderr)
sys.exit(code)
"""


def one_run(argv: list[str], env: dict) -> tuple[float, float]:
    """(CPU seconds to the first result, CPU seconds of the whole process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"cold_start: {' '.join(argv)} failed:\n{proc.stderr}")
    first = float(proc.stderr.rsplit("cpu to first result", 1)[1].split()[0])
    return first, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--src", help="another checkout's src/ folder to compare with (run interleaved)")
    args = p.parse_args()

    docs = Path(tempfile.mkdtemp()) / "docs.txt"
    docs.write_text("Green tea contains antioxidants.\nThe stock market fell today.\nTea is brewed from leaves.\n")
    argv = [sys.executable, "-c", CHILD, "rerank", "--model", args.model, "--query", "health benefits of green tea",
            "--documents", str(docs), "--dtype", args.dtype]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    # as installed: pip compiles lastrank's modules to bytecode; where the environment forbids writing it
    # (PYTHONDONTWRITEBYTECODE, as on this project's machines), an editable checkout recompiles ~35 modules from
    # source in every run (~0.07 s), which no installed copy does
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    variants = {"this checkout": env}
    if args.src:
        variants[f"--src {args.src}"] = dict(env, PYTHONPATH=str(Path(args.src).resolve()))
    one_run(argv, env)  # page cache and the dtype probe's cache filled, untimed
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    loads = []
    for _ in range(args.runs):
        for name, variant_env in variants.items():
            loads.append(os.getloadavg()[0])
            times[name].append(one_run(argv, variant_env))
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; load average (1 min) during the runs: "
          f"{min(loads):.2f}-{max(loads):.2f}")
    print(f"command: lastrank rerank --model {args.model} --dtype {args.dtype} (3 documents), {args.runs} runs each")
    for name, runs in times.items():
        for label, values in (("to the first result", [r[0] for r in runs]), ("whole process", [r[1] for r in runs])):
            print(f"  {name}, CPU seconds {label}: min {min(values):.2f}, median {statistics.median(values):.2f}, "
                  f"all {', '.join(f'{v:.2f}' for v in values)}")


if __name__ == "__main__":
    main()
