"""One trial: fit, evaluate, checkpoint and resume.

``fit(config, run_dir)`` trains a registered model on a registered dataset, writes ``last.pt``
every epoch and ``best.pt`` when the selection metric improves (where: :class:`vmbench.rundir.RunDir`), calls
the callbacks with each epoch's metrics (the sweep reports them to Ray Tune), and finally
evaluates the selected weights on the test split; ``fit_all`` trains several in step.

Modules: :mod:`~vmbench.engine.builders` (device, seeds, selection rule, model, optimiser,
schedule, loss), :mod:`~vmbench.engine.outputs` (reading a model's output),
:mod:`~vmbench.engine.batches` (batches and progress bars), :mod:`~vmbench.engine.state`
(``TrainState``, checkpoints, models rebuilt from them), :mod:`~vmbench.engine.evaluation`
(metrics and their files), :mod:`~vmbench.engine.training` (``fit`` and its stages).
"""

from vmbench.engine.builders import (
    autocast_dtype,
    build_loss,
    build_model,
    build_optimizer,
    build_scheduler,
    epoch_seed,
    image_size,
    resolve_device,
    seed_everything,
    selection_rule,
)
from vmbench.engine.evaluation import (
    EvalResult,
    evaluate,
    evaluate_2d,
    evaluate_checkpoint,
    evaluate_into,
    evaluate_transfer,
    evaluate_volumes,
    evaluation_meta,
    predict_volume,
    write_eval,
)
from vmbench.engine.outputs import as_float, final_logits, supervised_loss
from vmbench.engine.state import (
    CHECKPOINT_FORMAT,
    TrainState,
    load_checkpoint,
    load_state,
    load_weights,
    model_from_checkpoint,
    preprocess_record,
)
from vmbench.engine.training import Callback, EpochResult, FitResult, Training, TrainingData, fit, fit_all

__all__ = [
    "CHECKPOINT_FORMAT",
    "Callback",
    "EpochResult",
    "EvalResult",
    "FitResult",
    "TrainState",
    "Training",
    "TrainingData",
    "as_float",
    "autocast_dtype",
    "build_loss",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "epoch_seed",
    "evaluate",
    "evaluate_2d",
    "evaluate_checkpoint",
    "evaluate_into",
    "evaluate_transfer",
    "evaluate_volumes",
    "evaluation_meta",
    "final_logits",
    "fit",
    "fit_all",
    "image_size",
    "load_checkpoint",
    "load_state",
    "load_weights",
    "model_from_checkpoint",
    "predict_volume",
    "preprocess_record",
    "resolve_device",
    "seed_everything",
    "selection_rule",
    "supervised_loss",
    "write_eval",
]
