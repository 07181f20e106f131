"""The settings ``edge-agent evaluate`` replays with: the agent's defaults without the environment, and dotted
overrides validated like any configuration (re-exported by agent.evaluate)."""

from __future__ import annotations

from typing import Any, Mapping


def _init_only_settings(**values: Any) -> Any:
    """Settings from the given values and the defaults only: no env file, no EDGE_AGENT_* from the environment."""
    from agent.settings import Settings

    class _InitOnly(Settings):
        @classmethod
        def settings_customise_sources(  # type: ignore[override]
            cls, settings_cls: Any, init_settings: Any, **_: Any
        ) -> tuple[Any, ...]:
            return (init_settings,)

    return _InitOnly(**values)


def default_settings() -> Any:
    """The agent's settings at their defaults: no env file and no EDGE_AGENT_* from the environment."""
    return _init_only_settings()


def apply_overrides(settings: Any, overrides: Mapping[str, Any] | None) -> Any:
    """``settings`` with dotted-key overrides applied (``{"decision.k": 3, "model.threshold": 1.2,
    "calibration.samples": 400, "model.path": "generic"}``; a value None restores the default "from the
    sidecar"), validated like any configuration: an unknown key or a bad value raises ValueError naming it."""
    if not overrides:
        return settings
    from pydantic import ValidationError

    data = settings.model_dump()
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part)
            if not isinstance(node, dict):
                raise ValueError(f"unknown setting {key!r}")
        if leaf not in node:
            raise ValueError(f"unknown setting {key!r}")
        node[leaf] = value
    try:
        return _init_only_settings(**data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})"
                             for err in e.errors())
        raise ValueError(f"bad setting override: {problems}") from None


def unrunnable(settings: Any, options: Mapping[str, str]) -> list[str]:
    """The settings the daemon would refuse against the model's sidecar (teach-in off for a detector that learns
    normal on site, k over n, a teach-in shorter than the window and the debounce), one line each, naming the
    command line option where it came from one (``options``: env name -> option) and the variable otherwise."""
    from agent.preflight import against_sidecar

    problems = []
    for p in against_sidecar(settings):
        env, _, rest = p.partition("=")
        problems.append(f"{options[env]} {rest}" if env in options else p)
    return problems
