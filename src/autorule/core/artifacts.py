"""The stage/artifact contract, one import away: the public names of its five modules.

* :mod:`autorule.core.identity` — artifact folders, config hashes, content hashes;
* :mod:`autorule.core.manifest` — reading manifests, checking files, up to date or not;
* :mod:`autorule.core.lock` — one writer per artifact;
* :mod:`autorule.core.provenance` — versions, git commit, the command that makes an artifact;
* :mod:`autorule.core.job` — :class:`StageJob`, one run of one stage.

docs/architecture.md ("The artifact contract") describes the whole.
"""

from autorule.core.identity import (  # noqa: F401
    CONFIG_FILE,
    LAUNCH_DIR,
    MANIFEST,
    RUN_RECORDS,
    SESSIONS_DIR,
    StageInputError,
    artifact_path,
    config_hash,
    config_value,
    content_hash,
    hash_files,
    input_path,
    is_run_record,
    rules_file_record,
    stage_config,
    work_path,
)
from autorule.core.job import (  # noqa: F401
    StageJob,
)
from autorule.core.lock import (  # noqa: F401
    acquire_lock,
    lock_path,
    release_lock,
)
from autorule.core.manifest import (  # noqa: F401
    check_files,
    is_complete,
    is_up_to_date,
    read_manifest,
    verify_hashes,
)
from autorule.core.provenance import (  # noqa: F401
    PACKAGES,
    git_sha,
    make_command,
    package_versions,
)

__all__ = [
    "CONFIG_FILE",
    "LAUNCH_DIR",
    "SESSIONS_DIR",
    "MANIFEST",
    "PACKAGES",
    "RUN_RECORDS",
    "StageInputError",
    "StageJob",
    "acquire_lock",
    "artifact_path",
    "check_files",
    "config_hash",
    "config_value",
    "content_hash",
    "git_sha",
    "hash_files",
    "input_path",
    "is_complete",
    "is_run_record",
    "is_up_to_date",
    "lock_path",
    "make_command",
    "package_versions",
    "read_manifest",
    "release_lock",
    "rules_file_record",
    "stage_config",
    "verify_hashes",
    "work_path",
]
