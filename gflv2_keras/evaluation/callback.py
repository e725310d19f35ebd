"""Keras callback that scores the model with COCO bbox AP during ``fit``."""

import keras

from gflv2_keras.evaluation.coco_evaluator import IOU_THRESHOLD, NUM_EXAMPLES, SCORE_THRESHOLD, evaluate


class CocoEvaluationCallback(keras.callbacks.Callback):
    """Runs ``evaluate`` on a validation split every ``every_n_epochs`` epochs.

    The metrics are added to the epoch ``logs`` as ``val_AP``, ``val_AP50``, ``val_AP75``,
    ``val_APs``, ``val_APm``, ``val_APl`` (``prefix`` + name), so ``History`` records them and
    callbacks listed *after* this one (``ModelCheckpoint(monitor="val_AP", mode="max")``,
    ``EarlyStopping``) can use them.

    Args:
        data: the validation split: a ``DetectionDataset`` of any layout (COCO, VOC, YOLO;
            loaded with ``for_training=False``), or the path of a COCO JSON. Its classes are
            matched to the detector's by name (``evaluate``), whatever their order.
        image_dir: folder of the COCO JSON's images (paths only).
        every_n_epochs: evaluate after epochs ``n, 2n, ...`` (1-based).
        max_images: score only the first ``max_images`` images (faster, noisier).
        output_json: optional path for the detections; ``{epoch}`` in it is replaced by the
            1-based epoch number.
        plots_dir: optional folder (``{epoch}`` replaced as in ``output_json``) for the pictures
            of each evaluation: ``pr_curves.png``, ``confusion_matrix.png``, ``examples/``
            (``evaluate(..., plots_dir=...)``). The folder belongs to the run: an evaluation of an
            epoch evaluated before (a resumed run) replaces its pictures.
        num_examples, iou_threshold, score_threshold: the examples drawn and the operating point
            of the confusion matrix (``evaluate``).
        backend: the COCOeval implementation (``"auto"``: faster-coco-eval when installed).
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
        plots_dir=None,
        num_examples=NUM_EXAMPLES,
        iou_threshold=IOU_THRESHOLD,
        score_threshold=SCORE_THRESHOLD,
        backend="auto",
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
        self.plots_dir = plots_dir
        self.num_examples = num_examples
        self.iou_threshold = iou_threshold
        self.score_threshold = score_threshold
        self.backend = backend
        self.last_results = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        output_json = self.output_json.format(epoch=epoch + 1) if self.output_json else None
        plots_dir = str(self.plots_dir).format(epoch=epoch + 1) if self.plots_dir else None
        results = evaluate(
            self.detector if self.detector is not None else self.model,
            self.data,
            self.image_dir,
            output_json=output_json,
            max_images=self.max_images,
            progress=self.progress,
            verbose=False,
            backend=self.backend,
            plots_dir=plots_dir,
            overwrite_plots=True,
            num_examples=self.num_examples,
            iou_threshold=self.iou_threshold,
            score_threshold=self.score_threshold,
        )
        self.last_results = results
        if logs is not None:
            for name in self.LOGGED:
                logs[self.prefix + name] = results[name]
        metrics = " ".join(f"{self.prefix}{name} {results[name]:.4f}" for name in self.LOGGED)
        per_class = ", ".join(f"{row['class']} {row['AP']:.3f}" for row in results["per_class"])
        print(f"Epoch {epoch + 1}: COCO bbox on {results['num_images']} images: {metrics}; per-class AP: {per_class}")
        if plots_dir:
            print(f"Epoch {epoch + 1}: evaluation pictures in {plots_dir}")
