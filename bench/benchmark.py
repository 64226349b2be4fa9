"""Side-by-side benchmark: loss + gradient time and peak memory, ours against the peers.

```
for each case (library x backend) and each batch size B, in increasing B:
    one fresh process runs bench/bench_worker.py with the case's Python:
        first call (trace + compile + run), then the median of --repeats calls
        (fast steps: as many as fill one second)
    this process watches it: past --time-limit -> "timeout", RSS past --memory-limit -> "OOM"
    peak RSS = the worker's own VmHWM, so every figure is one clean process
    after a failure, the case's larger sizes are "skipped", never dropped
then: results.json (raw), results.md (table), bench.png (log-log plot) in --out
```

Cases: our losses (:data:`LOSSES`: ``TripletLoss`` semi-hard and batch-hard with ``cosine``
and with ``euclidean_norm``, batch-all, tfa-style semi-hard, multi-similarity, circle, soft
nearest neighbour, lifted structure, SupCon, InfoNCE on ``B`` (query, document) pairs) on
TensorFlow (XLA), TensorFlow's graph mode without XLA, JAX (jit), PyTorch (eager) and
PyTorch under ``torch.compile`` (its compile caches off, so the first call is a cold
compile); ``keras.losses.Circle`` beside our circle loss, on each Keras backend; the floor,
one forward ``B x B x D`` product at each backend's best blocked rate (the fastest of the
three is the machine's floor every row is divided by); and the peers, each in its own
virtual environment under ``--peers-dir`` (``make bench`` creates them from
``bench/peers/``): triplet-tools 0.2.3 (it has our import name), TensorFlow Similarity
0.17.1 under ``tf_keras``, pytorch-metric-learning 2.9.0, tensorflow-addons 0.23 (TensorFlow
2.15) and sentence-transformers. A loss this checkout does not have yet reads "not available".

Memory is limited by watching RSS rather than with ``RLIMIT_AS``: TensorFlow, XLA and
PyTorch reserve far more address space than they touch, so an address-space limit fails
them at import. Peak RSS is the high-water mark of the worker's own address space
(``VmHWM``), not ``ru_maxrss``: Linux carries the parent's high-water mark at fork into a
child's ``ru_maxrss``, and this process has imported Keras.

Example::

    .venv/bin/python bench/benchmark.py --sizes 256,1024 --backends jax --no-peers --out /tmp/bench
"""

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_worker

PROG = "make bench"

DEFAULT_SIZES = (256, 1024, 4096, 16384, 65536)
BACKENDS = ("tensorflow", "jax", "torch")
#: How our loss runs: each backend, plus TensorFlow's graph mode without XLA (what
#: ``tf_keras``' ``model.fit`` and most custom loops run), a whole ``tf_keras`` ``model.fit``
#: step of a small model, and PyTorch under ``torch.compile``.
MODES = ("tensorflow", "tensorflow-graph", "tf-keras-fit", "jax", "torch", "torch-compile")
#: Mode -> (backend, suffix of its ``bench_worker`` case).
MODE_RUNS = {
    "tensorflow": ("tensorflow", ""),
    "tensorflow-graph": ("tensorflow", "-graph"),
    "tf-keras-fit": ("tensorflow", "-fit"),
    "jax": ("jax", ""),
    "torch": ("torch", ""),
    "torch-compile": ("torch", "-compiled"),
}
#: Our losses, by the names ``--losses`` takes (the demo's ``--loss`` names, and the two
#: per-anchor losses again with ``euclidean_norm``, 0.2.3's default distance).
LOSSES = (
    "semi-hard",
    "batch-hard",
    "semi-hard-l2n",
    "batch-hard-l2n",
    "batch-all",
    "tfa-semihard",
    "multi-similarity",
    "circle",
    "soft-nn",
    "lifted",
    "supcon",
    "infonce",
)
#: Row labels of our losses.
LOSS_LABELS = {
    "semi-hard": "TripletLoss semi-hard",
    "batch-hard": "TripletLoss batch-hard",
    "semi-hard-l2n": "TripletLoss semi-hard euclidean_norm",
    "batch-hard-l2n": "TripletLoss batch-hard euclidean_norm",
    "batch-all": "triplet_batch_all_loss",
    "tfa-semihard": "tfa.TripletSemiHardLoss",
    "multi-similarity": "MultiSimilarityLoss",
    "circle": "CircleLoss",
    "soft-nn": "SoftNearestNeighborLoss",
    "lifted": "tfa.LiftedStructLoss",
    "supcon": "SupConLoss",
    "infonce": "InfoNCELoss",
}
BACKEND_LABELS = {
    "tensorflow": "TF (XLA)",
    "tensorflow-graph": "TF graph (no XLA)",
    "tf-keras-fit": "tf_keras model.fit step",
    "jax": "JAX (jit)",
    "torch": "torch (eager)",
    "torch-compile": "torch (torch.compile)",
}
#: The peer every time is also divided by (the ``×0.2.3`` column)...
BASELINE = "triplet-tools-0.2.3"
#: ... and, for the ``tf_keras`` ``model.fit`` rows, its ``model.fit`` step.
BASELINE_FIT = "triplet-tools-0.2.3/fit"
#: Statuses that are results (the library ran out of time or memory), not harness faults.
FAILED = ("oom", "timeout")


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the table: what runs, in which environment, compared with which floor.

    Attributes:
        name: unique id, also the row key in ``results.json``.
        label: the row label.
        worker_case: the key of ``bench_worker.CASES`` to run.
        backend: the framework it runs on (its floor is ``floor/<backend>``).
        peer: the virtual environment under ``--peers-dir``, or ``None`` for this one.
        env: extra environment variables, as ``(name, value)`` pairs.
        cubic: enumerates every triplet (or tiles ``B x B x B``); runs under
            ``--cubic-time-limit``.
        loss: for a peer, which of our :data:`LOSSES` it is the counterpart of (one name, or
            a tuple of them): it runs only when one of them is selected (``None``: whenever
            its environment is selected).
        mode: for a peer, the one of our :data:`MODES` it is measured in, when it runs only
            with that mode (``None``: with any).
        baseline: the case the ``×0.2.3`` column divides by.
    """

    name: str
    label: str
    worker_case: str
    backend: str
    peer: str = None
    env: tuple = ()
    cubic: bool = False
    loss: str | tuple = None
    mode: str = None
    baseline: str = BASELINE

    @property
    def losses(self):
        """The :data:`LOSSES` this row compares with, as a tuple (empty: any)."""
        if self.loss is None:
            return ()
        return (self.loss,) if isinstance(self.loss, str) else self.loss


#: Our per-anchor losses: what the per-anchor peers (0.2.3, TF Similarity's TripletLoss and
#: PNLoss, pytorch-metric-learning's miners) compare with.
PER_ANCHOR = ("semi-hard", "batch-hard", "semi-hard-l2n", "batch-hard-l2n")


_LEGACY_KERAS = (("TF_USE_LEGACY_KERAS", "1"),)


def our_case(loss, mode):
    """Our loss ``loss`` (one of :data:`LOSSES`) run as ``mode`` (one of :data:`MODES`).

    Example:

    >>> our_case("batch-all", "torch-compile").worker_case
    'ours-batch-all-compiled'
    """
    backend, suffix = MODE_RUNS[mode]
    return Case(
        name=f"ours-{loss}/{mode}",
        label=f"triplet-tools {LOSS_LABELS[loss]} · {BACKEND_LABELS[mode]}",
        worker_case=f"ours-{loss}{suffix}",
        backend=backend,
        env=(("KERAS_BACKEND", backend),)
        + ((("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1"),) if mode == "torch-compile" else ())
        + (_LEGACY_KERAS if mode == "tf-keras-fit" else ()),
        baseline=BASELINE_FIT if mode == "tf-keras-fit" else BASELINE,
    )


def keras_circle_case(backend):
    """``keras.losses.Circle`` (Keras' own, in this environment) on ``backend``, run as ours."""
    return Case(
        name=f"keras-circle/{backend}",
        label=f"keras {bench_worker.keras_version()} losses.Circle · {BACKEND_LABELS[backend]}",
        worker_case="keras-circle",
        backend=backend,
        env=(("KERAS_BACKEND", backend),),
        loss="circle",
    )


def floor_case(backend):
    """The floor on ``backend``: one forward ``B x B x D`` product at its best blocked rate
    (``bench_worker.floor``), no backward."""
    return Case(
        name=f"floor/{backend}",
        label=f"floor: one blocked B×B×D product · {BACKEND_LABELS[backend]}",
        worker_case=f"floor-{backend}",
        backend=backend,
    )


_TFSIM, _PML = "tf-similarity-0.17.1", "pytorch-metric-learning-2.9.0"
_TFA, _ST = "tensorflow-addons-0.23.0", "sentence-transformers-6.3.0"

#: Peer virtual environment (a file ``bench/peers/<name>.txt`` pins it) -> its cases.
PEERS = {
    "triplet-tools-0.2.3": (
        Case(
            BASELINE,
            "triplet-tools 0.2.3 semi-hard · TF graph",
            "triplet-tools-0.2.3",
            "tensorflow",
            peer="triplet-tools-0.2.3",
            loss=PER_ANCHOR,
        ),
        Case(
            BASELINE_FIT,
            "triplet-tools 0.2.3 semi-hard · tf_keras model.fit step",
            "triplet-tools-0.2.3-fit",
            "tensorflow",
            peer="triplet-tools-0.2.3",
            env=_LEGACY_KERAS,
            loss="semi-hard",
            mode="tf-keras-fit",
            baseline=BASELINE_FIT,
        ),
    ),
    "tf-similarity-0.17.1": (
        Case(
            "tfsim-pn",
            "TF Similarity 0.17.1 PNLoss semi-hard · tf_keras graph",
            "tfsim-pn",
            "tensorflow",
            peer="tf-similarity-0.17.1",
            env=_LEGACY_KERAS,
            loss=PER_ANCHOR,
        ),
        Case(
            "tfsim-triplet",
            "TF Similarity 0.17.1 TripletLoss semi-hard · tf_keras graph",
            "tfsim-triplet",
            "tensorflow",
            peer="tf-similarity-0.17.1",
            env=_LEGACY_KERAS,
            loss=PER_ANCHOR,
        ),
        Case(
            "tfsim-triplet/fit",
            "TF Similarity 0.17.1 TripletLoss semi-hard · tf_keras model.fit step",
            "tfsim-triplet-fit",
            "tensorflow",
            peer=_TFSIM,
            env=_LEGACY_KERAS,
            loss="semi-hard",
            mode="tf-keras-fit",
            baseline=BASELINE_FIT,
        ),
        Case(
            "tfsim-multi-similarity",
            "TF Similarity 0.17.1 MultiSimilarityLoss · tf_keras graph",
            "tfsim-multi-similarity",
            "tensorflow",
            peer=_TFSIM,
            env=_LEGACY_KERAS,
            loss="multi-similarity",
        ),
        Case(
            "tfsim-circle",
            "TF Similarity 0.17.1 CircleLoss · tf_keras graph",
            "tfsim-circle",
            "tensorflow",
            peer=_TFSIM,
            env=_LEGACY_KERAS,
            loss="circle",
        ),
        Case(
            "tfsim-soft-nn",
            "TF Similarity 0.17.1 SoftNearestNeighborLoss · tf_keras graph",
            "tfsim-soft-nn",
            "tensorflow",
            peer=_TFSIM,
            env=_LEGACY_KERAS,
            loss="soft-nn",
        ),
    ),
    "pytorch-metric-learning-2.9.0": (
        Case(
            "pml-batch-hard",
            "pytorch-metric-learning 2.9.0 BatchHardMiner · torch",
            "pml-batch-hard",
            "torch",
            peer="pytorch-metric-learning-2.9.0",
            loss=PER_ANCHOR,
        ),
        Case(
            "pml-batch-semihard",
            "pytorch-metric-learning 2.9.0 BatchEasyHardMiner(hard, semihard) · torch",
            "pml-batch-semihard",
            "torch",
            peer="pytorch-metric-learning-2.9.0",
            loss=PER_ANCHOR,
        ),
        Case(
            "pml-triplet-margin-semihard",
            "pytorch-metric-learning 2.9.0 TripletMarginMiner(semihard) · torch",
            "pml-triplet-margin-semihard",
            "torch",
            peer="pytorch-metric-learning-2.9.0",
            cubic=True,
            loss=PER_ANCHOR,
        ),
        Case(
            "pml-all-triplets",
            "pytorch-metric-learning 2.9.0 TripletMarginLoss, every triplet (no miner) · torch",
            "pml-all-triplets",
            "torch",
            peer=_PML,
            cubic=True,
            loss="batch-all",
        ),
        Case(
            "pml-multi-similarity",
            "pytorch-metric-learning 2.9.0 MultiSimilarityMiner + MultiSimilarityLoss · torch",
            "pml-multi-similarity",
            "torch",
            peer=_PML,
            loss="multi-similarity",
        ),
        Case(
            "pml-circle",
            "pytorch-metric-learning 2.9.0 CircleLoss · torch",
            "pml-circle",
            "torch",
            peer=_PML,
            loss="circle",
        ),
        Case(
            "pml-supcon",
            "pytorch-metric-learning 2.9.0 SupConLoss · torch",
            "pml-supcon",
            "torch",
            peer=_PML,
            loss="supcon",
        ),
    ),
    _TFA: (
        Case(
            "tfa-semihard",
            "tensorflow-addons 0.23 TripletSemiHardLoss · TF 2.15 graph",
            "tfa-semihard",
            "tensorflow",
            peer=_TFA,
            cubic=True,
            loss="tfa-semihard",
        ),
        Case(
            "tfa-lifted",
            "tensorflow-addons 0.23 LiftedStructLoss · TF 2.15 graph",
            "tfa-lifted",
            "tensorflow",
            peer=_TFA,
            cubic=True,
            loss="lifted",
        ),
    ),
    _ST: (
        Case(
            "st-batch-all",
            "sentence-transformers 6.3.0 BatchAllTripletLoss · torch",
            "st-batch-all",
            "torch",
            peer=_ST,
            cubic=True,
            loss="batch-all",
        ),
        Case(
            "st-batch-semihard",
            "sentence-transformers 6.3.0 BatchSemiHardTripletLoss · torch",
            "st-batch-semihard",
            "torch",
            peer=_ST,
            cubic=True,
            loss="tfa-semihard",
        ),
        Case(
            "st-mnrl",
            "sentence-transformers 6.3.0 MultipleNegativesRankingLoss · torch",
            "st-mnrl",
            "torch",
            peer=_ST,
            loss="infonce",
        ),
    ),
}


def select_cases(backends=MODES, losses=LOSSES, peers=tuple(PEERS)):
    """The cases to run, in table order: ours, the floors, then the peers.

    The floor runs on every backend, whichever cases are selected: the fastest of them is
    the machine's floor that every row is divided by.
    A peer row that is the counterpart of some of our losses (``Case.loss``) runs only when
    one of them is selected, and one measured in one of our modes (``Case.mode``: the
    ``tf_keras`` ``model.fit`` step) only when that mode is; the others whenever their
    environment is. ``keras.losses.Circle``
    runs beside our circle loss on each selected Keras backend (``torch-compile`` excepted)
    unless no peer is selected.

    Example:

    >>> cases = select_cases(["jax"], ["semi-hard"], ["pytorch-metric-learning-2.9.0"])
    >>> [case.name for case in cases[:4]]
    ['ours-semi-hard/jax', 'floor/tensorflow', 'floor/jax', 'floor/torch']
    >>> [case.name for case in select_cases(["jax"], ["circle"], ["tf-similarity-0.17.1"])]
    ['ours-circle/jax', 'keras-circle/jax', 'floor/tensorflow', 'floor/jax', 'floor/torch', \
'tfsim-circle']
    """
    ours = [our_case(loss, backend) for backend in backends for loss in losses]
    if peers and "circle" in losses:
        ours += [keras_circle_case(backend) for backend in backends if backend in BACKENDS]
    peer_cases = [
        case
        for peer in peers
        for case in PEERS[peer]
        if (not case.losses or set(case.losses) & set(losses)) and case.mode in (None, *backends)
    ]
    floors = [floor_case(backend) for backend in BACKENDS]
    return ours + floors + peer_cases


# --- one measurement in its own process ------------------------------------------------------


def run_limited(command, env=None, time_limit_s=300.0, memory_limit_mb=16000.0, poll_s=0.05):
    """Runs ``command`` in a new session, killing it past the time or RSS limit.

    Args:
        command: the argument list.
        env: the environment (default: this one).
        time_limit_s: wall-clock limit in seconds.
        memory_limit_mb: resident-memory limit in MiB, checked every ``poll_s`` seconds.

    Returns:
        A dict: ``killed`` (``None``, ``"timeout"`` or ``"oom"``), ``returncode``,
        ``observed_peak_mb`` (the largest ``VmHWM`` seen while polling; a lower bound),
        ``wall_s``, ``stdout``, ``stderr``.

    Example:

    >>> sleeper = [sys.executable, "-c", "import time; time.sleep(5)"]
    >>> run_limited(sleeper, time_limit_s=0.2)["killed"]
    'timeout'
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err, start_new_session=True)
        killed, observed_peak_mb = None, 0.0
        while process.poll() is None:
            memory = bench_worker.memory_mb(process.pid)
            rss = memory.get("VmRSS")
            observed_peak_mb = max(observed_peak_mb, memory.get("VmHWM", 0.0))
            if killed is None:
                if time.monotonic() - start > time_limit_s:
                    killed = "timeout"
                elif rss is not None and rss > memory_limit_mb:
                    killed = "oom"
                if killed:
                    os.killpg(process.pid, signal.SIGKILL)
            time.sleep(poll_s)
        wall_s = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        return {
            "killed": killed,
            "returncode": process.returncode,
            "observed_peak_mb": observed_peak_mb,
            "wall_s": wall_s,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


def measure_case(case, batch, settings):
    """Runs one (case, B) measurement in its own process; returns its result record.

    Args:
        case: a :class:`Case`.
        batch: ``B``.
        settings: a dict with ``python`` (for our cases), ``peers_dir``, ``dim``,
            ``per_class``, ``seed``, ``repeats``, ``time_limit``, ``cubic_time_limit``
            and ``memory_limit_gb``.

    Returns:
        A dict with ``case``, ``batch``, ``status`` (``ok``, ``oom``, ``timeout``,
        ``error`` or ``missing``), ``peak_rss_mb`` (MiB), ``wall_s`` and, when ``ok``,
        the worker's figures (``median_s``, ``first_call_s``, ...).
    """
    record = {"case": case.name, "batch": batch}
    python = settings["python"]
    if case.peer is not None:
        python = str(Path(settings["peers_dir"]) / case.peer / "bin" / "python")
        if not Path(python).exists():
            return {
                **record,
                "status": "missing",
                "detail": f"{python} not found: run make bench-peers",
            }
    time_limit = settings["cubic_time_limit"] if case.cubic else settings["time_limit"]
    command = [
        python,
        "-I",
        bench_worker.__file__,
        *worker_arguments(case.worker_case, batch, settings, 0.8 * time_limit),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **dict(case.env)}
    return {**record, **run_worker(command, env, time_limit, settings["memory_limit_gb"])}


def worker_arguments(case, batch, settings, budget):
    """``bench_worker``'s arguments for one measurement: the case, the batch, the
    settings' ``dim`` / ``per_class`` / ``seed`` / ``repeats`` and the time ``budget`` (s).

    Example:

    >>> settings = {"dim": 8, "per_class": 4, "seed": 0, "repeats": 3}
    >>> worker_arguments("ours-circle", 64, settings, 2.0)[:4]
    ['--case', 'ours-circle', '--batch', '64']
    """
    return [
        "--case", case, "--batch", str(batch), "--dim", str(settings["dim"]),
        "--per-class", str(settings["per_class"]), "--seed", str(settings["seed"]),
        "--repeats", str(settings["repeats"]), "--budget", str(budget),
    ]  # fmt: skip


def run_worker(command, env, time_limit, memory_limit_gb):
    """Runs one worker ``command`` (it prints ``BENCH_RESULT {json}``) under the limits.

    Args:
        command: the argument list of a process that runs ``bench_worker`` (this
            benchmark's :func:`measure_case`, or ``bench/ab_engine.py``'s worker).
        env: its environment.
        time_limit: seconds, compile included.
        memory_limit_gb: resident memory in GB.

    Returns:
        The worker's result dict (see ``bench_worker.measure``) with ``peak_rss_mb`` and
        ``wall_s``, or ``status`` ``timeout`` / ``oom`` / ``error`` and ``detail``.
    """
    run = run_limited(command, env, time_limit, memory_limit_gb * 1e9 / 2**20)
    # A worker that finished reports its exact VmHWM; a killed one, what was last seen.
    record = {"peak_rss_mb": run["observed_peak_mb"], "wall_s": run["wall_s"]}
    prefix = bench_worker.RESULT_PREFIX
    lines = [line for line in run["stdout"].splitlines() if line.startswith(prefix)]
    if run["killed"] == "timeout":
        return {**record, "status": "timeout", "detail": f"killed after {time_limit:g} s"}
    if run["killed"] == "oom":
        return {**record, "status": "oom", "detail": f"killed at RSS > {memory_limit_gb:g} GB"}
    if lines:
        return {**record, **json.loads(lines[-1][len(prefix) :])}
    if run["returncode"] == -signal.SIGKILL:
        return {**record, "status": "oom", "detail": "killed by the system (out of memory)"}
    tail = (run["stderr"].strip().splitlines() or ["no output"])[-1]
    return {**record, "status": "error", "detail": f"exit {run['returncode']}: {tail}"[-600:]}


def run_cases(cases, sizes, measure, log=print):
    """Measures every case at every size, skipping a case's sizes after its first failure.

    Args:
        cases: :class:`Case` objects.
        sizes: batch sizes, measured in increasing order.
        measure: ``measure(case, batch) -> record`` (see :func:`measure_case`).
        log: called with one progress line per record; ``None`` for silence.

    Returns:
        The list of records, including ``skipped`` ones.

    Example:

    >>> fake = lambda case, b: {"case": case.name, "batch": b,
    ...                         "status": "ok" if b < 100 else "oom"}
    >>> [r["status"] for r in run_cases([floor_case("jax")], [10, 100, 1000], fake, log=None)]
    ['ok', 'oom', 'skipped']
    """
    records = []
    for case in cases:
        failure = None
        for batch in sorted(sizes):
            if failure is not None:
                record = {
                    "case": case.name,
                    "batch": batch,
                    "status": "skipped",
                    "detail": f"{failure['status']} at B={failure['batch']}",
                }
            else:
                record = measure(case, batch)
                if record["status"] != "ok":
                    failure = record
            records.append(record)
            if log is not None:
                log(f"{case.label}  B={batch}: {describe(record)}")
    return records


# --- the report ------------------------------------------------------------------------------


def _gb(mb):
    return mb * 2**20 / 1e9


def _seconds(value):
    return f"{value:.3g} s" if value < 1000 else f"{value:.0f} s"


def describe(record):
    """One table cell for a record: time and peak RSS, or why there is none.

    Example:

    >>> describe({"status": "ok", "median_s": 0.01234, "peak_rss_mb": 900.0})
    '0.0123 s · 0.94 GB'
    >>> describe({"status": "skipped", "detail": "oom at B=16384"})
    'skipped (oom at B=16384)'
    >>> describe({"status": "missing", "detail": "triplet_tools.losses.CircleLoss is not in ..."})
    'not available'
    """
    status = record["status"]
    if status == "ok":
        return f"{_seconds(record['median_s'])} · {_gb(record['peak_rss_mb']):.2f} GB"
    if status in FAILED:
        label = "OOM" if status == "oom" else "timeout"
        if "peak_rss_mb" not in record:
            return label
        return f"{label} (peak {_gb(record['peak_rss_mb']):.2f} GB)"
    if status == "skipped":
        return f"skipped ({record['detail']})"
    if status == "missing":
        # A peer environment not created, or a loss this checkout of triplet-tools lacks.
        return (
            "not installed" if "make bench-peers" in record.get("detail", "") else "not available"
        )
    return "error"


def _ratio(record, reference):
    if not (record and reference and record["status"] == reference["status"] == "ok"):
        return "—"
    ratio = record["median_s"] / reference["median_s"]
    return f"{ratio:.0f}×" if ratio >= 10 else f"{ratio:.2g}×"


def machine_floor(records, batch):
    """The fastest floor record measured at ``batch`` (``None`` if none finished).

    Example:

    >>> records = [_example("floor/jax", 64, 0.002), _example("floor/torch", 64, 0.001),
    ...            _example("ours-semi-hard/jax", 64, 0.0005)]
    >>> machine_floor(records, 64)["case"]
    'floor/torch'
    """
    floors = [
        r
        for r in records
        if r["case"].startswith("floor/") and r["batch"] == batch and r["status"] == "ok"
    ]
    return min(floors, key=lambda r: r["median_s"], default=None)


def _example(case, batch, seconds):
    return {"case": case, "batch": batch, "status": "ok", "median_s": seconds}


def markdown_report(cases, records, sizes, meta):
    """The Markdown report: header, the table (time · peak RSS, ratios per B), first calls.

    Args:
        cases: the :class:`Case` rows, in order.
        records: the records of :func:`run_cases`.
        sizes: the batch sizes (columns).
        meta: the dict of :func:`machine_info` plus ``load_end``, ``settings`` and
            ``versions`` (environment -> distribution -> version).

    Returns:
        The report as a string.
    """
    by_key = {(r["case"], r["batch"]): r for r in records}
    sizes = sorted(sizes)
    settings = meta["settings"]
    lines = [
        "# triplet-tools benchmark: loss + gradient",
        "",
        f"{meta['date']} · {meta['cpu']}, {meta['cores']} cores, {meta['ram_gb']:.1f} GB RAM · "
        f"load average {meta['load_start']:.2f} at start, {meta['load_end']:.2f} at end · "
        f"Python {meta['python']}",
        "",
        "Versions: "
        + "; ".join(
            f"{environment}: " + ", ".join(f"{k} {v}" for k, v in sorted(found.items()))
            for environment, found in meta["versions"].items()
        ),
        "",
        f"D={settings['dim']}, {settings['per_class']} rows per class, float32 unit-norm "
        f"embeddings (seed {settings['seed']}). Settings, ours and the peers alike: "
        + "; ".join(f"{loss}: {bench_worker.SETTINGS[loss]}" for loss in _losses_of(cases))
        + f". Each cell: median of {settings['repeats']} calls (fast steps: "
        "as many as fill 1 s) after a first (compiling) call, and the peak RSS of that "
        "measurement's own process (imports included). Limits per measurement: "
        f"{settings['time_limit']:g} s "
        f"({settings['cubic_time_limit']:g} s for the peers that enumerate every triplet), "
        f"{settings['memory_limit_gb']:g} GB. "
        "`×floor`: time ÷ the machine's floor, the fastest of the three blocked products "
        "at that B (an exact miner needs this one product at least, so no row can be "
        "below 1×); `×0.2.3`: time ÷ triplet-tools 0.2.3 (the `tf_keras` `model.fit` rows: "
        "÷ its `model.fit` step); both from this run. A `model.fit` step is one call of "
        "the train function `model.fit` runs per batch, for `Dense(D)` + "
        "`UnitNormalization` trained with the loss (next batch, forward, loss, gradient, "
        "SGD update), compiled as `tf_keras` does by default (no XLA).",
        "",
    ]
    chosen = [
        f"B={r['batch']} {r['case'].split('/')[1]}: {r['notes']['rows_per_block']}"
        for r in records
        if r["case"].startswith("floor/") and r["status"] == "ok" and r.get("notes")
    ]
    if chosen:
        lines += ["Anchors per block of the floors (the fastest tried): " + "; ".join(chosen), ""]
    header = ["library · backend"]
    for batch in sizes:
        header += [f"B={batch}", "×floor · ×0.2.3"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case in cases:
        row = [case.label]
        for batch in sizes:
            record = by_key.get((case.name, batch))
            row.append(describe(record) if record else "—")
            ratios = [
                _ratio(record, machine_floor(records, batch)),
                _ratio(record, by_key.get((case.baseline, batch))),
            ]
            row.append(" · ".join(ratios))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "First call (trace + compile + one run):", ""]
    lines += [
        "| library · backend | " + " | ".join(f"B={b}" for b in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for case in cases:
        cells = []
        for batch in sizes:
            record = by_key.get((case.name, batch))
            ok = record is not None and record["status"] == "ok"
            cells.append(_seconds(record["first_call_s"]) if ok else "—")
        lines.append(f"| {case.label} | " + " | ".join(cells) + " |")
    details = [r for r in records if r["status"] not in ("ok", "skipped")]
    if details:
        lines += ["", "Not measured:", ""]
        labels = {case.name: case.label for case in cases}
        lines += [
            f"- {labels.get(r['case'], r['case'])}, B={r['batch']}: {r['status']} — "
            f"{_one_line(r.get('detail', ''))}"
            for r in details
        ]
    return "\n".join(lines) + "\n"


def _losses_of(cases):
    """Our losses that ``cases`` measure (or compare with), in :data:`LOSSES` order."""
    found = {loss for case in cases for loss in case.losses}
    # Our rows are named "ours-<loss>/<mode>" (see our_case).
    found |= {
        case.name.split("/")[0].removeprefix("ours-")
        for case in cases
        if case.name.startswith("ours-")
    }
    return [loss for loss in LOSSES if loss in found] or list(LOSSES[:2])


def _one_line(text, limit=300):
    """A framework's multi-line error as one Markdown list item: whitespace collapsed, cut."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _label_2_and_5(value, _):
    # Minor ticks of a log axis: label 2x and 5x of each decade only.
    mantissa = value / 10 ** math.floor(math.log10(value)) if value > 0 else 0
    return f"{value:g}" if round(mantissa) in (2, 5) else ""


def plot(cases, records, path):
    """Writes a log-log plot of time and peak RSS against B, one line per case.

    Returns:
        ``True`` if written, ``False`` if matplotlib is not installed.
    """
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        return False
    figure, (time_axes, memory_axes) = pyplot.subplots(1, 2, figsize=(15, 6.5))
    colors = pyplot.get_cmap("tab20").colors
    for index, case in enumerate(cases):
        rows = sorted((r for r in records if r["case"] == case.name), key=lambda r: r["batch"])
        ok = [r for r in rows if r["status"] == "ok"]
        failed = next((r for r in rows if r["status"] in FAILED), None)
        label = case.label + (
            f" ({describe(failed).split(' (')[0]} at B={failed['batch']})" if failed else ""
        )
        style = "--" if case.name.startswith("floor/") else "-" if case.peer is None else ":"
        if not ok:
            continue
        batches = [r["batch"] for r in ok]
        color = colors[2 * (index % 10) + index // 10 % 2]
        time_axes.plot(
            batches, [r["median_s"] for r in ok], style, marker="o", color=color, label=label
        )
        memory_axes.plot(
            batches, [_gb(r["peak_rss_mb"]) for r in ok], style, marker="o", color=color
        )
    sizes = sorted({r["batch"] for r in records})
    for axes, ylabel in ((time_axes, "loss + gradient, median s"), (memory_axes, "peak RSS, GB")):
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xticks(sizes, [str(b) for b in sizes])
        axes.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axes.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axes.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(_label_2_and_5))
        axes.set_xlabel("batch size B")
        axes.set_ylabel(ylabel)
        axes.grid(True, which="both", alpha=0.3)
    time_axes.set_title("time (solid: ours, dashed: floor, dotted: peers)")
    memory_axes.set_title("peak resident memory of the measuring process")
    figure.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    legend_rows = (len(time_axes.get_lines()) + 1) // 2
    figure.tight_layout(rect=(0, 0.03 + 0.028 * legend_rows, 1, 1))
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return True


def machine_info():
    """CPU model, cores, RAM (GB), date (UTC), Python version and load average.

    Example:

    >>> sorted(machine_info())
    ['cores', 'cpu', 'date', 'load_start', 'python', 'ram_gb']
    """
    cpu, ram_kb = platform.processor() or platform.machine(), 0
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                cpu,
            )
        with open("/proc/meminfo") as info:
            ram_kb = next(int(line.split()[1]) for line in info if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "ram_gb": ram_kb * 1024 / 1e9,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "load_start": os.getloadavg()[0],
    }


# --- command line ----------------------------------------------------------------------------


def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes >= 2; received {text!r}")
    return values


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; received {text!r}")
    return value


def _choice_list(allowed):
    def parse(text):
        values = [v.strip() for v in text.split(",") if v.strip()]
        chosen = []
        for value in values:
            matches = [a for a in allowed if a == value] or [
                a for a in allowed if a.startswith(value)
            ]
            if len(matches) != 1:
                raise argparse.ArgumentTypeError(
                    f"{value!r} is not one of {', '.join(allowed)} (a unique prefix is enough)"
                )
            chosen.append(matches[0])
        return chosen

    return parse


def add_arguments(parser):
    """Adds the benchmark options to an ``argparse`` parser (see ``triplet-tools bench -h``)."""
    parser.add_argument(
        "--sizes",
        type=_int_list,
        default=list(DEFAULT_SIZES),
        help=f"comma-separated batch sizes (default: {','.join(map(str, DEFAULT_SIZES))})",
    )
    parser.add_argument(
        "--backends",
        type=_choice_list(MODES),
        default=list(MODES),
        help="how our loss runs: the Keras backends (tensorflow: under XLA), "
        "tensorflow-graph for TensorFlow's graph mode without XLA, tf-keras-fit for a "
        "tf_keras model.fit step of a small model (with triplet-tools 0.2.3 and TF "
        "Similarity in the same step), torch-compile for "
        f"PyTorch under torch.compile (default: all: {','.join(MODES)})",
    )
    parser.add_argument(
        "--losses",
        type=_choice_list(LOSSES),
        default=list(LOSSES),
        help="our losses to measure, and the peer rows that compare with them "
        f"(default: all: {','.join(LOSSES)})",
    )
    peers = parser.add_mutually_exclusive_group()
    peers.add_argument(
        "--peers",
        type=_choice_list(tuple(PEERS)),
        default=list(PEERS),
        help=f"peer environments to compare with (default: {','.join(PEERS)})",
    )
    peers.add_argument(
        "--no-peers",
        dest="peers",
        action="store_const",
        const=[],
        help="measure only ours and the floor",
    )
    parser.add_argument(
        "--peers-dir",
        default=".bench",
        help="where the peer virtual environments are (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        default="bench-output",
        help="output folder for results.md, results.json and bench.png (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=_positive_int,
        default=5,
        help="timed calls after the first (default: %(default)s)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=600.0,
        help="seconds per measurement, compile included (default: %(default)s)",
    )
    parser.add_argument(
        "--cubic-time-limit",
        type=float,
        default=60.0,
        help="seconds per measurement for the peers that enumerate every "
        "triplet (TripletMarginMiner, all-triplets TripletMarginLoss, tfa and "
        "sentence-transformers) (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-limit",
        type=float,
        default=None,
        help="peak RSS per measurement in GB (default: 16, at most 75%% of RAM)",
    )
    parser.add_argument(
        "--dim", type=_positive_int, default=128, help="embedding width D (default: %(default)s)"
    )
    parser.add_argument(
        "--per-class", type=_positive_int, default=8, help="rows per class (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="input seed (default: %(default)s)")
    return parser


def run(args):
    """Runs the benchmark described by parsed ``args``; writes the report; returns an exit code.

    The exit code is 1 when a measurement crashed (status ``error``), else 0: running out of
    time or memory is a result, not a failure.
    """
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = machine_info()
    memory_limit = args.memory_limit or min(16.0, round(0.75 * meta["ram_gb"], 1))
    settings = {
        "python": sys.executable,
        "peers_dir": args.peers_dir,
        "dim": args.dim,
        "per_class": args.per_class,
        "seed": args.seed,
        "repeats": args.repeats,
        "time_limit": args.time_limit,
        "cubic_time_limit": args.cubic_time_limit,
        "memory_limit_gb": memory_limit,
        "sizes": sorted(args.sizes),
    }
    cases = select_cases(args.backends, args.losses, args.peers)
    print(
        f"{meta['cpu']}, {meta['cores']} cores, {meta['ram_gb']:.1f} GB RAM; "
        f"{len(cases)} cases x {len(args.sizes)} sizes, one process each",
        flush=True,
    )
    records = run_cases(
        cases,
        args.sizes,
        lambda case, batch: measure_case(case, batch, settings),
        log=lambda line: print(line, flush=True),
    )
    meta["load_end"] = os.getloadavg()[0]
    meta["settings"] = settings
    meta["versions"] = {}  # environment -> distribution -> version, as the workers saw them
    peers = {case.name: case.peer for case in cases}
    for record in records:
        environment = peers[record["case"]] or "this environment"
        meta["versions"].setdefault(environment, {}).update(record.get("versions", {}))
    (out / "results.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "cases": [dataclasses.asdict(case) for case in cases],
                "results": records,
            },
            indent=1,
        )
    )
    report = markdown_report(cases, records, args.sizes, meta)
    (out / "results.md").write_text(report)
    plotted = plot(cases, records, out / "bench.png")
    print("\n" + report)
    print(
        f"wrote {out / 'results.md'}, {out / 'results.json'}"
        + (f", {out / 'bench.png'}" if plotted else " (no plot: matplotlib is not installed)")
    )
    errors = [r for r in records if r["status"] == "error"]
    missing = {r["case"]: r["detail"] for r in records if r["status"] == "missing"}
    for name, detail in sorted(missing.items()):
        print(f"missing: {name}: {_one_line(detail)}", file=sys.stderr)
    for record in errors:
        print(f"error: {record['case']} B={record['batch']}: {record['detail']}", file=sys.stderr)
    return 1 if errors else 0


class UsageError(Exception):
    """A bad command-line argument; printed as one line."""


class _Parser(argparse.ArgumentParser):
    # One line instead of argparse's usage block.
    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def build_parser():
    return add_arguments(_Parser(prog=PROG, description=__doc__.splitlines()[0]))


def main(argv=None):
    """``python bench/benchmark.py [options]`` (what ``make bench`` runs); returns the exit
    status: 0, 1 when a measurement crashed, 2 after a one-line usage error on stderr."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as error:
        print(" ".join(str(error).split()), file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
