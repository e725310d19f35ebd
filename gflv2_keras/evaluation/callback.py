"""Keras callback that scores the model with COCO bbox AP during ``fit``."""

import keras

from gflv2_keras.evaluation.coco_evaluator import evaluate


class CocoEvaluationCallback(keras.callbacks.Callback):
    """Runs ``evaluate`` on a validation split every ``every_n_epochs`` epochs.

    The metrics are added to the epoch ``logs`` as ``val_AP``, ``val_AP50``, ``val_AP75``,
    ``val_APs``, ``val_APm``, ``val_APl`` (``prefix`` + name), so ``History`` records them and
    callbacks listed *after* this one (``ModelCheckpoint(monitor="val_AP", mode="max")``,
    ``EarlyStopping``) can use them.

    Args:
        data: the validation split: a ``DetectionDataset`` of any layout (COCO, VOC, YOLO;
            loaded with ``for_training=False``), or the path of a COCO JSON.
        image_dir: folder of the COCO JSON's images (paths only).
        every_n_epochs: evaluate after epochs ``n, 2n, ...`` (1-based).
        max_images: score only the first ``max_images`` images (faster, noisier).
        output_json: optional path for the detections; ``{epoch}`` in it is replaced by the
            1-based epoch number.
        detector: object with ``detect(image_uint8)`` to evaluate; default the model being fit.
        prefix: prefix of the log keys.
        progress: show a progress bar while detecting.
    """

    LOGGED = ("AP", "AP50", "AP75", "APs", "APm", "APl")

    def __init__(
        self,
        data,
        image_dir=None,
        every_n_epochs=1,
        max_images=None,
        output_json=None,
        detector=None,
        prefix="val_",
        progress=False,
    ):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"CocoEvaluationCallback: every_n_epochs must be >= 1, got {every_n_epochs}")
        self.data = data
        self.image_dir = image_dir
        self.every_n_epochs = every_n_epochs
        self.max_images = max_images
        self.output_json = output_json
        self.detector = detector
        self.prefix = prefix
        self.progress = progress
        self.last_results = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        output_json = self.output_json.format(epoch=epoch + 1) if self.output_json else None
        results = evaluate(
            self.detector if self.detector is not None else self.model,
            self.data,
            self.image_dir,
            output_json=output_json,
            max_images=self.max_images,
            progress=self.progress,
            verbose=False,
        )
        self.last_results = results
        if logs is not None:
            for name in self.LOGGED:
                logs[self.prefix + name] = results[name]
        metrics = " ".join(f"{self.prefix}{name} {results[name]:.4f}" for name in self.LOGGED)
        per_class = ", ".join(f"{row['class']} {row['AP']:.3f}" for row in results["per_class"])
        print(f"Epoch {epoch + 1}: COCO bbox on {results['num_images']} images: {metrics}; per-class AP: {per_class}")
