"""Helpers every layer may use (the bottom layer: imports nothing else of repro): atomic file
writes, mean and standard deviation, Markdown tables, and typed option schemas."""
from .io import StorageError, atomic_write, remove_stale_temporaries, write_json_atomic
from .markdown import markdown_table
from .schema import ConfigError, check_options, composition_error, option, register_schema
from .stats import mean_std

__all__ = ["ConfigError", "StorageError", "atomic_write", "check_options", "composition_error", "markdown_table",
           "mean_std", "option", "register_schema", "remove_stale_temporaries", "write_json_atomic"]
