"""Deep registry checks that need timm: every arch exists and the names an entry gives are real."""

from __future__ import annotations

from medhub.registry import Registry
from medhub.schema import RANDOM_PREFIX


def deep_problems(registry: Registry) -> list[str]:
    """Problems found by building each architecture on the meta device; empty when all is well."""
    from medhub.build import architecture_state_keys
    from medhub.errors import UsageError

    problems: list[str] = []
    keys_by_arch: dict[tuple, set[str] | None] = {}
    for entry in registry.checkpoints.values():
        where = f"{registry.origin[f'checkpoint:{entry.id}']}: checkpoints.{entry.id}"
        signature = (entry.arch, tuple(sorted(entry.arch_kwargs.items())))
        if signature not in keys_by_arch:
            try:
                keys_by_arch[signature] = architecture_state_keys(entry.arch, **entry.arch_kwargs)
            except (UsageError, TypeError) as exc:
                keys_by_arch[signature] = None
                problems.append(f"{where}: field 'arch': {exc}")
        keys = keys_by_arch[signature]
        if keys is None:
            continue
        for field, prefix in (("head.classifier", entry.head.classifier), ("head.first_conv", entry.head.first_conv)):
            if not any(k.startswith(prefix + ".") for k in keys):
                problems.append(f"{where}: field '{field}': '{prefix}' is not in {entry.arch}'s state dict")
    for result in registry.results:
        if result.is_baseline:
            arch = result.model[len(RANDOM_PREFIX):]
            import timm

            if not timm.is_model(arch):
                problems.append(f"results {result.model}/{result.task}: timm has no architecture '{arch}'")
    return problems
