"""One SGD step of a tiny embedding model, on one device or data-parallel; saves the weights.

Run as a script by tests/test_distributed.py, one process per configuration:

    python distributed_worker.py MODE LOSS GLOBAL_MINING OUT.npz

MODE: single | tf-mirrored | tf-multiworker | torch-ddp | jax-data-parallel.
Every mode starts from the same weights and sees the same global batch of 16 rows; the
data-parallel modes split it in two contiguous halves (one per replica, rank or device).
"""

import json
import os
import sys

import numpy as np

MODE, LOSS, GLOBAL_MINING, OUT = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
LEARNING_RATE = 0.5


def data():
    rng = np.random.default_rng(0)
    # Classes are spread so that each half of the batch alone mines other triplets.
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 0, 1, 1, 2, 2, 3, 3])
    x = rng.normal(size=(16, 6)).astype("float32")
    kernel = rng.normal(size=(6, 4)).astype("float32") * 0.5
    bias = rng.normal(size=(4,)).astype("float32") * 0.1
    return x, labels, [kernel, bias]


def make_loss():
    from triplet_tools.losses import PNLoss, TripletLoss

    cls = {"triplet": TripletLoss, "pn": PNLoss}[LOSS]
    return cls(distance="euclidean", margin=1.0, global_mining=GLOBAL_MINING)


def keras_model(weights):
    import keras

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    model.set_weights(weights)
    model.compile(keras.optimizers.SGD(LEARNING_RATE), make_loss())
    return model


def save(weights, extra=None):
    np.savez(OUT, *weights, info=json.dumps(extra or {}))


def run_keras_fit(strategy=None):
    x, labels, weights = data()
    if strategy is None:
        model = keras_model(weights)
    else:
        with strategy.scope():
            model = keras_model(weights)
    history = model.fit(x, labels, batch_size=16, epochs=1, shuffle=False, verbose=0)
    save(model.get_weights(), {"loss": history.history["loss"][0]})


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
    x, labels, weights = data()
    with strategy.scope():
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
        model.set_weights(weights)
        optimizer = keras.optimizers.SGD(LEARNING_RATE)
        optimizer.build(model.trainable_variables)
    loss_fn = make_loss()
    batches = tf.data.Dataset.from_tensor_slices((x, labels)).batch(16)

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
    if json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0:
        save(model.get_weights(), {"loss": float(loss)})


def run_torch_ddp():
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x, labels, (kernel, bias) = data()
    rows = slice(rank * 16 // world, (rank + 1) * 16 // world)
    layer = torch.nn.Linear(6, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(kernel.T))
        layer.bias.copy_(torch.tensor(bias))
    model = torch.nn.parallel.DistributedDataParallel(layer)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    loss = make_loss()(torch.tensor(labels[rows]), model(torch.tensor(x[rows])))
    loss.backward()
    optimizer.step()
    # Every rank returns R x its share: their mean is the loss of the whole batch.
    total = loss.detach().clone()
    dist.all_reduce(total)
    if rank == 0:
        save(
            [layer.weight.detach().numpy().T, layer.bias.detach().numpy()],
            {"loss": float(total) / world},
        )
    dist.barrier()
    dist.destroy_process_group()
    # Skip interpreter teardown: now and then a gloo/OpenMP thread still running there
    # ended the process with "terminate called without an active exception".
    sys.stdout.flush()
    os._exit(0)


def main():
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
