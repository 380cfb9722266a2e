"""Constructor signatures that diffusers' config machinery can read.

diffusers' `from_config` keeps only the config keys named in the signature of `cls.__init__`. A
subclass that takes its own keywords plus `**base_config` would lose the whole base config, so
its signature is rewritten to list both: its own keywords, then every keyword of the base class.
"""

import inspect


def merged_signature(own_init, base_cls: type) -> inspect.Signature:
    """`own_init`'s parameters (minus its **kwargs) followed by `base_cls.__init__`'s, keyword-only."""
    own = [p for p in inspect.signature(own_init).parameters.values() if p.kind != p.VAR_KEYWORD]
    taken = {p.name for p in own}
    base = [
        p.replace(kind=p.KEYWORD_ONLY)
        for name, p in inspect.signature(base_cls.__init__).parameters.items()
        if name != "self" and name not in taken and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return inspect.Signature(own + base)
