"""A/B of the built-in losses: an old source tree against a new one, alternating (issue 26).

```
for each cell (backend, loss, B):
    for each round: side A and side B, each in a fresh process (order: A B, then B A, ...)
        PYTHONPATH = that side's src/; the worker checks triplet_tools came from there
        bench_worker's step: first call (trace + compile + run), then the median of
        --repeats calls (fast steps: as many as fill one second); peak RSS = its VmHWM
    old s, new s: median over rounds; new/old: median of the rounds' ratios; flag > 1.05
    (and "min": the same ratio of each run's fastest call, less sensitive to other load)
--memory:   B = 65,536 batch-all, multi-similarity and the row-function contrastive loss of
            tests/test_pair_toolkit.py on the new side, peak RSS <= 3 GB
--autodiff: new side, closed-form slopes (A) against the autodiff path (B) at B = 4096,
            flag > 1.5 (see AUTODIFF_SWITCH: the one place that forces the autodiff path)
```

The step, the losses' arguments, the peak-memory figure and the limits are
``bench/benchmark.py``'s and ``bench/bench_worker.py``'s (``make bench``): a cell here is
the ``ours-<loss>`` worker case of that benchmark on TF (XLA), JAX (jit) or eager torch.

Example (a smoke test, a few minutes on 2 cores)::

    .venv/bin/python bench/ab_engine.py --old ../base/src --new src --backends jax --quick
"""

import argparse
import json
import os
import random
import statistics
import sys
from pathlib import Path

import bench_worker
import benchmark

PROG = "bench/ab_engine.py"
BACKENDS = ("tensorflow", "jax", "torch")
#: Issue 26's losses (``bench_worker`` names): every built-in pair loss and the per-anchor
#: semi-hard ``TripletLoss`` (its default mining).
LOSSES = (
    "batch-all",
    "multi-similarity",
    "circle",
    "soft-nn",
    "lifted",
    "tfa-semihard",
    "semi-hard",
    "supcon",
    "infonce",
)
SIZES = (512, 4096)
ROUNDS = 3
#: new / old above this is flagged.
SPEED_BOUND = 1.05
MEMORY_LOSSES = ("batch-all", "multi-similarity", "contrastive-row")
MEMORY_SIZE = 65536
MEMORY_BOUND_GB = 3.0
AUTODIFF_SIZE = 4096
#: autodiff / closed form above this is flagged.
AUTODIFF_BOUND = 1.5
#: ``--quick``: sizes, rounds, repeats, the memory check's B and the autodiff B.
QUICK = {"sizes": (64, 256), "rounds": 2, "repeats": 3, "memory_size": 4096, "autodiff_size": 256}


# ============================================================================================
# THE AUTODIFF SWITCH: the one place that says how a loss is forced onto the autodiff path.
# A loss that has closed-form slopes is built with AUTODIFF_SWITCH = (name, value) passed to
# its constructor (or, failing that, set as an attribute of the built loss); a loss that has
# neither reads "not available" and its autodiff rows are skipped. Change the name / value
# here (or the body of autodiff_loss) when the engine's switch is settled.
AUTODIFF_SWITCH = ("closed_form", False)


def autodiff_loss(make, kwargs):
    """``make(**kwargs)`` on the autodiff path (see :data:`AUTODIFF_SWITCH`).

    Raises:
        bench_worker.NotAvailable: the loss has no such switch in this checkout.
    """
    name, value = AUTODIFF_SWITCH
    try:
        return make(**kwargs, **{name: value})
    except (TypeError, ValueError) as error:  # the constructor does not take it (tfa's
        if name not in str(error):  # drop-ins refuse a keyword tfa never had: ValueError)
            raise
    loss = make(**kwargs)
    if not hasattr(loss, name):
        raise bench_worker.NotAvailable(
            f"{type(loss).__name__} has no autodiff switch {name}={value!r} "
            "in this checkout (see AUTODIFF_SWITCH in bench/ab_engine.py)"
        )
    setattr(loss, name, value)
    return loss


# ============================================================================================


def _autodiff_case(loss):
    """The ``bench_worker`` case ``ours-<loss>`` with the loss built by :func:`autodiff_loss`."""
    if loss in bench_worker.TRIPLETS:
        strategy, distance = bench_worker.TRIPLETS[loss]
        module, name = "triplet_tools.losses", "TripletLoss"
        kwargs = {
            "distance": distance,
            "margin": bench_worker.MARGIN,
            "negative_mining_strategy": strategy,
        }
    else:
        module, name, kwargs = bench_worker.OURS[loss]
    build = bench_worker.keras_loss(lambda: autodiff_loss(bench_worker._ours(module, name), kwargs))
    return bench_worker.paired(build) if loss in bench_worker.PAIRED else build


def worker_case(loss, autodiff):
    """The worker case a cell runs: ``make bench``'s ``ours-<loss>``, or its autodiff twin.

    Example:

    >>> worker_case("circle", False), worker_case("circle", True)
    ('ours-circle', 'ours-circle-autodiff')
    """
    return f"ours-{loss}" + ("-autodiff" if autodiff else "")


def worker_main(argv):
    """In the measuring process: one measurement from the source tree ``--source``; prints
    ``BENCH_RESULT {json}`` (``bench_worker``'s result plus ``source``, the file imported)."""
    parser = argparse.ArgumentParser(prog=f"{PROG} --worker")
    parser.add_argument("--case", required=True)
    parser.add_argument("--source", required=True)
    for option, kind in (("--batch", int), ("--dim", int), ("--per-class", int)):
        parser.add_argument(option, type=kind, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=float("inf"))
    args = parser.parse_args(argv)
    bench_worker.CASES.update({worker_case(loss, True): _autodiff_case(loss) for loss in LOSSES})
    try:
        import triplet_tools

        source = str(Path(triplet_tools.__file__).resolve())
    except Exception as error:  # noqa: BLE001  (reported, never dropped)
        source, result = None, {"status": "error", "detail": f"import triplet_tools: {error}"}
    else:
        if not Path(source).is_relative_to(Path(args.source).resolve()):
            result = {"status": "error", "detail": f"imported {source}, not from {args.source}"}
        else:
            result = bench_worker.run_measurement(
                args.case,
                args.batch,
                args.dim,
                args.per_class,
                args.seed,
                args.repeats,
                args.budget,
            )
    print(bench_worker.RESULT_PREFIX + json.dumps({**result, "source": source}), flush=True)
    return 0


def measure_side(side, backend, loss, batch, settings):
    """One measurement of ``loss`` on ``backend`` at ``batch`` in a fresh process running
    ``side`` (a dict with ``src`` and ``autodiff``); returns the worker's record."""
    time_limit = settings["time_limit"]
    command = [
        settings["python"],
        "-s",
        str(Path(__file__).resolve()),
        "--worker",
        "--source",
        side["src"],
        *benchmark.worker_arguments(
            worker_case(loss, side["autodiff"]),
            batch,
            settings,
            settings.get("budget", 0.8 * time_limit),
        ),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": side["src"],
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    record = benchmark.run_worker(command, env, time_limit, settings["memory_limit_gb"])
    # Thousands of sub-millisecond calls would swamp ab.json: their count is enough.
    record["calls"] = len(record.pop("times_s", []))
    # "loss" names the cell's loss in the records: the worker's loss value is "value".
    if "loss" in record:
        record["value"] = record.pop("loss")
    return record


def round_order(rounds, order, seed=0):
    """Which side goes first in each round: ``"alternate"`` (A B, B A, A B, ...) or
    ``"random"`` (each round shuffled, from ``seed``).

    Example:

    >>> round_order(3, "alternate")
    [('a', 'b'), ('b', 'a'), ('a', 'b')]
    """
    if order == "alternate":
        return [("a", "b") if r % 2 == 0 else ("b", "a") for r in range(rounds)]
    generator = random.Random(seed)
    return [tuple(generator.sample(["a", "b"], 2)) for _ in range(rounds)]


def run_ab(cells, orders, measure, log=print):
    """Every cell, round after round, each round both sides in that round's order.

    A side that fails (any status but ``ok``) is not run again in that cell; a cell stops
    when a side is ``missing`` (nothing to compare).

    Args:
        cells: ``(backend, loss, batch)`` tuples.
        orders: :func:`round_order`'s list.
        measure: ``measure(side, backend, loss, batch) -> record``, side ``"a"`` or ``"b"``.
        log: one line per record, or ``None``.

    Returns:
        A list of records: the worker's, with ``backend``, ``loss``, ``batch``, ``side``,
        ``round``, and ``skipped`` ones.

    Example:

    >>> fake = lambda side, *cell: {"status": "ok", "median_s": 2.0 if side == "b" else 1.0}
    >>> [(r["round"], r["side"]) for r in run_ab([("jax", "circle", 64)],
    ...                                          round_order(2, "alternate"), fake, None)]
    [(0, 'a'), (0, 'b'), (1, 'b'), (1, 'a')]
    """
    records = []
    for backend, loss, batch in cells:
        failed = {}
        for number, order in enumerate(orders):
            if any(r["status"] == "missing" for r in failed.values()):
                break
            for side in order:
                cell = {"backend": backend, "loss": loss, "batch": batch}
                if side in failed:
                    record = {"status": "skipped", "detail": f"{failed[side]['status']} before"}
                else:
                    record = measure(side, backend, loss, batch)
                    if record["status"] != "ok":
                        failed[side] = record
                records.append({**record, **cell, "side": side, "round": number})
                if log is not None:
                    label = cell_label(backend, loss, batch)
                    log(f"{label} round {number} {side}: {_brief(record)}")
    return records


def cell_label(backend, loss, batch):
    """Example: ``cell_label("jax", "circle", 512)`` -> ``'JAX (jit) · CircleLoss · B=512'``."""
    label = benchmark.LOSS_LABELS.get(loss, loss)
    return f"{benchmark.BACKEND_LABELS[backend]} · {label} · B={batch}"


def _brief(record):
    if record["status"] == "ok":
        wall = record.get("wall_s", 0.0)
        return f"{record['median_s']:.4g} s, {_gb(record):.2f} GB, {wall:.0f} s wall"
    return f"{record['status']}: {benchmark._one_line(record.get('detail', ''), 200)}"


def _gb(record):
    return benchmark._gb(record.get("peak_rss_mb") or 0.0)


def summarize(records, backend, loss, batch):
    """One cell's figures: medians over rounds, the median of the rounds' B / A ratios.

    Example:

    >>> rs = [{"backend": "jax", "loss": "circle", "batch": 64, "side": s, "round": r,
    ...        "status": "ok", "median_s": t, "peak_rss_mb": 500.0}
    ...       for r, (s, t) in enumerate([("a", 1.0), ("b", 1.1), ("a", 1.0), ("b", 0.9)])]
    >>> for r in rs: r["round"] //= 2
    >>> cell = summarize(rs, "jax", "circle", 64)
    >>> cell["a_s"], cell["b_s"], cell["ratios"], cell["ratio"]
    (1.0, 1.0, [1.1, 0.9], 1.0)
    """
    mine = [r for r in records if (r["backend"], r["loss"], r["batch"]) == (backend, loss, batch)]
    sides = {side: [r for r in mine if r["side"] == side] for side in ("a", "b")}
    ok = {side: [r for r in rows if r["status"] == "ok"] for side, rows in sides.items()}
    rounds = sorted({r["round"] for r in mine})
    ratios, min_ratios = [], []
    for number in rounds:
        pair = {r["side"]: r for r in mine if r["round"] == number and r["status"] == "ok"}
        if len(pair) == 2:
            ratios.append(round(pair["b"]["median_s"] / pair["a"]["median_s"], 4))
            if pair["a"].get("min_s") and pair["b"].get("min_s"):
                min_ratios.append(pair["b"]["min_s"] / pair["a"]["min_s"])

    def median_s(side):
        return statistics.median(r["median_s"] for r in ok[side]) if ok[side] else None

    def failure(side):
        bad = [r for r in sides[side] if r["status"] not in ("ok", "skipped")]
        return bad[0] if bad else None

    return {
        "backend": backend,
        "loss": loss,
        "batch": batch,
        "a_s": median_s("a"),
        "b_s": median_s("b"),
        "ratios": ratios,
        "ratio": statistics.median(ratios) if ratios else None,
        "min_ratio": statistics.median(min_ratios) if min_ratios else None,
        "a_gb": max((_gb(r) for r in ok["a"]), default=None),
        "b_gb": max((_gb(r) for r in ok["b"]), default=None),
        "a_failure": failure("a"),
        "b_failure": failure("b"),
    }


def _cell_time(value, failure):
    if value is not None:
        return f"{value:.4g}"
    if failure is None:
        return "—"
    return "not available" if failure["status"] == "missing" else failure["status"]


def ab_table(summaries, names, bound):
    """The Markdown table: cell, A s, B s, B/A (median over rounds), each round's ratio,
    the ratio of the fastest calls (median over rounds), peak RSS of each side, and a flag
    where B/A > ``bound``.

    Example:

    >>> row = {"backend": "jax", "loss": "circle", "batch": 64, "a_s": 0.01, "b_s": 0.0112,
    ...        "ratios": [1.12, 1.1], "ratio": 1.11, "min_ratio": 1.0, "a_gb": 0.5, "b_gb": 0.5,
    ...        "a_failure": None, "b_failure": None}
    >>> print(ab_table([row], ("old", "new"), 1.05).splitlines()[-1].replace(" | ", "|"))
    | JAX (jit) · CircleLoss · B=64|0.01|0.0112|1.110|1.12, 1.10|1.000|0.50|0.50|**> 1.05** |
    """
    a, b = names
    lines = [
        f"| cell | {a} s | {b} s | {b}/{a} | rounds | {b}/{a} min | {a} GB | {b} GB | flag |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        ratio = f"{s['ratio']:.3f}" if s["ratio"] is not None else "—"
        flag = f"**> {bound:g}**" if s["ratio"] is not None and s["ratio"] > bound else ""
        if s["ratio"] is None and (s["a_failure"] or s["b_failure"]):
            failed = s["b_failure"] or s["a_failure"]
            flag = "not available" if failed["status"] == "missing" else f"**{failed['status']}**"
        gbs = [f"{g:.2f}" if g is not None else "—" for g in (s["a_gb"], s["b_gb"])]
        cells = [
            cell_label(s["backend"], s["loss"], s["batch"]),
            _cell_time(s["a_s"], s["a_failure"]),
            _cell_time(s["b_s"], s["b_failure"]),
            ratio,
            ", ".join(f"{r:.2f}" for r in s["ratios"]) or "—",
            f"{s['min_ratio']:.3f}" if s.get("min_ratio") is not None else "—",
            *gbs,
            flag,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(records, bound_gb):
    """The memory check's table: peak RSS of each run against ``bound_gb``."""
    lines = [
        f"| cell | path | peak GB | ≤ {bound_gb:g} GB | step s | status |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        ok = r["status"] == "ok"
        # A killed run's peak is what was last seen; a missing or crashed one's means nothing.
        measured = r["status"] in ("ok", *benchmark.FAILED) and r.get("peak_rss_mb")
        peak = f"{_gb(r):.2f}" if measured else "—"
        within = ("yes" if _gb(r) <= bound_gb else "**NO**") if ok else "—"
        if r["status"] == "oom":  # killed past --memory-limit, or the framework gave up
            within = "**NO**"
        step = f"{r['median_s']:.3g}" if ok else "—"
        status = "ok" if ok else f"{r['status']}: {benchmark._one_line(r.get('detail', ''), 120)}"
        label = cell_label(r["backend"], r["loss"], r["batch"])
        lines.append(f"| {label} | {r['path']} | {peak} | {within} | {step} | {status} |")
    return "\n".join(lines)


def _source(text):
    """``--old`` / ``--new``: a ``src`` folder holding ``triplet_tools``, or a checkout with one."""
    path = Path(text).resolve()
    for candidate in (path, path / "src"):
        if (candidate / "triplet_tools" / "__init__.py").is_file():
            return str(candidate)
    raise argparse.ArgumentTypeError(
        f"expected a src folder holding triplet_tools/ (or a checkout with src/); received {text!r}"
    )


def build_parser():
    parser = benchmark._Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=_source, required=True, help="side A: its src/ (or checkout)")
    parser.add_argument("--new", type=_source, required=True, help="side B: its src/ (or checkout)")
    parser.add_argument(
        "--backends",
        type=benchmark._choice_list(BACKENDS),
        default=list(BACKENDS),
        help="tensorflow (XLA), jax (jit), torch (eager) (default: all)",
    )
    parser.add_argument(
        "--losses",
        type=benchmark._choice_list(LOSSES),
        default=list(LOSSES),
        help=f"default: {','.join(LOSSES)}",
    )
    parser.add_argument("--sizes", type=benchmark._int_list, default=None, help="default: 512,4096")
    parser.add_argument("--rounds", type=benchmark._positive_int, default=None, help="default: 3")
    parser.add_argument("--order", choices=("alternate", "random"), default="alternate")
    parser.add_argument("--order-seed", type=int, default=0)
    parser.add_argument("--repeats", type=benchmark._positive_int, default=None, help="default: 5")
    parser.add_argument("--no-ab", dest="ab", action="store_false", help="skip the A/B table")
    parser.add_argument("--memory", action="store_true", help=f"B={MEMORY_SIZE} peak RSS, new side")
    parser.add_argument("--memory-size", type=benchmark._positive_int, default=None)
    parser.add_argument(
        "--autodiff", action="store_true", help=f"closed form vs autodiff, B={AUTODIFF_SIZE}"
    )
    parser.add_argument("--autodiff-size", type=benchmark._positive_int, default=None)
    parser.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    parser.add_argument("--time-limit", type=float, default=600.0, help="s per measurement")
    parser.add_argument("--memory-time-limit", type=float, default=1800.0)
    parser.add_argument("--memory-limit", type=float, default=None, help="GB (default 16)")
    parser.add_argument("--dim", type=benchmark._positive_int, default=128)
    parser.add_argument("--per-class", type=benchmark._positive_int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--out", default="bench-output/ab", help="ab.md and ab.json go here")
    return parser


def run(args):
    """Runs what ``args`` asks for, prints and writes the report; exit 1 if a run crashed."""
    quick = QUICK if args.quick else {}
    sizes = args.sizes or list(quick.get("sizes", SIZES))
    rounds = args.rounds or quick.get("rounds", ROUNDS)
    memory_size = args.memory_size or quick.get("memory_size", MEMORY_SIZE)
    autodiff_size = args.autodiff_size or quick.get("autodiff_size", AUTODIFF_SIZE)
    meta = benchmark.machine_info()
    settings = {
        "python": args.python,
        "dim": args.dim,
        "per_class": args.per_class,
        "seed": args.seed,
        "repeats": args.repeats or quick.get("repeats", 5),
        "time_limit": args.time_limit,
        "memory_limit_gb": args.memory_limit or min(16.0, round(0.75 * meta["ram_gb"], 1)),
    }
    old = {"src": args.old, "autodiff": False}
    new = {"src": args.new, "autodiff": False}
    orders = round_order(rounds, args.order, args.order_seed)
    log = lambda line: print(line, flush=True)  # noqa: E731
    print(
        f"{meta['cpu']}, {meta['cores']} cores, {meta['date']}, load {meta['load_start']:.1f}; "
        f"old {args.old}, new {args.new}",
        flush=True,
    )
    sections, results = [], {"meta": meta, "settings": settings, "args": vars(args)}

    def pairwise(sides, names, cells, bound, title, key):
        chosen = dict(zip("ab", sides))
        records = run_ab(
            cells,
            orders,
            lambda side, *cell: measure_side(chosen[side], *cell, settings),
            log,
        )
        summaries = [summarize(records, *cell) for cell in cells]
        results[key] = {"records": records, "summaries": summaries}
        sections.extend([f"### {title}", "", ab_table(summaries, names, bound), ""])
        return records

    everything = []
    if args.ab:
        cells = [(b, loss, n) for b in args.backends for loss in args.losses for n in sizes]
        everything += pairwise(
            (old, new),
            ("old", "new"),
            cells,
            SPEED_BOUND,
            f"A/B, loss + gradient, {rounds} round(s) ({args.order}), D={args.dim}",
            "ab",
        )
    if args.autodiff:
        cells = [(b, loss, autodiff_size) for b in args.backends for loss in args.losses]
        everything += pairwise(
            (new, {**new, "autodiff": True}),
            ("closed", "autodiff"),
            cells,
            AUTODIFF_BOUND,
            "new side: closed-form slopes against the autodiff path "
            f"(`{AUTODIFF_SWITCH[0]}={AUTODIFF_SWITCH[1]!r}`), flag > {AUTODIFF_BOUND:g}",
            "autodiff",
        )
    if args.memory:
        paths = [("closed form", new)] + ([("autodiff", {**new, "autodiff": True})] * args.autodiff)
        memory_settings = {**settings, "time_limit": args.memory_time_limit, "budget": 0.0}
        records = []
        for backend in args.backends:
            for loss in MEMORY_LOSSES:
                for path, side in paths:
                    record = measure_side(side, backend, loss, memory_size, memory_settings)
                    record.update(backend=backend, loss=loss, batch=memory_size, path=path)
                    log(f"memory {cell_label(backend, loss, memory_size)} {path}: {_brief(record)}")
                    records.append(record)
        everything += records
        results["memory"] = records
        sections += [
            f"### Peak RSS at B={memory_size}, new side (first call + one step)",
            "",
            memory_table(records, MEMORY_BOUND_GB),
            "",
        ]
    meta["load_end"] = os.getloadavg()[0]
    meta["wall_s"] = sum(r.get("wall_s", 0.0) for r in everything)
    header = (
        f"{meta['date']}, {meta['cpu']}, {meta['cores']} cores, {meta['ram_gb']:.0f} GB RAM, "
        f"load {meta['load_start']:.1f} -> {meta['load_end']:.1f}; old `{args.old}`, "
        f"new `{args.new}`; seconds: median per call of loss + gradient (median over rounds), "
        f"GB: peak RSS of the measuring process; {meta['wall_s'] / 60:.1f} min of runs."
    )
    report = "\n".join([header, "", *sections])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ab.md").write_text(report)
    (out / "ab.json").write_text(json.dumps(results, indent=1, default=str))
    print("\n" + report + f"\nwrote {out / 'ab.md'}, {out / 'ab.json'}")
    errors = [r for r in everything if r["status"] == "error"]
    for r in errors:
        print(
            f"error: {cell_label(r['backend'], r['loss'], r['batch'])}: {r['detail']}",
            file=sys.stderr,
        )
    return 1 if errors else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except benchmark.UsageError as error:
        print(" ".join(str(error).split()), file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
