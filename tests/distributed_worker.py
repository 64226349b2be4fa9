"""One SGD step of a tiny embedding model, on one device or data-parallel; saves the weights.

Run as a script by tests/test_distributed.py, one process per configuration:

    python distributed_worker.py MODE LOSSES GLOBAL_MINING OUT.npz

MODE: single | tf-mirrored | tf-multiworker | torch-ddp | jax-data-parallel.
LOSSES: comma-separated names of :data:`LOSSES`; one process runs one step per loss, each
from the same initial weights, and saves ``LOSS:i`` (the weights) and ``LOSS:info`` (a
JSON dict: the loss value, or the error) for each, so a failing loss fails only its test.
Every mode starts from the same weights and sees the same global batch of 16 rows; the
data-parallel modes split it in two contiguous halves (one per replica, rank or device).
"""

import json
import os
import sys
import traceback

import numpy as np

MODE, GLOBAL_MINING, OUT = sys.argv[1], sys.argv[3] == "1", sys.argv[4]
NAMES = sys.argv[2].split(",")
LEARNING_RATE = 0.5


def data():
    rng = np.random.default_rng(0)
    # Classes are spread so that each half of the batch alone mines other triplets.
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 0, 1, 1, 2, 2, 3, 3])
    x = rng.normal(size=(16, 6)).astype("float32")
    kernel = rng.normal(size=(6, 4)).astype("float32") * 0.5
    bias = rng.normal(size=(4,)).astype("float32") * 0.1
    return x, labels, [kernel, bias]


#: Losses whose ``y_pred`` is ``(B, 2 + h, D)`` (queries, positives, hard negatives): their
#: inputs are ``(B, 3, 6)``, the same Dense layer applied to each column.
PAIRED = ("infonce",)


def inputs(name):
    """The global batch for ``name``: ``(x, labels, weights)``."""
    x, labels, weights = data()
    if name in PAIRED:
        rng = np.random.default_rng(1)
        x = np.stack([x, x + 0.3 * rng.normal(size=x.shape), rng.normal(size=x.shape)], axis=1)
        x = x.astype("float32")
    return x, labels, weights


def make_loss(name):
    """The loss called ``name``, with this run's ``global_mining``."""
    from triplet_tools import triplet_batch_all_loss
    from triplet_tools.losses import (
        CircleLoss,
        InfoNCELoss,
        MultiSimilarityLoss,
        PNLoss,
        SoftNearestNeighborLoss,
        SupConLoss,
        TripletLoss,
    )
    from triplet_tools.tfa import LiftedStructLoss, TripletSemiHardLoss

    mining = {"global_mining": GLOBAL_MINING}
    if name == "batch-all":
        # triplet_batch_all_loss keeps the 0.2.3 functions' fixed signature (margin, metric);
        # global_mining=False takes its documented TripletLoss equivalent.
        if GLOBAL_MINING:
            return triplet_batch_all_loss(margin=1.0, metric="euclidean")
        return TripletLoss(
            distance="euclidean",
            positive_mining_strategy="all",
            negative_mining_strategy="all",
            margin=1.0,
            average="active",
            **mining,
        )
    losses = {
        "triplet": lambda: TripletLoss(distance="euclidean", margin=1.0, **mining),
        "pn": lambda: PNLoss(distance="euclidean", margin=1.0, **mining),
        "tfa-semihard": lambda: TripletSemiHardLoss(margin=1.0, **mining),
        "multi-similarity": lambda: MultiSimilarityLoss(**mining),
        "circle": lambda: CircleLoss(gamma=10.0, **mining),
        "soft-nn": lambda: SoftNearestNeighborLoss(**mining),
        "lifted": lambda: LiftedStructLoss(margin=1.0, **mining),
        "supcon": lambda: SupConLoss(temperature=0.5, **mining),
        # Both directions and the exclusion: every replica's documents and queries.
        "infonce": lambda: InfoNCELoss(
            temperature=0.5, symmetric=True, exclude_same_label=True, **mining
        ),
    }
    return losses[name]()


#: Every loss name :func:`make_loss` knows.
LOSSES = (
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
)


def keras_model(weights, name):
    import keras

    shape = (3, 6) if name in PAIRED else (6,)
    model = keras.Sequential([keras.Input(shape), keras.layers.Dense(4)])
    model.set_weights(weights)
    model.compile(keras.optimizers.SGD(LEARNING_RATE), make_loss(name))
    return model


def run_each(step, save_here=True):
    """Runs ``step(name) -> (weights, info)`` for every loss of the command line and saves
    them all (when ``save_here``); an error is recorded under its loss, not raised."""
    arrays, infos = {}, {}
    for name in NAMES:
        try:
            weights, info = step(name)
        except Exception:
            infos[name] = {"error": traceback.format_exc()}
            continue
        infos[name] = info
        arrays.update({f"{name}:{i}": w for i, w in enumerate(weights)})
    if save_here:
        np.savez(OUT, info=json.dumps(infos), **arrays)


def run_keras_fit(strategy=None):
    def step(name):
        x, labels, weights = inputs(name)
        if strategy is None:
            model = keras_model(weights, name)
        else:
            with strategy.scope():
                model = keras_model(weights, name)
        history = model.fit(x, labels, batch_size=16, epochs=1, shuffle=False, verbose=0)
        return model.get_weights(), {"loss": history.history["loss"][0]}

    run_each(step)


def tf_logical_cpus(count):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * count
    )
    return [f"/cpu:{i}" for i in range(count)]


def run_tf_custom_loop():
    """MultiWorkerMirroredStrategy with a custom loop: Keras 3.15's model.fit stops under
    this strategy before any loss runs (its symbolic build reduces the whole input batch
    structure, which the collective ops reject)."""
    import keras
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()

    def one_loss(name):
        x, labels, weights = inputs(name)
        batches = tf.data.Dataset.from_tensor_slices((x, labels)).batch(16)
        with strategy.scope():
            model = keras.Sequential([keras.Input(x.shape[1:]), keras.layers.Dense(4)])
            model.set_weights(weights)
            optimizer = keras.optimizers.SGD(LEARNING_RATE)
            optimizer.build(model.trainable_variables)
        loss_fn = make_loss(name)

        @tf.function
        def step(batch):
            def replica_step(inputs, targets):
                with tf.GradientTape() as tape:
                    loss = loss_fn(targets, model(inputs, training=True))
                gradients = tape.gradient(loss, model.trainable_variables)
                optimizer.apply_gradients(zip(gradients, model.trainable_variables))
                return loss

            shares = strategy.run(replica_step, args=batch)
            return strategy.reduce("SUM", shares, axis=None)

        for batch in strategy.experimental_distribute_dataset(batches):
            loss = step(batch)
        return model.get_weights(), {"loss": float(loss)}

    run_each(one_loss, save_here=json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0)


def run_torch_ddp():
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = slice(rank * 16 // world, (rank + 1) * 16 // world)

    def step(name):
        x, labels, (kernel, bias) = inputs(name)
        layer = torch.nn.Linear(6, 4)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(kernel.T))
            layer.bias.copy_(torch.tensor(bias))
        model = torch.nn.parallel.DistributedDataParallel(layer)
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
        loss = make_loss(name)(torch.tensor(labels[rows]), model(torch.tensor(x[rows])))
        loss.backward()
        optimizer.step()
        # Every rank returns R x its share: their mean is the loss of the whole batch.
        total = loss.detach().clone()
        dist.all_reduce(total)
        weights = [layer.weight.detach().numpy().T, layer.bias.detach().numpy()]
        return weights, {"loss": float(total) / world}

    run_each(step, save_here=rank == 0)
    dist.barrier()
    dist.destroy_process_group()
    # Skip interpreter teardown: now and then a gloo/OpenMP thread still running there
    # ended the process with "terminate called without an active exception".
    sys.stdout.flush()
    os._exit(0)


def main():
    unknown = set(NAMES) - set(LOSSES)
    if unknown:
        raise SystemExit(f"unknown loss {sorted(unknown)}")
    if MODE == "single":
        run_keras_fit()
    elif MODE == "tf-mirrored":
        import tensorflow as tf

        run_keras_fit(tf.distribute.MirroredStrategy(tf_logical_cpus(2)))
    elif MODE == "tf-multiworker":
        run_tf_custom_loop()
    elif MODE == "torch-ddp":
        run_torch_ddp()
    elif MODE == "jax-data-parallel":
        import jax
        import keras

        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        run_keras_fit()
    else:
        raise SystemExit(f"unknown mode {MODE}")


if __name__ == "__main__":
    main()
