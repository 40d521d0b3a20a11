"""Short names for swept values: `ksn2·kcp8` for loss.k_sap_neg=2, loss.k_cap_pos=8, so a run
name shows every searched value where MLflow's run list has room for about twenty characters.

A key is shortened to the initials of its last part's words (`k_sap_neg` → `ksn`); a one-word
key keeps its word (`tau`, `seed`); keys whose initials would collide keep their last part."""

import numbers
from collections.abc import Iterable, Mapping
from typing import Any

SEPARATOR = "·"


def _initials(key: str) -> str:
    words = [w for w in key.rsplit(".", 1)[-1].split("_") if w]
    return "".join(w[0] for w in words) if len(words) > 1 else (words[0] if words else key)


def short_names(keys: Iterable[str]) -> dict[str, str]:
    """{dotted key: its short name}, unique among `keys`."""
    keys = list(keys)
    short = {k: _initials(k) for k in keys}
    for longer in (lambda k: k.rsplit(".", 1)[-1], lambda k: k):
        taken = list(short.values())
        short = {k: longer(k) if taken.count(s) > 1 else s for k, s in short.items()}
    return short


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def point_name(point: Mapping[str, Any]) -> str:
    """`ksn2·kcp8`: numbers right after the short name, other values after `=`."""
    short = short_names(point)
    parts = []
    for key, value in point.items():
        numeric = isinstance(value, numbers.Real) and not isinstance(value, bool)
        parts.append(f"{short[key]}{'' if numeric else '='}{_shown(value)}")
    return SEPARATOR.join(parts) or "all"


def legend(keys: Iterable[str]) -> str:
    """`ksn = loss.k_sap_neg, kcp = loss.k_cap_pos`: what each short name stands for."""
    return ", ".join(f"{s} = {k}" for k, s in short_names(keys).items())
