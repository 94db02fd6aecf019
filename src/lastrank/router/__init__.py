"""The reranker router (issue #23): a served model backed by several providers, local or remote (router.py).

    lastrank serve --config router.toml

`routed_models(settings, config)` turns the config (config.py) into the server's ServedModels, each holding a
RoutedRunner as its ModelRunner; docs/router.md describes the file, the policies and the breaker.
"""

from __future__ import annotations

import time

from lastrank.router.config import ConfigError, ModelConfig, ProviderConfig, RouterConfig, load_config, parse_config


def make_provider(config: ProviderConfig, model: ModelConfig, settings=None, clock=time.monotonic):
    from lastrank.router.providers import LocalProvider, RemoteProvider

    if config.remote:
        return RemoteProvider(config, model, clock=clock)
    return LocalProvider(config, model, settings, clock=clock)


def routed_models(settings, config: RouterConfig) -> list:
    """One ServedModel per [[models]] of the config, its scheduler a RoutedRunner over its providers."""
    from lastrank.api.models import ServedModel
    from lastrank.router.router import RoutedRunner

    out = []
    for m in config.models:
        runner = RoutedRunner(m, [make_provider(p, m, settings) for p in m.providers])
        root = ", ".join(p.name for p in m.providers)
        out.append(ServedModel(name=m.name, model_id=f"router: {root}", aliases=m.aliases, scheduler=runner))
    return out


__all__ = ["ConfigError", "ModelConfig", "ProviderConfig", "RouterConfig", "load_config", "parse_config",
           "routed_models"]
