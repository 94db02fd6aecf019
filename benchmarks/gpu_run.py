"""The first GPU run, prepared: every family's float32 parity suite on the device, then each family's bench
there, within one time budget (default 570 s, under 10 minutes), writing one report.

    python benchmarks/gpu_run.py --out gpu-report            # on a machine with CUDA
    python benchmarks/gpu_run.py --out /tmp/r --device cpu --dry-run   # the plan only, anywhere

Steps, in order (a step that would start after the budget is spent is reported as not run):
  environment   torch, CUDA and the GPU (a fresh process), nvidia-smi, the CPU model and load average
  parity/<f>    the family's float32 parity suite with LASTRANK_TEST_DEVICE=<device> (tests/conftest.py: every
                model the suite loads through the registry runs there; the official references stay on the
                CPU), as JUnit XML; the report counts passed / failed and names each failure
  bench/<f>     jina-v3: `lastrank bench --device <device>` (both paths on the device, bf16, wall-time ratio);
                causal-lm / cross-encoder / jina-m0: benchmarks/bench_<family>.py --device <device> (what
                `lastrank bench --family <f> --device <device>` runs; lastrank on the device, their reference
                paths on the CPU, fewer documents so that the CPU reference fits the budget). bi-encoder has
                no bench script.
Each step has its own time limit (the smaller of its cap and what is left); the report (report.md and
report.json under --out) is rewritten after every step, so a run cut short still leaves one.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from lastrank.engine.dtype_choice import cpu_info

ROOT = Path(__file__).resolve().parents[1]

# family -> its float32 parity suite (the test files that load lastrank through Reranker / load_backend)
PARITY = {
    "jina-v3": ["tests/families/test_jina_v3_rerank_parity.py"],
    "bi-encoder": ["tests/families/test_bi_encoder.py"],
    "cross-encoder": ["tests/families/test_cross_encoder.py"],
    "causal-lm": ["tests/families/test_causal_lm.py"],
    "jina-m0": ["tests/families/test_jina_m0.py"],
}


def bench_argv(family: str, device: str, out: Path) -> list[str] | None:
    """The family's bench on `device`, sized to fit the budget; None: the family has no bench script."""
    py = sys.executable
    json_file = str(out / f"bench-{family}.json")
    if family == "jina-v3":
        return [py, "-m", "lastrank", "bench", "--device", device, "--repeat", "2", "--json", json_file]
    threads = str(os.cpu_count() or 1)  # the CPU reference paths: every core
    if family == "causal-lm":
        return [py, "benchmarks/bench_causal_lm.py", "--device", device, "--k", "20", "--threads", threads,
                "--json", json_file]
    if family == "cross-encoder":
        return [py, "benchmarks/bench_cross_encoder.py", "--device", device, "--repeats", "2", "--threads", threads]
    if family == "jina-m0":
        return [py, "benchmarks/bench_m0.py", "--device", device, "--images", "4", "--threads", threads,
                "--json", json_file]
    return None


ENV_PROBE = """
import json, os, torch
info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                gpus=torch.cuda.device_count(), bf16_supported=torch.cuda.is_bf16_supported())
print(json.dumps(info))
"""


def cpu_model() -> str:
    return cpu_info()[0]


def junit_summary(path: Path) -> dict:
    """Counts and the failures (test id and the first line of its message) of a pytest --junitxml file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            for kind in ("failure", "error"):
                node = case.find(kind)
                if node is not None:
                    message = (node.get("message") or node.text or "").strip().splitlines()
                    failed.append(f"{case.get('classname')}::{case.get('name')} ({kind}): {message[0][:300] if message else ''}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed": failed}


def run_step(step: dict, env: dict, limit_s: float) -> None:
    """Runs step["argv"] with a time limit; fills in status, seconds and the output's tail."""
    start = time.monotonic()
    try:
        proc = subprocess.run(step["argv"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit_s)
        output, code = proc.stdout + proc.stderr, proc.returncode
        step["status"] = "passed" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired as e:
        out = e.stdout or b""
        err = e.stderr or b""
        output = (out.decode(errors="replace") if isinstance(out, bytes) else out) + \
                 (err.decode(errors="replace") if isinstance(err, bytes) else err)
        step["status"] = f"timed out after {limit_s:.0f} s"
    step["seconds"] = round(time.monotonic() - start, 1)
    step["output_tail"] = output[-4000:]


def write_report(out: Path, report: dict) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2))
    env = report["environment"]
    lines = [f"# lastrank GPU run ({report['device']})", "",
             f"- started {report['started']}, budget {report['budget_s']} s, used {report.get('used_s', 0)} s"
             + (" (dry run: nothing was run)" if report["dry_run"] else ""),
             f"- GPU: {env.get('gpu', 'none')} ({env.get('gpu_memory_gib', '?')} GiB, compute {env.get('capability', '?')}), "
             f"CUDA {env.get('cuda')}, torch {env.get('torch')}",
             f"- CPU: {env.get('cpu_model')}, {os.cpu_count()} cores; load average at start {env.get('loadavg')}", "",
             "| step | status | seconds | result |", "|---|---|---|---|"]
    for step in report["steps"]:
        result = ""
        if "junit" in step:
            j = step["junit"]
            result = f"{j['passed']} passed, {j['failures']} failed, {j['errors']} errors, {j['skipped']} skipped"
        lines.append(f"| {step['name']} | {step['status']} | {step.get('seconds', '')} | {result} |")
    for step in report["steps"]:
        lines += ["", f"## {step['name']}", "", f"`{' '.join(shlex.quote(a) for a in step['argv'])}`" if step.get("argv")
                  else step.get("note", "")]
        for failure in step.get("junit", {}).get("failed", []):
            lines.append(f"- FAILED {failure}")
        if step.get("output_tail"):
            lines += ["", "```", step["output_tail"][-2500:].rstrip(), "```"]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for report.md, report.json and each step's files")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (to try the script)")
    p.add_argument("--budget-s", type=float, default=570.0, help="the whole run's time limit (default 570)")
    p.add_argument("--families", default=",".join(PARITY), help=f"comma-separated (default: all: {', '.join(PARITY)})")
    p.add_argument("--no-bench", action="store_true", help="parity suites only")
    p.add_argument("--pytest-args", default="", help="extra pytest arguments for every parity suite (e.g. -k NAME)")
    p.add_argument("--dry-run", action="store_true", help="write the plan as the report; run nothing")
    args = p.parse_args(argv)

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in PARITY]
    if unknown:
        print(f"gpu_run: error: unknown families {unknown}; the families are {', '.join(PARITY)}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LASTRANK_TEST_DEVICE=args.device,
               PYTHONUNBUFFERED="1")
    started = time.monotonic()
    report = {"device": args.device, "dry_run": args.dry_run, "budget_s": args.budget_s,
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "environment": {"cpu_model": cpu_model(), "loadavg": [round(x, 2) for x in os.getloadavg()]},
              "steps": []}

    if not args.dry_run:
        probe = subprocess.run([sys.executable, "-c", ENV_PROBE], capture_output=True, text=True, env=env, timeout=120)
        if probe.returncode != 0:
            print(f"gpu_run: error: torch does not start here: {probe.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return 2
        report["environment"].update(json.loads(probe.stdout.strip().splitlines()[-1]))
        if args.device.startswith("cuda") and not report["environment"]["cuda_available"]:
            print(f"gpu_run: error: --device {args.device} but CUDA is not available here (torch "
                  f"{report['environment']['torch']}); --device cpu tries the script without a GPU", file=sys.stderr)
            return 2
        if shutil.which("nvidia-smi"):
            smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True)
            report["environment"]["nvidia_smi"] = smi.stdout[-3000:]

    steps = []
    extra = shlex.split(args.pytest_args)
    for family in families:
        xml = out / f"parity-{family}.xml"
        steps.append({"name": f"parity/{family}", "cap_s": 150, "junit_file": str(xml),
                      "argv": [sys.executable, "-m", "pytest", *PARITY[family], "-q", "-p", "no:cacheprovider",
                               f"--junitxml={xml}", *extra]})
    if not args.no_bench:
        for family in families:
            command = bench_argv(family, args.device, out)
            if command is None:
                steps.append({"name": f"bench/{family}", "status": "no bench script for this family", "argv": None,
                              "note": "no benchmarks/bench_*.py for this family"})
            else:
                steps.append({"name": f"bench/{family}", "cap_s": 150, "argv": command})
    for step in steps:
        step.setdefault("status", "pending")
    report["steps"] = steps

    for step in steps:
        if step.get("argv") is None:
            continue
        left = args.budget_s - (time.monotonic() - started)
        if args.dry_run:
            step["status"] = "planned"
        elif left < 20:
            step["status"] = "not run (time budget spent)"
        else:
            print(f"gpu_run: {step['name']} (at most {min(step['cap_s'], left):.0f} s) ...", file=sys.stderr, flush=True)
            run_step(step, env, min(step["cap_s"], left))
            if "junit_file" in step and Path(step["junit_file"]).is_file():
                step["junit"] = junit_summary(Path(step["junit_file"]))
            print(f"gpu_run: {step['name']}: {step['status']} in {step['seconds']} s", file=sys.stderr, flush=True)
        report["used_s"] = round(time.monotonic() - started, 1)
        write_report(out, report)
    report["used_s"] = round(time.monotonic() - started, 1)
    write_report(out, report)
    print(f"gpu_run: report in {out / 'report.md'}", file=sys.stderr)
    ran = [s for s in steps if s.get("argv") is not None]
    return 0 if args.dry_run or all(s.get("status") == "passed" for s in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
