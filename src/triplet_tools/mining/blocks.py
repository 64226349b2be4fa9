"""Row blocks: how many anchors are mined at once, and the loop over blocks in ``keras.ops``.

Peak memory of mining is that of one block of scores, ``rows x M``, not ``B x M``. Under
XLA the loop is ``keras.ops.map`` over a padded ``(blocks, rows, ...)`` stack, so it
compiles to one loop with static shapes. In a plain TensorFlow graph (``tf.function``
without ``jit_compile``: ``tf_keras``' ``model.fit``, most custom loops) the mining kernel
still runs compiled, through :func:`xla_in_tensorflow_graph`.
"""

import keras

from triplet_tools._ops import ops

# Scores mined at once. XLA fuses the passes over a block, which then run in cache at about
# a million scores (4 MB in float32). Eager torch pays a Python round trip per op and block,
# so it takes blocks four times larger.
BLOCK_ELEMENTS = 2**22 if keras.backend.backend() == "torch" else 2**20


_TENSORFLOW = keras.backend.backend() == "tensorflow"

_loops = 0


def count_loop():
    """Notes that a loop (``map``, ``scan``, ``while_loop``) is about to run.

    Eager JAX compiles a loop again at every call: ``triplet_tools.losses.eager`` compiles
    the scoring step of a loss whose call ran one.

    Example:

    >>> before = loops_counted()
    >>> count_loop()
    >>> loops_counted() - before
    1
    """
    global _loops
    _loops += 1


def loops_counted():
    """How many loops :func:`count_loop` has noted so far in this process.

    Example:

    >>> loops_counted() >= 0
    True
    """
    return _loops


def xla_in_tensorflow_graph(fn):
    """``fn`` as a ``tf.function(jit_compile=True)`` when traced in a TensorFlow graph that
    XLA does not compile; ``fn`` itself otherwise (eager, under XLA already, JAX, torch).

    The mining kernel is a chain of elementwise selects and row reductions over each block
    of scores: XLA fuses it into a few passes, while plain graph mode runs every op as its
    own pass over ``rows x M`` values. Only kernels without gradient (integer indices,
    under ``stop_gradient``) go through here. Eager TensorFlow is left alone, so a call
    with new shapes never waits for a compile.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> double = xla_in_tensorflow_graph(lambda x: x * 2)
    >>> ops.convert_to_numpy(double(ops.convert_to_tensor(np.ones(2)))).tolist()
    [2.0, 2.0]
    """
    if not _TENSORFLOW:
        return fn
    import tensorflow as tf

    if tf.executing_eagerly() or compiled_by_xla() is not False:
        return fn  # eager, already under XLA, or a TensorFlow that cannot tell
    return tf.function(fn, jit_compile=True, autograph=False)


def compiled_by_xla():
    """On TensorFlow: whether the graph being traced is compiled by XLA (``False`` when
    executing eagerly); ``None`` where TensorFlow cannot tell, or on another backend.

    Example:

    >>> compiled_by_xla() in (False, None)   # eager TensorFlow, or another backend
    True
    """
    if not _TENSORFLOW:
        return None
    import tensorflow as tf

    if tf.executing_eagerly():
        return False
    try:  # TensorFlow's own test for an XLA context is not public API
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:
        return None
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))


def eager_torch():
    """Whether this is the torch backend running eagerly (not traced by ``torch.compile``).

    Example:

    >>> eager_torch() == (keras.backend.backend() == "torch")   # nothing compiling here
    True
    """
    if keras.backend.backend() != "torch":
        return False
    import torch

    return not torch.compiler.is_compiling()


def rows_per_block(num_rows, elements_per_row, budget=None, power_of_two=False, whole=False):
    """Rows processed at once so that one block holds about ``budget`` elements.

    The one block-size rule of the library (the per-anchor miner, the pair engine, the
    evaluation and the index):

    ```
    rows = min(num_rows, round(max(1, budget // max(elements_per_row, 1))))
    round(r) = 2 ** floor(log2(r))   with power_of_two, else r
    rows = num_rows                  with whole, when num_rows * elements_per_row <= budget
    ```

    At least one row per block, whatever a row costs; never more rows than there are (so
    ``0`` rows give ``0``). ``whole`` keeps a batch that fits in one block of any size, where
    ``power_of_two`` alone may split it into power-of-two blocks.

    Args:
        num_rows: the rows to split (anchors, queries), or ``None`` when unknown at trace
            time: then ``None`` (one block).
        elements_per_row: the elements one row's block holds (``M`` scores, ``M * D``
            differences, ``M * M`` candidate units), an int ``>= 0``.
        budget: the elements of one block (default :data:`BLOCK_ELEMENTS`, read at call time).
        power_of_two: round the rows down to a power of two.
        whole: the rows all in one block when they fit the budget.

    Returns:
        An int in ``[min(num_rows, 1), num_rows]``, or ``None``.

    Example:

    >>> rows_per_block(100_000, 100_000, budget=2**22)
    41
    >>> rows_per_block(1040, 1000, budget=2**20, power_of_two=True)
    1024
    >>> rows_per_block(1040, 1000, budget=2**20, power_of_two=True, whole=True)
    1040
    >>> rows_per_block(None, 10) is None
    True
    """
    if num_rows is None:
        return None
    budget = BLOCK_ELEMENTS if budget is None else budget
    if whole and num_rows * elements_per_row <= budget:
        return num_rows
    rows = max(1, budget // max(elements_per_row, 1))
    if power_of_two:
        rows = 1 << (rows.bit_length() - 1)
    return min(num_rows, rows)


def scores_per_row(num_references, dim, distance):
    """Elements of one anchor's (or query's) row of ``distance.pairwise`` against
    ``num_references`` rows: ``M``, or ``M * D`` for a distance that materialises ``(n, m, D)``
    differences (Manhattan).

    Example:

    >>> from triplet_tools.distances import get
    >>> scores_per_row(1000, 64, get("cosine")), scores_per_row(1000, 64, get("manhattan"))
    (1000, 64000)
    """
    return num_references * (dim if distance.materializes_differences else 1)


def auto_block_rows(num_anchors, num_references, dim, distance, elements=None):
    """Rows of anchors mined at once: all when ``B*M`` is small, else blocks of ~2**20 scores.

    The target is :data:`BLOCK_ELEMENTS` scores per block (2**20 under XLA, 2**22 in eager
    torch); a distance that materialises ``(n, m, D)`` differences gets ``D`` times fewer
    rows. A batch that does not fit is split into power-of-two blocks
    (:func:`rows_per_block` with ``power_of_two`` and ``whole``).

    Args:
        num_anchors: ``B``, or ``None`` when unknown at trace time (then one block).
        num_references: ``M``, or ``None``.
        dim: the embedding width ``D``.
        distance: the ``Distance``; one that materialises ``(n, m, D)`` differences gets
            blocks ``D`` times smaller.
        elements: the target number of scores per block (default :data:`BLOCK_ELEMENTS`).

    Example:

    >>> from triplet_tools.distances import get
    >>> rows = auto_block_rows(65536, 65536, 128, get("cosine"))
    >>> rows in (16, 64)   # 16 under XLA, 64 in eager torch
    True
    """
    if num_references is None:
        return num_anchors
    per_row = scores_per_row(num_references, dim, distance)
    return rows_per_block(num_anchors, per_row, elements or None, power_of_two=True, whole=True)


def map_blocks(fn, arrays, rows, pad_values):
    """Applies ``fn`` to row blocks of ``arrays`` and concatenates its outputs along rows.

    Args:
        fn: ``fn(*blocks) -> tuple of (rows, ...) tensors``.
        arrays: tensors sharing their first dimension ``B``.
        rows: rows per block; ``None`` or ``>= B`` runs ``fn`` once on everything.
        pad_values: one constant per array, used to pad the last block.

    Returns:
        The tuple of ``fn``'s outputs over all ``B`` rows.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> x = ops.convert_to_tensor(np.arange(5.0))
    >>> (y,) = map_blocks(lambda b: (b * 2,), (x,), rows=2, pad_values=(0,))
    >>> ops.convert_to_numpy(y).tolist()
    [0.0, 2.0, 4.0, 6.0, 8.0]
    """
    total = arrays[0].shape[0]
    if rows is None or total is None or rows >= total:
        return tuple(fn(*arrays))
    num_blocks, blocked = _split(arrays, rows, pad_values)
    count_loop()
    outputs = ops.map(lambda block: tuple(fn(*block)), tuple(blocked))
    return tuple(ops.reshape(t, (num_blocks * rows, *t.shape[2:]))[:total] for t in outputs)


def scan_blocks(fn, initial, arrays, rows, pad_values, outputs):
    """:func:`map_blocks` with a carry: ``fn(carry, blocks) -> (carry, outputs)``.

    Args:
        fn: takes the carry and the tuple of one block of each array; returns the new
            carry and a tuple of ``(rows, ...)`` outputs.
        initial: the first carry (a tuple of tensors).
        arrays, rows, pad_values: as for :func:`map_blocks`.
        outputs: per output of ``fn``, ``(shape after the rows axis, dtype)``: TensorFlow's
            loop needs them before it traces ``fn`` (``keras.ops.scan`` there requires
            outputs shaped like the carry).

    Returns:
        ``(last carry, fn's outputs over all B rows)``.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> x = ops.convert_to_tensor(np.arange(5.0, dtype="float32"))
    >>> def running(carry, block):
    ...     (total,) = carry
    ...     return (total + ops.sum(block[0]),), (block[0] * 2,)
    >>> (total,), (y,) = scan_blocks(
    ...     running, (ops.zeros(()),), (x,), 2, (0,), outputs=[((), "float32")])
    >>> float(total), ops.convert_to_numpy(y).tolist()
    (10.0, [0.0, 2.0, 4.0, 6.0, 8.0])
    """
    total = arrays[0].shape[0]
    if rows is None or total is None or rows >= total:
        carry, results = fn(tuple(initial), tuple(arrays))
        return tuple(carry), tuple(results)
    num_blocks, blocked = _split(arrays, rows, pad_values)
    count_loop()
    if _TENSORFLOW:
        carry, results = _tensorflow_scan(fn, initial, blocked, rows, outputs)
    else:
        carry, results = ops.scan(
            lambda c, block: fn(c, tuple(block)), tuple(initial), tuple(blocked)
        )
    return tuple(carry), tuple(
        ops.reshape(t, (num_blocks * rows, *t.shape[2:]))[:total] for t in results
    )


def _tensorflow_scan(fn, initial, blocked, rows, outputs):
    """``scan`` as a ``tf.while_loop`` over blocks, their outputs in TensorArrays."""
    import tensorflow as tf

    count = blocked[0].shape[0]
    inputs = [
        tf.TensorArray(x.dtype, size=count, element_shape=x.shape[1:]).unstack(x) for x in blocked
    ]
    results = [
        tf.TensorArray(dtype, size=count, element_shape=(rows, *shape)) for shape, dtype in outputs
    ]

    def body(i, carry, results):
        carry, values = fn(tuple(carry), tuple(t.read(i) for t in inputs))
        return i + 1, tuple(carry), [t.write(i, v) for t, v in zip(results, values)]

    _, carry, results = tf.while_loop(
        lambda i, *_: i < count, body, (tf.constant(0), tuple(initial), results)
    )
    return carry, [t.stack() for t in results]


def _split(arrays, rows, pad_values):
    """``(number of blocks, each array padded and reshaped to (blocks, rows, ...))``."""
    total = arrays[0].shape[0]
    num_blocks = -(-total // rows)
    padding = num_blocks * rows - total
    blocked = []
    for array, value in zip(arrays, pad_values):
        if padding:
            widths = [[0, padding]] + [[0, 0]] * (len(array.shape) - 1)
            array = ops.pad(array, widths, constant_values=value)
        blocked.append(ops.reshape(array, (num_blocks, rows, *array.shape[1:])))
    return num_blocks, blocked
