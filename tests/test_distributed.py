"""Global mining across replicas: one data-parallel SGD step equals one single-device step.

Each configuration runs tests/distributed_worker.py in fresh processes (devices must be set
up before the framework starts). The single-device run is the reference; mining inside each
replica's slice (global_mining=False) must *differ* from it on this batch, which shows the
batch is one where global mining matters.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend import BACKEND

# Subprocesses: `pytest -m 'not slow'` skips them locally (CI runs them).
pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = WORKER.parent.parent


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TF_CPP_MIN_LOG_LEVEL="3")
    env.update(extra)
    return env


def _run(args, env, timeout=240):
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]


#: Every loss of the worker: the per-anchor ones, then SPEC's last part (batch all, tfa's
#: semi-hard, the pair-based losses).
LOSSES = [
    "triplet",
    "pn",
    "batch-all",
    "tfa-semihard",
    "multi-similarity",
    "circle",
    "soft-nn",
    "lifted",
    "supcon",
    "infonce",
]
#: The losses whose in-slice mining (global_mining=False) is also run, to show that global
#: mining matters on this batch; pn is left out as before (its step is checked, not this).
CHECK_DIFFERS = [loss for loss in LOSSES if loss != "pn"]


def _worker(mode, losses, global_mining, out, env=None, launcher=()):
    """One worker process for every loss of ``losses``; ``{loss: (weights, info)}``."""
    args = [*launcher, str(WORKER), mode, ",".join(losses), "1" if global_mining else "0"]
    args.append(str(out))
    if not launcher:
        args = [sys.executable, *args]
    _run(args, env or _env())
    return _load(out, losses)


def _load(out, losses):
    saved = np.load(out)
    infos = json.loads(str(saved["info"]))
    runs = {}
    for loss in losses:
        keys = sorted(
            (k for k in saved.files if k.startswith(loss + ":")), key=lambda k: int(k.split(":")[1])
        )
        runs[loss] = ([saved[k] for k in keys], infos[loss])
    return runs


def _check(run, loss):
    weights, info = run
    assert "error" not in info, f"{loss} failed in the worker:\n{info['error']}"
    assert weights, f"{loss}: no weights saved"
    return run


def _assert_same_step(distributed, single, loss):
    (got, got_info), (want, want_info) = _check(distributed, loss), _check(single, loss)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"{loss}: weights differ")
    np.testing.assert_allclose(got_info["loss"], want_info["loss"], rtol=1e-5)


def _assert_differs(per_replica, single, loss):
    (got, _), (want, _) = _check(per_replica, loss), _check(single, loss)
    assert max(np.abs(a - b).max() for a, b in zip(got, want)) > 1e-4, (
        f"{loss}: in-slice mining gives the single-device step; the batch does not test "
        "global mining for this loss"
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(mode, global_mining, ...)[loss]``: one worker process (or launch) per mode and
    switch, for every loss at once, run the first time a test asks for it."""
    folder = tmp_path_factory.mktemp("runs")
    done = {}

    def get(mode, global_mining, env=None, launcher=()):
        key = (mode, global_mining)
        if key not in done:
            losses = LOSSES if global_mining else CHECK_DIFFERS
            out = folder / f"{mode}-{int(global_mining)}.npz"
            done[key] = _worker(mode, losses, global_mining, out, env, launcher)
        return done[key]

    return get


@pytest.fixture(scope="module")
def single(runs):
    return runs("single", True)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute: TensorFlow backend")
@pytest.mark.parametrize("loss", LOSSES)
def test_tf_mirrored_strategy_matches_single_device(loss, single, runs):
    _assert_same_step(runs("tf-mirrored", True)[loss], single[loss], loss)
    if loss in CHECK_DIFFERS:
        _assert_differs(runs("tf-mirrored", False)[loss], single[loss], loss)


@pytest.fixture(scope="module")
def multi_worker(tmp_path_factory):
    """Two worker processes, one CPU replica each, configured through TF_CONFIG; every loss."""
    folder = tmp_path_factory.mktemp("multiworker")
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        args = [
            sys.executable,
            str(WORKER),
            "tf-multiworker",
            ",".join(LOSSES),
            "1",
            str(folder / f"worker{index}.npz"),
        ]
        processes.append(
            subprocess.Popen(
                args,
                env=_env(TF_CONFIG=json.dumps(config)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-4000:]
    return _load(folder / "worker0.npz", LOSSES)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute: TensorFlow backend")
@pytest.mark.parametrize("loss", LOSSES)
def test_tf_multi_worker_mirrored_strategy_on_localhost(loss, single, multi_worker):
    """MultiWorkerMirroredStrategy, custom training loop, two localhost workers."""
    _assert_same_step(multi_worker[loss], single[loss], loss)


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed: torch backend")
@pytest.mark.parametrize("loss", LOSSES)
def test_torch_ddp_with_torchrun_matches_single_device(loss, single, runs):
    """Two gloo processes started the way torchrun starts them (standalone rendezvous)."""
    env = _env(OMP_NUM_THREADS="1")
    _assert_same_step(runs("torch-ddp", True, env, TORCHRUN)[loss], single[loss], loss)
    if loss in CHECK_DIFFERS:
        local = runs("torch-ddp", False, env, TORCHRUN)[loss]
        _assert_differs(local, single[loss], loss)


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution: JAX backend")
@pytest.mark.parametrize("loss", LOSSES)
def test_jax_data_parallel_matches_single_device(loss, single, runs):
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    _assert_same_step(runs("jax-data-parallel", True, env)[loss], single[loss], loss)
    if loss in CHECK_DIFFERS:
        _assert_differs(runs("jax-data-parallel", False, env)[loss], single[loss], loss)


def test_world_of_one_is_plain_mining():
    """Outside any distribution the switch changes nothing."""
    from triplet_tools import TripletLoss

    x = np.random.default_rng(3).normal(size=(8, 3)).astype("float32")
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    from backend import to_numpy

    on = to_numpy(TripletLoss(global_mining=True)(labels, x))
    off = to_numpy(TripletLoss(global_mining=False)(labels, x))
    assert on == off
