"""Re-exports kept so that existing imports work (``from relmon.jobs.common import score_stream``): the
names now live in :mod:`relmon.jobs.errors`, :mod:`relmon.jobs.model`, :mod:`relmon.jobs.inputs` and
:mod:`relmon.jobs.scoring`. Nothing in relmon imports this module; new code imports those."""

from relmon.jobs.errors import CalibrationMismatchError, JobError, ServeError
from relmon.jobs.inputs import build_stream, input_size, latest_window, sample_images
from relmon.jobs.model import check_classes, check_stream_classes, load_job_model, model_outputs
from relmon.jobs.scoring import job_steps, score_stream, score_stream_lightning, scoring_options

__all__ = ["CalibrationMismatchError", "JobError", "ServeError", "build_stream", "check_classes",
           "check_stream_classes", "input_size", "job_steps", "latest_window", "load_job_model", "model_outputs",
           "sample_images", "score_stream", "score_stream_lightning", "scoring_options"]
