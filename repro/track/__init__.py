"""Where runs are recorded: the local run store (always), W&B (optional), norm-latency timing."""
from .drift import DriftSettings
from .latency import NormTimer
from .precision import NormPrecision
from .run_store import RunStore, read_metrics, write_json_atomic
from .tracker import Tracker
from .wandb_sink import WANDB_MODES, LoggerConfig, WandbSink

__all__ = ["DriftSettings", "LoggerConfig", "NormPrecision", "NormTimer", "RunStore", "Tracker", "WANDB_MODES", "WandbSink",
           "read_metrics", "write_json_atomic"]
