"""Everything MLflow: the one package that talks to the tracking server or store.

One module per concern; flows import the public API from here:

- :mod:`~tasks.tracking.store`: where the store is, whether it answers, its one-time set-up
  (experiments are created marked as model training).
- :mod:`~tasks.tracking.secrets`: params and tags that look like secrets are never logged.
- :mod:`~tasks.tracking.owners`: which process owns a run, and whether it still runs.
- :mod:`~tasks.tracking.runs`: opening, tagging and closing runs.
- :mod:`~tasks.tracking.lifecycle`: ``with tracked_run(...) as run:`` closes the run FINISHED,
  FAILED or KILLED, or remembers the status when the store is unreachable.
- :mod:`~tasks.tracking.orphans`: runs left RUNNING by dead flows, closed by the next flow.
- :mod:`~tasks.tracking.records`, :mod:`~tasks.tracking.training_log`: a training run's
  inputs, curves, circuit and evaluation.
- :mod:`~tasks.tracking.models`, :mod:`~tasks.tracking.pyfunc_model`: the logged pyfunc model,
  its registration and verification.
- :mod:`~tasks.tracking.champion`: the ``champion`` alias gate.
- :mod:`~tasks.tracking.registered_models`, :mod:`~tasks.tracking.predictions`: scoring.
- :mod:`~tasks.tracking.sweeps`: a sweep's parent run.
"""

from tasks.tracking.champion import promote_model
from tasks.tracking.lifecycle import close_or_remember, tracked_child_run, tracked_run
from tasks.tracking.models import LoggedModel, log_model, register_best_model
from tasks.tracking.orphans import close_orphaned_runs, prepare_tracking
from tasks.tracking.predictions import log_predictions
from tasks.tracking.records import package_versions
from tasks.tracking.registered_models import (
    RegisteredModel,
    load_registered_model,
    training_run_params,
)
from tasks.tracking.runs import (
    close_run,
    end_tracking_run,
    flow_run_tags,
    set_run_tags,
    start_child_run,
    start_tracking_run,
)
from tasks.tracking.secrets import without_secrets
from tasks.tracking.store import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    TrackedRun,
    TrackingUnavailableError,
    default_tracking_uri,
    prepare_store,
    resolve_tracking_uri,
)
from tasks.tracking.sweeps import log_sweep_comparison, log_sweep_inputs
from tasks.tracking.training_log import log_evaluation, log_run_inputs, log_training

__all__ = [
    "EXPERIMENT_KIND_TAG",
    "MODEL_TRAINING_KIND",
    "LoggedModel",
    "RegisteredModel",
    "TrackedRun",
    "TrackingUnavailableError",
    "close_or_remember",
    "close_orphaned_runs",
    "close_run",
    "default_tracking_uri",
    "end_tracking_run",
    "flow_run_tags",
    "load_registered_model",
    "log_evaluation",
    "log_model",
    "log_predictions",
    "log_run_inputs",
    "log_sweep_comparison",
    "log_sweep_inputs",
    "log_training",
    "package_versions",
    "prepare_store",
    "prepare_tracking",
    "promote_model",
    "register_best_model",
    "resolve_tracking_uri",
    "set_run_tags",
    "start_child_run",
    "start_tracking_run",
    "tracked_child_run",
    "tracked_run",
    "training_run_params",
    "without_secrets",
]
