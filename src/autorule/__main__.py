"""Command line: ``python -m autorule stage=<name> [hydra overrides]``.

Composes the config once and hands it to :func:`autorule.pipeline.run_stage`. Everything Hydra
offers works: ``--cfg job``, ``--help``, ``-m`` sweeps.

Secrets never travel on the command line: Hydra echoes overrides in sweep files and error
messages before autorule could mask them, so an override that carries a credential is refused
before Hydra starts, and a failing stage prints its error through the same redaction as the logs.

A failing run ends with one ``[autorule] error: ...`` paragraph on stderr. Errors that are the
user's next step rather than a bug (a missing upstream artifact, a config value out of range, an
LLM server that cannot be reached) say only that; any other names the log file, which alone holds
the traceback.
"""

import os
import sys
import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from autorule.core.config import CONF_DIR, ConfigError, check_root, finalize


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from autorule.core.artifacts import StageInputError
    from autorule.core.secrets import install_log_redaction, redact_text
    from autorule.llm.base import UnreachableError
    from autorule.pipeline import run_stage

    install_log_redaction()
    hc = HydraConfig.get()
    finalize(cfg, hc.runtime.choices["stage"], hc.overrides.task)
    try:
        run_stage(cfg)
    except (StageInputError, ConfigError, UnreachableError) as err:  # the user's next step
        print(f"[autorule] error: {redact_text(str(err))}", file=sys.stderr, flush=True)
        sys.exit(1)
    except Exception as err:
        report_failure(err)
        sys.exit(1)


def report_failure(err: BaseException) -> None:
    """One ``[autorule] error:`` paragraph on stderr naming the log file; the traceback goes to
    that file only (Hydra's job log). Without a log file the traceback is printed instead, so
    it is never lost. Both pass the redaction: Hydra would print raw overrides above it."""
    import logging

    from autorule.core.secrets import redact_text

    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    trace = redact_text(traceback.format_exc())
    record = logging.LogRecord("autorule", logging.ERROR, __file__, 0, "%s", (trace,), None)
    for handler in files:
        handler.handle(record)
        handler.flush()
    message = redact_text(f"{type(err).__name__}: {err}".strip())
    where = (
        f"The traceback is in {files[0].baseFilename}."
        if files
        else "Traceback:\n" + trace.rstrip()
    )
    print(f"[autorule] error: {message}\n{where}", file=sys.stderr, flush=True)


def refuse_old_spellings(argv: list[str]) -> None:
    """Exits with the new spelling when an override uses a key that was renamed."""
    from autorule.core.config import renamed_overrides

    found = renamed_overrides([a for a in argv if not a.startswith("-") and "=" in a])
    if found:
        print("autorule: renamed config keys:\n  " + "\n  ".join(found), file=sys.stderr)
        sys.exit(2)


def refuse_credentials(argv: list[str]) -> None:
    """Exits with a clear message when a command-line override carries a credential."""
    from autorule.core.secrets import credential_overrides

    found = credential_overrides([a for a in argv if not a.startswith("-") and "=" in a])
    if found:
        print(
            "autorule takes no secrets on the command line, and these overrides look like "
            f"credentials: {', '.join(found)}. Put the secret in an environment variable and "
            "name that variable in the config (<role>.api_key_env for API keys, e.g. "
            "judge.llm.api_key_env; AWS credentials "
            "come from the usual AWS variables, profile or role; a URL that carries a token can "
            "be read from a variable with '${oc.env:MY_URL}').",
            file=sys.stderr,
        )
        sys.exit(2)


def refuse_empty_root(argv: list[str], environ=os.environ) -> None:
    """Exits with one line when ``paths.root`` is empty on the command line or in
    ``AUTORULE_ROOT``: Hydra would create its log folder under ``/`` before any autorule code
    runs. (An empty root from a config file is refused too, by the ``${root:}`` resolver of
    Hydra's run folder, with Hydra's longer report.)"""
    given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("paths.root=")]
    root = given[-1].strip("'\"") if given else environ.get("AUTORULE_ROOT", "outputs")
    try:
        check_root(root)
    except ConfigError as err:
        print(f"[autorule] error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    refuse_credentials(sys.argv[1:])
    refuse_old_spellings(sys.argv[1:])
    refuse_empty_root(sys.argv[1:])
    main()
