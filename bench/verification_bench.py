"""Verification and re-identification evaluation: time and peak memory, ours against the recipe.

```
verification, N = 10,000 and 20,000 (D = 64, 500 identities), every unordered pair (2·10⁸ at 20k):
    ours:   triplet_tools.evaluation.verification_metrics
    recipe: scipy.spatial.distance.pdist + scikit-learn roc_auc_score and roc_curve
            (what facenet's and insightface's evaluation scripts do)
verification, N = 100,000 (5·10⁹ pairs): ours alone (the recipe would need ~40 GB for pdist)
retrieval, N = 20,000 and 100,000: retrieval_metrics with camera groups against without
```

A case whose RSS passes ``--memory-limit`` (default 12,000 MiB) is stopped and reported so:
at N = 20,000 the recipe needs more than this 23 GB machine can spare.

Every measurement runs in a fresh process (this file with ``--worker``), which reports its
wall time and its own peak RSS (``VmHWM`` from ``/proc/self/status``), so no figure carries
another's memory. Both sides get the same float32 embeddings; the recipe computes in float64
as scipy does. The worker prints one JSON line.

Example::

    KERAS_BACKEND=jax .venv/bin/python bench/verification_bench.py --out /tmp/verification
    KERAS_BACKEND=jax .venv/bin/python bench/verification_bench.py --quick   # N / 10

>>> sorted(make_data(10, 2, 3, seed=0))
['cameras', 'embeddings', 'labels']
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

CASES = {
    # name: (function, N)
    "verification-ours-10k": ("ours", 10_000),
    "verification-recipe-10k": ("recipe", 10_000),
    "verification-ours-20k": ("ours", 20_000),
    "verification-recipe-20k": ("recipe", 20_000),
    "verification-ours-100k": ("ours", 100_000),
    "retrieval-20k": ("retrieval", 20_000),
    "retrieval-groups-20k": ("retrieval-groups", 20_000),
    "retrieval-100k": ("retrieval", 100_000),
    "retrieval-groups-100k": ("retrieval-groups", 100_000),
}


def make_data(n, dim=64, classes=500, seed=0, cameras=6):
    """Gaussian identities (spread 1.5 around unit-variance centres) seen by 6 cameras."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, dim))
    embeddings = (centres[labels] + 1.5 * rng.normal(size=(n, dim))).astype("float32")
    return {"embeddings": embeddings, "labels": labels, "cameras": rng.integers(0, cameras, n)}


def peak_mb():
    """This process's peak resident memory (``VmHWM``) in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def recipe(embeddings, labels, far=(1e-4, 1e-3, 1e-2)):
    """The usual script: every pair's distance, then scikit-learn's ROC."""
    from scipy.spatial.distance import pdist
    from sklearn.metrics import roc_auc_score, roc_curve

    distances = pdist(embeddings, "cosine")
    genuine = np.concatenate([labels[i + 1 :] == labels[i] for i in range(len(labels) - 1)])
    metrics = {"roc_auc": roc_auc_score(genuine, -distances)}
    fpr, tpr, _ = roc_curve(genuine, -distances, drop_intermediate=False)
    crossing = int(np.argmax(fpr >= 1 - tpr))
    gap0, gap1 = 1 - tpr[crossing - 1] - fpr[crossing - 1], 1 - tpr[crossing] - fpr[crossing]
    share = gap0 / (gap0 - gap1)
    metrics["eer"] = fpr[crossing - 1] + share * (fpr[crossing] - fpr[crossing - 1])
    for target in far:
        metrics[f"tar@far={target:g}"] = float(tpr[fpr <= target].max())
    return metrics


def worker(case, n):
    kind = CASES[case][0]
    data = make_data(n)
    start = time.perf_counter()
    if kind == "recipe":
        metrics = recipe(data["embeddings"], data["labels"])
    else:
        from triplet_tools.evaluation import retrieval_metrics, verification_metrics

        if kind == "ours":
            metrics = verification_metrics(data["embeddings"], data["labels"])
        else:
            groups = data["cameras"] if kind == "retrieval-groups" else None
            metrics = retrieval_metrics(data["embeddings"], data["labels"], query_groups=groups)
    seconds = time.perf_counter() - start
    metrics = {name: float(value) for name, value in metrics.items()}
    print(json.dumps({"case": case, "n": n, "seconds": seconds, "peak_mb": peak_mb(), **metrics}))


def rss_mb(pid):
    """Resident memory of process ``pid`` in MiB (0 once it has ended)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run(case, n, timeout, memory_limit):
    """One fresh worker; stopped (and reported so) past ``timeout`` s or ``memory_limit`` MiB,
    so that a recipe that needs more memory than the machine has never drives it into swap
    or the OOM killer."""
    command = [sys.executable, __file__, "--worker", case, "--n", str(n)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start, largest = time.perf_counter(), 0.0
    while process.poll() is None:
        largest = max(largest, rss_mb(process.pid))
        elapsed = time.perf_counter() - start
        if largest > memory_limit or elapsed > timeout:
            process.kill()
            process.wait()
            why = f"memory > {memory_limit:.0f} MiB" if largest > memory_limit else "timeout"
            return {"case": case, "n": n, "error": f"stopped ({why}) after {elapsed:.0f} s"}
        time.sleep(0.1)
    out, err = process.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if process.returncode or not lines:
        return {"case": case, "n": n, "error": (err.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def table(results):
    rows = ["| case | N | seconds | peak RSS (MiB) | roc_auc / map |", "|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['case']} | {r['n']:,} | {r['error']} | | |")
            continue
        value = r.get("roc_auc", r.get("map", float("nan")))
        rows.append(
            f"| {r['case']} | {r['n']:,} | {r['seconds']:.1f} | {r['peak_mb']:.0f} | {value:.6f} |"
        )
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--quick", action="store_true", help="every N divided by 10")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    parser.add_argument(
        "--memory-limit", type=float, default=12_000, help="MiB of RSS at which a case is stopped"
    )
    parser.add_argument("--out", help="folder for results.json and results.md")
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.n)
    results = []
    for case in args.cases.split(","):
        n = CASES[case][1] // (10 if args.quick else 1)
        results.append(run(case, n, args.timeout, args.memory_limit))
        print(json.dumps(results[-1]), flush=True)
    ratio = {r["case"]: r for r in results if "error" not in r}
    lines = [table(results), ""]
    for ours, theirs in [
        ("verification-ours-10k", "verification-recipe-10k"),
        ("verification-ours-20k", "verification-recipe-20k"),
        ("retrieval-groups-20k", "retrieval-20k"),
        ("retrieval-groups-100k", "retrieval-100k"),
    ]:
        if ours in ratio and theirs in ratio:
            lines.append(
                f"{ours} / {theirs}: time {ratio[ours]['seconds'] / ratio[theirs]['seconds']:.2f}x,"
                f" peak memory {ratio[ours]['peak_mb'] / ratio[theirs]['peak_mb']:.2f}x"
            )
    report = "\n".join(lines)
    print(report)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as file:
            json.dump(results, file, indent=1)
        with open(os.path.join(args.out, "results.md"), "w") as file:
            file.write(report + "\n")


if __name__ == "__main__":
    main()
