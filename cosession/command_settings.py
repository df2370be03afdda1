"""The settings a one-shot command reads (`audit verify`, `recordings`, `cluster status`): the
configuration file, with the command's `--data-dir` and database URL over it."""

from __future__ import annotations

from typing import Any

from config.settings import Settings, load


def settings_for(args: Any, database_url: str | None) -> Settings:
    """Raises config.settings.SettingsError for a configuration that cannot be used."""
    overrides: dict[str, dict[str, Any]] = {}
    if args.data_dir:
        overrides["server"] = {"data_dir": args.data_dir}
    if database_url:
        overrides["engine"] = {"database_url": database_url}
    return load(getattr(args, "config", None), **overrides)
