"""The reranker router (issue #23): a served model backed by several providers, local or remote (router.py).

    lastrank serve --config router.toml

`routed_models(settings, config)` turns the config (config.py) into the server's ServedModels, each holding a
RoutedRunner as its ModelRunner; docs/router.md describes the file, the policies and the breaker.
"""

from __future__ import annotations

import os
import time

from lastrank.api.models import ServedModel
from lastrank.router.config import ConfigError, ModelConfig, ProviderConfig, RouterConfig, load_config, parse_config
from lastrank.router.providers import LocalProvider, RemoteProvider
from lastrank.router.router import RoutedRunner


def make_provider(config: ProviderConfig, model: ModelConfig, settings=None, clock=time.monotonic):
    if config.remote:
        return RemoteProvider(config, model, clock=clock)
    return LocalProvider(config, model, settings, clock=clock)


def routed_models(settings, config: RouterConfig) -> list:
    """One ServedModel per [[models]] of the config, its scheduler a RoutedRunner over its providers."""
    missing = sorted({p.api_key_env for m in config.models for p in m.providers
                      if p.api_key_env is not None and not os.environ.get(p.api_key_env)})
    if missing:  # said before anything starts; the message names the variables, never a value
        raise ConfigError(f"{config.source}: api_key_env names environment variables that are not set or empty: "
                          f"{', '.join(missing)}")
    out = []
    for m in config.models:
        runner = RoutedRunner(m, [make_provider(p, m, settings) for p in m.providers])
        root = ", ".join(p.name for p in m.providers)
        out.append(ServedModel(name=m.name, model_id=f"router: {root}", aliases=m.aliases, scheduler=runner,
                               price_per_1k_docs=m.price_per_1k_docs))  # --price still overrides it (api/app.py)
    return out


def preflight(models: list) -> None:
    """Before the server starts: reach every model's remote providers once (lastrank ones say their score rule)
    and check each model's rules agree, so a wrong config is one error line at the CLI rather than a failed
    start-up inside the server. A model with a local provider is checked when it loads (its rule comes from the
    model). Providers that do not answer are only warned about (they may come up later)."""
    import asyncio

    async def check(runner: RoutedRunner) -> None:
        remote = [p for p in runner.providers if p.config.remote]
        try:
            await asyncio.gather(*(p.start() for p in remote))
            if len(remote) == len(runner.providers):
                runner._capabilities()  # raises ConfigError on mixed or unknown rules
        finally:
            await asyncio.gather(*(p.stop() for p in remote), return_exceptions=True)
            for p in remote:  # start afresh in the server (the breaker state of this check is not kept)
                p.breaker = type(p.breaker)(p.breaker.failure_threshold, p.breaker.cooldown_s, clock=p.breaker.clock)

    async def check_all() -> None:
        for m in models:
            if isinstance(m.scheduler, RoutedRunner):
                await check(m.scheduler)

    asyncio.run(check_all())


__all__ = ["ConfigError", "ModelConfig", "ProviderConfig", "RouterConfig", "load_config", "parse_config",
           "preflight", "routed_models"]
