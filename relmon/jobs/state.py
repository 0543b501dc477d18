"""Re-exports of :mod:`relmon.jobs.only_new` (the module's former name), kept so that existing imports
work. Nothing in relmon imports this module."""

from relmon.jobs.only_new import (
    LOCK_FILE,
    STATE_FILE,
    NewFiles,
    SeenFiles,
    StateError,
    find_files,
    folder_lock,
    listing,
    stream_folder,
)

__all__ = ["LOCK_FILE", "STATE_FILE", "NewFiles", "SeenFiles", "StateError", "find_files", "folder_lock", "listing",
           "stream_folder"]
