"""The evaluation protocol of the CPU benchmarks (``multifashion``, ``fashion_digits``) and of the paper
pipelines (``cifar100``, ``nyuv2``, ``pascal_context``): one package, so that both produce the same numbers
under the same JSON keys from the same code.

=============================================  ===================================================================
module                                         idea
=============================================  ===================================================================
:mod:`~benchmarks.protocol.requests`           evaluation and cost preferences, the settings (``c`` / budget)
:mod:`~benchmarks.protocol.loss_space`         hypervolume reference point and the losses uniformity sees
:mod:`~benchmarks.protocol.records`            built models measured on the test split
:mod:`~benchmarks.protocol.cost`               mean planned cost over preferences
:mod:`~benchmarks.protocol.summary`            per-setting numbers (HV with its reference point, uniformity,
                                               controllability, Delta_MTL, cost) and their mean over seeds
:mod:`~benchmarks.protocol.equal_cost`         dynamic against static trees of no more FLOPs, per preference
:mod:`~benchmarks.protocol.targets`            the issues' targets
:mod:`~benchmarks.protocol.training_budget`    the equal training budget rule, each method's training totals
:mod:`~benchmarks.protocol.report`             the ``protocol`` entry of a results file, the printed tables
:mod:`~benchmarks.protocol.comparison`         two controllers against one set of baselines, side by side
=============================================  ===================================================================

What is measured, for every method (a :class:`benchmarks.methods.Method`) and every seed:

Preferences
    Two tasks: the 25 rays Pareto HyperNetworks evaluates (:func:`dymu.metrics.pareto_rays`: angles evenly
    spaced from 0.1 to pi/2 - 0.1, ``r = (cos, sin)`` normalised to sum 1). More tasks: 20 preferences from
    Dirichlet(1), uniform on the simplex, drawn with the fixed seed :data:`PREFERENCE_SEED` (the same
    preferences for every method and every seed). See :func:`evaluation_preferences`.

Settings
    A method whose cost can change (``Method.dynamic_cost``: the controller and its variants) is asked for
    a model at ``c = 0`` and ``c = 1`` (resource preference, no budget enforced) and at the FLOP budgets
    ``{minimum, 0.4, 0.5, 0.6, 0.8, 1}`` (fractions of the anchor's FLOPs; "minimum" is the cheapest tree: one stream plus
    the heads). A budget below the minimum cannot be met by any tree: that setting is skipped and the skip
    is recorded (on ``multifashion`` the minimum is 0.52, so 0.4 and 0.5 are skipped there). A method with one
    fixed cost is evaluated once per preference (:data:`STATIC`). See :func:`settings_for`.

Test data and model selection
    Every method selects its models on validation data only (inside ``Method.fit``). The test split is
    read once per distinct built model (:func:`evaluate_method`): models that are the same network (the
    controller's tree at ``budget = 1`` is its ``c = 0`` tree; a static method returns one model for
    every preference) are evaluated once and their result reused.

Loss space and hypervolume (:func:`loss_space`, :func:`normalised_loss_space`)
    The CPU benchmarks take the hypervolume over raw test losses; the paper pipelines over the test losses
    divided by the single-task test losses, with the reference point ``hv_reference_factor`` (2) on every
    axis. Either way the reference point is stored beside every hypervolume (``hv_ref``). ``multifashion``: reference point (2, 2), as Pareto
    HyperNetworks reports (close to the loss of guessing among 10 classes, ln 10 = 2.30). Other benchmarks
    mix losses of different kinds and scales (cross-entropy, per-pixel cross-entropy, squared error), so
    [choice] the reference point is every task's loss of the best predictor that ignores its input
    (:func:`input_blind_losses`: class frequencies, per pixel for dense targets; the mean target), fitted to
    and measured on the training split: the same for every method and seed, and a model contributes
    wherever it beats chance on every task. (A fixed multiple of the single-task losses, 2x, left every
    controller model outside the reference box on ``fashion_digits`` in a trial run: a task with a tiny
    preference weight loses more than twice its single-task loss, and one such task out of six is enough.)
    Uniformity sees the raw losses on ``multifashion`` and the losses divided by the single-task test losses
    of the same run and seed elsewhere, so that loss scales (a squared error of 0.02 beside a cross-entropy
    of 0.5) do not decide it. The reference point is stated beside every number.

Metrics per setting (:func:`summarise`)
    ``hv`` (``hv_ref``): hypervolume of the loss vectors of the models built for the evaluation preferences.
    ``uniformity``: EPO's mean uniformity (:func:`dymu.metrics.uniformity`) of those losses (see above).
    ``controllability``: mean over tasks of the Spearman correlation between ``r_i`` and task ``i``'s
    primary metric over the preferences (``controllability_loss``: the same with the negated test
    loss); ``None`` where undefined, e.g. for a method whose model does not change with the preference.
    ``delta_mtl``: the Delta_MTL (percent, primary metrics, :func:`dymu.metrics.delta_mtl`) of each
    built model against the single-task (anchor stream) test metrics of the same run and seed, averaged
    over the evaluation preferences (0 for the single-task baseline by definition).
    ``mean_flops``, ``params``: FLOPs (per image, ``FlopCounterMode``) and parameters of the models
    actually run. For a method that plans its trees (the controller) the mean is over
    :data:`N_COST_PREFERENCES` (1000) Dirichlet(1) preferences (seed :data:`COST_SEED`) from the plan,
    without building the modules; for a method of fixed cost it is the mean over its built models.
    ``size``: parameters the method stores to serve every preference (:meth:`Method.size`).
    ``train_seconds``: wall time of ``Method.fit``.

Training budget (:func:`allocation`, :func:`training_totals`)
    :data:`TRAINING_BUDGET_RULE`: every method's training, counting what it depends on, sees
    ``StepBudget.total x batch_size`` training images (each per-preference or per-budget model alone).
    Per method and seed the results record its steps, training images and image-block passes
    (:data:`BLOCK_PASSES_RULE`: every block an image runs forward, the supernet stage's sandwich of trees
    and the distilled trunk's teachers included).

Seeds (:func:`aggregate`)
    Every number above is computed per seed, then reported as its mean and standard deviation over
    seeds (sample standard deviation; ``None`` with a single seed).

Control (:func:`compare_at_equal_cost`, :func:`planned_cost`)
    Per budget setting also ``controllability_per_task``, ``distinct_trees`` (how many different trees the
    evaluation preferences got) and ``fallback_fraction`` (the share merged after the hypernet). Dynamic
    against static at equal cost: at the budgets :data:`EQUAL_COST_BUDGETS` (0.4, 0.6, 0.8) a static
    affinity tree of no more FLOPs (heads included) is trained jointly on the equal preference for the
    run's total steps, and for each evaluation preference the controller's preference-weighted normalised
    test loss ``sum_i r_i L_i / L_i(single task)`` is compared with the static tree's; ``win_fraction`` is
    the share of preferences the controller wins. The cost follows the budget: over the cost preferences
    the planned mean FLOPs at each budget of :data:`COST_BUDGETS` (0.3, 0.5, 0.7, 0.9) and the share of
    fallback merges (``budget_curve``).

Targets (:func:`check_targets`, :func:`check_control_targets`, :func:`check_shared_node_targets`)
    The issue's targets, each with the numbers it was decided on: the controller's hypervolume and
    uniformity above PHN's and PHN-BN's (means over seeds, at ``c = 0`` and at ``c = 1``), its mean FLOPs
    falling as ``c`` rises, and its total training time below that of the per-preference hard-sharing
    models.
"""

from __future__ import annotations

from . import comparison as _comparison, cost as _cost, equal_cost as _equal_cost, loss_space as _loss_space, records as _records, report as _report
from . import requests as _requests, summary as _summary, targets as _targets, training_budget as _training_budget
from .comparison import format_comparison, shared_baselines
from .cost import COST_BAND, COST_BUDGETS, planned_cost
from .equal_cost import EQUAL_COST_BUDGETS, WIN_TARGET, budget_setting, compare_at_equal_cost
from .loss_space import HV_REFERENCE, HV_REFERENCE_FACTOR, INPUT_BLIND_RULE, LossSpace, hv_of, input_blind_losses, loss_space, normalised_loss_space
from .records import ModelRecord, evaluate_method, records_from_table
from .report import describe, format_markdown, format_paper_table, hv_header
from .requests import (
    COST_CURVE_CS,
    COST_SEED,
    EVAL_BUDGETS,
    EVAL_CS,
    HEADLINE_SETTING,
    N_COST_PREFERENCES,
    N_DIRICHLET,
    N_RAYS,
    PREFERENCE_SEED,
    STATIC,
    Setting,
    controller_of,
    cost_preferences,
    cs_settings,
    evaluation_preferences,
    format_number,
    settings_for,
)
from .summary import METRICS, aggregate, control_of, control_text, controllability_scores, preference_losses, summarise
from .targets import check_control_targets, check_shared_node_targets, check_targets, cost_band_met
from .training_budget import BLOCK_PASSES_RULE, TRAINING_BUDGET_RULE, Allocation, Part, allocation, training_totals

# The package exports exactly what its modules export: each name is listed once, in its own module.
_MODULES = (_requests, _loss_space, _records, _cost, _equal_cost, _summary, _targets, _report, _comparison, _training_budget)
__all__ = [name for module in _MODULES for name in module.__all__]
