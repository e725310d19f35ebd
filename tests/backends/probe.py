"""Runs the nano detector on one Keras backend and saves what it computed (``test_backends.py``).

Usage: ``KERAS_BACKEND=jax python probe.py PRESET_DIR INPUTS.npz OUTPUT.npz``. Saves the
detections of ``detect`` and ``predict``, the loss of one batch (and its parts), and the weights
after one ``fit`` step of CoupledSGD on that batch.
"""

import sys

import numpy as np


def main(preset, inputs_path, output_path):
    import keras

    from gflv2_keras import GFLV2ObjectDetector

    inputs = dict(np.load(inputs_path))
    detector = GFLV2ObjectDetector.from_preset(preset)
    out = {"backend": np.array(keras.config.backend())}
    found = detector.detect(inputs["image"])
    out.update({f"detect_{k}": np.asarray(v) for k, v in found.items()})
    batch = detector.predict(inputs["images"])
    out.update({f"predict_{k}": np.asarray(v) for k, v in batch.items()})

    x = inputs["train_images"]
    y = {"boxes": inputs["train_boxes"], "labels": inputs["train_labels"]}
    losses = detector.compute_loss(x, y, detector(x, training=True))
    out["loss"] = keras.ops.convert_to_numpy(losses)
    for tracker in detector.loss_component_trackers.values():
        out[f"loss_{tracker.name}"] = keras.ops.convert_to_numpy(tracker.result())
        tracker.reset_state()

    from gflv2_keras.training.optimizer import CoupledSGD

    detector.compile(optimizer=CoupledSGD(learning_rate=0.01, momentum=0.9, weight_decay=1e-4))
    before = [keras.ops.convert_to_numpy(v) for v in detector.trainable_variables]
    detector.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    after = [keras.ops.convert_to_numpy(v) for v in detector.trainable_variables]
    out["step"] = np.concatenate([(a - b).ravel() for a, b in zip(after, before)])
    np.savez(output_path, **out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
