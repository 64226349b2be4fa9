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


def _worker(mode, loss, global_mining, out, env=None, launcher=()):
    args = [*launcher, str(WORKER), mode, loss, "1" if global_mining else "0", str(out)]
    if not launcher:
        args = [sys.executable, *args]
    _run(args, env or _env())
    saved = np.load(out)
    weights = [saved[k] for k in saved.files if k != "info"]
    return weights, json.loads(str(saved["info"]))


def _assert_same_step(distributed, single, loss):
    (got, got_info), (want, want_info) = distributed, single
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"{loss}: weights differ")
    np.testing.assert_allclose(got_info["loss"], want_info["loss"], rtol=1e-5)


def _assert_differs(per_replica, single):
    assert max(np.abs(a - b).max() for a, b in zip(per_replica[0], single[0])) > 1e-4


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    return {
        loss: _worker("single", loss, True, folder / f"{loss}.npz") for loss in ("triplet", "pn")
    }


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute: TensorFlow backend")
@pytest.mark.parametrize("loss", ["triplet", "pn"])
def test_tf_mirrored_strategy_matches_single_device(loss, single, tmp_path):
    got = _worker("tf-mirrored", loss, True, tmp_path / "global.npz")
    _assert_same_step(got, single[loss], loss)
    if loss == "triplet":
        _assert_differs(_worker("tf-mirrored", loss, False, tmp_path / "local.npz"), single[loss])


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute: TensorFlow backend")
def test_tf_multi_worker_mirrored_strategy_on_localhost(single, tmp_path):
    """Two worker processes, one CPU replica each, configured through TF_CONFIG."""
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        args = [
            sys.executable,
            str(WORKER),
            "tf-multiworker",
            "triplet",
            "1",
            str(tmp_path / f"worker{index}.npz"),
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
    saved = np.load(tmp_path / "worker0.npz")
    got = ([saved[k] for k in saved.files if k != "info"], json.loads(str(saved["info"])))
    _assert_same_step(got, single["triplet"], "triplet")


@pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed: torch backend")
@pytest.mark.parametrize("loss", ["triplet", "pn"])
def test_torch_ddp_with_torchrun_matches_single_device(loss, single, tmp_path):
    """Two gloo processes started the way torchrun starts them (standalone rendezvous)."""
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    env = _env(OMP_NUM_THREADS="1")
    got = _worker("torch-ddp", loss, True, tmp_path / "global.npz", env, launcher)
    _assert_same_step(got, single[loss], loss)
    if loss == "triplet":
        local = _worker("torch-ddp", loss, False, tmp_path / "local.npz", env, launcher)
        _assert_differs(local, single[loss])


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution: JAX backend")
@pytest.mark.parametrize("loss", ["triplet", "pn"])
def test_jax_data_parallel_matches_single_device(loss, single, tmp_path):
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    got = _worker("jax-data-parallel", loss, True, tmp_path / "global.npz", env)
    _assert_same_step(got, single[loss], loss)
    if loss == "triplet":
        _assert_differs(
            _worker("jax-data-parallel", loss, False, tmp_path / "local.npz", env), single[loss]
        )


def test_world_of_one_is_plain_mining():
    """Outside any distribution the switch changes nothing."""
    from triplet_tools import TripletLoss

    x = np.random.default_rng(3).normal(size=(8, 3)).astype("float32")
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    from backend import to_numpy

    on = to_numpy(TripletLoss(global_mining=True)(labels, x))
    off = to_numpy(TripletLoss(global_mining=False)(labels, x))
    assert on == off
