"""Search-space files (``search_spaces/*.yaml``): schema, validation, and the resolved plan.

A file names the experiment, the models and datasets to tune, the metric, the budget, the
resources per trial, fixed settings, the space and the final stage::

    experiment: vmbench-quickstart        # MLflow experiment
    name: quickstart                      # sweep name (default: the file's stem)
    models: [vmunet, unet]                # or model: vmunet
    dataset: synthetic-isic               # or datasets: [...], entries a name or a folder declared as
                                          # {name: polyps, path: data/polyps, format: folder, labels: {...}}
    ablations: [no-ssm, no-mamba]         # optional: each Mamba model's ablation twins, same budget
    transfer: [isic2017]                  # optional: datasets every final run is also scored on, no
                                          # retraining (names, or folders declared as in datasets)
    reference: unet                       # the paired tests' reference (default vmunet if swept, else
                                          # the first model; none: no test)
    data_root: null                       # default: the dataset's own folder; a relative path is
                                          # resolved against the vmbench checkout holding this file,
                                          # else against this file's folder (never the working folder)
    protocol: holdout                     # holdout | paper | cv
    folds: 5                              # protocol cv only: the number of folds (default 5)
    cv_search: one-fold                   # protocol cv only: one-fold (search on fold 0, the default)
                                          # | mean (each trial trains every fold, reports their mean)
    metric: val_dsc                       # what trials report and the search optimises; several:
    mode: max                             # metric: [val_dsc, latency_ms], mode: [max, min] (Pareto front;
                                          # costs n_params, gmacs, latency_ms, peak_mem_mb may be objectives)
    budget: {trials: 4, concurrent: 2, max_epochs: 3, grace_period: 1, reduction_factor: 2}
                                          # scheduler: asha | fifo (auto: fifo for several objectives)
                                          # | wilcoxon (protocol cv, cv_search mean, one metric: each trial
                                          # trains its folds in turn; Optuna's WilcoxonPruner stops it when
                                          # its fold scores are worse than the best trial's; p_threshold: 0.1)
    resources: {cpu: 1, gpu: 0}           # per trial; fractional GPUs allowed (0.5)
    fixed:                                # ExperimentConfig values, nested or dotted
      data: {img_size: 64}
      train.batch_size: 16
    space:                                # dotted ExperimentConfig keys
      optim.lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}
      loss.dice_weight: {type: uniform, low: 0.5, high: 2.0}
      train.batch_size: {type: choice, values: [8, 16]}
      model.overrides.drop_path_rate: {type: uniform, low: 0.0, high: 0.3}
      # uniform and int also take step (a grid from low; not with a log scale) and log: true | false
    per_model:                            # optional additions for one model
      vmunet: {fixed: {...}, space: {...}}
    final: {seeds: [1, 2], epochs: null}  # retrain the best config per seed; epochs default max_epochs
    sampler: {name: tpe, seed: 0}         # tpe | random | gp | cmaes

Every model x dataset pair is one study with the same budget. Under protocol ``cv`` the final
stage retrains the best configuration on every fold with every seed. The sections (budget,
resources, final, sampler) are dataclasses checked by the configuration's own validator
(:func:`vmbench.config.build_section`): every error is one line naming the file, the key and what
was expected (:class:`vmbench.config.ConfigError`), worded as for a ``--config`` file.

Modules: :mod:`~vmbench.search_space.params` (the ``space:`` entries and their Optuna form),
:mod:`~vmbench.search_space.spec` (the file, its studies and plan), :mod:`~vmbench.search_space.toplevel`
(names, data_root, declared datasets, ablations, objectives, reference), :mod:`~vmbench.search_space.transfer`
(the ``transfer:`` datasets),
:mod:`~vmbench.search_space.inputs` (what the dry run checks of every trial's values).
"""

from __future__ import annotations

from vmbench.search_space.inputs import SEED_MAX, check_config_input, check_searched_values, check_seed, check_study_inputs
from vmbench.search_space.params import SPACE_TYPES, SpaceParam, decode_sample, optuna_distributions
from vmbench.search_space.spec import (
    CV_MEAN,
    CV_ONE_FOLD,
    CV_SEARCH_MODES,
    SAMPLERS,
    TOP_LEVEL_KEYS,
    Budget,
    FinalStage,
    Resources,
    SamplerSpec,
    Study,
    SweepSpec,
    load_spec,
    parse_spec,
)
from vmbench.search_space.toplevel import check_name, data_root_anchor

__all__ = [
    "CV_MEAN", "CV_ONE_FOLD", "CV_SEARCH_MODES", "SAMPLERS", "SEED_MAX", "check_searched_values", "check_seed", "SPACE_TYPES", "TOP_LEVEL_KEYS", "Budget", "FinalStage",
    "Resources", "SamplerSpec", "SpaceParam", "Study", "SweepSpec", "check_config_input", "check_name",
    "check_study_inputs", "data_root_anchor", "decode_sample", "load_spec", "optuna_distributions", "parse_spec",
]
