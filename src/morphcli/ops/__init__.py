"""The op-rule registry: one rule per op type, registered explicitly from RULE_MODULES.

An op type missing here meets no rule: the channel engine pins its channels and warns.
"""

from __future__ import annotations

import importlib

from morphcli.ops.base import OpRule

# Every module listed exports RULES, a list of OpRule instances. Add a module here to add ops.
RULE_MODULES = (
    "morphcli.ops.conv",
    "morphcli.ops.linear",
    "morphcli.ops.normalization",
    "morphcli.ops.activation",
    "morphcli.ops.pooling",
    "morphcli.ops.elementwise",
    "morphcli.ops.concat",
    "morphcli.ops.shape",
    "morphcli.ops.reshape",
    "morphcli.ops.reduce",
)


def _build_registry() -> dict[tuple[str, str], OpRule]:
    registry: dict[tuple[str, str], OpRule] = {}
    for module_name in RULE_MODULES:
        module = importlib.import_module(module_name)
        for rule in module.RULES:
            for op_type in rule.op_types:
                key = ("", op_type)
                if key in registry:
                    raise RuntimeError(f"op {op_type} registered twice ({module_name})")
                registry[key] = rule
    return registry


REGISTRY: dict[tuple[str, str], OpRule] = _build_registry()


def rule_for(op_type: str, domain: str | None = "") -> OpRule | None:
    """The rule for an op type of the default domain (``ai.onnx`` counts as it), or None."""
    if domain in ("", "ai.onnx", None):
        return REGISTRY.get(("", op_type))
    return REGISTRY.get((domain, op_type))
